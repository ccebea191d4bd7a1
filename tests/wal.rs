//! The WAL: after kill -9, every acknowledged point is delivered (at least once); what was
//! delivered leaves the log; a replay never holds ingest shut.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::DaemonProcess;
use common::*;

/// Writes `d.toml` in `dir` with `body` and an ingest on port 0 (the daemon reports it).
fn config_file(dir: &Path, body: &str) -> PathBuf {
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!("{body}\n[ingest]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    cfg
}

/// SIGTERM, and the exit status must be success within 30 s (a limit for a hung daemon).
fn stop(mut daemon: DaemonProcess) -> String {
    daemon.signal("TERM");
    let st = daemon.wait(Duration::from_secs(30));
    assert!(st.success(), "{st}:\n{}", daemon.log());
    daemon.log()
}

/// The entries the WAL at `dir` holds, once the stopped daemon's last tasks have let the
/// file go (one holder at a time; up to 20 s, a limit for a stuck task).
fn wal_entries(dir: &Path) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match dataway::wal::Wal::open(&dir.join("wal.redb")) {
            Ok(wal) => return wal.pending().unwrap().len(),
            Err(e) if std::time::Instant::now() >= deadline => panic!("open the WAL: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_acknowledged_point_is_delivered() {
    let dw = MockDataway::start().await;
    // The server hangs: nothing is delivered, everything acknowledged is only in memory
    // and in the WAL when the daemon is killed.
    dw.set_default(Some(Reply::Slow(Duration::from_secs(60))));
    let dir = scratch_dir("wal-kill9");
    let cfg = config_file(
        &dir,
        &format!(
            "[dataway]\nurls = [\"{}\"]\ntimeout = \"60s\"\nretry_delay = \"20ms\"\n\
             [dataway.wal]\nenabled = true\npath = \"{}\"\n\
             [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"100ms\"",
            dw.url("t"),
            dir.join("wal").display(),
            dir.join("fc").display(),
        ),
    );
    let mut daemon = DaemonProcess::start(&cfg, &[]);
    // 80 writes: more than one page (64) of the replay.
    for i in 0..80 {
        assert_eq!(daemon.post("metric", lines("cpu", 3, i * 3)).await, 200);
    }
    daemon.kill(); // SIGKILL: no drain, no shutdown code runs
    assert_eq!(dw.points_accepted(), 0);

    dw.set_default(None);
    let daemon = DaemonProcess::start(&cfg, &[]);
    // One more write after the restart, to show the daemon serves while it replays.
    assert_eq!(daemon.post("metric", lines("cpu", 25, 240)).await, 200);
    let all = dw
        .wait_for(Duration::from_secs(30), |m| {
            let got = seqs(m);
            (0..265).all(|s| got.contains_key(&s))
        })
        .await;
    let log = stop(daemon);
    assert!(
        all,
        "every acknowledged point arrives after the restart; got {} points in {} requests:\n{log}",
        dw.points_accepted(),
        dw.requests().len()
    );
}

/// With the WAL on and no fail-cache, what a graceful stop could not deliver stays in the
/// WAL and is replayed at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stop_abandons_is_replayed_from_the_wal() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_secs(30))));
    let dir = scratch_dir("wal");
    let cfg = || {
        config_for(
            &[dw.url("t")],
            &format!(
                "workers = 1\ntimeout = \"60s\"\nshutdown_timeout = \"300ms\"\n\
                 [dataway.fail_cache]\nenabled = false\n\
                 [dataway.wal]\nenabled = true\npath = \"{}\"",
                dir.display()
            ),
            "",
        )
    };
    let d = TestDaemon::start(cfg()).await;
    for i in 0..4 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    let report = d.stop().await;
    assert_eq!(report.abandoned_points, 0, "kept in the WAL, not abandoned");
    assert_eq!(report.persisted_points, 20);
    assert_eq!(wal_entries(&dir), 4);
    dw.set_default(None);
    let d = TestDaemon::start(cfg()).await;
    assert!(
        dw.wait_for(Duration::from_secs(20), |m| {
            let got = seqs(m);
            (0..20).all(|s| got.contains_key(&s))
        })
        .await,
        "replayed: {} points",
        dw.points_accepted()
    );
    d.stop().await;
}

/// A write's entry leaves the WAL once every endpoint has delivered it or put it in its
/// fail-cache: after three runs of the real binary (SIGTERM each time) the log is empty
/// after every stop and each point arrived exactly once at each endpoint. An entry that
/// is never removed (a leaked ticket) would be replayed at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_writes_leave_the_wal_and_are_not_sent_again_after_restarts() {
    let (up, flaky) = (MockDataway::start().await, MockDataway::start().await);
    // One endpoint is down at first: its bodies go through its fail-cache.
    flaky.set_default(Some(Reply::Status(503)));
    let dir = scratch_dir("wal-removed");
    let wal = dir.join("wal");
    let cfg = config_file(
        &dir,
        &format!(
            "[dataway]\nurls = [\"{}\", \"{}\"]\nmax_retry_count = 1\nretry_delay = \"10ms\"\n\
             [dataway.wal]\nenabled = true\npath = \"{}\"\n\
             [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"100ms\"",
            up.url("a"),
            flaky.url("b"),
            wal.display(),
            dir.join("fc").display(),
        ),
    );
    let cached = format!(
        "dataway_failcache_records{{endpoint=\"http://{}?token=***\"}}",
        flaky.addr
    );

    // Run 1: delivered to one endpoint, cached then resent at the other.
    let daemon = DaemonProcess::start(&cfg, &[]);
    for i in 0..10 {
        assert_eq!(daemon.post("metric", lines("cpu", 3, i * 3)).await, 200);
    }
    assert!(up.wait_points(30, Duration::from_secs(20)).await);
    let metrics = daemon.url("/metrics");
    let mut all_cached = false;
    for _ in 0..2000 {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if sample(&text, &cached) == Some(10.0) {
            all_cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(all_cached, "{}", daemon.log());
    flaky.set_default(None);
    assert!(flaky.wait_points(30, Duration::from_secs(20)).await);
    let log = stop(daemon);
    assert_eq!(wal_entries(&wal), 0, "delivered or cached: removed\n{log}");

    // Run 2: nothing to replay; new writes are removed too.
    let daemon = DaemonProcess::start(&cfg, &[]);
    assert_eq!(daemon.post("metric", lines("cpu", 3, 30)).await, 200);
    assert!(up.wait_points(33, Duration::from_secs(20)).await);
    assert!(flaky.wait_points(33, Duration::from_secs(20)).await);
    let log = stop(daemon);
    assert!(!log.contains("replaying the WAL"), "{log}");
    assert_eq!(wal_entries(&wal), 0, "{log}");

    // Run 3: still nothing.
    let log = stop(DaemonProcess::start(&cfg, &[]));
    assert!(!log.contains("replaying the WAL"), "{log}");
    assert_eq!(wal_entries(&wal), 0, "{log}");
    for (mock, who) in [(&up, "up"), (&flaky, "flaky")] {
        let got = seqs(mock);
        for s in 0..33u64 {
            assert_eq!(got.get(&s), Some(&1), "{who}: seq {s}");
        }
        assert_eq!(got.len(), 33, "{who}");
    }
}

/// Entries left in the WAL are replayed at start while an endpoint hangs: the replay waits
/// for room in that endpoint's queue, and ingest meanwhile answers new writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stuck_on_a_down_endpoint_does_not_hold_ingest_shut() {
    let (down, sink) = (MockDataway::start().await, MockDataway::start().await);
    // Hangs for a minute: nothing it is sent is done before the test ends.
    down.set_default(Some(Reply::Slow(Duration::from_secs(60))));
    let wal = scratch_dir("wal-replay");
    let cfg = |extra_dataway: &str, extra: &str| {
        config_for(
            &[down.url("t")],
            &format!(
                "workers = 1\ntimeout = \"60s\"\nshutdown_timeout = \"300ms\"\n{extra_dataway}\n\
                 [dataway.fail_cache]\nenabled = false\n\
                 [dataway.wal]\nenabled = true\npath = \"{}\"",
                wal.display()
            ),
            extra,
        )
    };
    // Run 1 leaves 5 writes in the WAL.
    let d = TestDaemon::start(cfg("", "")).await;
    for i in 0..5 {
        assert_eq!(d.post("metric", lines("cpu", 2, i * 2)).await.status(), 200);
    }
    assert_eq!(d.stop().await.persisted_points, 10);
    assert_eq!(wal_entries(&wal), 5);
    let before = down.arrived();

    // Run 2: one batch in flight and one queued fill the down endpoint; the replay of the
    // other three waits. Logging goes to a sinker whose endpoint is up.
    let sinker = format!(
        "[[dataway.sinkers]]\nname = \"logs\"\ncategories = [\"logging\"]\nurls = [\"{}\"]\n",
        sink.url("s")
    );
    let d = TestDaemon::start(cfg("queue_size = 1", &sinker)).await;
    let queued = format!(
        "dataway_queue_batches{{endpoint=\"http://{}?token=***\"}}",
        down.addr
    );
    assert!(
        wait_metric(&d.metrics, &queued, 1.0).await,
        "{}",
        d.metrics.encode_text()
    );
    assert!(
        down.wait_for(Duration::from_secs(20), |m| m.arrived() == before + 1)
            .await
    );
    // A new write is answered while the replay is stuck (a stuck replay lasts the
    // endpoint's minute; 10 s is a limit, not a speed requirement).
    let answered = reqwest::Client::new()
        .post(d.url("/v1/write/logging"))
        .body(lines("nginx", 3, 100))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("ingest answers during the replay");
    assert_eq!(answered.status(), 200);
    assert!(sink.wait_points(3, Duration::from_secs(20)).await);
    // The replay was still waiting: one request at the down endpoint, one batch queued.
    assert_eq!(down.arrived(), before + 1);
    assert_eq!(sample(&d.metrics.encode_text(), &queued), Some(1.0));
    d.stop().await;
    // What was not delivered is still in the WAL for the next start.
    assert_eq!(wal_entries(&wal), 5);
}

/// Issue 11, the chaos row "WAL on a full disk": a body that failed after retries and that
/// the fail-cache could not take was left in the WAL "for the next start", so its
/// acknowledged points waited for a restart (the chaos suite saw 8,000 of them never
/// delivered). Now the WAL holds it and the endpoint sends it again every `clean_interval`
/// until it is delivered, without a restart, counting nothing as dropped. Here the cache
/// cannot open its directory (a file is in the way); on a full disk its push fails the same
/// way (`tests/full_disk.rs` has that case on a real tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_fail_cache_cannot_take_is_held_by_the_wal_and_sent_again() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let dir = scratch_dir("wal-held");
    let in_the_way = dir.join("fc");
    std::fs::write(
        &in_the_way,
        "a file where the fail-cache directory should be",
    )
    .unwrap();
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &format!(
            "max_retry_count = 1\nretry_delay = \"10ms\"\n\
             [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"100ms\"\n\
             [dataway.wal]\nenabled = true\npath = \"{}\"",
            in_the_way.display(),
            dir.join("wal").display()
        ),
        "",
    ))
    .await;
    for i in 0..4 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    let held = format!(
        "dataway_wal_held_points{{endpoint=\"http://{}?token=***\",category=\"metric\"}}",
        dw.addr
    );
    assert!(
        wait_metric_at_least(&d.metrics, &held, 5.0).await,
        "{}",
        d.metrics.encode_text()
    );
    // Sent again while it fails, not parked until a restart.
    let before = dw.arrived();
    assert!(
        dw.wait_for(Duration::from_secs(20), |m| m.arrived() >= before + 4)
            .await
    );
    dw.set_default(None);
    assert!(
        dw.wait_for(Duration::from_secs(20), |m| {
            let got = seqs(m);
            (0..20).all(|s| got.contains_key(&s))
        })
        .await,
        "acknowledged points not delivered without a restart: {} points",
        dw.points_accepted()
    );
    assert!(wait_metric(&d.metrics, &held, 0.0).await);
    let text = d.metrics.encode_text();
    let dropped: f64 = samples_matching(&text, "dataway_dropped_points_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        dropped, 0.0,
        "counted as dropped although delivered:\n{text}"
    );
    d.stop().await;
    assert_eq!(
        wal_entries(&dir.join("wal")),
        0,
        "delivered writes leave the WAL"
    );
}

