//! DataKit's `datakit.conf` schema (1.4 to 1.8x), mapped onto ours.
//!
//! In: the parsed TOML table of a config file — ours, a DataKit `[dataway]` section, or a
//! whole `datakit.conf` — and, for [`sinkers_from_env`], DataKit's `ENV_SINKER` JSON.
//! Out: the same table rewritten to our schema, and [`Notes`] saying what was mapped,
//! what was ignored and why. Keys that neither schema has are left in place, so
//! deserialising the result still fails naming them.
//!
//! The key names and meanings are DataKit's own (`internal/io/dataway/dw.go`, `sink.go`,
//! `wal.go`, `internal/config/mainconf.go`, `env.go`, `man/docs/*/datakit-conf.md`,
//! `datakit-sink-dataway.md`). Where a key is in both schemas with different meanings
//! (`max_retry_count` counts attempts in DataKit, retries here), the file's *dialect*
//! decides: a file is read as DataKit's when it has a key only DataKit has.

use toml::{Table, Value};

use super::{ConfigError, invalid};
use crate::endpoint_url::EndpointUrl;

/// What reading DataKit's keys did, for `dataway run` (logged once each) and `dataway
/// check` (printed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Why the file was read as DataKit's (`None`: our own format).
    pub dialect: Option<String>,
    /// DataKit keys mapped onto ours, one line each.
    pub mapped: Vec<String>,
    /// Warnings: DataKit keys that have no meaning here, one each, naming the key and why.
    pub ignored: Vec<String>,
}

impl Notes {
    fn map(&mut self, s: impl Into<String>) {
        self.mapped.push(s.into());
    }
    fn ignore(&mut self, key: &str, why: &str) {
        self.ignored.push(format!("`{key}` is ignored: {why}"));
    }
}

/// The top level of a `datakit.conf` besides `[dataway]`, across versions (current and
/// deprecated keys of `internal/config/mainconf.go`, and the install template's sections).
/// They configure DataKit's collectors and server, not its upload: ignored, in one warning.
const DATAKIT_TOP_LEVEL: &[&str] = &[
    "auto_update",
    "black_lists",
    "cgroup",
    "confds",
    "crypto",
    "datakit_user",
    "dca",
    "default_enabled_inputs",
    "disable_404page",
    "dk_upgrader",
    "election",
    "election_namespace",
    "enable_dca",
    "enable_election",
    "enable_election_tag",
    "enable_pprof",
    "environments",
    "gin_log",
    "git_repos",
    "global_election_tags",
    "global_env_tags",
    "global_host_tags",
    "global_tags",
    "http_listen",
    "http_server_addr",
    "install_date",
    "install_version",
    "interval",
    "io",
    "io_cache_count",
    "log_level",
    "log_rotate",
    "logging",
    "name",
    "namespace",
    "output_file",
    "pipeline",
    "point_pool",
    "pprof_listen",
    "protect_mode",
    "recorder",
    "remote_job",
    "resource_limit",
    "tracer",
    "ulimit",
    "upgrade_date",
    "uuid",
    "white_lists",
];

/// `[dataway]` keys only DataKit has; any of them makes the file DataKit's dialect.
const DATAKIT_ONLY_DATAWAY: &[&str] = &[
    "timeout_v2",
    "max_idle_conns",
    "enable_httptrace",
    "ntp",
    "host",
    "scheme",
    "token",
    "url",
    "proxy",
    "max_fail",
    "ip_family_policy",
    "ipv4_fallback_delay",
    "payload_obfuscation",
    "drop_expired_package_at",
];

/// `[dataway]` keys of DataKit's that have no meaning here, and why.
const IGNORED_DATAWAY: &[(&str, &str)] = &[
    (
        "enable_httptrace",
        "DataKit's per-connection HTTP trace metrics have no equivalent here (`/metrics` has the request metrics)",
    ),
    (
        "ntp",
        "DataKit syncs its own clock from Dataway; this daemon keeps the points' own timestamps and never changes them",
    ),
    (
        "host",
        "deprecated in DataKit and unused by it; give the endpoint in `urls`",
    ),
    (
        "scheme",
        "deprecated in DataKit and unused by it; give the endpoint in `urls`",
    ),
    (
        "token",
        "deprecated in DataKit and unused by it; give the token in the `urls` query (`?token=…`)",
    ),
    (
        "proxy",
        "DataKit 1.4's on/off switch; here `http_proxy` alone decides",
    ),
    (
        "max_fail",
        "DataKit 1.1's failure counter has no equivalent; failed bodies go to the fail-cache",
    ),
    (
        "ip_family_policy",
        "addresses are used in the order the resolver gives them",
    ),
    (
        "ipv4_fallback_delay",
        "addresses are used in the order the resolver gives them",
    ),
    (
        "payload_obfuscation",
        "bodies are sent plain (gzipped when `gzip` is on), which Dataway accepts",
    ),
];

