//! Sinkers end to end: the real daemon, real plugins through wasmtime, loopback receivers.
//! Every test counts points per receiver by their unique `seq` field: exact, no loss, no
//! duplicates.

mod common;

use std::path::Path;
use std::time::Duration;

use common::plugins::{fixture, rust_plugin};
use common::*;
use tokio::net::TcpListener;

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
    assert_eq!(
        sample(
            &text,
            &format!("dataway_sinker_plugin_info{{sinker=\"a\",sha256=\"{sha}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dataway_sinker_call_seconds_count{sinker=\"a\"}"),
        Some(1.0)
    );
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
    copy_plugin(p, &rust_plugin("future-version"), "future.wasm");
    copy_plugin(p, &rust_plugin("hostile"), "hostile.wasm");
    let main = MockDataway::start().await;
    let trash = MockDataway::start().await;
    let cases = [
        ("garbage", "garbage.wasm", "", "not_component"),
        ("core", "core.wasm", "", "not_component"),
        ("wrong", "wrong.wasm", "", "wrong_world"),
        ("future", "future.wasm", "", "wrong_world"),
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

/// Waits until `series` reaches `value` (reloads happen on the watcher's schedule).
async fn wait_for_metric(d: &TestDaemon, series: &str, value: f64) {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if metric(d, series) >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{series} never reached {value} in {:?}:\n{}",
        started.elapsed(),
        d.metrics
            .encode_text()
            .lines()
            .filter(|l| l.starts_with("dataway_sinker"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Replaces a file the way deploy tools do: write aside, then rename over it.
fn replace_atomically(dir: &Path, name: &str, from: &Path) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_and_duplicates_nothing() {
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path().to_path_buf();
    // Two versions that accept the same config: v1 matches points whose measurement is
    // `every-other`, v2 matches every other point of a batch.
    let v1 = rust_plugin("example-rust");
    let v2 = rust_plugin("hostile");
    copy_plugin(&dir, &v1, "rule.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!("plugins_dir = \"{}\"", dir.display()),
        &sinker(
            "r",
            "[\"metric\"]",
            Some("rule.wasm"),
            "every-other",
            &s.url("t"),
        ),
    );
    let d = std::sync::Arc::new(TestDaemon::start(cfg).await);
    const PER: usize = 40;
    // The loader posts until the swaps are done, then 10 batches more: every swap happens
    // under load, and the last version serves some batches too.
    let swapping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let loader = {
        let (d, swapping) = (d.clone(), swapping.clone());
        tokio::spawn(async move {
            let (mut b, mut after) = (0, 0);
            while after < 10 {
                let body = [
                    pts("every-other", PER / 2, b * PER),
                    pts("x", PER / 2, b * PER + PER / 2),
                ]
                .join("\n");
                assert_eq!(d.post("metric", body).await.status(), 200);
                b += 1;
                if !swapping.load(std::sync::atomic::Ordering::Relaxed) {
                    after += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            b
        })
    };
    // Six swaps while the loader runs; the fourth overwrites in place (truncate + write),
    // as an editor or `cp` does.
    let series = "dataway_sinker_reloads_total{result=\"ok\",sinker=\"r\"}";
    for swap in 1..=6 {
        let from = if swap % 2 == 1 { &v2 } else { &v1 };
        if swap == 4 {
            std::fs::write(dir.join("rule.wasm"), std::fs::read(from).unwrap()).unwrap();
        } else {
            replace_atomically(&dir, "rule.wasm", from);
        }
        wait_for_metric(&d, series, 1.0 + swap as f64).await;
    }
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let batches = loader.await.unwrap();
    let total = batches * PER;
    assert!(
        main.wait_for(Duration::from_secs(20), |m| m.points_accepted()
            + s.points_accepted()
            >= total)
            .await
    );
    // Exactly once, across the sinker and main together.
    let (at_main, at_sinker) = (seqs(&main), seqs(&s));
    for seq in 0..total as u64 {
        let n = at_main.get(&seq).copied().unwrap_or(0) + at_sinker.get(&seq).copied().unwrap_or(0);
        assert_eq!(n, 1, "seq {seq} arrived {n} times");
    }
    assert_eq!(at_main.len() + at_sinker.len(), total);
    // v2 served: only it matches `x` points (the second half of each batch, every other).
    let x_at_sinker = at_sinker
        .keys()
        .filter(|&&seq| seq as usize % PER >= PER / 2)
        .count();
    assert!(x_at_sinker > 0, "v2 never routed a point");
    // v1 served: only it matches every `every-other` point of a batch, odd ones included.
    let odd_every_other = at_sinker
        .keys()
        .filter(|&&seq| (seq as usize % PER) < PER / 2 && seq % 2 == 1)
        .count();
    assert!(odd_every_other > 0, "v1 never routed a point");
    assert!(!at_main.is_empty());
    assert_eq!(metric(&d, series), 7.0);
    let text = d.metrics.encode_text();
    // Swap 6 put v1 back.
    let sha = sha256_hex(&std::fs::read(&v1).unwrap());
    assert_eq!(
        sample(
            &text,
            &format!("dataway_sinker_plugin_info{{sinker=\"r\",sha256=\"{sha}\"}}")
        ),
        Some(1.0),
        "the last version (v1) serves"
    );
    assert_eq!(
        samples_matching(&text, "dataway_sinker_plugin_info", &[]).len(),
        1,
        "one version at a time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_keeps_the_old_version_and_a_deleted_one_disables_the_sinker() {
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path().to_path_buf();
    let good = rust_plugin("example-rust");
    copy_plugin(&dir, &good, "rule.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!("plugins_dir = \"{}\"", dir.display()),
        &sinker("r", "[\"metric\"]", Some("rule.wasm"), "cpu", &s.url("t")),
    );
    let d = TestDaemon::start(cfg).await;
    let series = |r: &str| format!("dataway_sinker_reloads_total{{result=\"{r}\",sinker=\"r\"}}");

    assert_eq!(d.post("metric", pts("cpu", 3, 0)).await.status(), 200);
    assert!(s.wait_points(3, Duration::from_secs(10)).await);

    // Garbage, then a component of the wrong world: both rejected, v1 keeps serving.
    replace_atomically(&dir, "rule.wasm", &fixture("garbage.wasm"));
    wait_for_metric(&d, &series("not_component"), 1.0).await;
    replace_atomically(&dir, "rule.wasm", &rust_plugin("wrong-world"));
    wait_for_metric(&d, &series("wrong_world"), 1.0).await;
    assert_eq!(d.post("metric", pts("cpu", 3, 10)).await.status(), 200);
    assert!(s.wait_points(6, Duration::from_secs(10)).await);

    // Deleted: the condition is off, points go to main.
    std::fs::remove_file(dir.join("rule.wasm")).unwrap();
    wait_for_metric(&d, &series("removed"), 1.0).await;
    assert_eq!(d.post("metric", pts("cpu", 3, 20)).await.status(), 200);
    assert!(main.wait_points(3, Duration::from_secs(10)).await);
    assert!(
        samples_matching(&d.metrics.encode_text(), "dataway_sinker_plugin_info", &[]).is_empty(),
        "no version serves"
    );

    // Back: serving again.
    replace_atomically(&dir, "rule.wasm", &good);
    wait_for_metric(&d, &series("ok"), 2.0).await;
    assert_eq!(d.post("metric", pts("cpu", 3, 30)).await.status(), 200);
    assert!(s.wait_points(9, Duration::from_secs(10)).await);
    d.stop().await;
    assert_once(&s, (0..3).chain(10..13).chain(30..33), "sinker");
    assert_once(&main, 20..23, "main");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_in_sinkers_come_and_go_without_restart() {
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path().to_path_buf();
    // A TOML with no plugin beside it (like a Cargo.toml) is not a sinker.
    std::fs::write(dir.join("notes.toml"), "this is = not a sidecar").unwrap();
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!("plugins_dir = \"{}\"", dir.display()),
        "",
    );
    let d = TestDaemon::start(cfg).await;

    copy_plugin(&dir, &rust_plugin("example-rust"), "dropin.wasm");
    std::fs::write(
        dir.join("dropin.toml"),
        format!(
            "categories = [\"metric\"]\nconfig = \"cpu\"\nurls = [\"{}\"]\n",
            s.url("t")
        ),
    )
    .unwrap();
    wait_for_metric(
        &d,
        "dataway_sinker_reloads_total{result=\"ok\",sinker=\"dropin\"}",
        1.0,
    )
    .await;
    let body = [pts("cpu", 4, 0), pts("disk", 4, 10)].join("\n");
    assert_eq!(d.post("metric", body).await.status(), 200);
    assert!(s.wait_points(4, Duration::from_secs(10)).await);
    assert!(main.wait_points(4, Duration::from_secs(10)).await);

    // A bad sidecar for another drop-in is refused and counted; nothing else changes.
    copy_plugin(&dir, &rust_plugin("example-rust"), "bad.wasm");
    std::fs::write(
        dir.join("bad.toml"),
        "categories = [\"nope\"]\nurls = [\"file://x\"]\n",
    )
    .unwrap();
    wait_for_metric(
        &d,
        "dataway_sinker_reloads_total{result=\"bad_sidecar\",sinker=\"bad\"}",
        1.0,
    )
    .await;

    // A changed sidecar restarts the sinker with the new settings.
    std::fs::write(
        dir.join("dropin.toml"),
        format!(
            "categories = [\"metric\"]\nconfig = \"disk\"\nurls = [\"{}\"]\n",
            s.url("t")
        ),
    )
    .unwrap();
    wait_for_metric(
        &d,
        "dataway_sinker_reloads_total{result=\"ok\",sinker=\"dropin\"}",
        2.0,
    )
    .await;
    assert_eq!(d.post("metric", pts("disk", 2, 40)).await.status(), 200);
    assert!(s.wait_points(6, Duration::from_secs(10)).await);
    assert_eq!(
        samples_matching(&d.metrics.encode_text(), "dataway_sinker_plugin_info", &[]).len(),
        1,
        "one version serves"
    );

    let before = d.metrics.encode_text();
    assert!(
        sample(&before, "dataway_sinker_quarantined{sinker=\"dropin\"}").is_some(),
        "{before}"
    );
    // Removing the sidecar removes the sinker (its plugin file may stay: alone it is no
    // sinker).
    std::fs::remove_file(dir.join("dropin.toml")).unwrap();
    wait_for_metric(
        &d,
        "dataway_sinker_reloads_total{result=\"removed\",sinker=\"dropin\"}",
        1.0,
    )
    .await;
    assert_eq!(d.post("metric", pts("cpu", 4, 20)).await.status(), 200);
    assert!(main.wait_points(8, Duration::from_secs(10)).await);
    let text = d.metrics.encode_text();
    assert_eq!(d.stop().await.abandoned_points, 0);
    assert_once(&s, (0..4).chain(40..42), "drop-in sinker");
    assert_once(&main, (10..14).chain(20..24), "main");
    // It served before (a sample that can fail to be absent), and its gauges are gone now.
    assert_eq!(
        samples_matching(
            &before,
            "dataway_sinker_plugin_info",
            &[("sinker", "dropin")]
        )
        .len(),
        1,
        "{before}"
    );
    assert!(
        samples_matching(&text, "dataway_sinker_plugin_info", &[("sinker", "dropin")]).is_empty(),
        "a removed sinker's version is gone:\n{text}"
    );
    assert_eq!(
        sample(&text, "dataway_sinker_quarantined{sinker=\"dropin\"}"),
        None,
        "a removed sinker's quarantine gauge is gone:\n{text}"
    );
    assert!(
        samples(&text)
            .iter()
            .all(|x| x.labels.get("sinker").map(String::as_str) != Some("notes")),
        "notes.toml is not a sinker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_plugin_is_tried_again_after_its_backoff_and_recovers() {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("hostile"), "boom.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\nquarantine_after = 2\nquarantine_min = \"1s\"\nquarantine_max = \"10s\"",
            plugins.path().display()
        ),
        &sinker("q", "[\"metric\"]", Some("boom.wasm"), "boom", &s.url("t")),
    );
    let d = TestDaemon::start(cfg).await;
    let calls = |r: &str| format!("dataway_sinker_calls_total{{result=\"{r}\",sinker=\"q\"}}");
    // Two traps: quarantined. While quarantined, good batches are not offered to it.
    for i in 0..2 {
        assert_eq!(d.post("metric", pts("boom", 2, i * 10)).await.status(), 200);
    }
    assert_eq!(d.post("metric", pts("cpu", 2, 100)).await.status(), 200);
    assert_eq!(metric(&d, &calls("trap")), 2.0);
    assert_eq!(metric(&d, &calls("quarantined")), 1.0);
    assert_eq!(metric(&d, "dataway_sinker_quarantined{sinker=\"q\"}"), 1.0);
    // After the backoff a trial call succeeds: the plugin serves again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(d.post("metric", pts("cpu", 2, 200)).await.status(), 200);
    assert_eq!(metric(&d, &calls("ok")), 1.0);
    assert_eq!(metric(&d, "dataway_sinker_quarantined{sinker=\"q\"}"), 0.0);
    assert!(s.wait_points(2, Duration::from_secs(10)).await);
    assert!(main.wait_points(6, Duration::from_secs(10)).await);
    d.stop().await;
    assert_once(&s, 200..202, "sinker after recovery");
    assert_once(
        &main,
        (0..2).chain(10..12).chain(100..102),
        "main while failing",
    );
}

/// One async worker: if a plugin call ran on it, a looping plugin would stall every other
/// request until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_looping_plugin_does_not_stall_other_requests() {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("hostile"), "hostile.wasm");
    let main = MockDataway::start().await;
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\ntimeout = \"3s\"",
            plugins.path().display()
        ),
        &sinker(
            "loop",
            "[\"metric\"]",
            Some("hostile.wasm"),
            "loop",
            &main.url("t"),
        ),
    );
    let d = std::sync::Arc::new(TestDaemon::start(cfg).await);
    let slow = {
        let d = d.clone();
        tokio::spawn(async move { d.post("metric", pts("cpu", 1, 0)).await.status() })
    };
    // Give the plugin call time to start (it then loops for 3 s), then ask for something else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast = d.post("logging", pts("x", 1, 10)).await.status();
    assert_eq!(fast, 200);
    assert!(
        !slow.is_finished(),
        "the logging write had to wait for the looping plugin"
    );
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the looping batch still goes to main"
    );
    assert!(main.wait_points(2, Duration::from_secs(10)).await);
    assert_eq!(
        metric(
            &d,
            "dataway_sinker_calls_total{result=\"timeout\",sinker=\"loop\"}"
        ),
        1.0
    );
}

/// A daemon whose main endpoint answers after `slow` with one worker and a queue of one
/// (so it fills after two writes), and a sinker `a` whose plugin takes the `cpu` points of
/// metrics to a free endpoint: (daemon, main, sinker endpoint, plugins dir to keep).
async fn slow_main_and_a_cpu_sinker(
    slow: Duration,
) -> (TestDaemon, MockDataway, MockDataway, tempfile::TempDir) {
    let plugins = tempfile::tempdir().unwrap();
    copy_plugin(plugins.path(), &rust_plugin("example-rust"), "names.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    main.set_default(Some(Reply::Slow(slow)));
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\nworkers = 1\nqueue_size = 1",
            plugins.path().display()
        ),
        &sinker("a", "[\"metric\"]", Some("names.wasm"), "cpu", &s.url("t")),
    );
    (TestDaemon::start(cfg).await, main, s, plugins)
}

