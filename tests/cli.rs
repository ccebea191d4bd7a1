//! The command line: `check`, `--version`, and config errors that name the key.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::plugins::{fixture, rust_plugin};

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

/// Runs `dataway sinker test` with `stdin`; (success, stdout, stderr).
fn sinker_test(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["sinker", "test"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sinker_test_prints_each_point_with_its_verdict_and_the_plugin_log() {
    let plugin = rust_plugin("example-rust");
    let (ok, out, err) = sinker_test(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--config",
            "cpu,mem",
            "--category",
            "M",
        ],
        "cpu,host=a usage=1 1\ndisk,host=a free=2i 2\nmem used=3 3\n",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "matched     cpu,host=a usage=1 1",
            "not matched disk,host=a free=2i 2",
            "matched     mem used=3 3",
            "2 of 3 points matched",
        ]
    );
    assert!(err.contains("plugin info: matching measurements"), "{err}");
}

#[test]
fn sinker_test_explains_what_is_wrong() {
    let plugin = rust_plugin("example-rust");
    let p = plugin.to_str().unwrap();
    // init refuses the config
    let (ok, _, err) = sinker_test(&["--plugin", p], "cpu x=1\n");
    assert!(!ok);
    assert!(
        err.contains("init failed: config must list measurement names"),
        "{err}"
    );
    // bad line protocol: the line number
    let (ok, _, err) = sinker_test(&["--plugin", p, "--config", "cpu"], "cpu x=1\ncpu x=\n");
    assert!(!ok);
    assert!(err.contains("line 2"), "{err}");
    // not a component
    let garbage = fixture("garbage.wasm");
    let (ok, _, err) = sinker_test(&["--plugin", garbage.to_str().unwrap()], "cpu x=1\n");
    assert!(!ok);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    // built against another version of the WIT: both versions named
    let future = rust_plugin("future-version");
    let (ok, _, err) = sinker_test(&["--plugin", future.to_str().unwrap()], "cpu x=1\n");
    assert!(!ok);
    assert!(
        err.contains("dataway:sinker/host@0.2.0") && err.contains("dataway:sinker@0.1.0"),
        "{err}"
    );
    // a plugin that traps: the kind of failure
    let hostile = rust_plugin("hostile");
    let (ok, _, err) = sinker_test(
        &["--plugin", hostile.to_str().unwrap(), "--config", "stack"],
        "cpu x=1\n",
    );
    assert!(!ok);
    assert!(err.contains("trap") && err.contains("stack"), "{err}");
}

#[test]
fn check_loads_every_plugin_and_fails_on_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(rust_plugin("example-rust"), plugins.join("names.wasm")).unwrap();
    std::fs::copy(fixture("garbage.wasm"), plugins.join("bad.wasm")).unwrap();
    let cfg = dir.path().join("d.toml");
    let sinker = |name: &str, plugin: &str, config: &str| {
        format!(
            "[[dataway.sinkers]]\nname = \"{name}\"\ncategories = [\"metric\"]\nplugin = \"{plugin}\"\nconfig = \"{config}\"\nurls = [\"file://s\"]\n"
        )
    };
    let head = format!(
        "[dataway]\nurls = [\"file://x\"]\nplugins_dir = \"{}\"\n",
        plugins.display()
    );
    std::fs::write(&cfg, head.clone() + &sinker("good", "names.wasm", "cpu")).unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("sinker `good` (metric): plugin") && out.contains("ok (sha256"),
        "{out}"
    );

    std::fs::write(
        &cfg,
        head.clone()
            + &sinker("good", "names.wasm", "cpu")
            + &sinker("bad", "bad.wasm", "")
            + &sinker("refused", "names.wasm", ""),
    )
    .unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("sinker `bad`") && out.contains("not a WebAssembly file"),
        "{out}"
    );
    assert!(
        out.contains("sinker `refused`") && out.contains("init failed"),
        "{out}"
    );
    assert!(out.contains("2 sinker problem(s)"), "{out}");

    // A drop-in with a bad sidecar is reported too.
    std::fs::write(&cfg, head).unwrap();
    std::fs::write(plugins.join("names.toml"), "categories = [\"metric\"]\n").unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("names.toml") && out.contains("urls"), "{out}");

    // Config errors name the sinker key.
    std::fs::write(
        &cfg,
        "[dataway]\nurls = [\"file://x\"]\n[[dataway.sinkers]]\nname = \"s\"\ncategories = [\"metricz\"]\nurls = [\"file://y\"]\n",
    )
    .unwrap();
    let (ok, out) = dataway(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("dataway.sinkers[0].categories[0]"), "{out}");
}

/// The real daemon process compiles plugins in a child (`dataway compile-plugin`): the
/// plugin serves, its compiled form lands in the cache, a core module is refused with the
/// compiler's message, and no temporary file is left behind.
#[test]
fn the_daemon_compiles_plugins_in_a_child_process() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(rust_plugin("example-rust"), plugins.join("names.wasm")).unwrap();
    std::fs::copy(fixture("core-module.wasm"), plugins.join("core.wasm")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"file://{}\"]\nplugins_dir = \"{}\"\n\
             [[dataway.sinkers]]\nname = \"s\"\ncategories = [\"metric\"]\nplugin = \"names.wasm\"\nconfig = \"cpu\"\nurls = [\"file://{}\"]\n\
             [[dataway.sinkers]]\nname = \"core\"\ncategories = [\"logging\"]\nplugin = \"core.wasm\"\nurls = [\"file://{}\"]\n\
             [dataway.sinker_limits]\ncache_dir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n",
            out("main"),
            plugins.display(),
            out("sink"),
            out("core-sink"),
            out("cache"),
        ),
    )
    .unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let metrics = rt.block_on(async {
        let cli = reqwest::Client::new();
        for _ in 0..1500 {
            if let Ok(r) = cli.get(format!("{base}/metrics")).send().await {
                let text = r.text().await.unwrap();
                if text.contains("dataway_sinker_reloads_total{result=\"ok\",sinker=\"s\"} 1") {
                    let r = cli
                        .post(format!("{base}/v1/write/metric"))
                        .body("cpu x=1 1\nmem x=2 2\n")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    return text;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the plugin never loaded");
    });
    assert!(
        metrics
            .contains("dataway_sinker_reloads_total{result=\"not_component\",sinker=\"core\"} 1"),
        "{metrics}"
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out_put = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out_put.stderr);
    assert!(out_put.status.success(), "{log}");
    assert!(log.contains("this is a core module"), "{log}");
    assert!(log.contains("plugin compiled in a child process"), "{log}");
    assert!(!log.contains("compiling in-process"), "{log}");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p).join("metric.lp")).unwrap();
    assert_eq!(read("sink"), "cpu x=1 1\n");
    assert_eq!(read("main"), "mem x=2 2\n");
    let cache: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        cache.len(),
        1,
        "one compiled plugin, no leftovers: {cache:?}"
    );
    assert!(cache[0].ends_with(".cwasm"));
}
