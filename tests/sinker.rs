//! Sinkers end to end: the real daemon, real plugins through wasmtime, loopback receivers.
//! Every test counts points per receiver by their unique `seq` field: exact, no loss, no
//! duplicates.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::plugins::{fixture, rust_plugin};
use common::*;

/// A `[[dataway.sinkers]]` table.
fn sinker(name: &str, categories: &str, plugin: Option<&str>, config: &str, url: &str) -> String {
    let plugin = plugin.map_or(String::new(), |p| format!("plugin = \"{p}\"\n"));
    format!(
        "[[dataway.sinkers]]\nname = \"{name}\"\ncategories = {categories}\n{plugin}config = '{config}'\nurls = [\"{url}\"]\n"
    )
}

/// Points `measurement,host=h.. seq=Ni` with seq in `start..start+n`.
fn pts(measurement: &str, n: usize, start: usize) -> String {
    lines(measurement, n, start)
}

/// seq -> how many times it arrived at `mock`.
fn seqs(mock: &MockDataway) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for l in mock.lines_accepted() {
        let seq = l
            .split([' ', ','])
            .find_map(|kv| kv.strip_prefix("seq="))
            .and_then(|v| v.trim_end_matches('i').parse().ok())
            .unwrap_or_else(|| panic!("no seq in {l}"));
        *out.entry(seq).or_default() += 1;
    }
    out
}

fn assert_once(mock: &MockDataway, expected: impl IntoIterator<Item = u64>, who: &str) {
    let got = seqs(mock);
    let want: Vec<u64> = expected.into_iter().collect();
    for s in &want {
        assert_eq!(
            got.get(s),
            Some(&1),
            "{who}: seq {s} should arrive exactly once"
        );
    }
    assert_eq!(got.len(), want.len(), "{who}: unexpected points: {got:?}");
}

fn copy_plugin(dir: &Path, from: &Path, name: &str) {
    std::fs::copy(from, dir.join(name)).unwrap();
}

