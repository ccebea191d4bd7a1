//! The attacks of issue 11, one function per row, each bounded in time. Every row runs a
//! fresh daemon on its own config and scratch directory against a fresh stand-in Dataway.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::daemon::{Daemon, Sampler};
use crate::load::{self, Client, Ledger, Load, Shape};
use crate::receiver::{Mode, Receiver};
use crate::report::Outcome;

/// What the whole run shares.
pub struct Ctx {
    pub bin: PathBuf,
    pub scratch: PathBuf,
    pub quick: bool,
    /// Judge peak RSS against `rss_budget_mib` (a release build; a debug build's RSS means
    /// little).
    pub judge_rss: bool,
    pub rss_budget_mib: u64,
    /// Check the checker: run the WAL-on kill -9 row with the WAL off (it must FAIL).
    pub sabotage_wal: bool,
}

impl Ctx {
    fn dir(&self, row: &str) -> PathBuf {
        let d = self.scratch.join(row);
        std::fs::create_dir_all(d.join("plugins")).expect("create the row's scratch dir");
        d
    }

    /// Longest the daemon may take to be healthy again after a fault ends ("within
    /// seconds": the stores' reopen backoff is capped at 10 s).
    fn recover_limit(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// How long deliveries may take after the load, and how long without any delivery
    /// means the daemon has nothing more to send.
    fn drain(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_secs(45), Duration::from_secs(4))
        } else {
            (Duration::from_secs(120), Duration::from_secs(15))
        }
    }

    /// The fault window.
    fn window(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 30 })
    }

    /// The outage that must fill a 2 MiB fail-cache (a debug build stores bodies slowly).
    fn disk_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 15 } else { 30 })
    }

    fn shape(&self) -> Shape {
        Shape {
            writers: if self.quick { 2 } else { 4 },
            // Each write is one body upstream: big enough that a fault fills a small disk.
            batch: 500,
            pause: Duration::from_millis(if self.quick { 50 } else { 20 }),
        }
    }

    async fn start(&self, cfg: &Path) -> Result<Daemon, String> {
        Daemon::start(&self.bin, cfg, &self.scratch.join("xdg")).await
    }

    fn judge_rss(&self, o: &mut Outcome) {
        let mib = o.peak_rss_kib / 1024;
        if self.judge_rss {
            let budget = self.rss_budget_mib;
            o.check(
                mib <= budget,
                format!("peak RSS {mib} MiB is over {budget} MiB"),
            );
        } else {
            o.note(format!(
                "peak RSS {mib} MiB not judged (not a release build)"
            ));
        }
    }
}

/// A config file in `dir`: the stand-in as the only endpoint, data under `dir/data` unless
/// `data` says where, `[dataway]` keys `dataway`, WAL on or off, and `tail` appended.
struct Cfg<'a> {
    dataway: &'a str,
    fail_cache: &'a str,
    wal: bool,
    data: Option<&'a Path>,
    tail: &'a str,
}

/// Retries that give up fast, so a fault reaches the fail-cache within the window.
const FAST: &str =
    "timeout = \"3s\"\nretry_delay = \"50ms\"\nmax_retry_delay = \"500ms\"\nmax_retry_count = 1\n";
const FAST_CACHE: &str = "clean_interval = \"500ms\"\n";

