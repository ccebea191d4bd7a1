//! Configuration: a TOML file with DataKit's key names, embedded defaults, and the
//! `ENV_DATAWAY*` environment overrides DataKit users already set in their deployments.
//!
//! In: a TOML string (or none: the embedded defaults) and an environment lookup.
//! Out: a validated [`Config`] and the [`Notes`] of what DataKit keys were mapped or
//! ignored, or a [`ConfigError`] that names the key and says why. A DataKit
//! `datakit.conf` loads as it is ([`datakit`] maps its schema onto ours); every key of ours
//! does something, a DataKit key that means nothing here loads with a warning naming it,
//! and a key neither has is an error (DataKit silently accepted keys that had no effect,
//! `lessons.md` #8).
//!
//! Plain data: this module imports nothing above it (`endpoint`, `sinker`, `httpcli` read
//! it, never the reverse); URLs are checked with the leaf [`crate::endpoint_url`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint_url::EndpointUrl;

pub mod datakit;
mod duration;
mod sinker;
pub use datakit::Notes;
pub use sinker::{
    DEFAULT_MAX_PLUGIN_SIZE, DEFAULT_PLUGIN_MAX_STACK, SinkerConfig, SinkerLimitsConfig,
};

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where points go and how they are sent.
    pub dataway: DatawayConfig,
    /// The local HTTP server that accepts points.
    pub ingest: IngestConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[dataway]`: the endpoints and the sender's behaviour (DataKit's names).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatawayConfig {
    /// Endpoint URLs. `https://host[:port]?token=tkn_…` sends to a Dataway server (the URL's
    /// path is ignored, its query is appended to every API URL); `file://DIR` appends the line
    /// protocol it would have sent to `DIR/<category>.lp`. Every point goes to every URL.
    pub urls: Vec<String>,
    /// Timeout of one HTTP attempt (connect + send + response).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Proxy for every HTTP endpoint, with its scheme (`http://proxy:3128`).
    pub http_proxy: Option<String>,
    /// PEM file of CA certificates trusted for `https://` endpoints (sinkers' too), on top of
    /// the built-in Mozilla roots: for a Dataway behind a private CA. Not DataKit's: DataKit
    /// (Go) trusts the system store and `SSL_CERT_FILE`; this daemon ignores both.
    pub tls_ca_file: Option<PathBuf>,
    /// DataKit's `tls_insecure`: accept any certificate from `https://` endpoints (sinkers'
    /// too), i.e. no verification at all. The daemon warns at every start while it is on;
    /// prefer `tls_ca_file`.
    pub tls_insecure: bool,
    /// Idle connections kept per host in the pool.
    pub max_idle_conns_per_host: usize,
    /// How long an idle pooled connection is kept.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Retries after the first attempt for a retryable failure (transport error, 429, 5xx
    /// except 501). 3 means up to 4 attempts, as DataKit 1.7+.
    pub max_retry_count: u32,
    /// First backoff delay; it doubles on each retry, with jitter.
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    /// Upper bound of one backoff delay, including a server's `Retry-After`.
    #[serde(with = "duration")]
    pub max_retry_delay: Duration,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// A body is cut before its uncompressed line protocol would exceed this many bytes.
    pub max_raw_body_size: usize,
    /// Wire format of uploads: `v1` line protocol, `v2` DataKit's protobuf
    /// (`com.guance.Point`).
    pub content_encoding: ContentEncoding,
    /// DataKit's server-side sinker routing: with `enable_sinker`, points are grouped by
    /// the values of these tag/field keys (plus the global tags), each group sent as its
    /// own body carrying the `X-Global-Tags` header.
    pub global_customer_keys: Vec<String>,
    /// Turns on the server-side routing of `global_customer_keys`.
    pub enable_sinker: bool,
    /// Bodies in flight at once per endpoint.
    pub workers: usize,
    /// Batches waiting per endpoint before writers are told to back off.
    pub queue_size: usize,
    /// Memory budget (bytes of points) for everything accepted but not yet delivered, across
    /// all endpoints. When it is full, ingest answers 503 with `Retry-After`.
    pub max_pending_bytes: usize,
    /// On SIGINT/SIGTERM, how long queued data may take to be delivered before exit.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Sinkers: each takes the points its condition matches to its own endpoints; points
    /// no sinker matches go to `urls`.
    pub sinkers: Vec<SinkerConfig>,
    /// Directory of condition plugins (`*.wasm`) and drop-in sinkers (`NAME.wasm` +
    /// `NAME.toml`). Watched: a changed file is reloaded without restart.
    pub plugins_dir: PathBuf,
    /// The sandbox every plugin runs in.
    pub sinker_limits: SinkerLimitsConfig,
    /// Where bodies that fail after retries are kept and resent from.
    pub fail_cache: FailCacheConfig,
    /// Acknowledge writes only once they are on disk.
    pub wal: WalConfig,
    /// DataKit's global tag keys (the keys of its `[global_host_tags]` and
    /// `[election.tags]`): with `enable_sinker`, a point's value of any of these keys
    /// groups it as `global_customer_keys` do. Only the keys matter: DataKit adds the tags
    /// to points where they are collected, and so must the writer here (this daemon adds
    /// no tags to points).
    pub global_tag_keys: Vec<String>,
    /// DataKit's `sinker_header_version`: how the `enable_sinker` groups are labelled.
    /// `v1`: `X-Global-Tags: k=v,k=v` as is; `v2`: `X-Global-Tags-V2` with each key and
    /// value URL-encoded (for values holding `,`, `=` or characters a header cannot carry).
    pub sinker_header_version: SinkerHeaderVersion,
}

