//! Hot reload: keeps each sinker's condition in step with the files in `plugins_dir`.
//!
//! In: the configured sinkers, and change events on `plugins_dir` (debounced: editors
//! write, rename and truncate in several steps). Out: conditions swapped in the live
//! sinkers, and drop-in sinkers (`NAME.wasm` + sidecar `NAME.toml`) added or removed.
//!
//! Every event triggers a full rescan of the directory rather than acting on the event
//! itself: events are lossy and come in odd orders, a rescan is not. A rescan is cheap when
//! nothing changed (file sizes and times are compared before contents are read).
//!
//! A new plugin version is compiled and initialised off the hot path; only a version that
//! loads and initialises is swapped in. A broken file is rejected (logged, counted) and
//! the previous version keeps serving; the same broken bytes are not retried until the
//! file changes again. A deleted plugin disables its sinker's condition until it returns,
//! except `datakit_filter.wasm`: while there is no such file, the filter built into the
//! binary serves ([`super::builtin`]), loaded like a file (same sandbox, metrics, cache).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Condition, Limits, Runtime, Sinker, builtin, plugin};
use crate::config::{DatawayConfig, SinkerConfig};
use crate::dataway::Dataway;
use crate::endpoint::{Endpoint, EndpointOptions, EndpointUrl, OpenCaches, StartError};
use crate::metrics::Metrics;

/// How long the directory must be quiet before a rescan.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A rescan runs this often even without events (network filesystems send none).
const POLL: Duration = Duration::from_secs(30);
/// How often a `plugins_dir` that does not exist is looked for (a `stat`: cheap).
const LOOK_FOR_DIR: Duration = Duration::from_secs(1);

/// Watches `plugins_dir` and applies what it finds to the live sinkers.
pub struct Reloader {
    dir: PathBuf,
    runtime: Runtime,
    limits: Limits,
    main: DatawayConfig,
    metrics: Arc<Metrics>,
    /// Open fail-cache files, shared with the main endpoints.
    caches: Arc<OpenCaches>,
    state: Mutex<HashMap<String, Tracked>>,
    /// Sidecars that failed (name, text): not retried until their text changes.
    bad_sidecars: Mutex<Vec<(String, String)>>,
    /// One rescan at a time (the start-up scan, the watcher and the poll may overlap).
    scanning: Mutex<()>,
}

/// What the reloader knows about one sinker's files.
#[derive(Default)]
struct Tracked {
    /// The plugin file (`None`: no plugin, match all).
    plugin: Option<String>,
    /// The string given to `init`.
    config: String,
    /// Size and mtime of the plugin file when last read.
    stamp: Option<(u64, SystemTime)>,
    /// SHA-256 of the version serving now.
    serving: Option<String>,
    /// SHA-256 of the last version rejected (not retried until the file changes).
    rejected: Option<String>,
    /// Text of the sidecar, for drop-in sinkers.
    sidecar: Option<String>,
}

impl Reloader {
    /// A reloader for `cfg.plugins_dir`, with the engine every plugin runs on. With
    /// `compiler` (the daemon's own executable) plugins are compiled in a child process
    /// ([`Runtime::compile_with`]).
    pub fn new(
        cfg: &DatawayConfig,
        metrics: Arc<Metrics>,
        caches: Arc<OpenCaches>,
        compiler: Option<PathBuf>,
    ) -> anyhow::Result<Reloader> {
        let cache = match &cfg.sinker_limits.cache_dir {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => default_cache_dir(),
        };
        let mut runtime = Runtime::with_max_stack(cache, cfg.sinker_limits.max_stack)?;
        if let Some(exe) = compiler {
            runtime = runtime.compile_with(exe);
        }
        Ok(Reloader {
            dir: cfg.plugins_dir.clone(),
            runtime,
            limits: Limits::from_config(&cfg.sinker_limits),
            main: cfg.clone(),
            metrics,
            caches,
            state: Mutex::new(HashMap::new()),
            bad_sidecars: Mutex::new(Vec::new()),
            scanning: Mutex::new(()),
        })
    }

