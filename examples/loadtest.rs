//! The load benchmark of BENCHMARKS.md: realistic, non-repetitive points posted to a real
//! `dataway` daemon process by N HTTP clients, delivered to a loopback receiver standing in
//! for Dataway, and measured against gzip alone on the same bytes.
//!
//! ```text
//! cargo build --release --bin dataway --example loadtest
//! target/release/examples/loadtest --clients 4 --seconds 60          # as fast as it can
//! target/release/examples/loadtest --clients 1 --rate 200000         # a steady rate
//! target/release/examples/loadtest --wal --sinkers 1                 # other set-ups
//! target/release/examples/loadtest --sinkers 1 --rule fields         # a rule on a field
//! target/release/examples/loadtest --dump points.lp                  # the dataset only
//! ```
//!
//! The dataset ([`Dataset`]) is what a host sends, not one line repeated: 40 hosts, four
//! measurements in two categories (`cpu`, `mem`, `disk` metrics; `nginx` logging with a
//! log-like `message`), random floats with full precision, ~150 bytes a point. Repeated
//! lines flatter both gzip and the parser; these do not. It is generated once, before the
//! daemon starts, from a fixed seed (`--seed`), and posted round-robin.
//!
//! The report: delivered points/s; points per daemon CPU-second (user + system from
//! `/proc/<pid>/stat`, from the first request to the last delivered point) against gzip
//! alone (zlib level 6, one core) on the same bodies; the share of requests answered 503
//! (each is resent, as a client does, after `Retry-After` or 50 ms); daemon RSS idle,
//! steady (median of 100 ms samples while loaded) and peak (`VmHWM`); p50/p99 latency of
//! the answered writes. Everything binds 127.0.0.1 and the run stops by itself.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use clap::Parser;
use rand::{Rng, RngExt, SeedableRng};

#[derive(Parser)]
#[command(about = "Load benchmark: realistic points through a real dataway daemon")]
struct Args {
    /// Concurrent HTTP clients posting writes.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// How long to post, in seconds (then wait for delivery).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Points per second for all clients together; 0: as fast as the daemon takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Lines per request body.
    #[arg(long, default_value_t = 5000)]
    lines: usize,
    /// Points in the dataset (posted round-robin; each body is distinct).
    #[arg(long, default_value_t = 1_000_000)]
    dataset: usize,
    /// Gzip the request bodies (as DataKit's inputs do not by default).
    #[arg(long)]
    gzip: bool,
    /// Turn the daemon's `[dataway.wal]` on.
    #[arg(long)]
    wal: bool,
    /// Built-in datakit-filter sinkers, each taking a different 10% of the points.
    #[arg(long, default_value_t = 0)]
    sinkers: usize,
    /// The sinkers' condition: `host` (`{ host in [four hosts] }`), `fields` (the same
    /// `or used_percent > 99`: a float field column read for every write, ~0.7% more
    /// points taken) or `measurement` (the same `or measurement = 'swap'`, which no point
    /// has: the measurements read for every write).
    #[arg(long, default_value = "host", value_parser = ["host", "fields", "measurement"])]
    rule: String,
    /// Extra `[dataway]` keys, `;`-separated (e.g. `max_pending_bytes = 33554432`).
    #[arg(long, default_value = "")]
    extra: String,
    /// The daemon binary (default: `dataway` beside this example's directory).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Wait this long before resending a write answered 503 (default: its `Retry-After`,
    /// at most 1 s).
    #[arg(long)]
    retry_ms: Option<u64>,
    /// Measure what a refusal costs: after half of `--seconds` the receiver stops
    /// answering, the daemon's queues fill, and the rest of the time every write is refused;
    /// the CPU per refused write is reported against the CPU per taken write before. The
    /// receiver answers again at the end, so everything taken is still delivered.
    #[arg(long)]
    stall: bool,
    /// Dataset seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the dataset as line protocol to this file and exit (for other tools).
    #[arg(long)]
    dump: Option<PathBuf>,
}

