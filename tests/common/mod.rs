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
    /// The status the mock answered.
    pub status: u16,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn x_points(&self) -> usize {
        self.header("x-points")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct MockState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    changed: Notify,
    /// Requests that have arrived, answered or not (a slow reply is recorded when answered).
    arrived: std::sync::atomic::AtomicUsize,
}

/// A mock Dataway server on 127.0.0.1.
pub struct MockDataway {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    stop: CancellationToken,
}

impl MockDataway {
    pub async fn start() -> MockDataway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

    /// Requests that have arrived so far, including those still waiting for a slow reply.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Points in write requests answered 2xx.
    pub fn points_accepted(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status) && r.path.starts_with("/v1/write/"))
            .map(Recorded::x_points)
            .sum()
    }

    /// The lines of every write request answered 2xx, in arrival order.
    pub fn lines_accepted(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status) && r.path.starts_with("/v1/write/"))
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
    st.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let text = if gz {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut s)
            .expect("gzip body");
        s
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    st.requests.lock().unwrap().push(Recorded {
        peer,
        method,
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers,
        body: body.to_vec(),
        text,
        status,
        at: Instant::now(),
    });
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

/// A config TOML with test-friendly timings and the given endpoint URLs.
pub fn config_for(urls: &[String], extra_dataway: &str, extra: &str) -> Config {
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // Test-friendly timings, unless the test sets its own.
    // The defaults go first: `extra_dataway` may end in a sub-table.
    let mut dataway = String::new();
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
            dataway.push_str(&format!("{k} = {v}\n"));
        }
    }
    dataway.push_str(extra_dataway);
    let text = format!("[dataway]\nurls = [{urls}]\n{dataway}\n{extra}");
    let mut cfg = Config::from_toml(&text, "test").unwrap();
    cfg.ingest.listen = "127.0.0.1:0".parse().unwrap();
    // Each daemon its own fail-cache, never the working directory.
    if cfg.dataway.fail_cache.path == dataway::config::FailCacheConfig::default().path {
        cfg.dataway.fail_cache.path = tempfile::tempdir().unwrap().keep();
    }
    cfg.validate().unwrap();
    cfg
}

impl TestDaemon {
    pub async fn start(cfg: Config) -> TestDaemon {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let daemon = Daemon::start(cfg).unwrap();
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

/// The value of one sample in the Prometheus text, e.g.
/// `sample(&text, "datakit_io_dataway_point_total{category=\"metric\",status=\"OK\"}")`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}

/// Polls the daemon's metrics until `series` has `value` (metrics are recorded just after
/// the mock answers, so a test that saw the request must still wait for the count).
/// Gives up after 20 s: a timeout for a stuck daemon, not a speed requirement.
pub async fn wait_metric(metrics: &Metrics, series: &str, value: f64) -> bool {
    wait_metric_until(metrics, series, |v| v == value).await
}

/// Like [`wait_metric`], until `series` is at least `min` (a missing series counts as 0).
pub async fn wait_metric_at_least(metrics: &Metrics, series: &str, min: f64) -> bool {
    wait_metric_until(metrics, series, |v| v >= min).await
}

async fn wait_metric_until(metrics: &Metrics, series: &str, ok: impl Fn(f64) -> bool) -> bool {
    for _ in 0..2000 {
        if ok(sample(&metrics.encode_text(), series).unwrap_or(0.0)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
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
