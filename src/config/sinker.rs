//! `[[dataway.sinkers]]`, drop-in sidecars and `[dataway.sinker_limits]`.
//!
//! A sinker is categories + a condition (a WASM plugin, or none: match all) + its own
//! endpoint URLs, which send with the main endpoints' options unless the sinker overrides
//! one. The same table, minus `name` and `plugin`, is the format of a drop-in sidecar
//! `NAME.toml` next to `NAME.wasm` in `plugins_dir`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::category::Category;
use crate::endpoint_url::EndpointUrl;

/// One sinker.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinkerConfig {
    /// Unique name; it labels the sinker's metrics and log lines.
    #[serde(default)]
    pub name: String,
    /// Categories whose points the sinker looks at, by name or alias
    /// (`metric`/`M`, `logging`/`L`, …). Points of other categories never reach it.
    pub categories: Vec<String>,
    /// The condition: a component file in `plugins_dir` (`datakit_filter.wasm`). Without
    /// one, the sinker takes every point of its categories (as DataKit).
    #[serde(default)]
    pub plugin: Option<String>,
    /// Handed to the plugin's `init`: a string as is, a table or array as JSON.
    #[serde(default)]
    pub config: Option<toml::Value>,
    /// The sinker's endpoints: the points it matches go to every one of them.
    #[serde(default)]
    pub urls: Vec<String>,
    /// DataKit's `filters` key. In the config file it becomes `plugin =
    /// "datakit_filter.wasm"` + `config = [filters]` before this is read ([`super::datakit`]);
    /// a drop-in sidecar's is refused (its condition is its own `.wasm`).
    #[serde(default)]
    pub filters: Option<toml::Value>,
    /// Overrides `dataway.timeout` for this sinker's endpoints.
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Overrides `dataway.http_proxy` (with its scheme).
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Overrides `dataway.max_retry_count`.
    #[serde(default)]
    pub max_retry_count: Option<u32>,
    /// Overrides `dataway.gzip`.
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Overrides `dataway.workers`.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Overrides `dataway.queue_size`.
    #[serde(default)]
    pub queue_size: Option<usize>,
}

impl SinkerConfig {
    /// Parses a drop-in sidecar; its name and plugin come from the file name, and its
    /// relative `file://` URLs are relative to its folder (as a config file's are to its own);
    /// `origin` is the sidecar's path.
    pub fn from_sidecar(text: &str, name: &str, origin: &str) -> Result<SinkerConfig, ConfigError> {
        let mut s: SinkerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        if !s.name.is_empty() || s.plugin.is_some() {
            return Err(invalid(
                format!("{origin}: name/plugin"),
                "a drop-in sidecar takes its name and plugin from its file name; remove these keys",
            ));
        }
        s.name = name.to_string();
        s.plugin = Some(format!("{name}.wasm"));
        if let Some(dir) = std::path::Path::new(origin).parent() {
            super::resolve_file_urls(&mut s.urls, dir);
        }
        Ok(s)
    }

    /// The categories, parsed (validated by [`SinkerConfig::validate`]).
    pub fn parsed_categories(&self) -> Vec<Category> {
        let mut out: Vec<Category> = Vec::new();
        for c in &self.categories {
            if let Ok(c) = c.parse::<Category>()
                && !out.contains(&c)
            {
                out.push(c);
            }
        }
        out
    }

    /// The string given to the plugin's `init`.
    pub fn plugin_config(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => serde_json::to_string(v).expect("TOML values encode as JSON"),
        }
    }

    /// Checks the sinker; `key` is where it is (`dataway.sinkers[0]`, or a sidecar's path).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "every sinker needs a name"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "`{}`: use letters, digits, `-`, `_` and `.` only",
                    self.name
                ),
            ));
        }
        if self.filters.is_some() {
            // In the config file `filters` is read by `datakit` (as the built-in filter's
            // config); only a drop-in sidecar gets here.
            return Err(invalid(
                format!("{key}.filters"),
                "a drop-in's condition is its own NAME.wasm: `filters` belongs in the config \
                 file's [[dataway.sinkers]] (there it means the built-in datakit_filter.wasm)",
            ));
        }
        if self.categories.is_empty() {
            return Err(invalid(
                format!("{key}.categories"),
                "list at least one category, e.g. [\"metric\", \"L\"]",
            ));
        }
        for (i, c) in self.categories.iter().enumerate() {
            c.parse::<Category>()
                .map_err(|e| invalid(format!("{key}.categories[{i}]"), e.to_string()))?;
        }
        if let Some(p) = &self.plugin
            && (p.is_empty() || p.contains('/') || p.contains('\\') || !p.ends_with(".wasm"))
        {
            return Err(invalid(
                format!("{key}.plugin"),
                format!("`{p}`: give a file name in plugins_dir ending in .wasm, like `rule.wasm`"),
            ));
        }
        if self.urls.is_empty() {
            return Err(invalid(
                format!("{key}.urls"),
                "a sinker needs at least one URL to send its points to",
            ));
        }
        for (i, u) in self.urls.iter().enumerate() {
            EndpointUrl::parse(u)
                .map_err(|e| invalid(format!("{key}.urls[{i}]"), e.to_string()))?;
        }
        if let Some(p) = &self.http_proxy {
            super::validate_proxy(p).map_err(|r| invalid(format!("{key}.http_proxy"), r))?;
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid(format!("{key}.timeout"), "must be more than 0s"));
        }
        for (k, v) in [("workers", self.workers), ("queue_size", self.queue_size)] {
            if v == Some(0) {
                return Err(invalid(format!("{key}.{k}"), "must be more than 0"));
            }
        }
        Ok(())
    }
}

