//! The WebAssembly host: compiles condition plugins and runs them in a sandbox.
//!
//! In: a component's bytes and the sinker's `config` string. Out: a [`Plugin`] whose
//! [`Plugin::matches`] answers "which of these points match" or says why it could not.
//!
//! Why it looks like this:
//! - One [`Runtime`] (one wasmtime `Engine`) for the whole daemon; each plugin is compiled
//!   once, off the hot path, into an `InstancePre`, so a new instance costs microseconds.
//! - Instances are pooled: a caller takes one (or makes one), calls it, and gives it back, so
//!   concurrent writers never wait for each other and a store is reused across batches.
//! - Every call runs under an epoch deadline, a memory cap and a table cap. A call that traps,
//!   times out or runs out of memory poisons its store: the instance is dropped, never
//!   reused. Its caller treats the batch as not matched; no point is lost.
//! - A plugin that keeps failing is quarantined (not called) with exponential backoff, as
//!   proxy-wasm hosts do, so a broken plugin costs almost nothing while it is broken.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{
    Component, Linker, Resource, ResourceTable, ResourceType, types::ComponentItem,
};
use wasmtime::{Engine, ResourceLimiter, Store};

pub use super::batch::{Columns, PointBatch};
use crate::category::Category;
use crate::point::Content;

/// Host bindings generated from `wit/sinker.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "sinker",
        path: "wit",
        with: { "dataway:sinker/types.batch": super::PointBatch },
        imports: { default: trappable },
    });
}

use bindings::dataway::sinker::types::LogLevel;
use bindings::{Sinker, SinkerPre};

/// The WIT package this daemon speaks, and its version. A plugin built against any version
/// semver-compatible with it (`0.1.x`) loads: wasmtime's linker satisfies an import of
/// `dataway:sinker/types@0.1.0` with our `@0.1.1` definitions ([`wit_version_of`]).
pub const WIT_PACKAGE: &str = "dataway:sinker@0.1.1";
const WIT_VERSION: &str = "0.1.1";

/// How an imported `dataway:sinker/…@VERSION` interface relates to the one this daemon speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WitVersion {
    /// Ours, or an earlier version of the same `0.x` series (additions only since then).
    Supported,
    /// A later version of the same series: it loads if it uses nothing added since ours.
    Newer,
    /// Another series (`0.2`, `1.x`, a pre-release, …): refused.
    Incompatible,
}

/// The version of an import named `dataway:sinker/INTERFACE@VERSION` (`INTERFACE` being one
/// we offer), as wasmtime's linker matches it: `0.x.y` matches `0.x.z`; `0.0.y`, pre-releases
/// and build metadata match nothing but themselves. `None`: not one of our interfaces.
fn wit_version_of(import: &str) -> Option<WitVersion> {
    let rest = import.strip_prefix("dataway:sinker/")?;
    let (interface, version) = rest.split_once('@')?;
    if !matches!(interface, "types" | "host") {
        return None;
    }
    if version == WIT_VERSION {
        return Some(WitVersion::Supported);
    }
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let mut parts = v.split('.');
        let mut next = || parts.next()?.parse::<u64>().ok();
        let version = (next()?, next()?, next()?);
        parts.next().is_none().then_some(version)
    };
    let ours = parse(WIT_VERSION).expect("WIT_VERSION is x.y.z");
    Some(match parse(version) {
        // The series of a 0.x version is its minor (0.0.x has none); of x.y, its major.
        Some(v) if ours.0 == 0 && v.0 == 0 && v.1 == ours.1 && ours.1 != 0 => {
            if v.2 <= ours.2 {
                WitVersion::Supported
            } else {
                WitVersion::Newer
            }
        }
        Some(v) if ours.0 != 0 && v.0 == ours.0 => {
            if (v.1, v.2) <= (ours.1, ours.2) {
                WitVersion::Supported
            } else {
                WitVersion::Newer
            }
        }
        _ => WitVersion::Incompatible,
    })
}

/// How often the engine's epoch advances; deadlines are whole ticks of this. Coarse on
/// purpose: the ticker wakes up this often for as long as the daemon runs.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Default cap of a plugin call's wasm stack (the config owns the defaults).
pub const DEFAULT_MAX_STACK: usize = crate::config::DEFAULT_PLUGIN_MAX_STACK;

/// Sandbox limits applied to every plugin instance.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest one `matches` (or `init`) call may run.
    pub timeout: Duration,
    /// Largest linear memory of an instance, in bytes.
    pub max_memory: usize,
    /// Largest table of an instance, in elements.
    pub max_table_elements: usize,
    /// Idle instances kept per plugin (more are made when more callers run at once).
    pub max_idle_instances: usize,
    /// Consecutive failed calls before the plugin is quarantined.
    pub quarantine_after: u32,
    /// First quarantine period; it doubles each time the plugin fails again after one.
    pub quarantine_min: Duration,
    /// Longest quarantine period.
    pub quarantine_max: Duration,
}

impl Default for Limits {
    /// The config's defaults (`[dataway.sinker_limits]`), which own the numbers.
    fn default() -> Self {
        Limits::from_config(&crate::config::SinkerLimitsConfig::default())
    }
}

impl Limits {
    /// The limits `[dataway.sinker_limits]` describes.
    pub fn from_config(c: &crate::config::SinkerLimitsConfig) -> Limits {
        Limits {
            timeout: c.timeout,
            max_memory: c.max_memory,
            max_table_elements: c.max_table_elements,
            max_idle_instances: c.max_idle_instances,
            quarantine_after: c.quarantine_after,
            quarantine_min: c.quarantine_min,
            quarantine_max: c.quarantine_max,
        }
    }
}