/// The header that labels `enable_sinker` groups (`dataway.sinker_header_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkerHeaderVersion {
    /// `X-Global-Tags: k=v,k=v`, keys and values as they are.
    #[default]
    V1,
    /// `X-Global-Tags-V2: k=v,k=v`, keys and values URL-encoded (Go's `url.QueryEscape`).
    V2,
}

/// The wire format of uploads (`dataway.content_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// Line protocol.
    #[default]
    V1,
    /// DataKit's protobuf (`com.guance.Point` batches).
    V2,
}

/// `[dataway.wal]`: with it on, ingest answers 200 only after the points are fsynced, and
/// after a crash every acknowledged point is delivered (at least once).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Off by default: each write then waits for an fsync (BENCHMARKS.md has the cost).
    pub enabled: bool,
    /// Directory of the log file (`wal.redb`).
    pub path: PathBuf,
    /// The most bytes of writes the log holds beyond what memory and the queues take: a
    /// burst is logged, acknowledged and queued later, at sending speed, instead of being
    /// refused with 503 (as DataKit's disk WAL does). Past it, writes are refused. 0: no
    /// spilling (a write is taken only when memory and the queues have room).
    pub max_spill_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            enabled: false,
            path: PathBuf::from("dataway-data/wal"),
            max_spill_bytes: 1 << 30,
        }
    }
}

/// `[dataway.fail_cache]`: per-endpoint on-disk queues of bodies that failed after retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailCacheConfig {
    /// Keep failed bodies and resend them (`false`: they are dropped and counted).
    pub enabled: bool,
    /// Directory of the cache files, one per endpoint URL.
    pub path: PathBuf,
    /// Bytes kept per endpoint; past it the oldest bodies are dropped (counted).
    pub max_capacity: u64,
    /// Bodies older than this are dropped instead of resent (counted).
    #[serde(with = "duration")]
    pub drop_expired_after: Duration,
    /// After a resend fails, how long before the next try.
    #[serde(with = "duration")]
    pub clean_interval: Duration,
}

