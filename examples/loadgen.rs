//! End-to-end load: posts N points to a real `dataway` daemon process and measures how fast
//! they reach a loopback receiver, next to gzip alone on the same bytes.
//!
//! Run: `cargo build --release && cargo run --release --example loadgen -- [POINTS] [BATCH] [CLIENTS]`
//! (defaults 1,000,000 points, 5,000 lines per request, 4 clients); `DATAWAY_BIN=path` picks
//! another daemon binary (for A/B runs), `DATAWAY_EXTRA='workers = 2;gzip = false'` adds
//! `[dataway]` keys. Everything binds
//! 127.0.0.1 and the run stops by itself.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn body(batch: usize, start: usize) -> String {
    let mut s = String::with_capacity(batch * 120);
    for i in start..start + batch {
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "cpu,host=web-{},region=eu-west-1,service=checkout usage_user={}.25,usage_system=3.5,load={}i,ok=true,note=\"fine\" {}",
            i % 100,
            i % 97,
            i % 13,
            1_700_000_000_000_000_000i64 + i as i64
        );
    }
    s
}

/// CPU seconds (user + system) the process has used so far, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> f64 {
    // Clock ticks per second: 100 on Linux unless the kernel says otherwise.
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = arg(1, 1_000_000);
    let batch = arg(2, 5_000);
    let clients = arg(3, 4);
    let requests = total.div_ceil(batch);
    let bodies: Vec<Bytes> = (0..requests)
        .map(|r| Bytes::from(body(batch, r * batch)))
        .collect();
    let raw_bytes: usize = bodies.iter().map(|b| b.len()).sum();

    // Baseline: gzip alone over the same bytes, one core.
    let t = Instant::now();
    let mut gz_out = 0;
    for b in &bodies {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b)?;
        gz_out += e.finish()?.len();
    }
    let gzip_secs = t.elapsed().as_secs_f64();

    // Receiver: counts X-Points of every write; the body is read and dropped.
    let received = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let (r, w) = (received.clone(), wire.clone());
    let app = Router::new().fallback(move |h: HeaderMap, b: Bytes| {
        let (r, w) = (r.clone(), w.clone());
        async move {
            let n: u64 = h
                .get("x-points")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            r.fetch_add(n, Ordering::Relaxed);
            w.fetch_add(b.len() as u64, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let recv_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The daemon: `DATAWAY_BIN`, or the release binary next to this example.
    let bin = match std::env::var_os("DATAWAY_BIN") {
        // Absolute: the daemon runs in another directory (below).
        Some(b) => std::path::absolute(b)?,
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(|p| p.parent())
                .map(|p| p.join("dataway"))
                .expect("target dir")
        }
    };
    println!("daemon:               {}", bin.display());
    let ingest: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("dataway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"http://{recv_addr}?token=tkn_load\"]\n{}\n[ingest]\nlisten = \"{ingest}\"\n[log]\nlevel = \"warn\"\n",
            std::env::var("DATAWAY_EXTRA")
                .unwrap_or_default()
                .replace(';', "\n")
        ),
    )?;
    // Run in the temporary directory: the relative default paths (fail-cache, WAL) land
    // there even with an older DATAWAY_BIN that resolves them against its working directory,
    // and never in the repository.
    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let cli = reqwest::Client::new();
    let base = format!("http://{ingest}");
    for _ in 0..400 {
        if cli.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rss_idle = rss_kib(pid, "VmRSS:");
    let cpu_before = cpu_secs(pid);

    let t = Instant::now();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (cli, bodies, next, url) = (
            cli.clone(),
            bodies.clone(),
            next.clone(),
            format!("{base}/v1/write/metric"),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(b) = bodies.get(i) else { break };
                loop {
                    let r = cli.post(&url).body(b.clone()).send().await.expect("post");
                    match r.status().as_u16() {
                        200 => break,
                        503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        s => panic!("ingest answered {s}"),
                    }
                }
            }
        }));
    }
    let mut rss_peak = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (received.load(Ordering::Relaxed) as usize) < requests * batch
        && Instant::now() < deadline
    {
        rss_peak = rss_peak.max(rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    for t in tasks {
        t.await?;
    }
    let hwm = rss_kib(pid, "VmHWM:");
    let daemon_cpu = cpu_secs(pid) - cpu_before;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let points = received.load(Ordering::Relaxed) as f64;
    let mb = raw_bytes as f64 / 1e6;
    println!("points posted:        {}", requests * batch);
    println!("points delivered:     {points}");
    println!(
        "raw line protocol:    {mb:.1} MB, gzipped on the wire {:.1} MB",
        wire.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!(
        "pipeline:             {secs:.2} s, {:.0} points/s, {:.1} MB/s",
        points / secs,
        mb / secs
    );
    println!(
        "gzip alone (1 core):  {gzip_secs:.2} s, {:.0} points/s, {:.1} MB/s ({:.1} MB out)",
        (requests * batch) as f64 / gzip_secs,
        mb / gzip_secs,
        gz_out as f64 / 1e6
    );
    println!(
        "ratio pipeline/gzip:  {:.2}",
        (points / secs) / ((requests * batch) as f64 / gzip_secs)
    );
    println!(
        "daemon CPU:           {daemon_cpu:.2} s user+sys, {:.2} us per delivered point (gzip alone: {:.2} us per point, ratio {:.1})",
        daemon_cpu * 1e6 / points,
        gzip_secs * 1e6 / (requests * batch) as f64,
        daemon_cpu / gzip_secs
    );
    println!(
        "daemon RSS:           idle {} MiB, peak sampled {} MiB, VmHWM {} MiB",
        rss_idle / 1024,
        rss_peak / 1024,
        hwm / 1024
    );
    Ok(())
}
