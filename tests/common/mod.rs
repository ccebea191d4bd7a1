//! Test harness: an in-process mock Dataway server on loopback that records every request
//! and answers as scripted, and a helper that runs the real daemon in-process.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use dataway::config::Config;
use dataway::daemon::Daemon;
use dataway::dataway::Dataway;
use dataway::endpoint::DrainReport;
use dataway::metrics::Metrics;

pub mod plugins;
pub mod process;

/// How the mock answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, with a short body.
    Status(u16),
    /// This status with a `Retry-After: secs` header.
    RetryAfter(u16, u64),
    /// Wait, then answer 200 (for timeouts and slow endpoints).
    Slow(Duration),
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The client's address: the same port means the same (pooled) connection.
    pub peer: SocketAddr,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body as it came over the wire.
    pub body: Vec<u8>,
    /// The body with gzip undone, if it was gzipped.
    pub text: String,
    /// The status the mock answered; `None` while the answer is still pending (a slow
    /// reply), or if the client gave up before it.
    pub status: Option<u16>,
    /// When the request arrived.
    pub at: Instant,
    /// When the mock answered it.
    pub answered_at: Option<Instant>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Answered with a 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
    pub fn x_points(&self) -> usize {
        self.header("x-points")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct MockState {
    /// Every request in arrival order, recorded as it arrives; its status is filled in
    /// when the mock answers (so an attempt the client abandons is still seen).
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    changed: Notify,
}

/// A mock Dataway server on 127.0.0.1.
pub struct MockDataway {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    stop: CancellationToken,
}

impl MockDataway {
    pub async fn start() -> MockDataway {
        MockDataway::serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// The endpoint URL with a token.
    pub fn url(&self, token: &str) -> String {
        format!("http://{}?token={token}", self.addr)
    }

    /// Answers the next requests with these replies, in order, then falls back to the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// The answer once the script is used up (200 when unset).
    pub fn set_default(&self, reply: Option<Reply>) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Requests that have arrived so far, including those still waiting for a slow reply
    /// and those the client abandoned.
    pub fn arrived(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Every request so far in arrival order, answered or not (see [`Recorded::status`]).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Only the requests the mock has answered, in arrival order.
    pub fn answered(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.status.is_some())
            .collect()
    }

    /// Points in write requests answered 2xx.
    pub fn points_accepted(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.ok() && r.path.starts_with("/v1/write/"))
            .map(Recorded::x_points)
            .sum()
    }

    /// The lines of every write request answered 2xx, in arrival order.
    pub fn lines_accepted(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.ok() && r.path.starts_with("/v1/write/"))
            .flat_map(|r| r.text.lines().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    /// Waits until `pred` holds over the recorded requests, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&MockDataway) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self);
            }
        }
    }

    pub async fn wait_points(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |m| m.points_accepted() >= n).await
    }
}

impl Drop for MockDataway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    st: Arc<MockState>,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let text = if gz {
        // Lossy: a v2 (protobuf) body is not text.
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .expect("gzip body");
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    // Recorded on arrival: a request whose answer the client never waits for still counts.
    let index = {
        let mut requests = st.requests.lock().unwrap();
        requests.push(Recorded {
            peer,
            method,
            path: uri.path().to_string(),
            query: uri.query().map(String::from),
            headers,
            body: body.to_vec(),
            text,
            status: None,
            at: Instant::now(),
            answered_at: None,
        });
        requests.len() - 1
    };
    st.changed.notify_waiters();
    let reply = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| st.default.lock().unwrap().clone())
        .unwrap_or(Reply::Status(200));
    let status = match &reply {
        Reply::Status(s) | Reply::RetryAfter(s, _) => *s,
        Reply::Slow(d) => {
            tokio::time::sleep(*d).await;
            200
        }
    };
    {
        let mut requests = st.requests.lock().unwrap();
        requests[index].status = Some(status);
        requests[index].answered_at = Some(Instant::now());
    }
    st.changed.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap();
    let msg = format!("mock says {status}");
    match reply {
        Reply::RetryAfter(_, secs) => {
            (code, [("retry-after", secs.to_string())], msg).into_response()
        }
        _ => (code, msg).into_response(),
    }
}