/// One request body of the dataset.
struct Body {
    category: &'static str,
    points: u64,
    bytes: Bytes,
}

/// The dataset: bodies of `lines` points each, one category per body (as DataKit's inputs
/// post them), ~3 metric bodies for every logging one.
struct Dataset {
    bodies: Vec<Body>,
}

const HOSTS: usize = 40;
const WORDS: &[&str] = &[
    "GET",
    "POST",
    "PUT",
    "api",
    "v1",
    "v2",
    "items",
    "users",
    "orders",
    "cart",
    "search",
    "login",
    "static",
    "img",
    "checkout",
    "health",
    "session",
    "token",
    "expired",
    "upstream",
    "timeout",
    "connect",
    "reset",
    "by",
    "peer",
    "while",
    "reading",
    "response",
    "header",
    "from",
    "client",
    "request",
    "served",
    "cache",
    "miss",
    "hit",
    "retry",
    "Mozilla/5.0",
    "curl/8.5.0",
    "okhttp/4.12",
    "python-requests/2.31",
];

impl Dataset {
    fn generate(points: usize, lines: usize, seed: u64) -> Dataset {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ts: i64 = 1_764_000_000_000_000_000;
        let mut bodies = Vec::with_capacity(points.div_ceil(lines));
        let mut made = 0;
        while made < points {
            let n = lines.min(points - made);
            let logging = bodies.len() % 4 == 3;
            let mut s = String::with_capacity(n * 170);
            for _ in 0..n {
                ts += rng.random_range(1..2_000_000);
                let host = rng.random_range(0..HOSTS);
                if logging {
                    nginx_line(&mut s, &mut rng, host, ts);
                } else {
                    metric_line(&mut s, &mut rng, host, ts);
                }
            }
            bodies.push(Body {
                category: if logging { "logging" } else { "metric" },
                points: n as u64,
                bytes: Bytes::from(s),
            });
            made += n;
        }
        Dataset { bodies }
    }

    fn points(&self) -> u64 {
        self.bodies.iter().map(|b| b.points).sum()
    }

    fn bytes(&self) -> usize {
        self.bodies.iter().map(|b| b.bytes.len()).sum()
    }
}

fn metric_line(s: &mut String, rng: &mut impl Rng, host: usize, ts: i64) {
    use std::fmt::Write;
    let region = ["eu-west-1", "us-east-2", "ap-south-1"][host % 3];
    let _ = match rng.random_range(0..3) {
        0 => writeln!(
            s,
            "cpu,host=host-{host:02},region={region},cpu=cpu{} usage_user={},usage_system={},usage_idle={},load5={}i {ts}",
            rng.random_range(0..8),
            rng.random::<f64>() * 100.0,
            rng.random::<f64>() * 30.0,
            rng.random::<f64>() * 100.0,
            rng.random_range(0..64),
        ),
        1 => writeln!(
            s,
            "mem,host=host-{host:02},region={region} total={}i,used={}i,used_percent={},swap_free={}i {ts}",
            16u64 << 30,
            rng.random_range(1u64 << 30..16u64 << 30),
            rng.random::<f64>() * 100.0,
            rng.random_range(0u64..4u64 << 30),
        ),
        _ => writeln!(
            s,
            "disk,host=host-{host:02},region={region},device=nvme0n{}p1,fstype=ext4 free={}i,used_percent={},inodes_used={}i {ts}",
            rng.random_range(0..4),
            rng.random_range(0u64..500u64 << 30),
            rng.random::<f64>() * 100.0,
            rng.random_range(0u64..10_000_000),
        ),
    };
}

