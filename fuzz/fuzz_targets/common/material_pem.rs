//! The check of the `material_pem` fuzz target, shared with `tests/fuzz_regressions.rs`
//! so its regression inputs run under `cargo test` (the target's properties
//! are described in `fuzz_targets/material_pem.rs`).

#[path = "scratch.rs"]
mod scratch;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use openshell_driver_bridge::tls::material::{
    cert_info, load_cert_info, load_certs, load_key, load_roots, MaterialError,
};

fn write(path: &Path, data: &[u8]) {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("create");
    file.write_all(data).expect("write");
}

/// Lines of the input that an error must never repeat: base64 payload
/// lines (key or certificate material), long enough not to occur by chance,
/// and not part of a PEM label (labels are named in errors on purpose).
fn secret_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let armour: Vec<&str> =
        text.lines().map(str::trim).filter(|l| l.starts_with("-----BEGIN ") || l.starts_with("-----END ")).collect();
    text.lines()
        .map(str::trim)
        .filter(|l| l.len() >= 16 && l.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
        .filter(|l| !armour.iter().any(|a| a.contains(l)))
        .map(str::to_owned)
        .collect()
}

fn check_error(flag: &str, path: &Path, data: &[u8], error: &MaterialError) {
    let text = error.to_string();
    assert!(!text.contains(['\n', '\r']), "{flag}: error is not one line: {text:?}");
    let path_text = path.display().to_string();
    assert!(text.starts_with(&format!("{flag} {path_text}: ")), "{flag}: error does not name flag and file: {text:?}");
    let without_path = text.replace(&path_text, "");
    for line in secret_lines(data) {
        assert!(!without_path.contains(&line), "{flag}: error echoes file content {line:?}: {text:?}");
    }
}

/// Checks the target's properties on one input (panics when one breaks).
pub fn check(data: &[u8]) {
    let path = &scratch::file("material.pem");
    write(path, data);

    let certs = load_certs("--cert", path);
    match &certs {
        Ok(certs) => assert!(!certs.is_empty(), "load_certs returned no certificate"),
        Err(e) => check_error("--cert", path, data, e),
    }
    match load_roots("--ca", path) {
        Ok(_) => assert!(certs.is_ok(), "load_roots accepted what load_certs refused"),
        Err(e) => check_error("--ca", path, data, &e),
    }
    match load_cert_info("--cert", path) {
        Ok(info) => {
            let certs = certs.as_ref().expect("load_cert_info accepted what load_certs refused");
            assert_eq!(cert_info(&certs[0]).as_ref(), Ok(&info));
        }
        Err(e) => check_error("--cert", path, data, &e),
    }
    if let Err(e) = load_key("--key", path, false) {
        check_error("--key", path, data, &e);
    }
}
