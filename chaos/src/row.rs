//! What every attack row sets up and takes down, so that `attacks` reads as the attacks
//! only: a scratch dir, a fresh stand-in Dataway, a config on it, a fresh daemon on that
//! config and a sampler of what it costs, the ledger of its writes, and at the end the
//! count of what arrived and the verdict.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

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
    pub fn recover_limit(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// How long deliveries may take after the load, and how long without any delivery
    /// means the daemon has nothing more to send.
    pub fn drain(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_secs(45), Duration::from_secs(4))
        } else {
            (Duration::from_secs(120), Duration::from_secs(15))
        }
    }

    /// The fault window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 30 })
    }

    /// The outage that must fill a 2 MiB fail-cache (a debug build stores bodies slowly).
    pub fn disk_window(&self) -> Duration {
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
}

/// A row's config: the stand-in as the only endpoint, `[dataway]` keys `dataway`,
/// `[dataway.fail_cache]` keys `fail_cache`, WAL on or off, data under the row's dir (or
/// on a tmpfs), and `tail` appended.
#[derive(Clone, Copy)]
pub struct Cfg {
    pub dataway: &'static str,
    pub fail_cache: &'static str,
    pub wal: bool,
    /// The data dir (fail-cache and WAL) is a tmpfs of this size; without root to mount
    /// it, the row is skipped.
    pub tmpfs: Option<&'static str>,
    /// Appended as it is, but for `URL`, which stands for the stand-in's URL.
    pub tail: &'static str,
}

impl Cfg {
    /// The daemon's own defaults for all but the endpoint and the paths.
    pub const DEFAULTS: Cfg = Cfg {
        dataway: "",
        fail_cache: "",
        wal: false,
        tmpfs: None,
        tail: "",
    };

    /// Retries that give up fast, so a fault reaches the fail-cache within the window.
    pub const FAST: Cfg = Cfg {
        dataway: "timeout = \"3s\"\nretry_delay = \"50ms\"\nmax_retry_delay = \"500ms\"\nmax_retry_count = 1\n",
        fail_cache: "clean_interval = \"500ms\"\n",
        ..Cfg::DEFAULTS
    };

    /// Writes the config file into `dir`, with data under `data`.
    fn write(&self, dir: &Path, data: &Path, recv: &Receiver) -> PathBuf {
        let text = format!(
            "[dataway]\nurls = [\"{url}\"]\nplugins_dir = \"{plugins}\"\n{dw}\n\
             [dataway.fail_cache]\npath = \"{fc}\"\n{fcx}\n\
             [dataway.wal]\nenabled = {wal}\npath = \"{walp}\"\n\
             [dataway.sinker_limits]\ncache_dir = \"{cache}\"\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n\n{tail}\n",
            url = recv.url(),
            plugins = dir.join("plugins").display(),
            dw = self.dataway,
            fc = data.join("failcache").display(),
            fcx = self.fail_cache,
            wal = self.wal,
            walp = data.join("wal").display(),
            cache = dir.join("plugin-cache").display(),
            tail = self.tail.replace("URL", &recv.url()),
        );
        let path = dir.join("dataway.toml");
        std::fs::write(&path, text).expect("write the config");
        path
    }
}

/// A row under way: its outcome so far, the ledger of its writes, the daemon and the
/// sampler watching it, its config file, the stand-in, its tmpfs and its scratch dir.
/// Fields drop in this order: the daemon is killed before its tmpfs is unmounted.
pub struct Row<'c> {
    pub ctx: &'c Ctx,
    pub o: Outcome,
    pub ledger: Arc<Ledger>,
    pub s: Sampler,
    pub d: Daemon,
    cfg: PathBuf,
    pub recv: Receiver,
    disk: Option<Tmpfs>,
    pub dir: PathBuf,
}

impl<'c> Row<'c> {
    /// Sets up the row `o` in the scratch dir `name` and starts its daemon on `cfg`.
    /// `Err`: the row as it ends already (skipped, or failed to start).
    pub async fn start(ctx: &'c Ctx, o: Outcome, name: &str, cfg: Cfg) -> Result<Self, Outcome> {
        let dir = ctx.dir(name);
        let disk = match cfg.tmpfs {
            Some(size) => match Tmpfs::mount(&dir.join("disk"), size) {
                Ok(t) => Some(t),
                Err(e) => {
                    // Named by the attack's title up to its details in brackets.
                    let what = o
                        .attack
                        .split_once(" (")
                        .map_or(&*o.attack, |(what, _)| what);
                    eprintln!("{what}: mount failed: {e}");
                    return Err(Outcome::skipped(&o.attack, NEEDS_ROOT));
                }
            },
            None => None,
        };
        let recv = Receiver::start().await;
        let data = disk
            .as_ref()
            .map_or_else(|| dir.join("data"), |t| t.0.clone());
        let cfg = cfg.write(&dir, &data, &recv);
        let d = match ctx.start(&cfg).await {
            Ok(d) => d,
            Err(e) => return Err(failed(o, e)),
        };
        let s = Sampler::start(d.pid);
        Ok(Row {
            ctx,
            o,
            ledger: Arc::default(),
            s,
            d,
            cfg,
            recv,
            disk,
            dir,
        })
    }