/// A write refused for lack of room is resent by its client: nothing of it may reach any
/// endpoint (all or nothing across endpoints: the main one is full, the sinker's is free,
/// and the sinker's share of a refused write must not be delivered there), and its routing
/// must not be counted until it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_leaves_nothing_at_a_free_endpoint_and_is_not_counted() {
    let (d, main, s, _plugins) = slow_main_and_a_cpu_sinker(Duration::from_millis(1500)).await;
    let mut accepted_writes = Vec::new();
    let mut refused = 0;
    for i in 0..5u64 {
        let body = [
            pts("cpu", 2, i as usize * 10),
            pts("disk", 3, i as usize * 10 + 5),
        ]
        .join("\n");
        match d.post("metric", body).await.status().as_u16() {
            200 => accepted_writes.push(i),
            503 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let accepted = accepted_writes.len();
    assert!(refused > 0, "the main queue should have filled up");
    let m = |series: &str| metric(&d, series);
    assert_eq!(
        m("dataway_sinker_points_total{result=\"matched\",sinker=\"a\"}"),
        2.0 * accepted as f64
    );
    assert_eq!(
        m("dataway_sinker_points_total{result=\"not_matched\",sinker=\"a\"}"),
        3.0 * accepted as f64
    );
    assert_eq!(
        m("datakit_io_dataway_not_sink_point_total{category=\"metric\"}"),
        3.0 * accepted as f64
    );
    assert_eq!(
        m("datakit_io_dataway_sink_total{category=\"metric\"}"),
        accepted as f64
    );
    // The plugin was still called for every write, accepted or not: where a plugin
    // decides which endpoints get the points, a full queue is known only after routing.
    assert_eq!(
        m("dataway_sinker_calls_total{result=\"ok\",sinker=\"a\"}"),
        5.0
    );
    // Drained: everything accepted has been delivered, so what is not there never will be.
    assert_eq!(d.stop().await.abandoned_points, 0);
    let cpu = accepted_writes.iter().flat_map(|i| i * 10..i * 10 + 2);
    let disk = accepted_writes.iter().flat_map(|i| i * 10 + 5..i * 10 + 8);
    assert_once(&s, cpu, "the free sinker endpoint: accepted writes only");
    assert_once(&main, disk, "main: accepted writes only");
    assert!(
        s.requests().iter().all(|r| r.ok()) && main.requests().iter().all(|r| r.ok()),
        "every request that arrived was answered 2xx (seqs() counts those only)"
    );
}

/// A metric that must be present (absent is a failure, not 0).
fn present(d: &TestDaemon, series: &str) -> f64 {
    let text = d.metrics.encode_text();
    sample(&text, series).unwrap_or_else(|| {
        panic!(
            "{series} is absent:\n{}",
            text.lines()
                .filter(|l| l.starts_with("dataway_sinker"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// Plugins get no WASI: a plugin that reads a file, the environment or the wall clock
/// traps (the imports its toolchain linked in are traps), the failure is counted, and its
/// batch goes to the main endpoints. Each mode would match every point had it got
/// anything, so a leak would also show up at the sinker's endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_gets_no_filesystem_environment_or_clock() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("hostile"), "hostile.wasm");
    let (main, trash) = (MockDataway::start().await, MockDataway::start().await);
    let modes = ["fs", "env", "clock"];
    let extra: String = modes
        .iter()
        .map(|m| sinker(m, "[\"metric\"]", Some("hostile.wasm"), m, &trash.url("t")))
        .collect();
    let cfg = config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\ntimeout = \"5s\"",
            dir.display()
        ),
        &extra,
    );
    let d = TestDaemon::start(cfg).await;
    for m in modes {
        assert_eq!(
            present(
                &d,
                &format!("dataway_sinker_reloads_total{{result=\"ok\",sinker=\"{m}\"}}")
            ),
            1.0,
            "{m}: loads (it only reaches for the host when called)"
        );
    }
    assert_eq!(d.post("metric", pts("cpu", 5, 0)).await.status(), 200);
    assert!(main.wait_points(5, Duration::from_secs(10)).await);
    let text = d.metrics.encode_text();
    assert_eq!(d.stop().await.abandoned_points, 0);
    for m in modes {
        let calls = samples_matching(&text, "dataway_sinker_calls_total", &[("sinker", m)]);
        assert_eq!(
            calls
                .iter()
                .map(|s| (s.labels["result"].as_str(), s.value))
                .collect::<Vec<_>>(),
            [("trap", 1.0)],
            "{m}: one call, counted as a trap"
        );
    }
    assert_once(&main, 0..5, "main");
    assert!(trash.requests().is_empty(), "no plugin matched anything");
}

/// A plugin whose table is larger than `max_table_elements` is refused when it is
/// instantiated (the table is made at that size), counted, and the sinker stays disabled;
/// the same plugin within the limit serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_over_max_table_elements_is_refused_and_counted() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("hostile"), "hostile.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let start = |limit: usize| {
        config_for(
            &[main.url("t")],
            &format!(
                "plugins_dir = \"{}\"\n[dataway.sinker_limits]\nmax_table_elements = {limit}",
                dir.display()
            ),
            &sinker("t", "[\"metric\"]", Some("hostile.wasm"), "ok", &s.url("t")),
        )
    };
    // A Rust plugin's function table has more than one element.
    let d = TestDaemon::start(start(1)).await;
    assert!(
        present(
            &d,
            "dataway_sinker_reloads_total{result=\"init_trap\",sinker=\"t\"}"
        ) >= 1.0
    );
    assert_eq!(d.post("metric", pts("cpu", 3, 0)).await.status(), 200);
    assert!(main.wait_points(3, Duration::from_secs(10)).await);
    assert_eq!(d.stop().await.abandoned_points, 0);
    // The default limit: it loads and takes the points.
    let d = TestDaemon::start(start(100_000)).await;
    assert_eq!(
        present(
            &d,
            "dataway_sinker_reloads_total{result=\"ok\",sinker=\"t\"}"
        ),
        1.0
    );
    assert_eq!(d.post("metric", pts("cpu", 3, 10)).await.status(), 200);
    assert!(s.wait_points(3, Duration::from_secs(10)).await);
    assert_eq!(d.stop().await.abandoned_points, 0);
    assert_once(&main, 0..3, "main while the table was too large");
    assert_once(&s, 10..13, "sinker within the limit");
}

/// A plugin file that is not a regular file (here a directory named like one) is skipped
/// before it is opened, counted as `not_regular_file`, and its sinker stays disabled: the
/// points go to the main endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_that_is_a_directory_is_skipped() {
    let dir = scratch_dir("plugins");
    std::fs::create_dir(dir.join("rule.wasm")).unwrap();
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_for(
        &[main.url("t")],
        &format!("plugins_dir = \"{}\"", dir.display()),
        &sinker("r", "[\"metric\"]", Some("rule.wasm"), "cpu", &s.url("t")),
    );
    let d = TestDaemon::start(cfg).await;
    assert!(
        present(
            &d,
            "dataway_sinker_reloads_total{result=\"not_regular_file\",sinker=\"r\"}"
        ) >= 1.0
    );
    assert_eq!(d.post("metric", pts("cpu", 3, 0)).await.status(), 200);
    assert!(main.wait_points(3, Duration::from_secs(10)).await);
    assert_eq!(d.stop().await.abandoned_points, 0);
    assert_once(&main, 0..3, "main");
    assert!(s.requests().is_empty());
}

/// An executable shell script at `path` with `body` (after `#!/bin/sh`).
fn script(path: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// The daemon's own executable, as `dataway run` uses for compiling plugins.
fn dataway_exe() -> &'static str {
    env!("CARGO_BIN_EXE_dataway")
}

/// A config with one sinker on `rule.wasm` (example-rust, `cpu`) in `dir`, and the
/// compiled-plugin cache in `cache` (`""`: no cache).
fn compile_cfg(
    dir: &Path,
    cache: &str,
    main: &MockDataway,
    s: &MockDataway,
) -> dataway::config::Config {
    config_for(
        &[main.url("t")],
        &format!(
            "plugins_dir = \"{}\"\n[dataway.sinker_limits]\ncache_dir = \"{cache}\"",
            dir.display()
        ),
        &sinker("r", "[\"metric\"]", Some("rule.wasm"), "cpu", &s.url("t")),
    )
}

/// A compiler process that cannot be run, or that fails for a reason that is not the
/// plugin's (the executable replaced by something else), makes the daemon compile in
/// its own process: the plugin loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_compiler_falls_back_to_compiling_in_process() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("example-rust"), "rule.wasm");
    let bin = scratch_dir("bin");
    let not_dataway = script(
        &bin.join("not-dataway"),
        "echo 'usage: not-dataway' >&2\nexit 2",
    );
    for compiler in [bin.join("no-such-file"), not_dataway] {
        let (main, s) = (MockDataway::start().await, MockDataway::start().await);
        let d = TestDaemon::start_with_compiler(compile_cfg(&dir, "", &main, &s), compiler.clone())
            .await;
        assert_eq!(
            present(
                &d,
                "dataway_sinker_reloads_total{result=\"ok\",sinker=\"r\"}"
            ),
            1.0,
            "{}",
            compiler.display()
        );
        assert_eq!(d.post("metric", pts("cpu", 2, 0)).await.status(), 200);
        assert!(s.wait_points(2, Duration::from_secs(10)).await);
        assert_eq!(d.stop().await.abandoned_points, 0);
    }
}