/// The real daemon, running in-process on 127.0.0.1 with its ingest port chosen by the OS.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub dataway: Arc<Dataway>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<DrainReport>>,
}

/// `[dataway]` with these endpoint URLs, test-friendly timings unless `extra_dataway`
/// sets its own, then `extra_dataway` (which may end in a sub-table).
fn dataway_section(urls: &[String], extra_dataway: &str) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!("[dataway]\nurls = [{urls}]\n");
    for (k, v) in [
        ("retry_delay", "\"20ms\""),
        ("max_retry_delay", "\"2s\""),
        ("timeout", "\"5s\""),
    ] {
        // Only `[dataway]`'s own keys count, not those of a sub-table after them.
        let mut own = extra_dataway
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['));
        if !own.any(|l| l.trim_start().starts_with(k)) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text.push_str(extra_dataway);
    text.push('\n');
    text
}

/// A config with test-friendly timings and the given endpoint URLs.
pub fn config_for(urls: &[String], extra_dataway: &str, extra: &str) -> Config {
    let text = format!("{}{extra}", dataway_section(urls, extra_dataway));
    let mut cfg = Config::from_toml(&text, "test").unwrap();
    cfg.ingest.listen = "127.0.0.1:0".parse().unwrap();
    // Each daemon its own fail-cache and WAL, never the working directory; compiled plugins
    // in the test build's cache, never the user's ~/.cache.
    if cfg.dataway.fail_cache.path == dataway::config::FailCacheConfig::default().path {
        cfg.dataway.fail_cache.path = scratch_dir("failcache");
    }
    if cfg.dataway.wal.path == dataway::config::WalConfig::default().path {
        cfg.dataway.wal.path = scratch_dir("wal");
    }
    if cfg.dataway.sinker_limits.cache_dir.is_none() {
        cfg.dataway.sinker_limits.cache_dir = Some(plugin_cache_dir());
    }
    cfg.validate().unwrap();
    cfg
}

/// The compiled-plugin cache every test shares: inside the build directory, so tests never
/// write to the user's `~/.cache` and `cargo clean` removes it.
pub fn plugin_cache_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// A new empty directory for one test's files, under
/// `<target>/tmp/scratch/<pid>/`. Never in `/tmp` or the working directory; the folders of
/// test processes that have ended are removed by the next process that asks for one, so
/// runs do not pile up (a directory a test still needs after its daemon stops, e.g. to
/// restart on the same fail-cache, lives as long as the test process).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    SWEPT.call_once(|| {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let alive = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
    let dir = root
        .join(std::process::id().to_string())
        .join(format!("{what}-{}", NEXT.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestDaemon {
    pub async fn start(cfg: Config) -> TestDaemon {
        TestDaemon::start_daemon(Daemon::start(cfg).unwrap()).await
    }

    async fn start_daemon(daemon: Daemon) -> TestDaemon {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = daemon.metrics.clone();
        let dataway = daemon.dataway.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon.run(listener, shutdown.clone()));
        TestDaemon {
            addr,
            metrics,
            dataway,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts line protocol to `/v1/write/<category>`.
    pub async fn post(&self, category: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url(&format!("/v1/write/{category}")))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Stops the daemon the way SIGTERM does and returns its drain report.
    pub async fn stop(self) -> DrainReport {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }
}

/// `n` distinct metric lines, each with a unique `seq` field.
pub fn lines(measurement: &str, n: usize, start: usize) -> String {
    (start..start + n)
        .map(|i| {
            format!(
                "{measurement},host=h{} seq={i}i,v={}.5 {}",
                i % 7,
                i,
                1_700_000_000_000_000_000i64 + i as i64
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One sample of the Prometheus text exposition: metric name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{k="v",...}` (labels in any order, `\"` and `\\` escapes) into the name and
/// its labels; the rest of the text after the selector is returned too.
fn parse_selector(s: &str) -> (String, std::collections::BTreeMap<String, String>, &str) {
    let s = s.trim_start();
    let name_end = s.find(['{', ' ']).unwrap_or(s.len());
    let name = s[..name_end].to_string();
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = &s[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = body.len();
        loop {
            // key
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            let Some(&(ks, c)) = chars.peek() else { break };
            if c == '}' {
                end = ks + 1;
                break;
            }
            let mut ke = ks;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    ke = i;
                    break;
                }
                chars.next();
            }
            let key = body[ks..ke].trim().to_string();
            chars.next(); // '='
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "label value in {s}"
            );
            let mut value = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(o) => value.push(o),
                        None => break,
                    },
                    '"' => break,
                    o => value.push(o),
                }
            }
            labels.insert(key, value);
        }
        rest = &body[end.min(body.len())..];
    }
    (name, labels, rest)
}

/// Every sample in a Prometheus text exposition (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, labels, rest) = parse_selector(l);
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value in {l}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{e}: {l}")),
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The value of one series in the Prometheus text, or `None` if it is absent; `series` is
/// `name` or `name{label="value",...}` with the labels in any order, and must name every
/// label of the series (so a wrong or missing label never matches), e.g.
/// `sample(&text, "datakit_io_dataway_point_total{status=\"OK\",category=\"metric\"}")`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let (name, labels, _) = parse_selector(series);
    let found: Vec<_> = samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.labels == labels)
        .collect();
    assert!(found.len() <= 1, "{series} matches {found:?}");
    found.first().map(|s| s.value)
}

