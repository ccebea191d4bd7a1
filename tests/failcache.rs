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

/// Resends from the fail-cache that `mock` accepted.
fn resent(mock: &MockDataway) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.ok() && r.header("x-fail-cache-retry") == Some("1"))
        .count()
}

/// Points in the resends that `mock` accepted.
fn resent_points(mock: &MockDataway) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.ok() && r.header("x-fail-cache-retry") == Some("1"))
        .map(|r| r.x_points())
        .sum()
}

/// Resends from the fail-cache that reached `mock`, answered or not.
fn resends_arrived(mock: &MockDataway) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.header("x-fail-cache-retry") == Some("1"))
        .count()
}

/// The endpoint label of `mock` in the daemon's metrics (its token redacted).
fn endpoint(mock: &MockDataway) -> String {
    format!("http://{}?token=***", mock.addr)
}

/// `dataway_failcache_dropped_total` of the endpoint at `mock` for `reason`.
fn cache_dropped(mock: &MockDataway, reason: &str) -> String {
    format!(
        "dataway_failcache_dropped_total{{endpoint=\"{}\",reason=\"{reason}\"}}",
        endpoint(mock)
    )
}

/// `dataway_failcache_disk_bytes` of the endpoint at `mock`.
fn disk_bytes(mock: &MockDataway) -> String {
    format!(
        "dataway_failcache_disk_bytes{{endpoint=\"{}\"}}",
        endpoint(mock)
    )
}

