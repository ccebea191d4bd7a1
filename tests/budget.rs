//! The one memory budget for everything in flight (issue "Survive the host", row 1): request
//! bodies as they are read, their decompression, their parsed points and queued batches.
//! Attacks from the issue, scaled to a test: gzip bombs of tiny lines, alone and at once;
//! a body declared but never sent; a body trickled in.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::DaemonProcess;
use common::{MockDataway, Reply, TestDaemon, config_file, config_for, sample};

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// Four gzip bombs at once, each a few KB of gzip holding 4 MiB of `a v=1` lines (~700,000
/// points; parsed whole, each would take ~150 MB). With a 16 MiB budget every one is taken
/// (200, chunk by chunk; a 503 while another is in progress is resent) and delivered whole,
/// and the daemon's peak memory stays near its budget: before the budget covered parsing,
/// this peaked at ~600 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gzip_bombs_at_once_are_delivered_whole_and_memory_stays_near_the_budget() {
    let mock = MockDataway::start().await;
    let cfg = config_file(
        &[mock.url("tkn_bomb")],
        "max_pending_bytes = 16777216",
        "max_body = 4194304",
    );
    let daemon = DaemonProcess::start(&cfg, &[]);
    let line = b"a v=1\n";
    let lines_per_bomb = (4 * 1024 * 1024 - 1) / line.len();
    let plain = line.repeat(lines_per_bomb);
    let bomb = gzip(&plain);
    assert!(bomb.len() < 64 * 1024, "{} bytes of gzip", bomb.len());
    let base = peak_rss(daemon.pid());

    // Four clients at once, each resending on 503 as clients do: at most one bomb is
    // parsed at a time, and one that finds no room is refused before it is parsed.
    let url = daemon.url("/v1/write/metric");
    let posts = (0..4).map(|_| {
        let (url, bomb) = (url.clone(), bomb.clone());
        async move {
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let r = client
                    .post(&url)
                    .header("content-encoding", "gzip")
                    .body(bomb.clone())
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => return,
                    503 => {
                        assert!(Instant::now() < deadline, "never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    s => panic!("{s}: {}", r.text().await.unwrap()),
                }
            }
        }
    });
    futures_join_all(posts).await;
    assert!(
        mock.wait_points(4 * lines_per_bomb, Duration::from_secs(300))
            .await,
        "delivered {} of {}",
        mock.points_accepted(),
        4 * lines_per_bomb
    );
    assert_eq!(mock.points_accepted(), 4 * lines_per_bomb, "no point twice");
    let peak = peak_rss(daemon.pid());
    // The budget (16 MiB) plus the daemon's own footprint (`base`, ~30 MiB for a debug
    // build with wasmtime), with room for allocator slack and encoded bodies in flight.
    assert!(
        peak < base + 96 * 1024 * 1024,
        "peak RSS {} MiB (start {} MiB)",
        peak >> 20,
        base >> 20
    );
}

/// `futures::future::join_all` without the dependency: runs them concurrently.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A body of many chunks is checked whole before any of it is queued: a bad last line
/// refuses it all (400, naming the line), and nothing reaches the endpoint.
#[tokio::test]
async fn a_large_body_with_a_bad_last_line_is_refused_whole_with_its_line_number() {
    let mock = MockDataway::start().await;
    // A 1 MiB budget: chunks of 256 KiB of points, several hundred lines each.
    let cfg = config_for(
        &[mock.url("tkn")],
        "max_pending_bytes = 1048576",
        "[ingest]\nmax_body = 524288\n",
    );
    let d = TestDaemon::start(cfg).await;
    let n = 3000;
    let mut body = common::lines("m", n, 0);
    body.push_str("\nnot line protocol\n");
    let plain = body.clone().into_bytes();
    for (gz, bytes) in [(false, plain.clone()), (true, gzip(&plain))] {
        let mut req = reqwest::Client::new()
            .post(d.url("/v1/write/metric"))
            .body(bytes);
        if gz {
            req = req.header("content-encoding", "gzip");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["errors"][0]["line"], n + 1, "{v}");
    }
    // The same body without the bad line is taken whole.
    let good = common::lines("m", n, 0);
    let r = d.post("metric", good).await;
    assert_eq!(r.status().as_u16(), 200);
    d.stop().await;
    assert_eq!(mock.points_accepted(), n, "only the good body's points");
}

