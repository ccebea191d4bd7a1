//! Graceful shutdown: what was accepted before the stop is delivered before exit.

mod common;

use std::time::Duration;

use common::process::DaemonProcess;
use common::{MockDataway, Reply, TestDaemon, config_file, config_for, lines, sample};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn stop_delivers_everything_queued_before_returning() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_millis(50))));
    let d = TestDaemon::start(config_for(&[dw.url("tkn_s")], "workers = 1", "")).await;
    for i in 0..20 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    // 20 batches × 50 ms with one worker: most are still queued now.
    assert!(dw.points_accepted() < 100);
    let report = d.stop().await;
    assert_eq!(report.abandoned_points, 0);
    assert_eq!(dw.points_accepted(), 100);
}

#[tokio::test]
async fn stop_gives_up_at_the_deadline_and_counts_what_it_abandoned() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_secs(30))));
    // Without a fail-cache (with one they are kept: tests/failcache.rs).
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_s")],
        "workers = 1\ntimeout = \"60s\"\nshutdown_timeout = \"300ms\"\n[dataway.fail_cache]\nenabled = false",
        "",
    ))
    .await;
    for i in 0..3 {
        assert_eq!(d.post("metric", lines("cpu", 5, i * 5)).await.status(), 200);
    }
    let metrics = d.metrics.clone();
    let started = std::time::Instant::now();
    let report = d.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped at the deadline, not after the sends"
    );
    assert_eq!(report.abandoned_points, 15);
    let text = metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "dataway_dropped_points_total{category=\"metric\",reason=\"shutdown\"}"
        ),
        Some(15.0)
    );
}

#[tokio::test]
async fn writes_after_stop_are_refused_as_closed() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url("tkn_s")], "", "")).await;
    let dataway = d.dataway.clone();
    d.stop().await;
    let err = dataway
        .try_write(
            dataway::Category::Metric,
            dataway::point::parse(b"cpu v=1 1", opts()).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err, dataway::WriteError::Closed);
}

fn opts() -> dataway::point::ParseOptions {
    dataway::point::ParseOptions {
        precision: dataway::point::Precision::Nanos,
        default_time: 0,
    }
}

