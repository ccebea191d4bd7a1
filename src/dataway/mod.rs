//! The router: where points enter the sending side.
//!
//! In: `write(category, points)` from the ingest server or an embedding program, and
//! "other API" requests. Out: batches in endpoint queues; API requests to the first endpoint.
//!
//! A write reserves a queue slot on every target endpoint first and enqueues only when all
//! reservations succeed: a request is never half-accepted, so a client retrying a refused
//! write never causes duplicates. Today every point goes to every main endpoint; sinkers
//! (next milestone) take the points they match to their own endpoints first, through the
//! same reserve-then-send step, and the main endpoints get the rest.
//!
//! Memory is bounded by one byte budget for everything accepted but not yet delivered
//! (`max_pending_bytes`), plus each endpoint's queue length: when either is full a write is
//! refused (`WriteError::Full`) and the ingest server answers 503 with `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::category::Category;
use crate::config::DatawayConfig;
use crate::endpoint::{
    ApiError, Batch, DrainReport, Endpoint, EndpointOptions, EndpointUrl, StartError,
};
use crate::httpcli::Response;
use crate::metrics::Metrics;
use crate::point::{FieldValue, Point};

/// Why a write was not accepted. Nothing of a refused write was queued anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("send queues are full; retry later")]
    Full,
    #[error("the daemon is shutting down")]
    Closed,
}

/// The dataway: every main endpoint and the routing between them.
pub struct Dataway {
    endpoints: Vec<Endpoint>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    closed: AtomicBool,
}

impl Dataway {
    /// Starts one endpoint per URL in `cfg` (they must have been validated by `config`).
    pub fn start(cfg: &DatawayConfig, metrics: Arc<Metrics>) -> Result<Dataway, StartError> {
        let opts = EndpointOptions::from_config(cfg);
        let endpoints = cfg
            .urls
            .iter()
            .map(|u| {
                let url = EndpointUrl::parse(u).expect("validated by config");
                Endpoint::start(url, opts.clone(), metrics.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dataway::with_endpoints(endpoints, cfg.max_pending_bytes))
    }

    /// A dataway over endpoints already started, with a memory budget in bytes.
    pub fn with_endpoints(endpoints: Vec<Endpoint>, max_pending_bytes: usize) -> Dataway {
        Dataway {
            endpoints,
            budget: Arc::new(Semaphore::new(max_pending_bytes)),
            budget_total: max_pending_bytes,
            closed: AtomicBool::new(false),
        }
    }

    /// The main endpoints, in configuration order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Accepts points if there is room right now, or refuses them whole.
    pub fn try_write(&self, category: Category, points: Vec<Point>) -> Result<(), WriteError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        if points.is_empty() {
            return Ok(());
        }
        let charge = self.charge(&points);
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(charge)
            .map_err(|_| WriteError::Full)?;
        let slots = self
            .endpoints
            .iter()
            .map(Endpoint::try_reserve)
            .collect::<Option<Vec<_>>>()
            .ok_or(WriteError::Full)?;
        let batch = Arc::new(Batch::with_budget(category, points, permit));
        for slot in slots {
            slot.send(batch.clone());
        }
        Ok(())
    }

    /// Accepts points, waiting for room (backpressure for embedding programs).
    pub async fn write(&self, category: Category, points: Vec<Point>) -> Result<(), WriteError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        if points.is_empty() {
            return Ok(());
        }
        let charge = self.charge(&points);
        let permit: OwnedSemaphorePermit = self
            .budget
            .clone()
            .acquire_many_owned(charge)
            .await
            .map_err(|_| WriteError::Closed)?;
        let mut slots = Vec::with_capacity(self.endpoints.len());
        for ep in &self.endpoints {
            slots.push(ep.reserve().await.ok_or(WriteError::Closed)?);
        }
        let batch = Arc::new(Batch::with_budget(category, points, permit));
        for slot in slots {
            slot.send(batch.clone());
        }
        Ok(())
    }

    /// Sends an "other API" request to the FIRST endpoint only (DataKit's rule).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        self.endpoints[0]
            .request(method, path, query, headers, body)
            .await
    }

    /// Stops accepting writes and delivers what is queued, giving up at `grace`.
    pub async fn shutdown(&self, grace: Duration) -> DrainReport {
        self.closed.store(true, Ordering::Release);
        for ep in &self.endpoints {
            ep.close();
        }
        // Every endpoint drains in its own task already; joining them one after another
        // under one shared deadline takes no longer than the slowest.
        let deadline = Instant::now() + grace;
        let mut report = DrainReport::default();
        for ep in &self.endpoints {
            report.abandoned_points += ep.join(deadline).await.abandoned_points;
        }
        report
    }

    /// The budget a batch takes: its approximate in-memory size, clamped so that even a
    /// batch larger than the whole budget can go (alone) rather than never.
    fn charge(&self, points: &[Point]) -> u32 {
        let bytes: usize = points.iter().map(approx_size).sum();
        bytes.clamp(1, self.budget_total.min(u32::MAX as usize)) as u32
    }
}

/// Approximate memory a point holds: its inline size plus each heap allocation rounded up
/// the way allocators do (16-byte classes, plus a header). Measured against RSS for a
/// typical metric point this is within a few percent; a plain sum of string lengths
/// underestimated by 1.7x and let the budget be overrun.
fn approx_size(p: &Point) -> usize {
    fn alloc(n: usize) -> usize {
        if n == 0 { 0 } else { n.div_ceil(16) * 16 + 16 }
    }
    let tags: usize = p
        .tags
        .iter()
        .map(|(k, v)| alloc(k.len()) + alloc(v.len()))
        .sum();
    let fields: usize = p
        .fields
        .iter()
        .map(|(k, v)| {
            alloc(k.len())
                + match v {
                    FieldValue::Str(s) => alloc(s.len()),
                    _ => 0,
                }
        })
        .sum();
    std::mem::size_of::<Point>()
        + alloc(p.measurement.len())
        + alloc(std::mem::size_of_val(p.tags.as_slice()))
        + alloc(std::mem::size_of_val(p.fields.as_slice()))
        + tags
        + fields
}