/// Writes a request head declaring `len` body bytes, and `sent` of them.
fn start_request(addr: std::net::SocketAddr, len: usize, sent: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/write/metric HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    s.write_all(sent).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads an HTTP answer's status line and headers.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no answer: {other:?}, got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}

/// When the budget is spent (the endpoint holds everything in flight), a write that
/// declares its size is refused with a 503 at once, before its body is sent, and the
/// connection is closed; it costs nothing to refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_budget_has_no_room_for_is_refused_before_it_is_read() {
    let mock = MockDataway::start().await;
    mock.set_default(Some(Reply::Slow(Duration::from_secs(3600))));
    let cfg = config_for(
        &[mock.url("tkn")],
        "max_pending_bytes = 1048576\nworkers = 1\nqueue_size = 100000",
        "[ingest]\nmax_body = 262144\n",
    );
    let d = TestDaemon::start(cfg).await;
    // Fill the budget with points the hanging endpoint never lets go of.
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // 100 points: one chunk (a body of more chunks waits for room instead).
        let r = d.post("metric", common::lines("m", 100, seq)).await;
        seq += 100;
        if r.status().as_u16() == 503 {
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
        assert!(Instant::now() < deadline, "the budget never filled");
    }
    let addr = d.addr;
    let head = tokio::task::spawn_blocking(move || {
        // As large as `max_body`: more than the room a 503 above leaves (under one chunk).
        let mut s = start_request(addr, 262_144, b"");
        read_head(&mut s)
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
}

/// A body trickled in is cut off at `ingest.body_read_timeout` with a 408, and what it
/// held of the budget comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_and_its_budget_comes_back() {
    let mock = MockDataway::start().await;
    let cfg = config_for(
        &[mock.url("tkn")],
        "",
        "[ingest]\nbody_read_timeout = \"1s\"\n",
    );
    let d = TestDaemon::start(cfg).await;
    let addr = d.addr;
    let reading = || {
        let text = d.metrics.encode_text();
        sample(&text, "dataway_memory_budget_used_bytes{part=\"reading\"}")
    };
    let head = tokio::task::spawn_blocking(move || {
        let mut s = start_request(addr, 100_000, b"m v=1\n");
        read_head(&mut s)
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The gauge is set when /metrics is read.
    reqwest::get(d.url("/metrics")).await.unwrap();
    assert_eq!(reading(), Some(0.0));
    // And the daemon takes writes as before.
    let r = d.post("metric", "m v=1".to_string()).await;
    assert_eq!(r.status().as_u16(), 200);
}

/// A small write reserves budget for what it can parse into (a bounded multiple of its
/// size), not a whole chunk: when the budget is nearly spent, the large writes are refused
/// and a small one is still taken (it used to need a free chunk, a quarter of the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_write_fits_where_a_whole_chunk_would_not() {
    let mock = MockDataway::start().await;
    mock.set_default(Some(Reply::Slow(Duration::from_secs(3600))));
    let cfg = config_for(
        &[mock.url("tkn")],
        "max_pending_bytes = 4194304\nworkers = 1\nqueue_size = 100000",
        "",
    );
    let d = TestDaemon::start(cfg).await;
    // ~1,000 points a write (under a chunk of 1 MiB each): taken until less than what one
    // needs is left.
    let mut seq = 0;
    loop {
        let r = d.post("metric", common::lines("m", 1000, seq)).await;
        seq += 1000;
        match r.status().as_u16() {
            200 => assert!(seq < 100_000, "the budget never filled"),
            503 => break,
            s => panic!("unexpected {s}"),
        }
    }
    let (used, _) = d.dataway.budget().used();
    assert!(used > 3 << 20, "nearly spent: {used}");
    let r = d.post("metric", common::lines("m", 3, seq)).await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "a 3-line write fits in what is left"
    );
}
