//! Plugins in other languages, through the same host the daemon uses: they must behave
//! exactly like the Rust template on the same batch.

mod common;

use std::sync::{Arc, Mutex};

use common::plugins::{rust_plugin, script_plugin};
use dataway::Category;
use dataway::point::{self, ParseOptions, Point};
use dataway::sinker::{Limits, LogFn, Runtime};

fn batch() -> Arc<Vec<Point>> {
    let text = "cpu,host=a u=1 1\ndisk,host=a u=2 2\nmem,host=b u=3 3\ncpu,host=c u=4 4\nswap u=5 5\n";
    Arc::new(point::parse(text.as_bytes(), ParseOptions::default()).unwrap())
}

/// Loads `path` with `config`; returns its verdicts on `batch()` and its log lines.
fn run(rt: &Runtime, path: &std::path::Path, config: &str) -> (Vec<bool>, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let log: LogFn = Arc::new(move |_, msg| sink.lock().unwrap().push(msg.to_string()));
    let bytes = std::fs::read(path).unwrap();
    let plugin = rt
        .load(&bytes, config, &Limits::default(), log)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mask = plugin.matches(Category::Metric, &batch()).unwrap();
    let lines = lines.lock().unwrap().clone();
    (mask, lines)
}

fn same_as_rust_template(dir: &str) {
    let Some(path) = script_plugin(dir) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    let (want, _) = run(&rt, &rust_plugin("example-rust"), "cpu, mem");
    assert_eq!(want, [true, false, true, true, false]);
    let (got, log) = run(&rt, &path, "cpu, mem");
    assert_eq!(got, want, "{dir} disagrees with the Rust template");
    assert!(
        log.iter().any(|l| l.contains("cpu") && l.contains("mem")),
        "{dir} logs its config through the host: {log:?}"
    );
    // A config it refuses is an init error with the plugin's message.
    let bytes = std::fs::read(&path).unwrap();
    let quiet: LogFn = Arc::new(|_, _| {});
    let err = rt
        .load(&bytes, "", &Limits::default(), quiet)
        .err()
        .expect("empty config refused");
    assert!(err.to_string().contains("config must list measurement names"), "{err}");
    // Compiled once: the cache holds it, and a second runtime loads it from there.
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert!(
        cached.iter().any(|e| e.path().extension().is_some_and(|x| x == "cwasm")),
        "compiled plugins are cached"
    );
    let rt2 = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    assert_eq!(run(&rt2, &path, "cpu,mem").0, want);
}

#[test]
fn c_plugin_behaves_like_the_rust_template() {
    same_as_rust_template("example-c");
}

#[test]
fn python_plugin_behaves_like_the_rust_template() {
    same_as_rust_template("example-py");
}
