//! Fuzz inputs as ordinary tests: every file under
//! `fuzz/regressions/frame_relay/` (inputs that once broke a property) and
//! `fuzz/seeds/frame_relay/` (hand-made starting points) goes through the
//! same function the `frame_relay` fuzz target calls, so they run under
//! `cargo test` without cargo-fuzz or a nightly flag.

// Each target's check is included as in its own fuzz binary, with the
// scratch-file helper it brings; two of them bring the same one.
#![allow(clippy::duplicate_mod)]

#[path = "../fuzz/fuzz_targets/common/frame_relay.rs"]
mod frame_relay;
#[path = "../fuzz/fuzz_targets/common/proxy.rs"]
mod proxy;

use std::path::Path;

/// The files of `fuzz/DIR/TARGET/`, sorted (none if it is absent).
fn inputs(dir: &str) -> Vec<std::path::PathBuf> {
    inputs_of(dir, "frame_relay")
}

fn inputs_of(dir: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn frame_relay_regressions_and_seeds() {
    let files: Vec<_> = inputs("regressions").into_iter().chain(inputs("seeds")).collect();
    assert!(!files.is_empty(), "no inputs under fuzz/regressions/frame_relay or fuzz/seeds/frame_relay");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        eprintln!("{}: {} bytes", file.display(), data.len());
        frame_relay::run(&data);
    }
}

#[test]
fn proxy_seeds() {
    let files: Vec<_> = inputs_of("regressions", "proxy").into_iter().chain(inputs_of("seeds", "proxy")).collect();
    assert!(!files.is_empty(), "no inputs under fuzz/seeds/proxy");
    for file in files {
        proxy::run(&std::fs::read(&file).unwrap());
    }
}

#[path = "../fuzz/fuzz_targets/common/config_file.rs"]
mod config_file;
#[path = "../fuzz/fuzz_targets/common/identity_pattern.rs"]
mod identity_pattern;
#[path = "../fuzz/fuzz_targets/common/material_pem.rs"]
mod material_pem;
#[path = "../fuzz/fuzz_targets/common/upstream.rs"]
mod upstream;

/// Every regression input of the parsers' fuzz targets through the same
/// check the target runs: each once broke a property, and must not again.
#[test]
fn parser_regressions() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("config_file", config_file::check),
        ("identity_pattern", identity_pattern::check),
        ("material_pem", material_pem::check),
        ("upstream", upstream::check),
    ];
    for (target, check) in targets {
        let files = inputs_of("regressions", target);
        assert!(!files.is_empty(), "no inputs under fuzz/regressions/{target}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            eprintln!("{}: {} bytes", file.display(), data.len());
            check(&data);
        }
    }
}
