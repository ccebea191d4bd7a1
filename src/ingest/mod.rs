//! The ingest server: DataKit's local write API, and a pass-through to Dataway's other APIs.
//!
//! In: `POST /v1/write/<category>[?precision=n|u|ms|s|m|h]` with line protocol, or with
//! DataKit's v2 protobuf body when `Content-Type` says so (`application/protobuf;
//! proto=com.guance.Point`, as DataKit sends and its HTTP API reads it; see
//! [`write`]), plain or gzip. Out: points handed to the [`Dataway`] router. A request
//! is all-or-nothing: if any line (or v2 point) is malformed the answer is 400 naming it and
//! no point of it is queued, so a client can fix and resend the whole body without creating
//! duplicates. Memory: bodies, their decompression and their parsed points are charged to
//! the one memory budget before they are held ([`body`], [`write`]).
//!
//! Answers: 200 once queued; 400 malformed body or query; 401 bad ingest token; 404 unknown
//! category; 408 body not received within `body_read_timeout`; 413 body (or its
//! decompressed form) over `max_body`; 415 unknown `Content-Encoding`, or a JSON
//! `Content-Type`; 503 with `Retry-After` when the send queues or memory budget are full or
//! the daemon is stopping.
//!
//! Also: `GET /metrics` (Prometheus), `GET /v1/ping` and `GET /health`, and the "other APIs"
//! of `protocol.md`, forwarded to the first endpoint with its token (and only its token:
//! a client's `token` parameters and the headers the Dataway APIs do not use stay here; see
//! [`crate::endpoint::other_api`]).
//!
//! Stopping ([`Drain`]): the server keeps listening while the daemon drains, so clients get
//! a 503 they can act on rather than a refused connection, and operators can still read
//! `/metrics`; writes and forwards that started before the stop finish normally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::category::Category;
use crate::config::IngestConfig;
use crate::dataway::Dataway;
use crate::endpoint::ApiError;
use crate::metrics::Metrics;

mod body;
pub mod server;
mod write;

/// The "other APIs" (`protocol.md`) that are forwarded to the first endpoint.
pub const OTHER_APIS: &[(&str, &str)] = &[
    ("GET", "/v1/datakit/pull"),
    ("POST", "/v1/election"),
    ("POST", "/v1/election/heartbeat"),
    ("POST", "/v1/query/raw"),
    ("POST", "/v1/workspace"),
    ("POST", "/v1/object/labels"),
    ("DELETE", "/v1/object/labels"),
    ("GET", "/v2/list/dataway"),
    ("POST", "/v1/log"),
    ("GET", "/v1/ntp"),
    ("POST", "/v1/upload/profiling"),
    ("POST", "/v1/write/rum/replay"),
];

/// What the handlers share.
pub struct IngestState {
    pub dataway: Arc<Dataway>,
    pub metrics: Arc<Metrics>,
    pub config: IngestConfig,
    pub started: Instant,
    pub drain: Drain,
    /// Set once WAL replay has started (at once without a WAL): until then `/health`
    /// answers 503, so an orchestrator sends no traffic to an instance still catching up.
    pub replay_started: Arc<AtomicBool>,
}

/// The stop of ingest: once [`Drain::start`] is called, new writes and forwards are answered
/// 503, while those already in progress finish (their points are queued);
/// [`Drain::idle`] tells when they have.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    in_progress: watch::Sender<usize>,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            draining: AtomicBool::new(false),
            in_progress: watch::Sender::new(0),
        }
    }
}

/// A write or forward in progress; the count drops when it is dropped.
struct InProgress<'a>(&'a Drain);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.send_modify(|n| *n -= 1);
    }
}

impl Drain {
    /// From now on, new writes and forwards are answered 503.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Writes and forwards in progress.
    pub fn in_progress(&self) -> usize {
        *self.in_progress.borrow()
    }

    /// Waits until no write or forward that started before [`Drain::start`] is in progress.
    pub async fn idle(&self) {
        let mut rx = self.in_progress.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Counts a request in, or `None` once draining. Counted before the check, so that
    /// [`Drain::idle`] either waits for this request or the request sees the drain.
    fn enter(&self) -> Option<InProgress<'_>> {
        self.in_progress.send_modify(|n| *n += 1);
        let guard = InProgress(self);
        (!self.is_draining()).then_some(guard)
    }
}