/// Where a plugin's `log` lines go: tracing in the daemon, the terminal in `sinker test`.
pub type LogFn = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Sends plugin log lines to the daemon's log, tagged with the sinker's name, at most
/// `LOG_LINES_PER_WINDOW` per `LOG_WINDOW` (a looping plugin must not flood the log).
pub fn tracing_log(sinker: &str) -> LogFn {
    let sinker: Arc<str> = sinker.into();
    let limiter = RateLimiter::new();
    Arc::new(move |level, msg| {
        let Some(suppressed) = limiter.admit() else {
            return;
        };
        let sinker = &*sinker;
        if suppressed > 0 {
            tracing::warn!(
                sinker = %sinker,
                suppressed,
                "plugin log lines suppressed (rate limit)"
            );
        }
        match level {
            LogLevel::Trace => tracing::trace!(sinker = %sinker, "plugin: {msg}"),
            LogLevel::Debug => tracing::debug!(sinker = %sinker, "plugin: {msg}"),
            LogLevel::Info => tracing::info!(sinker = %sinker, "plugin: {msg}"),
            LogLevel::Warn => tracing::warn!(sinker = %sinker, "plugin: {msg}"),
            LogLevel::Error => tracing::error!(sinker = %sinker, "plugin: {msg}"),
        }
    })
}

const LOG_WINDOW: Duration = Duration::from_secs(10);
const LOG_LINES_PER_WINDOW: u32 = 50;

/// A fixed-window limiter for log lines: cheap, lock-light, and it says how many lines it
/// swallowed so the log still shows that something was there.
pub struct RateLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(n)` when a line may be written (`n` lines were suppressed since the last one
    /// written), `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.elapsed() >= LOG_WINDOW {
            *s = (Instant::now(), 0, s.2);
        }
        if s.1 < LOG_LINES_PER_WINDOW {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Compile(String),
    #[error("{0}")]
    WrongWorld(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("init trapped: {0}")]
    InitTrap(String),
    /// Compiling failed for a reason that may not be the plugin's; tried again later.
    #[error("{0}")]
    Compiler(String),
}

impl LoadError {
    /// The `result` label of the reload metric.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Compile(_) => "not_component",
            LoadError::WrongWorld(_) => "wrong_world",
            LoadError::Init(_) => "init_error",
            LoadError::InitTrap(_) => "init_trap",
            LoadError::Compiler(_) => "compiler_error",
        }
    }
}

/// How a `matches` call failed. In every case the batch counts as not matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The plugin trapped (a panic, `unreachable`, a stack overflow, …).
    Trap,
    /// The call ran past `timeout`.
    Timeout,
    /// The plugin asked for more memory or table than allowed.
    OutOfMemory,
    /// The result did not have one element per point.
    BadResult,
    /// `init` returned an error for the config (a new instance could not be made). Only a
    /// plugin whose `init` is not deterministic gets here: [`Runtime::load`] has already
    /// run it with the same config, and a plugin has no clock, randomness or WASI to vary
    /// on, so no test fixture can produce it.
    InitRefused,
    /// The plugin is quarantined; it was not called.
    Quarantined,
}

impl FailureKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "oom",
            FailureKind::BadResult => "bad_result",
            FailureKind::InitRefused => "init_error",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

/// A failed call: its kind and a message for the log.
#[derive(Debug, Clone)]
pub struct CallError {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.message)
    }
}

/// The state of one plugin instance's store.
pub struct StoreState {
    pub(crate) table: ResourceTable,
    log: LogFn,
    max_memory: usize,
    max_table_elements: usize,
    /// Set when the limiter refused a growth, so a trap can be told apart from an OOM.
    hit_limit: bool,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit_limit = true;
            wasmtime::bail!(
                "plugin memory limit reached: asked for {desired} bytes, limit is {}",
                self.max_memory
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.hit_limit = true;
            wasmtime::bail!(
                "plugin table limit reached: asked for {desired} elements, limit is {}",
                self.max_table_elements
            );
        }
        Ok(true)
    }
}

impl bindings::dataway::sinker::host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        (self.log)(level, &message);
        Ok(())
    }
}

/// The shared engine, its epoch clock and its compiled-code cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    max_stack: usize,
    /// Compile in a child process (`EXE compile-plugin …`) instead of in this one.
    compiler: Option<PathBuf>,
    /// Where warnings about the cache go (the log; the terminal in `sinker test`).
    warn: WarnFn,
    /// An untrusted cache directory is warned about once, not at every load.
    warned_untrusted: Arc<std::sync::atomic::AtomicBool>,
}

/// Where the [`Runtime`]'s warnings go.
pub type WarnFn = Arc<dyn Fn(&str) + Send + Sync>;

/// The engine settings plugins are compiled and run with. A child compiler uses the same,
/// so what it writes loads here (the settings are part of the compatibility hash).
fn engine_config(max_stack: usize) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true)
        // No async in plugins: without it a component call is ~3x cheaper.
        .concurrency_support(false)
        .max_wasm_stack(max_stack);
    cfg
}

