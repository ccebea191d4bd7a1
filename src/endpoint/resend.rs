//! The endpoint's side of the fail-cache: keep a body that failed after retries, and resend
//! what is kept, oldest first, to this endpoint only.
//!
//! One resend task per cache file: it sends the oldest record (one attempt); on success it
//! removes it and goes on at once; on a retryable failure it keeps the record at the head
//! and waits `clean_interval` (other endpoints are not affected: each URL has its own cache and task);
//! on a refusal (4xx) it drops the record and counts it. It stops when the endpoint is
//! closed; what is left stays on disk for the next start.
//!
//! Endpoints with the same URL and token (a sinker sending where the main endpoint sends,
//! or a drop-in sinker restarted while its old endpoints drain) share one open cache
//! through [`OpenCaches`]: both store into it, one resends from it. Without that the
//! second would find the file locked and run without a cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Body, EndpointOptions, EndpointUrl, Sender, Shared, write_request};
use crate::category::Category;
use crate::failcache::{self, FailCache, Head, Record};
use crate::metrics::Metrics;

/// The fail-cache files this process has open, so that endpoints sending to the same URL
/// and token share one (a redb file can be open only once). One per daemon, handed to
/// every [`super::Endpoint::start`].
#[derive(Default)]
pub struct OpenCaches {
    open: Mutex<HashMap<PathBuf, Weak<SharedCache>>>,
}

/// One open cache file and what its users coordinate on.
pub(super) struct SharedCache {
    pub(super) cache: FailCache,
    /// Wakes the resend task when a body is stored.
    added: Notify,
    /// Held by the one task resending from the file; another endpoint's task takes over
    /// when that endpoint closes.
    resender: tokio::sync::Mutex<()>,
}

/// What opening an endpoint's cache gave.
pub(super) enum Opened {
    /// No cache for this endpoint (file:// endpoint, disabled, or an error: logged).
    None,
    Ready(Arc<SharedCache>),
    /// The file is held elsewhere: by another process, or by an endpoint of this one
    /// that is just letting it go. The resend task opens it when it is released.
    Busy,
}

/// Opens the endpoint's cache (HTTP endpoints with a fail-cache configured), or joins the
/// one already open for the same URL and token.
pub(super) fn open_cache(
    url: &EndpointUrl,
    opts: &EndpointOptions,
    metrics: &Arc<Metrics>,
    caches: &OpenCaches,
) -> Opened {
    let (EndpointUrl::Http { origin, query }, Some(fc)) = (url, &opts.fail_cache) else {
        return Opened::None;
    };
    let path = failcache::file_for(&fc.dir, &format!("{origin}?{query}"));
    let mut open = caches.open.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|_, w| w.strong_count() > 0);
    if let Some(shared) = open.get(&path).and_then(Weak::upgrade) {
        return Opened::Ready(shared);
    }
    match FailCache::open(&path, fc.limits.clone(), url.to_string(), metrics.clone()) {
        Ok(cache) => {
            let (records, bytes) = cache.len();
            if records > 0 {
                tracing::info!(endpoint = %url, records, bytes, "fail-cache holds bodies to resend");
            }
            let shared = Arc::new(SharedCache {
                cache,
                added: Notify::new(),
                resender: tokio::sync::Mutex::new(()),
            });
            open.insert(path, Arc::downgrade(&shared));
            Opened::Ready(shared)
        }
        Err(e) if e.is_busy() => Opened::Busy,
        Err(e) => {
            tracing::error!(endpoint = %url, "no fail-cache for this endpoint: {e}");
            Opened::None
        }
    }
}

