//! The `dataway` command: `run` the daemon, `check` a configuration, `monitor` a running
//! daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use dataway::Category;
use dataway::config::{Config, LogFormat, Notes};
use dataway::daemon::Daemon;
use dataway::endpoint::EndpointUrl;

/// glibc malloc's arenas: at most this many (its default is 8 per core). Threads that
/// share an arena contend a little; each extra arena holds its own freed memory. With 2 the
/// 4-client load test peaked ~20% lower at the same CPU per point (BENCHMARKS.md,
/// *Allocator*).
const ARENA_MAX: libc::c_int = 2;

/// Allocations from this size up are mapped on their own and unmapped when freed, so the
/// large buffers a write passes through (bodies, kept text, gzip output: ~1 MB each) go
/// back to the OS at once instead of piling up in the heap between bursts. glibc's default
/// threshold starts at 128 KiB but rises to 32 MiB as such buffers are freed, which let
/// them pile up.
const MMAP_THRESHOLD: libc::c_int = 512 * 1024;

/// Free memory at the top of an arena's heap is given back to the OS only past this much.
/// Setting the mmap threshold fixes glibc's trim threshold at its 128 KiB start, so each
/// write's smaller buffers (a sinker's share, its columns: tens to hundreds of KiB) were
/// given back and faulted in again, zeroed, at the next write: 8 MiB gave 5-13% more
/// points per CPU-second, with sinkers or without (BENCHMARKS.md, *Issue 12, fourth
/// session*). 8 MiB an arena (16 MiB at most) is held instead.
const TRIM_THRESHOLD: libc::c_int = 8 * 1024 * 1024;

/// Sets the allocator up for a long-running daemon whose large buffers come and go,
/// before it allocates much; settings the user made in the environment win. Returns what
/// was done, for the log.
///
/// The allocator is the system's: since writes are forwarded as text (no `String`s per
/// point), mimalloc was no faster end to end and held up to 2x the memory (BENCHMARKS.md).
fn tune_allocator() -> &'static str {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return "the system's, as it is";
    }
    let set = [
        "GLIBC_TUNABLES",
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ];
    if set.iter().any(|v| std::env::var_os(v).is_some()) {
        return "glibc malloc, as the environment sets it";
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets a malloc parameter; called once, before the runtime starts any
    // thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
    "glibc malloc, 2 arenas, buffers from 512 KiB mapped on their own, 8 MiB kept free an arena"
}

