//! Reading a request body: under the memory budget, the size limit and a deadline.
//!
//! In: the body of a write or forwarded request, as hyper hands it over. Out: its bytes,
//! with their charge in the budget ([`Reading`]) that the caller holds for as long as it
//! holds the bytes. A body is never read into memory that the budget has not granted: a
//! declared `Content-Length` is charged before the first byte is read (so a refusal is a
//! 503 that costs nothing), a chunked body frame by frame as it arrives.
//!
//! Why a deadline: a client that declares a large body and then trickles it would hold its
//! share of the budget (and a connection) for as long as it likes; after
//! `ingest.body_read_timeout` it gets a 408 and its charge is given back.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use http_body_util::BodyExt;

use super::{error, unavailable};
use crate::dataway::{Budget, Reading};

/// A body read whole, and its charge.
pub struct Read {
    pub bytes: Bytes,
    pub charge: Reading,
}

/// Reads `body` whole, or answers why not: 413 over `max` bytes, 503 when the budget has
/// no room for it now, 408 when it has not all arrived within `timeout`, 400 when the
/// connection fails mid-body.
#[allow(clippy::result_large_err)]
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    budget: &Budget,
    timeout: Duration,
) -> Result<Read, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let mut charge = match declared {
        Some(n) => budget.try_reading(n as usize).ok_or_else(no_room)?,
        None => Reading::default(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = body;
    let mut buf = BytesMut::with_capacity(charge.bytes());
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(closing(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within ingest.body_read_timeout ({})",
                        humantime::format_duration(timeout)
                    ),
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(closing(error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() + data.len();
        if len > max {
            return Err(too_large(max));
        }
        let held = charge.bytes();
        if len > held && !budget.grow(&mut charge, len - held) {
            return Err(no_room());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Read {
        bytes: buf.freeze(),
        charge,
    })
}

/// Bodies up to this size are read and thrown away when a write is refused before its
/// body is needed, so the client's connection stays open: reading them costs less than
/// the client's reconnect. Larger ones close the connection unread.
const DISCARD_MAX: u64 = 256 * 1024;

/// Answers `refusal` to a request whose body is not needed: a small declared body is read
/// and dropped (no budget: nothing is kept) so the connection can serve the client's next
/// request; anything else closes it.
pub async fn refuse(
    headers: &HeaderMap,
    body: Body,
    refusal: Response,
    timeout: Duration,
) -> Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none_or(|n| n > DISCARD_MAX) {
        return closing(refusal);
    }
    let mut body = body;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut read = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return refusal,
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    read += d.len() as u64;
                    if read > DISCARD_MAX {
                        return closing(refusal);
                    }
                }
            }
            _ => return closing(refusal),
        }
    }
}

fn too_large(max: usize) -> Response {
    closing(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body is over ingest.max_body ({max} bytes)"),
    ))
}

/// The budget is spent: by bodies being read or by points not yet delivered.
pub fn no_room() -> Response {
    closing(unavailable(
        "the memory budget (dataway.max_pending_bytes) is spent; retry later",
        1,
    ))
}

/// An answer sent before the body was read whole: the connection cannot be reused.
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