/// `[dataway.wal]` keys only DataKit has.
const DATAKIT_ONLY_WAL: &[&str] = &[
    "max_capacity_gb",
    "fail_cache_clean_interval",
    "workers",
    "mem_cap",
    "no_pos",
    "no_drop_categories",
];

/// `[dataway.wal]` keys of DataKit's that have no meaning here, and why.
const IGNORED_WAL: &[(&str, &str)] = &[
    (
        "workers",
        "upload concurrency is `dataway.workers` per endpoint",
    ),
    (
        "mem_cap",
        "the in-memory queue is bounded by `dataway.queue_size` and `max_pending_bytes`",
    ),
    ("no_pos", "the fail-cache keeps its own read position"),
    (
        "no_drop_categories",
        "a full fail-cache drops its oldest bodies whatever their category (counted in `dataway_failcache_dropped_total`)",
    ),
];

/// DataKit's keys of one sinker (`[[dataway.sinkers]]`, `ENV_SINKER`, `[[sinks.sink]]`).
const FILTER_PLUGIN: &str = "datakit_filter.wasm";

/// Why a file is DataKit's dialect, or `None` for ours.
fn dialect(root: &Table) -> Option<String> {
    for (k, v) in root {
        if DATAKIT_TOP_LEVEL.contains(&k.as_str())
            || k == "http_api"
            || k == "sinks"
            || (k == "log" && !v.is_table())
        {
            return Some(format!("it has DataKit's top-level `{k}`"));
        }
    }
    let d = root.get("dataway")?.as_table()?;
    for k in d.keys() {
        if DATAKIT_ONLY_DATAWAY.contains(&k.as_str()) {
            return Some(format!("it has DataKit's `dataway.{k}`"));
        }
    }
    // `path` alone is in both; the others are DataKit's only.
    if let Some(wal) = d.get("wal").and_then(Value::as_table)
        && let Some(k) = wal.keys().find(|k| DATAKIT_ONLY_WAL.contains(&k.as_str()))
    {
        return Some(format!("it has DataKit's `dataway.wal.{k}`"));
    }
    None
}