impl Runtime {
    /// Makes the engine and starts its epoch clock (a thread that ends with the engine).
    /// `cache_dir`, when set, keeps compiled plugins across restarts (a Python component
    /// takes seconds to compile; loading it from the cache takes milliseconds).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        Runtime::with_max_stack(cache_dir, DEFAULT_MAX_STACK)
    }

    /// As [`Runtime::new`], with a cap on the wasm stack of every call (bytes).
    pub fn with_max_stack(cache_dir: Option<PathBuf>, max_stack: usize) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(max_stack))
            .map_err(|e| anyhow::anyhow!("wasm engine: {e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            cache_dir,
            max_stack,
            compiler: None,
            warn: Arc::new(|m| tracing::warn!("{m}")),
            warned_untrusted: Arc::default(),
        })
    }

    /// Compiles plugins in a short-lived child process, `exe compile-plugin`, rather than
    /// in this one. Why: Cranelift's working memory for a large plugin is ~100 MiB, which
    /// the allocator of a long-running daemon keeps after the compile; a child returns it
    /// to the system when it exits (BENCHMARKS.md).
    pub fn compile_with(mut self, exe: PathBuf) -> Runtime {
        self.compiler = Some(exe);
        self
    }

    /// Sends the runtime's warnings (an untrusted or tampered cache) to `warn`.
    pub fn on_warning(mut self, warn: WarnFn) -> Runtime {
        self.warn = warn;
        self
    }

    /// Where compiled plugins are kept, if anywhere.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Compiles (or loads from the cache), links and initialises a plugin. Errors say
    /// what is wrong with the file; nothing of a failed load stays behind.
    pub fn load(
        &self,
        bytes: &[u8],
        config: &str,
        limits: &Limits,
        log: LogFn,
    ) -> Result<Plugin, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, from_cache) = self.compile(bytes, &sha256)?;
        let mut linker: Linker<StoreState> = Linker::new(&self.engine);
        Sinker::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // The world's `use types.{batch}` is also a root-level import of the same host
        // resource; left undefined it would be filled with a foreign type below.
        linker
            .root()
            .resource("batch", ResourceType::host::<PointBatch>(), |_, _| Ok(()))
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let newer = check_imports(&self.engine, &component)?;
        // WASI imports a guest toolchain links in (wasi-libc, Python's runtime) are offered
        // as functions that trap: a plugin gets no filesystem, network, env or stdin.
        stub_wasi_imports(&mut linker, &self.engine, &component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(SinkerPre::new)
            .map_err(|e| {
                LoadError::WrongWorld(match &newer {
                    // Most likely it calls something added after our version.
                    Some(import) => format!(
                        "the component was built against `{import}`, newer than this \
                         daemon's {WIT_PACKAGE}, and uses something this daemon does not \
                         offer: {e:#}"
                    ),
                    None => format!(
                        "the component does not export the `sinker` world of {WIT_PACKAGE}: {e:#}"
                    ),
                })
            })?;
        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                engine: self.engine.clone(),
                pre,
                config: config.to_string(),
                limits: limits.clone(),
                log,
                sha256,
                from_cache,
                idle: Mutex::new(Vec::new()),
                health: Health::default(),
                failure_log: RateLimiter::new(),
            }),
        };
        // Prove it works before anyone relies on it: one instance, initialised.
        let instance = plugin.inner.instantiate().map_err(|e| match e.kind {
            FailureKind::InitRefused => LoadError::Init(e.message),
            _ => LoadError::InitTrap(e.to_string()),
        })?;
        plugin.inner.give_back(instance);
        Ok(plugin)
    }

    /// The compiled component, and whether it came from the cache. The cache is used only
    /// when it can be trusted ([`cache`]); an artifact that fails its check is compiled
    /// again and overwritten.
    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<(Component, bool), LoadError> {
        let cached = self.cache_dir.as_ref().and_then(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            let path = dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
            match cache::open(dir) {
                Ok(key) => Some((path, key)),
                Err(why) => {
                    if !self
                        .warned_untrusted
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        (self.warn)(&format!(
                            "not using the compiled-plugin cache {}: {why}; plugins are \
                             compiled in memory instead (compiled plugins are native code)",
                            dir.display()
                        ));
                    }
                    None
                }
            }
        });
        if let Some((path, key)) = &cached {
            match cache::read(path, key) {
                Ok(None) => {}
                Ok(Some(compiled)) => {
                    // SAFETY: the bytes carry the HMAC of our per-install key, so this
                    // daemon wrote them with `Component::serialize` in its own private
                    // directory; wasmtime also checks their header against the engine.
                    match unsafe { Component::deserialize(&self.engine, &compiled) } {
                        Ok(c) => return Ok((c, true)),
                        Err(e) => (self.warn)(&format!(
                            "ignoring plugin cache file {}: {e:#}; recompiling",
                            path.display()
                        )),
                    }
                }
                Err(why) => (self.warn)(&format!(
                    "not loading compiled plugin {} from the cache: {why}; recompiling",
                    path.display()
                )),
            }
        }
        let component = match &self.compiler {
            Some(exe) => self.compile_in_child(exe, bytes)?,
            None => compile_bytes(&self.engine, bytes)?,
        };
        if let Some((path, key)) = &cached {
            write_cache(path, key, &component);
        }
        Ok((component, false))
    }

    /// Runs `exe compile-plugin` on `bytes` in a private temporary directory and loads
    /// what it wrote.
    ///
    /// Who is to blame decides what happens when it fails: the child's own compile error
    /// is the plugin's (rejected); a child killed or timed out may have been made to blow
    /// up by the plugin, so it is not retried in-process but reported as a compiler error
    /// (tried again on the next scan); anything else (no temp space, the executable
    /// gone or replaced by an upgrade) is the machine's, and the plugin is compiled here.
    fn compile_in_child(&self, exe: &Path, bytes: &[u8]) -> Result<Component, LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(not_wasm());
        }
        let started = Instant::now();
        let loaded = (|| -> std::io::Result<Result<Component, LoadError>> {
            // Mode 0700, a random name: nobody else can plant or swap files in it.
            let dir = tempfile::Builder::new()
                .prefix("dataway-compile-")
                .tempdir()?;
            let input = dir.path().join("plugin.wasm");
            let output = dir.path().join("plugin.cwasm");
            std::fs::write(&input, bytes)?;
            if let Err(e) = run_compiler(exe, &input, &output, dir.path(), self.max_stack)? {
                return Ok(Err(e));
            }
            // SAFETY: written just now, in our private directory, by our own binary with
            // the same engine settings (wasmtime checks them in the file's header).
            let c = unsafe { Component::deserialize_file(&self.engine, &output) }
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            tracing::info!(took = ?started.elapsed(), "plugin compiled in a child process");
            Ok(Ok(c))
        })();
        match loaded {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(compiler = %exe.display(), "plugin compiler unusable ({e}); compiling in-process");
                compile_bytes(&self.engine, bytes)
            }
        }
    }
}

