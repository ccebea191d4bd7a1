//! The WAL: after kill -9, every acknowledged point is delivered (at least once).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(cfg: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_extension("log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn post_when_up(base: &str, body: String) -> u16 {
    let cli = reqwest::Client::new();
    for _ in 0..1500 {
        if let Ok(r) = cli
            .post(format!("{base}/v1/write/metric"))
            .body(body.clone())
            .send()
            .await
        {
            return r.status().as_u16();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("daemon never came up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_acknowledged_point_is_delivered() {
    let dw = MockDataway::start().await;
    // The server hangs: nothing is delivered, everything acknowledged is only in memory
    // and in the WAL when the daemon is killed.
    dw.set_default(Some(Reply::Slow(Duration::from_secs(60))));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"{}\"]\ntimeout = \"60s\"\nretry_delay = \"20ms\"\n\
             [dataway.wal]\nenabled = true\npath = \"{}\"\n\
             [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"100ms\"\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n",
            dw.url("t"),
            dir.path().join("wal").display(),
            dir.path().join("fc").display(),
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut daemon = start(&cfg);
    // 80 writes: more than one page (64) of the replay.
    for i in 0..80 {
        assert_eq!(post_when_up(&base, lines("cpu", 3, i * 3)).await, 200);
    }
    daemon.kill().unwrap(); // SIGKILL: no drain, no shutdown code runs
    daemon.wait().unwrap();
    assert_eq!(dw.points_accepted(), 0);

    dw.set_default(None);
    let mut daemon = start(&cfg);
    // One more write after the restart, to show the daemon serves while it replays.
    assert_eq!(post_when_up(&base, lines("cpu", 25, 240)).await, 200);
    let all = dw
        .wait_for(Duration::from_secs(30), |m| {
            let got = m.lines_accepted();
            (0..265).all(|s| got.iter().any(|l| l.contains(&format!("seq={s}i"))))
        })
        .await;
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait().unwrap();
    let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
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
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        config_for(
            &[dw.url("t")],
            &format!(
                "workers = 1\ntimeout = \"60s\"\nshutdown_timeout = \"300ms\"\n\
                 [dataway.fail_cache]\nenabled = false\n\
                 [dataway.wal]\nenabled = true\npath = \"{}\"",
                dir.path().display()
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
    dw.set_default(None);
    let d = TestDaemon::start(cfg()).await;
    assert!(
        dw.wait_for(Duration::from_secs(20), |m| {
            let got = m.lines_accepted();
            (0..20).all(|s| got.iter().any(|l| l.contains(&format!("seq={s}i"))))
        })
        .await,
        "replayed: {} points",
        dw.points_accepted()
    );
    d.stop().await;
}