fn config(dir: &Path, recv: &Receiver, c: &Cfg) -> PathBuf {
    let data = c.data.map_or_else(|| dir.join("data"), Path::to_path_buf);
    let text = format!(
        "[dataway]\nurls = [\"{url}\"]\nplugins_dir = \"{plugins}\"\n{dw}\n\
         [dataway.fail_cache]\npath = \"{fc}\"\n{fcx}\n\
         [dataway.wal]\nenabled = {wal}\npath = \"{walp}\"\n\
         [dataway.sinker_limits]\ncache_dir = \"{cache}\"\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\n\n{tail}\n",
        url = recv.url(),
        plugins = dir.join("plugins").display(),
        dw = c.dataway,
        fc = data.join("failcache").display(),
        fcx = c.fail_cache,
        wal = c.wal,
        walp = data.join("wal").display(),
        cache = dir.join("plugin-cache").display(),
        tail = c.tail,
    );
    let path = dir.join("dataway.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Until GET /health answers 200 and a write of 10 points is acknowledged, up to `limit`:
/// how long that took.
async fn recover(addr: SocketAddr, ledger: &Ledger, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut client = Client::new(addr, Duration::from_secs(3));
    loop {
        if load::healthy(addr).await && load::write(&mut client, ledger, "probe", 10).await {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for every acknowledged point (or quiet, or the limit), then counts the row.
async fn settle(ctx: &Ctx, o: &mut Outcome, ledger: &Ledger, recv: &Receiver, s: &Sampler) {
    let (limit, quiet) = ctx.drain();
    recv.drain(limit, quiet, |d, _| ledger.all_delivered(d, 0))
        .await;
    let (delivered, _) = recv.delivered();
    o.count(&ledger.acked(), &delivered);
    (o.peak_rss_kib, o.peak_fds) = s.peaks();
    o.note(format!("ingest answers: {}", ledger.statuses()));
}

/// The sum of a counter's series in the daemon's /metrics.
async fn metric_sum(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut c = Client::new(addr, Duration::from_secs(5));
    let (_, text) = c.send("GET", "/metrics", &[], Bytes::new()).await.ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// The row as it ends: with the daemon's last log lines if it failed.
fn done(mut o: Outcome, d: &Daemon) -> Outcome {
    if !o.broken.is_empty() {
        o.log_tail = Some(d.log_tail(20));
    }
    o
}

fn failed(mut o: Outcome, why: String) -> Outcome {
    o.check(false, why);
    o
}

// ---------------------------------------------------------------------------------------
// (1) gzip bomb

/// 32 MiB of `a v=1` lines gzipped (~49 KB), sent once and then 4 at a time to a daemon on
/// its default config. The quick form sends 4 MiB bombs: a debug build takes minutes to
/// parse the full ones.
pub async fn gzip_bomb(ctx: &Ctx) -> Outcome {
    let mib: u64 = if ctx.quick { 4 } else { 32 };
    let mut o = Outcome::new(&format!(
        "gzip bomb: {mib} MiB of `a v=1` gzipped, 1 then 4 at once"
    ));
    let dir = ctx.dir("gzip-bomb");
    let recv = Receiver::start().await;
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: "",
            fail_cache: "",
            wal: false,
            data: None,
            tail: "",
        },
    );
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    // At most the default max_body (32 MiB), so it is not refused for its size.
    let lines_per_bomb: u64 = (mib << 20) / 6;
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = "a v=1\n".repeat(1 << 16);
        let mut left = lines_per_bomb;
        while left > 0 {
            let n = left.min(1 << 16);
            gz.write_all(&chunk.as_bytes()[..n as usize * 6]).unwrap();
            left -= n;
        }
        Bytes::from(gz.finish().unwrap())
    };
    o.note(format!(
        "each bomb: {} bytes gzipped, {lines_per_bomb} points",
        bomb.len()
    ));
    let send = |bomb: Bytes| async move {
        let mut c = Client::new(d.addr, Duration::from_secs(300));
        c.send(
            "POST",
            "/v1/write/metric",
            &[("content-encoding", "gzip")],
            bomb,
        )
        .await
    };
    // /health while the bombs are in flight: the daemon must stay answerable.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let w = watching.clone();
    let addr = d.addr;
    let watcher = tokio::spawn(async move {
        let (mut worst, mut failures) = (Duration::ZERO, 0u32);
        while w.load(std::sync::atomic::Ordering::SeqCst) {
            let t = Instant::now();
            if !load::healthy(addr).await {
                failures += 1;
            }
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (worst, failures)
    });
    let t0 = Instant::now();
    let mut answers = vec![send(bomb.clone()).await];
    let concurrent = futures_join(4, || send(bomb.clone())).await;
    answers.extend(concurrent);
    let fault_end = t0.elapsed();
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let (worst, failures) = watcher.await.unwrap();
    let ok = answers.iter().filter(|a| matches!(a, Ok((200, _)))).count() as u64;
    let statuses: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok((s, _)) => s.to_string(),
            Err(e) => format!("error ({e})"),
        })
        .collect();
    o.note(format!(
        "answers: {} in {:.1} s; /health during the bombs: slowest {:.2} s, {failures} not answered within 2 s",
        statuses.join(", "),
        fault_end.as_secs_f64(),
        worst.as_secs_f64()
    ));
    let ledger = Ledger::default();
    o.check_healthy(
        recover(d.addr, &ledger, ctx.recover_limit()).await,
        ctx.recover_limit(),
    );
    let acked = ok * lines_per_bomb;
    let (limit, quiet) = ctx.drain();
    recv.drain(limit.max(Duration::from_secs(120)), quiet, |_, anon| {
        anon >= acked
    })
    .await;
    let (seqs, anon) = recv.delivered();
    // The bomb's points carry no seq: counted in bulk. The probe's do.
    let probe_acked: Vec<u64> = ledger.acked().into_iter().flatten().collect();
    let probe_lost = probe_acked.iter().filter(|q| !seqs.contains_key(q)).count() as u64;
    o.acked = acked + probe_acked.len() as u64;
    o.delivered = anon + seqs.len() as u64;
    o.lost = acked.saturating_sub(anon) + probe_lost;
    o.duplicated = anon.saturating_sub(acked);
    o.check(
        o.lost == 0,
        format!("{} acknowledged points never arrived", o.lost),
    );
    o.check(
        o.duplicated == 0,
        format!(
            "{} more `a v=1` points arrived than were acknowledged (a refused bomb partly taken, or resent)",
            o.duplicated
        ),
    );
    (o.peak_rss_kib, o.peak_fds) = s.peaks();
    ctx.judge_rss(&mut o);
    done(o, &d)
}

/// `n` copies of `f()` run at once.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// (2) idle connections

pub async fn idle_connections(ctx: &Ctx) -> Outcome {
    const N: usize = 1100;
    let mut o = Outcome::new("1,100 idle TCP connections to the ingest port");
    let dir = ctx.dir("idle");
    let recv = Receiver::start().await;
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: false,
            data: None,
            tail: "",
        },
    );
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Ledger::default();
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        match TcpStream::connect(d.addr).await {
            Ok(mut c) => {
                // Half send half a request head and stop: slow-header clients.
                if i % 2 == 1 {
                    let _ = c
                        .write_all(b"POST /v1/write/metric HTTP/1.1\r\nHost: x\r\n")
                        .await;
                }
                conns.push(c);
            }
            Err(e) => {
                o.note(format!("connection {i} refused: {e}"));
                break;
            }
        }
    }
    o.note(format!("{} idle connections open", conns.len()));
    // While they are open: /health on a new connection, and a write.
    let t = Instant::now();
    let health = load::healthy(d.addr).await;
    o.check(
        health,
        format!("GET /health not answered within 2 s with {N} idle connections open"),
    );
    let mut client = Client::new(d.addr, Duration::from_secs(10));
    let wrote = load::write(&mut client, &ledger, "idle", 100).await;
    o.check(
        wrote,
        format!("a write was not acknowledged within 10 s with {N} idle connections open"),
    );
    o.note(format!(
        "with them open, /health and a write took {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    (o.peak_rss_kib, o.peak_fds) = s.peaks();
    drop(conns);
    o.check_healthy(
        recover(d.addr, &ledger, ctx.recover_limit()).await,
        ctx.recover_limit(),
    );
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    o.check(o.lost == 0, format!("{} acknowledged points lost", o.lost));
    done(o, &d)
}

// ---------------------------------------------------------------------------------------
// (3) kill -9

/// Load, then the stand-in hangs (points pile up in flight and in the queues), then kill -9
/// under load; restarted on the same config.
pub async fn kill9(ctx: &Ctx, wal: bool) -> Outcome {
    let mut o = Outcome::new(if wal {
        "kill -9 under load, WAL on"
    } else {
        "kill -9 under load, WAL off"
    });
    let dir = ctx.dir(if wal { "kill9-wal" } else { "kill9-nowal" });
    let recv = Receiver::start().await;
    let wal_on = wal && !ctx.sabotage_wal;
    if wal && !wal_on {
        o.note("--sabotage: the WAL is OFF in this WAL-on row; it must FAIL");
    }
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: wal_on,
            data: None,
            tail: "",
        },
    );
    let mut d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Arc::new(Ledger::default());
    let load = Load::start(d.addr, ledger.clone(), "kill9", ctx.shape());
    let half = ctx.window() / 2;
    tokio::time::sleep(half).await;
    recv.set_mode(Mode::Hang);
    tokio::time::sleep(half).await;
    (o.peak_rss_kib, o.peak_fds) = s.peaks();
    d.kill9();
    load.stop().await;
    recv.set_mode(Mode::Up);
    let t0 = Instant::now();
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, format!("restart after kill -9: {e}")),
    };
    s.watch(d.pid);
    let probe = recover(d.addr, &ledger, ctx.recover_limit())
        .await
        .map(|_| t0.elapsed());
    o.check_healthy(probe, ctx.recover_limit());
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    o.check(
        o.acked > 0,
        "nothing was acknowledged before the kill: the attack did nothing",
    );
    if wal {
        o.check(
            o.lost == 0,
            format!("{} acknowledged points lost with the WAL on", o.lost),
        );
    } else {
        o.note(format!(
            "{} acknowledged points lost: expected with the WAL off (points in memory)",
            o.lost
        ));
    }
    o.note("healthy after: from the restart (start-up and WAL replay included)");
    done(o, &d)
}