/// How long a child compile may take (a Python component: seconds).
const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the child compiler. `Ok(Ok(()))`: it wrote `output`; `Ok(Err(_))`: the plugin's
/// fault or a killed child (a `LoadError` to report); `Err(_)`: the machine's.
fn run_compiler(
    exe: &Path,
    input: &Path,
    output: &Path,
    dir: &Path,
    max_stack: usize,
) -> std::io::Result<Result<(), LoadError>> {
    // stderr to a file, not a pipe: a chatty child can never block on a full pipe.
    let stderr_path = dir.join("stderr.txt");
    let mut child = std::process::Command::new(exe)
        .arg("compile-plugin")
        .arg("--max-stack")
        .arg(max_stack.to_string())
        .arg(input)
        .arg(output)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > COMPILE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Err(LoadError::Compiler(format!(
                "compiling took more than {COMPILE_TIMEOUT:?}; stopped"
            ))));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.success() {
        return Ok(Ok(()));
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let msg = stderr
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(stderr.trim());
    match status.code() {
        // `compile-plugin` exits 1 with the compile error of the plugin.
        Some(1) if !msg.is_empty() => Ok(Err(LoadError::Compile(msg.to_string()))),
        // Killed (e.g. by the OOM killer) or crashed: do not try that in this process.
        None => Ok(Err(LoadError::Compiler(format!(
            "the compiler process died ({status}); {msg}"
        )))),
        Some(_) => Err(std::io::Error::other(format!(
            "compiler exited with {status}: {msg}"
        ))),
    }
}

/// The child side of [`Runtime::compile_with`]: compiles `input` into `output` with the
/// daemon's engine settings. Used by the hidden `dataway compile-plugin` command.
pub fn compile_file(input: &Path, output: &Path, max_stack: usize) -> Result<(), String> {
    let engine = Engine::new(&engine_config(max_stack)).map_err(|e| format!("{e:#}"))?;
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let component = compile_bytes(&engine, &bytes).map_err(|e| e.to_string())?;
    let serialized = component.serialize().map_err(|e| format!("{e:#}"))?;
    std::fs::write(output, serialized).map_err(|e| format!("{}: {e}", output.display()))
}

fn not_wasm() -> LoadError {
    LoadError::Compile(
        "not a WebAssembly file (it does not start with the `\\0asm` magic bytes)".into(),
    )
}

/// Compiles in this process, with errors that say what the file is instead.
fn compile_bytes(engine: &Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(not_wasm());
    }
    Component::new(engine, bytes).map_err(|e| {
        let msg = format!("not a WebAssembly component: {}", e.root_cause());
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            LoadError::Compile(format!(
                "{msg} (this is a core module: make it a component, e.g. build for \
                 wasm32-wasip2 or run `wasm-tools component new`)"
            ))
        } else {
            LoadError::Compile(msg)
        }
    })
}

/// Best effort: a cache that cannot be written only costs a compile next time.
fn write_cache(path: &Path, key: &cache::Key, component: &Component) {
    let result = (|| -> anyhow::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        cache::write(path, key, &bytes)?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), "plugin cache not written: {e:#}");
    }
}

/// Rejects imports the daemon does not offer, before they would be turned into traps: a
/// plugin built against another version of our WIT must fail loudly at load, not trap on
/// its first `log` call. Only WASI imports (which a toolchain may link in) are tolerated.
///
/// `Ok(Some(import))`: the component imports `import`, a later version of our interfaces of
/// the same series; it loads if it uses nothing added since ours (the caller says so if not).
fn check_imports(engine: &Engine, component: &Component) -> Result<Option<String>, LoadError> {
    let mut newer = None;
    for (name, item) in component.component_type().imports(engine) {
        // `use types.{batch}` in the world makes `batch` a root-level type import.
        let is_type = matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_));
        match wit_version_of(name) {
            Some(WitVersion::Supported) => continue,
            Some(WitVersion::Newer) => {
                newer = Some(name.to_string());
                continue;
            }
            _ if name.starts_with("wasi:") || is_type => continue,
            _ => {}
        }
        let what = match item.ty {
            ComponentItem::ComponentInstance(_) => "interface",
            _ => "item",
        };
        let hint = if name.starts_with("dataway:sinker/") {
            format!(
                "; it was built against another version of the WIT, this daemon speaks {WIT_PACKAGE}"
            )
        } else {
            String::new()
        };
        return Err(LoadError::WrongWorld(format!(
            "the component imports {what} `{name}`, which the daemon does not offer{hint}"
        )));
    }
    Ok(newer)
}

