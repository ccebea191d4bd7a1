//! The command line: `check`, `--version`, and config errors that name the key.

use std::process::Command;

fn dataway(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(args)
        .env_remove("ENV_DATAWAY")
        .env_remove("ENV_DATAWAY_TIMEOUT")
        .env_remove("ENV_DATAWAY_HTTP_PROXY")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn version_is_printed() {
    let (ok, out) = dataway(&["--version"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("dataway {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_prints_endpoints_with_tokens_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        "[dataway]\nurls = [\"https://openway.example.com?token=tkn_0123456789abcdef0123456789abcdef\", \"file://out\"]\n",
    )
    .unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "endpoint[0]: https://openway.example.com?token=tkn_*** (also serves the other APIs)"
        ),
        "{out}"
    );
    assert!(out.contains("endpoint[1]: file://out"), "{out}");
    assert!(!out.contains("0123456789abcdef"), "{out}");
}

#[test]
fn check_of_the_embedded_defaults_and_the_example_succeeds() {
    let (ok, out) = dataway(&["check"]);
    assert!(ok, "{out}");
    assert!(out.contains("endpoint[0]: file://dataway-out"), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/dataway.toml");
    let (ok, out) = dataway(&["check", "-c", example]);
    assert!(ok, "{out}");
}

#[test]
fn bad_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        "[dataway]\nurls = [\"file://x\"]\nhttp_proxy = \"proxy:3128\"\n",
    )
    .unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("dataway.http_proxy") && out.contains("http://"),
        "{out}"
    );
    std::fs::write(&cfg, "[dataway]\nretry_dealy = \"1s\"\n").unwrap();
    let (ok, out) = dataway(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("retry_dealy"), "{out}");
}
