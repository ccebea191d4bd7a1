//! The ingest server: DataKit's local write API, and a pass-through to Dataway's other APIs.
//!
//! In: `POST /v1/write/<category>[?precision=n|u|ms|s|m|h]` with line protocol, or with
//! DataKit's v2 protobuf body when `Content-Type` says so (`application/protobuf;
//! proto=com.guance.Point`, as DataKit sends and its HTTP API reads it; see
//! [`BodyFormat`]), plain or gzip. Out: points handed to the [`Dataway`] router. A request
//! is all-or-nothing: if any line (or v2 point) is malformed the answer is 400 naming it and
//! no point of it is queued, so a client can fix and resend the whole body without creating
//! duplicates.
//!
//! Answers: 200 once queued; 400 malformed body or query; 401 bad ingest token; 404 unknown
//! category; 413 body (or its decompressed form) over `max_body`; 415 unknown
//! `Content-Encoding`, or a JSON `Content-Type`; 503 with `Retry-After` when the send queues
//! or memory budget are full or the daemon is stopping.
//!
//! Also: `GET /metrics` (Prometheus), `GET /v1/ping` and `GET /health`, and the "other APIs"
//! of `protocol.md`, forwarded to the first endpoint with its token (and only its token:
//! a client's `token` parameters and the headers the Dataway APIs do not use stay here; see
//! [`crate::endpoint::other_api`]).
//!
//! Stopping ([`Drain`]): the server keeps listening while the daemon drains, so clients get
//! a 503 they can act on rather than a refused connection, and operators can still read
//! `/metrics`; writes and forwards that started before the stop finish normally.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::category::Category;
use crate::config::IngestConfig;
use crate::dataway::{Dataway, WriteError};
use crate::endpoint::ApiError;
use crate::metrics::Metrics;
use crate::point::{ParseOptions, Precision};

pub mod server;

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

/// Bodies larger than this are parsed on the blocking pool so they never stall the server.
const INLINE_PARSE_LIMIT: usize = 64 * 1024;