impl Default for FailCacheConfig {
    fn default() -> Self {
        FailCacheConfig {
            enabled: true,
            path: PathBuf::from("dataway-data/failcache"),
            max_capacity: 1 << 30,
            drop_expired_after: Duration::from_secs(12 * 3600),
            clean_interval: Duration::from_secs(5),
        }
    }
}

impl Default for DatawayConfig {
    fn default() -> Self {
        DatawayConfig {
            urls: vec!["file://dataway-out".to_string()],
            timeout: Duration::from_secs(30),
            http_proxy: None,
            tls_ca_file: None,
            tls_insecure: false,
            max_idle_conns_per_host: 64,
            idle_timeout: Duration::from_secs(90),
            max_retry_count: 3,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            gzip: true,
            max_raw_body_size: 1024 * 1024,
            content_encoding: ContentEncoding::V1,
            global_customer_keys: Vec::new(),
            enable_sinker: false,
            workers: 4,
            queue_size: 256,
            max_pending_bytes: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            sinkers: Vec::new(),
            plugins_dir: PathBuf::from("plugins"),
            sinker_limits: SinkerLimitsConfig::default(),
            fail_cache: FailCacheConfig::default(),
            wal: WalConfig::default(),
            global_tag_keys: Vec::new(),
            sinker_header_version: SinkerHeaderVersion::V1,
        }
    }
}

/// `[ingest]`: the local write API (DataKit's `/v1/write/<category>` on port 9529).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address to listen on. Keep it on loopback unless `token` is set.
    pub listen: SocketAddr,
    /// If set, writers must send `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest request body accepted, compressed and decompressed alike (413 past it). At
    /// most half of `dataway.max_pending_bytes`; when not set, lowered to that half if the
    /// default (32 MiB) is over it.
    pub max_body: usize,
    /// Most client connections open at once; lowered at start to half the open-file
    /// limit. When full, a new connection closes the oldest idle one (see `ingest`).
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after it connected
    /// or after its last answer is closed: slow headers and idle keep-alive alike.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A request body must have arrived whole this long after its head, or the request is
    /// answered 408 and the connection closed: a client trickling a large body would
    /// otherwise hold its share of the memory budget for as long as it likes.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9529)),
            token: None,
            max_body: 32 * 1024 * 1024,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Default level filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing
    /// directive such as `dataway=debug`). `RUST_LOG`, when set, takes precedence.
    pub level: String,
    /// `text` (a line for people) or `json` (each line one JSON object, for log shippers).
    /// `dataway run --log-format` takes precedence.
    pub format: LogFormat,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-03T10:00:00Z  INFO dataway::daemon: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":"…","level":"INFO","message":"…","key":"value","target":"…"}`.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::default(),
        }
    }
}