/// Ships observability points (line protocol) to Dataway servers.
#[derive(Parser)]
#[command(name = "dataway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without -c it runs on the embedded defaults: ingest on
    /// 127.0.0.1:9529, points written to ./dataway-out/<category>.lp.
    Run {
        /// Configuration file (TOML): ours, or DataKit's datakit.conf as it is.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// `text`, or `json`: every line on stderr one JSON object (for log shippers),
        /// errors before the log starts included. Over `[log] format`.
        #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
    },
    /// Validate a configuration, its sinkers and their plugins, and print the resolved
    /// endpoints (tokens redacted).
    Check {
        /// Configuration file (TOML; ours or DataKit's datakit.conf); the embedded defaults
        /// when omitted.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Sinker tools.
    #[command(subcommand)]
    Sinker(SinkerCommand),
    /// Watch a running daemon, live in the terminal or once as text, from its /metrics.
    ///
    /// Shows per category the points/s received, sent and failed (with totals and drops);
    /// per endpoint its queue, fail-cache and WAL-held points; per sinker the points/s
    /// offered, match rate, mean call time and state (serving, quarantined, reload failed,
    /// load failed, no plugin); the memory budget and connections. Refreshes every second;
    /// `q`, Esc or Ctrl-C quits, arrows scroll. While the daemon does not answer, the view
    /// says why and keeps retrying. Rates are per second between two successive scrapes;
    /// match rate and call time are over the last interval when it saw points, else since
    /// the daemon started.
    #[command(
        after_help = "With --once: scrapes twice, one second apart, prints the view \
                            once as plain text (rates over that second, totals since the \
                            daemon started; counts exact below a million, then 1.2M; no \
                            column cut) and exits 0, or 1 when the daemon cannot be reached \
                            (the reason on stderr)."
    )]
    Monitor {
        /// The daemon's address (its ingest listener, which serves /metrics), or the full
        /// URL of its metrics.
        #[arg(long, default_value = "http://127.0.0.1:9529")]
        url: String,
        /// Print the view once as text (for scripts) instead of the live terminal view.
        #[arg(long)]
        once: bool,
    },
    /// Compile a plugin for the daemon (run by the daemon itself, in a child process).
    #[command(hide = true)]
    CompilePlugin {
        #[arg(long)]
        max_stack: usize,
        input: PathBuf,
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum SinkerCommand {
    /// Run a condition plugin, or DataKit filters, over line protocol read from stdin and
    /// print, for each point, whether it matched (the plugin's log lines go to stderr).
    /// Compiled plugins are kept in the daemon's default cache for the next run.
    Test {
        /// The plugin (a WebAssembly component). `datakit_filter.wasm`, when there is no
        /// such file, is the built-in DataKit filter.
        #[arg(long, value_name = "FILE.wasm", required_unless_present = "filters")]
        plugin: Option<PathBuf>,
        /// The string given to the plugin's init (for datakit_filter: a filter, or a JSON
        /// array of filters).
        #[arg(long, default_value = "", conflicts_with = "filters")]
        config: String,
        /// DataKit filters, evaluated with the built-in DataKit filter: the JSON array a
        /// sinker's `filters` holds, e.g. '["{ usage > 90 }", "{ measurement = \"cpu\" }"]'.
        #[arg(long, value_name = "JSON", conflicts_with = "plugin")]
        filters: Option<String>,
        /// Category of the points (name or alias: metric, M, logging, L, ...).
        #[arg(long, default_value = "metric")]
        category: Category,
    },
}

/// The config at `path` (the embedded defaults without one); an error is printed in
/// `format` and is exit code 2.
fn load(path: Option<&PathBuf>, format: LogFormat) -> Result<(Config, Notes), ExitCode> {
    Config::load_noted(path.map(PathBuf::as_path), |k| std::env::var(k).ok()).map_err(|e| {
        print_error(format, &e.to_string());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(config.as_ref(), LogFormat::Text) {
            Ok((cfg, notes)) => print_check(&cfg, &notes),
            Err(code) => code,
        },
        Command::Monitor { url, once } => {
            let url = match dataway::monitor::metrics_url(&url) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = if once {
                dataway::monitor::once(&url, &mut std::io::stdout().lock())
            } else {
                dataway::monitor::interactive(&url)
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CompilePlugin {
            max_stack,
            input,
            output,
        } => match dataway::sinker::plugin::compile_file(&input, &output, max_stack) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sinker(SinkerCommand::Test {
            plugin,
            config,
            filters,
            category,
        }) => {
            use dataway::sinker::try_out::{self, Source};
            let (source, config) = match (&plugin, filters) {
                (Some(p), _) => (Source::File(p), config),
                (None, Some(json)) => match try_out::filters_config(&json) {
                    Ok(c) => (Source::BuiltinFilter, c),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                (None, None) => unreachable!("clap requires --plugin or --filters"),
            };
            let stderr = std::sync::Arc::new(|line: &str| eprintln!("{line}"));
            let result = try_out::run(
                source,
                &config,
                category,
                dataway::sinker::reload::default_cache_dir(),
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
                stderr,
            );
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, log_format } => {
            let (cfg, notes) = match load(config.as_ref(), log_format.unwrap_or_default()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let format = log_format.unwrap_or(cfg.log.format);
            let allocator = tune_allocator();
            init_logging(&cfg.log.level, format);
            tracing::debug!("allocator: {allocator}");
            log_notes(&notes);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once, on stderr where the log goes too: not also as a log line.
                    print_error(format, &format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What loading did to DataKit's keys, once each: the mapping as info, the ignored keys as
/// warnings.
fn log_notes(notes: &Notes) {
    if let Some(why) = &notes.dialect {
        tracing::info!("reading the config as DataKit's datakit.conf: {why}");
    }
    for m in &notes.mapped {
        tracing::info!("DataKit key mapped: {m}");
    }
    for w in &notes.ignored {
        tracing::warn!("{w}");
    }
}

/// `dataway check`'s account of DataKit's keys: the format, what was mapped, what ignored.
fn print_notes(notes: &Notes) {
    match &notes.dialect {
        Some(why) => println!("format: DataKit datakit.conf ({why})"),
        None => println!("format: dataway"),
    }
    for m in &notes.mapped {
        println!("mapped: {m}");
    }
    for w in &notes.ignored {
        println!("ignored: {w}");
    }
}

fn print_check(cfg: &Config, notes: &Notes) -> ExitCode {
    print_notes(notes);
    let sinkers = dataway::sinker::reload::check(&cfg.dataway);
    let bad = sinkers.iter().filter(|r| r.is_err()).count();
    for r in &sinkers {
        match r {
            Ok(line) => println!("{line}"),
            Err(line) => eprintln!("error: {line}"),
        }
    }
    if bad > 0 {
        eprintln!("error: {bad} sinker problem(s); the daemon would run them disabled");
        return ExitCode::FAILURE;
    }
    println!("config ok");
    println!("ingest: http://{}/v1/write/<category>", cfg.ingest.listen);
    let d = &cfg.dataway;
    let endpoint = |u: &str| {
        let url = EndpointUrl::parse(u).expect("validated");
        match &url {
            EndpointUrl::File { dir } => {
                format!("{url} (appends to {}/<category>.lp)", absolute(dir))
            }
            EndpointUrl::Http { .. } => url.to_string(),
        }
    };
    for (i, u) in d.urls.iter().enumerate() {
        println!("endpoint[{i}]: {}", endpoint(u));
    }
    // DataKit's rule: other APIs go to the first endpoint; a directory cannot answer them.
    match EndpointUrl::parse(&d.urls[0]) {
        Ok(EndpointUrl::Http { .. }) => println!("other APIs (/v1/query/raw, ...): endpoint[0]"),
        _ => println!(
            "other APIs (/v1/query/raw, ...): none (endpoint[0] is a file:// directory; list \
             the Dataway server's URL first in dataway.urls to forward them)"
        ),
    }
    for s in &d.sinkers {
        for (i, u) in s.urls.iter().enumerate() {
            println!("sinker `{}` endpoint[{i}]: {}", s.name, endpoint(u));
        }
    }
    if d.tls_insecure {
        println!(
            "tls: certificates of https:// endpoints are NOT verified (dataway.tls_insecure); \
             give the CA in dataway.tls_ca_file instead"
        );
    }
    for (what, place) in data_dirs(cfg) {
        println!("{what}: {place}");
    }
    println!("{}", dataway::daemon::crash_loss(d));
    ExitCode::SUCCESS
}

/// A path as the daemon would use it: relative ones are relative to the working directory.
fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Where the daemon keeps things on disk, for `check` and the start-up log.
fn data_dirs(cfg: &Config) -> Vec<(&'static str, String)> {
    let d = &cfg.dataway;
    let fail_cache = if d.fail_cache.enabled {
        format!(
            "{} (one file per HTTP endpoint)",
            absolute(&d.fail_cache.path)
        )
    } else {
        "off".to_string()
    };
    let wal = if d.wal.enabled {
        absolute(&d.wal.path.join("wal.redb"))
    } else {
        "off".to_string()
    };
    let mut plugins = absolute(&d.plugins_dir);
    if !d.plugins_dir.is_dir() {
        plugins.push_str(" (does not exist: only the built-in datakit_filter.wasm)");
    }
    let cache = match &d.sinker_limits.cache_dir {
        Some(p) if p.as_os_str().is_empty() => "off".to_string(),
        Some(p) => absolute(p),
        None => dataway::sinker::reload::default_cache_dir()
            .map_or_else(|| "off (no HOME)".to_string(), |p| absolute(&p)),
    };
    vec![
        ("fail-cache", fail_cache),
        ("wal", wal),
        ("plugins", plugins),
        ("compiled plugins", cache),
    ]
}

/// `RUST_LOG` wins over the config's level, so an operator can turn on debug without
/// editing the file.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: escape codes make log files unreadable.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields beside `message` at the top level, no span list: one flat
        // object a shipper indexes as it is.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".to_string()),
    }
}

/// An error from before the log started, or the one that ends the run: on stderr, in the
/// log's format (a JSON line, as the log's own, when the log is JSON).
fn print_error(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now())
                    .to_string(),
                "level": "ERROR",
                "message": message,
                "target": "dataway",
            })
        ),
    }
}

/// Raises the open-file soft limit to the hard limit: every ingest connection, upstream
/// connection, WAL and cache file takes a descriptor, and services are still started with a
/// soft limit of 1,024 that a few idle clients exhaust. (The ingest connection cap is sized
/// from the raised limit.)
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    let old = getrlimit(Resource::Nofile);
    if old.current == old.maximum {
        tracing::info!(
            "open-file limit: {} (already the hard limit)",
            show(old.current)
        );
        return;
    }
    let new = Rlimit {
        current: old.maximum,
        maximum: old.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => tracing::info!(
            "open-file limit raised from {} to {} (the hard limit)",
            show(old.current),
            show(old.maximum)
        ),
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit from {} to {}: {e}; ingest connections are \
             capped at half of it",
            show(old.current),
            show(old.maximum)
        ),
    }
}

async fn run(mut cfg: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let listener = tokio::net::TcpListener::bind(cfg.ingest.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (ingest.listen): {e}",
                cfg.ingest.listen
            )
        })?;
    let dirs: Vec<String> = data_dirs(&cfg)
        .into_iter()
        .map(|(what, place)| format!("{what}: {place}"))
        .collect();
    tracing::info!("data on disk: {}", dirs.join("; "));
    // The port really taken (the config may say 0), for whoever the data directories'
    // lock turns away.
    if let Ok(addr) = listener.local_addr() {
        cfg.ingest.listen = addr;
    }
    let (daemon, listener) =
        Daemon::start_serving(cfg, listener, std::env::current_exe().ok()).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    daemon.run(listener, shutdown).await?;
    Ok(())
}

/// The first SIGINT/SIGTERM starts a graceful stop; a second one exits at once (128 + the
/// signal's number, as a shell reports a process killed by it). The handlers are installed
/// before this returns, so a signal sent as soon as the daemon says it listens is not lost
/// to the default action.
fn watch_signals(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        for n in 0.. {
            let (name, code) = tokio::select! {
                _ = int.recv() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
            };
            if n == 0 {
                tracing::info!(
                    signal = name,
                    "signal received: stopping (again to exit at once)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting without draining");
                std::process::exit(code);
            }
        }
    }
}
