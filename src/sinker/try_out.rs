//! `dataway sinker test`: runs a plugin over points from stdin and says which match, so an
//! author can try a rule before deploying it. Same engine, limits, batch and compiled-plugin
//! cache as the daemon.
//!
//! In: a plugin file, or DataKit filters for the built-in filter ([`super::builtin`]); its
//! config; line protocol. Out: one verdict per point, and on the log, whether the compiled
//! plugin came from the cache.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plugin::bindings::dataway::sinker::types::LogLevel;
use super::{Limits, LogFn, Runtime, builtin};
use crate::category::Category;
use crate::point::{self, Content, ParseOptions, Precision};

/// Which plugin to run.
pub enum Source<'a> {
    /// A component file. `datakit_filter.wasm` that does not exist is the built-in filter,
    /// as in the daemon.
    File(&'a Path),
    /// The built-in DataKit filter.
    BuiltinFilter,
}

/// The config for the built-in filter from `--filters`: the JSON array of filter strings a
/// sinker's `filters` holds. Checked here so a typo is named as the option's, not as the
/// plugin's.
pub fn filters_config(json: &str) -> Result<String, String> {
    serde_json::from_str::<Vec<String>>(json).map_err(|e| {
        format!(
            "--filters takes a JSON array of filter strings, as a sinker's `filters` holds, \
             e.g. --filters '[\"{{ usage > 90 }}\", \"{{ measurement = \\\"cpu\\\" }}\"]': {e}"
        )
    })?;
    Ok(json.to_string())
}

/// Loads the plugin with `config`, reads line protocol from `input`, and writes one line per
/// point (`matched` / `not matched`) to `out`; the plugin's log lines, and where its
/// compiled code came from, go to `log`. Compiled code is kept in `cache_dir` (the daemon's
/// default cache) so the next run does not compile again.
/// Returns the number of matched points, or a message for the user.
pub fn run(
    source: Source<'_>,
    config: &str,
    category: Category,
    cache_dir: Option<PathBuf>,
    input: &mut dyn Read,
    out: &mut dyn Write,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<usize, String> {
    let builtin_filter = || Cow::Borrowed(builtin::DATAKIT_FILTER_WASM);
    let (bytes, name) = match source {
        Source::BuiltinFilter => (builtin_filter(), "the built-in DataKit filter".to_string()),
        // As the daemon reads plugins: regular files within the default size limit only.
        Source::File(plugin) => {
            match super::plugin::read_plugin_file(plugin, crate::config::DEFAULT_MAX_PLUGIN_SIZE) {
                Ok(b) => (Cow::Owned(b), plugin.display().to_string()),
                Err(e) if e.is_absent() && plugin.as_os_str() == builtin::DATAKIT_FILTER => {
                    log(&format!(
                        "no file {}: using the built-in DataKit filter",
                        plugin.display()
                    ));
                    (builtin_filter(), "the built-in DataKit filter".to_string())
                }
                Err(e) => return Err(format!("cannot read {}: {e}", plugin.display())),
            }
        }
    };
    let plugin_log = log.clone();
    let log_fn: LogFn = Arc::new(move |level: LogLevel, msg: &str| {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        plugin_log(&format!("plugin {level}: {msg}"))
    });
    let warn_log = log.clone();
    let runtime = Runtime::new(cache_dir)
        .map_err(|e| format!("{e:#}"))?
        .on_warning(Arc::new(move |m| warn_log(&format!("warning: {m}"))));
    let started = std::time::Instant::now();
    let p = runtime
        .load(&bytes, config, &Limits::default(), log_fn)
        .map_err(|e| format!("{name}: {e}"))?;
    match runtime.cache_dir() {
        Some(dir) if p.from_cache() => log(&format!(
            "compiled plugin loaded from the cache in {}",
            dir.display()
        )),
        Some(dir) => log(&format!(
            "plugin compiled in {:.1?}; kept in the cache in {} for the next run",
            started.elapsed(),
            dir.display()
        )),
        None => log(&format!(
            "plugin compiled in {:.1?} (no cache: neither XDG_CACHE_HOME nor HOME is set)",
            started.elapsed()
        )),
    }
    let mut text = Vec::new();
    input
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read points from stdin: {e}"))?;
    let points = point::parse(
        &text,
        ParseOptions {
            precision: Precision::Nanos,
            default_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        },
    )
    .map_err(|e| e.to_string())?;
    if points.is_empty() {
        return Err("no points on stdin (write line protocol, one point per line)".into());
    }
    let points = Arc::new(Content::Points(points));
    let mask = p.matches(category, &points).map_err(|e| e.to_string())?;
    let Content::Points(points) = points.as_ref() else {
        unreachable!("made as points above")
    };
    let mut matched = 0;
    for (p, m) in points.iter().zip(&mask) {
        matched += usize::from(*m);
        let verdict = if *m { "matched    " } else { "not matched" };
        writeln!(out, "{verdict} {}", p.to_line_protocol()).map_err(|e| e.to_string())?;
    }
    writeln!(out, "{matched} of {} points matched", points.len()).map_err(|e| e.to_string())?;
    Ok(matched)
}