fn nginx_line(s: &mut String, rng: &mut impl Rng, host: usize, ts: i64) {
    use std::fmt::Write;
    let status = [200, 200, 200, 200, 201, 204, 301, 404, 499, 502][rng.random_range(0..10)];
    let mut msg = String::with_capacity(96);
    let _ = write!(
        msg,
        "10.{}.{}.{} - - \\\"{} /{}/{}/{}?id={} HTTP/1.1\\\" {status} {}",
        rng.random_range(0..256),
        rng.random_range(0..256),
        rng.random_range(0..256),
        WORDS[rng.random_range(0..3)],
        WORDS[rng.random_range(3..6)],
        WORDS[rng.random_range(6..15)],
        WORDS[rng.random_range(15..WORDS.len())],
        rng.random::<u32>(),
        rng.random_range(0..100_000),
    );
    let _ = writeln!(
        s,
        "nginx,host=host-{host:02},service=web,status={status} message=\"{msg}\",bytes={}i,duration={} {ts}",
        rng.random_range(0..100_000),
        rng.random::<f64>() * 2.0,
    );
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(b).expect("in memory");
    e.finish().expect("in memory")
}

/// CPU seconds (user + system) the process has used so far, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> f64 {
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

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    acked_points: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = Dataset::generate(args.dataset, args.lines, args.seed);
    if let Some(path) = &args.dump {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for b in &data.bodies {
            f.write_all(&b.bytes)?;
        }
        f.flush()?;
        println!(
            "{} points, {:.1} MB of line protocol in {}",
            data.points(),
            data.bytes() as f64 / 1e6,
            path.display()
        );
        return Ok(());
    }

    // Baseline: gzip alone over the same bytes, one core, before anything else runs. Timed
    // in this thread's CPU time, after a warm-up body: by the wall clock, the first run
    // after a build read low (the machine still busy, the CPU not yet at speed).
    if let Some(b) = data.bodies.first() {
        std::hint::black_box((gzip(&b.bytes), dataway::endpoint::gzip(&b.bytes)));
    }
    let t = thread_cpu_seconds();
    let gz_out: usize = data.bodies.iter().map(|b| gzip(&b.bytes).len()).sum();
    let gzip_secs = thread_cpu_seconds() - t;
    let gzip_pps = data.points() as f64 / gzip_secs;
    // And the daemon's own compressor (libdeflate), alone on the same bytes.
    let t = thread_cpu_seconds();
    let own_out: usize = data
        .bodies
        .iter()
        .map(|b| dataway::endpoint::gzip(&b.bytes).len())
        .sum();
    let own_pps = data.points() as f64 / (thread_cpu_seconds() - t);
    let bodies: Arc<Vec<(Body, Bytes)>> = Arc::new(
        data.bodies
            .into_iter()
            .map(|b| {
                let wire = if args.gzip {
                    Bytes::from(gzip(&b.bytes))
                } else {
                    b.bytes.clone()
                };
                (b, wire)
            })
            .collect(),
    );
    let avg_line = bodies.iter().map(|(b, _)| b.bytes.len()).sum::<usize>() as f64
        / bodies.iter().map(|(b, _)| b.points).sum::<u64>() as f64;

    // The receiver: counts X-Points of every write (the body is read and dropped).
    let delivered = Arc::new(AtomicU64::new(0));
    let wire_bytes = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(tokio::sync::watch::channel(false).0);
    let (d, w, st) = (delivered.clone(), wire_bytes.clone(), stalled.clone());
    let app = Router::new().fallback(move |h: HeaderMap, b: Bytes| {
        let (d, w, st) = (d.clone(), w.clone(), st.clone());
        async move {
            // While stalled, hold the request until the stall ends (the daemon's send
            // times out or waits; its queues fill).
            let _ = st.subscribe().wait_for(|s| !*s).await;
            let n: u64 = h
                .get("x-points")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            d.fetch_add(n, Ordering::Relaxed);
            w.fetch_add(b.len() as u64, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let recv: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The daemon, in a directory of its own (fail-cache, WAL), on its default config but
    // for the URLs, the listen address and what the flags add.
    let bin = match &args.daemon {
        Some(b) => std::path::absolute(b)?,
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("dataway"))
            .expect("target dir"),
    };
    let ingest: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = format!(
        "[dataway]\nurls = [\"http://{recv}?token=tkn_load\"]\n{}\n",
        args.extra.replace(';', "\n")
    );
    if args.wal {
        cfg += "[dataway.wal]\nenabled = true\n";
    }
    for i in 0..args.sinkers {
        // Four hosts of forty: 10% of the points each, a different 10% per sinker.
        let hosts: Vec<String> = (0..4)
            .map(|k| format!("'host-{:02}'", (i * 4 + k) % HOSTS))
            .collect();
        let field = match args.rule.as_str() {
            "fields" => " or used_percent > 99",
            "measurement" => " or measurement = 'swap'",
            _ => "",
        };
        cfg += &format!(
            "[[dataway.sinkers]]\nname = \"s{i}\"\ncategories = [\"metric\", \"logging\"]\nplugin = \"datakit_filter.wasm\"\nconfig = [\"{{ host in [{}]{field} }}\"]\nurls = [\"http://{recv}?token=tkn_sink{i}\"]\n",
            hosts.join(", ")
        );
    }
    cfg += &format!("[ingest]\nlisten = \"{ingest}\"\n[log]\nlevel = \"warn\"\n");
    let cfg_path = dir.path().join("dataway.toml");
    std::fs::write(&cfg_path, &cfg)?;
    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&cfg_path)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let cli = reqwest::Client::new();
    let base = format!("http://{ingest}");
    let mut up = false;
    for _ in 0..1200 {
        if let Ok(r) = cli.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::ensure!(up, "the daemon did not become healthy in 30 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = status_kib(pid, "VmRSS:");

    // The clients: each takes the next body, posts it until it is taken (a 503 is resent
    // after Retry-After, or 50 ms), and keeps to the shared rate if there is one.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let scheduled = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let cpu_start = cpu_secs(pid);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (cli, bodies, tally, stop, next, scheduled, base) = (
            cli.clone(),
            bodies.clone(),
            tally.clone(),
            stop.clone(),
            next.clone(),
            scheduled.clone(),
            base.clone(),
        );
        let (rate, retry_ms) = (args.rate, args.retry_ms);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % bodies.len();
                let (body, wire) = &bodies[i];
                if rate > 0 {
                    let at = scheduled.fetch_add(body.points, Ordering::Relaxed);
                    let due = start + Duration::from_secs_f64(at as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let url = format!("{base}/v1/write/{}", body.category);
                loop {
                    let mut req = cli.post(&url).body(wire.clone());
                    if wire.len() != body.bytes.len() {
                        req = req.header("Content-Encoding", "gzip");
                    }
                    let t = Instant::now();
                    let r = req.send().await.expect("post");
                    let status = r.status().as_u16();
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let _ = r.bytes().await;
                    match status {
                        200 => {
                            latencies.push(t.elapsed().as_micros() as u64);
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            tally.acked_points.fetch_add(body.points, Ordering::Relaxed);
                            break;
                        }
                        503 => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            let wait = retry_ms.unwrap_or_else(|| {
                                retry_after.map_or(50, |s| (s * 1000).min(1000))
                            });
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        s => panic!("ingest answered {s}"),
                    }
                }
            }
            latencies
        }));
    }

    // Sample RSS while loaded; stop posting after `seconds`, then wait for delivery.
    let mut samples = Vec::new();
    let post_until = start + Duration::from_secs(args.seconds);
    // --stall: (CPU, taken writes) at the stall, and (CPU, refused writes) once refusing.
    let mut stall_marks = None;
    let stall_at = start + Duration::from_secs(args.seconds) / 2;
    while Instant::now() < post_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push(status_kib(pid, "VmRSS:"));
        if args.stall && stall_marks.is_none() && Instant::now() >= stall_at {
            let taken = (cpu_secs(pid) - cpu_start, tally.ok.load(Ordering::Relaxed));
            stalled.send_replace(true);
            // Let the queues fill: from the first refusal on, writes are refused.
            let before = tally.refused.load(Ordering::Relaxed);
            while tally.refused.load(Ordering::Relaxed) == before && Instant::now() < post_until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let refusing = (
                cpu_secs(pid),
                tally.refused.load(Ordering::Relaxed),
                tally.ok.load(Ordering::Relaxed),
            );
            stall_marks = Some((taken, refusing));
        }
    }
    let stall_report = stall_marks.map(|((cpu_taken, taken), (cpu0, refused0, ok0))| {
        let cpu = cpu_secs(pid) - cpu0;
        let refused = tally.refused.load(Ordering::Relaxed) - refused0;
        let ok = tally.ok.load(Ordering::Relaxed) - ok0;
        (
            cpu_taken / taken.max(1) as f64,
            cpu / refused.max(1) as f64,
            refused,
            ok,
        )
    });
    stop.store(true, Ordering::Relaxed);
    stalled.send_replace(false);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let posted_secs = start.elapsed().as_secs_f64();
    let acked = tally.acked_points.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < acked && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_start;
    let hwm = status_kib(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let got = delivered.load(Ordering::Relaxed);
    let (ok, refused) = (
        tally.ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
    );
    latencies.sort_unstable();
    samples.sort_unstable();
    let steady = samples.get(samples.len() / 2).copied().unwrap_or(0);
    let pps_cpu = got as f64 / cpu;
    println!("daemon:                 {}", bin.display());
    println!(
        "set-up:                 {} client(s), {}, {} lines per body{}{}{}",
        args.clients,
        if args.rate > 0 {
            format!("{} points/s", args.rate)
        } else {
            "as fast as it takes them".into()
        },
        args.lines,
        if args.gzip { ", gzipped" } else { "" },
        if args.wal { ", WAL on" } else { "" },
        if args.sinkers > 0 {
            format!(", {} sinker(s), rule {}", args.sinkers, args.rule)
        } else {
            String::new()
        },
    );
    println!(
        "dataset:                {} distinct points in {} bodies, {avg_line:.0} bytes a point",
        bodies.iter().map(|(b, _)| b.points).sum::<u64>(),
        bodies.len()
    );
    println!(
        "points:                 {acked} acknowledged, {got} delivered{}",
        if got < acked {
            format!(" ({} NOT delivered within 120 s)", acked - got)
        } else {
            String::new()
        }
    );
    println!(
        "delivered:              {:.0} points/s over {secs:.1} s (posting {posted_secs:.1} s); {:.1} MB on the wire",
        got as f64 / secs,
        wire_bytes.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!("daemon CPU:             {cpu:.2} s, {pps_cpu:.0} delivered points per CPU-second");
    println!(
        "gzip alone (zlib 6):    {gzip_pps:.0} points per CPU-second ({:.1} MB -> {:.1} MB)",
        bodies.iter().map(|(b, _)| b.bytes.len()).sum::<usize>() as f64 / 1e6,
        gz_out as f64 / 1e6
    );
    println!(
        "daemon's gzip alone:    {own_pps:.0} points per CPU-second (libdeflate; {:.1} MB out)",
        own_out as f64 / 1e6
    );
    println!(
        "ratio daemon/gzip:      {:.2} (against the daemon's own gzip alone: {:.2})",
        pps_cpu / gzip_pps,
        pps_cpu / own_pps
    );
    println!(
        "requests:               {ok} taken, {refused} answered 503 ({:.1}% of {})",
        100.0 * refused as f64 / (ok + refused).max(1) as f64,
        ok + refused
    );
    if let Some((per_taken, per_refused, refused, ok)) = stall_report {
        println!(
            "refusal cost (--stall):  {:.0} us CPU per taken write before the stall, {:.0} us per refused write after ({refused} refused, {ok} taken meanwhile): ratio {:.3}",
            per_taken * 1e6,
            per_refused * 1e6,
            per_refused / per_taken
        );
    }
    println!(
        "latency (taken writes): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0
    );
    println!(
        "daemon RSS:             idle {} MiB, steady (median under load) {} MiB, peak (VmHWM) {} MiB",
        rss_idle / 1024,
        steady / 1024,
        hwm / 1024
    );
    Ok(())
}

/// The CPU time this thread has used, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
