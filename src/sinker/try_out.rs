//! `dataway sinker test`: runs a plugin over points from stdin and says which match, so an
//! author can try a rule before deploying it. Same engine, limits and batch as the daemon.

use std::io::{Read, Write};
use std::sync::Arc;

use super::plugin::bindings::dataway::sinker::types::LogLevel;
use super::{Limits, LogFn, Runtime};
use crate::category::Category;
use crate::point::{self, ParseOptions, Precision};

/// Loads `plugin` with `config`, reads line protocol from `input`, and writes one line per
/// point (`matched` / `not matched`) to `out`; the plugin's log lines go to `log`.
/// Returns the number of matched points, or a message for the user.
pub fn run(
    plugin: &std::path::Path,
    config: &str,
    category: Category,
    input: &mut dyn Read,
    out: &mut dyn Write,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<usize, String> {
    let bytes =
        std::fs::read(plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    let log_fn: LogFn = Arc::new(move |level: LogLevel, msg: &str| {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        log(&format!("plugin {level}: {msg}"))
    });
    let runtime = Runtime::new(None).map_err(|e| format!("{e:#}"))?;
    let p = runtime
        .load(&bytes, config, &Limits::default(), log_fn)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
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
    let points = Arc::new(points);
    let mask = p.matches(category, &points).map_err(|e| e.to_string())?;
    let mut matched = 0;
    for (p, m) in points.iter().zip(&mask) {
        matched += usize::from(*m);
        let verdict = if *m { "matched    " } else { "not matched" };
        writeln!(out, "{verdict} {}", p.to_line_protocol()).map_err(|e| e.to_string())?;
    }
    writeln!(out, "{matched} of {} points matched", points.len()).map_err(|e| e.to_string())?;
    Ok(matched)
}