    /// Writers posting points tagged `row=tag` to the daemon until stopped.
    pub fn load(&self, tag: &'static str) -> Load {
        Load::start(self.d.addr, self.ledger.clone(), tag, self.ctx.shape())
    }

    /// Under load: a second, then the stand-in in `mode` for `window`, then the load stops
    /// (the stand-in stays in `mode`).
    pub async fn fault(&self, tag: &'static str, mode: Mode, window: Duration) {
        let load = self.load(tag);
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.recv.set_mode(mode);
        tokio::time::sleep(window).await;
        load.stop().await;
    }

    /// Starts the daemon again on the same config (after a kill -9), watched from now on.
    pub async fn start_again(&mut self) -> Result<(), String> {
        self.d = self.ctx.start(&self.cfg).await?;
        self.s.watch(self.d.pid);
        Ok(())
    }

    /// The daemon must answer GET /health and acknowledge a write again within the
    /// recovery limit; how soon is counted from `since` (when the fault ended).
    pub async fn check_recovered(&mut self, since: Instant) {
        let limit = self.ctx.recover_limit();
        let t0 = Instant::now();
        let mut client = Client::new(self.d.addr, Duration::from_secs(3));
        let after = loop {
            if load::healthy(self.d.addr).await
                && load::write(&mut client, &self.ledger, "probe", 10).await
            {
                break Some(since.elapsed());
            }
            if t0.elapsed() > limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.o.check_healthy(after, limit);
    }

    /// Peak RSS and descriptors of the daemon so far, into the row.
    pub fn peaks(&mut self) {
        (self.o.peak_rss_kib, self.o.peak_fds) = self.s.peaks();
    }

    /// Waits for every acknowledged point to arrive (or quiet, or the limit).
    pub async fn drain(&self) {
        let (limit, quiet) = self.ctx.drain();
        self.recv
            .drain(limit, quiet, |d, _| self.ledger.all_delivered(d, 0))
            .await;
    }

    /// Drains, then counts the row: acknowledged against delivered, and the peaks.
    pub async fn settle(&mut self) {
        self.drain().await;
        let (delivered, _) = self.recv.delivered();
        self.o.count(&self.ledger.acked(), &delivered);
        self.peaks();
        self.o
            .note(format!("ingest answers: {}", self.ledger.statuses()));
    }

    /// No acknowledged point may be lost (`with`: under what, for the rule's text).
    pub fn check_none_lost(&mut self, with: &str) {
        let lost = self.o.lost;
        self.o
            .check(lost == 0, format!("{lost} acknowledged points lost{with}"));
    }

    pub fn judge_rss(&mut self) {
        let mib = self.o.peak_rss_kib / 1024;
        if self.ctx.judge_rss {
            let budget = self.ctx.rss_budget_mib;
            self.o.check(
                mib <= budget,
                format!("peak RSS {mib} MiB is over {budget} MiB"),
            );
        } else {
            self.o.note(format!(
                "peak RSS {mib} MiB not judged (not a release build)"
            ));
        }
    }

    /// The sum of a counter's series in the daemon's /metrics.
    pub async fn metric_sum(&self, name: &str) -> Option<f64> {
        let mut c = Client::new(self.d.addr, Duration::from_secs(5));
        let (_, text) = c.send("GET", "/metrics", &[], Bytes::new()).await.ok()?;
        let text = String::from_utf8_lossy(&text).into_owned();
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// After a fault on the row's tmpfs: it must have run full (else `rule` is broken);
    /// then it grows, the stand-in comes back up, and the daemon must recover by itself.
    /// `Err`: the tmpfs could not grow.
    pub async fn free_the_disk(&mut self, rule: &str) -> Result<(), String> {
        let drops = self
            .metric_sum("dataway_dropped_points_total")
            .await
            .unwrap_or(0.0);
        // The daemon said the disk is full, or dropped bodies it could not store.
        let log = self.d.log();
        let filled =
            drops > 0.0 || log.contains("No space left on device") || log.contains("os error 28");
        self.o.check(filled, rule);
        let disk = self.disk.as_ref().expect("a row with a tmpfs");
        disk.grow("256m")
            .map_err(|e| format!("remount the tmpfs bigger: {e}"))?;
        self.recv.set_mode(Mode::Up);
        self.check_recovered(Instant::now()).await;
        Ok(())
    }

    /// The row as it ends: with the daemon's last log lines if it failed.
    pub fn done(mut self) -> Outcome {
        if !self.o.broken.is_empty() {
            self.o.log_tail = Some(self.d.log_tail(20));
        }
        self.o
    }

    /// The row as it ends, failed for `why`.
    pub fn fail(self, why: String) -> Outcome {
        failed(self.o, why)
    }
}

fn failed(mut o: Outcome, why: String) -> Outcome {
    o.check(false, why);
    o
}

const NEEDS_ROOT: &str = "needs root to mount a tmpfs";

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