/// A compiler process that dies (a signal, as the OOM killer sends) is not retried in the
/// daemon's own process: the load is counted as `compiler_error`, the sinker stays
/// disabled, and the same file is tried again on the next scan, which then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiler_that_dies_is_a_compiler_error_and_is_tried_again_on_the_next_scan() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("example-rust"), "rule.wasm");
    let bin = scratch_dir("bin");
    let healed = bin.join("healed");
    let compiler = script(
        &bin.join("compiler"),
        &format!(
            "[ -e '{}' ] && exec '{}' \"$@\"\nkill -KILL $$",
            healed.display(),
            dataway_exe()
        ),
    );
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cache = scratch_dir("plugin-cache");
    let cfg = compile_cfg(&dir, &cache.display().to_string(), &main, &s);
    let d = TestDaemon::start_with_compiler(cfg, compiler).await;
    let series = |r: &str| format!("dataway_sinker_reloads_total{{result=\"{r}\",sinker=\"r\"}}");
    assert!(present(&d, &series("compiler_error")) >= 1.0);
    assert_eq!(sample(&d.metrics.encode_text(), &series("ok")), None);
    assert_eq!(d.post("metric", pts("cpu", 2, 0)).await.status(), 200);
    assert!(main.wait_points(2, Duration::from_secs(10)).await);

    // The compiler works again; any change in the directory makes a scan, which retries
    // the same, unchanged file.
    std::fs::write(&healed, "").unwrap();
    std::fs::write(dir.join("nudge"), "").unwrap();
    wait_for_metric(&d, &series("ok"), 1.0).await;
    assert_eq!(d.post("metric", pts("cpu", 2, 10)).await.status(), 200);
    assert!(s.wait_points(2, Duration::from_secs(10)).await);
    assert_eq!(d.stop().await.abandoned_points, 0);
    assert_once(&main, 0..2, "main while the compiler was broken");
    assert_once(&s, 10..12, "sinker once it loaded");
}

