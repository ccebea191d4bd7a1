//! Builds the plugins in `plugins/` for tests, once per test process.
//!
//! Rust plugins are built with cargo for `wasm32-wasip2` (the target is added with rustup
//! if it is missing). The C and Python examples need clang-19 + wasi-libc and
//! componentize-py: where they are missing, `build.rs` marks the tests that need them
//! ignored (cargo counts and names them); CI installs them and sets
//! `DATAWAY_REQUIRE_ALL_PLUGINS=1`, which makes a missing toolchain a test failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins")
}

static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();

/// The component built from the Rust crate `plugins/<krate>` (e.g. `example-rust`).
pub fn rust_plugin(krate: &str) -> PathBuf {
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(krate) {
        return p.clone();
    }
    let target_dir = out_dir().join("rust-target");
    let build = || {
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root().join("plugins"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                krate,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo")
    };
    let mut out = build();
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("target may not be installed")
    {
        let added = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
        assert!(
            added.is_ok_and(|s| s.success()),
            "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
        );
        out = build();
    }
    assert!(
        out.status.success(),
        "building plugin {krate} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    assert!(path.exists(), "{} not built", path.display());
    built.insert(krate.to_string(), path.clone());
    path
}

/// The component of a non-Rust example (`example-c`, `example-py`), built by its
/// `build.sh`. Tests that use it are marked ignored by `build.rs` where its toolchain is
/// missing, so a failed build here is a failure.
pub fn script_plugin(dir: &str) -> PathBuf {
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(dir) {
        return p.clone();
    }
    let out = out_dir().join(format!("{dir}.wasm"));
    std::fs::create_dir_all(out_dir()).unwrap();
    let result = Command::new("bash")
        .arg(root().join("plugins").join(dir).join("build.sh"))
        .arg(&out)
        .output()
        .expect("run bash");
    assert!(
        result.status.success(),
        "building plugins/{dir} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    built.insert(dir.to_string(), out.clone());
    out
}

/// A committed test fixture (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}
