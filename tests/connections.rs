//! Hostile or careless clients of the ingest port (issue 11, "1,100 idle TCP connections"):
//! idle connections cannot lock `/health` and writes out, slow-header and idle keep-alive
//! connections are closed, a descriptor shortage does not stop accepting, and the daemon
//! raises its open-file soft limit. The real binary, on loopback.

mod common;

use std::time::Duration;

use common::process::DaemonProcess;
use common::{MockDataway, config_file, lines, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A limit for a daemon that never answers, not a speed requirement.
const WAIT: Duration = Duration::from_secs(60);

/// `n` connections that send nothing, or half a request head, and stay open.
async fn idle_connections(p: &DaemonProcess, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"POST /v1/write/metric HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        conns.push(s);
    }
    conns
}

/// `/health`, `/metrics` and a write, each on a new connection, answer.
async fn still_answers(p: &DaemonProcess, dw: &MockDataway) {
    let before = dw.points_accepted();
    let client = || {
        reqwest::Client::builder()
            .timeout(WAIT)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let health = client().get(p.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = client().get(p.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let write = client()
        .post(p.url("/v1/write/metric"))
        .body(lines("cpu", 3, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    assert!(
        dw.wait_points(before + 3, WAIT).await,
        "the write was not delivered"
    );
}

/// Reads until the server closes the connection (EOF or reset); panics past `WAIT`.
async fn closed_by_server(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {WAIT:?}; read so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test]
async fn idle_connections_past_the_cap_do_not_lock_out_health_metrics_or_writes() {
    let dw = MockDataway::start().await;
    // The 30 s header timeout is longer than the test: only the cap can make room.
    let cfg = config_file(&[dw.url("tkn_c")], "", "max_connections = 20");
    let p = DaemonProcess::start(&cfg, &[]);
    let _idle = idle_connections(&p, 100).await;
    still_answers(&p, &dw).await;
    // The oldest idle connections were closed to make room, and said so.
    assert!(
        p.wait_log(WAIT, |l| l.contains("ingest.max_connections").then_some(()))
            .is_some(),
        "{}",
        p.log()
    );
}

#[tokio::test]
async fn slow_header_and_idle_keep_alive_connections_are_closed_after_the_timeout() {
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_c")], "", "header_read_timeout = \"300ms\"");
    let p = DaemonProcess::start(&cfg, &[]);
    // Half a head, never finished.
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut slow).await.is_empty());
    // One request answered, then nothing: the keep-alive connection is closed too.
    let mut idle = TcpStream::connect(p.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(closed_by_server(&mut idle).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    still_answers(&p, &dw).await;
}

/// The cap is sized at start from the open-file limit; here the limit drops below it while
/// the daemon runs (as if its other files took the descriptors): accept fails with
/// `EMFILE`, and the daemon closes idle connections and keeps accepting.
#[tokio::test]
async fn out_of_descriptors_the_daemon_closes_idle_connections_and_keeps_accepting() {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_c")], "", "");
    let p = DaemonProcess::start(&cfg, &[]);
    // Delivered once first, so the daemon holds its upstream connection before the shortage.
    still_answers(&p, &dw).await;
    let pid = Pid::from_raw(p.pid() as i32).unwrap();
    let open = std::fs::read_dir(format!("/proc/{}/fd", p.pid()))
        .unwrap()
        .count() as u64;
    // Room for a few connections beyond what the daemon holds now.
    let limit = open + 16;
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();
    let _idle = idle_connections(&p, 60).await;
    still_answers(&p, &dw).await;
    assert!(
        p.wait_log(WAIT, |l| l
            .contains("cannot accept connections")
            .then_some(()))
            .is_some(),
        "{}",
        p.log()
    );
    // Counted as closed for an accept error, not as evicted under the cap.
    let m = metrics_when(&p, |m| closed(m, "accept_error") >= 1.0).await;
    assert_eq!(closed(&m, "idle_evicted"), 0.0, "{m}");
}

/// The soft limit of `pid`'s open files, and the hard one, from `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/<pid>/limits");
    let mut cells = line["Max open files".len()..].split_whitespace();
    (
        cells.next().unwrap().to_string(),
        cells.next().unwrap().to_string(),
    )
}

#[tokio::test]
async fn the_daemon_raises_its_open_file_soft_limit_to_the_hard_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_c")], "", "");
    // The child inherits a soft limit below the hard one: one less is enough to see it
    // raised, and no test of this process runs short of descriptors meanwhile.
    let mine = getrlimit(Resource::Nofile);
    let hard = mine.maximum.expect("a finite hard open-file limit");
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard - 1),
            maximum: mine.maximum,
        },
    )
    .unwrap();
    let p = DaemonProcess::start(&cfg, &[]);
    setrlimit(Resource::Nofile, mine).unwrap();
    let (soft, hard_seen) = open_file_limits(p.pid());
    assert_eq!(hard_seen, hard.to_string());
    assert_eq!(
        soft,
        hard.to_string(),
        "soft limit not raised:\n{}",
        p.log()
    );
    assert!(
        p.log().contains(&format!(
            "open-file limit raised from {} to {hard}",
            hard - 1
        )),
        "{}",
        p.log()
    );
}