    /// Starts the sinkers of the configuration: endpoints running, plugins loaded. A
    /// plugin that is missing or broken leaves its sinker disabled (its points go to the
    /// main endpoints) rather than stopping the daemon; `dataway check` reports it.
    pub fn start_configured(&self) -> Result<Vec<Arc<Sinker>>, StartError> {
        let mut out = Vec::new();
        for s in &self.main.sinkers {
            let sinker = Arc::new(self.start_sinker(s)?);
            self.track(s, None);
            self.sync_plugin(&sinker);
            out.push(sinker);
        }
        Ok(out)
    }

    fn start_sinker(&self, s: &SinkerConfig) -> Result<Sinker, StartError> {
        let opts = EndpointOptions::for_sinker(s, &self.main);
        let endpoints = s
            .urls
            .iter()
            .map(|u| {
                let url = EndpointUrl::parse(u).expect("validated by config");
                Endpoint::start(url, opts.clone(), self.metrics.clone(), &self.caches)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let condition = if s.plugin.is_some() {
            Condition::Disabled
        } else {
            Condition::All
        };
        // Plain values in the log: `categories=metric,logging plugin=rule.wasm`, not Rust's
        // debug text (`Some("rule.wasm")`).
        let categories = s.categories.join(",");
        let plugin = s.plugin.as_deref().unwrap_or("none");
        tracing::info!(sinker = %s.name, categories = %categories, plugin = %plugin, "sinker started");
        Ok(Sinker::new(
            s.name.clone(),
            s.parsed_categories(),
            condition,
            endpoints,
        ))
    }

    /// Starts tracking a sinker's files (forgetting what was known under that name).
    fn track(&self, s: &SinkerConfig, sidecar: Option<String>) {
        let previous = self.lock().insert(
            s.name.clone(),
            Tracked {
                plugin: s.plugin.clone(),
                config: s.plugin_config(),
                sidecar,
                ..Tracked::default()
            },
        );
        if let Some(serving) = previous.and_then(|t| t.serving) {
            self.set_info(&s.name, Some(&serving), None);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings every sinker in line with `plugins_dir`: reloads changed plugins, disables
    /// sinkers whose plugin is gone, adds, changes and removes drop-in sinkers.
    pub fn rescan(&self, dataway: &Dataway) {
        let _one_at_a_time = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        tracing::debug!(dir = %self.dir.display(), "rescanning plugins_dir");
        for sinker in dataway.sinkers().snapshot().iter() {
            self.sync_plugin(sinker);
        }
        self.sync_drop_ins(dataway);
    }

    /// Loads the sinker's plugin file if it changed since it was last looked at. A sinker
    /// whose plugin is `datakit_filter.wasm` runs the built-in filter while `plugins_dir` has
    /// no file of that name, and goes back to it when the file is removed.
    fn sync_plugin(&self, sinker: &Sinker) {
        let name = sinker.name();
        let (file, config, stamp) = {
            let state = self.lock();
            let Some(t) = state.get(name) else { return };
            let Some(file) = t.plugin.clone() else { return };
            (file, t.config.clone(), t.stamp)
        };
        let path = self.dir.join(&file);
        let limit = self.main.sinker_limits.max_plugin_size;
        // `metadata` follows symlinks and never blocks; the file is opened only when it is a
        // regular file within the size limit ([`plugin::read_plugin_file`]).
        let (bytes, source, now): (Cow<'static, [u8]>, String, _) = match std::fs::metadata(&path) {
            Ok(meta) => {
                let now = (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                );
                if stamp == Some(now) {
                    return;
                }
                match plugin::read_plugin_file(&path, limit) {
                    Ok(b) => (Cow::Owned(b), path.display().to_string(), Some(now)),
                    Err(e) => {
                        if !matches!(e, plugin::FileError::Io(_)) {
                            // Not read again until it changes: one warning, one count.
                            if let Some(t) = self.lock().get_mut(name) {
                                t.stamp = Some(now);
                            }
                        }
                        self.count(name, e.kind());
                        tracing::warn!(sinker = %name, path = %path.display(), "cannot read plugin: {e}");
                        return;
                    }
                }
            }
            Err(e) => match builtin::for_name(&file) {
                Some(b) if absent(&e) => {
                    let mut state = self.lock();
                    let t = state.get_mut(name).expect("tracked");
                    let from_file = t.serving.as_deref().is_some_and(|s| s != builtin::sha256());
                    if t.stamp.take().is_some() || from_file {
                        // The file that overrode the built-in is gone: forget what was known
                        // of it, so a file that comes back is read again.
                        t.rejected = None;
                    }
                    if from_file {
                        tracing::info!(sinker = %name, path = %path.display(), "plugin file gone ({e}); back to the built-in {file}");
                    }
                    (Cow::Borrowed(b), "built-in".to_string(), None)
                }
                _ => {
                    self.file_gone(sinker, &path, &e);
                    return;
                }
            },
        };
        let sha = match &bytes {
            Cow::Borrowed(_) => builtin::sha256().to_string(),
            Cow::Owned(b) => hex::encode(Sha256::digest(b)),
        };
        {
            let mut state = self.lock();
            let t = state.get_mut(name).expect("tracked");
            if let Some(now) = now {
                // A file modified within the last seconds may be rewritten again with the
                // same size inside the filesystem's mtime granularity: read it again next time.
                let settled = now
                    .1
                    .elapsed()
                    .is_ok_and(|age| age > Duration::from_secs(2));
                t.stamp = settled.then_some(now);
            }
            if t.serving.as_deref() == Some(&sha) || t.rejected.as_deref() == Some(&sha) {
                return;
            }
        }
        let started = std::time::Instant::now();
        let loaded = self
            .runtime
            .load(&bytes, &config, &self.limits, plugin::tracing_log(name));
        let mut state = self.lock();
        let t = state.get_mut(name).expect("tracked");
        match loaded {
            Ok(p) => {
                self.swap(sinker, Condition::Plugin(p.clone()));
                let old = t.serving.replace(sha.clone());
                t.rejected = None;
                drop(state);
                self.set_info(name, old.as_deref(), Some(&sha));
                self.count(name, "ok");
                let previous = old.as_deref().map_or("none", |o| &o[..12]);
                let cached = p.from_cache();
                tracing::info!(sinker = %name, path = %source, sha256 = %&sha[..12], previous = %previous, cached, took = ?started.elapsed(), "plugin loaded");
            }
            Err(e) => {
                if matches!(e, plugin::LoadError::Compiler(_)) {
                    // Maybe not the plugin's fault: try again on the next scan.
                    t.stamp = None;
                } else {
                    t.rejected = Some(sha.clone());
                }
                let serving = t.serving.is_some();
                drop(state);
                self.count(name, e.kind());
                if serving {
                    tracing::error!(sinker = %name, path = %source, sha256 = %&sha[..12], "plugin rejected, the previous version keeps serving: {e}");
                } else {
                    tracing::error!(sinker = %name, path = %source, sha256 = %&sha[..12], "plugin rejected, the sinker stays disabled: {e}");
                }
            }
        }
    }

    /// The sinker's plugin file is gone (or was never there): its condition is disabled.
    fn file_gone(&self, sinker: &Sinker, path: &Path, e: &std::io::Error) {
        let name = sinker.name();
        let mut state = self.lock();
        let t = state.get_mut(name).expect("tracked");
        let old = t.serving.take();
        if old.is_some() || t.stamp.is_some() {
            t.stamp = None;
            t.rejected = None;
            drop(state);
            self.swap(sinker, Condition::Disabled);
            self.count(name, "removed");
            self.set_info(name, old.as_deref(), None);
            tracing::warn!(sinker = %name, path = %path.display(), "plugin file gone ({e}); its points go to the main endpoints until it returns");
        } else if t.rejected.is_none() {
            t.rejected = Some(String::new());
            tracing::warn!(sinker = %name, path = %path.display(), "plugin file not found ({e}); its points go to the main endpoints until it appears");
        }
    }

    /// Puts a new condition in place; a new version starts out of quarantine.
    fn swap(&self, sinker: &Sinker, condition: Condition) {
        sinker.set_condition(condition);
        self.metrics
            .sinker_quarantined
            .with_label_values(&[sinker.name()])
            .set(0);
    }

    /// Moves `dataway_sinker_plugin_info{sinker=name}` from version `old` to `new`.
    fn set_info(&self, name: &str, old: Option<&str>, new: Option<&str>) {
        let info = &self.metrics.sinker_plugin_info;
        if let Some(old) = old {
            let _ = info.remove_label_values(&[name, old]);
        }
        if let Some(new) = new {
            info.with_label_values(&[name, new]).set(1);
        }
    }

    fn count(&self, name: &str, result: &str) {
        self.metrics
            .sinker_reloads_total
            .with_label_values(&[name, result])
            .inc();
    }

    /// Drop-in sinkers: `NAME.toml` beside `NAME.wasm` in `plugins_dir`.
    fn sync_drop_ins(&self, dataway: &Dataway) {
        let configured = |n: &str| self.main.sinkers.iter().any(|s| s.name == n);
        // An unreadable directory says nothing about which sidecars are gone: change nothing.
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut sidecars: HashMap<String, (PathBuf, String)> = HashMap::new();
        // Sidecars that exist but could not be read now: their live sinkers stay as they are.
        let mut unreadable: Vec<String> = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = drop_in_name(&path) else {
                continue;
            };
            if configured(&name) {
                continue;
            }
            let live = dataway
                .sinkers()
                .snapshot()
                .iter()
                .any(|s| s.name() == name);
            if !live && !path.with_extension("wasm").exists() {
                continue; // a sidecar waits for its plugin (Cargo.toml never gets one)
            }
            let read = plugin::read_plugin_file(&path, self.main.sinker_limits.max_plugin_size)
                .and_then(|b| String::from_utf8(b).map_err(|e| std::io::Error::other(e).into()));
            match read {
                Ok(text) => {
                    sidecars.insert(name, (path, text));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot read drop-in sidecar: {e}");
                    unreadable.push(name);
                }
            }
        }
        // Removed: a live drop-in whose sidecar is gone.
        for s in dataway.sinkers().snapshot().iter() {
            let name = s.name();
            let is_drop_in = self.lock().get(name).is_some_and(|t| t.sidecar.is_some());
            if is_drop_in
                && !sidecars.contains_key(name)
                && !unreadable.iter().any(|u| u == name)
                && let Some(old) = dataway.sinkers().remove(name)
            {
                let serving = self.lock().remove(name).and_then(|t| t.serving);
                self.set_info(name, serving.as_deref(), None);
                // Gauges describe live sinkers; the counters stay (rates stay continuous).
                let _ = self.metrics.sinker_quarantined.remove_label_values(&[name]);
                self.count(name, "removed");
                tracing::info!(
                    sinker = %name,
                    "drop-in sinker removed; its endpoints deliver what they hold"
                );
                dataway.retire(old);
            }
        }
        // Added or changed.
        for (name, (path, text)) in sidecars {
            let same = self
                .lock()
                .get(&name)
                .is_some_and(|t| t.sidecar.as_deref() == Some(&text));
            let bad_before = self
                .rejected_sidecars()
                .contains(&(name.clone(), text.clone()));
            if same || bad_before {
                continue;
            }
            let origin = path.display().to_string();
            let parsed = SinkerConfig::from_sidecar(&text, &name, &origin)
                .and_then(|s| s.validate(&origin).map(|()| s));
            let s = match parsed {
                Ok(s) => s,
                Err(e) => {
                    self.count(&name, "bad_sidecar");
                    tracing::error!(sinker = %name, "drop-in sinker not started: {e}");
                    self.reject_sidecar(name, text);
                    continue;
                }
            };
            let sinker = match self.start_sinker(&s) {
                Ok(sk) => Arc::new(sk),
                Err(e) => {
                    tracing::error!(sinker = %name, "drop-in sinker not started: {e}");
                    self.reject_sidecar(name, text);
                    continue;
                }
            };
            self.track(&s, Some(text));
            self.sync_plugin(&sinker);
            if let Some(old) = dataway.sinkers().upsert(sinker) {
                tracing::info!(sinker = %name, "drop-in sinker changed; restarted");
                dataway.retire(old);
            } else {
                tracing::info!(sinker = %name, "drop-in sinker added");
            }
        }
    }

    fn rejected_sidecars(&self) -> Vec<(String, String)> {
        self.bad_sidecars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reject_sidecar(&self, name: String, text: String) {
        let mut bad = self.bad_sidecars.lock().unwrap_or_else(|e| e.into_inner());
        bad.retain(|(n, _)| *n != name);
        bad.push((name, text));
    }

    /// A watcher on `plugins_dir` that sends `()` on every change (not on reads).
    fn watch(&self, tx: tokio::sync::mpsc::UnboundedSender<()>) -> notify::Result<Debouncer> {
        let mut d = notify_debouncer_full::new_debouncer(
            DEBOUNCE,
            None,
            move |res: notify_debouncer_full::DebounceEventResult| {
                // Only changes matter: a rescan opens the files it reads, and acting on
                // those `Access` events would rescan forever.
                let changed = res.map_or(true, |events| {
                    events
                        .iter()
                        .any(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                });
                if changed {
                    let _ = tx.send(());
                }
            },
        )?;
        d.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        Ok(d)
    }

    /// Starts watching `plugins_dir` now (so no change made after this call is missed)
    /// and rescans on every change, and every `POLL` (30 s), until `stop`.
    ///
    /// A `plugins_dir` that does not exist is normal (the default `plugins` before anyone
    /// drops a plugin): it is looked for every `LOOK_FOR_DIR` (1 s) and watched and scanned
    /// once it appears; so is one that is deleted and made again.
    pub fn spawn_watch(
        self: Arc<Self>,
        dataway: Arc<Dataway>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // `Err(())`: the directory exists but cannot be watched; the poll alone serves it.
        let attach = move |me: &Reloader| -> Result<Option<Debouncer>, ()> {
            if !me.dir.is_dir() {
                return Ok(None);
            }
            me.watch(tx.clone()).map(Some).map_err(|e| {
                tracing::info!(dir = %me.dir.display(), "not watching plugins_dir ({e}); rescanning every {POLL:?}");
            })
        };
        let mut watcher = attach(&self);
        if matches!(watcher, Ok(None)) {
            tracing::debug!(dir = %self.dir.display(), "plugins_dir does not exist (yet): no plugins until it is made");
        }
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.tick().await;
            let mut look = tokio::time::interval(LOOK_FOR_DIR);
            look.tick().await;
            loop {
                let missing = matches!(watcher, Ok(None));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(()) = rx.recv() => { while rx.try_recv().is_ok() {} }
                    _ = poll.tick() => {}
                    _ = look.tick(), if missing => {
                        // Watch first, then scan: nothing made in between is missed.
                        watcher = attach(&self);
                        if matches!(watcher, Ok(None)) {
                            continue;
                        }
                        tracing::info!(dir = %self.dir.display(), "plugins_dir appeared; watching it");
                    }
                }
                let me = self.clone();
                let dw = dataway.clone();
                // Compiling a plugin is CPU work that may take seconds: off the async workers.
                // A stop does not wait for it: draining the queues matters more.
                let scan = tokio::task::spawn_blocking(move || me.rescan(&dw));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = scan => {}
                }
                // Deleted: the watch died with it; look for the directory again.
                if matches!(watcher, Ok(Some(_))) && !self.dir.is_dir() {
                    watcher = Ok(None);
                }
            }
        })
    }
}

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// `$XDG_CACHE_HOME/dataway/plugins` or `~/.cache/dataway/plugins`. Not inside
/// `plugins_dir`: a compiled plugin is native code that runs outside the sandbox, so the
/// cache must be writable only by the daemon's user, while `plugins_dir` is where others
/// drop plugins.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dataway").join("plugins"))
}

