//! The command line: `check`, `--version`, and config errors that name the key.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::plugins::{fixture, rust_plugin};
use common::process::DaemonProcess;

fn dataway(args: &[&str]) -> (bool, String) {
    let (code, text) = dataway_in(None, args, &[]);
    (code == Some(0), text)
}

/// Runs `dataway ARGS` to its end, in `cwd` if given, with `env` added (and none of the
/// caller's `ENV_DATAWAY*`): (exit code, stdout + stderr).
fn dataway_in(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
    cmd.args(args)
        .env_remove("ENV_DATAWAY")
        .env_remove("ENV_DATAWAY_TIMEOUT")
        .env_remove("ENV_DATAWAY_HTTP_PROXY")
        .env_remove("RUST_LOG")
        .env_remove("MIMALLOC_PURGE_DELAY")
        .envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Writes `text` to `dir/name` and returns its path as a string.
fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn version_is_printed() {
    let (ok, out) = dataway(&["--version"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("dataway {}", env!("CARGO_PKG_VERSION")));
}

/// `check` prints every endpoint, main and sinkers', with tokens redacted, which one serves
/// the other APIs, and where data goes on disk, relative paths resolved against the config
/// file's folder (not the working directory).
#[test]
fn check_prints_endpoints_with_tokens_redacted_and_where_data_goes() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let cfg = write_config(
        &etc,
        "d.toml",
        "[dataway]\nurls = [\"https://openway.example.com?token=tkn_0123456789abcdef0123456789abcdef\", \"file://out\"]\n\
         [[dataway.sinkers]]\nname = \"web\"\ncategories = [\"M\"]\n\
         urls = [\"https://sink.example.com?token=tkn_fedcba9876543210fedcba9876543210\", \"file://sink-out\"]\n\
         [dataway.wal]\nenabled = true\n[dataway.sinker_limits]\ncache_dir = \"compiled\"\n",
    );
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let (code, out) = dataway_in(Some(&cwd), &["check", "-c", &cfg], &[]);
    assert_eq!(code, Some(0), "{out}");
    let etc = etc.display();
    for line in [
        "endpoint[0]: https://openway.example.com?token=tkn_***".to_string(),
        format!("endpoint[1]: file://{etc}/out (appends to {etc}/out/<category>.lp)"),
        "other APIs (/v1/query/raw, ...): endpoint[0]".to_string(),
        "sinker `web` endpoint[0]: https://sink.example.com?token=tkn_***".to_string(),
        format!(
            "sinker `web` endpoint[1]: file://{etc}/sink-out (appends to {etc}/sink-out/<category>.lp)"
        ),
        format!("fail-cache: {etc}/dataway-data/failcache (one file per HTTP endpoint)"),
        format!("wal: {etc}/dataway-data/wal/wal.redb"),
        format!("plugins: {etc}/plugins (does not exist: only the built-in datakit_filter.wasm)"),
        format!("compiled plugins: {etc}/compiled"),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line `{line}` in:\n{out}"
        );
    }
    assert!(!out.contains("0123456789abcdef"), "{out}");
    assert!(!out.contains("fedcba9876543210"), "{out}");
    assert!(!out.contains(&cwd.display().to_string()), "{out}");
    // check writes nothing.
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
}

/// Without -c, the embedded defaults are relative to the working directory, and `check`
/// shows them there; the first endpoint is a directory, so no endpoint serves other APIs.
#[test]
fn check_of_the_embedded_defaults_and_the_example_succeeds() {
    let cwd = tempfile::tempdir().unwrap();
    let at = cwd.path().display();
    let (code, out) = dataway_in(Some(cwd.path()), &["check"], &[]);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        format!("endpoint[0]: file://dataway-out (appends to {at}/dataway-out/<category>.lp)"),
        format!("fail-cache: {at}/dataway-data/failcache (one file per HTTP endpoint)"),
        "wal: off".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line `{line}` in:\n{out}"
        );
    }
    assert!(
        out.contains("other APIs (/v1/query/raw, ...): none (endpoint[0] is a file:// directory"),
        "{out}"
    );
    assert!(!out.contains("also serves"), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/dataway.toml");
    let (ok, out) = dataway(&["check", "-c", example]);
    assert!(ok, "{out}");
}