/// What the handlers share.
pub struct IngestState {
    pub dataway: Arc<Dataway>,
    pub metrics: Arc<Metrics>,
    pub config: IngestConfig,
    pub started: Instant,
    pub drain: Drain,
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
        .route("/v1/write/{category}", post(write))
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
        .layer(middleware::from_fn_with_state(
            state.clone(),
            close_when_draining,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body))
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

#[derive(Deserialize)]
struct WriteQuery {
    precision: Option<String>,
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

async fn write(
    State(st): State<Arc<IngestState>>,
    Path(category): Path<String>,
    query: Result<Query<WriteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (label, response) = match category.parse::<Category>() {
        Ok(c) => (c.name(), write_points(&st, c, query, &headers, body).await),
        Err(e) => ("unknown", error(StatusCode::NOT_FOUND, e.to_string())),
    };
    st.metrics
        .ingest_requests_total
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    response
}

async fn write_points(
    st: &IngestState,
    category: Category,
    query: Result<Query<WriteQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&st.config, headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong `Authorization: Bearer <token>`",
        );
    }
    let precision = match query {
        Ok(Query(q)) => match q.precision.as_deref().unwrap_or("n").parse::<Precision>() {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("query `precision`: {e}")),
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, st.config.max_body),
    };
    let format = match BodyFormat::of(headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let raw = match decode_body(headers, body, st.config.max_body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let raw_len = raw.len();
    let opts = ParseOptions {
        precision,
        default_time: now_ns(),
    };
    let parse = move || match format {
        BodyFormat::LineProtocol => crate::point::parse(&raw, opts).map_err(BadBody::Lines),
        BodyFormat::Protobuf => crate::point::v2::decode(&raw, opts).map_err(BadBody::V2),
    };
    let parsed = if raw_len > INLINE_PARSE_LIMIT {
        tokio::task::spawn_blocking(parse)
            .await
            .expect("parser does not panic")
    } else {
        parse()
    };
    let points = match parsed {
        Ok(p) => p,
        Err(BadBody::V2(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed v2 (protobuf) body, nothing was accepted: {e}"),
            );
        }
        Err(BadBody::Lines(errs)) => {
            let lines: Vec<_> = errs
                .errors
                .iter()
                .map(|e| json!({"line": e.line, "column": e.column, "message": e.message}))
                .collect();
            let body = json!({
                "error": format!("malformed line protocol, nothing was accepted: {errs}"),
                "bad_lines": errs.total,
                "errors": lines,
            });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let n = points.len();
    // A sinker's condition is a WASM call that may run up to its deadline, and a WAL append
    // waits for an fsync: keep both off the async workers so they never stall other requests.
    let written = if st.dataway.sinks(category) || st.dataway.durable() {
        let dw = st.dataway.clone();
        tokio::task::spawn_blocking(move || dw.try_write(category, points))
            .await
            .expect("routing does not panic")
    } else {
        st.dataway.try_write(category, points)
    };
    match written {
        Ok(()) => {
            st.metrics
                .ingest_points_total
                .with_label_values(&[category.name()])
                .inc_by(n as u64);
            (StatusCode::OK, axum::Json(json!({ "points": n }))).into_response()
        }
        Err(WriteError::Full) => unavailable("send queues are full; retry later", 1),
        Err(WriteError::Closed) => unavailable("shutting down", 5),
    }
}

/// How a write body is encoded, from its `Content-Type`, as DataKit's HTTP API decides
/// (cliutils `point.HTTPContentType`): `application/protobuf` with `proto=com.guance.Point`
/// is v2; anything else, or none, is line protocol (DataKit's default "to be compatible with
/// legacy code"). Unlike DataKit, the media type and parameter are matched without regard
/// to case or spacing, and `proto` may be left out; DataKit's JSON bodies are refused with
/// a 415 rather than read as line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    LineProtocol,
    Protobuf,
}

impl BodyFormat {
    #[allow(clippy::result_large_err)]
    fn of(headers: &HeaderMap) -> Result<BodyFormat, Response> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(BodyFormat::LineProtocol);
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let mut parts = value.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        match media.as_str() {
            "application/protobuf" | "application/x-protobuf" => {
                for param in parts {
                    let Some((k, v)) = param.split_once('=') else {
                        continue;
                    };
                    let v = v.trim().trim_matches('"');
                    if k.trim().eq_ignore_ascii_case("proto")
                        && !v.eq_ignore_ascii_case("com.guance.Point")
                    {
                        return Err(error(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            format!(
                                "Content-Type `{value}`: protobuf bodies must be DataKit's v2 \
                                 points (`{}`)",
                                crate::point::v2::CONTENT_TYPE
                            ),
                        ));
                    }
                }
                Ok(BodyFormat::Protobuf)
            }
            "application/json" | "application/pbjson" => Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type `{value}`: JSON bodies are not supported; send line protocol \
                     or DataKit's v2 protobuf (`{}`)",
                    crate::point::v2::CONTENT_TYPE
                ),
            )),
            _ => Ok(BodyFormat::LineProtocol),
        }
    }
}

/// Why a body's points were refused.
enum BadBody {
    Lines(crate::point::ParseErrors),
    V2(crate::point::v2::DecodeError),
}

/// A body that could not be read; over `max_body` it says which setting to raise (axum's
/// own text, "Failed to buffer the request body", does not).
fn body_error(e: BytesRejection, max: usize) -> Response {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is over ingest.max_body ({max} bytes)"),
        )
    } else {
        error(e.status(), e.body_text())
    }
}

/// Undoes `Content-Encoding`, refusing anything that would decompress past `max`.
#[allow(clippy::result_large_err)]
fn decode_body(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Bytes, Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((body.len() * 4).min(max));
            let mut dec = flate2::read::MultiGzDecoder::new(&body[..]).take(max as u64 + 1);
            if let Err(e) = dec.read_to_end(&mut out) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("body is not valid gzip: {e}"),
                ));
            }
            if out.len() > max {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("decompressed body is over ingest.max_body ({max} bytes)"),
                ));
            }
            Ok(Bytes::from(out))
        }
        other => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported; send plain or gzip"),
        )),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

async fn metrics(State(st): State<Arc<IngestState>>) -> Response {
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

async fn health() -> &'static str {
    "ok"
}

async fn forward(
    State(st): State<Arc<IngestState>>,
    method: Method,
    uri: axum::http::Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&st.config, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong `Authorization: Bearer <token>`",
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, st.config.max_body),
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