/// The file is not there (rather than unreadable): a built-in of that name stands in.
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// `NAME` for a sidecar `plugins_dir/NAME.toml`; hidden files are skipped.
fn drop_in_name(path: &Path) -> Option<String> {
    if path.extension()? != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then(|| stem.to_string())
}

/// What `dataway check` says about the sinkers: one line per sinker, `Err` for problems.
/// It loads every plugin (compile + init) exactly as the daemon would, without starting
/// any endpoint.
pub fn check(cfg: &DatawayConfig) -> Vec<Result<String, String>> {
    let runtime = match Runtime::with_max_stack(None, cfg.sinker_limits.max_stack) {
        Ok(r) => r,
        Err(e) => return vec![Err(format!("cannot start the wasm engine: {e:#}"))],
    };
    let limits = Limits::from_config(&cfg.sinker_limits);
    let limit = cfg.sinker_limits.max_plugin_size;
    let quiet: plugin::LogFn = Arc::new(|_, _| {});
    let load = |s: &SinkerConfig| -> Result<String, String> {
        let what = format!("sinker `{}` ({})", s.name, s.categories.join(","));
        let Some(file) = &s.plugin else {
            return Ok(format!("{what}: no plugin, takes every point"));
        };
        let path = cfg.plugins_dir.join(file);
        // As the daemon does: a file in plugins_dir, else the built-in of that name.
        let (bytes, source) = match plugin::read_plugin_file(&path, limit) {
            Ok(b) => (Cow::Owned(b), path.display().to_string()),
            Err(e) => match builtin::for_name(file) {
                Some(b) if e.is_absent() => (Cow::Borrowed(b), format!("{file} (built-in)")),
                _ => {
                    return Err(format!(
                        "{what}: cannot read plugin {}: {e}",
                        path.display()
                    ));
                }
            },
        };
        let p = runtime
            .load(&bytes, &s.plugin_config(), &limits, quiet.clone())
            .map_err(|e| format!("{what}: plugin {source}: {e}"))?;
        Ok(format!(
            "{what}: plugin {source} ok (sha256 {})",
            &p.sha256()[..12]
        ))
    };
    let mut out: Vec<Result<String, String>> = cfg.sinkers.iter().map(load).collect();
    if let Ok(entries) = std::fs::read_dir(&cfg.plugins_dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Some(name) = drop_in_name(&path) else {
                continue;
            };
            if cfg.sinkers.iter().any(|s| s.name == name) || !path.with_extension("wasm").exists() {
                continue;
            }
            let origin = path.display().to_string();
            let result = plugin::read_plugin_file(&path, limit)
                .and_then(|b| String::from_utf8(b).map_err(|e| std::io::Error::other(e).into()))
                .map_err(|e| format!("drop-in {origin}: {e}"))
                .and_then(|text| {
                    SinkerConfig::from_sidecar(&text, &name, &origin)
                        .and_then(|s| s.validate(&origin).map(|()| s))
                        .map_err(|e| e.to_string())
                })
                .and_then(|s| {
                    // Its endpoints too (tokens redacted), as `check` lists configured ones.
                    let mut line = format!("drop-in {}", load(&s)?);
                    for (i, u) in s.urls.iter().enumerate() {
                        let url = EndpointUrl::parse(u).map_err(|e| format!("{origin}: {e}"))?;
                        line += &format!("\ndrop-in sinker `{name}` endpoint[{i}]: {url}");
                    }
                    Ok(line)
                });
            out.push(result);
        }
    }
    out
}