fn metric(d: &TestDaemon, series: &str) -> f64 {
    sample(&d.metrics.encode_text(), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sinkers_each_point_once_per_matching_destination() {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("example-rust"), "names.wasm");
    let (main, a, b, c) = (
        MockDataway::start().await,
        MockDataway::start().await,
        MockDataway::start().await,
        MockDataway::start().await,
    );
    let extra = [
        // An alias in categories (M = metric).
        sinker("a", "[\"M\"]", Some("names.wasm"), "cpu", &a.url("tkn_a")),
        sinker(
            "b",
            "[\"metric\"]",
            Some("names.wasm"),
            "cpu,mem",
            &b.url("tkn_b"),
        ),
        // No plugin: every point of its categories.
        sinker("c", "[\"logging\"]", None, "", &c.url("tkn_c")),
    ]
    .concat();
    let cfg = config_for(
        &[main.url("tkn_main")],
        &format!("plugins_dir = \"{}\"", plugins.path().display()),
        &extra,
    );
    let d = TestDaemon::start(cfg).await;
    // cpu: matched by a and b; mem: by b; disk: by none; logging: by c (category).
    let body = [pts("cpu", 10, 0), pts("mem", 20, 100), pts("disk", 30, 200)].join("\n");
    assert_eq!(d.post("metric", body).await.status(), 200);
    assert_eq!(d.post("logging", pts("nginx", 5, 300)).await.status(), 200);

    assert!(a.wait_points(10, Duration::from_secs(10)).await);
    assert!(b.wait_points(30, Duration::from_secs(10)).await);
    assert!(c.wait_points(5, Duration::from_secs(10)).await);
    assert!(main.wait_points(30, Duration::from_secs(10)).await);
    let report = d.stop().await;
    assert_eq!(report.abandoned_points, 0);

    assert_once(&a, 0..10, "sinker a");
    assert_once(&b, (0..10).chain(100..120), "sinker b");
    assert_once(&c, 300..305, "sinker c");
    assert_once(&main, 200..230, "main");
    assert!(c.requests().iter().all(|r| r.path == "/v1/write/logging"));
    assert!(
        a.requests()
            .iter()
            .all(|r| r.query.as_deref() == Some("token=tkn_a"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_metrics_count_as_datakit_does() {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("example-rust"), "names.wasm");
    let (main, a) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!("plugins_dir = \"{}\"", plugins.path().display()),
        &sinker("a", "[\"metric\"]", Some("names.wasm"), "cpu", &a.url("t")),
    );
    let d = TestDaemon::start(cfg).await;
    let body = [pts("cpu", 4, 0), pts("disk", 6, 10)].join("\n");
    assert_eq!(d.post("metric", body).await.status(), 200);
    // Logging has no sinker: not sunk, "category did not match".
    assert_eq!(d.post("logging", pts("x", 3, 20)).await.status(), 200);
    assert!(a.wait_points(4, Duration::from_secs(10)).await);
    assert!(main.wait_points(9, Duration::from_secs(10)).await);
    let m = &d.metrics;
    assert!(
        wait_metric(
            m,
            "datakit_io_dataway_sink_point_total{category=\"metric\",status=\"OK\"}",
            4.0
        )
        .await
    );
    assert_eq!(
        metric(&d, "datakit_io_dataway_sink_total{category=\"metric\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "datakit_io_dataway_not_sink_point_total{category=\"metric\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &d,
            "datakit_io_dataway_not_sink_point_total{category=\"logging\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &d,
            "dataway_sinker_points_total{result=\"matched\",sinker=\"a\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &d,
            "dataway_sinker_points_total{result=\"not_matched\",sinker=\"a\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(&d, "dataway_sinker_calls_total{result=\"ok\",sinker=\"a\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "dataway_sinker_reloads_total{result=\"ok\",sinker=\"a\"}"
        ),
        1.0
    );
    let text = m.encode_text();
    let sha = sha256_hex(&std::fs::read(plugins.path().join("names.wasm")).unwrap());
    assert!(
        text.contains(&format!(
            "dataway_sinker_plugin_info{{sha256=\"{sha}\",sinker=\"a\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains("dataway_sinker_call_seconds_count{sinker=\"a\"} 1"));
    d.stop().await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_counted_and_quarantined() {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("hostile"), "hostile.wasm");
    copy_plugin(plugins.path(), &rust_plugin("example-rust"), "names.wasm");
    let main = MockDataway::start().await;
    let good = MockDataway::start().await;
    let trash = MockDataway::start().await;
    let mut extra = sinker(
        "good",
        "[\"metric\"]",
        Some("names.wasm"),
        "cpu",
        &good.url("t"),
    );
    for mode in ["loop", "oom", "trap", "stack", "wrong-len"] {
        extra += &sinker(
            mode,
            "[\"metric\"]",
            Some("hostile.wasm"),
            mode,
            &trash.url("t"),
        );
    }
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\ntimeout = \"500ms\"\nmax_memory = 16777216\nquarantine_after = 2\nquarantine_min = \"1h\"\nquarantine_max = \"1h\"",
            plugins.path().display()
        ),
        &extra,
    );
    let d = TestDaemon::start(cfg).await;
    // Four batches: two failures each put every hostile plugin in quarantine.
    for i in 0..4 {
        let body = [pts("cpu", 5, i * 100), pts("disk", 5, i * 100 + 50)].join("\n");
        assert_eq!(d.post("metric", body).await.status(), 200);
    }
    assert!(good.wait_points(20, Duration::from_secs(10)).await);
    assert!(main.wait_points(20, Duration::from_secs(10)).await);
    let metrics = d.metrics.clone();
    assert_eq!(d.stop().await.abandoned_points, 0);

    // Good traffic flowed: cpu to the good sinker, the rest to main, each once.
    let cpu = (0..4u64).flat_map(|i| i * 100..i * 100 + 5);
    let disk = (0..4u64).flat_map(|i| i * 100 + 50..i * 100 + 55);
    assert_once(&good, cpu, "good sinker");
    assert_once(&main, disk, "main");
    assert!(
        trash.requests().is_empty(),
        "a failing plugin matched nothing"
    );

    let text = metrics.encode_text();
    for (mode, kind) in [
        ("loop", "timeout"),
        ("oom", "oom"),
        ("trap", "trap"),
        ("stack", "trap"),
        ("wrong-len", "bad_result"),
    ] {
        let calls = |result: &str| {
            sample(
                &text,
                &format!("dataway_sinker_calls_total{{result=\"{result}\",sinker=\"{mode}\"}}"),
            )
        };
        assert_eq!(
            calls(kind),
            Some(2.0),
            "{mode}: two failures counted as {kind}:\n{}",
            text.lines()
                .filter(|l| l.starts_with("dataway_sinker_calls_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(calls("quarantined"), Some(2.0), "{mode}: then skipped");
        assert_eq!(
            sample(
                &text,
                &format!("dataway_sinker_quarantined{{sinker=\"{mode}\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("dataway_sinker_points_total{{result=\"not_matched\",sinker=\"{mode}\"}}")
            ),
            Some(40.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugin_files_leave_the_sinker_disabled_and_are_counted() {
    let plugins = tempfile::tempdir().unwrap();
    let p = plugins.path();
    copy_plugin(p, &fixture("garbage.wasm"), "garbage.wasm");
    copy_plugin(p, &fixture("core-module.wasm"), "core.wasm");
    copy_plugin(p, &rust_plugin("wrong-world"), "wrong.wasm");
    copy_plugin(p, &rust_plugin("hostile"), "hostile.wasm");
    let main = MockDataway::start().await;
    let trash = MockDataway::start().await;
    let cases = [
        ("garbage", "garbage.wasm", "", "not_component"),
        ("core", "core.wasm", "", "not_component"),
        ("wrong", "wrong.wasm", "", "wrong_world"),
        ("init-error", "hostile.wasm", "init-error", "init_error"),
        ("init-trap", "hostile.wasm", "init-trap", "init_trap"),
        ("init-loop", "hostile.wasm", "init-loop", "init_trap"),
        ("missing", "missing.wasm", "", ""),
    ];
    let extra: String = cases
        .iter()
        .map(|(name, file, config, _)| {
            sinker(name, "[\"metric\"]", Some(file), config, &trash.url("t"))
        })
        .collect();
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\ntimeout = \"50ms\"",
            p.display()
        ),
        &extra,
    );
    let d = TestDaemon::start(cfg).await;
    assert_eq!(d.post("metric", pts("cpu", 7, 0)).await.status(), 200);
    assert!(main.wait_points(7, Duration::from_secs(10)).await);
    let text = d.metrics.encode_text();
    d.stop().await;
    assert_once(&main, 0..7, "main");
    assert!(trash.requests().is_empty());
    for (name, _, _, result) in cases {
        if result.is_empty() {
            continue;
        }
        assert_eq!(
            sample(
                &text,
                &format!("dataway_sinker_reloads_total{{result=\"{result}\",sinker=\"{name}\"}}")
            ),
            Some(1.0),
            "{name}"
        );
    }
}
