//! One scratch file per fuzzing process, for targets whose code under test
//! reads a path.
//!
//! The file sits in a private directory under `$FUZZ_SCRATCH` when that is
//! set (`scripts/fuzz` points it at a directory it removes afterwards),
//! else on /dev/shm (tmpfs), else in the system temporary directory. The
//! directory is removed when libFuzzer exits normally. After a crash it is
//! left behind, like the crash artifact.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The path of this process's scratch file, named `name`.
pub fn file(name: &str) -> PathBuf {
    let dir = DIR.get_or_init(|| {
        let base = match std::env::var_os("FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new().prefix("openshell-bridge-fuzz.").tempdir_in(base).expect("temp dir");
        // libFuzzer ends with exit(), which runs atexit handlers but no
        // Rust destructors of statics.
        unsafe { libc::atexit(remove_dir) };
        dir.keep()
    });
    dir.join(name)
}
