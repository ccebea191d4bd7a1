//! `POST /v1/write/<category>`: a body in, its points queued in the router, within the
//! memory budget ([`crate::dataway::Budget`]).
//!
//! The order is chosen so that refusing costs little and memory stays bounded whatever a
//! body holds:
//!
//! 1. Everything that needs no body is checked first (token, query, formats), then the
//!    body is read under the budget ([`super::body`]).
//! 2. Its points are read one chunk at a time ([`crate::point::reader`]): a chunk is at
//!    most [`chunk_memory`] bytes of parsed points, charged before it is parsed; the
//!    decode window is charged as it grows.
//! 3. A body whose points fit in one chunk (nearly every body: ~4 MiB of points is ~7,000
//!    typical lines) is queued whole with [`Dataway::try_write_held`], or refused whole
//!    with a 503 when the budget or a queue is full.
//! 4. A larger body (a big upload, or a small gzip body of millions of tiny lines) waits
//!    for its turn (one at a time), is read through once to check every line (a bad line
//!    refuses it whole, with its line number, as always), then read again and queued
//!    chunk by chunk, each chunk waiting for room. Nothing is queued before the whole
//!    body is known to be good, so a 400 still means "nothing was taken". Only a WAL
//!    failure or the daemon closing in the middle can leave a large body queued in part:
//!    the answer is then 503, and the client's resend duplicates the part already queued
//!    (at least once, never lost).

// The errors here are HTTP answers, made at most once per request: boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::{IngestState, authorized, body, error, unavailable};
use crate::category::Category;
use crate::dataway::{Budget, Dataway, Reading, WriteError};
use crate::point::reader::{BadPoints, Chunk, Format, ReadError, Reader, Source};
use crate::point::{Noting, ParseOptions, Precision};

/// Bodies larger than this are parsed on the blocking pool so they never stall the server.
const INLINE_PARSE_LIMIT: usize = 64 * 1024;

/// The most memory one chunk of parsed points may hold: 4 MiB, or a quarter of a smaller
/// budget (so a chunk waiting for room always fits beside the reading half).
pub fn chunk_memory(budget: &Budget) -> usize {
    (budget.total() / 4).clamp(1, 4 * 1024 * 1024)
}

/// The most memory a parsed point takes per byte of its line: a typical 150-byte line is a
/// ~900-byte point (6x), the smallest possible (`a v=1`, 6 bytes) a ~200-byte one (~33x).
/// A plain body that parses into more than this per byte goes the large-body way.
const POINT_BYTES_PER_TEXT_BYTE: usize = 40;

/// The same for points kept as text ([`crate::point::Text`]): a line costs its bytes, a
/// timestamp if it had none (`a v=1` becomes `a v=1 1733200000000000000`) and 4 bytes of
/// index, at most 5x.
const KEPT_BYTES_PER_TEXT_BYTE: usize = 5;

#[derive(Deserialize)]
pub(super) struct WriteQuery {
    precision: Option<String>,
}

