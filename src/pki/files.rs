//! The development PKI on disk: writing PEM files atomically with the
//! right modes, the private output directory, the standard file names, and
//! `init`, which makes and writes the whole set for `certs init`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::ca::Ca;
use super::leaf::LeafSpec;
use super::PkiError;

/// File names inside a development PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key: whoever holds it can mint identities.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The relay's (server's) certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The relay's (server's) private key.
pub const SERVER_KEY_FILE: &str = "server-key.pem";
/// The shim's (client's) certificate.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// The shim's (client's) private key.
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// Server names used when none are given: every way a local client dials.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Client name used when none is given: the gateway's shim.
pub const DEFAULT_CLIENT_NAMES: &[&str] = &["openshell-gateway"];
/// Subject of the development CA, saying plainly what it is.
pub const DEV_CA_NAME: &str = "openshell-driver-bridge development CA";

pub(super) fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PkiError + 'a {
    move |source| PkiError::Io { action, path: path.to_owned(), source }
}

/// Writes `pem` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over the target, so a reader (such as a
/// bridge reloading its certificates) sees the old file or the new one,
/// never a torn write. Mode 0600 when `private`, else 0644, regardless of
/// the umask.
pub fn write_pem(path: &Path, pem: &str, private: bool) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.{:016x}.tmp", file_name.to_string_lossy(), rand::random::<u64>()));
    let mode = if private { 0o600 } else { 0o644 };
    let written = write_new_file(&tmp, pem.as_bytes(), mode).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir);
    Ok(())
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    // create_new refuses to follow a planted symlink; the mode applies from
    // the first byte, so a key is never briefly readable by others.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes the rename durable. Failure only weakens crash safety, so it is
/// not an error.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Where `init` puts each file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPkiPaths {
    /// The output directory.
    pub dir: PathBuf,
    /// `ca.pem`: the trust anchor both sides pass as `--ca`.
    pub ca: PathBuf,
    /// `ca-key.pem`: keep it away from the bridges.
    pub ca_key: PathBuf,
    /// `server.pem`: the relay's certificate.
    pub server_cert: PathBuf,
    /// `server-key.pem`: the relay's key.
    pub server_key: PathBuf,
    /// `client.pem`: the shim's certificate.
    pub client_cert: PathBuf,
    /// `client-key.pem`: the shim's key.
    pub client_key: PathBuf,
}

impl DevPkiPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> DevPkiPaths {
        DevPkiPaths {
            dir: dir.to_owned(),
            ca: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
            client_cert: dir.join(CLIENT_CERT_FILE),
            client_key: dir.join(CLIENT_KEY_FILE),
        }
    }

    /// Each file with a label for people, in the order `certs init`
    /// prints them.
    pub fn listing(&self) -> [(&'static str, &Path); 6] {
        [
            ("CA certificate", &self.ca),
            ("CA private key", &self.ca_key),
            ("server certificate", &self.server_cert),
            ("server private key", &self.server_key),
            ("client certificate", &self.client_cert),
            ("client private key", &self.client_key),
        ]
    }

    /// All six files, CA first.
    pub fn files(&self) -> [&Path; 6] {
        [&self.ca, &self.ca_key, &self.server_cert, &self.server_key, &self.client_cert, &self.client_key]
    }
}

/// Creates a development PKI in `out`: a CA, a server certificate for
/// `server_names` and a client certificate for `client_names` (defaults
/// [`DEFAULT_SERVER_NAMES`] and [`DEFAULT_CLIENT_NAMES`] when empty; the
/// first client name is the CN, all are DNS SANs).
///
/// `out` is created with mode 0700 if missing. Existing files are replaced
/// only when `force`. Everything is generated before anything is written,
/// so a failure leaves no half-made set.
pub fn init(
    out: &Path,
    server_names: &[String],
    client_names: &[String],
    force: bool,
) -> Result<DevPkiPaths, PkiError> {
    let paths = DevPkiPaths::in_dir(out);
    ensure_private_dir(out)?;
    if !force {
        refuse_overwrite(&paths)?;
    }
    // A distinct name per run: two development CAs of the same name make
    // "signature does not verify" errors instead of a plain "unknown CA".
    let ca = Ca::new(&format!("{DEV_CA_NAME} {:08x}", rand::random::<u32>()))?;
    let server = ca.issue(&server_spec(server_names))?;
    let client = ca.issue(&client_spec(client_names))?;
    // Each key is written before its certificate: a bridge that reloads
    // when the certificate changes then finds the matching key already
    // there.
    let writes: [(&Path, &str, bool); 6] = [
        (&paths.ca_key, &ca.key_pem(), true),
        (&paths.ca, &ca.cert_pem(), false),
        (&paths.server_key, &server.key_pem, true),
        (&paths.server_cert, &server.cert_pem, false),
        (&paths.client_key, &client.key_pem, true),
        (&paths.client_cert, &client.cert_pem, false),
    ];
    for (path, pem, private) in writes {
        write_pem(path, pem, private).map_err(io_error("write", path))?;
    }
    Ok(paths)
}