/// Defines every `wasi:` function the component imports as a function that traps when
/// called, and each `wasi:` resource as an opaque one (checked by [`check_imports`]: nothing
/// else is left undefined).
///
/// Not wasmtime's `define_unknown_imports_as_traps`: it looks names up exactly, so it would
/// take the `dataway:sinker/types@0.1.0` of an older plugin for undefined (we define
/// `@0.1.1`, which the linker's semver matching would otherwise give it) and stub every one
/// of its functions with a trap.
fn stub_wasi_imports(
    linker: &mut Linker<StoreState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    fn stub(
        linker: &mut wasmtime::component::LinkerInstance<'_, StoreState>,
        name: &str,
        path: &str,
        item: &ComponentItem,
        engine: &Engine,
    ) -> wasmtime::Result<()> {
        match item {
            ComponentItem::ComponentFunc(_) => {
                let full = path.to_string();
                linker.func_new(name, move |_, _, _, _| {
                    wasmtime::bail!("unknown import: `{full}` has not been defined")
                })
            }
            ComponentItem::Resource(_) => {
                linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()))
            }
            ComponentItem::ComponentInstance(instance) => {
                let mut inner = linker.instance(name)?;
                for (export, e) in instance.exports(engine) {
                    stub(
                        &mut inner,
                        export,
                        &format!("{path}#{export}"),
                        &e.ty,
                        engine,
                    )?;
                }
                Ok(())
            }
            // Types need no definition; a module or component import is not WASI's.
            ComponentItem::Type(_) => Ok(()),
            _ => wasmtime::bail!("cannot offer import `{path}` (only functions and resources)"),
        }
    }
    for (name, item) in component.component_type().imports(engine) {
        if name.starts_with("wasi:") {
            stub(&mut linker.root(), name, name, &item.ty, engine)?;
        }
    }
    Ok(())
}

/// A loaded plugin: cheap to clone, shared by every caller.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    engine: Engine,
    pre: SinkerPre<StoreState>,
    config: String,
    limits: Limits,
    log: LogFn,
    sha256: String,
    /// Loaded from the compiled-plugin cache rather than compiled.
    from_cache: bool,
    idle: Mutex<Vec<Instance>>,
    health: Health,
    failure_log: RateLimiter,
}

struct Instance {
    store: Store<StoreState>,
    sinker: Sinker,
}

/// Consecutive failures and the quarantine they lead to. A mutex, not atomics: the rules
/// below need several fields to change together, and the lock is held for nanoseconds
/// next to a call of hundreds.
#[derive(Default)]
struct Health(Mutex<HealthState>);

#[derive(Default)]
struct HealthState {
    /// Failures in a row since the last success or quarantine.
    failures: u32,
    /// Quarantines in a row (the backoff exponent); reset by a success.
    strikes: u32,
    /// While `Some`, calls are refused until then; after it, one trial call is let through.
    until: Option<Instant>,
    /// A trial call is running: everyone else is still refused.
    probing: bool,
    /// Bumped at every quarantine and recovery: results of calls admitted before it are
    /// ignored, so calls in flight when a plugin is quarantined neither add strikes nor lift
    /// the quarantine.
    generation: u64,
}