/// The compiled plugin is kept in `cache_dir` and loaded from there after a restart: the
/// compiler is not run again and the cache file is not rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compiled_cache_is_reused_across_restarts() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("example-rust"), "rule.wasm");
    let bin = scratch_dir("bin");
    let runs = bin.join("runs");
    // Counts its runs, then is the real compiler.
    let compiler = script(
        &bin.join("compiler"),
        &format!(
            "echo run >> '{}'\nexec '{}' \"$@\"",
            runs.display(),
            dataway_exe()
        ),
    );
    let cache = scratch_dir("plugin-cache");
    let cached_files = || -> Vec<(std::path::PathBuf, u64, i64, i64)> {
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            // The cache's key (cache.key) is not a compiled plugin.
            .filter(|e| e.file_name() != "cache.key")
            .map(|e| {
                let m = e.metadata().unwrap();
                (e.path(), m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    };
    let compiler_runs = || {
        std::fs::read_to_string(&runs)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut first = Vec::new();
    for restart in 0..2 {
        let (main, s) = (MockDataway::start().await, MockDataway::start().await);
        let cfg = compile_cfg(&dir, &cache.display().to_string(), &main, &s);
        let d = TestDaemon::start_with_compiler(cfg, compiler.clone()).await;
        assert_eq!(
            present(
                &d,
                "dataway_sinker_reloads_total{result=\"ok\",sinker=\"r\"}"
            ),
            1.0
        );
        assert_eq!(d.post("metric", pts("cpu", 2, 0)).await.status(), 200);
        assert!(s.wait_points(2, Duration::from_secs(10)).await);
        assert_eq!(d.stop().await.abandoned_points, 0);
        assert_eq!(compiler_runs(), 1, "start {restart}: compiled once, ever");
        let files = cached_files();
        assert_eq!(
            files.len(),
            1,
            "one compiled plugin in the cache: {files:?}"
        );
        if restart == 0 {
            first = files;
        } else {
            assert_eq!(files, first, "the cache file was not rewritten");
        }
    }
}

/// A config file for the real binary (`DaemonProcess`): ingest on port 0, its data in
/// scratch directories, compiled plugins in the tests' cache; `extra` goes after
/// `[dataway.sinker_limits]` (sinkers, more limits).
fn config_file(
    main: &MockDataway,
    plugins_dir: &Path,
    limits: &str,
    extra: &str,
) -> std::path::PathBuf {
    let dir = scratch_dir("config");
    let path = dir.join("dataway.toml");
    std::fs::write(
        &path,
        format!(
            "[dataway]\nurls = [\"{}\"]\nplugins_dir = \"{}\"\n\
             [dataway.fail_cache]\npath = \"{}\"\n[dataway.wal]\npath = \"{}\"\n\
             [dataway.sinker_limits]\ncache_dir = \"{}\"\n{limits}\n{extra}\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n",
            main.url("t"),
            plugins_dir.display(),
            dir.join("failcache").display(),
            dir.join("wal").display(),
            plugin_cache_dir().display(),
        ),
    )
    .unwrap();
    path
}

/// A plugin that logs in a loop reaches the daemon's log at most 50 lines per 10 s; the
/// batch itself is still judged (the flood mode matches every point).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_flooding_the_log_is_rate_limited() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("hostile"), "hostile.wasm");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_file(
        &main,
        &dir,
        "timeout = \"10s\"",
        &sinker(
            "flood",
            "[\"metric\"]",
            Some("hostile.wasm"),
            "log-flood",
            &s.url("t"),
        ),
    );
    // The limiter's window starts when the plugin is loaded, which is after this.
    let before_load = std::time::Instant::now();
    let mut p = common::process::DaemonProcess::start(&cfg, &[]);
    assert!(p.log().contains("plugin loaded"), "{}", p.log());
    // One batch: the plugin writes 10 000 lines in one call.
    assert_eq!(p.post("metric", pts("cpu", 3, 0)).await, 200);
    let called = std::time::Instant::now();
    assert!(s.wait_points(3, Duration::from_secs(20)).await);
    p.signal("TERM");
    assert!(p.wait(Duration::from_secs(30)).success());
    let log = p.log();
    let flood: Vec<&str> = log.lines().filter(|l| l.contains("flood line")).collect();
    assert!(
        flood
            .first()
            .is_some_and(|l| l.contains("flood line 0") && l.contains("sinker=flood")),
        "the first lines get through, tagged with the sinker: {:?}",
        flood.first()
    );
    // The window (10 s) starts when the plugin is loaded; the call may straddle two
    // windows only if it came 10 s or more after that.
    let windows = if called.duration_since(before_load) < Duration::from_secs(10) {
        1
    } else {
        2
    };
    assert!(
        flood.len() == 50 * windows || (windows == 2 && flood.len() >= 50 && flood.len() <= 100),
        "{} plugin lines reached the log in {windows} window(s)",
        flood.len()
    );
    assert_once(&s, 0..3, "the flooding plugin's sinker");
}

/// The default `plugins_dir` does not exist until someone makes it: that is normal, so
/// the start says nothing about it at info level or above; and a directory made later
/// is watched from then on (a drop-in sinker put in it starts without a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_plugins_dir_is_quiet_and_picked_up_when_made() {
    let dir = scratch_dir("parent").join("plugins");
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = config_file(&main, &dir, "", "");
    let mut p = common::process::DaemonProcess::start(&cfg, &[]);
    assert_eq!(p.post("metric", pts("cpu", 2, 0)).await, 200);
    assert!(main.wait_points(2, Duration::from_secs(20)).await);
    let start_log = p.log();
    assert!(
        !start_log.contains("plugins_dir") && !start_log.contains("No path was found"),
        "nothing said about the missing plugins_dir:\n{start_log}"
    );

    // Made later, with a drop-in sinker in it (plugin first, then its sidecar).
    std::fs::create_dir(&dir).unwrap();
    copy_plugin(&dir, &rust_plugin("example-rust"), "late.wasm");
    std::fs::write(
        dir.join("late.toml"),
        format!(
            "categories = [\"metric\"]\nconfig = \"cpu\"\nurls = [\"{}\"]\n",
            s.url("t")
        ),
    )
    .unwrap();
    p.wait_log(Duration::from_secs(20), |l| {
        l.contains("drop-in sinker added").then_some(())
    })
    .unwrap_or_else(|| panic!("the drop-in sinker was not added:\n{}", p.log()));
    assert_eq!(p.post("metric", pts("cpu", 2, 10)).await, 200);
    assert!(s.wait_points(2, Duration::from_secs(20)).await);
    p.signal("TERM");
    assert!(p.wait(Duration::from_secs(30)).success());
    // Plain values in the log, not Rust's debug text (`plugin=Some("late.wasm")`).
    let log = p.log();
    let started = log
        .lines()
        .find(|l| l.contains("sinker started"))
        .unwrap_or_else(|| panic!("no `sinker started` line:\n{log}"));
    assert!(
        started.contains("sinker=late categories=metric plugin=late.wasm"),
        "{started}"
    );
    let loaded = log.lines().find(|l| l.contains("plugin loaded")).unwrap();
    assert!(loaded.contains(" previous=none "), "{loaded}");
    assert_once(&main, 0..2, "main before the directory existed");
    assert_once(&s, 10..12, "the drop-in sinker");
}

