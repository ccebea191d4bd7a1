//! A real full disk (issue 11): the fail-cache and the WAL on a 2 MiB tmpfs that fills up
//! while the endpoint fails, then grows (remounted at 64 MiB) while the endpoint recovers.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Where `mount` fails these tests print why and pass,
//! unless `DATAWAY_REQUIRE_ROOT_TESTS=1` is set (CI sets it), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs mounted on a scratch directory, unmounted when dropped (on panic too).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`), or says why not: `None` when the test should skip.
    fn mount(what: &str, size: &str) -> Option<Tmpfs> {
        let dir = scratch_dir(what).join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { dir }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        let why = format!("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {why}");
        if std::env::var("DATAWAY_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("{why}; DATAWAY_REQUIRE_ROOT_TESTS=1 requires this test to run");
        }
        eprintln!("skipped: {why}");
        None
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the file system bigger, as freeing space would.
    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still held (a daemon task after a panic): detached now, freed when let go.
            drop(Command::new("umount").arg("-l").arg(&self.dir).status());
        }
    }
}

/// Waits (up to `secs`, a limit for a stuck daemon) until `f` holds.
async fn until(secs: u64, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn metric(text: &str, series: &str) -> u64 {
    sample(text, series).unwrap_or(0.0) as u64
}

/// The fail-cache fills the tmpfs while the endpoint answers 503: new bodies are kept by
/// shedding the oldest (`disk_full`), not dropped as `write_error`. Once the disk has room
/// and the endpoint is back, the cache drains to empty by itself. Every acknowledged point
/// is delivered exactly once or counted as dropped, never both; the store metrics moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_cache_on_a_full_disk_sheds_the_oldest_and_drains_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("full-disk-fc", "2m") else {
        return;
    };
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &format!(
            "gzip = false\nworkers = 1\nmax_retry_count = 1\nretry_delay = \"10ms\"\n\
             max_retry_delay = \"50ms\"\n[dataway.fail_cache]\npath = \"{}\"\n\
             max_capacity = 1073741824\nclean_interval = \"200ms\"",
            fs.path().display()
        ),
        "",
    ))
    .await;
    let ep = format!("http://{}?token=***", dw.addr);
    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let dropped = |reason: &str| {
        series(
            "dataway_failcache_dropped_total",
            &format!("endpoint=\"{ep}\",reason=\"{reason}\""),
        )
    };
    let records = series("dataway_failcache_records", &format!("endpoint=\"{ep}\""));
    // ~100 KB bodies: about 15 fit in 2 MiB; 40 are written.
    const BATCHES: u64 = 40;
    const PER: u64 = 2000;
    for i in 0..BATCHES {
        let body = lines("cpu", PER as usize, (i * PER) as usize);
        assert_eq!(d.post("metric", body).await.status(), 200);
    }
    let m = d.metrics.clone();
    let accounted = |text: &str| {
        ["disk_full", "full", "write_error"]
            .iter()
            .map(|r| metric(text, &dropped(r)))
            .sum::<u64>()
            + metric(text, &records)
    };
    assert!(
        until(120, || accounted(&m.encode_text()) == BATCHES).await,
        "every body kept or counted: {}",
        m.encode_text()
    );
    let text = m.encode_text();
    assert!(
        metric(&text, &dropped("disk_full")) > 0,
        "the disk never filled"
    );
    assert_eq!(metric(&text, &dropped("write_error")), 0, "{text}");
    let store = format!("store=\"failcache\",name=\"{ep}\"");
    assert!(metric(&text, &series("dataway_store_io_errors_total", &store)) > 0);
    assert!(
        metric(
            &text,
            &series(
                "dataway_store_reopens_total",
                &format!("{store},result=\"ok\"")
            )
        ) > 0
    );
    // Space back, endpoint back: the cache drains by itself.
    fs.grow("64m");
    dw.set_default(None);
    assert!(
        until(120, || metric(&m.encode_text(), &records) == 0).await,
        "the cache did not drain: {}",
        m.encode_text()
    );
    let text = m.encode_text();
    d.stop().await;
    // Per batch: delivered exactly once, or not at all and counted.
    let got = seqs(&dw);
    let mut lost = 0;
    for i in 0..BATCHES {
        let n: Vec<usize> = (i * PER..(i + 1) * PER)
            .map(|s| got.get(&s).copied().unwrap_or(0))
            .collect();
        assert!(
            n.iter().all(|&k| k == 1) || n.iter().all(|&k| k == 0),
            "batch {i} partly delivered or duplicated"
        );
        lost += u64::from(n[0] == 0);
    }
    let counted = metric(&text, &dropped("disk_full")) + metric(&text, &dropped("full"));
    assert_eq!(lost, counted, "bodies not delivered vs counted as dropped");
    assert_eq!(
        metric(
            &text,
            "dataway_dropped_points_total{category=\"metric\",reason=\"failcache_disk_full\"}"
        ) + metric(
            &text,
            "dataway_dropped_points_total{category=\"metric\",reason=\"failcache_full\"}"
        ),
        lost * PER
    );
    assert_eq!(
        got.get(&(BATCHES * PER - 1)),
        Some(&1),
        "the newest is kept"
    );
}