/// The HTTP routes.
pub fn router(state: Arc<IngestState>) -> Router {
    // Writes and forwards are refused once draining; /metrics, /v1/ping and /health keep
    // answering so the drain can be watched.
    let writes = Router::new()
        .route("/v1/write/{category}", post(write::write))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit_write));
    let mut forwards = Router::new();
    for (method, path) in OTHER_APIS {
        let filter = match *method {
            "GET" => MethodFilter::GET,
            "DELETE" => MethodFilter::DELETE,
            _ => MethodFilter::POST,
        };
        // Two methods on one path merge. `/v1/write/rum/replay` is static, so axum prefers
        // it over `/v1/write/{category}`.
        forwards = forwards.route(path, on(filter, forward));
    }
    let forwards =
        forwards.route_layer(middleware::from_fn_with_state(state.clone(), admit_forward));
    writes
        .merge(forwards)
        .route("/metrics", get(metrics))
        .route("/v1/ping", get(ping))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            close_when_draining,
        ))
        .with_state(state)
}

/// Serves until `close` is cancelled, then stops listening and finishes the requests in
/// progress; connections are capped and idle ones closed ([`server`]). Cancel it after the drain ([`Drain`]), not at the stop signal: until then new
/// writes must get a 503, not a refused connection.
pub async fn serve(
    listener: TcpListener,
    state: Arc<IngestState>,
    close: CancellationToken,
) -> std::io::Result<()> {
    let limits = server::Limits {
        max_connections: state.config.max_connections,
        header_read_timeout: state.config.header_read_timeout,
    };
    server::serve(
        listener,
        router(state.clone()),
        limits,
        state.metrics.clone(),
        close,
    )
    .await
}

/// Lets a write in, counted until its answer, unless ingest is draining. Runs as soon as
/// the request head arrives, so a body still uploading at the stop is let finish.
async fn admit_write(State(st): State<Arc<IngestState>>, req: Request, next: Next) -> Response {
    let Some(_in_progress) = st.drain.enter() else {
        let response = stopping();
        // Counted as `write` counts its own answers.
        let category = req.uri().path().trim_start_matches("/v1/write/");
        let label = category.parse::<Category>().map_or("unknown", |c| c.name());
        st.metrics
            .ingest_requests_total
            .with_label_values(&[label, response.status().as_str()])
            .inc();
        return response;
    };
    next.run(req).await
}

/// As [`admit_write`], for the other APIs.
async fn admit_forward(State(st): State<Arc<IngestState>>, req: Request, next: Next) -> Response {
    match st.drain.enter() {
        Some(_in_progress) => next.run(req).await,
        None => stopping(),
    }
}

fn stopping() -> Response {
    unavailable("shutting down; retry later or on another instance", 5)
}