/// Where a plugin decides which endpoints get a write's points, a full main queue is no
/// reason to refuse a write before routing it: one whose points all go to the sinker is
/// taken while the main endpoint is stuck; one with points for the main endpoint is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_main_endpoint_does_not_refuse_a_write_a_plugin_sinks_whole() {
    let (d, _main, s, _plugins) = slow_main_and_a_cpu_sinker(Duration::from_secs(5)).await;
    // Fill the main queue: one batch being sent, one queued.
    let mut i = 0;
    loop {
        i += 1;
        assert!(i < 10, "the main queue never filled");
        if d.post("metric", pts("disk", 1, i)).await.status().as_u16() == 503 {
            break;
        }
    }
    let r = d.post("metric", pts("cpu", 3, 100)).await;
    assert_eq!(r.status().as_u16(), 200, "every point goes to the sinker");
    assert!(s.wait_points(3, Duration::from_secs(10)).await);
    let r = d.post("metric", pts("disk", 1, 200)).await;
    assert_eq!(r.status().as_u16(), 503, "this one needs the main queue");
}

/// Main endpoint `main`; sinker `a` takes the metrics whose `host` is `a` (DataKit's
/// filter, as WASM).
fn host_a_config(main: &MockDataway, a: &MockDataway) -> dataway::config::Config {
    metric_sinker_config(main, a, "{ host = \"a\" }")
}