// ---------------------------------------------------------------------------------------
// (4), (5) full disk

/// A tmpfs of `size` at `dir` while it lives (needs root); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Frees space: the same mount, bigger.
    fn grow(&self, size: &str) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding a file there must not keep the mount forever.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const NEEDS_ROOT: &str = "needs root to mount a tmpfs";

/// The disk ran full: the daemon said so, or dropped bodies it could not store.
fn disk_filled(d: &Daemon, drops: f64) -> bool {
    let log = d.log();
    drops > 0.0 || log.contains("No space left on device") || log.contains("os error 28")
}

/// The fail-cache's data dir is a 2 MiB tmpfs; the stand-in is down for the window under
/// load; then the disk grows and the stand-in comes back. A second, short outage after that
/// must go through the fail-cache losing nothing: the store recovered by itself.
pub async fn failcache_full(ctx: &Ctx) -> Outcome {
    let mut o = Outcome::new("fail-cache on a full disk (2 MiB tmpfs), outage, then space freed");
    let dir = ctx.dir("failcache-full");
    let disk = match Tmpfs::mount(&dir.join("disk"), "2m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fail-cache on a full disk: mount failed: {e}");
            return Outcome::skipped(&o.attack, NEEDS_ROOT);
        }
    };
    let recv = Receiver::start().await;
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: false,
            data: Some(&disk.0),
            tail: "",
        },
    );
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Arc::new(Ledger::default());
    let load = Load::start(d.addr, ledger.clone(), "fcfull", ctx.shape());
    tokio::time::sleep(Duration::from_secs(1)).await;
    recv.set_mode(Mode::Down);
    tokio::time::sleep(ctx.disk_window()).await;
    load.stop().await;
    let drops_in_fault = metric_sum(d.addr, "dataway_dropped_points_total")
        .await
        .unwrap_or(0.0);
    o.check(
        disk_filled(&d, drops_in_fault),
        "the disk never filled (no ENOSPC, nothing dropped): the attack did nothing; raise the load",
    );
    if let Err(e) = disk.grow("256m") {
        return failed(o, format!("remount the tmpfs bigger: {e}"));
    }
    recv.set_mode(Mode::Up);
    o.check_healthy(
        recover(d.addr, &ledger, ctx.recover_limit()).await,
        ctx.recover_limit(),
    );
    let (limit, quiet) = ctx.drain();
    recv.drain(limit, quiet, |got, _| ledger.all_delivered(got, 0))
        .await;

    // Phase 2: space is back; a short outage must cost nothing.
    let mark = ledger.mark();
    let load = Load::start(d.addr, ledger.clone(), "fcfull2", ctx.shape());
    tokio::time::sleep(Duration::from_secs(1)).await;
    recv.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    recv.set_mode(Mode::Up);
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    let (delivered, _) = recv.delivered();
    let lost_after: u64 = ledger
        .acked()
        .iter()
        .flat_map(|r| r.start.max(mark)..r.end)
        .filter(|q| !delivered.contains_key(q))
        .count() as u64;
    let drops = metric_sum(d.addr, "dataway_dropped_points_total")
        .await
        .unwrap_or(0.0) as u64;
    o.note(format!(
        "{drops} points counted as dropped (dataway_dropped_points_total); {lost_after} lost in the outage after space came back"
    ));
    o.check(
        o.lost <= drops,
        format!(
            "{} acknowledged points lost but only {drops} counted as dropped",
            o.lost
        ),
    );
    o.check(
        lost_after == 0,
        format!("{lost_after} points lost in an outage after space came back: the fail-cache did not recover"),
    );
    done(o, &d)
}