/// The daemon's `/metrics` text, fetched on a new connection.
async fn metrics(p: &DaemonProcess) -> String {
    reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `/metrics` once `ok` holds for it; panics past `WAIT`.
async fn metrics_when(p: &DaemonProcess, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = metrics(p).await;
        if ok(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `dataway_ingest_connections_closed_total{reason}` (absent reads as -1: every reason
/// must exist from the start).
fn closed(m: &str, reason: &str) -> f64 {
    sample(
        m,
        &format!("dataway_ingest_connections_closed_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

fn gauge(m: &str, name: &str) -> f64 {
    sample(m, name).unwrap_or_else(|| panic!("no {name} in:\n{m}"))
}

/// A host that gives the daemon 64 descriptors, soft and hard (so raising the soft limit
/// gains nothing): the cap is 32, not the default 1,024, and the daemon says so. More
/// idle connections than the descriptors themselves then close the oldest idle ones under
/// the cap, never running out of descriptors.
#[tokio::test]
async fn the_connection_cap_is_half_the_open_file_limit() {
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_c")], "", "");
    let p = DaemonProcess::start_with_open_file_limit(&cfg, &[], 64);
    let m = metrics(&p).await;
    assert_eq!(gauge(&m, "dataway_ingest_connections_max"), 32.0, "{m}");
    assert!(
        p.wait_log(WAIT, |l| l
            .contains("at most 32 connections, half the open-file limit")
            .then_some(()))
            .is_some(),
        "{}",
        p.log()
    );
    let mut idle = idle_connections(&p, 64).await;
    still_answers(&p, &dw).await;
    // Accepted in order, each past the cap closing the oldest idle one: the first 32 go.
    for s in &mut idle[..32] {
        closed_by_server(s).await;
    }
    let m = metrics_when(&p, |m| closed(m, "idle_evicted") >= 32.0).await;
    assert_eq!(closed(&m, "accept_error"), 0.0, "{m}");
    assert!(gauge(&m, "dataway_ingest_connections") <= 32.0, "{m}");
    assert!(
        !p.log().contains("cannot accept connections"),
        "{}",
        p.log()
    );
}

/// `dataway_ingest_connections` counts the open connections (the one asking included),
/// `_max` is the cap, and every close is counted by its reason. (Each `/metrics` here is a
/// new connection that the client closes after the answer; under the cap such a closed
/// one may still be counted open, and then be the one evicted: hence the `>=`.)
#[tokio::test]
async fn connection_metrics_count_open_evicted_and_timed_out_connections() {
    let dw = MockDataway::start().await;
    let cfg = config_file(&[dw.url("tkn_c")], "", "max_connections = 4");
    let p = DaemonProcess::start(&cfg, &[]);
    let m = metrics(&p).await;
    assert_eq!(gauge(&m, "dataway_ingest_connections_max"), 4.0, "{m}");
    assert_eq!(gauge(&m, "dataway_ingest_connections"), 1.0, "{m}");
    for reason in [
        "client",
        "header_timeout",
        "idle_evicted",
        "accept_error",
        "shutdown",
        "error",
    ] {
        assert_eq!(closed(&m, reason), 0.0, "{reason}: {m}");
    }
    // Three idle ones and the one asking: at the cap.
    let mut idle = idle_connections(&p, 3).await;
    metrics_when(&p, |m| gauge(m, "dataway_ingest_connections") == 4.0).await;
    // Two more: the oldest go to make room, and are counted.
    idle.extend(idle_connections(&p, 2).await);
    let m = metrics_when(&p, |m| closed(m, "idle_evicted") >= 2.0).await;
    assert!(gauge(&m, "dataway_ingest_connections") <= 4.0, "{m}");
    for s in &mut idle[..2] {
        closed_by_server(s).await;
    }
    assert_eq!(closed(&m, "header_timeout"), 0.0, "{m}");
    assert_eq!(closed(&m, "accept_error"), 0.0, "{m}");
    assert_eq!(closed(&m, "error"), 0.0, "{m}");

    // Slow headers and idle keep-alive connections are closed by the timeout; a client
    // that hangs up, and a malformed request, are counted as such.
    let cfg = config_file(&[dw.url("tkn_c")], "", "header_read_timeout = \"300ms\"");
    let p = DaemonProcess::start(&cfg, &[]);
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_by_server(&mut slow).await;
    let mut kept = TcpStream::connect(p.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut kept).await;
    drop(TcpStream::connect(p.addr).await.unwrap());
    let mut bad = TcpStream::connect(p.addr).await.unwrap();
    bad.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
    closed_by_server(&mut bad).await;
    let m = metrics_when(&p, |m| {
        closed(m, "header_timeout") >= 2.0
            && closed(m, "client") >= 1.0
            && closed(m, "error") >= 1.0
    })
    .await;
    assert_eq!(closed(&m, "header_timeout"), 2.0, "{m}");
    assert_eq!(closed(&m, "error"), 1.0, "{m}");
    assert_eq!(closed(&m, "idle_evicted"), 0.0, "{m}");
}