pub(super) async fn write(
    State(st): State<Arc<IngestState>>,
    Path(category): Path<String>,
    query: Result<Query<WriteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
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
    body: Body,
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
    let format = match body_format(headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let gzip = match gzipped(headers) {
        Ok(g) => g,
        Err(r) => return r,
    };
    // Full queues refuse before the body is decompressed or parsed (where its points'
    // endpoints are known without them): under overload a refusal must cost next to
    // nothing, or the harder clients push the less gets through.
    if let Err(e) = st.dataway.has_room(category) {
        return body::refuse(headers, body, write_error(e), st.config.body_read_timeout).await;
    }
    let budget = st.dataway.budget().clone();
    let read = match body::read(
        headers,
        body,
        st.config.max_body,
        &budget,
        st.config.body_read_timeout,
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let job = Job {
        dataway: st.dataway.clone(),
        budget,
        category,
        format,
        gzip,
        opts: ParseOptions {
            precision,
            default_time: now_ns(),
        },
        max_decoded: st.config.max_body,
        forward: st.dataway.forwards(category),
        noted: st.dataway.noting(category),
        body: read.bytes,
        _body_charge: read.charge,
        window: Window::default(),
    };
    // A sinker's condition is a WASM call that may run up to its deadline, a WAL append
    // waits for an fsync, and a large body takes a while to parse: keep them all off the
    // async workers so they never stall other requests.
    let blocking =
        job.body.len() > INLINE_PARSE_LIMIT || st.dataway.sinks(category) || st.dataway.durable();
    let outcome = match if blocking {
        Step::Large(job)
    } else {
        job.run()
    } {
        Step::Done(r) => r,
        Step::Large(job) => tokio::task::spawn_blocking(move || match job.run() {
            Step::Done(r) => r,
            Step::Large(job) => job.run_large(),
        })
        .await
        .expect("the write pipeline does not panic"),
    };
    match outcome {
        Ok(n) => {
            st.metrics
                .ingest_points_total
                .with_label_values(&[category.name()])
                .inc_by(n as u64);
            (StatusCode::OK, axum::Json(json!({ "points": n }))).into_response()
        }
        Err(Refused { response, queued }) => {
            if queued > 0 {
                st.metrics
                    .ingest_points_total
                    .with_label_values(&[category.name()])
                    .inc_by(queued as u64);
            }
            response
        }
    }
}

/// Where a write is after [`Job::run`].
enum Step {
    Done(Result<usize, Refused>),
    /// More than one chunk: [`Job::run_large`], on the blocking pool.
    Large(Job),
}

/// A refused write, and the points of it queued before the refusal (only a large body
/// can have any; see the module doc).
struct Refused {
    response: Response,
    queued: usize,
}

impl From<Response> for Refused {
    fn from(response: Response) -> Refused {
        Refused {
            response,
            queued: 0,
        }
    }
}

/// The decode window's charge, kept across the reads of one body: the second read of a
/// large body needs no more window than the first did.
#[derive(Default)]
struct Window {
    charge: Reading,
    used: usize,
}

impl Window {
    fn reserve(&mut self, budget: &Budget, n: usize) -> bool {
        let need = self.used + n;
        let held = self.charge.bytes();
        if need > held && !budget.grow(&mut self.charge, need - held) {
            return false;
        }
        self.used = need;
        true
    }
}

/// One write's body and everything needed to queue its points.
struct Job {
    dataway: Arc<Dataway>,
    budget: Arc<Budget>,
    category: Category,
    format: Format,
    gzip: bool,
    opts: ParseOptions,
    max_decoded: usize,
    /// Keep the points as their checked text ([`Dataway::forwards`]).
    forward: bool,
    /// With `forward`: what the text notes for the sinkers ([`Dataway::noting`]).
    noted: Option<Noting>,
    body: Bytes,
    /// Held until the write is answered: the body's bytes are in memory until then.
    _body_charge: Reading,
    window: Window,
}

impl Job {
    fn reader(&mut self) -> Reader {
        self.window.used = 0;
        let src = if self.gzip {
            Source::Read(Box::new(flate2::read::MultiGzDecoder::new(Cursor::new(
                self.body.clone(),
            ))))
        } else {
            Source::Bytes(self.body.clone())
        };
        let reader = Reader::new(src, self.format, self.opts, self.max_decoded);
        if self.forward {
            reader.forwarding().noting(self.noted.clone())
        } else {
            reader
        }
    }

    fn next_chunk(&mut self, reader: &mut Reader, max: usize) -> Result<Chunk, Refused> {
        let budget = &self.budget;
        let window = &mut self.window;
        reader
            .next_chunk(max, &mut |n| window.reserve(budget, n))
            .map_err(|e| read_error(e, self.max_decoded).into())
    }

    /// The budget to reserve before parsing a body that may fit in one chunk: a chunk, but
    /// for a plain line-protocol body no more than [`POINT_BYTES_PER_TEXT_BYTE`] (or
    /// [`KEPT_BYTES_PER_TEXT_BYTE`]) times its size, so a small write does not hold a whole chunk of the budget while it parses.
    fn first_chunk_memory(&self) -> usize {
        let max = chunk_memory(&self.budget);
        let per_byte = if self.forward {
            KEPT_BYTES_PER_TEXT_BYTE
        } else {
            POINT_BYTES_PER_TEXT_BYTE
        };
        match (self.gzip, self.format) {
            (false, Format::LineProtocol) => self.body.len().saturating_mul(per_byte).clamp(1, max),
            _ => max,
        }
    }

    /// Queues the body's points if they fit in one chunk: the number queued, or the
    /// answer saying why not; a larger body is handed on.
    fn run(mut self) -> Step {
        // Room for one chunk of points before parsing any: a full budget refuses here,
        // before the work.
        let first = self.first_chunk_memory();
        let Some(permit) = self.budget.try_points(first) else {
            return Step::Done(Err(unavailable(
                "the memory budget (dataway.max_pending_bytes) is spent; retry later",
                1,
            )
            .into()));
        };
        let mut reader = self.reader();
        let chunk = match self.next_chunk(&mut reader, first) {
            Ok(c) => c,
            Err(r) => return Step::Done(Err(r)),
        };
        if !reader.is_done() {
            return Step::Large(self);
        }
        if let Err(e) = reader.finish() {
            return Step::Done(Err(bad_points(e)));
        }
        let n = chunk.len();
        Step::Done(
            self.dataway
                .try_write_held(self.category, chunk.content(), Some(permit))
                .map(|()| n)
                .map_err(|e| write_error(e).into()),
        )
    }

    /// A body of more than one chunk: checked whole, then queued chunk by chunk, waiting
    /// for room (see the module doc). Runs on the blocking pool.
    fn run_large(mut self) -> Result<usize, Refused> {
        let rt = tokio::runtime::Handle::current();
        let _turn = rt.block_on(self.budget.large());
        let max = chunk_memory(&self.budget);

        let permit = rt.block_on(self.budget.points(max));
        let mut reader = self.reader();
        while !reader.is_done() {
            self.next_chunk(&mut reader, max)?;
        }
        reader.finish().map_err(bad_points)?;
        drop(permit);

        let mut queued = 0;
        let mut reader = self.reader();
        while !reader.is_done() {
            let permit: OwnedSemaphorePermit = rt.block_on(self.budget.points(max));
            let chunk = self
                .next_chunk(&mut reader, max)
                .map_err(|r| Refused { queued, ..r })?;
            let n = chunk.len();
            let written = rt.block_on(self.dataway.write_held(
                self.category,
                chunk.content(),
                Some(permit),
            ));
            if let Err(e) = written {
                tracing::warn!(category = %self.category, queued, "a large write was refused part way (WAL failure or shutdown); the client's resend will duplicate the points already queued");
                return Err(Refused {
                    response: write_error(e),
                    queued,
                });
            }
            queued += n;
        }
        Ok(queued)
    }
}

fn write_error(e: WriteError) -> Response {
    match e {
        WriteError::Full => unavailable("send queues are full; retry later", 1),
        WriteError::Closed => unavailable("shutting down", 5),
    }
}

fn read_error(e: ReadError, max: usize) -> Response {
    match e {
        ReadError::Decode(e) => error(
            StatusCode::BAD_REQUEST,
            format!("body is not valid gzip: {e}"),
        ),
        ReadError::TooLarge { .. } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed body is over ingest.max_body ({max} bytes)"),
        ),
        ReadError::NoRoom => body::no_room(),
    }
}

fn bad_points(e: BadPoints) -> Refused {
    match e {
        BadPoints::V2(e) => error(
            StatusCode::BAD_REQUEST,
            format!("malformed v2 (protobuf) body, nothing was accepted: {e}"),
        ),
        BadPoints::Lines(errs) => {
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
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
    }
    .into()
}

/// How a write body is encoded, from its `Content-Type`, as DataKit's HTTP API decides
/// (cliutils `point.HTTPContentType`): `application/protobuf` with `proto=com.guance.Point`
/// is v2; anything else, or none, is line protocol (DataKit's default "to be compatible with
/// legacy code"). Unlike DataKit, the media type and parameter are matched without regard
/// to case or spacing, and `proto` may be left out; DataKit's JSON bodies are refused with
/// a 415 rather than read as line protocol.
fn body_format(headers: &HeaderMap) -> Result<Format, Response> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::LineProtocol);
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
            Ok(Format::V2)
        }
        "application/json" | "application/pbjson" => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type `{value}`: JSON bodies are not supported; send line protocol \
                 or DataKit's v2 protobuf (`{}`)",
                crate::point::v2::CONTENT_TYPE
            ),
        )),
        _ => Ok(Format::LineProtocol),
    }
}

/// Whether `Content-Encoding` says gzip; 415 for an encoding other than gzip or none.
fn gzipped(headers: &HeaderMap) -> Result<bool, Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
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