/// The size on disk of the fail-cache records holding the distinct bodies that reached
/// `mock` (a record: 23 bytes of header, the category name, the body as sent).
fn record_bytes(mock: &MockDataway, category: &str) -> f64 {
    let mut bodies: Vec<Vec<u8>> = mock.requests().into_iter().map(|r| r.body).collect();
    bodies.sort();
    bodies.dedup();
    bodies
        .iter()
        .map(|b| (23 + category.len() + b.len()) as f64)
        .sum()
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
    let m = d.metrics.clone();
    d.stop().await;
    assert_exactly_once(&dw, 200, "endpoint");
    let (bodies, points) = (resent(&dw), resent_points(&dw));
    assert!(bodies > 0, "some bodies came from the fail-cache");
    let text = m.encode_text();
    assert_eq!(
        sample(&text, &records(&dw)),
        Some(0.0),
        "the cache drained:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "datakit_io_flush_failcache_bytes_count{category=\"metric\"}"
        ),
        Some(bodies as f64),
        "one observation per body resent:\n{text}"
    );
    // Each point counted once, by its first send: the resent ones as failed.
    let points_by = |status: &str| {
        sample(
            &text,
            &format!("datakit_io_dataway_point_total{{category=\"metric\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(points_by("OK"), Some((200 - points) as f64), "{text}");
    assert_eq!(
        points_by("Service Unavailable"),
        Some(points as f64),
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
    // Every body has failed its retries and waits in the sinker endpoint's cache.
    assert!(
        wait_metric(&d.metrics, &records(&sink), 5.0).await,
        "{}",
        d.metrics.encode_text()
    );
    assert_eq!(sink.points_accepted(), 0);
    sink.set_default(None);
    assert!(sink.wait_points(50, Duration::from_secs(20)).await);
    assert!(wait_metric(&d.metrics, &records(&sink), 0.0).await);
    d.stop().await;
    assert_exactly_once(&sink, 50, "sinker endpoint");
    assert_eq!(
        (resent(&sink), resent_points(&sink)),
        (5, 50),
        "all of it came from the fail-cache"
    );
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
    // Their size on disk: each body as sent, plus the record header.
    let bytes = record_bytes(&dw, "metric");
    assert!(
        wait_metric(&d.metrics, &disk_bytes(&dw), bytes).await,
        "{bytes} bytes on disk:\n{}",
        d.metrics.encode_text()
    );
    d.stop().await;
    assert_eq!(dw.points_accepted(), 0);

    // Still refusing at the restart, so that no resend can have emptied the cache
    // before it is looked at (that raced the sample below).
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", &fc), "")).await;
    // Found again at the start.
    assert_eq!(
        sample(&d.metrics.encode_text(), &disk_bytes(&dw)),
        Some(bytes)
    );
    dw.set_default(None);
    assert!(dw.wait_points(20, Duration::from_secs(20)).await);
    assert!(wait_metric(&d.metrics, &disk_bytes(&dw), 0.0).await);
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
    assert_eq!(resent(&dw), 4, "every body came from the one cache");
    // Points count once, by their first send (which failed): the sinker's as sunk, main's
    // not; the resends are not counted again.
    let sunk = |c: &str, status: &str| {
        sample(
            &text,
            &format!("datakit_io_dataway_sink_point_total{{category=\"{c}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(sunk("logging", "Service Unavailable"), Some(10.0), "{text}");
    assert_eq!(sunk("logging", "OK"), None, "{text}");
    assert_eq!(sunk("metric", "Service Unavailable"), None, "{text}");
    assert_eq!(sunk("metric", "OK"), None, "{text}");
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
            // None dropped yet is an absent series; a wrong label would never add up.
            let dropped = sample(&text, &cache_dropped(&dw, "full")).unwrap_or(0.0) as u64;
            let kept = sample(&text, &records(&dw)).unwrap_or(0.0) as u64;
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
    assert_eq!(
        sample(&text, &cache_dropped(&dw, "corrupt_file")),
        Some(1.0),
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
    // The first sinker's endpoint has kept its body, and is resending it.
    assert!(wait_metric(&d.metrics, &records(&s), 1.0).await);
    assert!(
        s.wait_for(Duration::from_secs(20), |m| resends_arrived(m) >= 1)
            .await
    );
    let old = d
        .dataway
        .sinkers()
        .snapshot()
        .iter()
        .find(|s| s.name() == "sink")
        .cloned()
        .expect("the sinker runs");
    // Restart the sinker (same URL): the new endpoints share the old one's cache at once.
    std::fs::write(dir.join("sink.toml"), sidecar("cpu,mem")).unwrap();
    reloaded(2.0).await;
    assert_eq!(d.post("metric", lines("mem", 5, 5)).await.status(), 200);
    // The new endpoint's failed body is in the same file as the old one's.
    assert!(
        wait_metric(&d.metrics, &records(&s), 2.0).await,
        "{}",
        d.metrics.encode_text()
    );
    // The old sinker is closed and let go (its endpoints joined, their resend task
    // ended) before the server comes back: whatever is resent now, the new one sends.
    assert!(
        poll(|| old.endpoints()[0].is_closing() && std::sync::Arc::strong_count(&old) == 1).await,
        "the old sinker was retired"
    );
    s.set_default(None);
    assert!(s.wait_points(10, Duration::from_secs(20)).await);
    let text = d.metrics.encode_text();
    d.stop().await;
    assert_exactly_once(&s, 10, "restarted sinker");
    // Both bodies came out of the cache, the old sinker's too, though its endpoint was
    // closed at the restart: the new one took over resending from the shared file.
    assert_eq!(
        (resent(&s), resent_points(&s)),
        (2, 10),
        "both bodies resent from the cache"
    );
    let resends: Vec<String> = s
        .requests()
        .iter()
        .filter(|r| r.ok() && r.header("x-fail-cache-retry") == Some("1"))
        .map(|r| r.text.clone())
        .collect();
    assert!(
        resends[0].contains("seq=0i") && resends[1].contains("seq=5i"),
        "oldest first: {resends:?}"
    );
    assert!(
        !text.contains("reason=\"retries_exhausted\""),
        "nothing was dropped for lack of a cache:\n{text}"
    );
}

/// A resend the server refuses (4xx) would be refused again: it is dropped and counted,
/// and the records behind it drain (it does not hold the head of the cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resend_is_dropped_and_counted_and_the_rest_drains() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("workers = 1", ""), "")).await;
    for i in 0..2 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    assert!(wait_metric(&d.metrics, &records(&dw), 2.0).await);
    // The next request is the resend of the oldest body: refused. Then the server is back.
    dw.script([Reply::Status(400)]);
    dw.set_default(None);
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    assert!(wait_metric(&d.metrics, &records(&dw), 0.0).await);
    let dropped = "dataway_dropped_points_total{category=\"metric\",reason=\"failcache_rejected\"}";
    assert!(
        wait_metric(&d.metrics, dropped, 5.0).await,
        "{}",
        d.metrics.encode_text()
    );
    assert!(wait_metric(&d.metrics, &cache_dropped(&dw, "rejected"), 1.0).await);
    d.stop().await;
    let refused: Vec<_> = dw
        .requests()
        .into_iter()
        .filter(|r| r.status == Some(400))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].header("x-fail-cache-retry"), Some("1"));
    assert!(refused[0].text.contains("seq=0i"), "the oldest body");
    // The refused body is never sent again; the one behind it arrives once.
    let got = seqs(&dw);
    assert!((0..5).all(|s| !got.contains_key(&s)), "{got:?}");
    assert!((5..10).all(|s| got.get(&s) == Some(&1)), "{got:?}");
    assert_eq!(resent_points(&dw), 5);
}

/// A body older than `drop_expired_after` is dropped and counted instead of resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_drop_expired_after_is_dropped_and_counted_not_resent() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &fast("", "drop_expired_after = \"300ms\""),
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    // Resent while the server is down, until it is too old.
    let dropped = "dataway_dropped_points_total{category=\"metric\",reason=\"failcache_expired\"}";
    assert!(
        wait_metric(&d.metrics, dropped, 5.0).await,
        "{}",
        d.metrics.encode_text()
    );
    assert!(wait_metric(&d.metrics, &cache_dropped(&dw, "expired"), 1.0).await);
    assert!(wait_metric(&d.metrics, &records(&dw), 0.0).await);
    assert!(wait_metric(&d.metrics, &disk_bytes(&dw), 0.0).await);
    // The server is back: new points go, the expired ones never do.
    dw.set_default(None);
    assert_eq!(d.post("metric", lines("cpu", 5, 5)).await.status(), 200);
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    d.stop().await;
    let got = seqs(&dw);
    assert!((0..5).all(|s| !got.contains_key(&s)), "{got:?}");
    assert_eq!(resent(&dw), 0);
}

/// A `file://` endpoint has no fail-cache: what it cannot write is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_endpoint_that_cannot_write_drops_and_counts() {
    // The directory would be inside a regular file: not creatable, even for root.
    let blocker = scratch_dir("file-endpoint").join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = format!("file://{}", blocker.join("out").display());
    let d = TestDaemon::start(config_for(&[url], "", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    let dropped = "dataway_dropped_points_total{category=\"metric\",reason=\"file_error\"}";
    assert!(
        wait_metric(&d.metrics, dropped, 5.0).await,
        "{}",
        d.metrics.encode_text()
    );
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_point_total{category=\"metric\",status=\"unknown\"}"
        ),
        Some(5.0),
        "{text}"
    );
    d.stop().await;
    assert!(blocker.is_file());
}

/// `datakit_io_dataway_point_total` counts each point once, by the status its send ended
/// with (after retries), as DataKit does: resends from the fail-cache, failed or not, do
/// not count it again (a point of a long outage once showed up 5 times as failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_do_not_count_points_again() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(&[dw.url("t")], &fast("", ""), "")).await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    let failed_resends = |m: &MockDataway| {
        m.requests()
            .iter()
            .filter(|r| r.header("x-fail-cache-retry") == Some("1") && r.status == Some(503))
            .count()
    };
    // Several resends fail...
    assert!(
        dw.wait_for(Duration::from_secs(20), |m| failed_resends(m) >= 3)
            .await
    );
    // ...then one succeeds.
    dw.set_default(None);
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    assert!(wait_metric(&d.metrics, &records(&dw), 0.0).await);
    let m = d.metrics.clone();
    d.stop().await; // joins the resend task: every count is in
    let text = m.encode_text();
    let failed = failed_resends(&dw);
    assert_eq!(resends_arrived(&dw), failed + 1);
    let series = |name: &str, status: &str| {
        sample(
            &text,
            &format!("{name}{{category=\"metric\",status=\"{status}\"}}"),
        )
    };
    let points = "datakit_io_dataway_point_total";
    assert_eq!(series(points, "Service Unavailable"), Some(5.0), "{text}");
    assert_eq!(series(points, "OK"), None, "{text}");
    // Bytes likewise: the one body, once.
    let first = &dw.requests()[0];
    assert_eq!(
        series(
            "datakit_io_dataway_point_bytes_total",
            "Service Unavailable"
        ),
        Some(first.body.len() as f64),
        "{text}"
    );
    // The delivery from the cache shows in the fail-cache summary, and every request,
    // resends included, in the API counter.
    assert_eq!(
        sample(
            &text,
            "datakit_io_flush_failcache_bytes_count{category=\"metric\"}"
        ),
        Some(1.0)
    );
    let api = |status: &str| {
        sample(
            &text,
            &format!(
                "datakit_io_dataway_api_request_total{{api=\"/v1/write/metric\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(
        api("Service Unavailable"),
        Some((1 + failed) as f64),
        "{text}"
    );
    assert_eq!(api("OK"), Some(1.0), "{text}");
}

/// A server that holds every request until the test lets it answer with `status`.
struct HeldServer {
    addr: std::net::SocketAddr,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

impl HeldServer {
    async fn start(status: u16) -> HeldServer {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let (a, r) = (arrived.clone(), release.clone());
        let app = axum::Router::new().fallback(move || {
            let (a, r) = (a.clone(), r.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                r.acquire().await.unwrap().forget();
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HeldServer {
            addr,
            arrived,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}?token=t", self.addr)
    }

    async fn wait_arrived(&self, n: usize) -> bool {
        poll(|| self.arrived.load(std::sync::atomic::Ordering::SeqCst) >= n).await
    }
}

/// Polls `f` until it holds, for up to 20 s (a limit for a stuck daemon).
async fn poll(f: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A body whose retries end during the drain goes to the fail-cache, and the drain report
/// (the `stopped ... kept_in_fail_cache=N` line) says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cached_during_the_drain_is_reported_as_kept() {
    let server = HeldServer::start(503).await;
    let d = TestDaemon::start(config_for(
        &[server.url()],
        "max_retry_count = 0\ntimeout = \"60s\"\nworkers = 1\nshutdown_timeout = \"30s\"\n\
         [dataway.fail_cache]\nclean_interval = \"1h\"",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(server.wait_arrived(1).await);
    // Stop while the server holds the only attempt; answer it 503 once the drain began.
    let (dataway, metrics) = (d.dataway.clone(), d.metrics.clone());
    let stopping = tokio::spawn(d.stop());
    assert!(poll(|| dataway.endpoints()[0].is_closing()).await);
    server.release.add_permits(1);
    let report = stopping.await.unwrap();
    assert_eq!(
        sample(
            &metrics.encode_text(),
            &format!(
                "dataway_failcache_records{{endpoint=\"http://{}?token=***\"}}",
                server.addr
            )
        ),
        Some(1.0),
        "the body is in the fail-cache"
    );
    assert_eq!(report.abandoned_points, 0);
    assert_eq!(report.persisted_points, 5, "kept for the next start");
}