/// Why a caller was admitted: the generation it belongs to, and whether it is the trial.
struct Admission {
    generation: u64,
    trial: bool,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` while quarantined; after the period, the first caller is the trial. `now`
    /// is passed in (as to every method here) so tests can step time instead of sleeping.
    fn admit(&self, now: Instant) -> Option<Admission> {
        let mut h = self.lock();
        let trial = match h.until {
            None => false,
            Some(until) if now < until || h.probing => return None,
            Some(_) => {
                h.probing = true;
                true
            }
        };
        Some(Admission {
            generation: h.generation,
            trial,
        })
    }

    fn quarantined(&self, now: Instant) -> bool {
        let h = self.lock();
        h.until.is_some_and(|until| now < until || h.probing)
    }

    fn record(&self, admitted: &Admission, ok: bool, limits: &Limits, now: Instant) {
        let mut h = self.lock();
        if admitted.generation != h.generation {
            return; // started before the last quarantine or recovery: old news
        }
        if admitted.trial {
            h.probing = false;
        }
        if ok {
            h.failures = 0;
            if h.until.take().is_some() {
                h.strikes = 0;
                h.generation += 1;
            }
            return;
        }
        h.failures += 1;
        // A failed trial re-quarantines at once, for twice as long.
        if admitted.trial || h.failures >= limits.quarantine_after {
            let period = limits
                .quarantine_min
                .saturating_mul(1u32 << h.strikes.min(20))
                .min(limits.quarantine_max);
            h.until = Some(now + period);
            h.strikes += 1;
            h.failures = 0;
            h.generation += 1;
        }
    }
}

impl Plugin {
    /// Hex SHA-256 of the component's bytes: the plugin's version.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether the compiled code came from the cache (`cache_dir`) instead of a compile.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }

    /// Whether a failure may be logged now (failures of a broken plugin are rate-limited).
    pub fn admit_failure_log(&self) -> bool {
        self.inner.failure_log.admit().is_some()
    }

    /// Whether the plugin is in quarantine right now.
    pub fn quarantined(&self) -> bool {
        self.inner.health.quarantined(Instant::now())
    }

    /// Asks the plugin which of `points` match. `Ok` has exactly one element per point.
    pub fn matches(
        &self,
        category: Category,
        points: &Arc<Content>,
    ) -> Result<Vec<bool>, CallError> {
        self.matches_with(category, points, &Arc::default())
    }

    /// As [`Plugin::matches`], with the columns other conditions built for the same
    /// points ([`Columns::shared`]).
    pub fn matches_with(
        &self,
        category: Category,
        points: &Arc<Content>,
        columns: &Arc<Columns>,
    ) -> Result<Vec<bool>, CallError> {
        let inner = &self.inner;
        let Some(admitted) = inner.health.admit(Instant::now()) else {
            return Err(CallError {
                kind: FailureKind::Quarantined,
                message: "plugin is quarantined after repeated failures".into(),
            });
        };
        let result = inner.instantiate_or_reuse().and_then(|mut instance| {
            let result = inner.call(&mut instance, category, points, columns);
            if result.is_ok() {
                inner.give_back(instance);
            }
            // On failure the instance is dropped here: a trapped store is poisoned.
            result
        });
        inner
            .health
            .record(&admitted, result.is_ok(), &inner.limits, Instant::now());
        result
    }
}

impl PluginInner {
    fn instantiate_or_reuse(&self) -> Result<Instance, CallError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match reused {
            Some(i) => Ok(i),
            None => self.instantiate(),
        }
    }

    fn give_back(&self, instance: Instance) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.limits.max_idle_instances {
            idle.push(instance);
        }
    }

    /// A fresh store and instance, `init`-ed with the sinker's config.
    fn instantiate(&self) -> Result<Instance, CallError> {
        let mut store = Store::new(
            &self.engine,
            StoreState {
                table: ResourceTable::new(),
                log: self.log.clone(),
                max_memory: self.limits.max_memory,
                max_table_elements: self.limits.max_table_elements,
                hit_limit: false,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        self.arm_deadline(&mut store);
        let sinker = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        self.arm_deadline(&mut store);
        match sinker.call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Instance { store, sinker }),
            Ok(Err(msg)) => Err(CallError {
                kind: FailureKind::InitRefused,
                message: msg,
            }),
            Err(e) => Err(classify(&store, e)),
        }
    }

    fn arm_deadline(&self, store: &mut Store<StoreState>) {
        let ticks = self
            .limits
            .timeout
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos()) as u64;
        // +1: the current tick may be about to end.
        store.set_epoch_deadline(ticks.max(1) + 1);
    }

    fn call(
        &self,
        instance: &mut Instance,
        category: Category,
        points: &Arc<Content>,
        columns: &Arc<Columns>,
    ) -> Result<Vec<bool>, CallError> {
        let store = &mut instance.store;
        let handle = store
            .data_mut()
            .table
            .push(PointBatch {
                category,
                points: points.clone(),
                columns: columns.clone(),
            })
            .map_err(|e| CallError {
                kind: FailureKind::Trap,
                message: format!("resource table: {e}"),
            })?;
        let rep = handle.rep();
        self.arm_deadline(store);
        let result = instance
            .sinker
            .call_matches(&mut *store, Resource::new_borrow(rep));
        // Always take the batch back, whatever the call did.
        let _ = store.data_mut().table.delete(handle);
        let mask = result.map_err(|e| classify(store, e))?;
        if mask.len() != points.len() {
            return Err(CallError {
                kind: FailureKind::BadResult,
                message: format!(
                    "`matches` returned {} results for {} points",
                    mask.len(),
                    points.len()
                ),
            });
        }
        Ok(mask)
    }
}

/// Tells a timeout and an out-of-memory from other traps.
fn classify(store: &Store<StoreState>, e: wasmtime::Error) -> CallError {
    let kind = if store.data().hit_limit {
        FailureKind::OutOfMemory
    } else if matches!(
        e.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) {
        FailureKind::Timeout
    } else {
        FailureKind::Trap
    };
    // The root cause says what happened ("wasm trap: interrupt", the limiter's message);
    // the wasm backtrace around it is noise in a log line.
    let cause = e.root_cause().to_string();
    let trap = e.downcast_ref::<wasmtime::Trap>().map(|t| t.to_string());
    let mut message = match trap {
        Some(t) if !cause.contains(&t) => format!("{t}: {cause}"),
        _ => cause,
    };
    if message.contains("unknown import") {
        message.push_str(
            " (plugins get no WASI; a Rust guest gets here when it panics and tries to print the message)",
        );
    }
    CallError { kind, message }
}

/// Why a plugin file (or a drop-in sidecar) was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not a regular file once symlinks are followed: a FIFO would block the reader
    /// forever, `/dev/zero` never ends, a directory or socket has no bytes to give.
    #[error("not a regular file ({0}); skipped")]
    NotRegular(&'static str),
    /// Bigger than `[dataway.sinker_limits] max_plugin_size`.
    #[error(
        "{size} bytes or more, over the limit of {limit} bytes \
         ([dataway.sinker_limits] max_plugin_size); skipped"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FileError {
    /// The `result` label of `dataway_sinker_reloads_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            FileError::NotRegular(_) => "not_regular_file",
            FileError::TooLarge { .. } => "too_large",
            FileError::Io(_) => "read_error",
        }
    }

    /// The file is not there (rather than unreadable).
    pub fn is_absent(&self) -> bool {
        matches!(self, FileError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ))
    }
}