/// With the WAL on, the WAL is the buffer: a burst past what memory and the queues take is
/// logged, acknowledged, and queued later at sending speed, instead of answered 503. Every
/// point arrives once; the backlog drains by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wal_on_a_burst_is_spilled_to_disk_not_refused_and_all_of_it_arrives_once() {
    let dw = MockDataway::start().await;
    // A slow server: one write in flight at a time, two queued, the rest must wait.
    dw.set_default(Some(Reply::Slow(Duration::from_millis(300))));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        "workers = 1\nqueue_size = 2",
        "[dataway.wal]\nenabled = true\n",
    ))
    .await;
    for i in 0..30 {
        let r = d.post("metric", lines("cpu", 100, i * 100)).await;
        assert_eq!(r.status(), 200, "write {i}: {}", r.text().await.unwrap());
    }
    let spilled = sample(&d.metrics.encode_text(), "dataway_wal_spilled_writes").unwrap();
    assert!(spilled >= 20.0, "{spilled} writes waiting in the WAL");
    dw.set_default(None);
    assert!(dw.wait_points(3000, Duration::from_secs(30)).await);
    assert!(wait_metric(&d.metrics, "dataway_wal_spilled_writes", 0.0).await);
    assert!(wait_metric(&d.metrics, "dataway_wal_spilled_bytes", 0.0).await);
    d.stop().await;
    let arrived = seqs(&dw);
    assert_eq!(arrived.len(), 3000);
    assert!(arrived.values().all(|&n| n == 1), "{arrived:?}");
}