/// Main endpoint `main`; sinker `a` takes the metrics DataKit's `condition` matches.
fn metric_sinker_config(
    main: &MockDataway,
    a: &MockDataway,
    condition: &str,
) -> dataway::config::Config {
    config_for(
        &[main.url("t")],
        "",
        &sinker(
            "a",
            "[\"metric\"]",
            Some("datakit_filter.wasm"),
            condition,
            &a.url("t"),
        ),
    )
}

/// Posts `body` as metrics (nanosecond times) and waits until `delivered` says so.
async fn write_metrics_until(d: &TestDaemon, body: &str, delivered: impl Fn() -> bool) {
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric?precision=n"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !delivered() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(delivered(), "every point delivered once");
}

/// With every endpoint sending line protocol, a write is kept as the text it came in as
/// and the condition reads its columns from that text: the sinker's share and the rest go
/// out as the client wrote them (spelling, escapes), each line once, and the answers and
/// counts are those of the same points sent as DataKit's v2 protobuf (parsed into points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinker_splits_text_as_written_and_answers_as_for_points() {
    use dataway::point::{ParseOptions, Precision, parse, v2};
    let body = "cpu,host=a v=1.50,ok=T 1\n\
                cpu,host=b\\ c v=2 2\n\
                mem,host=a s=\"x \\\"y\\\"\",n=3i 3\n\
                m\\,x,host=a,zone=z v=4u 4\n\
                cpu,host=aa v=5 5\n";
    let mut runs = Vec::new();
    for protobuf in [false, true] {
        let (main, a) = (MockDataway::start().await, MockDataway::start().await);
        let cfg = host_a_config(&main, &a);
        let d = TestDaemon::start(cfg).await;
        assert!(d.dataway.forwards(dataway::category::Category::Metric));
        let req = reqwest::Client::new().post(d.url("/v1/write/metric?precision=n"));
        let req = if protobuf {
            let points = parse(body.as_bytes(), ParseOptions::default()).unwrap();
            req.header("Content-Type", v2::CONTENT_TYPE)
                .body(v2::encode(&points))
        } else {
            req.body(body)
        };
        assert_eq!(req.send().await.unwrap().status(), 200);
        assert!(a.wait_points(3, Duration::from_secs(10)).await);
        assert!(main.wait_points(2, Duration::from_secs(10)).await);
        let matched = "dataway_sinker_points_total{result=\"matched\",sinker=\"a\"}";
        assert!(wait_metric(&d.metrics, matched, 3.0).await);
        let counts = [
            matched,
            "dataway_sinker_points_total{result=\"not_matched\",sinker=\"a\"}",
            "datakit_io_dataway_not_sink_point_total{category=\"metric\"}",
            "datakit_io_dataway_sink_total{category=\"metric\"}",
        ]
        .map(|s| metric(&d, s));
        d.stop().await;
        let texts = |m: &MockDataway| m.requests().into_iter().map(|r| r.text).collect::<Vec<_>>();
        runs.push((texts(&a), texts(&main), counts));
    }
    let (text, points) = (&runs[0], &runs[1]);
    assert_eq!(
        text.0,
        ["cpu,host=a v=1.50,ok=T 1\n\
          mem,host=a s=\"x \\\"y\\\"\",n=3i 3\n\
          m\\,x,host=a,zone=z v=4u 4"],
        "the sinker's share, as written"
    );
    assert_eq!(
        text.1,
        ["cpu,host=b\\ c v=2 2\ncpu,host=aa v=5 5"],
        "the rest, as written"
    );
    assert_eq!(text.2, [3.0, 2.0, 2.0, 1.0]);
    assert_eq!(text.2, points.2, "counted as for points");
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    for (t, p) in [(&text.0, &points.0), (&text.1, &points.1)] {
        assert_eq!(
            parse(t.concat().as_bytes(), opts).unwrap(),
            parse(p.concat().as_bytes(), opts).unwrap(),
            "the same points"
        );
    }
}

