//! Graceful shutdown: what was accepted before the stop is delivered before exit.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{MockDataway, Reply, TestDaemon, config_for, lines, sample};

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
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let dw = MockDataway::start().await;
    // A refusal and a retry first, so the log has something to say about this endpoint.
    dw.script([Reply::Status(503), Reply::Status(400)]);
    dw.set_default(Some(Reply::Slow(Duration::from_millis(100))));
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.path().join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"{}\"]\nworkers = 1\nretry_delay = \"10ms\"\n[dataway.fail_cache]\npath = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n",
            dw.url("tkn_bin"),
            dir.path().join("failcache").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["run", "-c"])
        .arg(&cfg)
        // Even at trace level, for every crate, no token may reach the log.
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the server to listen.
    let cli = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..1200 {
        if cli.get(format!("{url}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "daemon did not start");
    for i in 0..10 {
        let r = cli
            .post(format!("{url}/v1/write/metric"))
            .body(lines("cpu", 3, i * 3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // SIGTERM through the kill command: no libc dependency just for a test.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit {:?}\n{}", status.0, status.1);
    assert_eq!(dw.points_accepted(), 27, "{}", status.1);
    assert!(
        status.1.contains("Dataway refused the data"),
        "{}",
        status.1
    );
    assert!(
        !status.1.contains("tkn_bin"),
        "token in the log:\n{}",
        status.1
    );
}