/// The real binary: SIGTERM stops ingest, drains the queue and exits 0.
// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let dw = MockDataway::start().await;
    // A refusal and a retry first, so the log has something to say about this endpoint.
    dw.script([Reply::Status(503), Reply::Status(400)]);
    dw.set_default(Some(Reply::Slow(Duration::from_millis(100))));
    let cfg = config_file(
        &[dw.url("tkn_bin")],
        "workers = 1\nretry_delay = \"10ms\"",
        "",
    );
    // Even at trace level, for every crate, no token may reach the log.
    let mut p = DaemonProcess::start(&cfg, &[("RUST_LOG", "trace")]);
    let cli = reqwest::Client::new();
    for i in 0..10 {
        let r = cli
            .post(p.url("/v1/write/metric"))
            .body(lines("cpu", 3, i * 3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    p.signal("TERM");
    let status = p.wait(Duration::from_secs(30));
    let log = p.log();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert_eq!(dw.points_accepted(), 27, "{log}");
    assert!(log.contains("Dataway refused the data"), "{log}");
    assert!(!log.contains("tkn_bin"), "token in the log:\n{log}");
}

/// Waits for the daemon to say it is draining (after the signal, ingest answers 503).
fn wait_draining(p: &DaemonProcess) {
    let draining = p.wait_log(Duration::from_secs(20), |l| {
        l.contains("stopping: new writes get 503").then_some(())
    });
    assert!(draining.is_some(), "no drain:\n{}", p.log());
}

// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_writes_get_503_and_metrics_and_health_answer() {
    // SIGINT is the same stop as SIGTERM.
    for sig in ["TERM", "INT"] {
        let dw = MockDataway::start().await;
        // The endpoint refuses until released: the drain stays open meanwhile.
        dw.set_default(Some(Reply::Status(503)));
        let cfg = config_file(
            &[dw.url("tkn_s")],
            "workers = 1\nmax_retry_count = 100\nmax_retry_delay = \"1s\"\nshutdown_timeout = \"60s\"",
            "",
        );
        let mut p = DaemonProcess::start(&cfg, &[]);
        // One client throughout: its keep-alive connection from before the stop is reused.
        let cli = reqwest::Client::new();
        let post = |body: String| cli.post(p.url("/v1/write/metric")).body(body).send();
        assert_eq!(post(lines("cpu", 5, 0)).await.unwrap().status(), 200);
        assert!(dw.wait_for(WAIT, |m| m.arrived() >= 2).await, "retrying");
        p.signal(sig);
        wait_draining(&p);
        let r = post(lines("cpu", 5, 100)).await.unwrap();
        assert_eq!(r.status(), 503, "SIG{sig}");
        assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
        assert_eq!(r.headers()["connection"], "close");
        assert!(r.text().await.unwrap().contains("shutting down"));
        let r = cli
            .post(p.url("/v1/query/raw"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            503,
            "other APIs are not forwarded while draining"
        );
        // Not ready (a load balancer stops sending), but alive (no orchestrator kills it).
        let r = cli.get(p.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("shutting down"));
        let r = cli.get(p.url("/health/live")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        let text = cli
            .get(p.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let refused = "dataway_ingest_requests_total{category=\"metric\",code=\"503\"}";
        assert_eq!(sample(&text, refused), Some(1.0), "{text}");
        let queued = format!(
            "dataway_queue_batches{{endpoint=\"http://{}?token=tkn_***\"}}",
            dw.addr
        );
        assert!(sample(&text, &queued).is_some(), "{text}");
        // Released, the drain delivers what was accepted, and the process exits 0.
        dw.set_default(None);
        let status = p.wait(Duration::from_secs(30));
        assert!(status.success(), "SIG{sig}: exit {status:?}\n{}", p.log());
        let arrived = common::seqs(&dw);
        let mut delivered: Vec<u64> = arrived.keys().copied().collect();
        delivered.sort();
        assert_eq!(
            delivered,
            (0..5).collect::<Vec<_>>(),
            "the 503'd write is not delivered"
        );
        assert!(arrived.values().all(|&n| n == 1));
        assert!(
            cli.get(p.url("/health")).send().await.is_err(),
            "the listener is closed after the drain"
        );
    }
}

// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_progress_at_the_signal_finishes_and_is_delivered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_s")], "", "");
    let mut p = DaemonProcess::start(&cfg, &[]);
    let body = lines("cpu", 3, 0);
    let mut conn = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let head = format!(
        "POST /v1/write/metric HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        p.addr,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // `100 Continue` comes when the handler starts reading the body: the write is in
    // progress, its body not sent yet.
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(conn.read(&mut b).await.unwrap(), 1, "{got:?}");
        got.push(b[0]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("HTTP/1.1 100 Continue"), "{got}");
    p.signal("TERM");
    // The daemon waits for this write before it closes the queues.
    let waiting = p.wait_log(WAIT, |l| {
        l.lines()
            .any(|l| l.contains("waiting for the requests in progress") && l.contains("requests=1"))
            .then_some(())
    });
    assert!(waiting.is_some(), "not waited for:\n{}", p.log());
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"points\":3}"), "{answer}");
    let status = p.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}\n{}", p.log());
    assert_eq!(dw.lines_accepted().join("\n"), body);
}

// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dw = MockDataway::start().await;
    // Nothing would be delivered within the 60 s grace: only the second signal ends it.
    dw.set_default(Some(Reply::Slow(Duration::from_secs(120))));
    let cfg = config_file(
        &[dw.url("tkn_s")],
        "timeout = \"300s\"\nshutdown_timeout = \"60s\"",
        "",
    );
    let mut p = DaemonProcess::start(&cfg, &[]);
    let r = reqwest::Client::new()
        .post(p.url("/v1/write/metric"))
        .body(lines("cpu", 3, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dw.wait_for(WAIT, |m| m.arrived() >= 1).await);
    p.signal("INT");
    wait_draining(&p);
    p.signal("TERM");
    // wait() fails the test past 20 s: a third of the grace period.
    let status = p.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "128 + SIGTERM\n{}", p.log());
    assert!(p.log().contains("second signal"), "{}", p.log());
}
