//! The attacks of issue 11, one function per row, each bounded in time. Every row runs a
//! fresh daemon on its own config and scratch directory against a fresh stand-in Dataway
//! (set up and counted by `row`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::load::{self, Client};
use crate::receiver::Mode;
use crate::report::Outcome;
use crate::row::{Cfg, Ctx, Row};

// ---------------------------------------------------------------------------------------
// (1) gzip bomb

/// 32 MiB of `a v=1` lines gzipped (~49 KB), sent once and then 4 at a time to a daemon on
/// its default config. The quick form sends 4 MiB bombs: a debug build takes minutes to
/// parse the full ones.
pub async fn gzip_bomb(ctx: &Ctx) -> Outcome {
    let mib: u64 = if ctx.quick { 4 } else { 32 };
    let o = Outcome::new(&format!(
        "gzip bomb: {mib} MiB of `a v=1` gzipped, 1 then 4 at once"
    ));
    let mut r = match Row::start(ctx, o, "gzip-bomb", Cfg::DEFAULTS).await {
        Ok(r) => r,
        Err(o) => return o,
    };
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
    r.o.note(format!(
        "each bomb: {} bytes gzipped, {lines_per_bomb} points",
        bomb.len()
    ));
    let addr = r.d.addr;
    let send = |bomb: Bytes| async move {
        let mut c = Client::new(addr, Duration::from_secs(300));
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
    r.o.note(format!(
        "answers: {} in {:.1} s; /health during the bombs: slowest {:.2} s, {failures} not answered within 2 s",
        statuses.join(", "),
        fault_end.as_secs_f64(),
        worst.as_secs_f64()
    ));
    r.check_recovered(Instant::now()).await;
    let acked = ok * lines_per_bomb;
    let (limit, quiet) = ctx.drain();
    r.recv
        .drain(limit.max(Duration::from_secs(120)), quiet, |_, anon| {
            anon >= acked
        })
        .await;
    let (seqs, anon) = r.recv.delivered();
    // The bomb's points carry no seq: counted in bulk. The probe's do.
    let probe_acked: Vec<u64> = r.ledger.acked().into_iter().flatten().collect();
    let probe_lost = probe_acked.iter().filter(|q| !seqs.contains_key(q)).count() as u64;
    let o = &mut r.o;
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
    r.peaks();
    r.judge_rss();
    r.done()
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
    let o = Outcome::new("1,100 idle TCP connections to the ingest port");
    let mut r = match Row::start(ctx, o, "idle", Cfg::FAST).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        match TcpStream::connect(r.d.addr).await {
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
                r.o.note(format!("connection {i} refused: {e}"));
                break;
            }
        }
    }
    r.o.note(format!("{} idle connections open", conns.len()));
    // While they are open: /health on a new connection, and a write.
    let t = Instant::now();
    let health = load::healthy(r.d.addr).await;
    r.o.check(
        health,
        format!("GET /health not answered within 2 s with {N} idle connections open"),
    );
    let mut client = Client::new(r.d.addr, Duration::from_secs(10));
    let wrote = load::write(&mut client, &r.ledger, "idle", 100).await;
    r.o.check(
        wrote,
        format!("a write was not acknowledged within 10 s with {N} idle connections open"),
    );
    r.o.note(format!(
        "with them open, /health and a write took {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    r.peaks();
    drop(conns);
    r.check_recovered(Instant::now()).await;
    r.settle().await;
    r.check_none_lost("");
    r.done()
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
    let wal_on = wal && !ctx.sabotage_wal;
    if wal && !wal_on {
        o.note("--sabotage: the WAL is OFF in this WAL-on row; it must FAIL");
    }
    let name = if wal { "kill9-wal" } else { "kill9-nowal" };
    let cfg = Cfg {
        wal: wal_on,
        ..Cfg::FAST
    };
    let mut r = match Row::start(ctx, o, name, cfg).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let load = r.load("kill9");
    let half = ctx.window() / 2;
    tokio::time::sleep(half).await;
    r.recv.set_mode(Mode::Hang);
    tokio::time::sleep(half).await;
    r.peaks();
    r.d.kill9();
    load.stop().await;
    r.recv.set_mode(Mode::Up);
    let t0 = Instant::now();
    if let Err(e) = r.start_again().await {
        return r.fail(format!("restart after kill -9: {e}"));
    }
    r.check_recovered(t0).await;
    r.settle().await;
    r.o.check(
        r.o.acked > 0,
        "nothing was acknowledged before the kill: the attack did nothing",
    );
    if wal {
        r.check_none_lost(" with the WAL on");
    } else {
        r.o.note(format!(
            "{} acknowledged points lost: expected with the WAL off (points in memory)",
            r.o.lost
        ));
    }
    r.o.note("healthy after: from the restart (start-up and WAL replay included)");
    r.done()
}

// ---------------------------------------------------------------------------------------
// (4), (5) full disk

/// The fail-cache's data dir is a 2 MiB tmpfs; the stand-in is down for the window under
/// load; then the disk grows and the stand-in comes back. A second, short outage after that
/// must go through the fail-cache losing nothing: the store recovered by itself.
pub async fn failcache_full(ctx: &Ctx) -> Outcome {
    let o = Outcome::new("fail-cache on a full disk (2 MiB tmpfs), outage, then space freed");
    let cfg = Cfg {
        tmpfs: Some("2m"),
        ..Cfg::FAST
    };
    let mut r = match Row::start(ctx, o, "failcache-full", cfg).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    r.fault("fcfull", Mode::Down, ctx.disk_window()).await;
    const NEVER_FILLED: &str = "the disk never filled (no ENOSPC, nothing dropped): the attack did nothing; raise the load";
    if let Err(e) = r.free_the_disk(NEVER_FILLED).await {
        return r.fail(e);
    }
    r.drain().await;

    // Phase 2: space is back; a short outage must cost nothing.
    let mark = r.ledger.mark();
    r.fault("fcfull2", Mode::Down, Duration::from_secs(3)).await;
    r.recv.set_mode(Mode::Up);
    r.settle().await;
    let (delivered, _) = r.recv.delivered();
    let lost_after: u64 = r
        .ledger
        .acked()
        .iter()
        .flat_map(|a| a.start.max(mark)..a.end)
        .filter(|q| !delivered.contains_key(q))
        .count() as u64;
    let drops = r
        .metric_sum("dataway_dropped_points_total")
        .await
        .unwrap_or(0.0) as u64;
    let o = &mut r.o;
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
    r.done()
}

/// The WAL (and fail-cache) data dir is a 2 MiB tmpfs; the stand-in hangs under load so the
/// WAL fills; then the disk grows and the stand-in comes back. Nothing acknowledged may be
/// lost, and writes must be taken again without a restart.
pub async fn wal_full(ctx: &Ctx) -> Outcome {
    let o = Outcome::new("WAL on a full disk (2 MiB tmpfs), then space freed");
    let cfg = Cfg {
        wal: true,
        tmpfs: Some("2m"),
        ..Cfg::FAST
    };
    let mut r = match Row::start(ctx, o, "wal-full", cfg).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    r.fault("walfull", Mode::Hang, ctx.window()).await;
    const NEVER_FILLED: &str = "the disk never filled (no ENOSPC logged, nothing dropped): the attack did nothing; raise the load";
    if let Err(e) = r.free_the_disk(NEVER_FILLED).await {
        return r.fail(e);
    }
    r.settle().await;
    r.check_none_lost(" with the WAL on");
    // With the WAL on, a body the fail-cache cannot take is held, not dropped.
    let drops = r
        .metric_sum("dataway_dropped_points_total")
        .await
        .unwrap_or(0.0) as u64;
    r.o.check(
        drops == 0,
        format!("{drops} points counted as dropped with the WAL on"),
    );
    r.done()
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
    let o =
        Outcome::new("plugin files: FIFO x.wasm, symlinks to /dev/zero and a 1 GiB sparse file");
    let cfg = Cfg {
        tail: HOSTILE_SINKERS,
        ..Cfg::FAST
    };
    let mut r = match Row::start(ctx, o, "hostile-plugins", cfg).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let load = r.load("hostile");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let plugins = r.dir.join("plugins");
    let sparse = r.dir.join("sparse-1g");
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
        return r.fail(format!("cannot make the hostile files: {e}"));
    }
    let t0 = Instant::now();
    // Each file is named in a warning once the reload has looked at it.
    let deadline = t0 + Duration::from_secs(30);
    let mut missing: Vec<&str> = vec!["x.wasm", "zero.wasm", "big.wasm"];
    while !missing.is_empty() && Instant::now() < deadline {
        let log = r.d.log();
        missing.retain(|f| {
            let p = plugins.join(f).display().to_string();
            !log.lines()
                .any(|l| l.contains("cannot read plugin") && l.contains(&p))
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.o.check(
        missing.is_empty(),
        format!("no \"cannot read plugin\" warning within 30 s for {missing:?}"),
    );
    r.o.check(
        load::healthy(r.d.addr).await,
        "GET /health not answered with the hostile files in place",
    );
    load.stop().await;
    r.check_recovered(t0).await;
    r.o.note("healthy after: from dropping the files");
    r.settle().await;
    r.check_none_lost("");
    r.judge_rss();
    match r.d.terminate(Duration::from_secs(30)).await {
        Some((st, took)) => {
            r.o.note(format!(
                "SIGTERM: exited ({st}) in {:.1} s",
                took.as_secs_f64()
            ));
            r.o.check(st.success(), format!("SIGTERM: exit status {st}"));
        }
        None => {
            r.o.check(false, "SIGTERM did not stop the daemon within 30 s")
        }
    }
    r.done()
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
    let o = Outcome::new(&format!("{n} malformed bodies mixed with good writes"));
    let mut r = match Row::start(ctx, o, "malformed", Cfg::FAST).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let control = r.load("control");
    let mut client = Client::new(r.d.addr, Duration::from_secs(30));
    let mut by_kind: std::collections::BTreeMap<&str, std::collections::BTreeMap<String, u32>> =
        Default::default();
    for i in 0..n {
        let seqs = r.ledger.take(20);
        let bad = malformed(i, seqs.clone(), huge_every);
        let answer = client
            .send("POST", bad.path, &bad.headers, Bytes::from(bad.body))
            .await;
        r.ledger.settle(seqs, &answer);
        if bad.kind == "over max_body" {
            // The daemon answers 413 before reading it all and closes the connection: a
            // new one for the next body, so its failure is not counted against that body.
            client = Client::new(r.d.addr, Duration::from_secs(30));
        }
        let key = match &answer {
            Ok((s, _)) => s.to_string(),
            Err(_) => "error".into(),
        };
        *by_kind.entry(bad.kind).or_default().entry(key).or_default() += 1;
    }
    control.stop().await;
    let alive = load::healthy(r.d.addr).await;
    r.o.check(alive, "GET /health not answered after the malformed bodies");
    r.check_recovered(Instant::now()).await;
    r.settle().await;
    r.check_none_lost("");
    let (delivered, _) = r.recv.delivered();
    let partial: u64 = r
        .ledger
        .refused()
        .iter()
        .flat_map(|a| a.clone())
        .filter(|q| delivered.contains_key(q))
        .count() as u64;
    r.o.check(
        partial == 0,
        format!("{partial} points of refused writes arrived (partial acceptance)"),
    );
    for (kind, answers) in by_kind {
        let a: Vec<String> = answers.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        r.o.note(format!("{kind}: {}", a.join(" ")));
    }
    r.done()
}