/// A configuration problem, naming where it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("environment variable `{var}`: {reason}")]
    Env { var: &'static str, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn env_error(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML text; `origin` names it in errors (a file path, or `<embedded>`).
    /// Does not apply the environment or validate: see [`Config::load`].
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::from_toml_noted(text, origin).map(|(c, _)| c)
    }

    /// As [`Config::from_toml`], with what was done to DataKit's keys.
    pub fn from_toml_noted(text: &str, origin: &str) -> Result<(Config, Notes), ConfigError> {
        let parse_error = |e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        };
        let mut root: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let before = root.clone();
        let notes = datakit::translate(&mut root)?;
        // Untouched (our own format): parse the text itself, so errors point at the line.
        let has_max_body = root.get("ingest").and_then(|t| t.get("max_body")).is_some();
        let mut cfg: Config = if root == before {
            toml::from_str(text)
        } else {
            root.try_into()
        }
        .map_err(parse_error)?;
        // Bodies being read may hold half of the memory budget: a smaller budget lowers the
        // default body limit with it (a `max_body` written in the file is checked instead).
        if !has_max_body {
            cfg.ingest.max_body = cfg.ingest.max_body.min(cfg.dataway.max_pending_bytes / 2);
        }
        Ok((cfg, notes))
    }

    /// Loads a config file (or the embedded defaults when `path` is `None`), makes the file's
    /// relative paths relative to its folder ([`Config::resolve_paths`]), applies the
    /// `ENV_DATAWAY*` overrides read through `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::load_noted(path, env).map(|(c, _)| c)
    }

    /// As [`Config::load`], with what was done to DataKit's keys and variables: the
    /// caller shows [`Notes::ignored`] as warnings (once each).
    pub fn load_noted(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Notes), ConfigError> {
        let (mut cfg, mut notes) = match path {
            Some(p) => {
                let read_error = |source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                };
                let text = std::fs::read_to_string(p).map_err(read_error)?;
                let (mut cfg, notes) = Config::from_toml_noted(&text, &p.display().to_string())?;
                let file = std::path::absolute(p).map_err(read_error)?;
                cfg.resolve_paths(file.parent().unwrap_or(Path::new("/")));
                (cfg, notes)
            }
            None => (Config::default(), Notes::default()),
        };
        cfg.apply_env_noted(env, &mut notes)?;
        cfg.validate()?;
        Ok((cfg, notes))
    }

    /// Joins every relative path of the config to `base` (the config file's folder), so
    /// where data goes does not depend on where the daemon was started: `file://` URLs
    /// (main and sinkers), `plugins_dir`, the fail-cache and WAL paths and the compiled
    /// plugin cache. The embedded defaults are not resolved: they are relative to the
    /// working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let d = &mut self.dataway;
        resolve_file_urls(&mut d.urls, base);
        for s in &mut d.sinkers {
            resolve_file_urls(&mut s.urls, base);
        }
        for p in [&mut d.plugins_dir, &mut d.fail_cache.path, &mut d.wal.path] {
            resolve(p, base);
        }
        if let Some(p) = &mut d.sinker_limits.cache_dir {
            resolve(p, base);
        }
        if let Some(p) = &mut d.tls_ca_file {
            resolve(p, base);
        }
    }

    /// Applies DataKit's environment overrides (see [`Config::apply_env_noted`]).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.apply_env_noted(env, &mut Notes::default())
    }

    /// Applies the environment variables DataKit reads for its upload, over the file as
    /// DataKit does: `ENV_DATAWAY` (comma-separated URLs), `ENV_DATAWAY_TIMEOUT`,
    /// `ENV_DATAWAY_HTTP_PROXY`, `ENV_DATAWAY_MAX_IDLE_CONNS[_PER_HOST]`,
    /// `ENV_DATAWAY_IDLE_TIMEOUT`, `ENV_DATAWAY_MAX_RETRY_COUNT` (attempts, as DataKit),
    /// `ENV_DATAWAY_RETRY_DELAY`, `ENV_DATAWAY_TLS_INSECURE`, `ENV_DATAWAY_CONTENT_ENCODING`,
    /// `ENV_DATAWAY_DISABLE_GZIP`, `ENV_DATAWAY_MAX_RAW_BODY_SIZE`,
    /// `ENV_DATAWAY_ENABLE_SINKER`, `ENV_SINKER_GLOBAL_CUSTOMER_KEYS`, `ENV_SINKER` (sinkers
    /// appended to the file's), the WAL ones onto the fail-cache, `ENV_HTTP_LISTEN` (the
    /// ingest address), the global tag ones (`ENV_GLOBAL_HOST_TAGS`, …) whose keys join
    /// `global_tag_keys`, and warns about the ones with no meaning here. DataKit's switches are on for any non-empty value. A bad value
    /// is an error naming the variable, not the key it replaces.
    pub fn apply_env_noted(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
        notes: &mut Notes,
    ) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // DataKit's `[http_api] listen` (`config/env.go`, `loadHTTPAPIEnvs`).
        if let Some(v) = get("ENV_HTTP_LISTEN") {
            let addr = datakit::listen_addr(&v).map_err(|e| env_error("ENV_HTTP_LISTEN", e))?;
            notes.mapped.push(format!(
                "`ENV_HTTP_LISTEN = \"{v}\"` → `ingest.listen = \"{addr}\"`"
            ));
            self.ingest.listen = addr;
        }
        let d = &mut self.dataway;
        // DataKit's global tags from the environment (`config/env.go`, `LoadEnvs` and
        // `loadElectionEnvs`), added to the file's: the first set of each pair (the second
        // is the deprecated name); the election ones only with `ENV_ENABLE_ELECTION`, which
        // also brings `election_namespace` with `ENV_ENABLE_ELECTION_NAMESPACE_TAG`;
        // `ENV_CLUSTER_NAME_K8S` adds `cluster_name_k8s`. Their keys group points with
        // `enable_sinker`, as the file's `[global_host_tags]` keys do.
        let mut tag_keys = Vec::new();
        let mut tag_env = |pair: [&'static str; 2], notes: &mut Notes| {
            if let Some((var, v)) = pair.iter().find_map(|var| get(var).map(|v| (*var, v))) {
                let keys = datakit::global_tag_keys_from_env(var, &v, notes);
                notes.mapped.push(format!(
                    "`{var}` keys {} → `dataway.global_tag_keys`",
                    keys.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                tag_keys.extend(keys);
            }
        };
        tag_env(["ENV_GLOBAL_HOST_TAGS", "ENV_GLOBAL_TAGS"], notes);
        if get("ENV_ENABLE_ELECTION").is_some() {
            tag_env(["ENV_GLOBAL_ELECTION_TAGS", "ENV_GLOBAL_ENV_TAGS"], notes);
            if get("ENV_ENABLE_ELECTION_NAMESPACE_TAG").is_some() {
                tag_keys.push("election_namespace".to_string());
                notes.mapped.push(
                    "`ENV_ENABLE_ELECTION_NAMESPACE_TAG` → `election_namespace` in `dataway.global_tag_keys`"
                        .to_string(),
                );
            }
        }
        if get("ENV_CLUSTER_NAME_K8S").is_some() {
            tag_keys.push("cluster_name_k8s".to_string());
            notes.mapped.push(
                "`ENV_CLUSTER_NAME_K8S` → `cluster_name_k8s` in `dataway.global_tag_keys`"
                    .to_string(),
            );
        }
        for k in tag_keys {
            if !d.global_tag_keys.contains(&k) {
                d.global_tag_keys.push(k);
            }
        }
        if let Some(v) = get("ENV_DATAWAY") {
            let urls: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            for u in &urls {
                EndpointUrl::parse(u).map_err(|e| env_error("ENV_DATAWAY", e.to_string()))?;
            }
            d.urls = urls;
        }
        let duration = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
            get(var)
                .map(|v| duration::parse(&v).map_err(|e| env_error(var, e)))
                .transpose()
        };
        let number = |var: &'static str| -> Result<Option<u64>, ConfigError> {
            get(var)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| env_error(var, format!("`{v}` is not a whole number")))
                })
                .transpose()
        };
        if let Some(t) = duration("ENV_DATAWAY_TIMEOUT")? {
            d.timeout = t;
        }
        if let Some(v) = get("ENV_DATAWAY_HTTP_PROXY") {
            let v = v.trim();
            validate_proxy(v).map_err(|reason| env_error("ENV_DATAWAY_HTTP_PROXY", reason))?;
            d.http_proxy = Some(v.to_string());
        }
        if let Some(n) = number("ENV_DATAWAY_MAX_IDLE_CONNS_PER_HOST")? {
            d.max_idle_conns_per_host = n as usize;
        }
        if let Some(n) = number("ENV_DATAWAY_MAX_IDLE_CONNS")?.filter(|n| *n > 0) {
            // One pool per endpoint: DataKit's total cap is a cap per host here.
            d.max_idle_conns_per_host = d.max_idle_conns_per_host.min(n as usize);
        }
        if let Some(t) = duration("ENV_DATAWAY_IDLE_TIMEOUT")? {
            d.idle_timeout = t;
        }
        if let Some(n) = number("ENV_DATAWAY_MAX_RETRY_COUNT")? {
            // DataKit's count is of attempts (1 to 10), ours of retries after the first.
            if n == 0 {
                return Err(env_error(
                    "ENV_DATAWAY_MAX_RETRY_COUNT",
                    "counts attempts (as DataKit): give 1 (no retry) to 10",
                ));
            }
            d.max_retry_count = n.min(10) as u32 - 1;
        }
        if let Some(t) = duration("ENV_DATAWAY_RETRY_DELAY")? {
            d.retry_delay = t;
            d.max_retry_delay = d.max_retry_delay.max(t);
        }
        if get("ENV_DATAWAY_TLS_INSECURE").is_some() {
            d.tls_insecure = true;
        }
        if let Some(v) = get("ENV_DATAWAY_CONTENT_ENCODING") {
            d.content_encoding = match v.trim().to_ascii_lowercase().as_str() {
                "v1" | "line-protocol" => ContentEncoding::V1,
                "v2" | "protobuf" => ContentEncoding::V2,
                _ => {
                    return Err(env_error(
                        "ENV_DATAWAY_CONTENT_ENCODING",
                        format!("`{v}`: give v1 (line protocol) or v2 (protobuf)"),
                    ));
                }
            };
        }
        if get("ENV_DATAWAY_DISABLE_GZIP").is_some() {
            d.gzip = false;
        }
        if let Some(n) = number("ENV_DATAWAY_MAX_RAW_BODY_SIZE")? {
            d.max_raw_body_size = n as usize;
        }
        if get("ENV_DATAWAY_ENABLE_SINKER").is_some() {
            d.enable_sinker = true;
        }
        if let Some(v) = get("ENV_SINKER_GLOBAL_CUSTOMER_KEYS") {
            d.global_customer_keys = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(t) = duration("ENV_DATAWAY_DROP_EXPIRED_PACKAGE_AT")? {
            d.fail_cache.drop_expired_after = t;
        }
        if let Some(v) = get("ENV_DATAWAY_WAL_CAPACITY") {
            let gb: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|g: &f64| *g > 0.0)
                .ok_or_else(|| {
                    env_error(
                        "ENV_DATAWAY_WAL_CAPACITY",
                        format!("`{v}` is not a number of GB, like 2.0"),
                    )
                })?;
            d.fail_cache.max_capacity = (gb * (1u64 << 30) as f64) as u64;
        }
        if let Some(v) = get("ENV_DATAWAY_WAL_PATH") {
            d.fail_cache.path = PathBuf::from(v.trim());
        }
        if let Some(t) = duration("ENV_DATAWAY_WAL_FAIL_CACHE_CLEAN_INTERVAL")? {
            d.fail_cache.clean_interval = t;
        }
        for (var, why) in [
            (
                "ENV_DATAWAY_ENABLE_HTTPTRACE",
                "DataKit's HTTP trace metrics have no equivalent here",
            ),
            (
                "ENV_DATAWAY_NTP_INTERVAL",
                "this daemon never changes the points' timestamps",
            ),
            (
                "ENV_DATAWAY_NTP_DIFF",
                "this daemon never changes the points' timestamps",
            ),
            (
                "ENV_DATAWAY_DISABLE_NTP",
                "this daemon never changes the points' timestamps",
            ),
            (
                "ENV_DATAWAY_WAL_WORKERS",
                "upload concurrency is `dataway.workers` per endpoint",
            ),
            (
                "ENV_DATAWAY_WAL_MEM_CAPACITY",
                "the queue is bounded by `dataway.queue_size` and `max_pending_bytes`",
            ),
            (
                "ENV_DATAWAY_WAL_NO_DROP_CATEGORIES",
                "a full fail-cache drops its oldest bodies whatever their category",
            ),
            (
                "ENV_HTTP_LISTEN_SOCKET",
                "ingest listens on TCP only (`ingest.listen`, `ENV_HTTP_LISTEN`)",
            ),
        ] {
            if get(var).is_some() {
                notes
                    .ignored
                    .push(format!("environment variable `{var}` is ignored: {why}"));
            }
        }
        if let Some(v) = get("ENV_SINKER") {
            let first = d.sinkers.len();
            let tables = datakit::sinkers_from_env(&v, first, notes)
                .map_err(|reason| env_error("ENV_SINKER", reason))?;
            for t in tables {
                let s: SinkerConfig = t
                    .try_into()
                    .map_err(|e: toml::de::Error| env_error("ENV_SINKER", e.to_string()))?;
                notes
                    .mapped
                    .push(format!("`ENV_SINKER` → sinker `{}`", s.name));
                d.sinkers.push(s);
            }
        }
        Ok(())
    }

    /// Checks every value that serde's types cannot: URLs, ranges, the proxy's scheme.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dataway;
        if d.urls.is_empty() {
            return Err(invalid(
                "dataway.urls",
                "no endpoint: give at least one URL (https://host?token=… or file://DIR)",
            ));
        }
        for (i, u) in d.urls.iter().enumerate() {
            EndpointUrl::parse(u)
                .map_err(|e| invalid(format!("dataway.urls[{i}]"), e.to_string()))?;
        }
        if let Some(p) = &d.http_proxy {
            validate_proxy(p).map_err(|reason| invalid("dataway.http_proxy", reason))?;
        }
        if let Some(f) = &d.tls_ca_file {
            validate_ca_file(f).map_err(|reason| invalid("dataway.tls_ca_file", reason))?;
        }
        if d.timeout.is_zero() {
            return Err(invalid("dataway.timeout", "must be more than 0s"));
        }
        if d.retry_delay.is_zero() && d.max_retry_count > 0 {
            return Err(invalid(
                "dataway.retry_delay",
                "must be more than 0s when retries are on",
            ));
        }
        if d.max_retry_delay < d.retry_delay {
            return Err(invalid(
                "dataway.max_retry_delay",
                format!("must be at least retry_delay ({:?})", d.retry_delay),
            ));
        }
        if d.max_retry_count > 100 {
            return Err(invalid("dataway.max_retry_count", "must be at most 100"));
        }
        if d.max_raw_body_size < 1024 {
            return Err(invalid(
                "dataway.max_raw_body_size",
                "must be at least 1024 bytes",
            ));
        }
        for (key, v) in [
            ("dataway.workers", d.workers),
            ("dataway.queue_size", d.queue_size),
            (
                "dataway.max_idle_conns_per_host",
                d.max_idle_conns_per_host.max(1),
            ),
            ("dataway.max_pending_bytes", d.max_pending_bytes),
            ("ingest.max_body", self.ingest.max_body),
            ("ingest.max_connections", self.ingest.max_connections),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if self.ingest.header_read_timeout.is_zero() {
            return Err(invalid(
                "ingest.header_read_timeout",
                "must be more than 0 (e.g. \"30s\")",
            ));
        }
        if self.ingest.body_read_timeout.is_zero() {
            return Err(invalid(
                "ingest.body_read_timeout",
                "must be more than 0 (e.g. \"60s\")",
            ));
        }
        // Bodies being read may hold half of the memory budget (`dataway::budget`): a
        // larger body could never be taken.
        if self.ingest.max_body > d.max_pending_bytes / 2 {
            return Err(invalid(
                "ingest.max_body",
                format!(
                    "is {} bytes, over half of dataway.max_pending_bytes ({} bytes), the most \
                     that bodies being read may hold: lower it, or raise max_pending_bytes to \
                     at least {}",
                    self.ingest.max_body,
                    d.max_pending_bytes,
                    self.ingest.max_body.saturating_mul(2)
                ),
            ));
        }
        if let Some(t) = &self.ingest.token
            && t.is_empty()
        {
            return Err(invalid(
                "ingest.token",
                "is empty: remove the key to disable the token",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in d.sinkers.iter().enumerate() {
            let key = format!("dataway.sinkers[{i}]");
            s.validate(&key)?;
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "`{}` is used by another sinker; names must be unique",
                        s.name
                    ),
                ));
            }
        }
        d.sinker_limits.validate()?;
        let fc = &d.fail_cache;
        if fc.enabled {
            if fc.max_capacity < 1 << 20 {
                return Err(invalid(
                    "dataway.fail_cache.max_capacity",
                    "must be at least 1048576 (1 MiB)",
                ));
            }
            if fc.clean_interval.is_zero() {
                return Err(invalid(
                    "dataway.fail_cache.clean_interval",
                    "must be more than 0s",
                ));
            }
            if fc.drop_expired_after.is_zero() {
                return Err(invalid(
                    "dataway.fail_cache.drop_expired_after",
                    "must be more than 0s",
                ));
            }
        }
        validate_log_level(&self.log.level).map_err(|reason| invalid("log.level", reason))?;
        Ok(())
    }
}

