//! Plugins in other languages, through the same host the daemon uses: they must behave
//! exactly like the Rust template on the same batch.

mod common;

use std::sync::{Arc, Mutex};

use common::plugins::{rust_plugin, script_plugin};
use dataway::Category;
use dataway::point::{self, Content, ParseOptions};
use dataway::sinker::{Columns, Limits, LogFn, Plugin, Runtime};

const BATCH: &str =
    "cpu,host=a u=1 1\ndisk,host=a u=2 2\nmem,host=b u=3 3\ncpu,host=c u=4 4\nswap u=5 5\n";

/// `body` in the two forms a plugin is lent points: parsed, and as the checked text the
/// daemon keeps when it forwards.
fn both(body: &str) -> [Arc<Content>; 2] {
    let opts = ParseOptions::default();
    [
        Arc::new(Content::Points(
            point::parse(body.as_bytes(), opts).unwrap(),
        )),
        Arc::new(Content::Text(
            point::parse_text(body.as_bytes(), opts).unwrap(),
        )),
    ]
}

/// `plugin`'s answer on `body`, the same in both forms.
fn answer(plugin: &Plugin, category: Category, body: &str) -> Vec<bool> {
    let [points, text] = both(body);
    let mask = plugin.matches(category, &points).unwrap();
    assert_eq!(
        plugin.matches(category, &text).unwrap(),
        mask,
        "over text, not as over points: {body}"
    );
    mask
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
    let mask = answer(&plugin, Category::Metric, BATCH);
    let lines = lines.lock().unwrap().clone();
    (mask, lines)
}

fn same_as_rust_template(dir: &str) {
    // Built, or the test is ignored (build.rs) or fails (DATAWAY_REQUIRE_ALL_PLUGINS).
    let path = script_plugin(dir);
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
    assert!(
        err.to_string()
            .contains("config must list measurement names"),
        "{err}"
    );
    // Compiled once: the cache holds it, and a second runtime loads it from there.
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert!(
        cached
            .iter()
            .any(|e| e.path().extension().is_some_and(|x| x == "cwasm")),
        "compiled plugins are cached"
    );
    let rt2 = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    assert_eq!(run(&rt2, &path, "cpu,mem").0, want);
}

#[test]
#[cfg_attr(
    dataway_no_c_toolchain,
    ignore = "clang-19 + wasi-libc not installed: `sh plugins/example-c/build.sh --check` says what is missing"
)]
fn c_plugin_behaves_like_the_rust_template() {
    same_as_rust_template("example-c");
}

#[test]
#[cfg_attr(
    dataway_no_py_toolchain,
    ignore = "componentize-py not installed: `pip install componentize-py==0.25.1`"
)]
fn python_plugin_behaves_like_the_rust_template() {
    same_as_rust_template("example-py");
}

/// Runs `rule` through the datakit-filter plugin on the points of `body`, of `category`.
fn filter(rt: &Runtime, rule: &str, category: Category, body: &str) -> Vec<bool> {
    let bytes = std::fs::read(rust_plugin("datakit-filter")).unwrap();
    let quiet: LogFn = Arc::new(|_, _| {});
    let p = rt
        .load(&bytes, rule, &Limits::default(), quiet)
        .unwrap_or_else(|e| panic!("{rule}: {e}"));
    answer(&p, category, body)
}

#[test]
fn datakit_filter_rules_work_through_the_host() {
    let rt = Runtime::new(None).unwrap();
    let text = "cpu,host=web-1 usage=95.5,cores=8i 1\n\
                cpu,host=web-3 usage=99.0,cores=4i 2\n\
                mem,host=web-1 used=12u,ok=true 3\n\
                cpu,host=web-2,status=500 usage=10.0,msg=\"disk full\" 4\n";
    let t = [true, false, false, false];
    let cases: &[(&str, [bool; 4])] = &[
        (
            "{ measurement = 'cpu' and host in ['web-1','web-2'] and usage > 90 }",
            t,
        ),
        (
            "{ measurement = 'cpu', usage >= 99 }",
            [false, true, false, false],
        ),
        ("{ host notin ['web-1'] }", [false, true, false, true]),
        ("{ host match ['^web-[12]$'] }", [true, false, true, true]),
        ("{ msg = re('full') }", [false, false, false, true]),
        (
            "{ status = '500' } ; { used = 12 }",
            [false, false, true, true],
        ),
        // A missing key is nil, which differs from '500' (DataKit).
        ("{ status != '500' }", [true, true, true, false]),
        ("{ status = nil }", [true, true, true, false]),
        ("{ ok = true or cores < 5 }", [false, true, true, false]),
        (
            "# DataKit syntax, case-insensitive keywords\n{ MEASUREMENT = 'cpu' AND (host = 'web-3' || cores = 8) }",
            [false; 4],
        ),
        (
            "{ measurement = 'cpu' AND (host = 'web-3' || cores = 8) }",
            [true, true, false, false],
        ),
        (
            "[\"{ host = 'web-1' }\", \"{ host = 'web-2' }\"]",
            [true, false, true, true],
        ),
        ("[]", [true; 4]),
    ];
    for (rule, want) in cases {
        assert_eq!(&filter(&rt, rule, Category::Metric, text), want, "{rule}");
    }
    // Keys injected per category: logging has `source`, not `measurement`.
    let logs = "nginx,status=500 message=\"x\" 1\nmysql message=\"y\" 2\n";
    assert_eq!(
        filter(&rt, "{ source = 'nginx' }", Category::Logging, logs),
        [true, false]
    );
    assert_eq!(
        filter(&rt, "{ measurement = 'nginx' }", Category::Logging, logs),
        [false, false]
    );
    // A bad rule is refused at init with its position.
    let bytes = std::fs::read(rust_plugin("datakit-filter")).unwrap();
    let quiet: LogFn = Arc::new(|_, _| {});
    let err = rt
        .load(&bytes, "{ host = }", &Limits::default(), quiet)
        .err()
        .expect("syntax error refused")
        .to_string();
    assert!(err.contains("init failed") && err.contains("col"), "{err}");
}