/// A config error exits 2 and names the key (or the environment variable), for `check`
/// and `run` alike.
#[test]
fn bad_config_fails_with_code_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "d.toml",
        "[dataway]\nurls = [\"file://x\"]\nhttp_proxy = \"proxy:3128\"\n",
    );
    let (code, out) = dataway_in(None, &["check", "-c", &cfg], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("dataway.http_proxy") && out.contains("http://"),
        "{out}"
    );
    write_config(dir.path(), "d.toml", "[dataway]\nretry_dealy = \"1s\"\n");
    let (code, out) = dataway_in(None, &["run", "-c", &cfg], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("retry_dealy"), "{out}");
    // A bad duration shows how to write one.
    write_config(dir.path(), "d.toml", "[dataway]\ntimeout = \"30\"\n");
    let (code, out) = dataway_in(None, &["check", "-c", &cfg], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("timeout") && out.contains("`30s`"), "{out}");
    // The environment's proxy is named as such, not as the key it replaces.
    let (code, out) = dataway_in(
        None,
        &["check"],
        &[("ENV_DATAWAY_HTTP_PROXY", "proxy:3128")],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("ENV_DATAWAY_HTTP_PROXY") && !out.contains("dataway.http_proxy"),
        "{out}"
    );
}

/// `[log] level = "verbose"` once passed `check` and then made `run` log nothing at all.
#[test]
fn a_bad_log_level_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "d.toml", "[log]\nlevel = \"verbose\"\n");
    for cmd in ["check", "run"] {
        let (code, out) = dataway_in(Some(dir.path()), &[cmd, "-c", &cfg], &[]);
        assert_eq!(code, Some(2), "{cmd}: {out}");
        assert!(
            out.contains("log.level") && out.contains("`verbose`"),
            "{cmd}: {out}"
        );
    }
    write_config(
        dir.path(),
        "d.toml",
        "[log]\nlevel = \"INFO,dataway::sinker=trace\"\n",
    );
    let (code, out) = dataway_in(None, &["check", "-c", &cfg], &[]);
    assert_eq!(code, Some(0), "{out}");
}

/// A port in use: one clear error naming `ingest.listen`, exit 1.
#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "d.toml",
        &format!("[ingest]\nlisten = \"{addr}\"\n"),
    );
    let (code, out) = dataway_in(Some(dir.path()), &["run", "-c", &cfg], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.matches("cannot listen on").count(),
        1,
        "reported once:\n{out}"
    );
    assert!(
        out.contains(&format!("cannot listen on {addr} (ingest.listen)")),
        "{out}"
    );
}

/// `run` caps glibc's arenas and maps large buffers on their own (so they go back to the OS
/// when freed), unless the user set malloc up in the environment.
#[test]
fn run_sets_the_allocator_up_unless_the_environment_does() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "d.toml",
        &format!(
            "[log]\nlevel = \"debug\"\n[ingest]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let (_, out) = dataway_in(Some(dir.path()), &["run", "-c", &cfg], &[]);
    assert!(
        out.contains(
            "allocator: glibc malloc, 2 arenas, buffers from 512 KiB mapped on their own, 8 MiB kept free an arena"
        ),
        "{out}"
    );
    let env = [("MALLOC_ARENA_MAX", "4")];
    let (_, out) = dataway_in(Some(dir.path()), &["run", "-c", &cfg], &env);
    assert!(
        out.contains("allocator: glibc malloc, as the environment sets it"),
        "{out}"
    );
}

/// The real daemon, started in one directory on a config file in another: what it writes
/// (file:// output, WAL) lands next to the config file; the start-up log says where. Other
/// APIs on a file:// first endpoint get a 501 that says why and what to do.
#[test]
fn the_daemon_writes_next_to_its_config_file_and_explains_other_apis_on_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&etc).unwrap();
    std::fs::create_dir(&cwd).unwrap();
    let cfg = write_config(
        &etc,
        "d.toml",
        "[dataway]\nurls = [\"file://out\"]\n[dataway.wal]\nenabled = true\n\
         [dataway.sinker_limits]\ncache_dir = \"\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut d = DaemonProcess::start_in(Path::new(&cfg), Some(&cwd), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cli = reqwest::Client::new();
    let (write, query) = rt.block_on(async {
        let w = cli
            .post(d.url("/v1/write/metric"))
            .body("cpu x=1 1\n")
            .send()
            .await
            .unwrap()
            .status();
        let q = cli
            .post(d.url("/v1/query/raw"))
            .body("{}")
            .send()
            .await
            .unwrap();
        (w, (q.status(), q.text().await.unwrap()))
    });
    assert_eq!(write, 200);
    assert_eq!(query.0, 501, "{}", query.1);
    assert!(
        query.1.contains("dataway.urls")
            && query.1.contains("file://")
            && query.1.contains("first"),
        "{}",
        query.1
    );
    d.signal("TERM");
    let st = d.wait(Duration::from_secs(30));
    assert!(st.success(), "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(etc.join("out/metric.lp")).unwrap(),
        "cpu x=1 1\n"
    );
    assert!(etc.join("dataway-data/wal/wal.redb").exists());
    let leaked: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
    assert!(
        leaked.is_empty(),
        "written to the working directory: {leaked:?}"
    );
    let log = d.log();
    assert!(
        log.contains(&format!("wal: {}/dataway-data/wal/wal.redb", etc.display())),
        "{log}"
    );
}