fn resolve(p: &mut PathBuf, base: &Path) {
    if p.is_relative() && !p.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

fn resolve_file_urls(urls: &mut [String], base: &Path) {
    for u in urls {
        if let Some(dir) = u.strip_prefix("file://")
            && !dir.is_empty()
            && Path::new(dir).is_relative()
        {
            *u = format!("file://{}", base.join(dir).display());
        }
    }
}

/// A plain level (any case) or tracing directives (`info,dataway=debug`). A bare word that
/// is not a level is refused: tracing would read `verbose` as a target name and then log
/// nothing at all.
fn validate_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let how = "use error, warn, info, debug, trace or off, or directives like `info,dataway=debug`";
    if level.trim().is_empty() {
        return Err(format!("is empty: {how}"));
    }
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)) {
            return Err(format!("`{d}` is not a level: {how}"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| format!("`{level}`: {e}; {how}"))
}

/// The CA file must hold at least one certificate that can be a trust anchor: checked here
/// so that a wrong file is a config error, not a failure of every request.
fn validate_ca_file(f: &Path) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(f).map_err(|e| format!("cannot read `{}`: {e}", f.display()))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("`{}` is not valid PEM ({e})", f.display()))?;
        webpki::anchor_from_trusted_cert(&cert).map_err(|e| {
            format!(
                "certificate {} in `{}` is not a usable CA certificate ({e})",
                certs + 1,
                f.display()
            )
        })?;
        certs += 1;
    }
    if certs == 0 {
        return Err(format!(
            "`{}` holds no certificate; give a PEM file with `-----BEGIN CERTIFICATE-----` \
             blocks (the CA that signed the Dataway server's certificate)",
            f.display()
        ));
    }
    Ok(())
}

/// A proxy must carry its scheme: DataKit silently ignored `proxy:3128` (`lessons.md` #8).
fn validate_proxy(p: &str) -> Result<(), String> {
    let u = url::Url::parse(p).map_err(|e| {
        format!("`{p}` is not a URL ({e}); write it with its scheme, like http://proxy:3128")
    })?;
    match u.scheme() {
        "http" | "https" if u.host().is_some() => Ok(()),
        "http" | "https" => Err(format!("`{p}` has no host")),
        s => Err(format!(
            "`{p}` has scheme `{s}`; use http:// or https://, like http://proxy:3128"
        )),
    }
}

#[cfg(test)]
mod tests;
