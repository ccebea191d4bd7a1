//! Decides, once per build, whether the C and Python plugin tests can run here: their
//! toolchains (clang-19 + wasi-libc, componentize-py) are not Rust's, so a machine may lack
//! them. Without them those tests are marked ignored — and counted as ignored by
//! `cargo test` — instead of passing without testing anything. CI sets
//! `DATAWAY_REQUIRE_ALL_PLUGINS=1`, which never ignores them (a missing toolchain fails).

use std::process::Command;

#[path = "build/embed.rs"]
mod embed;
#[path = "build/proto.rs"]
mod proto;

fn main() {
    proto::build();
    embed::build_builtin_filter();
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=plugins/example-c/build.sh");
    println!("cargo::rerun-if-changed=plugins/example-py/build.sh");
    println!("cargo::rerun-if-env-changed=DATAWAY_REQUIRE_ALL_PLUGINS");
    // A toolchain installed later shows up as a changed PATH or a new build; `cargo clean`
    // also re-runs this.
    println!("cargo::rerun-if-env-changed=PATH");
    for (plugin, cfg) in [
        ("example-c", "dataway_no_c_toolchain"),
        ("example-py", "dataway_no_py_toolchain"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var_os("DATAWAY_REQUIRE_ALL_PLUGINS").is_some() {
            continue;
        }
        let ok = Command::new("sh")
            .arg(format!("plugins/{plugin}/build.sh"))
            .arg("--check")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    // The tests that run DataKit's own Go code (`tests/v2.rs` through `dkfilter pbencode` /
    // `pbdecode`, `tests/filter_differential.rs`) build it with golang-go.
    tool_or_ignore("dataway_no_go_toolchain", &[("go", "version")]);
    // `tests/dashboard.rs` runs the Grafana dashboard's queries through a real Prometheus and
    // lints `/metrics` with promtool (Debian: `apt-get install prometheus`).
    tool_or_ignore(
        "dataway_no_prometheus",
        &[("prometheus", "--version"), ("promtool", "--version")],
    );
    // `tests/service.rs` checks `examples/dataway.service` with `systemd-analyze` (Debian:
    // `systemd`).
    tool_or_ignore(
        "dataway_no_systemd_analyze",
        &[("systemd-analyze", "--version")],
    );
}

/// Sets `cfg` (the tests that need these programs are marked ignored) unless every one of
/// `tools` runs with its argument; never under `DATAWAY_REQUIRE_ALL_PLUGINS` (CI), which
/// makes those tests required.
fn tool_or_ignore(cfg: &str, tools: &[(&str, &str)]) {
    println!("cargo::rustc-check-cfg=cfg({cfg})");
    if std::env::var_os("DATAWAY_REQUIRE_ALL_PLUGINS").is_some() {
        return;
    }
    let ok = tools.iter().all(|(bin, arg)| {
        Command::new(bin)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        println!("cargo::rustc-cfg={cfg}");
    }
}
