//! `tls::material` loaders: `load_certs`, `load_roots`, `load_key` and
//! `load_cert_info` on arbitrary file contents. They take paths (there is
//! no public function over PEM bytes), so each input is written to one file
//! (mode 0600) in a private temporary directory on tmpfs: see
//! `common/scratch.rs`.
//!
//! Properties:
//! - no loader panics, whatever the bytes (truncated PEM, bad base64,
//!   binary DER, mislabelled blocks, keys ring cannot use);
//! - the loaders agree: `load_roots` or `load_cert_info` succeeding implies
//!   `load_certs` succeeds, with at least one certificate, and
//!   `load_cert_info` describes its first one exactly as `cert_info` does;
//! - every error is one line that names the flag and the file;
//! - nothing read from the file is echoed back (the module's promise): no
//!   base64 payload line of the file (16+ characters, not part of a
//!   `-----BEGIN/END ...-----` label, which errors name on purpose) appears
//!   in an error message.
//!
//! Seeds: PEM certificates and keys made by `scripts/fuzz` with openssl.
#![no_main]

#[path = "common/material_pem.rs"]
mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