/// The keys a condition asked of one write are noted by the parser in the next ones
/// (`Dataway::noting`): answers read from the noted places are those of the search
/// that the first write used, escaped values and keys hidden in string fields included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_noted_while_parsing_answer_as_the_search_did() {
    use dataway::category::Category;
    let body = "cpu,host=a v=1.50,ok=T 1\n\
                cpu,host=b\\ c v=2 2\n\
                mem,zone=z s=\"x host=a\",host=\"a\" 3\n\
                m\\,x,host=a,zone=z v=4u 4\n\
                cpu,zone=host=a,host=a\\=b v=5 5\n\
                cpu,host=a v=6 6\n";
    let (main, a) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = host_a_config(&main, &a);
    let d = TestDaemon::start(cfg).await;
    assert_eq!(
        d.dataway.noting(Category::Metric),
        None,
        "nothing asked yet"
    );
    for write in 1..=3 {
        let all = || a.points_accepted() + main.points_accepted() == 6 * write;
        write_metrics_until(&d, body, all).await;
        let noted = d.dataway.noting(Category::Metric).expect("keys noted");
        assert!(noted.keys.iter().any(|k| k == "host"), "{noted:?}");
    }
    d.stop().await;
    // One request per write to each; the first write was searched, the others noted.
    let texts = |m: &MockDataway| m.requests().into_iter().map(|r| r.text).collect::<Vec<_>>();
    let (share, rest) = (texts(&a), texts(&main));
    assert_eq!(share.len(), 3);
    assert_eq!(rest.len(), 3);
    // A tag `host=a`, and a field `host="a"` (DataKit's filter reads fields too), go;
    // `host=b c` stays.
    assert!(
        share[0].starts_with("cpu,host=a v=1.50,ok=T 1\nmem,zone=z s="),
        "{share:?}"
    );
    assert!(rest[0].starts_with("cpu,host=b\\ c v=2 2\n"), "{rest:?}");
    assert!(share.iter().all(|t| *t == share[0]), "{share:?}");
    assert!(rest.iter().all(|t| *t == rest[0]), "{rest:?}");
}