/// Past `max_spill_bytes` writes are refused (503), cheaply and whole; what was taken
/// arrives, what was refused does not, and a stop with a backlog leaves it in the WAL for
/// the next start, which delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_spill_limit_writes_are_refused_and_a_stop_keeps_the_backlog_for_the_next_start() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_secs(60))));
    let dir = scratch_dir("wal-spill-limit");
    // Both runs share the WAL and the fail-cache (where the write cut at the stop goes).
    let config = || {
        config_for(
            &[dw.url("t")],
            "workers = 1\nqueue_size = 1\ntimeout = \"60s\"",
            &format!(
                "[dataway.wal]\nenabled = true\npath = \"{}\"\nmax_spill_bytes = 20000\n\
                 [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"100ms\"\n",
                dir.join("wal").display(),
                dir.join("fc").display()
            ),
        )
    };
    let mut cfg = config();
    cfg.dataway.shutdown_timeout = Duration::from_millis(300);
    let d = TestDaemon::start(cfg).await;
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for i in 0..20 {
        // ~4.8 KB of line protocol each: two in flight or queued, ~4 spilled, then 503.
        let r = d.post("metric", lines("cpu", 100, i * 100)).await;
        match r.status().as_u16() {
            200 => taken.extend(i * 100..i * 100 + 100),
            503 => refused.extend(i * 100..i * 100 + 100),
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        !refused.is_empty() && taken.len() >= 500,
        "taken {}",
        taken.len()
    );
    let bytes = sample(&d.metrics.encode_text(), "dataway_wal_spilled_bytes").unwrap();
    assert!(bytes > 0.0 && bytes <= 20000.0, "{bytes}");
    // Stopped with the server still hanging: the backlog stays in the WAL.
    d.stop().await;
    dw.set_default(None);
    let d = TestDaemon::start(config()).await;
    assert!(
        dw.wait_for(Duration::from_secs(30), |m| {
            let s = seqs(m);
            taken.iter().all(|q| s.contains_key(&(*q as u64)))
        })
        .await
    );
    d.stop().await;
    let arrived = seqs(&dw);
    assert!(refused.iter().all(|q| !arrived.contains_key(&(*q as u64))));
}