/// The samples named `name` whose labels include every `(key, value)` in `subset`.
pub fn samples_matching(text: &str, name: &str, subset: &[(&str, &str)]) -> Vec<Sample> {
    samples(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && subset
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// Polls the daemon's metrics until `series` is present with `value` (metrics are recorded
/// just after the mock answers, so a test that saw the request must still wait for the
/// count). Absent is not 0: waiting for 0 needs the series to exist. Gives up after 20 s:
/// a timeout for a stuck daemon, not a speed requirement.
pub async fn wait_metric(metrics: &Metrics, series: &str, value: f64) -> bool {
    wait_metric_until(metrics, series, |v| v == value).await
}

/// Like [`wait_metric`], until `series` is present and at least `min`.
pub async fn wait_metric_at_least(metrics: &Metrics, series: &str, min: f64) -> bool {
    wait_metric_until(metrics, series, |v| v >= min).await
}

async fn wait_metric_until(metrics: &Metrics, series: &str, ok: impl Fn(f64) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if sample(&metrics.encode_text(), series).is_some_and(&ok) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// seq -> how many times it arrived at `mock` (2xx write requests; lines from `lines()`).
pub fn seqs(mock: &MockDataway) -> std::collections::HashMap<u64, usize> {
    let mut out = std::collections::HashMap::new();
    for l in mock.lines_accepted() {
        let seq = l
            .split([' ', ','])
            .find_map(|kv| kv.strip_prefix("seq="))
            .and_then(|v| v.trim_end_matches('i').parse().ok())
            .unwrap_or_else(|| panic!("no seq in {l}"));
        *out.entry(seq).or_default() += 1;
    }
    out
}

impl TestDaemon {
    /// As [`TestDaemon::start`], with plugins compiled by `compiler compile-plugin …` in a
    /// child process, as `dataway run` does with its own executable.
    pub async fn start_with_compiler(cfg: Config, compiler: std::path::PathBuf) -> TestDaemon {
        TestDaemon::start_daemon(Daemon::start_with(cfg, Some(compiler)).unwrap()).await
    }
}

impl MockDataway {
    /// A mock on a listener the test made (e.g. from a socket that was bound, refusing
    /// connections, before it started listening: an outage that ends on the same port).
    pub async fn serve_on(listener: TcpListener) -> MockDataway {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::default());
        let stop = CancellationToken::new();
        let st = state.clone();
        let app = Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  m: Method,
                  u: Uri,
                  h: HeaderMap,
                  b: Bytes| {
                let st = st.clone();
                async move { handle(st, peer, m, u, h, b).await }
            },
        );
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(s.cancelled_owned())
            .await
            .unwrap();
        });
        MockDataway { addr, state, stop }
    }
}