/// A tag with more distinct values in a write than a noted column holds (an id) is noted
/// once, given up, and then rests: the next writes do not note it (the search answers),
/// then it is tried again. Every write's answers stay right throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_tag_given_up_by_the_parser_rests_then_is_noted_again() {
    use dataway::category::Category;
    let lines = 1_100; // more distinct ids than a noted column holds (1,024)
    let body: String = (0..lines)
        .map(|i| format!("cpu,host=h{},id={i} v=1 {}\n", i % 3, i + 1))
        .collect();
    let (main, a) = (MockDataway::start().await, MockDataway::start().await);
    let cfg = metric_sinker_config(&main, &a, "{ id = \"7\" or host = \"h1\" }");
    let d = TestDaemon::start(cfg).await;
    let noted_id = || {
        d.dataway
            .noting(Category::Metric)
            .is_some_and(|n| n.keys.iter().any(|k| k == "id"))
    };
    let taken = (0..lines).filter(|i| i % 3 == 1 || *i == 7).count();
    // Which writes noted `id` (the state `noting` gives is what the next write uses).
    let mut noted = Vec::new();
    for write in 1..=20 {
        noted.push(noted_id());
        let all = || a.points_accepted() + main.points_accepted() == lines * write;
        write_metrics_until(&d, &body, all).await;
        assert_eq!(
            a.points_accepted(),
            taken * write,
            "write {write}: the sinker's share"
        );
    }
    d.stop().await;
    // Write 1 is searched (nothing asked yet); write 2 notes `id` and gives it up; it rests
    // for 16 writes (3..=18); write 19 notes it again (and gives it up again).
    let want: Vec<bool> = (1..=20).map(|w| w == 2 || w == 19).collect();
    assert_eq!(noted, want, "which writes noted `id`");
}

/// While the plugins compile, the port answers: `/health` and writes 503 "starting" (with
/// `Retry-After`), `/health/live` 200; once loaded, `/health` is 200 and writes are taken;
/// stopping, `/health` is 503 again. The compiler waits for a file the test makes, so the
/// start lasts exactly as long as the test wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_starting_while_plugins_compile_then_ready_then_stopping() {
    let dir = scratch_dir("plugins");
    copy_plugin(&dir, &rust_plugin("example-rust"), "rule.wasm");
    let bin = scratch_dir("bin");
    let gate = bin.join("gate");
    let compiler = script(
        &bin.join("compiler"),
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.02; done\nexec '{}' \"$@\"",
            gate.display(),
            dataway_exe()
        ),
    );
    // Opened however the test ends: a failing assertion must not leave the start (and the
    // runtime's shutdown, which waits for it) blocked on the compiler.
    struct Open(std::path::PathBuf);
    impl Drop for Open {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _open = Open(gate.clone());
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    let cache = scratch_dir("plugin-cache");
    let cfg = compile_cfg(&dir, &cache.display().to_string(), &main, &s);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = |path: &str| format!("http://{addr}{path}");
    let starting = tokio::spawn(dataway::daemon::Daemon::start_serving(
        cfg,
        listener,
        Some(compiler),
    ));
    // Unanswered, a request fails here instead of hanging the test.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.headers()["retry-after"], "1");
    let body = health.text().await.unwrap();
    assert!(body.contains("starting"), "{body}");
    assert_eq!(
        http.get(url("/health/live")).send().await.unwrap().status(),
        200
    );
    let write = http
        .post(url("/v1/write/metric"))
        .body("cpu,host=a v=1i 1")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 503);
    assert!(!starting.is_finished(), "the start waits for the compiler");

    std::fs::write(&gate, "").unwrap();
    let (daemon, listener) = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the daemon starts once the compiler runs")
        .unwrap()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(daemon.run(listener, stop.clone()));
    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    let write = http
        .post(url("/v1/write/metric"))
        .body("cpu,host=a v=1i 1\nmem,host=a v=2i 1")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    // The plugin loaded (through the compiler): `cpu` goes to the sinker, `mem` on.
    assert!(s.wait_points(1, Duration::from_secs(10)).await);
    assert!(main.wait_points(1, Duration::from_secs(10)).await);

    // Stopping: a delivery the endpoint holds keeps the drain going while /health is asked.
    main.set_default(Some(Reply::Slow(Duration::from_secs(3))));
    let write = http
        .post(url("/v1/write/metric"))
        .body("mem,host=b v=3i 1")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    stop.cancel();
    // The stop reaches ingest a moment after the cancel; the drain then lasts at least as
    // long as the held delivery (3 s), so the 503 is there to be seen well within that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let health = http.get(url("/health")).send().await.unwrap();
        if health.status() == 503 {
            break health.text().await.unwrap();
        }
        assert_eq!(health.status(), 200, "ready until the stop reaches ingest");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health still 200 10 s after the stop"
        );
        tokio::task::yield_now().await;
    };
    assert!(body.contains("shutting down"), "{body}");
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the daemon stops")
        .unwrap()
        .unwrap();
}
