//! Build step for DataKit's v2 wire format: generates the Rust types of the vendored
//! `src/point/v2/point.proto` (DataKit's `PBPoints`) with prost, into `OUT_DIR/point.rs`.
//!
//! The schema is compiled by `protox`, a pure-Rust protobuf compiler, so a build needs no
//! system `protoc` (neither here nor in CI).

const PROTO: &str = "src/point/v2/point.proto";

pub fn build() {
    println!("cargo::rerun-if-changed=build/proto.rs");
    println!("cargo::rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["src/point/v2"])
        .unwrap_or_else(|e| panic!("compiling {PROTO}: {e}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust types for {PROTO}: {e}"));
}
