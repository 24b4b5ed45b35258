//! A development PKI with an intermediate CA: a root (the only certificate
//! either side passes as `--ca`), one intermediate signed by it, and the
//! server and client leaves issued by the intermediate, each written with
//! the intermediate after it (`--cert` holds the chain, leaf first), as an
//! enterprise PKI hands them out.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyUsagePurpose};
use time::OffsetDateTime;

use super::ca::CA_LIFETIME;
use super::files::{client_spec, ensure_private_dir, io_error, server_spec};
use super::{
    distinguished_name, generate_error, generate_key, write_pem, Ca, DevPkiPaths, PkiError, BACKDATE, DEV_CA_NAME,
};

/// The intermediate's certificate, next to the others.
pub const INTERMEDIATE_CERT_FILE: &str = "intermediate.pem";
/// The intermediate's key: it mints the leaves.
pub const INTERMEDIATE_KEY_FILE: &str = "intermediate-key.pem";

fn ca_params(common_name: &str, path_length: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_length));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = path_length == 0;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    params
}

impl Ca {
    /// A root CA that signs intermediate CAs (path length 1).
    pub fn root(common_name: &str) -> Result<Ca, PkiError> {
        let name = super::check_common_name(common_name)?;
        let key = generate_key(name)?;
        let issuer = CertifiedIssuer::self_signed(ca_params(name, 1), key).map_err(generate_error(name))?;
        Ok(Ca { common_name: name.to_owned(), issuer })
    }

    /// An intermediate CA signed by this one; it signs only leaves.
    pub fn intermediate(&self, common_name: &str) -> Result<Ca, PkiError> {
        let name = super::check_common_name(common_name)?;
        let key = generate_key(name)?;
        let issuer = CertifiedIssuer::signed_by(ca_params(name, 0), key, &self.issuer).map_err(generate_error(name))?;
        Ok(Ca { common_name: name.to_owned(), issuer })
    }
}

/// What `certs init --intermediate` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediatePaths {
    pub pki: DevPkiPaths,
    pub intermediate: PathBuf,
    pub intermediate_key: PathBuf,
}

impl IntermediatePaths {
    /// Each file with a label for people, in the order they are printed.
    pub fn listing(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("root CA certificate", self.pki.ca.as_path()),
            ("root CA private key", self.pki.ca_key.as_path()),
            ("intermediate CA", self.intermediate.as_path()),
            ("intermediate CA key", self.intermediate_key.as_path()),
            ("server chain", self.pki.server_cert.as_path()),
            ("server private key", self.pki.server_key.as_path()),
            ("client chain", self.pki.client_cert.as_path()),
            ("client private key", self.pki.client_key.as_path()),
        ]
    }
}

/// Like [`super::init`], with an intermediate between the root and the
/// leaves: `ca.pem` is the root only, `server.pem` and `client.pem` hold the
/// leaf then the intermediate.
pub fn init_with_intermediate(
    out: &Path,
    server_names: &[String],
    client_names: &[String],
    force: bool,
) -> Result<IntermediatePaths, PkiError> {
    let pki = DevPkiPaths::in_dir(out);
    let paths = IntermediatePaths {
        intermediate: out.join(INTERMEDIATE_CERT_FILE),
        intermediate_key: out.join(INTERMEDIATE_KEY_FILE),
        pki,
    };
    ensure_private_dir(out)?;
    if !force {
        let names: Vec<String> = paths
            .listing()
            .iter()
            .filter(|(_, path)| fs::symlink_metadata(path).is_ok())
            .filter_map(|(_, path)| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() {
            return Err(PkiError::Exists { dir: out.to_path_buf(), names });
        }
    }
    let tag = format!("{:08x}", rand::random::<u32>());
    let root = Ca::root(&format!("{DEV_CA_NAME} {tag}"))?;
    let intermediate = root.intermediate(&format!("{DEV_CA_NAME} intermediate {tag}"))?;
    let server = intermediate.issue(&server_spec(server_names))?;
    let client = intermediate.issue(&client_spec(client_names))?;
    let chain = |leaf: &str| format!("{leaf}{}", intermediate.cert_pem());
    let writes: [(&Path, String, bool); 8] = [
        (&paths.pki.ca_key, root.key_pem(), true),
        (&paths.pki.ca, root.cert_pem(), false),
        (&paths.intermediate_key, intermediate.key_pem(), true),
        (&paths.intermediate, intermediate.cert_pem(), false),
        (&paths.pki.server_key, server.key_pem.clone(), true),
        (&paths.pki.server_cert, chain(&server.cert_pem), false),
        (&paths.pki.client_key, client.key_pem.clone(), true),
        (&paths.pki.client_cert, chain(&client.cert_pem), false),
    ];
    for (path, pem, private) in writes {
        write_pem(path, &pem, private).map_err(io_error("write", path))?;
    }
    Ok(paths)
}