/// The plugin crates' own unit tests (datakit-filter's operator tables) run natively
/// under the README's one test command.
#[test]
fn plugin_crate_unit_tests_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root.join("plugins"))
        .args(["test", "-p", "datakit-filter", "--target-dir"])
        .arg(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins/native-target"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plugin unit tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test result: ok"), "{stdout}");
}

/// Sinkers on one category share the columns built for a batch: each condition still gets
/// the columns it asks for (not another key's), in both forms of the batch.
#[test]
fn conditions_sharing_a_batch_get_their_own_columns() {
    let rt = Runtime::new(None).unwrap();
    let bytes = std::fs::read(rust_plugin("datakit-filter")).unwrap();
    let load = |rule: &str| {
        let quiet: LogFn = Arc::new(|_, _| {});
        rt.load(&bytes, rule, &Limits::default(), quiet).unwrap()
    };
    let rules = [
        "{ host = 'a' }",
        "{ zone = 'a' }",
        "{ measurement = 'cpu' }",
        "{ host = 'b' or zone = 'b' }",
    ];
    let plugins: Vec<_> = rules.iter().map(|r| load(r)).collect();
    let body =
        "cpu,host=a,zone=b v=1 1\nmem,host=b,zone=a v=2 2\ncpu,zone=a v=3 3\ndisk,host=c v=4 4\n";
    for batch in both(body) {
        let alone: Vec<Vec<bool>> = plugins
            .iter()
            .map(|p| p.matches(Category::Metric, &batch).unwrap())
            .collect();
        assert_eq!(
            alone,
            [
                vec![true, false, false, false],
                vec![false, true, true, false],
                vec![true, false, true, false],
                vec![true, true, false, false],
            ]
        );
        let columns = Arc::new(Columns::shared());
        let shared: Vec<Vec<bool>> = plugins
            .iter()
            .map(|p| p.matches_with(Category::Metric, &batch, &columns).unwrap())
            .collect();
        assert_eq!(shared, alone);
    }
}

/// A plugin built against `dataway:sinker@0.1.0` (`plugins/old-version`, with that version's
/// WIT kept verbatim) loads into this daemon (0.1.1) and every 0.1.0 function answers:
/// wasmtime's linker gives its `@0.1.0` imports our `@0.1.1` definitions.
#[test]
fn a_plugin_built_against_0_1_0_still_runs() {
    let path = rust_plugin("old-version");
    let bytes = std::fs::read(&path).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        has("dataway:sinker/types@0.1.0") && !has("dataway:sinker/types@0.1.1"),
        "the fixture is not a 0.1.0 component"
    );
    let rt = Runtime::new(None).unwrap();
    let text = "cpu,host=a usage=95.5,n=1i 1\n\
                cpu usage=99.0 2\n\
                cpu,host=b usage=80.0 3\n\
                mem,host=a usage=97.0 4\n\
                cpu,host=c usage=\"high\",ok=true 5\n\
                cpu,host=c usage=91.0 6\n";
    let [points, as_text] = both(text);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let log: LogFn = Arc::new(move |_, msg| sink.lock().unwrap().push(msg.to_string()));
    let plugin = rt
        .load(&bytes, "cpu", &Limits::default(), log)
        .unwrap_or_else(|e| panic!("a 0.1.0 plugin is refused: {e}"));
    let mask = plugin.matches(Category::Metric, &points).unwrap();
    assert_eq!(mask, [true, false, false, false, false, true]);
    let seen = lines.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "metric 6 points, times [1, 2, 3, 4, 5, 6], tag keys [\"host\"], \
             field keys [\"usage\", \"n\", \"ok\"], first [(\"host\", \"a\")] \
             [\"usage=FieldValue::Float(95.5)\", \"n=FieldValue::Int(1)\"]"
        ]
    );
    // And over text, the same answer and the same view of the batch.
    assert_eq!(plugin.matches(Category::Metric, &as_text).unwrap(), mask);
    let all = lines.lock().unwrap().clone();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], all[0]);
}

/// A plugin built against a later 0.1.x that calls a function this daemon lacks is refused at
/// load, and the error says it was built against a newer version (not a trap at its first call).
#[test]
fn a_plugin_needing_a_newer_0_1_x_is_refused_with_both_versions() {
    let bytes = std::fs::read(rust_plugin("newer-version")).unwrap();
    let rt = Runtime::new(None).unwrap();
    let quiet: LogFn = Arc::new(|_, _| {});
    let err = rt
        .load(&bytes, "", &Limits::default(), quiet)
        .err()
        .expect("a plugin needing 0.1.9 refused");
    assert_eq!(err.kind(), "wrong_world");
    let err = err.to_string();
    assert!(
        err.contains("built against `dataway:sinker/types@0.1.9`, newer than this daemon's dataway:sinker@0.1.1")
            && err.contains("shiny-new"),
        "{err}"
    );
}
