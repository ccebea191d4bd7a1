//! The fail-cache end to end: outages, recovery, restarts and limits, against loopback
//! receivers. Points are counted by their unique `seq` field at each receiver.

mod common;

use std::time::Duration;

use common::*;

/// Fast retries and resends for tests.
fn fast(extra_dataway: &str, fail_cache: &str) -> String {
    let interval = if fail_cache.contains("clean_interval") {
        ""
    } else {
        "clean_interval = \"100ms\"\n"
    };
    format!(
        "max_retry_count = 1\nretry_delay = \"10ms\"\nmax_retry_delay = \"50ms\"\n{extra_dataway}\n\
         [dataway.fail_cache]\n{interval}{fail_cache}"
    )
}

fn assert_exactly_once(mock: &MockDataway, n: u64, who: &str) {
    let got = seqs(mock);
    for s in 0..n {
        assert_eq!(got.get(&s), Some(&1), "{who}: seq {s}");
    }
    assert_eq!(got.len() as u64, n, "{who}: unexpected points");
}

fn resent(mock: &MockDataway) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.ok() && r.header("x-fail-cache-retry") == Some("1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_under_load_loses_nothing_and_duplicates_nothing() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", ""), "")).await;
    for i in 0..20 {
        assert_eq!(
            d.post("metric", lines("cpu", 10, i * 10)).await.status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i == 14 {
            dw.set_default(None); // the server recovers while the load goes on
        }
    }
    assert!(dw.wait_points(200, Duration::from_secs(20)).await);
    let records = "dataway_failcache_records{endpoint=";
    let m = d.metrics.clone();
    d.stop().await;
    assert_exactly_once(&dw, 200, "endpoint");
    assert!(resent(&dw) > 0, "some bodies came from the fail-cache");
    let text = m.encode_text();
    let left: f64 = text
        .lines()
        .filter(|l| l.starts_with(records))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(left, 0.0, "the cache drained:\n{text}");
    assert!(
        text.contains("datakit_io_flush_failcache_bytes_count{category=\"metric\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_gets_everything_after_recovery_and_the_healthy_one_once() {
    let healthy = MockDataway::start().await;
    let dead = MockDataway::start().await;
    dead.set_default(Some(Reply::Status(502)));
    let d = TestDaemon::start(config_for(
        &[dead.url("dead"), healthy.url("live")],
        &fast("", ""),
        "",
    ))
    .await;
    for i in 0..10 {
        assert_eq!(
            d.post("metric", lines("cpu", 10, i * 10)).await.status(),
            200
        );
    }
    assert!(healthy.wait_points(100, Duration::from_secs(10)).await);
    // Some bodies have failed their retries and wait in the dead endpoint's cache.
    assert!(wait_metric_at_least(&d.metrics, &records(&dead), 1.0).await);
    assert_eq!(dead.points_accepted(), 0);
    dead.set_default(None);
    assert!(dead.wait_points(100, Duration::from_secs(20)).await);
    d.stop().await;
    assert_exactly_once(&healthy, 100, "healthy");
    assert_exactly_once(&dead, 100, "recovered");
    assert_eq!(
        resent(&healthy),
        0,
        "resends go to the failing endpoint only"
    );
    assert!(resent(&dead) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinker_endpoint_down_then_up_loses_nothing() {
    let main = MockDataway::start().await;
    let sink = MockDataway::start().await;
    sink.set_default(Some(Reply::Status(500)));
    let extra = format!(
        "[[dataway.sinkers]]\nname = \"all\"\ncategories = [\"logging\"]\nurls = [\"{}\"]\n",
        sink.url("s")
    );
    let d = TestDaemon::start(config_for(&[main.url("m")], &fast("", ""), &extra)).await;
    for i in 0..5 {
        assert_eq!(
            d.post("logging", lines("nginx", 10, i * 10)).await.status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.set_default(None);
    assert!(sink.wait_points(50, Duration::from_secs(20)).await);
    d.stop().await;
    assert_exactly_once(&sink, 50, "sinker endpoint");
    assert!(
        main.requests().is_empty(),
        "sunk points are not sent to main"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_cached_at_shutdown_is_sent_after_a_restart() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let cache = tempfile::tempdir().unwrap();
    let fc = format!("path = \"{}\"", cache.path().display());
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", &fc), "")).await;
    for i in 0..4 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    assert!(
        wait_metric(&d.metrics, &records(&dw), 4.0).await,
        "four bodies cached"
    );
    d.stop().await;
    assert_eq!(dw.points_accepted(), 0);

    dw.set_default(None);
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", &fc), "")).await;
    assert!(dw.wait_points(20, Duration::from_secs(20)).await);
    d.stop().await;
    assert_exactly_once(&dw, 20, "after restart");
    assert_eq!(resent(&dw), 4);
}

/// The `dataway_failcache_records` series of the endpoint at `mock` (its token is
/// redacted in the label).
fn records(mock: &MockDataway) -> String {
    format!(
        "dataway_failcache_records{{endpoint=\"http://{}?token=***\"}}",
        mock.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_in_flight_at_shutdown_finishes_and_leaves_the_cache() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let cache = tempfile::tempdir().unwrap();
    let fc = format!("path = \"{}\"", cache.path().display());
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", &fc), "")).await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(wait_metric(&d.metrics, &records(&dw), 1.0).await);
    // The resend is answered slowly; stop while the server holds it.
    let before = dw.arrived();
    dw.script([Reply::Slow(Duration::from_millis(500))]);
    dw.set_default(None);
    assert!(
        dw.wait_for(Duration::from_secs(10), |m| m.arrived() > before)
            .await
    );
    let m = d.metrics.clone();
    d.stop().await;
    assert_exactly_once(&dw, 5, "resent once");
    assert_eq!(
        sample(&m.encode_text(), &records(&dw)),
        Some(0.0),
        "the delivered body left the cache before the daemon stopped"
    );
    // So a restart has nothing to send again.
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", &fc), "")).await;
    assert_eq!(sample(&d.metrics.encode_text(), &records(&dw)), Some(0.0));
    d.stop().await;
    assert_exactly_once(&dw, 5, "after restart");
}

/// A sinker that sends where the main endpoint sends (same URL and token): the two
/// endpoints share one cache file; neither runs without a cache, nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinker_on_the_main_url_shares_its_fail_cache() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let extra = format!(
        "[[dataway.sinkers]]\nname = \"same\"\ncategories = [\"logging\"]\nurls = [\"{}\"]\n",
        dw.url("t")
    );
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", ""), &extra)).await;
    for i in 0..4 {
        let category = if i % 2 == 0 { "logging" } else { "metric" };
        assert_eq!(d.post(category, lines("x", 5, i * 5)).await.status(), 200);
    }
    assert!(
        wait_metric(&d.metrics, &records(&dw), 4.0).await,
        "both endpoints' bodies are in the one cache"
    );
    dw.set_default(None);
    assert!(dw.wait_points(20, Duration::from_secs(20)).await);
    let m = d.metrics.clone();
    d.stop().await; // joins the resend tasks: every count is in
    let text = m.encode_text();
    assert_exactly_once(&dw, 20, "shared cache");
    assert!(!text.contains("reason=\"retries_exhausted\""), "{text}");
    // Whichever endpoint resent them, the sinker's bodies count as sunk, main's do not.
    let sunk = |c: &str| {
        sample(
            &text,
            &format!("datakit_io_dataway_sink_point_total{{category=\"{c}\",status=\"OK\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!((sunk("logging"), sunk("metric")), (10.0, 0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_cache_is_full_the_oldest_bodies_go_and_are_counted() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    // ~100 KB bodies (no gzip), a 1 MiB cache: about 10 of 16 fit. One worker: bodies reach the
    // cache in the order they were posted.
    let cache = tempfile::tempdir().unwrap();
    let fc = |interval: &str| {
        format!(
            "path = \"{}\"\nmax_capacity = 1048576\nclean_interval = \"{interval}\"",
            cache.path().display()
        )
    };
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &fast("gzip = false\nworkers = 1", &fc("1h")),
        "",
    ))
    .await;
    const BATCHES: u64 = 16;
    const PER: u64 = 2000;
    for i in 0..BATCHES {
        let body = lines("cpu", PER as usize, (i * PER) as usize);
        assert_eq!(d.post("metric", body).await.status(), 200);
    }
    let m = d.metrics.clone();
    let full = async {
        for _ in 0..2000 {
            let text = m.encode_text();
            let dropped = text
                .lines()
                .find(|l| {
                    l.starts_with("dataway_failcache_dropped_total{")
                        && l.contains("reason=\"full\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .unwrap_or(0);
            let kept = text
                .lines()
                .find(|l| l.starts_with("dataway_failcache_records{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .unwrap_or(0);
            if dropped + kept == BATCHES {
                return (dropped, kept);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not every body reached the cache");
    };
    let (dropped, kept) = full.await;
    assert!(dropped > 0 && kept > 0, "dropped {dropped}, kept {kept}");
    assert_eq!(
        sample(
            &m.encode_text(),
            "dataway_dropped_points_total{category=\"metric\",reason=\"failcache_full\"}"
        ),
        Some((dropped * PER) as f64)
    );
    d.stop().await;
    // A new daemon on the same cache, with the server back: the newest bodies arrive.
    dw.set_default(None);
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &fast("gzip = false\nworkers = 1", &fc("50ms")),
        "",
    ))
    .await;
    assert!(
        dw.wait_points((kept * PER) as usize, Duration::from_secs(20))
            .await
    );
    d.stop().await;
    let got = seqs(&dw);
    let first_kept = dropped * PER;
    for s in 0..BATCHES * PER {
        let want = usize::from(s >= first_kept);
        assert_eq!(got.get(&s).copied().unwrap_or(0), want, "seq {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_shutdown_deadline_undelivered_points_go_to_the_cache_and_out_after_restart() {
    let dw = MockDataway::start().await;
    // The server hangs: nothing can be delivered within the grace period.
    dw.set_default(Some(Reply::Slow(Duration::from_secs(30))));
    let cache = tempfile::tempdir().unwrap();
    let fc = format!("path = \"{}\"", cache.path().display());
    let cfg = |grace: &str| {
        config_for(
            &[dw.url("t")],
            &fast(
                &format!("workers = 1\nshutdown_timeout = \"{grace}\"\ntimeout = \"60s\""),
                &fc,
            ),
            "",
        )
    };
    let d = TestDaemon::start(cfg("300ms")).await;
    for i in 0..6 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    let report = d.stop().await;
    assert_eq!(report.abandoned_points, 0, "nothing lost");
    assert_eq!(report.persisted_points, 30, "in flight and queued kept");

    dw.set_default(None);
    let d = TestDaemon::start(cfg("5s")).await;
    assert!(dw.wait_points(30, Duration::from_secs(20)).await);
    d.stop().await;
    // The interrupted request may have reached the server before the stop (at-least-once):
    // every point arrived, the resent ones exactly once.
    let got = seqs(&dw);
    for s in 0..30u64 {
        assert!(got.contains_key(&s), "seq {s} lost");
    }
    let resent_points: usize = dw
        .requests()
        .iter()
        .filter(|r| r.ok() && r.header("x-fail-cache-retry") == Some("1"))
        .map(|r| r.x_points())
        .sum();
    assert_eq!(resent_points, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_starts_on_a_damaged_cache_file_and_counts_it() {
    let dw = MockDataway::start().await;
    let cache = tempfile::tempdir().unwrap();
    // The file this endpoint's cache lives in, overwritten with garbage.
    let url = dw.url("t");
    let (origin, query) = url.split_once('?').unwrap();
    let file = dataway::failcache::file_for(cache.path(), &format!("{origin}?{query}"));
    std::fs::write(&file, vec![0x5au8; 16 * 1024]).unwrap();
    let fc = format!("path = \"{}\"", cache.path().display());
    let d = TestDaemon::start(config_for(std::slice::from_ref(&url), &fast("", &fc), "")).await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(dw.wait_points(5, Duration::from_secs(10)).await);
    let text = d.metrics.encode_text();
    d.stop().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("dataway_failcache_dropped_total{")
                && l.contains("reason=\"corrupt_file\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    let aside = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 1, "the damaged file is kept aside");
}

/// A drop-in sinker whose sidecar changes is restarted on the same URL: the new endpoint
/// shares the old one's cache file at once (no window without a cache), and takes over
/// resending from it when the old one has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_drop_in_sinker_keeps_its_fail_cache() {
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path();
    std::fs::copy(
        common::plugins::rust_plugin("example-rust"),
        dir.join("sink.wasm"),
    )
    .unwrap();
    let (main, s) = (MockDataway::start().await, MockDataway::start().await);
    s.set_default(Some(Reply::Status(503)));
    let sidecar = |config: &str| {
        format!(
            "categories = [\"metric\"]\nconfig = \"{config}\"\nurls = [\"{}\"]\n",
            s.url("t")
        )
    };
    std::fs::write(dir.join("sink.toml"), sidecar("cpu")).unwrap();
    let d = TestDaemon::start(config_for(
        &[main.url("m")],
        &fast(&format!("plugins_dir = \"{}\"", dir.display()), ""),
        "",
    ))
    .await;
    let series = "dataway_sinker_reloads_total{result=\"ok\",sinker=\"sink\"}";
    let reloaded = |n: f64| {
        let m = d.metrics.clone();
        async move { assert!(wait_metric_at_least(&m, series, n).await, "{series} < {n}") }
    };
    reloaded(1.0).await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    // Restart the sinker (same URL): the new endpoints share the old one's cache at once.
    std::fs::write(dir.join("sink.toml"), sidecar("cpu,mem")).unwrap();
    reloaded(2.0).await;
    assert_eq!(d.post("metric", lines("mem", 5, 5)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.set_default(None);
    assert!(s.wait_points(10, Duration::from_secs(20)).await);
    let text = d.metrics.encode_text();
    d.stop().await;
    assert_exactly_once(&s, 10, "restarted sinker");
    assert!(
        !text.contains("reason=\"retries_exhausted\""),
        "nothing was dropped for lack of a cache:\n{text}"
    );
}
