//! The DataKit filter built into the binary: the real `dataway` executable with no plugin
//! file routes by DataKit filters to loopback Dataways; a `datakit_filter.wasm` in
//! `plugins_dir` overrides it, live, and removing the file goes back to it; `dataway sinker
//! test --filters` evaluates with it; and both keep its compiled code in the cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::plugins::rust_plugin;
use common::process::DaemonProcess;
use common::{MockDataway, samples_matching, scratch_dir};
use dataway::sinker::builtin;
use sha2::{Digest, Sha256};

/// A stuck daemon's limit, not a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);

/// The filters a DataKit sinker would list, as the JSON array the config layer makes of them.
const FILTERS: &str = r#"["{ host = 'web-1' }", "{ usage > 90 }"]"#;

/// A config file in its own folder with one main endpoint and one sinker whose plugin is
/// `datakit_filter.wasm` with [`FILTERS`]; compiled plugins in `cache`. `plugins_dir`:
/// `None` leaves the key out (the default, `plugins` beside the file, does not exist).
fn config(
    main: &MockDataway,
    sinker: &MockDataway,
    plugins_dir: Option<&Path>,
    cache: &Path,
) -> PathBuf {
    let dir = scratch_dir("builtin-config");
    let plugins = plugins_dir.map_or(String::new(), |p| {
        format!("plugins_dir = \"{}\"\n", p.display())
    });
    let text = format!(
        r#"[dataway]
urls = ["{main}"]
retry_delay = "20ms"
{plugins}
[dataway.fail_cache]
path = "{dir}/failcache"
[dataway.sinker_limits]
cache_dir = "{cache}"

[[dataway.sinkers]]
name = "dk"
categories = ["M"]
plugin = "datakit_filter.wasm"
config = '''{FILTERS}'''
urls = ["{sink}"]

[ingest]
listen = "127.0.0.1:0"
"#,
        main = main.url("tkn_main"),
        sink = sinker.url("tkn_sink"),
        dir = dir.display(),
        cache = cache.display(),
    );
    let file = dir.join("dataway.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The sha256 labels of `dataway_sinker_plugin_info{sinker="dk"}` (the version serving).
async fn serving(d: &DaemonProcess) -> Vec<String> {
    let text = reqwest::get(d.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    samples_matching(&text, "dataway_sinker_plugin_info", &[("sinker", "dk")])
        .into_iter()
        .filter(|s| s.value == 1.0)
        .map(|s| s.labels["sha256"].clone())
        .collect()
}

/// Polls `/metrics` until exactly `sha` serves the sinker.
async fn wait_serving(d: &DaemonProcess, sha: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = serving(d).await;
        if now == [sha] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {sha} to serve, have {now:?}:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM and wait: everything queued is delivered before the process exits.
fn stop(mut d: DaemonProcess) -> String {
    d.signal("TERM");
    assert!(d.wait(PATIENCE).success(), "{}", d.log());
    d.log()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_plugins_dir_the_built_in_filter_routes_and_its_compiled_code_is_cached() {
    let (main, sink) = (MockDataway::start().await, MockDataway::start().await);
    let cache = scratch_dir("builtin-cache");
    let cfg = config(&main, &sink, None, &cache);
    assert!(!cfg.parent().unwrap().join("plugins").exists());

    let d = DaemonProcess::start(&cfg, &[]);
    // The built-in copy serves: its sha256 is the version label, as a file's would be.
    wait_serving(&d, builtin::sha256()).await;
    let lines = "cpu,host=web-1 usage=1 1\n\
                 cpu,host=web-2 usage=95 2\n\
                 cpu,host=web-3 usage=5 3\n";
    assert_eq!(d.post("metric", lines.into()).await, 200);
    let log = stop(d);
    assert_eq!(
        sorted(sink.lines_accepted()),
        ["cpu,host=web-1 usage=1 1", "cpu,host=web-2 usage=95 2"],
        "{log}"
    );
    assert_eq!(main.lines_accepted(), ["cpu,host=web-3 usage=5 3"], "{log}");
    assert!(
        log.contains("plugin loaded")
            && log.contains("path=built-in")
            && log.contains("cached=false"),
        "{log}"
    );
    // The compiled code went to the cache: a restart loads it instead of compiling.
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The cache's key (cache.key) is not a compiled plugin.
        .filter(|n| n != "cache.key")
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(builtin::sha256()), "{cached:?}");
    let d = DaemonProcess::start(&cfg, &[]);
    wait_serving(&d, builtin::sha256()).await;
    let log = stop(d);
    assert!(log.contains("cached=true"), "{log}");
    assert!(!log.contains("cached=false"), "{log}");
}

#[test]
fn check_loads_the_built_in_filter_when_there_is_no_file() {
    let cache = scratch_dir("builtin-cache");
    let dir = scratch_dir("builtin-check");
    let cfg = dir.join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"file://out\"]\n\
             [dataway.sinker_limits]\ncache_dir = \"{}\"\n\
             [[dataway.sinkers]]\nname = \"dk\"\ncategories = [\"M\"]\n\
             plugin = \"datakit_filter.wasm\"\nconfig = '''{FILTERS}'''\nurls = [\"file://dk\"]\n",
            cache.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "plugin datakit_filter.wasm (built-in) ok (sha256 {})",
            &builtin::sha256()[..12]
        )),
        "{stdout}"
    );
}

/// Copies `from` to `dir/name` in one rename, as an operator's deploy would.
fn drop_in(dir: &Path, name: &str, from: &Path) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_plugins_dir_overrides_the_built_in_live_and_removing_it_goes_back() {
    let (main, sink) = (MockDataway::start().await, MockDataway::start().await);
    let plugins = scratch_dir("builtin-plugins");
    let cfg = config(&main, &sink, Some(&plugins), &common::plugin_cache_dir());
    // Told apart from the built-in by its sha256 and by what it does: example-rust matches
    // points whose measurement is one of the config's comma-separated names, so with the
    // filters as config it matches nothing.
    let other = rust_plugin("example-rust");
    let other_sha = sha256_of(&other);
    assert_ne!(other_sha, builtin::sha256());

    let d = DaemonProcess::start(&cfg, &[]);
    wait_serving(&d, builtin::sha256()).await;
    assert_eq!(
        d.post("metric", "cpu,host=web-1 n=1i 1\n".into()).await,
        200
    );
    assert!(sink.wait_points(1, PATIENCE).await, "{}", d.log());

    drop_in(&plugins, "datakit_filter.wasm", &other);
    wait_serving(&d, &other_sha).await;
    assert_eq!(
        d.post("metric", "cpu,host=web-1 n=2i 2\n".into()).await,
        200
    );
    assert!(main.wait_points(1, PATIENCE).await, "{}", d.log());

    std::fs::remove_file(plugins.join("datakit_filter.wasm")).unwrap();
    wait_serving(&d, builtin::sha256()).await;
    assert_eq!(
        d.post("metric", "cpu,host=web-1 n=3i 3\n".into()).await,
        200
    );
    let log = stop(d);
    assert_eq!(
        sorted(sink.lines_accepted()),
        ["cpu,host=web-1 n=1i 1", "cpu,host=web-1 n=3i 3"],
        "{log}"
    );
    assert_eq!(main.lines_accepted(), ["cpu,host=web-1 n=2i 2"], "{log}");
    assert!(
        log.contains("back to the built-in datakit_filter.wasm"),
        "{log}"
    );
}

/// Runs `dataway sinker test ARGS` in `cwd` with `cache` as XDG_CACHE_HOME; (ok, out, err).
fn sinker_test(args: &[&str], stdin: &str, cwd: &Path, cache: &Path) -> (bool, String, String) {
    common::sinker_test_in(args, stdin, Some(cwd), cache)
}

#[test]
fn sinker_test_filters_evaluates_with_the_built_in_filter_and_the_second_run_hits_the_cache() {
    let cwd = scratch_dir("builtin-cwd");
    let cache = scratch_dir("builtin-xdg");
    let points = "cpu,host=web-1 usage=1 1\nmem,host=web-2 usage=95 2\ndisk,host=web-3 usage=5 3\n";
    let want = [
        "matched     cpu,host=web-1 usage=1 1",
        "matched     mem,host=web-2 usage=95 2",
        "not matched disk,host=web-3 usage=5 3",
        "2 of 3 points matched",
    ];
    let args = ["--filters", FILTERS, "--category", "metric"];
    let (ok, out, err) = sinker_test(&args, points, &cwd, &cache);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
    assert!(err.contains("plugin compiled in"), "{err}");
    let dir = cache.join("dataway/plugins");
    let files = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "cache.key")
            .collect()
    };
    assert_eq!(files().len(), 1, "{:?}", files());
    assert!(files()[0].starts_with(builtin::sha256()), "{:?}", files());

    let (ok, out, err) = sinker_test(&args, points, &cwd, &cache);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
    assert!(
        err.contains(&format!(
            "compiled plugin loaded from the cache in {}",
            dir.display()
        )),
        "{err}"
    );
    assert!(!err.contains("plugin compiled in"), "{err}");

    // `--plugin datakit_filter.wasm` with no such file is the built-in too, as in the daemon.
    let (ok, out, err) = sinker_test(
        &["--plugin", "datakit_filter.wasm", "--config", FILTERS],
        points,
        &cwd,
        &cache,
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
    assert!(err.contains("using the built-in DataKit filter"), "{err}");
}

#[test]
fn sinker_test_filters_names_what_is_wrong() {
    let cwd = scratch_dir("builtin-cwd");
    let cache = scratch_dir("builtin-xdg");
    // Not a JSON array of strings: the option is named, with an example.
    let (ok, _, err) = sinker_test(&["--filters", "{ a = 1 }"], "cpu a=1\n", &cwd, &cache);
    assert!(!ok);
    assert!(
        err.contains("--filters takes a JSON array of filter strings"),
        "{err}"
    );
    // A filter the language refuses: the plugin's init says where.
    let (ok, _, err) = sinker_test(&["--filters", r#"["{ a = }"]"#], "cpu a=1\n", &cwd, &cache);
    assert!(!ok);
    assert!(
        err.contains("the built-in DataKit filter: init failed"),
        "{err}"
    );
    // --filters and --plugin are one or the other.
    let (ok, _, err) = sinker_test(
        &["--filters", "[]", "--plugin", "x.wasm"],
        "cpu a=1\n",
        &cwd,
        &cache,
    );
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}