/// Runs `dataway sinker test` with `stdin`; (success, stdout, stderr).
fn sinker_test(args: &[&str], stdin: &str) -> (bool, String, String) {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache");
    common::sinker_test_in(args, stdin, None, &cache)
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
        err.contains("dataway:sinker/host@0.2.0") && err.contains("dataway:sinker@0.1.1"),
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

/// `check` loads every plugin; one that would not load exits 1 (the daemon would run its
/// sinker disabled), a config error 2.
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
    let (code, out) = dataway_in(None, &["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{out}");
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
    let (code, out) = dataway_in(None, &["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("names.toml") && out.contains("urls"), "{out}");
    // A good drop-in is loaded and its endpoints listed, tokens redacted.
    std::fs::write(
        plugins.join("names.toml"),
        "categories = [\"metric\"]\nconfig = \"cpu\"\nurls = [\"https://sink.example.com?token=tkn_dropin_secret\"]\n",
    )
    .unwrap();
    let (code, out) = dataway_in(None, &["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("drop-in sinker `names` (metric): plugin") && out.contains("ok (sha256"),
        "{out}"
    );
    assert!(
        out.contains("drop-in sinker `names` endpoint[0]: https://sink.example.com?token=tkn_***"),
        "{out}"
    );
    assert!(!out.contains("tkn_dropin_secret"), "{out}");
    std::fs::remove_file(plugins.join("names.toml")).unwrap();

    // Config errors name the sinker key.
    std::fs::write(
        &cfg,
        "[dataway]\nurls = [\"file://x\"]\n[[dataway.sinkers]]\nname = \"s\"\ncategories = [\"metricz\"]\nurls = [\"file://y\"]\n",
    )
    .unwrap();
    let (code, out) = dataway_in(None, &["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}");
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
    let out = |name: &str| dir.path().join(name).display().to_string();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"file://{}\"]\nplugins_dir = \"{}\"\n\
             [[dataway.sinkers]]\nname = \"s\"\ncategories = [\"metric\"]\nplugin = \"names.wasm\"\nconfig = \"cpu\"\nurls = [\"file://{}\"]\n\
             [[dataway.sinkers]]\nname = \"core\"\ncategories = [\"logging\"]\nplugin = \"core.wasm\"\nurls = [\"file://{}\"]\n\
             [dataway.sinker_limits]\ncache_dir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n",
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
    let mut d = DaemonProcess::start(&cfg, &[("TMPDIR", tmp.to_str().unwrap())]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt.block_on(async {
        let cli = reqwest::Client::new();
        // 30 s: a limit for a stuck compile, not a speed requirement.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(r) = cli.get(d.url("/metrics")).send().await {
                let text = r.text().await.unwrap();
                let reloads = |s: &str, r: &str| {
                    common::sample(
                        &text,
                        &format!("dataway_sinker_reloads_total{{sinker=\"{s}\",result=\"{r}\"}}"),
                    )
                };
                if reloads("s", "ok") == Some(1.0) && reloads("core", "not_component").is_some() {
                    let r = cli
                        .post(d.url("/v1/write/metric"))
                        .body("cpu x=1 1\nmem x=2 2\n")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the plugins never loaded:\n{}", d.log());
    });
    assert_eq!(
        common::sample(
            &metrics,
            "dataway_sinker_reloads_total{sinker=\"core\",result=\"not_component\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    d.signal("TERM");
    let status = d.wait(Duration::from_secs(30));
    let log = d.log();
    assert!(status.success(), "{log}");
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
        .filter(|n| n != "cache.key")
        .collect();
    assert_eq!(
        cache.len(),
        1,
        "one compiled plugin, no leftovers: {cache:?}"
    );
    assert!(cache[0].ends_with(".cwasm"));
}

/// Every line of a JSON log is one JSON object with a timestamp, a level, a message and a
/// target, the event's fields beside them.
fn assert_json_lines(log: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))
        })
        .collect();
    assert!(!lines.is_empty());
    for v in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v[key].is_string(), "no {key} in {v}");
        }
    }
    lines
}

/// `[log] format = "json"`: the daemon's whole log, start to stop, is JSON lines.
#[tokio::test]
async fn a_json_log_is_one_object_per_line_from_start_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "d.toml",
        "[log]\nformat = \"json\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut p = DaemonProcess::start_in(Path::new(&cfg), Some(dir.path()), &[]);
    assert_eq!(p.post("metric", "m v=1 1".to_string()).await, 200);
    p.signal("TERM");
    assert!(p.wait(Duration::from_secs(30)).success());
    let lines = assert_json_lines(&p.log());
    let listening = lines
        .iter()
        .find(|v| v["message"] == "ingest server listening")
        .expect("the listening line");
    assert_eq!(
        listening["listen"],
        p.addr.to_string(),
        "fields at the top level"
    );
    assert!(lines.iter().any(|v| v["signal"] == "SIGTERM"));
}

/// `--log-format json` over the file: errors before the log starts (a bad config) and the
/// one that ends a run (a port in use) are JSON lines too.
#[test]
fn with_log_format_json_errors_are_json_lines_too() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(dir.path(), "bad.toml", "[log]\nlevel = \"verbose\"\n");
    let (code, out) = dataway_in(
        Some(dir.path()),
        &["run", "--log-format", "json", "-c", &bad],
        &[],
    );
    assert_eq!(code, Some(2), "{out}");
    let lines = assert_json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(
        lines[0]["message"].as_str().unwrap().contains("log.level"),
        "{out}"
    );

    let cfg = write_config(
        dir.path(),
        "d.toml",
        &format!(
            "[log]\nformat = \"text\"\n[ingest]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let (code, out) = dataway_in(
        Some(dir.path()),
        &["run", "--log-format", "json", "-c", &cfg],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    let lines = assert_json_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("(ingest.listen)"),
        "{out}"
    );
    // And a format the flag does not know is refused by name.
    let (code, out) = dataway_in(None, &["run", "--log-format", "xml"], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("expected `text` or `json`"), "{out}");
}

/// A second daemon on the same fail-cache or WAL directory is refused at start, even on
/// another port, with a message naming the directory and the daemon holding it; once that
/// one has stopped, the directory is free again.
#[tokio::test]
async fn a_second_daemon_on_the_same_data_directories_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = |wal: bool| {
        format!(
            "[dataway]\nurls = [\"http://127.0.0.1:9/v1?token=t\"]\n\
             [dataway.fail_cache]\npath = \"{}\"\n\
             [dataway.wal]\nenabled = {wal}\npath = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n",
            data.join("cache").display(),
            data.join("wal").display(),
        )
    };
    let a = write_config(dir.path(), "a.toml", &cfg(true));
    let mut first = DaemonProcess::start(Path::new(&a), &[]);
    let pid = first.pid();
    // Same fail-cache directory (the WAL off), and same WAL directory (the cache off).
    let b = write_config(dir.path(), "b.toml", &cfg(false));
    let c = write_config(
        dir.path(),
        "c.toml",
        &cfg(true).replace(
            "[dataway.fail_cache]\n",
            "[dataway.fail_cache]\nenabled = false\n",
        ),
    );
    for (other, key, sub) in [
        (&b, "dataway.fail_cache.path", "cache"),
        (&c, "dataway.wal.path", "wal"),
    ] {
        // Refused at start; a second daemon that did start is stopped, and the test fails.
        let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_dataway"))
            .args(["run", "-c", other])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while second.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = second.kill();
        let done = second.wait_with_output().unwrap();
        let (code, out) = (done.status.code(), String::from_utf8_lossy(&done.stderr));
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains(&format!(
                "{key}: {} is in use by another dataway (pid {pid}, ingest {})",
                data.join(sub).display(),
                first.addr
            )),
            "{out}"
        );
    }
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());
    let mut again = DaemonProcess::start(Path::new(&b), &[]);
    again.signal("TERM");
    assert!(again.wait(Duration::from_secs(30)).success());
}