/// Stores a body in the endpoint's fail-cache (the fsync runs off the async workers).
/// The error when it could not be stored (no cache open, or a write error); the caller
/// decides what that costs (the WAL may still hold the body) and logs it.
pub(super) async fn keep(shared: &Shared, category: Category, body: &Body) -> Result<(), String> {
    let Some(cache) = shared.cache.get().cloned() else {
        return Err("the endpoint's fail-cache file is not open (see the log at start)".into());
    };
    let headers = body
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                bytes::Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect();
    let record = Record::new(
        category,
        body.gzipped,
        body.points as u64,
        body.payload.clone(),
    )
    .sunk(shared.opts.sinker.is_some())
    .with_headers(headers)
    .protobuf(body.encoding == crate::config::ContentEncoding::V2);
    let c = cache.clone();
    match tokio::task::spawn_blocking(move || c.cache.push(&record)).await {
        Ok(Ok(())) => {
            cache.added.notify_one();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The resend loop (see the module doc).
pub(super) async fn run(
    shared: Arc<Shared>,
    caches: Arc<OpenCaches>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let Sender::Http(cli) = &shared.sender else {
        return;
    };
    let cache = match shared.cache.get() {
        Some(c) => c.clone(),
        None => {
            tracing::info!(endpoint = %shared.label, "fail-cache file held elsewhere; waiting for it");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
                match open_cache(&shared.url, &shared.opts, &shared.metrics, &caches) {
                    Opened::Ready(c) => break shared.cache.get_or_init(|| c).clone(),
                    Opened::Busy => continue,
                    Opened::None => return,
                }
            }
        }
    };
    // Another endpoint with the same URL may be resending from this file: wait for it to
    // close (one resender per file, or bodies would be sent twice).
    let _resending = tokio::select! {
        _ = stop.cancelled() => return,
        g = cache.resender.lock() => g,
    };
    let interval = shared
        .opts
        .fail_cache
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |f| f.clean_interval);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let c = cache.clone();
        let head = match tokio::task::spawn_blocking(move || c.cache.head()).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::error!(endpoint = %shared.label, "reading the fail-cache: {e}");
                Head::Empty
            }
            Err(_) => Head::Empty,
        };
        let (key, record) = match head {
            Head::Ready(k, r) => (k, r),
            Head::Empty => {
                // Wait for a new body (or, in case a wake-up was missed, the interval),
                // then give the endpoint `clean_interval` before the first resend: the
                // body has only just failed all its retries.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = cache.added.notified() => {}
                    _ = tokio::time::sleep(interval) => continue,
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                continue;
            }
        };
        let body = Body {
            payload: record.payload.clone(),
            raw_len: 0,
            points: record.points as usize,
            gzipped: record.gzipped,
            headers: stored_headers(&shared.label, &record),
            encoding: if record.protobuf {
                crate::config::ContentEncoding::V2
            } else {
                crate::config::ContentEncoding::V1
            },
        };
        let path = record.category.write_path();
        let req = write_request(&shared, record.category, &body, true);
        // One attempt (this loop is the retry): an attempt in progress at `close` finishes
        // unless the shutdown deadline passes, as cutting it would send the same body
        // again after the restart; a stop never waits for a backoff.
        let outcome = tokio::select! {
            _ = abort.cancelled() => return,
            o = cli.send_once(&req) => o,
        };
        // A resend is a request (`api_request_total`), but its points were counted once
        // already, by the send that put them here: DataKit does not count fail-cache
        // resends in `dataway_point_total` either (`WithCacheClean`), so a long outage does
        // not count the same points again on every retry.
        shared.record_api(path, &outcome);
        let c = cache.clone();
        let settled = match &outcome.result {
            Ok(r) if r.status.is_success() => {
                shared
                    .metrics
                    .failcache_bytes
                    .observe(&[record.category.name()], body.payload.len() as f64);
                Some(tokio::task::spawn_blocking(move || c.cache.remove(key)).await)
            }
            Ok(r) if !outcome.is_retryable_failure() => {
                tracing::warn!(endpoint = %shared.label, category = %record.category, status = %r.status, points = record.points, "Dataway refused a resent body; dropped");
                Some(tokio::task::spawn_blocking(move || c.cache.reject(key, &record)).await)
            }
            _ => {
                cache.cache.retry_later(); // still failing: try again after the interval
                None
            }
        };
        let go_on = match settled {
            Some(Ok(Ok(()))) => true,
            Some(Ok(Err(e))) => {
                // Not removed: pausing keeps the same body from being sent again and
                // again as fast as the server takes it.
                tracing::error!(endpoint = %shared.label, "fail-cache: {e}");
                false
            }
            Some(Err(_)) | None => false,
        };
        if !go_on {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// The headers a record was stored with, as sent the first time. The record's checksum
/// vouches for them; one that is not a valid header anyway is logged and left out.
fn stored_headers(endpoint: &str, record: &Record) -> Vec<(HeaderName, HeaderValue)> {
    record
        .headers
        .iter()
        .filter_map(|(k, v)| {
            match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
                (Ok(k), Ok(v)) => Some((k, v)),
                _ => {
                    tracing::error!(%endpoint, header = %k, "fail-cache record holds an invalid header; resent without it");
                    None
                }
            }
        })
        .collect()
}