/// A config file for [`process::DaemonProcess`]: these endpoint URLs, `extra_dataway` keys
/// of `[dataway]` (no sub-tables), `extra_ingest` keys of `[ingest]`; ingest on port 0,
/// fail-cache, WAL and plugins in scratch dirs, test-friendly retry timings unless set.
pub fn config_file(urls: &[String], extra_dataway: &str, extra_ingest: &str) -> std::path::PathBuf {
    let dir = scratch_dir("config");
    let path = |what: &str| dir.join(what).display().to_string();
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let text = format!(
        "{}plugins_dir = \"{}\"\n\
         [dataway.fail_cache]\npath = \"{}\"\n[dataway.wal]\npath = \"{}\"\n\
         [dataway.sinker_limits]\ncache_dir = \"{}\"\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\n{extra_ingest}\n",
        dataway_section(urls, extra_dataway),
        path("plugins"),
        path("failcache"),
        path("wal"),
        plugin_cache_dir().display(),
    );
    let file = dir.join("dataway.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// DataKit's own Go code (`dkfilter`: its filter language and v2 codec), the oracle of
/// `tests/v2.rs` and `tests/filter_differential.rs`: `DATAWAY_DKFILTER` if set, else built
/// once into the target directory from `DATAWAY_DATAKIT_GO` or `shared/peers/datakit-filter-go`
/// beside the project (golang-go needed; ~1 min cold). Built under a per-process name and
/// renamed, so concurrent test binaries never run a half-written file.
pub fn dkfilter() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("DATAWAY_DKFILTER") {
                return PathBuf::from(p);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let peer = std::env::var_os("DATAWAY_DATAKIT_GO").map_or_else(
                || {
                    [root.join("../shared"), root.join("../../shared")]
                        .into_iter()
                        .map(|s| s.join("peers/datakit-filter-go"))
                        .find(|p| p.exists())
                        .unwrap_or_else(|| root.join("../shared/peers/datakit-filter-go"))
                },
                PathBuf::from,
            );
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("datakit-go");
            let out = dir.join("dkfilter");
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if out.exists() && stamp(&out) >= stamp(&peer.join("main.go")) {
                return out;
            }
            let script = peer.join("build.sh");
            assert!(
                script.exists(),
                "DataKit's Go peer is not at {} (set DATAWAY_DATAKIT_GO to its folder, or \
                 DATAWAY_DKFILTER to a built dkfilter)",
                peer.display()
            );
            // Go's build cache, module path and temp files stay in the target directory: tests
            // leave nothing in ~/.cache or $TMPDIR (CI checks).
            for d in ["gocache", "gopath", "gotmp"] {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            let partial = dir.join(format!("dkfilter.partial-{}", std::process::id()));
            let r = std::process::Command::new("bash")
                .arg(&script)
                .arg(&partial)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOPATH", dir.join("gopath"))
                .env("GOTMPDIR", dir.join("gotmp"))
                .output()
                .expect("run build.sh");
            assert!(
                r.status.success(),
                "building dkfilter failed (is golang-go installed?):\n{}",
                String::from_utf8_lossy(&r.stderr)
            );
            std::fs::rename(&partial, &out).unwrap();
            out
        })
        .clone()
}

/// Runs `dataway sinker test ARGS` with `stdin`, in `cwd` (or the test's own), with `cache`
/// as `XDG_CACHE_HOME` (`sinker test` keeps compiled plugins in the daemon's default cache:
/// the build directory's here, never the user's ~/.cache); (success, stdout, stderr).
pub fn sinker_test_in(
    args: &[&str],
    stdin: &str,
    cwd: Option<&std::path::Path>,
    cache: &std::path::Path,
) -> (bool, String, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataway"));
    cmd.args(["sinker", "test"]).args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command refused for its arguments exits without reading stdin: a broken pipe
    // here is that, not a failure (its exit status and stderr say what happened).
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