/// Rewrites `root` from DataKit's schema to ours (in place), returning what it did.
pub fn translate(root: &mut Table) -> Result<Notes, ConfigError> {
    let mut notes = Notes {
        dialect: dialect(root),
        ..Notes::default()
    };
    let dk = notes.dialect.is_some();
    let mut others = Vec::new();
    let mut tag_keys = Vec::new();
    let keys: Vec<String> = root.keys().cloned().collect();
    for k in keys {
        match k.as_str() {
            "dataway" | "ingest" => {}
            "log" if root[&k].is_table() => {}
            "http_api" => http_api(root, &mut notes, &mut others)?,
            "sinks" => sinks(root, &mut notes)?,
            "global_host_tags" | "global_tags" | "global_env_tags" => {
                let table = root.remove(&k).expect("a key of root");
                tag_keys.extend(tag_table_keys(&k, &table, &mut notes)?);
            }
            "election" => {
                let Some(Value::Table(mut election)) = root.remove(&k) else {
                    return Err(invalid("election", "must be a table ([election])"));
                };
                if let Some(tags) = election.remove("tags") {
                    tag_keys.extend(tag_table_keys("election.tags", &tags, &mut notes)?);
                }
                if !election.is_empty() {
                    others.push("election (all but `tags`)".to_string());
                }
            }
            _ if k == "log" || DATAKIT_TOP_LEVEL.contains(&k.as_str()) => {
                root.remove(&k);
                others.push(k);
            }
            // Neither schema's: left for serde to name.
            _ => {}
        }
    }
    if !others.is_empty() {
        notes.ignored.push(format!(
            "DataKit's other settings are ignored (they configure DataKit's collectors and \
             server, not its upload to Dataway): {}",
            others
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !tag_keys.is_empty() {
        let d = sub_table(root, "dataway", "dataway")?;
        let list = d
            .entry("global_tag_keys")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = list else {
            return Err(invalid(
                "dataway.global_tag_keys",
                "must be an array of key names",
            ));
        };
        for k in tag_keys {
            if !list.iter().any(|v| v.as_str() == Some(&k)) {
                list.push(Value::String(k));
            }
        }
    }
    if let Some(Value::Table(d)) = root.get_mut("dataway") {
        dataway(d, dk, &mut notes)?;
    }
    Ok(notes)
}

/// The keys of one of DataKit's global tag tables (`[global_host_tags]`, its old name
/// `[global_tags]`, `[election.tags]` and its old name `global_env_tags`). DataKit hands
/// these tables to its Dataway as its global tags (`config/dataway.go`: `WithGlobalTags(
/// GlobalHostTags, Election.Tags)`; its upgrade moves the old names there), and with
/// `enable_sinker` a point's values of their keys label its group. Only the keys are used
/// here: the values (`$datakit_hostname`, …) are what DataKit adds to the points it
/// collects, and this daemon adds no tags to points.
fn tag_table_keys(key: &str, table: &Value, notes: &mut Notes) -> Result<Vec<String>, ConfigError> {
    let Value::Table(t) = table else {
        return Err(invalid(
            key,
            format!("must be a table of tags ([{key}] with lines like `project = \"p1\"`)"),
        ));
    };
    let keys: Vec<String> = t.keys().cloned().collect();
    if keys.is_empty() {
        notes.map(format!("`[{key}]` is empty: no global tag keys from it"));
    } else {
        notes.map(format!(
            "`[{key}]` keys {} → `dataway.global_tag_keys` (they group points with `enable_sinker`)",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(keys)
}

/// DataKit's `ParseGlobalTags` (`config/conf.go`) for `ENV_GLOBAL_HOST_TAGS` and its
/// kin: `k=v,k=v`, each part split at `=`, a part without exactly one `=` skipped with a
/// warning, keys taken as written (not trimmed). Returns the keys.
pub fn global_tag_keys_from_env(var: &str, value: &str, notes: &mut Notes) -> Vec<String> {
    let mut keys = Vec::new();
    for part in value.split(',') {
        match part.split('=').collect::<Vec<_>>()[..] {
            [k, _] if !k.is_empty() => keys.push(k.to_string()),
            _ => notes.ignored.push(format!(
                "environment variable `{var}`: `{part}` is not `key=value` and is ignored (as DataKit does)"
            )),
        }
    }
    keys
}

/// `[http_api] listen` becomes the ingest address; the rest of `[http_api]` is DataKit's
/// server (RUM, TLS, rate limits, …) and ignored.
fn http_api(
    root: &mut Table,
    notes: &mut Notes,
    others: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some(Value::Table(mut api)) = root.remove("http_api") else {
        return Err(invalid("http_api", "must be a table ([http_api])"));
    };
    if let Some(listen) = api.remove("listen") {
        let Value::String(listen) = listen else {
            return Err(invalid(
                "http_api.listen",
                "must be a string like \"localhost:9529\"",
            ));
        };
        let ingest = root
            .entry("ingest")
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(ingest) = ingest else {
            return Err(invalid("ingest", "must be a table ([ingest])"));
        };
        if ingest.contains_key("listen") {
            notes.ignore(
                "http_api.listen",
                "`ingest.listen` is given too, and it is the one used",
            );
        } else if !listen.trim().is_empty() {
            let addr = listen_addr(&listen).map_err(|reason| invalid("http_api.listen", reason))?;
            notes.map(format!(
                "`http_api.listen = \"{listen}\"` → `ingest.listen = \"{addr}\"`"
            ));
            ingest.insert("listen".into(), Value::String(addr.to_string()));
        }
    }
    if !api.is_empty() {
        others.push("http_api (all but `listen`)".to_string());
    }
    Ok(())
}

/// DataKit's listen address: `host:port` with a name (`localhost:9529`), an IP
/// (`0.0.0.0:9529`, `[::]:9529`), or a Unix socket path (not offered here).
pub(super) fn listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if s.starts_with('/') {
        return Err(format!(
            "`{s}` is a Unix socket; this daemon listens on TCP only: give `host:port`"
        ));
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    // `localhost` means loopback whatever /etc/hosts says first (DataKit's default).
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not an address to listen on ({e})"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// DataKit 1.4's `[[sinks.sink]]`: `target = "dataway"` ones become sinkers.
fn sinks(root: &mut Table, notes: &mut Notes) -> Result<(), ConfigError> {
    let Some(Value::Table(mut sinks)) = root.remove("sinks") else {
        return Err(invalid(
            "sinks",
            "must be a table ([sinks] with [[sinks.sink]])",
        ));
    };
    let list = match sinks.remove("sink") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(invalid(
                "sinks.sink",
                "must be an array of tables ([[sinks.sink]])",
            ));
        }
    };
    if let Some(k) = sinks.keys().next() {
        return Err(invalid(
            format!("sinks.{k}"),
            "unknown key: DataKit's [sinks] holds only [[sinks.sink]]",
        ));
    }
    let mut converted = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        let key = format!("sinks.sink[{i}]");
        let Value::Table(mut s) = s else {
            return Err(invalid(key, "must be a table"));
        };
        match s.remove("target") {
            Some(Value::String(t)) if t == "dataway" => {}
            Some(Value::String(t)) => {
                return Err(invalid(
                    format!("{key}.target"),
                    format!(
                        "DataKit's `{t}` sink is not offered here: only `target = \"dataway\"` \
                         sinks are (as sinkers); send to {t} from another tool, or remove this sink"
                    ),
                ));
            }
            _ => {
                return Err(invalid(
                    format!("{key}.target"),
                    "missing: DataKit's sinks need `target = \"dataway\"` to be read as a sinker",
                ));
            }
        }
        // DataKit 1.4's instance id: a name here.
        if let Some(id) = s.remove("id")
            && !s.contains_key("name")
        {
            s.insert("name".into(), id);
        }
        notes.map(format!(
            "`{key}` (target dataway) → a `[[dataway.sinkers]]`"
        ));
        converted.push(Value::Table(s));
    }
    if converted.is_empty() {
        return Ok(());
    }
    let d = root
        .entry("dataway")
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(d) = d else {
        return Err(invalid("dataway", "must be a table ([dataway])"));
    };
    let sinkers = d
        .entry("sinkers")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(sinkers) = sinkers else {
        return Err(invalid(
            "dataway.sinkers",
            "must be an array of tables ([[dataway.sinkers]])",
        ));
    };
    sinkers.extend(converted);
    Ok(())
}

fn sub_table<'a>(d: &'a mut Table, key: &str, path: &str) -> Result<&'a mut Table, ConfigError> {
    match d.entry(key).or_insert_with(|| Value::Table(Table::new())) {
        Value::Table(t) => Ok(t),
        _ => Err(invalid(path, "must be a table")),
    }
}

fn is_empty_string(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.trim().is_empty())
}

/// `[dataway]`; `dk`: the file is DataKit's dialect.
fn dataway(d: &mut Table, dk: bool, notes: &mut Notes) -> Result<(), ConfigError> {
    // Empty strings are DataKit's "not set" (its template writes `http_proxy = ""`).
    for k in [
        "http_proxy",
        "timeout",
        "timeout_v2",
        "url",
        "content_encoding",
    ] {
        if d.get(k).is_some_and(is_empty_string) {
            d.remove(k);
        }
    }
    // DataKit's daemon reads only `timeout_v2` (`Dataway.HTTPTimeout`); the deprecated
    // `timeout` is read by its installer alone, which converts it to `timeout_v2` on
    // upgrade. Here `timeout` is our own key, so alone it is used; next to `timeout_v2`
    // it is ignored, as DataKit's daemon ignores it.
    if let Some(v) = d.remove("timeout_v2") {
        if d.contains_key("timeout") {
            notes.ignore(
                "dataway.timeout",
                "`timeout_v2` is given too, and DataKit uses `timeout_v2` (its installer alone reads the deprecated `timeout`)",
            );
        }
        notes.map("`dataway.timeout_v2` → `dataway.timeout`");
        d.insert("timeout".into(), v);
    }
    // DataKit: `v2` is `X-Global-Tags-V2`, anything else `X-Global-Tags`; "" is unset.
    match d.get("sinker_header_version") {
        Some(v) if is_empty_string(v) => {
            d.remove("sinker_header_version");
        }
        Some(Value::String(s)) if s == "v1" || s == "v2" => {}
        Some(v) => {
            return Err(invalid(
                "dataway.sinker_header_version",
                format!(
                    "{v}: give \"v1\" (X-Global-Tags: k=v,…) or \"v2\" (X-Global-Tags-V2, \
                     keys and values URL-encoded); DataKit would silently send v1"
                ),
            ));
        }
        None => {}
    }
    if let Some(v) = d.remove("url") {
        let has_urls = d
            .get("urls")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if has_urls {
            notes.ignore(
                "dataway.url",
                "`urls` is given, and DataKit uses it then too",
            );
        } else {
            notes.map("`dataway.url` (deprecated) → `dataway.urls = [url]`");
            d.insert("urls".into(), Value::Array(vec![v]));
        }
    }
    if let Some(Value::String(enc)) = d.get("content_encoding") {
        let ours = match enc.to_ascii_lowercase().as_str() {
            "v1" | "line-protocol" => "v1",
            "v2" | "protobuf" => "v2",
            other => {
                return Err(invalid(
                    "dataway.content_encoding",
                    format!("`{other}`: give `v1` (line protocol) or `v2` (protobuf)"),
                ));
            }
        };
        if ours != enc {
            notes.map(format!(
                "`dataway.content_encoding = \"{enc}\"` → `\"{ours}\"`"
            ));
        }
        d.insert("content_encoding".into(), Value::String(ours.into()));
    }
    if dk {
        // DataKit's zeros mean "the default".
        for k in ["max_idle_conns_per_host", "max_raw_body_size"] {
            if d.get(k).and_then(Value::as_integer) == Some(0) {
                d.remove(k);
                notes.map(format!("`dataway.{k} = 0` → the default (as DataKit)"));
            }
        }
        // DataKit counts attempts (1..=10, anything less is 1); we count retries after the
        // first attempt.
        if let Some(n) = d.get("max_retry_count").and_then(Value::as_integer) {
            let retries = n.clamp(1, 10) - 1;
            notes.map(format!(
                "`dataway.max_retry_count = {n}` (DataKit: attempts) → {retries} retries after the first attempt"
            ));
            d.insert("max_retry_count".into(), Value::Integer(retries));
        }
    }
    if let Some(v) = d.remove("max_idle_conns") {
        let Some(n) = v.as_integer() else {
            return Err(invalid("dataway.max_idle_conns", "must be an integer"));
        };
        // Each endpoint has its own pool to one host: DataKit's cap on all idle
        // connections is a cap per host here. 0 is DataKit's "no cap".
        if n > 0 {
            let per_host = d
                .get("max_idle_conns_per_host")
                .and_then(Value::as_integer)
                .unwrap_or(super::DatawayConfig::default().max_idle_conns_per_host as i64);
            d.insert(
                "max_idle_conns_per_host".into(),
                Value::Integer(per_host.min(n)),
            );
            notes.map(format!(
                "`dataway.max_idle_conns = {n}` → `max_idle_conns_per_host = {}` (one pool per endpoint)",
                per_host.min(n)
            ));
        }
    }
    if let Some(v) = d.remove("drop_expired_package_at") {
        let fc = sub_table(d, "fail_cache", "dataway.fail_cache")?;
        fc.entry("drop_expired_after").or_insert(v);
        notes.map("`dataway.drop_expired_package_at` → `dataway.fail_cache.drop_expired_after`");
    }
    for (k, why) in IGNORED_DATAWAY {
        if d.remove(*k).is_some() {
            notes.ignore(&format!("dataway.{k}"), why);
        }
    }
    // In a DataKit file, a `[dataway.wal]` without our `enabled` is DataKit's.
    if dk
        && let Some(Value::Table(wal)) = d.get("wal")
        && !wal.contains_key("enabled")
    {
        let Some(Value::Table(wal)) = d.remove("wal") else {
            unreachable!()
        };
        datakit_wal(d, wal, notes)?;
    }
    if let Some(Value::Array(sinkers)) = d.get_mut("sinkers") {
        for (i, s) in sinkers.iter_mut().enumerate() {
            if let Value::Table(s) = s {
                sinker(s, i, &format!("dataway.sinkers[{i}]"), notes)?;
            }
        }
    }
    Ok(())
}

/// DataKit's `[dataway.wal]`. DataKit's WAL is always on and is its send queue: bodies go
/// to memory first and to disk when memory is full or a send failed (its `fc` part); it
/// acknowledges nothing. Its disk part is what our fail-cache is, so its keys configure the
/// fail-cache, and our WAL (acknowledge only once fsynced) stays as configured (off unless
/// `enabled = true`).
fn datakit_wal(d: &mut Table, mut wal: Table, notes: &mut Notes) -> Result<(), ConfigError> {
    let fc = sub_table(d, "fail_cache", "dataway.fail_cache")?;
    if let Some(v) = wal.remove("max_capacity_gb") {
        let gb = v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .filter(|g| *g > 0.0)
            .ok_or_else(|| {
                invalid(
                    "dataway.wal.max_capacity_gb",
                    "must be a number of GB above 0, like 2.0",
                )
            })?;
        let bytes = (gb * (1u64 << 30) as f64) as i64;
        fc.insert("max_capacity".into(), Value::Integer(bytes));
        notes.map(format!(
            "`dataway.wal.max_capacity_gb = {gb}` → `dataway.fail_cache.max_capacity = {bytes}` \
             (per endpoint; DataKit's is per category)"
        ));
    }
    if let Some(v) = wal.remove("path")
        && !is_empty_string(&v)
    {
        fc.insert("path".into(), v);
        notes.map("`dataway.wal.path` → `dataway.fail_cache.path`");
    }
    if let Some(v) = wal.remove("fail_cache_clean_interval") {
        fc.insert("clean_interval".into(), v);
        notes.map("`dataway.wal.fail_cache_clean_interval` → `dataway.fail_cache.clean_interval`");
    }
    for (k, why) in IGNORED_WAL {
        if wal.remove(*k).is_some() {
            notes.ignore(&format!("dataway.wal.{k}"), why);
        }
    }
    if let Some(k) = wal.keys().next() {
        return Err(invalid(
            format!("dataway.wal.{k}"),
            "unknown key: DataKit's [dataway.wal] has max_capacity_gb, path, \
             fail_cache_clean_interval, workers, mem_cap, no_pos, no_drop_categories; ours has \
             enabled and path",
        ));
    }
    notes.map(
        "`[dataway.wal]` (DataKit's send queue, always on) → the fail-cache; the WAL that \
         acknowledges only fsynced writes stays off (turn it on with `enabled = true`)",
    );
    Ok(())
}

/// One sinker table in DataKit's keys (or ours, or a mix) → ours. `index` is its position
/// (for the derived name), `key` where it is (for errors).
pub(super) fn sinker(
    s: &mut Table,
    index: usize,
    key: &str,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    for k in ["url", "proxy", "token", "name"] {
        if s.get(k).is_some_and(is_empty_string) {
            s.remove(k);
        }
    }
    if let Some(url) = s.remove("url") {
        if s.contains_key("urls") {
            return Err(invalid(
                format!("{key}.url"),
                "give `url` (DataKit's) or `urls`, not both",
            ));
        }
        s.insert("urls".into(), Value::Array(vec![url]));
    }
    if let Some(token) = s.remove("token") {
        // DataKit: the deprecated `token` is used when the URL has none.
        let Value::String(token) = token else {
            return Err(invalid(format!("{key}.token"), "must be a string"));
        };
        if let Some(Value::Array(urls)) = s.get_mut("urls") {
            for u in urls.iter_mut() {
                if let Value::String(u) = u
                    && (u.starts_with("http://") || u.starts_with("https://"))
                    && !u.contains("token=")
                {
                    let sep = if u.contains('?') { '&' } else { '?' };
                    u.push(sep);
                    u.push_str("token=");
                    u.push_str(&token);
                }
            }
        }
        notes.map(format!("`{key}.token` → the `token=` of its URL"));
    }
    if let Some(proxy) = s.remove("proxy") {
        if s.contains_key("http_proxy") {
            return Err(invalid(
                format!("{key}.proxy"),
                "give `proxy` (DataKit's) or `http_proxy`, not both",
            ));
        }
        let Value::String(p) = proxy else {
            return Err(invalid(format!("{key}.proxy"), "must be a string"));
        };
        // DataKit documents a sinker's proxy as `IP:Port`; that means an HTTP proxy.
        let p = if p.contains("://") {
            p
        } else {
            notes.map(format!(
                "`{key}.proxy = \"{p}\"` → `http_proxy = \"http://{p}\"`"
            ));
            format!("http://{p}")
        };
        s.insert("http_proxy".into(), Value::String(p));
    }
    if let Some(filters) = s.remove("filters") {
        if s.contains_key("plugin") || s.contains_key("config") {
            return Err(invalid(
                format!("{key}.filters"),
                "give `filters` (DataKit's) or `plugin` + `config`, not both: `filters` \
                 is the config of the built-in datakit_filter.wasm",
            ));
        }
        let Value::Array(list) = filters else {
            return Err(invalid(
                format!("{key}.filters"),
                "must be an array of filter strings, like [\"{ host = 'web-1' }\"]",
            ));
        };
        if list.iter().any(|f| !f.is_str()) {
            return Err(invalid(
                format!("{key}.filters"),
                "every filter is a string, like \"{ host = 'web-1' }\"",
            ));
        }
        // No filter: DataKit sends every point of the categories (no condition here too).
        if !list.is_empty() {
            s.insert("plugin".into(), Value::String(FILTER_PLUGIN.into()));
            s.insert("config".into(), Value::Array(list));
            notes.map(format!(
                "`{key}.filters` → `plugin = \"{FILTER_PLUGIN}\"`, `config` = the filters"
            ));
        }
    }
    if !s.contains_key("name") {
        let url = s
            .get("urls")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = derived_name(index, url);
        notes.map(format!("`{key}` has no name: named `{name}`"));
        s.insert("name".into(), Value::String(name));
    }
    Ok(())
}

/// A stable sinker name from its position and its first URL's host (never its token):
/// `sinker0-openway.example.com-443` style, in the characters names allow.
pub fn derived_name(index: usize, url: &str) -> String {
    let place = match EndpointUrl::parse(url) {
        Ok(EndpointUrl::Http { origin, .. }) => origin
            .split_once("://")
            .map_or(origin.clone(), |(_, h)| h.to_string()),
        Ok(EndpointUrl::File { dir }) => dir
            .file_name()
            .map_or_else(|| "file".to_string(), |f| f.to_string_lossy().into_owned()),
        Err(_) => String::new(),
    };
    let place: String = place
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let place = place.trim_matches('-');
    if place.is_empty() {
        format!("sinker{index}")
    } else {
        format!("sinker{index}-{place}")
    }
}

/// DataKit's `ENV_SINKER`: a JSON array of sinkers (`categories`, `filters`, `url`,
/// `proxy`, and the deprecated `token`), appended to the file's as DataKit does. `first`
/// is the position of the first one (for derived names).
pub fn sinkers_from_env(json: &str, first: usize, notes: &mut Notes) -> Result<Vec<Table>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DkSinker {
        #[serde(default)]
        categories: Vec<String>,
        #[serde(default)]
        filters: Vec<String>,
        #[serde(default)]
        url: String,
        #[serde(default)]
        proxy: String,
        #[serde(default)]
        token: String,
    }
    let list: Vec<DkSinker> = serde_json::from_str(json).map_err(|e| {
        format!(
            "not a JSON array of sinkers ({e}); write it like \
             [{{\"categories\":[\"M\"],\"filters\":[\"{{ host = 'web-1' }}\"],\"url\":\"https://host?token=…\"}}]"
        )
    })?;
    let mut out = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        let mut t = Table::new();
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        t.insert("categories".into(), strings(s.categories));
        t.insert("filters".into(), strings(s.filters));
        t.insert("url".into(), Value::String(s.url));
        t.insert("proxy".into(), Value::String(s.proxy));
        t.insert("token".into(), Value::String(s.token));
        sinker(&mut t, first + i, &format!("ENV_SINKER[{i}]"), notes).map_err(|e| e.to_string())?;
        out.push(t);
    }
    Ok(out)
}