/// Reads a plugin file of at most `limit` bytes without ever blocking or reading without
/// end: the type and size are checked before opening (symlinks followed), the open is
/// non-blocking (a FIFO swapped in after the check does not wait for a writer), the opened
/// file is checked again, and the read stops at `limit + 1` bytes (a file can grow after
/// its size was looked at, and `/proc` files say they are empty).
pub fn read_plugin_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    check_file(&std::fs::metadata(path)?, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check_file(&meta, limit)?;
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn check_file(meta: &std::fs::Metadata, limit: u64) -> Result<(), FileError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(FileError::NotRegular(what));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

/// The compiled-plugin cache: what may be loaded from it and how it is written.
///
/// A compiled artifact is native code that runs outside the sandbox, so the cache is used
/// only when the directory is the daemon user's own and nobody else can write to it, and an
/// artifact is loaded only if it carries a valid HMAC-SHA256 tag made with a per-install key
/// (`cache.key`, 0600, made on first use): a file planted or changed by anyone without the
/// key is recompiled over, never run.
mod cache {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::Path;

    use hmac::{KeyInit, Mac};

    type HmacSha256 = hmac::Hmac<sha2::Sha256>;

    /// The start of a signed artifact: a format tag, then the 32-byte HMAC, then the bytes
    /// wasmtime wrote.
    const MAGIC: &[u8; 16] = b"dataway-cwasm-1\n";
    const TAG: usize = 32;
    const KEY_FILE: &str = "cache.key";

    /// The per-install key of a trusted cache directory.
    pub struct Key([u8; 32]);

    /// The key of `dir` once `dir` is shown to be ours and private (made 0700 if missing);
    /// `Err` says why the cache must not be used.
    pub fn open(dir: &Path) -> Result<Key, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
        let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() {
            return Err("not a directory".into());
        }
        if meta.uid() != me {
            return Err(format!(
                "owned by uid {}, not the daemon's user (uid {me})",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "group- or world-writable (mode {:o}); `chmod 700` it",
                meta.mode() & 0o7777
            ));
        }
        read_key(dir).map(Key)
    }

    fn read_key(dir: &Path) -> Result<[u8; 32], String> {
        let path = dir.join(KEY_FILE);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return make_key(dir),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        // SAFETY: as above.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 || meta.len() != 32 {
            return Err(format!(
                "{}: not a 32-byte file of the daemon's user with mode 600",
                path.display()
            ));
        }
        let mut key = [0; 32];
        file.read_exact(&mut key)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(key)
    }

    /// Makes the key: written under a private temporary name, then linked into place, so
    /// two processes starting at once end up with one key and nobody reads half of one.
    fn make_key(dir: &Path) -> Result<[u8; 32], String> {
        let mut key = [0; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| format!("no randomness for the cache key: {e}"))?;
        // A temporary file is made 0600 with a unique name (tempfile).
        let written = (|| {
            let mut f = tempfile::Builder::new()
                .prefix(".cache.key.")
                .tempfile_in(dir)?;
            f.write_all(&key)?;
            f.as_file().sync_all()?;
            f.persist_noclobber(dir.join(KEY_FILE))
                .map_err(|e| e.error)?;
            Ok::<_, std::io::Error>(())
        })();
        match written {
            Ok(()) => Ok(key),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(dir),
            Err(e) => Err(format!(
                "cannot write {}: {e}",
                dir.join(KEY_FILE).display()
            )),
        }
    }

    fn tag(key: &Key, name: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&key.0).expect("HMAC takes any key length");
        // The file name (plugin hash + engine) is signed too: an artifact cannot be moved
        // under another plugin's name.
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name);
        mac.update(body);
        mac
    }

    /// The artifact's compiled bytes if its tag is valid; `Ok(None)`: no such file.
    pub fn read(path: &Path, key: &Key) -> Result<Option<Vec<u8>>, String> {
        let mut bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if bytes.len() < MAGIC.len() + TAG || !bytes.starts_with(MAGIC) {
            return Err("not signed by this daemon (an older version's file, or planted)".into());
        }
        let name = path.file_name().map_or(&[][..], |n| n.as_encoded_bytes());
        let (head, body) = bytes.split_at(MAGIC.len() + TAG);
        tag(key, name, body)
            .verify_slice(&head[MAGIC.len()..])
            .map_err(|_| "its checksum does not match (changed since it was written)")?;
        bytes.drain(..MAGIC.len() + TAG);
        Ok(Some(bytes))
    }

    /// Writes `body` signed, 0600, under a temporary name renamed into place.
    pub fn write(path: &Path, key: &Key, body: &[u8]) -> std::io::Result<()> {
        let name = path.file_name().map_or(&[][..], |n| n.as_encoded_bytes());
        let mac = tag(key, name, body).finalize().into_bytes();
        // Unique, 0600 (tempfile): loads of one plugin racing in two threads or processes
        // each write their own file, and the last rename wins whole.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut f = tempfile::Builder::new()
            .prefix(".cwasm.")
            .tempfile_in(dir)?;
        f.write_all(MAGIC)?;
        f.write_all(&mac)?;
        f.write_all(body)?;
        f.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_matches_the_package() {
        assert!(WIT_PACKAGE.ends_with(&format!("@{WIT_VERSION}")));
        let wit = include_str!("../../wit/sinker.wit");
        assert!(wit.contains(&format!("package {WIT_PACKAGE};")));
    }

    /// Which imports of our interfaces load: the series of 0.1.1 is 0.1, as wasmtime's
    /// linker matches them.
    #[test]
    fn wit_versions_of_the_same_series_are_accepted() {
        use WitVersion::*;
        let cases = [
            ("dataway:sinker/types@0.1.1", Some(Supported)),
            ("dataway:sinker/host@0.1.1", Some(Supported)),
            ("dataway:sinker/types@0.1.0", Some(Supported)),
            ("dataway:sinker/host@0.1.0", Some(Supported)),
            ("dataway:sinker/types@0.1.2", Some(Newer)),
            ("dataway:sinker/types@0.1.10", Some(Newer)),
            ("dataway:sinker/host@0.2.0", Some(Incompatible)),
            ("dataway:sinker/types@0.0.1", Some(Incompatible)),
            ("dataway:sinker/types@1.1.0", Some(Incompatible)),
            ("dataway:sinker/types@0.1.0-rc1", Some(Incompatible)),
            ("dataway:sinker/types@0.1.0+build", Some(Incompatible)),
            ("dataway:sinker/types@0.1", Some(Incompatible)),
            ("dataway:sinker/types@0.1.0.0", Some(Incompatible)),
            ("dataway:sinker/types", None),
            ("dataway:sinker/other@0.1.0", None),
            ("wasi:io/streams@0.2.0", None),
            ("batch", None),
        ];
        for (name, want) in cases {
            assert_eq!(wit_version_of(name), want, "{name}");
        }
    }

    fn limits(after: u32, min_ms: u64) -> Limits {
        Limits {
            quarantine_after: after,
            quarantine_min: Duration::from_millis(min_ms),
            quarantine_max: Duration::from_secs(3600),
            ..Limits::default()
        }
    }

    #[test]
    fn quarantine_ignores_calls_in_flight_and_lets_one_trial_through() {
        let h = Health::default();
        let l = limits(2, 30);
        // The test's clock: it moves only when the test says so.
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Three calls in flight; two fail: quarantined for 30 ms, one strike.
        let (a, b, c) = (
            h.admit(t0).unwrap(),
            h.admit(t0).unwrap(),
            h.admit(t0).unwrap(),
        );
        h.record(&a, false, &l, t0);
        h.record(&b, false, &l, t0);
        assert!(h.quarantined(t0));
        assert!(h.admit(t0).is_none());
        // The third ends later: neither its failure adds a strike nor a success lifts it.
        h.record(&c, true, &l, ms(1));
        assert!(h.quarantined(ms(1)));
        assert_eq!(h.lock().strikes, 1);
        // Still refused just before the period ends.
        assert!(h.admit(ms(29)).is_none());
        // After the period: one trial, everyone else still refused while it runs.
        let trial = h.admit(ms(30)).unwrap();
        assert!(trial.trial);
        assert!(h.admit(ms(31)).is_none());
        assert!(h.quarantined(ms(31)), "quarantined while the trial runs");
        // The trial fails at 35 ms: quarantined again, twice as long (until 95 ms).
        h.record(&trial, false, &l, ms(35));
        assert_eq!(h.lock().until, Some(ms(95)));
        assert_eq!(h.lock().strikes, 2);
        assert!(h.admit(ms(94)).is_none());
        assert!(h.admit(ms(95)).unwrap().trial);
    }

    #[test]
    fn a_successful_trial_ends_the_quarantine_and_resets_the_backoff() {
        let h = Health::default();
        let l = limits(1, 10);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let a = h.admit(t0).unwrap();
        h.record(&a, false, &l, t0);
        assert!(h.admit(ms(9)).is_none());
        let trial = h.admit(ms(10)).unwrap();
        h.record(&trial, true, &l, ms(11));
        assert!(!h.quarantined(ms(11)));
        assert_eq!(h.lock().strikes, 0);
        let next = h.admit(ms(11)).unwrap();
        assert!(!next.trial);
        // The backoff starts over: the next quarantine is 10 ms again, not 20.
        h.record(&next, false, &l, ms(12));
        assert_eq!(h.lock().until, Some(ms(22)));
    }

    #[test]
    fn the_quarantine_period_doubles_up_to_its_cap() {
        let h = Health::default();
        let l = Limits {
            quarantine_after: 1,
            quarantine_min: Duration::from_secs(1),
            quarantine_max: Duration::from_secs(5),
            ..Limits::default()
        };
        let mut now = Instant::now();
        let mut periods = Vec::new();
        for _ in 0..5 {
            let a = h.admit(now).unwrap();
            h.record(&a, false, &l, now);
            let until = h.lock().until.unwrap();
            periods.push((until - now).as_secs());
            now = until;
        }
        assert_eq!(periods, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn log_limiter_admits_a_window_then_counts_what_it_drops() {
        let l = RateLimiter::new();
        for _ in 0..LOG_LINES_PER_WINDOW {
            assert_eq!(l.admit(), Some(0));
        }
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        // A new window: the next line written says two were dropped.
        l.state.lock().unwrap().0 -= LOG_WINDOW;
        assert_eq!(l.admit(), Some(2));
        assert_eq!(l.admit(), Some(0));
    }
}