/// The WAL on a full tmpfs: writes that cannot be logged are answered 503 (not
/// acknowledged); once the disk has room they are taken again without a restart, and every
/// acknowledged point is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_on_a_full_disk_answers_503_and_takes_writes_again_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("full-disk-wal", "2m") else {
        return;
    };
    let dw = MockDataway::start().await;
    // The endpoint keeps failing and its batches keep retrying (100 retries, up to 2 s apart,
    // and no fail-cache to hand them to): nothing leaves the log meanwhile.
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &format!(
            "gzip = false\nmax_retry_count = 100\nretry_delay = \"500ms\"\n\
             max_retry_delay = \"2s\"\n[dataway.wal]\nenabled = true\npath = \"{}\"\n\
             [dataway.fail_cache]\nenabled = false",
            fs.path().display()
        ),
        "",
    ))
    .await;
    const PER: usize = 2000;
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let status = d
            .post("metric", lines("cpu", PER, i * PER))
            .await
            .status()
            .as_u16();
        match status {
            200 => acked.push(i),
            503 => refused += 1,
            s => panic!("write {i}: {s}"),
        }
    }
    assert!(refused > 0, "the WAL never filled the disk");
    let text = d.metrics.encode_text();
    assert!(
        metric(
            &text,
            "dataway_store_io_errors_total{store=\"wal\",name=\"wal\"}"
        ) > 0
    );
    fs.grow("64m");
    // Taken again by itself once the store reopens (after its backoff, at most 10 s).
    let mut taken = false;
    for _ in 0..600 {
        let i = 1000 + acked.len();
        if d.post("metric", lines("cpu", PER, i * PER)).await.status() == 200 {
            acked.push(i);
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the WAL did not take writes again");
    assert!(
        metric(
            &d.metrics.encode_text(),
            "dataway_store_reopens_total{store=\"wal\",name=\"wal\",result=\"ok\"}"
        ) > 0
    );
    dw.set_default(None);
    let want: Vec<u64> = acked
        .iter()
        .flat_map(|&i| (i * PER) as u64..((i + 1) * PER) as u64)
        .collect();
    assert!(
        until(120, || {
            let got = seqs(&dw);
            want.iter().all(|s| got.contains_key(s))
        })
        .await,
        "acknowledged points not delivered"
    );
    d.stop().await;
}

/// The chaos row "WAL on a full disk" at test size: the WAL and the fail-cache share a full
/// tmpfs while the endpoint fails. Bodies that fail after retries cannot go to the
/// fail-cache (the WAL filled the disk), and nothing already in the cache is shed (it was
/// acknowledged and has left the WAL): the WAL holds them and the endpoint sends them again.
/// Once the disk has room and the endpoint is back, every acknowledged point is delivered
/// without a restart, and nothing is counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wal_on_a_full_disk_loses_no_acknowledged_point_and_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount("full-disk-wal-fc", "2m") else {
        return;
    };
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(503)));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        &format!(
            "gzip = false\nmax_retry_count = 1\nretry_delay = \"10ms\"\n\
             max_retry_delay = \"50ms\"\n[dataway.wal]\nenabled = true\npath = \"{}\"\n\
             [dataway.fail_cache]\npath = \"{}\"\nclean_interval = \"200ms\"",
            fs.path().join("wal").display(),
            fs.path().join("fc").display()
        ),
        "",
    ))
    .await;
    const PER: usize = 2000;
    let mut acked = Vec::new();
    for i in 0..40 {
        match d
            .post("metric", lines("cpu", PER, i * PER))
            .await
            .status()
            .as_u16()
        {
            200 => acked.push(i),
            503 => {}
            s => panic!("write {i}: {s}"),
        }
    }
    assert!(acked.len() < 40, "the disk never filled");
    // The fail-cache refused a body (counted as its `write_error`; the body stays in the
    // WAL, so no point is counted as dropped).
    let refused = format!(
        "dataway_failcache_dropped_total{{endpoint=\"http://{}?token=***\",reason=\"write_error\"}}",
        dw.addr
    );
    let m = d.metrics.clone();
    assert!(
        until(60, || metric(&m.encode_text(), &refused) > 0).await,
        "the fail-cache never refused a body: {}",
        m.encode_text()
    );
    fs.grow("64m");
    dw.set_default(None);
    let want: Vec<u64> = acked
        .iter()
        .flat_map(|&i| (i * PER) as u64..((i + 1) * PER) as u64)
        .collect();
    assert!(
        until(120, || {
            let got = seqs(&dw);
            want.iter().all(|s| got.contains_key(s))
        })
        .await,
        "acknowledged points not delivered without a restart: {} of {}",
        {
            let got = seqs(&dw);
            want.iter().filter(|s| got.contains_key(s)).count()
        },
        want.len()
    );
    let text = m.encode_text();
    let dropped: f64 = samples_matching(&text, "dataway_dropped_points_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(dropped, 0.0, "{text}");
    d.stop().await;
}
