//! The daemon under attack: the real binary as a child process, started on a config file
//! whose ingest listens on port 0 (its address read from the "ingest server listening" log
//! line, so no free-port race), its stderr kept for the report; and what it costs the host
//! (peak RSS and open descriptors, read from `/proc`).

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A limit for a daemon that never comes up, not a speed requirement.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running `dataway run -c FILE`.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `bin run -c cfg` with `XDG_CACHE_HOME=xdg` (never the user's cache) and waits
    /// for its ingest address. Its log is kept, and appended to `daemon.log` beside `cfg`.
    pub async fn start(bin: &Path, cfg: &Path, xdg: &Path) -> Result<Daemon, String> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.with_file_name("daemon.log"))
            .ok();
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(cfg)
            .env_remove("ENV_DATAWAY")
            .env_remove("ENV_DATAWAY_TIMEOUT")
            .env_remove("ENV_DATAWAY_HTTP_PROXY")
            .env_remove("RUST_LOG")
            .env("XDG_CACHE_HOME", xdg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (build it, or pass --daemon PATH)",
                    bin.display()
                )
            })?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let l = log.clone();
        // Drained for the whole life of the process: a full pipe would block its logging.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let mut text = l.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let pid = child.id();
        let mut d = Daemon {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            pid,
            log,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let line = d
                .log()
                .lines()
                .find(|x| x.contains("ingest server listening"))
                .map(String::from);
            if let Some(line) = line {
                d.addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("no listen= address in {line}"))?;
                return Ok(d);
            }
            if !d.alive() || Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not report its ingest address:\n{}",
                    d.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last `n` lines of the log, for a failure report.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Still running (not exited, not reaped).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// kill -9, and reap it: no drain, no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; past it, kill -9 and `None`.
    pub async fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let mut c = self.child.take()?;
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                return Some((st, t0.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Daemon {
    /// A failed row must not leave a daemon behind.
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Peak RSS and open descriptors of the daemon, sampled from `/proc` while a row runs
/// (the process may change: a kill -9 row restarts it).
pub struct Sampler {
    pid: Arc<AtomicU32>,
    rss_kib: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let pid = Arc::new(AtomicU32::new(pid));
        let (rss_kib, fds, stop): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>) =
            Default::default();
        let (p, r, f, s) = (pid.clone(), rss_kib.clone(), fds.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                sample(p.load(Ordering::SeqCst), &r, &f);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Sampler {
            pid,
            rss_kib,
            fds,
            stop,
            task: Some(task),
        }
    }

    /// From now on, sample this process (a restarted daemon).
    pub fn watch(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
        sample(pid, &self.rss_kib, &self.fds);
    }

    /// Peak RSS in KiB and peak open descriptors so far (sampled once more now).
    pub fn peaks(&self) -> (u64, u64) {
        sample(self.pid.load(Ordering::SeqCst), &self.rss_kib, &self.fds);
        (
            self.rss_kib.load(Ordering::SeqCst),
            self.fds.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// VmHWM (the kernel's own peak, so a spike between samples still counts) and VmRSS, and
/// the entries of /proc/PID/fd; a process that is gone reads as nothing.
fn sample(pid: u32, rss_kib: &AtomicU64, fds: &AtomicU64) {
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("VmHWM:")
                .or_else(|| line.strip_prefix("VmRSS:"))
            {
                let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                rss_kib.fetch_max(kib, Ordering::SeqCst);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        fds.fetch_max(dir.count() as u64, Ordering::SeqCst);
    }
}

/// The daemon binary: `--daemon PATH`, else the release build of the target directory if
/// there is one, else the debug build.
pub fn default_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let release = target.join("release/dataway");
    if release.is_file() {
        release
    } else {
        target.join("debug/dataway")
    }
}
