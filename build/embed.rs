//! Builds the `datakit-filter` plugin (`plugins/datakit-filter`) for `wasm32-wasip2` and puts
//! the component at `$OUT_DIR/datakit_filter.wasm`, which `src/sinker/builtin.rs` embeds: a
//! DataKit config's `filters` then works with the release binary alone.
//!
//! The plugin is built by a nested `cargo build --release --target wasm32-wasip2 -p
//! datakit-filter` in the `plugins/` workspace:
//! - with its own target directory, `<outer target>/tmp/plugins/rust-target`, which is the one
//!   the tests build their plugins in (`tests/common/plugins.rs`): `cargo clippy` and `cargo
//!   test` (whose build-script runs differ) and the tests themselves all reuse one build,
//!   and it is incremental. It is not the outer target directory itself, so the nested cargo
//!   never waits for the lock the outer one holds.
//! - with the outer build's flags removed from its environment (`RUSTFLAGS`, the
//!   clippy wrapper, profile overrides, `CARGO_TARGET_DIR`, …): the plugin is built the same
//!   way whatever the outer build is, so every build of the daemon embeds the same bytes.
//!
//! A missing `wasm32-wasip2` target is added with rustup, as the tests do; if that fails
//! the build stops with the command to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crate, and the file name it becomes.
const KRATE: &str = "datakit-filter";
const FILE: &str = "datakit_filter.wasm";

pub fn build_builtin_filter() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let plugins = root.join("plugins");
    for p in [
        "plugins/datakit-filter",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "wit",
    ] {
        println!("cargo::rerun-if-changed={p}");
    }
    let target_dir = outer_target_dir(&out_dir)
        .map(|t| t.join("tmp").join("plugins").join("rust-target"))
        .unwrap_or_else(|| out_dir.join("wasm-target"));

    let mut out = cargo_build(&plugins, &target_dir);
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("target may not be installed")
    {
        let added = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
        if !added.is_ok_and(|s| s.success()) {
            panic!(
                "building the built-in DataKit filter needs the wasm32-wasip2 target, and \
                 `rustup target add wasm32-wasip2` failed: run it yourself, then build again"
            );
        }
        out = cargo_build(&plugins, &target_dir);
    }
    if !out.status.success() {
        panic!(
            "building the built-in DataKit filter (`cargo build --release --target \
             wasm32-wasip2 -p {KRATE}` in plugins/) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let built = target_dir.join("wasm32-wasip2/release").join(FILE);
    let bytes =
        std::fs::read(&built).unwrap_or_else(|e| panic!("{} was not built: {e}", built.display()));
    // Rewritten only when it changed: an unchanged file keeps its mtime, and with it the
    // daemon crate's fingerprint.
    let dest = out_dir.join(FILE);
    if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(&dest, &bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
    }
}

fn cargo_build(plugins: &Path, target_dir: &Path) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            KRATE,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    // What the outer build was told, not what the plugin should be built with. Kept: RUSTC
    // (the same toolchain), CARGO_HOME and network settings, CARGO_MAKEFLAGS (the nested
    // cargo takes its jobs from the outer one's jobserver instead of adding its own).
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let drop = matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "CARGO_ENCODED_RUSTFLAGS"
                | "CARGO_ENCODED_RUSTDOCFLAGS"
                | "CARGO_BUILD_RUSTFLAGS"
                | "CARGO_TARGET_DIR"
                | "CARGO_BUILD_TARGET_DIR"
                | "CARGO_BUILD_TARGET"
                | "CARGO_INCREMENTAL"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_MANIFEST_PATH"
        ) || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_");
        if drop {
            cmd.env_remove(key);
        }
    }
    cmd.output()
        .expect("run cargo for the built-in DataKit filter")
}

/// The outer build's target directory: the nearest ancestor of `OUT_DIR` that cargo marked
/// with `CACHEDIR.TAG`.
fn outer_target_dir(out_dir: &Path) -> Option<PathBuf> {
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}