pub(super) fn server_spec(names: &[String]) -> LeafSpec {
    let names: Vec<&str> =
        if names.is_empty() { DEFAULT_SERVER_NAMES.to_vec() } else { names.iter().map(String::as_str).collect() };
    LeafSpec::server(&names)
}

pub(super) fn client_spec(names: &[String]) -> LeafSpec {
    let names: Vec<&str> =
        if names.is_empty() { DEFAULT_CLIENT_NAMES.to_vec() } else { names.iter().map(String::as_str).collect() };
    let (first, rest) = names.split_first().unwrap_or((&DEFAULT_CLIENT_NAMES[0], &[]));
    rest.iter().fold(LeafSpec::client(first), |spec, name| spec.with_dns(name))
}

pub(super) fn ensure_private_dir(out: &Path) -> Result<(), PkiError> {
    match fs::metadata(out) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(PkiError::NotADirectory { path: out.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(out).map_err(io_error("create directory", out))?;
            // The umask may have narrowed the mode further; make it exact.
            fs::set_permissions(out, fs::Permissions::from_mode(0o700)).map_err(io_error("set permissions on", out))
        }
        Err(e) => Err(io_error("inspect", out)(e)),
    }
}

fn refuse_overwrite(paths: &DevPkiPaths) -> Result<(), PkiError> {
    let names: Vec<String> = paths
        .files()
        .iter()
        .filter(|path| fs::symlink_metadata(path).is_ok())
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(PkiError::Exists { dir: paths.dir.clone(), names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::fixtures::*;
    use crate::tls::material::{self, Validity};

    use time::OffsetDateTime;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_pem_sets_modes_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        write_pem(&key, "secret", true).unwrap();
        write_pem(&cert, "public", false).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        write_pem(&key, "secret 2", true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret 2");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(write_pem(&dir.path().join("missing/k.pem"), "x", true).is_err());
        assert!(write_pem(Path::new("/"), "x", true).is_err());
    }

    #[test]
    fn init_writes_a_loadable_private_pki() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs/dev");
        let paths = init(&out, &[], &[], false).unwrap();
        assert_eq!(paths, DevPkiPaths::in_dir(&out));
        assert_eq!(mode(&out), 0o700);
        for key in [&paths.ca_key, &paths.server_key, &paths.client_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        for cert in [&paths.ca, &paths.server_cert, &paths.client_cert] {
            assert_eq!(mode(cert), 0o644, "{}", cert.display());
        }
        assert_eq!(material::load_roots("--ca", &paths.ca).unwrap().len(), 1);
        material::load_certified_key("--cert", &paths.server_cert, "--key", &paths.server_key, false).unwrap();
        material::load_certified_key("--cert", &paths.client_cert, "--key", &paths.client_key, false).unwrap();
        material::load_key("--ca-key", &paths.ca_key, false).unwrap();

        let client = material::load_cert_info("--cert", &paths.client_cert).unwrap();
        assert_eq!(client.identity.to_string(), "dns:openshell-gateway");
        assert_eq!(client.identity.cn.as_deref(), Some("openshell-gateway"));
        let server = material::load_cert_info("--cert", &paths.server_cert).unwrap();
        assert_eq!(server.identity.dns, ["localhost"]);
        assert!(matches!(
            material::check_validity("--cert", &paths.server_cert, &server, OffsetDateTime::now_utc()),
            Validity::Ok { days_left: 364 | 365 }
        ));
    }

    #[test]
    fn init_uses_given_names() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let servers = vec!["relay.example".to_owned(), "10.1.2.3".to_owned()];
        let clients = vec!["gw-a".to_owned(), "gw-a.corp".to_owned()];
        let paths = init(tmp.path(), &servers, &clients, false).unwrap();
        let client = material::load_cert_info("--cert", &paths.client_cert).unwrap();
        assert_eq!(client.identity.dns, ["gw-a", "gw-a.corp"]);
        assert_eq!(client.identity.cn.as_deref(), Some("gw-a"));
        let server = material::load_cert_info("--cert", &paths.server_cert).unwrap();
        assert_eq!(server.identity.dns, ["relay.example"]);
        let server_der = der(&fs::read_to_string(&paths.server_cert).unwrap());
        assert_eq!(ip_sans(&server_der), [[10, 1, 2, 3].to_vec()]);
        // An existing directory keeps its mode; it is not ours to change.
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path(), &[], &[], false).unwrap();
        let before = fs::read_to_string(&first.ca).unwrap();
        let err = init(tmp.path(), &[], &[], false).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite existing files"), "{err}");
        assert!(err.contains("ca.pem, ca-key.pem, server.pem"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(fs::read_to_string(&first.ca).unwrap(), before);
        init(tmp.path(), &[], &[], true).unwrap();
        assert_ne!(fs::read_to_string(&first.ca).unwrap(), before);
    }

    #[test]
    fn init_refuses_a_file_as_output_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(init(&file, &[], &[], false), Err(PkiError::NotADirectory { .. })));
    }
}
