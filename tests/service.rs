//! `examples/dataway.service`, the systemd unit the README installs: clean under
//! `systemd-analyze verify`, rated "OK" or better by `systemd-analyze security`, and writable
//! only where the README says the daemon keeps its data.
//!
//! Needs `systemd-analyze` (Debian's `systemd`): where it is missing the test is marked
//! ignored by `build.rs`, unless `DATAWAY_REQUIRE_ALL_PLUGINS` is set (CI), which requires it.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dataway.service"))
        .unwrap()
}

/// The unit with its `/usr/local/bin/dataway` replaced by the binary just built (verify
/// checks that the executables exist), in a directory of its own.
fn installed(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("dataway.service");
    std::fs::write(
        &path,
        unit().replace("/usr/local/bin/dataway", env!("CARGO_BIN_EXE_dataway")),
    )
    .unwrap();
    path
}

#[test]
#[cfg_attr(
    dataway_no_systemd_analyze,
    ignore = "systemd-analyze is missing (Debian: apt install systemd)"
)]
fn the_service_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let path = installed(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    // A warning (an unknown key, a misspelled setting) is a failure too.
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let out = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dataway.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    // systemd rates 0-10; below 2.0 is "OK", the best of its four grades.
    assert!(exposure < 2.0, "exposure {exposure}:\n{out}");

    // Writable: its state and cache directories, nothing else.
    let text = unit();
    let setting = |key: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect()
    };
    assert_eq!(setting("ProtectSystem"), ["strict"]);
    assert_eq!(
        setting("ReadWritePaths"),
        ["/var/lib/dataway /var/cache/dataway"]
    );
    assert_eq!(setting("StateDirectory"), ["dataway"]);
    assert_eq!(setting("CacheDirectory"), ["dataway"]);
    assert_eq!(setting("NoNewPrivileges"), ["yes"]);
    assert_eq!(setting("User"), ["dataway"]);
}

/// The config the README gives for a service install passes `dataway check`, and puts the
/// fail-cache, WAL and plugin cache where the unit lets the daemon write.
#[test]
fn the_readme_service_config_checks_and_writes_only_where_the_unit_allows() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```toml\n# /etc/dataway/dataway.toml")
        .expect("the README shows the service's /etc/dataway/dataway.toml");
    let body = &readme[start + "```toml\n".len()..];
    let toml = &body[..body.find("```").unwrap()];
    for dir in ["/var/lib/dataway/", "/var/cache/dataway/"] {
        assert!(toml.contains(dir), "{dir} in:\n{toml}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dataway.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("/var/lib/dataway/failcache"), "{said}");
}
