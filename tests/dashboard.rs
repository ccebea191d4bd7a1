//! The Grafana dashboard `dashboards/dataway.json` against a real Prometheus: the real daemon
//! (real plugins through wasmtime, a mock Dataway on loopback that fails on cue) is driven
//! through every path the dashboard shows, a Prometheus started here scrapes it every
//! second, and every panel's query, with Grafana's variables filled in, must return data
//! from it. `promtool check metrics` lints the daemon's `/metrics` on the way.
//!
//! Needs `prometheus` and `promtool` (Debian: `apt-get install prometheus`): without them
//! `build.rs` marks the test ignored, unless `DATAWAY_REQUIRE_ALL_PLUGINS=1` (CI), which
//! makes their absence a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::plugins::rust_plugin;
use common::process::DaemonProcess;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// promtool lints on `/metrics` that are accepted, each justified in README.md
/// (*Grafana dashboard*): names and types DataKit's dashboards rely on (`metrics.md`).
const ALLOWED_LINTS: &[&str] = &[];

/// Every wait of the test shares this budget: a bound for a stuck run, not a speed
/// requirement (a run takes a fraction of it).
const BUDGET: Duration = Duration::from_secs(90);

/// Grafana's `$__rate_interval` would be 4 scrape intervals; here the window covers the
/// whole run, so that a counter the workload moved has a rate above 0 at the end.
const RATE_INTERVAL: &str = "5m";

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Prometheus server on 127.0.0.1, its config, data and log in `dir` (a directory the
/// caller removes after this is dropped); killed when dropped, also when the test panics.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts one scraping `target` every second and waits until it is ready.
    async fn start(dir: &Path, target: SocketAddr, deadline: Instant) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dataway\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let client = reqwest::Client::new();
        // The port is picked by binding and releasing it; another process taking it in
        // between makes Prometheus exit at once, and the next attempt picks another.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join("prometheus.log");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log,
            };
            loop {
                if let Ok(r) = client.get(format!("{}/-/ready", p.url)).send().await
                    && r.status().is_success()
                {
                    return p;
                }
                if p.child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus not ready:\n{}",
                    p.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "Prometheus exited at start, trying another port:\n{}",
                p.log()
            );
        }
        panic!("Prometheus did not start");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/query` at now: the series of an instant vector, or the error.
    async fn query(&self, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_str(&r.text().await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let data = &body["data"];
        if data["resultType"] != "vector" {
            return Err(format!("not an instant vector: {}", data["resultType"]));
        }
        Ok(data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                // Prometheus writes NaN and ±Inf as "NaN", "+Inf", "-Inf", which Rust parses.
                let v = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, v)
            })
            .collect())
    }

    /// Waits until Prometheus has a scrape of `instance` that started after now, so what
    /// the daemon exports now is in Prometheus.
    async fn wait_scrape(&self, instance: &str, deadline: Instant) {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let q = format!("timestamp(up{{instance=\"{instance}\"}})");
        until(
            deadline,
            "a fresh scrape",
            async || matches!(self.query(&q).await.as_deref(), Ok([(_, t)]) if *t > since),
        )
        .await;
    }
}

/// Polls `f` until it holds; panics naming `what` at the deadline.
async fn until(deadline: Instant, what: &str, mut f: impl AsyncFnMut() -> bool) {
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(p: &DaemonProcess) -> String {
    reqwest::get(p.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the daemon's samples of `name` with these labels.
async fn total(p: &DaemonProcess, name: &str, subset: &[(&str, &str)]) -> f64 {
    samples_matching(&scrape(p).await, name, subset)
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Waits until the daemon's `name{subset}` sums to at least `min`.
async fn wait_total(
    p: &DaemonProcess,
    deadline: Instant,
    name: &str,
    subset: &[(&str, &str)],
    min: f64,
) {
    until(
        deadline,
        &format!("{name}{subset:?} >= {min}"),
        async || total(p, name, subset).await >= min,
    )
    .await;
}

/// Replaces a file as deploy tools do: written aside, renamed over it.
fn replace_atomically(dir: &Path, name: &str, from: &Path) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Every `dataway_…`/`datakit_…` metric name in `expr`, each with the label matchers that
/// follow it (`None` when none do).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = expr[at..].find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let start = at + i;
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |e| start + e);
        let word = &expr[start..end];
        // A word inside quotes is (part of) a label value, not a name.
        let quoted = expr[..start].matches('"').count() % 2 == 1;
        if !quoted && (word.starts_with("dataway_") || word.starts_with("datakit_")) {
            let matchers = expr[end..]
                .strip_prefix('{')
                .and_then(|m| m.find('}').map(|e| m[..e].to_string()));
            out.push((word.to_string(), matchers));
        }
        at = end;
    }
    out
}

/// The families the daemon exports (`# TYPE` lines), to which `_bucket`, `_sum` and
/// `_count` series belong.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The dashboard's query targets: (panel title, expr), rows checked on the way.
fn targets(dash: &Value) -> Vec<(String, String)> {
    let panels = dash["panels"].as_array().expect("panels");
    assert_eq!(panels[0]["type"], "row", "panels are grouped in rows");
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"]["w"].is_u64(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: data source"
        );
        let ts = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!ts.is_empty(), "{title}: no query");
        for t in ts {
            out.push((title.to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

fn variable<'a>(dash: &'a Value, name: &str) -> &'a Value {
    dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no ${name} variable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    dataway_no_prometheus,
    ignore = "prometheus/promtool not installed (apt-get install prometheus; CI installs it and sets DATAWAY_REQUIRE_ALL_PLUGINS=1)"
)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !(have("prometheus") && have("promtool")) {
        assert!(
            std::env::var_os("DATAWAY_REQUIRE_ALL_PLUGINS").is_none(),
            "prometheus and promtool are required (apt-get install prometheus)"
        );
        eprintln!("skipped: prometheus/promtool not installed (apt-get install prometheus)");
        return;
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/dataway.json"),
        )
        .unwrap(),
    )
    .expect("dashboards/dataway.json is JSON");
    // The variables: a Prometheus data source, and the instances (several, or all).
    let ds = variable(&dash, "datasource");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let inst = variable(&dash, "instance");
    assert_eq!(inst["type"], "query");
    assert_eq!(
        (&inst["multi"], &inst["includeAll"]),
        (&true.into(), &true.into())
    );
    let inst_query = inst["query"]["query"].as_str().unwrap();
    let inst_metric = inst_query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(", instance)"))
        .unwrap_or_else(|| panic!("$instance is not label_values(METRIC, instance): {inst_query}"));
    let targets = targets(&dash);
    for (title, expr) in &targets {
        let sel = selectors(expr);
        assert!(!sel.is_empty(), "{title}: no dataway metric in {expr}");
        for (name, matchers) in sel {
            assert!(
                matchers.is_some_and(|m| m.contains("instance=~\"$instance\"")),
                "{title}: {name} not filtered on instance=~\"$instance\" in {expr}"
            );
        }
    }

    // Built before the clock starts: a cold build of the plugins takes a minute or more.
    let (v1, v2) = (rust_plugin("example-rust"), rust_plugin("hostile"));
    let deadline = Instant::now() + BUDGET;
    let started = Instant::now();

    let (main, sink) = (MockDataway::start().await, MockDataway::start().await);
    let dir = scratch_dir("dashboard");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&v1, plugins.join("rule.wasm")).unwrap();
    std::fs::copy(&v2, plugins.join("trap.wasm")).unwrap();
    let cfg = dir.join("dataway.toml");
    // `match` routes `every-other` points (v1: by measurement; v2 after the reload: every
    // other point); `trap` traps on every call, so it fails, then is quarantined.
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"{main}\"]\nplugins_dir = \"{plugins}\"\n\
             retry_delay = \"20ms\"\nmax_retry_delay = \"200ms\"\nmax_retry_count = 1\ntimeout = \"5s\"\n\
             [[dataway.sinkers]]\nname = \"match\"\ncategories = [\"metric\"]\nplugin = \"rule.wasm\"\n\
             config = 'every-other'\nurls = [\"{sink}\"]\n\
             [[dataway.sinkers]]\nname = \"trap\"\ncategories = [\"logging\"]\nplugin = \"trap.wasm\"\n\
             config = 'trap'\nurls = [\"{sink}\"]\n\
             [dataway.fail_cache]\npath = \"{dir}/failcache\"\nclean_interval = \"1s\"\n\
             [dataway.wal]\nenabled = true\npath = \"{dir}/wal\"\n\
             [dataway.sinker_limits]\ncache_dir = \"{cache}\"\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\n",
            main = main.url("t"),
            sink = sink.url("t"),
            plugins = plugins.display(),
            dir = dir.display(),
            cache = plugin_cache_dir().display(),
        ),
    )
    .unwrap();
    let d = DaemonProcess::start(&cfg, &[]);
    let instance = d.addr.to_string();
    // Declared before `prom`, so dropped (removed) after Prometheus is killed.
    let prom_dir = tempfile::Builder::new()
        .prefix("prometheus-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let prom = Prometheus::start(prom_dir.path(), d.addr, deadline).await;

    // Two rounds with a scrape between: a counter that first appears at N and never moves
    // again has a rate of 0 in Prometheus, so every path moves its counters in both.
    let mut written = 0;
    for round in 0..2 {
        // Writes to several categories, all delivered (to main, or to the sink endpoint
        // for the points `match` takes); `trap` fails on each logging batch.
        main.set_default(None);
        let delivered = main.points_accepted() + sink.points_accepted();
        let metric = [
            lines("every-other", 4, written),
            lines("cpu", 4, written + 4),
        ]
        .join("\n");
        assert_eq!(d.post("metric", metric).await, 200);
        for i in 0..5 {
            assert_eq!(
                d.post("logging", lines("app", 3, written + 8 + 3 * i))
                    .await,
                200
            );
        }
        assert_eq!(d.post("object", lines("host", 2, written + 23)).await, 200);
        written += 25;
        assert!(
            main.wait_for(deadline.saturating_duration_since(Instant::now()), |m| m
                .points_accepted()
                + sink.points_accepted()
                >= delivered + 25)
                .await,
            "the writes were not delivered"
        );
        // Refused at ingest: malformed (400), unknown category (404).
        assert_eq!(d.post("metric", "no fields here".into()).await, 400);
        assert_eq!(d.post("nonsense", lines("x", 1, 0)).await, 404);

        // Rejected by Dataway (400): dropped.
        main.set_default(Some(Reply::Status(400)));
        let dropped = total(
            &d,
            "dataway_dropped_points_total",
            &[("reason", "rejected")],
        )
        .await;
        assert_eq!(d.post("object", lines("host", 2, 0)).await, 200);
        wait_total(
            &d,
            deadline,
            "dataway_dropped_points_total",
            &[("reason", "rejected")],
            dropped + 2.0,
        )
        .await;

        // Failing (500): retried, then kept in the fail-cache; two bodies.
        main.set_default(Some(Reply::Status(500)));
        let retries = total(&d, "dataway_retries_total", &[]).await;
        for _ in 0..2 {
            assert_eq!(d.post("object", lines("host", 2, 0)).await, 200);
        }
        wait_total(&d, deadline, "dataway_failcache_records", &[], 2.0).await;
        // One retry each (max_retry_count = 1); resends from the cache are not retries.
        assert_eq!(total(&d, "dataway_retries_total", &[]).await, retries + 2.0);
        prom.wait_scrape(&instance, deadline).await;

        // Recovered: the first resend is refused (its record dropped), the second delivered.
        let (flushed, rejected) = (
            total(&d, "datakit_io_flush_failcache_bytes_count", &[]).await,
            total(
                &d,
                "dataway_failcache_dropped_total",
                &[("reason", "rejected")],
            )
            .await,
        );
        main.script([Reply::Status(400)]);
        main.set_default(None);
        wait_total(
            &d,
            deadline,
            "datakit_io_flush_failcache_bytes_count",
            &[],
            flushed + 1.0,
        )
        .await;
        wait_total(
            &d,
            deadline,
            "dataway_failcache_dropped_total",
            &[("reason", "rejected")],
            rejected + 1.0,
        )
        .await;
        until(deadline, "an empty fail-cache", async || {
            total(&d, "dataway_failcache_records", &[]).await == 0.0
        })
        .await;

        // The plugin file rewritten: `match` reloads (v2, then v1 again) and serves a batch.
        let to = if round == 0 { &v2 } else { &v1 };
        replace_atomically(&plugins, "rule.wasm", to);
        let reloads = &[("sinker", "match"), ("result", "ok")];
        wait_total(
            &d,
            deadline,
            "dataway_sinker_reloads_total",
            reloads,
            2.0 + round as f64,
        )
        .await;
        let at_sink = sink.points_accepted();
        let metric = lines("every-other", 4, written);
        written += 4;
        assert_eq!(d.post("metric", metric).await, 200);
        assert!(
            sink.wait_points(
                at_sink + 2,
                deadline.saturating_duration_since(Instant::now())
            )
            .await,
            "the reloaded plugin routed nothing"
        );
        prom.wait_scrape(&instance, deadline).await;
    }

    let text = scrape(&d).await;
    // The per-endpoint counters split DataKit's, which have no endpoint label.
    for (ours, dk) in [
        (
            "dataway_endpoint_points_total",
            "datakit_io_dataway_point_total",
        ),
        (
            "dataway_endpoint_point_bytes_total",
            "datakit_io_dataway_point_bytes_total",
        ),
    ] {
        let sum = |name| {
            samples_matching(&text, name, &[])
                .iter()
                .map(|s| s.value)
                .sum::<f64>()
        };
        assert_eq!(sum(ours), sum(dk), "{ours} does not add up to {dk}");
    }
    // promtool lints the exposition; only the justified ones may remain.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let lints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unexpected: Vec<&str> = lints
        .lines()
        .filter(|l| !l.trim().is_empty() && !ALLOWED_LINTS.contains(&l.trim()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool check metrics:\n{}",
        unexpected.join("\n")
    );
    // Exit 3 is "lints found"; anything else but 0 is an exposition it could not read.
    assert!(
        out.status.success() || (out.status.code() == Some(3) && !ALLOWED_LINTS.is_empty()),
        "promtool check metrics: {}\n{lints}",
        out.status
    );

    // The dashboard names only metrics the daemon exports.
    let families = exported(&text);
    for (title, expr) in &targets {
        for (name, _) in selectors(expr) {
            assert!(
                families.contains(family(&name)),
                "{title}: {name} is not exported by the daemon (query: {expr})"
            );
        }
    }

    // $instance lists the daemon.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/label/instance/values", prom.url))
        .query(&[("match[]", inst_metric)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let values: Value = serde_json::from_str(&r).unwrap();
    assert!(
        values["data"]
            .as_array()
            .is_some_and(|v| v.contains(&instance.as_str().into())),
        "$instance ({inst_query}) does not list {instance}: {r}"
    );
    // What the workload did, as Prometheus saw it: the fail-cache filled while Dataway failed.
    let q = format!(
        "max(max_over_time(dataway_failcache_records{{instance=\"{instance}\"}}[{RATE_INTERVAL}]))"
    );
    assert!(
        matches!(prom.query(&q).await.as_deref(), Ok([(_, v)]) if *v >= 2.0),
        "{q}: {:?}",
        prom.query(&q).await
    );

    // The WAL (on here) holds every write until delivered: its file has a size.
    let q = format!("dataway_wal_disk_bytes{{instance=\"{instance}\"}}");
    assert!(
        matches!(prom.query(&q).await.as_deref(), Ok([(_, v)]) if *v > 0.0),
        "{q}: {:?}",
        prom.query(&q).await
    );

    // Every query, as Grafana sends it with one instance selected (its value regex-escaped).
    let escaped = instance.replace('.', "\\\\.");
    let mut failures = Vec::new();
    for (title, expr) in &targets {
        let q = expr
            .replace("$instance", &escaped)
            .replace("$__rate_interval", RATE_INTERVAL)
            .replace("$__interval", "1s");
        assert!(!q.contains('$'), "{title}: a variable left in {q}");
        let series = match prom.query(&q).await {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{title}: {q}: {e}"));
                continue;
            }
        };
        // A rate, a quantile or a latency of what the workload moved is above 0; a gauge
        // (a queue, a cache, the budget) may be 0 now, but is finite and never negative.
        let moving = ["rate(", "increase(", "histogram_quantile(", "_latency"]
            .iter()
            .any(|f| q.contains(f));
        let finite: Vec<f64> = series
            .iter()
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
            .collect();
        let problem = if series.is_empty() {
            Some("no series")
        } else if series.iter().any(|(_, v)| v.is_infinite() || *v < 0.0) {
            Some("an infinite or negative value")
        } else if finite.is_empty() {
            Some("no finite value")
        } else if moving && !finite.iter().any(|v| *v > 0.0) {
            Some("no value above 0")
        } else if series
            .iter()
            .any(|(l, _)| l.get("instance") != Some(&instance))
        {
            Some("a series of another instance")
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{title}: {p}: {q} -> {series:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The version panel names the plugin serving now (v1, put back in round 1).
    let sha = hex::encode(Sha256::digest(std::fs::read(&v1).unwrap()));
    let q = format!("dataway_sinker_plugin_info{{instance=\"{instance}\",sinker=\"match\"}} == 1");
    let info = prom.query(&q).await.unwrap();
    assert_eq!(info.len(), 1, "{q}: {info:?}");
    assert_eq!(info[0].0.get("sha256"), Some(&sha), "{q}");
    eprintln!(
        "dashboard: {} queries checked in {:?}",
        targets.len(),
        started.elapsed()
    );
}