/// The WAL (and fail-cache) data dir is a 2 MiB tmpfs; the stand-in hangs under load so the
/// WAL fills; then the disk grows and the stand-in comes back. Nothing acknowledged may be
/// lost, and writes must be taken again without a restart.
pub async fn wal_full(ctx: &Ctx) -> Outcome {
    let mut o = Outcome::new("WAL on a full disk (2 MiB tmpfs), then space freed");
    let dir = ctx.dir("wal-full");
    let disk = match Tmpfs::mount(&dir.join("disk"), "2m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("WAL on a full disk: mount failed: {e}");
            return Outcome::skipped(&o.attack, NEEDS_ROOT);
        }
    };
    let recv = Receiver::start().await;
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: true,
            data: Some(&disk.0),
            tail: "",
        },
    );
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Arc::new(Ledger::default());
    let load = Load::start(d.addr, ledger.clone(), "walfull", ctx.shape());
    tokio::time::sleep(Duration::from_secs(1)).await;
    recv.set_mode(Mode::Hang);
    tokio::time::sleep(ctx.window()).await;
    load.stop().await;
    let drops = metric_sum(d.addr, "dataway_dropped_points_total")
        .await
        .unwrap_or(0.0);
    o.check(
        disk_filled(&d, drops),
        "the disk never filled (no ENOSPC logged, nothing dropped): the attack did nothing; raise the load",
    );
    if let Err(e) = disk.grow("256m") {
        return failed(o, format!("remount the tmpfs bigger: {e}"));
    }
    recv.set_mode(Mode::Up);
    o.check_healthy(
        recover(d.addr, &ledger, ctx.recover_limit()).await,
        ctx.recover_limit(),
    );
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    o.check(
        o.lost == 0,
        format!("{} acknowledged points lost with the WAL on", o.lost),
    );
    done(o, &d)
}