/// `[dataway.sinker_limits]`: the sandbox every plugin runs in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkerLimitsConfig {
    /// Longest one call into a plugin may run; past it the batch counts as not matched.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
    /// Memory cap of one plugin instance, in bytes.
    pub max_memory: usize,
    /// Table cap of one plugin instance, in elements.
    pub max_table_elements: usize,
    /// Idle instances kept per plugin.
    pub max_idle_instances: usize,
    /// Cap of the wasm stack of one call, in bytes (deep recursion traps past it).
    pub max_stack: usize,
    /// Consecutive failed calls before a plugin is quarantined (not called).
    pub quarantine_after: u32,
    /// First quarantine period; doubles on each further failure, up to `quarantine_max`.
    #[serde(with = "super::duration")]
    pub quarantine_min: Duration,
    /// Longest quarantine period.
    #[serde(with = "super::duration")]
    pub quarantine_max: Duration,
    /// Where compiled plugins are cached across restarts (a Python component takes
    /// seconds to compile). Compiled plugins are native code: this directory must be
    /// writable only by the daemon's user (it is not used otherwise, and an artifact is
    /// loaded only if its HMAC, keyed by `cache.key` in it, matches). Default: `$XDG_CACHE_HOME/dataway/plugins` or
    /// `~/.cache/dataway/plugins`. Empty: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Largest plugin file (and drop-in sidecar) read, in bytes: a bigger one is refused
    /// before it is read, so a stray huge or endless file cannot fill the daemon's memory.
    pub max_plugin_size: u64,
}

/// Default `max_plugin_size`: 64 MiB (a Python component is ~20 MiB).
pub const DEFAULT_MAX_PLUGIN_SIZE: u64 = 64 << 20;

/// Default cap of a plugin call's wasm stack, in bytes.
pub const DEFAULT_PLUGIN_MAX_STACK: usize = 1 << 20;

impl Default for SinkerLimitsConfig {
    fn default() -> Self {
        SinkerLimitsConfig {
            timeout: Duration::from_millis(100),
            max_memory: 64 << 20,
            max_table_elements: 100_000,
            max_idle_instances: 8,
            max_stack: DEFAULT_PLUGIN_MAX_STACK,
            quarantine_after: 3,
            quarantine_min: Duration::from_secs(1),
            quarantine_max: Duration::from_secs(300),
            cache_dir: None,
            max_plugin_size: DEFAULT_MAX_PLUGIN_SIZE,
        }
    }
}

impl SinkerLimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = "dataway.sinker_limits";
        if self.timeout.is_zero() {
            return Err(invalid(format!("{key}.timeout"), "must be more than 0s"));
        }
        if self.max_memory < 1 << 20 {
            return Err(invalid(
                format!("{key}.max_memory"),
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !(64 << 10..=64 << 20).contains(&self.max_stack) {
            return Err(invalid(
                format!("{key}.max_stack"),
                "must be between 65536 (64 KiB) and 67108864 (64 MiB)",
            ));
        }
        if self.max_plugin_size == 0 {
            return Err(invalid(
                format!("{key}.max_plugin_size"),
                "must be more than 0 (bytes; the default is 67108864, 64 MiB)",
            ));
        }
        if self.quarantine_after == 0 {
            return Err(invalid(
                format!("{key}.quarantine_after"),
                "must be at least 1",
            ));
        }
        if self.timeout > Duration::from_secs(60) {
            return Err(invalid(
                format!("{key}.timeout"),
                "must be at most 60s: a call this long holds up its writer",
            ));
        }
        if self.quarantine_max > Duration::from_secs(86_400) {
            return Err(invalid(
                format!("{key}.quarantine_max"),
                "must be at most 24h (remove the plugin to disable it for longer)",
            ));
        }
        if self.quarantine_max < self.quarantine_min {
            return Err(invalid(
                format!("{key}.quarantine_max"),
                "must be at least quarantine_min",
            ));
        }
        Ok(())
    }
}
