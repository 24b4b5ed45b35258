//! Test fixtures shared by the material tests: a scratch directory, keys
//! and certificates generated on the spot, and two fixed keys ring cannot
//! generate.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

use super::{MaterialError, MaterialErrorKind};

/// A 2048-bit RSA key in PKCS#1 form, generated only for these tests
/// (ring cannot generate RSA keys). It protects nothing.
pub(super) const TEST_RSA_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpQIBAAKCAQEAtIi9lR4YtCKALwJG1oEnXQOqEDmxbRpnsnDfX5OOCk7f6udH\n\
fFozVGNn/v7QAbBNmblEhdGg9KnE9DK6kmz3KZ3efaLIi6VOHZ4HaLbPsZwti7Hi\n\
6dJC9M8IfklJGQlxIwBAwdFQRtnYSee+O4027UInckluxYvjGTfQCvlQzyGd1KUK\n\
z5kl5cRQniufaTRgSgdxRHGiTu6UaK1DOopqe2SPfHRrNhS5OViSY1hEdUnQA1Qn\n\
8sdu/PA6wYScDlbz/GIbcAj9ZlJrPqCYLeXlVPJs8IqImKjwpnrCo6/auq2NTT7B\n\
xRIaCDe7M7zP2XhRy87follu+bZ+m53cE5PI1wIDAQABAoIBAAVdBpzWfw9i8wHy\n\
hF49CglWYYgH3sCKB0ii19AEFzUxMK/O3S3RlDLOnTlTIqTaMwP9IA8Fsk1yebpz\n\
g110RUeEPCbpXiHf8Fkq57dxruvs4uGCkGY36+tP90WhMb2/rQ/IIyRe7o6cTDOt\n\
4dXtFROpYnifu928kSufn9ujmoX8weiHr5m6UVPZ4p9IRprkEI4ELUt+wLMGvr1k\n\
3AD2yrYJrU3gViuur6v95RcsPCLTq9Kl4j/ZSyjI8seBhbL9qJMgSaRGA1rSBBnK\n\
fm5PzJU5/4FuXDOTemkifVgXSKhIaxTMFNofy1rBzECrhl5HwW/tI9+K6Ll3j/T/\n\
Low8u/ECgYEA1+QIzYeccSFUr76L8zUiG+czGUfJRfTIVAcIEsrs4ZyYjPGK4gwp\n\
x++6vTB2X85/8imIqJLb4ZerrE04oAIJkOojo8/1JNvWv40yer3TTvNoVcqX/DJZ\n\
VzGXihcy4d8Wj+EZ7zXOzdIF7u0Q1jVDVUuBRwRx/DiI8C/KVWF/YtkCgYEA1hMc\n\
0FuWzGmNacJylp44/xVJ+zO+SwZ3iiA4AUGfawu2qhzGjgay4jWOcDW7dYoE0VFa\n\
TZPI+IuD/TxgVnEaj0dAE1xG6SE/MsC8Uamh61EHCSeK/LIWiXdmHcf3z8KZC7nU\n\
ZnPUQxEYjTvJr4KH282r5ZOtTAx7E4qTSkoJ2y8CgYEAh/sCrGoxWHR1AekT/1FF\n\
NawPXGoB1YVTtNFk/WlBgO2AjK4LG0wr+Nn/lfBzbu8DWcVdZUhzJInCwNk2xFnk\n\
Kpm/bwuqTdgGUEqgM/1inkTkP71Gs7wG18vNtlXcX7aDYIaZLjmHE86onBBH3ZRY\n\
392aBOBA52u4nQiM+fBaKykCgYEAtERF6EKn+pwLw/pE6gZ0soCn2svYu27HrN2y\n\
q4QqDUdA24D9xk1nx0sYFe95WuINaoIaC+edvYYmcFGuQjxeBDcYgvUalWg0wrVA\n\
H3g77F9AEHpm9KG2jq2npP5l9GLG4/PpIxj4rj0wMoYdMRk29GX+EYXI0ZhU78Cq\n\
hU1RfWsCgYEAp/jVWUFkmbut0PnTAMoWAFbuCdT1OcLGVTt8cdZN3QXKaMJbD57I\n\
UYuHv+OCdkPPAx9dkURxDcOe8YWcACubOq3DMUK4WT+gIzmBSBgxf23/7y/MEBks\n\
zkTny00MaiJckgzkF5XopKNLoibwCX4BvySANETgrR37RcueWt1jPg8=\n\
-----END RSA PRIVATE KEY-----\n\
";
/// A P-256 key in SEC1 form, generated only for these tests.
pub(super) const TEST_EC_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIPbIJEZyFyOieZNsVG6S2y4xN/1ry8l2ooWfikfH+LCHoAoGCCqGSM49\n\
AwEHoUQDQgAEETvq8neaEnwSdjtlATg4Ve1aXM0TAuJ+UCsK4r2JehHjuEvgYJ/p\n\
/kz/mTVzoIy6Kykh1DMCx6AmhoYGowJxNg==\n\
-----END EC PRIVATE KEY-----\n\
";

pub(super) struct Fixture {
    pub(super) dir: TempDir,
}

impl Fixture {
    pub(super) fn new() -> Self {
        Fixture { dir: tempfile::tempdir().unwrap() }
    }

    pub(super) fn write(&self, name: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

pub(super) struct Generated {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

pub(super) fn params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![cn.to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

pub(super) fn self_signed(cn: &str) -> Generated {
    let key = KeyPair::generate().unwrap();
    let cert = params(cn).self_signed(&key).unwrap();
    Generated { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// A CA and a leaf it issued, as PEM: (ca, leaf).
pub(super) fn ca_and_leaf() -> (Generated, Generated) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = params("test CA");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = params("leaf.example");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (
        Generated { cert_pem: ca_cert.pem(), key_pem: ca_key.serialize_pem() },
        Generated { cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem() },
    )
}

pub(super) fn err_text<T: fmt::Debug>(result: Result<T, MaterialError>) -> (MaterialErrorKind, String) {
    let err = result.unwrap_err();
    (err.kind(), err.to_string())
}