// ---------------------------------------------------------------------------------------
// (6) hostile plugin files

const HOSTILE_SINKERS: &str = r#"
[[dataway.sinkers]]
name = "fifo"
categories = ["metric"]
plugin = "x.wasm"
urls = ["URL"]

[[dataway.sinkers]]
name = "zero"
categories = ["metric"]
plugin = "zero.wasm"
urls = ["URL"]

[[dataway.sinkers]]
name = "big"
categories = ["metric"]
plugin = "big.wasm"
urls = ["URL"]
"#;

/// Under load, dropped into plugins_dir: a FIFO `x.wasm`, a symlink to /dev/zero, a symlink
/// to a 1 GiB sparse file. The daemon must say why it skips each, stay healthy and small,
/// and stop on SIGTERM.
pub async fn hostile_plugins(ctx: &Ctx) -> Outcome {
    let mut o =
        Outcome::new("plugin files: FIFO x.wasm, symlinks to /dev/zero and a 1 GiB sparse file");
    let dir = ctx.dir("hostile-plugins");
    let recv = Receiver::start().await;
    let tail = HOSTILE_SINKERS.replace("URL", &recv.url());
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: false,
            data: None,
            tail: &tail,
        },
    );
    let mut d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Arc::new(Ledger::default());
    let load = Load::start(d.addr, ledger.clone(), "hostile", ctx.shape());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let plugins = dir.join("plugins");
    let sparse = dir.join("sparse-1g");
    let made = (|| -> std::io::Result<()> {
        std::fs::File::create(&sparse)?.set_len(1 << 30)?;
        let fifo = std::ffi::CString::new(plugins.join("x.wasm").as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        if unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm"))?;
        std::os::unix::fs::symlink(&sparse, plugins.join("big.wasm"))
    })();
    if let Err(e) = made {
        load.stop().await;
        return failed(o, format!("cannot make the hostile files: {e}"));
    }
    let t0 = Instant::now();
    // Each file is named in a warning once the reload has looked at it.
    let deadline = t0 + Duration::from_secs(30);
    let mut missing: Vec<&str> = vec!["x.wasm", "zero.wasm", "big.wasm"];
    while !missing.is_empty() && Instant::now() < deadline {
        let log = d.log();
        missing.retain(|f| {
            let p = plugins.join(f).display().to_string();
            !log.lines()
                .any(|l| l.contains("cannot read plugin") && l.contains(&p))
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    o.check(
        missing.is_empty(),
        format!("no \"cannot read plugin\" warning within 30 s for {missing:?}"),
    );
    o.check(
        load::healthy(d.addr).await,
        "GET /health not answered with the hostile files in place",
    );
    load.stop().await;
    let probe = recover(d.addr, &ledger, ctx.recover_limit())
        .await
        .map(|_| t0.elapsed());
    o.check_healthy(probe, ctx.recover_limit());
    o.note("healthy after: from dropping the files");
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    o.check(o.lost == 0, format!("{} acknowledged points lost", o.lost));
    ctx.judge_rss(&mut o);
    match d.terminate(Duration::from_secs(30)).await {
        Some((st, took)) => {
            o.note(format!(
                "SIGTERM: exited ({st}) in {:.1} s",
                took.as_secs_f64()
            ));
            o.check(st.success(), format!("SIGTERM: exit status {st}"));
        }
        None => o.check(false, "SIGTERM did not stop the daemon within 30 s"),
    }
    done(o, &d)
}

// ---------------------------------------------------------------------------------------
// (7) malformed bodies

/// A malformed write: what is wrong with it, headers, body, path.
struct Bad {
    kind: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    path: &'static str,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The `i`-th malformed body, its good lines carrying `seqs` (which must never arrive unless
/// the write was acknowledged).
fn malformed(i: usize, seqs: std::ops::Range<u64>, huge_every: usize) -> Bad {
    let good = load::lines("bad", seqs).into_bytes();
    let with = |extra: &[u8]| {
        let mut b = good.clone();
        let mid = b.len() / 2;
        let at = b[..mid]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        b.splice(at..at, extra.iter().copied());
        b
    };
    let plain = |kind, body| Bad {
        kind,
        headers: vec![],
        body,
        path: "/v1/write/metric",
    };
    if huge_every > 0 && i % huge_every == huge_every - 1 {
        // Over the default max_body (32 MiB): one huge line.
        let mut b = good.clone();
        b.extend_from_slice(b"chaos,row=bad huge=\"");
        b.resize(b.len() + (33 << 20), b'x');
        b.extend_from_slice(b"\"\n");
        return plain("over max_body", b);
    }
    match i % 8 {
        0 => {
            let mut z = gzip(&good);
            z.truncate(z.len() / 2);
            Bad {
                kind: "truncated gzip",
                headers: vec![("content-encoding", "gzip")],
                body: z,
                path: "/v1/write/metric",
            }
        }
        1 => Bad {
            kind: "says gzip, is not",
            headers: vec![("content-encoding", "gzip")],
            body: good,
            path: "/v1/write/metric",
        },
        2 => plain("bad UTF-8", with(b"chaos,row=bad,host=\xff\xfe v=1i\n")),
        3 => plain("line without fields", with(b"chaos,row=bad\n")),
        4 => plain("unterminated string", with(b"chaos,row=bad s=\"open\n")),
        5 => plain("bad timestamp", with(b"chaos,row=bad v=1i 12ab\n")),
        6 => Bad {
            kind: "JSON content type",
            headers: vec![("content-type", "application/json")],
            body: good,
            path: "/v1/write/metric",
        },
        _ => Bad {
            kind: "unknown content encoding",
            headers: vec![("content-encoding", "br")],
            body: good,
            path: "/v1/write/metric",
        },
    }
}

/// Malformed bodies mixed with a control set of good writes: none of a refused body may
/// arrive, and no control point may be lost.
pub async fn malformed_bodies(ctx: &Ctx) -> Outcome {
    let (n, huge_every) = if ctx.quick {
        (400, 200)
    } else {
        (10_071, 1000)
    };
    let mut o = Outcome::new(&format!("{n} malformed bodies mixed with good writes"));
    let dir = ctx.dir("malformed");
    let recv = Receiver::start().await;
    let cfg = config(
        &dir,
        &recv,
        &Cfg {
            dataway: FAST,
            fail_cache: FAST_CACHE,
            wal: false,
            data: None,
            tail: "",
        },
    );
    let d = match ctx.start(&cfg).await {
        Ok(d) => d,
        Err(e) => return failed(o, e),
    };
    let s = Sampler::start(d.pid);
    let ledger = Arc::new(Ledger::default());
    let control = Load::start(d.addr, ledger.clone(), "control", ctx.shape());
    let mut client = Client::new(d.addr, Duration::from_secs(30));
    let mut by_kind: std::collections::BTreeMap<&str, std::collections::BTreeMap<String, u32>> =
        Default::default();
    for i in 0..n {
        let seqs = ledger.take(20);
        let bad = malformed(i, seqs.clone(), huge_every);
        let answer = client
            .send("POST", bad.path, &bad.headers, Bytes::from(bad.body))
            .await;
        ledger.settle(seqs, &answer);
        if bad.kind == "over max_body" {
            // The daemon answers 413 before reading it all and closes the connection: a
            // new one for the next body, so its failure is not counted against that body.
            client = Client::new(d.addr, Duration::from_secs(30));
        }
        let key = match &answer {
            Ok((s, _)) => s.to_string(),
            Err(_) => "error".into(),
        };
        *by_kind.entry(bad.kind).or_default().entry(key).or_default() += 1;
    }
    control.stop().await;
    let alive = load::healthy(d.addr).await;
    o.check(alive, "GET /health not answered after the malformed bodies");
    o.check_healthy(
        recover(d.addr, &ledger, ctx.recover_limit()).await,
        ctx.recover_limit(),
    );
    settle(ctx, &mut o, &ledger, &recv, &s).await;
    o.check(o.lost == 0, format!("{} acknowledged points lost", o.lost));
    let (delivered, _) = recv.delivered();
    let partial: u64 = ledger
        .refused()
        .iter()
        .flat_map(|r| r.clone())
        .filter(|q| delivered.contains_key(q))
        .count() as u64;
    o.check(
        partial == 0,
        format!("{partial} points of refused writes arrived (partial acceptance)"),
    );
    for (kind, answers) in by_kind {
        let a: Vec<String> = answers.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        o.note(format!("{kind}: {}", a.join(" ")));
    }
    done(o, &d)
}
