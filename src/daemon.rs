//! The daemon: one configuration in, a running ingest server and dataway out, stopped by a
//! cancellation token.
//!
//! Shutdown order matters: first ingest answers new writes 503 (still listening, so clients
//! see why) and finishes the ones in progress, whose points are then queued; then the
//! dataway drains its queues; both within `shutdown_timeout`. What is still undelivered then
//! is reported and counted, and only then does the listener close.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatawayConfig};
use crate::dataway::Dataway;
use crate::endpoint::{DrainReport, EndpointUrl, OpenCaches};
use crate::ingest::{self, IngestState};
use crate::instance::{self, DirLock};
use crate::metrics::Metrics;
use crate::sinker::reload::Reloader;
use crate::wal::{OpenError, Wal};

/// A daemon whose parts are started and whose server is not yet serving.
pub struct Daemon {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub dataway: Arc<Dataway>,
    pub reloader: Arc<Reloader>,
    watcher: tokio::task::JoinHandle<()>,
    stop_watching: CancellationToken,
    wal: Option<Arc<Wal>>,
    /// The data directories this daemon claimed ([`crate::instance`]), until it is dropped.
    _locks: Vec<DirLock>,
}

/// Claims the directories another daemon must not share: the fail-cache's (when some
/// endpoint is HTTP: only those cache) and the WAL's.
fn claim_dirs(config: &Config) -> anyhow::Result<Vec<DirLock>> {
    let d = &config.dataway;
    let me = instance::describe_self(&config.ingest.listen.to_string());
    let http = |u: &String| matches!(EndpointUrl::parse(u), Ok(EndpointUrl::Http { .. }));
    let caches = d
        .urls
        .iter()
        .chain(d.sinkers.iter().flat_map(|s| &s.urls))
        .any(http);
    let mut wanted: Vec<(&Path, &'static str)> = Vec::new();
    if d.fail_cache.enabled && caches {
        wanted.push((&d.fail_cache.path, "dataway.fail_cache.path"));
    }
    if d.wal.enabled {
        wanted.push((&d.wal.path, "dataway.wal.path"));
    }
    let mut locks: Vec<DirLock> = Vec::new();
    let mut claimed: Vec<PathBuf> = Vec::new();
    for (dir, key) in wanted {
        // One directory for both is claimed once.
        let same = std::fs::canonicalize(dir)
            .ok()
            .is_some_and(|c| claimed.contains(&c));
        if same {
            continue;
        }
        match instance::claim(dir, key, &me) {
            Ok(lock) => {
                claimed.extend(std::fs::canonicalize(dir).ok());
                locks.push(lock);
            }
            Err(e @ instance::ClaimError::Held { .. }) => return Err(e.into()),
            // A directory that cannot be made or locked (a file in its place, no space, a
            // read-only disk) is the fail-cache's or the WAL's to report and survive, as
            // they do; the daemon still starts.
            Err(e) => tracing::warn!("{e}; starting without the one-daemon-per-directory lock"),
        }
    }
    Ok(locks)
}

impl Daemon {
    /// Starts the endpoints and sinkers (their tasks run on the current runtime) and loads
    /// the plugins found in `plugins_dir`.
    pub fn start(config: Config) -> anyhow::Result<Daemon> {
        Daemon::start_with(config, None)
    }

    /// As [`Daemon::start`]; with `plugin_compiler` (the `dataway` executable) plugins are
    /// compiled in a short-lived child process, so the compiler's memory is not kept.
    pub fn start_with(config: Config, plugin_compiler: Option<PathBuf>) -> anyhow::Result<Daemon> {
        if config.dataway.tls_insecure {
            // Loud and at every start: anyone on the path can read and change the data.
            tracing::warn!(
                "dataway.tls_insecure is on: the TLS certificates of https:// endpoints are NOT \
                 verified, so anyone on the network path can impersonate Dataway and read or \
                 change the data; give the CA in dataway.tls_ca_file instead"
            );
        }
        let locks = claim_dirs(&config)?;
        let metrics = Arc::new(Metrics::new());
        // Sinker and main endpoints with the same URL share one fail-cache file.
        let caches = Arc::new(OpenCaches::default());
        let reloader = Arc::new(Reloader::new(
            &config.dataway,
            metrics.clone(),
            caches.clone(),
            plugin_compiler,
        )?);
        let sinkers = reloader.start_configured()?;
        let mut dataway = Dataway::start(&config.dataway, metrics.clone(), &caches, sinkers)?;
        let wal = if config.dataway.wal.enabled {
            let path = config.dataway.wal.path.join("wal.redb");
            let wal = open_wal(&path, &metrics).map_err(|e| {
                anyhow::anyhow!("dataway.wal.path: cannot open {}: {e}", path.display())
            })?;
            wal.set_spill_limit(config.dataway.wal.max_spill_bytes);
            dataway = dataway.with_wal(wal.clone());
            Some(wal)
        } else {
            None
        };
        let dataway = Arc::new(dataway);
        // Where the operator chooses (the WAL), say what a crash costs with this choice.
        tracing::info!(
            wal = config.dataway.wal.enabled,
            "{}",
            crash_loss(&config.dataway)
        );
        for ep in dataway.endpoints() {
            tracing::info!(endpoint = %ep.url(), "endpoint started");
        }
        // Watch first, then scan: a file that changes in between is seen by both, and
        // rescans are serialised, so nothing is missed or loaded twice.
        let stop_watching = CancellationToken::new();
        let watcher = reloader
            .clone()
            .spawn_watch(dataway.clone(), stop_watching.clone());
        reloader.rescan(&dataway);
        Ok(Daemon {
            config,
            metrics,
            dataway,
            reloader,
            watcher,
            stop_watching,
            wal,
            _locks: locks,
        })
    }

    /// As [`Daemon::start_with`], answering on `listener` meanwhile: while the plugins load
    /// (seconds, when they compile) `/health` and writes get 503 "starting" and
    /// `/health/live` 200 ([`ingest::serve_starting`], on a second handle of the socket);
    /// then the daemon is returned with the listener for [`Daemon::run`]: no connection is
    /// refused or left hanging in between.
    pub async fn start_serving(
        config: Config,
        listener: TcpListener,
        plugin_compiler: Option<PathBuf>,
    ) -> anyhow::Result<(Daemon, TcpListener)> {
        let listener = listener.into_std()?;
        let early = TcpListener::from_std(listener.try_clone()?)?;
        let listener = TcpListener::from_std(listener)?;
        let ready = CancellationToken::new();
        let starting = tokio::spawn({
            let (ingest, ready) = (config.ingest.clone(), ready.clone());
            // Its connection metrics are its own: the daemon's registry does not exist yet.
            let metrics = Arc::new(Metrics::new());
            async move { ingest::serve_starting(early, &ingest, metrics, ready).await }
        });
        let started =
            tokio::task::spawn_blocking(move || Daemon::start_with(config, plugin_compiler)).await;
        ready.cancel();
        if let Ok(Err(e)) = starting.await {
            tracing::warn!("answering while starting: {e}");
        }
        let daemon = started.map_err(|e| anyhow::anyhow!("starting: {e}"))??;
        Ok((daemon, listener))
    }

    /// Serves ingest on `listener` until `shutdown` is cancelled, then drains: new writes
    /// get 503 (the listener stays open, `/metrics` and `/health` answer), writes in
    /// progress finish and are queued, the queues are delivered, all within
    /// `shutdown_timeout`; then the listener closes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<DrainReport> {
        let state = Arc::new(IngestState {
            dataway: self.dataway.clone(),
            metrics: self.metrics.clone(),
            config: self.config.ingest.clone(),
            started: Instant::now(),
            drain: ingest::Drain::default(),
            replay_started: Arc::new(AtomicBool::new(self.wal.is_none())),
        });
        // Replay alongside serving: with an endpoint down, replaying can take as long as
        // its retries, and ingest must not wait for that. A stop ends it (the entries not
        // replayed yet stay in the WAL).
        let mut drainer = None;
        if let Some(wal) = self.wal.clone() {
            tokio::spawn(replay_wal(
                wal.clone(),
                self.dataway.clone(),
                state.replay_started.clone(),
            ));
            drainer = Some(tokio::spawn(drain_spilled(
                wal,
                self.dataway.clone(),
                shutdown.clone(),
            )));
        }
        tracing::info!(listen = %listener.local_addr()?, "ingest server listening");
        let close = CancellationToken::new();
        let mut server = tokio::spawn(ingest::serve(listener, state.clone(), close.clone()));
        // The server only ends on its own if it failed: drain what was accepted anyway.
        let ended = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = &mut server => Some(r),
        };
        let grace = self.config.dataway.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + grace;
        state.drain.start();
        tracing::info!(
            ?grace,
            "stopping: new writes get 503; finishing the writes in progress and draining the queues"
        );
        // Their points must be queued before the queues close, or they would get a 503 after
        // all. A client still uploading at the deadline gets one.
        let in_progress = state.drain.in_progress();
        if in_progress > 0 {
            tracing::info!(
                requests = in_progress,
                "waiting for the requests in progress"
            );
        }
        if tokio::time::timeout_at(deadline, state.drain.idle())
            .await
            .is_err()
        {
            tracing::warn!("writes still in progress at the shutdown deadline are refused");
        }
        self.stop_watching.cancel();
        let _ = self.watcher.await;
        let report = self
            .dataway
            .shutdown(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        // The drainer ends once the router is closed (what it had not queued stays in the
        // WAL); it holds the WAL open, so wait for it, a little.
        if let Some(d) = drainer
            && tokio::time::timeout(Duration::from_secs(5), d)
                .await
                .is_err()
        {
            tracing::warn!("the WAL drainer did not stop; its write stays in the WAL");
        }
        if let Some(wal) = &self.wal
            && wal.spilling()
        {
            tracing::info!(
                "writes spilled to the WAL and not queued yet stay there for the next start"
            );
        }
        tracing::info!(
            abandoned_points = report.abandoned_points,
            kept_in_fail_cache = report.persisted_points,
            "stopped"
        );
        close.cancel();
        let served = match ended {
            Some(r) => r,
            // Only answers of /metrics, /health and 503s can still be open: a second is plenty.
            None => match tokio::time::timeout(Duration::from_secs(1), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        served
            .map_err(|e| anyhow::anyhow!("ingest server: {e}"))?
            .map_err(|e| anyhow::anyhow!("ingest server: {e}"))?;
        Ok(report)
    }
}

/// What a crash (kill -9, OOM, power loss) loses of the points ingest acknowledged, with the
/// WAL as configured: one sentence for the start-up log and `dataway check`.
pub fn crash_loss(cfg: &DatawayConfig) -> String {
    if cfg.wal.enabled {
        "crash loss window (kill -9, OOM, power loss): none acknowledged; each write is \
         fsynced to the WAL before its 200 and replayed at the next start (some may be sent \
         twice)"
            .to_string()
    } else {
        let max = cfg.max_pending_bytes;
        let size = if max.is_multiple_of(1 << 20) {
            format!("{} MiB", max >> 20)
        } else {
            format!("{max} bytes")
        };
        let cached = if cfg.fail_cache.enabled {
            "; what is already in the fail-cache is kept"
        } else {
            ""
        };
        format!(
            "crash loss window (kill -9, OOM, power loss): the WAL is off, so acknowledged \
             points still in memory are lost, up to dataway.max_pending_bytes ({size}){cached}; \
             set [dataway.wal] enabled = true to lose none"
        )
    }
}

/// Opens the WAL, waiting a little while another holder has it: a daemon stopped in this
/// process (an embedding program starting it again) lets go of the file only once the
/// runtime has dropped the sends it abandoned at the deadline, which hold their writes'
/// tickets. Another process holding it is refused before this ([`claim_dirs`]).
fn open_wal(path: &std::path::Path, metrics: &Arc<Metrics>) -> Result<Arc<Wal>, OpenError> {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Wal::open_counted(path, metrics.clone()) {
            Err(e) if e.is_busy() && std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Queues the writes spilled to the WAL (taken while memory or the queues were full),
/// oldest first, as room is made. At a stop the ones not queued yet stay in the WAL and are
/// replayed at the next start.
async fn drain_spilled(wal: Arc<Wal>, dataway: Arc<Dataway>, stop: CancellationToken) {
    loop {
        let w = wal.clone();
        match tokio::task::spawn_blocking(move || w.next_spilled()).await {
            Ok(Ok(Some((ticket, category, text)))) => {
                if dataway.write_spilled(category, text, ticket).await.is_err() {
                    return; // closing
                }
            }
            Ok(Ok(None)) => tokio::select! {
                _ = wal.spilled() => {}
                _ = stop.cancelled() => return,
            },
            Ok(Err(e)) => {
                tracing::error!("cannot read spilled writes back from the WAL (retrying): {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(_) => return,
        }
    }
}

/// Sends again what the WAL holds from a previous run (a crash, or a stop before delivery),
/// forgetting each old entry once its points are written again (and so logged again).
/// `started` is set once the WAL has been read (what to replay is known, replaying begins):
/// from then on the daemon is ready (`/health`).
async fn replay_wal(wal: Arc<Wal>, dataway: Arc<Dataway>, started: Arc<AtomicBool>) {
    // A page at a time: a large log is never all in memory as points.
    const PAGE: usize = 64;
    let count = {
        let wal = wal.clone();
        tokio::task::spawn_blocking(move || wal.pending_count()).await
    };
    // Even when the WAL cannot be read: the error is logged, and new writes can still be
    // taken (a daemon that never gets ready would take nothing at all).
    started.store(true, Ordering::Release);
    match count {
        Ok(Ok(0)) => return,
        Ok(Ok(writes)) => tracing::info!(writes, "replaying the WAL"),
        Ok(Err(e)) => {
            tracing::error!("cannot read the WAL: {e}");
            return;
        }
        Err(_) => return,
    }
    let mut from = Some(0);
    let (mut writes, mut points) = (0usize, 0usize);
    while let Some(f) = from {
        let w = wal.clone();
        let page = match tokio::task::spawn_blocking(move || w.pending_from(f, PAGE)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!("cannot read the WAL: {e}");
                return;
            }
            Err(_) => return,
        };
        for p in page.entries {
            let n = p.points.len();
            if let Err(e) = dataway.write(p.category, p.points).await {
                tracing::error!("replaying the WAL stopped: {e}");
                return;
            }
            // Written again (and so logged again): the old entry can go.
            let wal = wal.clone();
            let _ = tokio::task::spawn_blocking(move || wal.forget(p.id)).await;
            writes += 1;
            points += n;
        }
        from = page.next;
    }
    tracing::info!(writes, points, "WAL replayed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL still held (by a stopped daemon's last tasks) is busy, and the start waits
    /// for it to be let go instead of failing.
    #[test]
    fn a_start_waits_for_the_wal_a_stopped_daemon_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let metrics = Arc::new(Metrics::new());
        let held = Wal::open(&path).unwrap();
        let busy = Wal::open(&path).map(|_| ()).unwrap_err();
        assert!(busy.is_busy(), "{busy}");
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = std::thread::spawn(move || {
            tx.send(()).unwrap();
            open_wal(&path, &metrics).map(|_| ())
        });
        rx.recv().unwrap();
        // Let go while the start is (most likely) already trying: it must not give up.
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        opener.join().unwrap().expect("opened once let go");
    }
}