/// While draining, every answer closes its connection: a client must not keep a
/// keep-alive connection to a daemon that is going away.
async fn close_when_draining(
    State(st): State<Arc<IngestState>>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = next.run(req).await;
    if st.drain.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(message: &str, retry_after_secs: u32) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// Checks `Authorization: Bearer <token>` when an ingest token is configured: exactly that,
/// `Bearer` as written, one space, the token, nothing trimmed or folded here. (Whitespace
/// around the whole value is not part of an HTTP field value, RFC 9110 5.5: the HTTP
/// parser has already dropped it.)
fn authorized(cfg: &IngestConfig, headers: &HeaderMap) -> bool {
    let Some(want) = &cfg.token else { return true };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare in constant time so the token cannot be guessed byte by byte.
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn metrics(State(st): State<Arc<IngestState>>) -> Response {
    let budget = st.dataway.budget();
    let (used, reading) = budget.used();
    st.metrics.memory_budget_bytes.set(budget.total() as i64);
    st.metrics
        .memory_budget_used_bytes
        .with_label_values(&["reading"])
        .set(reading as i64);
    st.metrics
        .memory_budget_used_bytes
        .with_label_values(&["points"])
        .set(used.saturating_sub(reading) as i64);
    if let Some(size) = st.dataway.wal().and_then(|w| w.disk_size()) {
        st.metrics.wal_disk_bytes.set(size as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.encode_text(),
    )
        .into_response()
}

async fn ping(State(st): State<Arc<IngestState>>) -> Response {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": st.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// Readiness, for load balancers and orchestrators: 200 `ok` once the daemon takes writes
/// (plugins loaded, WAL replay started: [`serve_starting`] answers before that), 503 with
/// the reason while the WAL replay has not started and while stopping. `/health/live` is
/// liveness: 200 as long as the process serves HTTP at all, starting and stopping included.
async fn health(State(st): State<Arc<IngestState>>) -> Response {
    if st.drain.is_draining() {
        return stopping();
    }
    if !st.replay_started.load(Ordering::Acquire) {
        return unavailable("starting: the WAL replay has not started yet", 1);
    }
    "ok".into_response()
}

async fn live() -> &'static str {
    "ok"
}

/// What answers on the ingest port while the daemon starts (its plugins load and compile,
/// which can take seconds): `/health/live` 200, everything else 503 with `Retry-After`, so a
/// client or a readiness probe sees "starting" instead of a connection that hangs. Serves
/// until `ready` is cancelled, then finishes the requests in progress and returns; the
/// daemon then serves on another handle of the same socket, so no connection is refused.
pub async fn serve_starting(
    listener: TcpListener,
    config: &IngestConfig,
    metrics: Arc<Metrics>,
    ready: CancellationToken,
) -> std::io::Result<()> {
    async fn starting() -> Response {
        let mut r = unavailable("starting: loading the sinkers' plugins", 1);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }
    let router = Router::new()
        .route("/health/live", get(live))
        .fallback(starting);
    let limits = server::Limits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
    };
    server::serve(listener, router, limits, metrics, ready).await
}

async fn forward(
    State(st): State<Arc<IngestState>>,
    method: Method,
    uri: axum::http::Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&st.config, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong `Authorization: Bearer <token>`",
        );
    }
    // The body is held (and charged to the budget) until the answer is passed back.
    let (body, _charge) = match body::read(
        &headers,
        body,
        st.config.max_body,
        st.dataway.budget(),
        st.config.body_read_timeout,
    )
    .await
    {
        Ok(r) => (r.bytes, r.charge),
        Err(r) => return r,
    };
    match st
        .dataway
        .request(method, uri.path(), query.as_deref(), headers, body)
        .await
    {
        // What of the answer comes back: `endpoint::other_api`, an allow-list.
        Ok(resp) => match crate::endpoint::other_api::passed_back(uri.path(), resp) {
            Ok(resp) => {
                let mut out = Response::new(axum::body::Body::from(resp.body));
                *out.status_mut() = resp.status;
                *out.headers_mut() = resp.headers;
                out
            }
            Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        Err(e @ ApiError::NotHttp(_)) => error(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::OpenCaches;

    /// `/health` is readiness: 503 until the WAL replay has started, 200 then, 503 again
    /// once stopping; `/health/live` is 200 throughout.
    #[tokio::test]
    async fn health_is_ready_only_between_the_wal_replay_start_and_the_stop() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[dataway]\nurls = [\"file://{}\"]\n[dataway.fail_cache]\npath = \"{}\"\n",
            dir.path().join("out").display(),
            dir.path().join("fc").display()
        );
        let config = crate::config::Config::from_toml(&text, "test").unwrap();
        let metrics = Arc::new(Metrics::new());
        let dataway = Dataway::start(
            &config.dataway,
            metrics.clone(),
            &Arc::new(OpenCaches::default()),
            Vec::new(),
        )
        .unwrap();
        let st = Arc::new(IngestState {
            dataway: Arc::new(dataway),
            metrics,
            config: config.ingest.clone(),
            started: Instant::now(),
            drain: Drain::default(),
            replay_started: Arc::new(AtomicBool::new(false)),
        });
        let ask = || async {
            let r = health(State(st.clone())).await;
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let (status, body) = ask().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("WAL replay has not started"), "{body}");
        st.replay_started.store(true, Ordering::Release);
        assert_eq!(ask().await, (StatusCode::OK, "ok".to_string()));
        st.drain.start();
        let (status, body) = ask().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        assert_eq!(live().await, "ok");
    }
}
