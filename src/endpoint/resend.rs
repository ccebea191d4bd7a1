//! The endpoint's side of the fail-cache: keep a body that failed after retries, and resend
//! what is kept, oldest first, to this endpoint only.
//!
//! One resend task per endpoint: it sends the oldest record; on success it removes it and
//! goes on at once; on a retryable failure it keeps the record at the head and waits
//! `clean_interval` (other endpoints are not affected: each has its own cache and task);
//! on a refusal (4xx) it drops the record and counts it. It stops when the endpoint is
//! closed; what is left stays on disk for the next start.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Body, EndpointOptions, EndpointUrl, Sender, Shared, write_request};
use crate::category::Category;
use crate::failcache::{self, FailCache, Head, Record};
use crate::metrics::Metrics;

/// What opening an endpoint's cache gave.
pub(super) enum Opened {
    /// No cache for this endpoint (file:// endpoint, disabled, or an error: logged).
    None,
    Ready(Arc<FailCache>),
    /// The file is held by the endpoint this one replaces (a drop-in sinker restarted):
    /// the resend task opens it when it is released.
    Busy,
}

/// Opens the endpoint's cache (HTTP endpoints with a fail-cache configured).
pub(super) fn open_cache(
    url: &EndpointUrl,
    opts: &EndpointOptions,
    metrics: &Arc<Metrics>,
) -> Opened {
    let (EndpointUrl::Http { origin, query }, Some(fc)) = (url, &opts.fail_cache) else {
        return Opened::None;
    };
    let path = failcache::file_for(&fc.dir, &format!("{origin}?{query}"));
    match FailCache::open(&path, fc.limits.clone(), url.to_string(), metrics.clone()) {
        Ok(c) => {
            let (records, bytes) = c.len();
            if records > 0 {
                tracing::info!(endpoint = %url, records, bytes, "fail-cache holds bodies to resend");
            }
            Opened::Ready(Arc::new(c))
        }
        Err(e) if e.is_busy() => Opened::Busy,
        Err(e) => {
            tracing::error!(endpoint = %url, "no fail-cache for this endpoint: {e}");
            Opened::None
        }
    }
}

/// Stores a body in the endpoint's fail-cache (the fsync runs off the async workers).
/// `false` when it could not be stored (no cache, or a write error: logged and counted).
pub(super) async fn keep(shared: &Shared, category: Category, body: &Body) -> bool {
    let Some(cache) = shared.cache.get().cloned() else {
        return false;
    };
    let record = Record::new(
        category,
        body.gzipped,
        body.points as u64,
        body.payload.clone(),
    );
    let error = match tokio::task::spawn_blocking(move || cache.push(&record)).await {
        Ok(Ok(())) => {
            shared.cache_added.notify_one();
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(endpoint = %shared.label, %category, points = body.points, "could not keep the body in the fail-cache: {error}");
    shared.drop_points(category, body.points, "failcache_write_error");
    false
}

/// The resend loop (see the module doc).
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken, abort: CancellationToken) {
    let Sender::Http(cli) = &shared.sender else {
        return;
    };
    let cache = match shared.cache.get() {
        Some(c) => c.clone(),
        None => {
            // Held by the endpoint this one replaces until it has drained: try again.
            tracing::info!(endpoint = %shared.label, "fail-cache file still held by the previous endpoint; waiting for it");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
                match open_cache(&shared.url, &shared.opts, &shared.metrics) {
                    Opened::Ready(c) => break shared.cache.get_or_init(|| c).clone(),
                    Opened::Busy => continue,
                    Opened::None => return,
                }
            }
        }
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
        let head = match tokio::task::spawn_blocking(move || c.head()).await {
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
                    _ = shared.cache_added.notified() => {}
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
        };
        let path = record.category.write_path();
        let req = write_request(&shared, record.category, &body, true);
        // A send in progress finishes unless the shutdown deadline passes: cutting it at
        // `close` would send the same body again after the restart.
        let outcome = tokio::select! {
            _ = abort.cancelled() => return,
            o = cli.send(&req) => o,
        };
        shared.record_api(path, &outcome);
        shared.record_points(record.category, outcome.status(), &body);
        let c = cache.clone();
        let settled = match &outcome.result {
            Ok(r) if r.status.is_success() => {
                shared
                    .metrics
                    .failcache_bytes
                    .observe(&[record.category.name()], body.payload.len() as f64);
                Some(tokio::task::spawn_blocking(move || c.remove(key)).await)
            }
            Ok(r) if !outcome.is_retryable_failure() => {
                tracing::warn!(endpoint = %shared.label, category = %record.category, status = %r.status, points = record.points, "Dataway refused a resent body; dropped");
                Some(tokio::task::spawn_blocking(move || c.reject(key, &record)).await)
            }
            _ => None, // still failing: try again after the interval
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
