//! Build step for DataKit's v2 wire format: generates the Rust types of the vendored
//! `src/point/v2/point.proto` (DataKit's `PBPoints`) with prost, into `OUT_DIR/point.rs`.
//!
//! The schema is compiled by `protox`, a pure-Rust protobuf compiler, so a build needs no
//! system `protoc` (neither here nor in CI). It also decides whether the tests that run
//! DataKit's own Go codec (`tests/v2.rs`, through `dkfilter pbencode`/`pbdecode`) can run
//! here: without a Go toolchain they are marked ignored (cfg `dataway_no_go_toolchain`),
//! unless `DATAWAY_REQUIRE_ALL_PLUGINS` is set (CI), which makes them required.

use std::process::Command;

const PROTO: &str = "src/point/v2/point.proto";

pub fn build() {
    println!("cargo::rerun-if-changed=build/proto.rs");
    println!("cargo::rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["src/point/v2"])
        .unwrap_or_else(|e| panic!("compiling {PROTO}: {e}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust types for {PROTO}: {e}"));

    println!("cargo::rustc-check-cfg=cfg(dataway_no_go_toolchain)");
    if std::env::var_os("DATAWAY_REQUIRE_ALL_PLUGINS").is_none() {
        let go = Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !go {
            println!("cargo::rustc-cfg=dataway_no_go_toolchain");
        }
    }
}
