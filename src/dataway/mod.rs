//! The router: where points enter the sending side.
//!
//! In: `write(category, points)` from the ingest server or an embedding program, and
//! "other API" requests. Out: batches in endpoint queues; API requests to the first endpoint.
//!
//! A write first goes through the sinkers ([`crate::sinker::split`]): each takes the points
//! its condition matches, the rest is for the main endpoints. Points kept as the text they
//! came in as ([`crate::point::Text`]) are split as text, line by line. Then a queue slot is reserved
//! on every endpoint that gets something, and the batches are enqueued only when all
//! reservations succeed: a request is never half-accepted, so a client retrying a refused
//! write never causes duplicates.
//!
//! With `enable_sinker`, each part's points are then grouped by their `X-Global-Tags`
//! value ([`crate::endpoint::grouping`]), once, here, before they are queued (where
//! DataKit groups, in `Dataway.Write`): every endpoint of the part sends each group in
//! bodies of its own with that header.
//!
//! Memory is bounded by one byte budget for everything accepted but not yet delivered
//! (`max_pending_bytes`), plus each endpoint's queue length: when either is full a write is
//! refused (`WriteError::Full`) and the ingest server answers 503 with `Retry-After`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

use crate::category::Category;
use crate::config::DatawayConfig;
use crate::endpoint::grouping::{Group, Grouper};
use crate::endpoint::{
    ApiError, Batch, DrainReport, Endpoint, EndpointOptions, EndpointUrl, OpenCaches, StartError,
};
use crate::httpcli::Response;
use crate::metrics::Metrics;
use crate::point::{Content, Noting, Point, Text};
use crate::sinker::{self, Sinker, Sinkers};
use crate::wal::{Prepared, Ticket, Wal};

mod budget;

pub use budget::{Budget, Reading};

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
    sinkers: Arc<Sinkers>,
    /// Sinkers removed while running: their endpoints drain; shutdown waits for them.
    retired: Arc<Mutex<Vec<Arc<Sinker>>>>,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
    closed: AtomicBool,
    /// With `[dataway.wal]`: every accepted write is on disk before it is acknowledged.
    wal: Option<Arc<Wal>>,
    /// With `enable_sinker`: groups each part's points by their `X-Global-Tags`.
    grouper: Option<Grouper>,
}

/// How long a removed sinker's endpoints may take to deliver what they hold.
const RETIRE_GRACE: Duration = Duration::from_secs(60);

/// A write the WAL could not log is refused (the client retries), never taken undurably.
fn wal_failed(e: String) -> WriteError {
    tracing::error!("WAL append failed; write refused: {e}");
    WriteError::Full
}

/// Logs a write in the WAL without queueing it (see [`Wal::spill`]).
fn spill(wal: &Arc<Wal>, prepared: Option<Prepared>) -> Result<(), WriteError> {
    let prepared = prepared.expect("a write is prepared when the WAL is on");
    match wal.spill(prepared) {
        Ok(()) => Ok(()),
        Err(None) => Err(WriteError::Full),
        Err(Some(e)) => Err(wal_failed(e)),
    }
}

/// Points bound for a set of endpoints (a sinker's, or the main ones).
struct Part<'a> {
    endpoints: &'a [Endpoint],
    content: Content,
    /// The runs of `points` sent with their own `X-Global-Tags` (empty: not grouped).
    groups: Vec<Group>,
    charge: u32,
}

impl Dataway {
    /// Starts one endpoint per URL in `cfg` (they must have been validated by `config`),
    /// routing through `sinkers` (started by [`crate::sinker::reload::Reloader`]).
    pub fn start(
        cfg: &DatawayConfig,
        metrics: Arc<Metrics>,
        caches: &Arc<OpenCaches>,
        sinkers: Vec<Arc<Sinker>>,
    ) -> Result<Dataway, StartError> {
        let opts = EndpointOptions::from_config(cfg);
        let endpoints = cfg
            .urls
            .iter()
            .map(|u| {
                let url = EndpointUrl::parse(u).expect("validated by config");
                Endpoint::start(url, opts.clone(), metrics.clone(), caches)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dataway::with_endpoints(
            endpoints,
            Arc::new(Sinkers::new(sinkers)),
            metrics,
            cfg.max_pending_bytes,
        )
        .with_grouping(Grouper::from_config(cfg)))
    }

    /// A dataway over endpoints and sinkers already started, with a memory budget in bytes.
    pub fn with_endpoints(
        endpoints: Vec<Endpoint>,
        sinkers: Arc<Sinkers>,
        metrics: Arc<Metrics>,
        max_pending_bytes: usize,
    ) -> Dataway {
        Dataway {
            endpoints,
            sinkers,
            retired: Arc::new(Mutex::new(Vec::new())),
            metrics,
            budget: Arc::new(Budget::new(max_pending_bytes)),
            closed: AtomicBool::new(false),
            wal: None,
            grouper: None,
        }
    }

    /// Groups points for DataKit's server-side sinker routing (`enable_sinker`), or not.
    pub fn with_grouping(mut self, grouper: Option<Grouper>) -> Dataway {
        self.grouper = grouper;
        self
    }

    /// Makes every write durable before it is acknowledged (see [`crate::wal`]).
    pub fn with_wal(mut self, wal: Arc<Wal>) -> Dataway {
        self.wal = Some(wal);
        self
    }

    /// Whether writes wait for an fsync (the ingest server then runs them off its async
    /// workers).
    pub fn durable(&self) -> bool {
        self.wal.is_some()
    }

    /// Encodes a write for the WAL, if there is one (before routing consumes it).
    fn prepare(&self, category: Category, content: &Content) -> Option<Prepared> {
        self.wal.as_ref().map(|_| match content {
            Content::Points(points) => Wal::prepare(category, points),
            Content::Text(text) => Wal::prepare_text(category, text),
        })
    }

    /// Logs a prepared write durably, once it is sure to be taken (queue slots reserved):
    /// a refused write costs no fsync. The ticket goes with the batches.
    fn log(&self, prepared: Option<Prepared>) -> Result<Option<Arc<Ticket>>, WriteError> {
        match (&self.wal, prepared) {
            (Some(w), Some(p)) => w.commit(p).map(|t| Some(Arc::new(t))).map_err(wal_failed),
            _ => Ok(None),
        }
    }

    /// The live sinkers (the reloader adds and removes drop-in sinkers here).
    pub fn sinkers(&self) -> &Arc<Sinkers> {
        &self.sinkers
    }

    /// Whether some sinker looks at points of `category` (their routing calls plugins).
    pub fn sinks(&self, category: Category) -> bool {
        self.sinkers.snapshot().iter().any(|s| s.takes(category))
    }

    /// Closes the endpoints of a sinker that was removed; they deliver what they hold,
    /// and [`Dataway::shutdown`] waits for them.
    pub fn retire(&self, sinker: Arc<Sinker>) {
        // Batches already routed hold their points; the plugin itself is no longer needed.
        sinker.set_condition(sinker::Condition::Disabled);
        for ep in sinker.endpoints() {
            ep.close();
        }
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sinker.clone());
        // Once its endpoints have drained (or given the rest to their fail-caches) the
        // sinker is let go. A replacement with the same URLs already shares its fail-cache
        // files; it takes over resending from them when these endpoints are joined.
        let list = self.retired.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let deadline = Instant::now() + RETIRE_GRACE;
                for ep in sinker.endpoints() {
                    ep.join(deadline).await;
                }
                list.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|s| !Arc::ptr_eq(s, &sinker));
            });
        }
    }

    /// The main endpoints, in configuration order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The write-ahead log, when `[dataway.wal]` is on.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// The memory budget every write is charged to (see [`budget`]).
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Whether a write of `category` could be queued now, known before any of it is read
    /// or parsed, so that refusing costs next to nothing. Only where the endpoints a write
    /// goes to do not depend on its points: no sinker condition looks at `category` (every
    /// point goes to the main endpoints), or sinkers without a plugin take it whole (every
    /// point goes to theirs). Where a plugin decides, this says yes and
    /// [`Dataway::try_write_held`] decides after routing: a write whose points all go to a
    /// sinker must not be refused because a main endpoint is down.
    pub fn has_room(&self, category: Category) -> Result<(), WriteError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        // With the WAL as the buffer, a write that finds no room is spilled to disk.
        if self.wal.as_ref().is_some_and(|w| w.can_spill()) {
            return Ok(());
        }
        let set = self.sinkers.snapshot();
        let mut whole = Vec::new();
        for s in set.iter().filter(|s| s.takes(category)) {
            match s.condition() {
                sinker::Condition::Plugin(_) => return Ok(()),
                sinker::Condition::All => whole.push(s),
                sinker::Condition::Disabled => {}
            }
        }
        let room = if whole.is_empty() {
            self.endpoints.iter().all(Endpoint::has_room)
        } else {
            whole
                .iter()
                .all(|s| s.endpoints().iter().all(Endpoint::has_room))
        };
        if room { Ok(()) } else { Err(WriteError::Full) }
    }

    /// Accepts points if there is room right now, or refuses them whole.
    pub fn try_write(&self, category: Category, points: Vec<Point>) -> Result<(), WriteError> {
        self.try_write_held(category, points, None)
    }

    /// As [`Dataway::try_write`], with `held` already charged to the budget for these
    /// points (by the parser that made them): it becomes their charge, topped up or cut
    /// down to their real size. The points may be kept as text (a reader's
    /// [`crate::point::reader::Reader::forwarding`] chunk, when [`Dataway::forwards`] said
    /// so); should that have changed since, they are parsed again and routed as points.
    pub fn try_write_held(
        &self,
        category: Category,
        points: impl Into<Content>,
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<(), WriteError> {
        let points = points.into();
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        if points.is_empty() {
            return Ok(());
        }
        let prepared = self.prepare(category, &points);
        // Writes waiting in the WAL go first: this one waits behind them.
        if let Some(w) = &self.wal
            && w.spilling()
        {
            return spill(w, prepared);
        }
        let set = self.sinkers.snapshot();
        let (parts, counts) = self.parts(&set, category, points);
        let total = self.total_charge(&parts);
        let Some((permit, slots)) = self.try_room(&parts, total, held) else {
            // No room in memory or a queue: with the WAL on, the disk holds it meanwhile.
            return match &self.wal {
                Some(w) if w.can_spill() => spill(w, prepared),
                _ => Err(WriteError::Full),
            };
        };
        let ticket = self.log(prepared)?;
        enqueue(category, parts, slots, permit, ticket);
        counts.record(&self.metrics);
        Ok(())
    }

    /// The budget and a queue slot on every endpoint for `parts`, if all are free now.
    /// With the WAL as the buffer, queued writes keep to half the budget: the other half
    /// reads and parses what comes in (and spills it to the WAL).
    fn try_room<'a>(
        &'a self,
        parts: &[Part<'a>],
        total: usize,
        held: Option<OwnedSemaphorePermit>,
    ) -> Option<(OwnedSemaphorePermit, Vec<Vec<crate::endpoint::Slot<'a>>>)> {
        let permit = match held {
            Some(h) => self.budget.resize(h, total).ok()?,
            None => self.budget.try_points(total)?,
        };
        if self.wal.as_ref().is_some_and(|w| w.can_spill())
            && self.budget.used().0 > self.budget.total() / 2
        {
            return None;
        }
        let slots = parts
            .iter()
            .map(|p| p.endpoints.iter().map(Endpoint::try_reserve).collect())
            .collect::<Option<Vec<Vec<_>>>>()?;
        Some((permit, slots))
    }

    /// Queues a write spilled to the WAL and read back from it ([`Wal::next_spilled`];
    /// its entry is `ticket`), waiting for room: for budget up to half of it (ingest keeps
    /// the other half to take and spill what comes in meanwhile), and for queue slots.
    /// `Err` once the daemon is closing: the entry then stays for the next start.
    pub async fn write_spilled(
        &self,
        category: Category,
        text: Text,
        ticket: Ticket,
    ) -> Result<(), WriteError> {
        // Kept until queued: if this is given up on (a stop, or the task dropped at the
        // end of one), the entry stays for the next start.
        ticket.keep();
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        let set = self.sinkers.snapshot();
        let (parts, counts) = self.parts(&set, category, Content::Text(text));
        let total = self.total_charge(&parts);
        // Budget is returned by endpoints as they deliver; a short poll is enough here
        // (this runs only while a backlog drains).
        while self.budget.used().0 > 0 && self.budget.used().0 + total > self.budget.total() / 2 {
            if self.closed.load(Ordering::Acquire) {
                return Err(WriteError::Closed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let permit = self.budget.points(total).await;
        let mut slots = Vec::with_capacity(parts.len());
        for p in &parts {
            let mut these = Vec::with_capacity(p.endpoints.len());
            for ep in p.endpoints {
                match ep.reserve().await {
                    Some(slot) => these.push(slot),
                    None => return Err(WriteError::Closed),
                }
            }
            slots.push(these);
        }
        ticket.unkeep();
        enqueue(category, parts, slots, permit, Some(Arc::new(ticket)));
        counts.record(&self.metrics);
        Ok(())
    }

    /// Whether a write of `category` can be kept as the line protocol it came in as and
    /// sent without being encoded again ([`crate::point::Text`]): no `X-Global-Tags`
    /// grouping, and every endpoint it can go to (the main ones, and those of each sinker
    /// that looks at it) sends line protocol. Sinker conditions then read the columns they
    /// ask for from the text, and each sinker's share is its lines, as they came.
    pub fn forwards(&self, category: Category) -> bool {
        self.forwards_with(&self.sinkers.snapshot(), category)
    }

    fn forwards_with(&self, set: &[Arc<Sinker>], category: Category) -> bool {
        self.grouper.is_none()
            && self.endpoints.iter().all(Endpoint::sends_line_protocol)
            && set
                .iter()
                .filter(|s| s.takes(category))
                .all(|s| s.endpoints().iter().all(Endpoint::sends_line_protocol))
    }

    /// What the parser is to note in a write of `category` kept as text: what the
    /// sinkers asked of the category's last write ([`sinker::Sinkers::note`]).
    pub fn noting(&self, category: Category) -> Option<Noting> {
        self.sinkers.noted(category)
    }

    /// Accepts points, waiting for room (backpressure for embedding programs).
    ///
    /// Sinker conditions run inline (a WASM call of at most `sinker_limits.timeout`): an
    /// embedding program with sinkers calls this from a blocking-capable context, as the
    /// ingest server does with `spawn_blocking`.
    pub async fn write(&self, category: Category, points: Vec<Point>) -> Result<(), WriteError> {
        self.write_held(category, points, None).await
    }

    /// As [`Dataway::write`], with `held` already charged for these points (see
    /// [`Dataway::try_write_held`]).
    pub async fn write_held(
        &self,
        category: Category,
        points: impl Into<Content>,
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<(), WriteError> {
        let points = points.into();
        if self.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        if points.is_empty() {
            return Ok(());
        }
        let prepared = self.prepare(category, &points);
        let set = self.sinkers.snapshot();
        let (parts, counts) = self.parts(&set, category, points);
        let total = self.total_charge(&parts);
        let permit = match held {
            Some(h) => self.budget.resize_wait(h, total).await,
            None => self.budget.points(total).await,
        };
        let mut slots = Vec::with_capacity(parts.len());
        for p in &parts {
            let mut these = Vec::with_capacity(p.endpoints.len());
            for ep in p.endpoints {
                these.push(ep.reserve().await.ok_or(WriteError::Closed)?);
            }
            slots.push(these);
        }
        // The fsync waits on the blocking pool, not on this async worker.
        let ticket = match (&self.wal, prepared) {
            (Some(w), Some(p)) => {
                let w = w.clone();
                match tokio::task::spawn_blocking(move || w.commit(p)).await {
                    Ok(Ok(t)) => Some(Arc::new(t)),
                    Ok(Err(e)) => return Err(wal_failed(e)),
                    Err(e) => return Err(wal_failed(e.to_string())),
                }
            }
            _ => None,
        };
        enqueue(category, parts, slots, permit, ticket);
        counts.record(&self.metrics);
        Ok(())
    }

    /// Routes points through the sinkers: one part per sinker that takes some, plus the
    /// main endpoints' part when points are left; and the counts to record if accepted.
    /// Text stays text where [`Dataway::forwards`] allows, else it is parsed again.
    fn parts<'a>(
        &'a self,
        set: &'a [Arc<Sinker>],
        category: Category,
        content: Content,
    ) -> (Vec<Part<'a>>, sinker::Counts) {
        let content = match content {
            Content::Text(text) if !self.forwards_with(set, category) => {
                Content::Points(text.to_points())
            }
            c => c,
        };
        let split = sinker::split(set, category, content, &self.metrics);
        if let Some(asked) = split.asked {
            self.sinkers.note(category, asked, &split.given_up);
        }
        let mut parts: Vec<Part<'a>> = Vec::with_capacity(split.sunk.len() + 1);
        for (i, content) in split.sunk {
            parts.extend(self.part(category, set[i].endpoints(), content));
        }
        if !split.rest.is_empty() {
            parts.extend(self.part(category, &self.endpoints, split.rest));
        }
        (parts, split.counts)
    }

    /// The part of `content` for `endpoints`, its points grouped if `enable_sinker` is on
    /// (text never is: see [`Dataway::forwards`]); `None` when grouping left no point to
    /// send.
    fn part<'a>(
        &self,
        category: Category,
        endpoints: &'a [Endpoint],
        content: Content,
    ) -> Option<Part<'a>> {
        let points = match content {
            Content::Text(text) => {
                return Some(Part {
                    endpoints,
                    charge: text.memory_size().clamp(1, u32::MAX as usize) as u32,
                    content: Content::Text(text),
                    groups: Vec::new(),
                });
            }
            Content::Points(points) => points,
        };
        let (points, groups) = match &self.grouper {
            None => (points, Vec::new()),
            Some(g) => {
                let grouped = g.group(category, points);
                if let Some((n, value)) = &grouped.invalid {
                    tracing::warn!(%category, points = n, header = %g.header_name(), value = %value.escape_debug(), "points dropped: their routing keys' values hold a character an HTTP header cannot carry; set dataway.sinker_header_version = \"v2\" to send them URL-encoded");
                    self.metrics
                        .dropped_points_total
                        .with_label_values(&[category.name(), "invalid_global_tags"])
                        .inc_by(*n as u64);
                }
                self.metrics
                    .grouped_request
                    .observe(&[category.name()], grouped.groups.len() as f64);
                (grouped.points, grouped.groups)
            }
        };
        if points.is_empty() {
            return None;
        }
        let bytes: usize = points.iter().map(Point::memory_size).sum();
        Some(Part {
            endpoints,
            charge: bytes.clamp(1, u32::MAX as usize) as u32,
            content: Content::Points(points),
            groups,
        })
    }

    /// The budget a write takes: the size of every part, clamped so that even a write
    /// larger than the whole budget can go (alone) rather than never.
    fn total_charge(&self, parts: &[Part<'_>]) -> usize {
        let sum: u64 = parts.iter().map(|p| u64::from(p.charge)).sum();
        sum.clamp(1, self.budget.total() as u64) as usize
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
        let sinkers = self.sinkers.snapshot();
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        let all: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .chain(sinkers.iter().chain(&retired).flat_map(|s| s.endpoints()))
            .collect();
        for ep in &all {
            ep.close();
        }
        // Every endpoint drains in its own task already; joining them one after another
        // under one shared deadline takes no longer than the slowest. At the deadline all
        // are told at once, so they keep what is left in their fail-caches in parallel.
        let deadline = Instant::now() + grace;
        let tokens: Vec<_> = all.iter().map(|e| e.deadline_token()).collect();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            for t in tokens {
                t.cancel();
            }
        });
        let mut report = DrainReport::default();
        for ep in all {
            let r = ep.join(deadline).await;
            report.abandoned_points += r.abandoned_points;
            report.persisted_points += r.persisted_points;
        }
        timer.abort();
        report
    }
}

/// Sends each part to the slots reserved for it; each part's batch holds its share of the
/// budget permit and returns it when its last endpoint is done.
fn enqueue(
    category: Category,
    parts: Vec<Part<'_>>,
    slots: Vec<Vec<crate::endpoint::Slot<'_>>>,
    permit: OwnedSemaphorePermit,
    ticket: Option<Arc<Ticket>>,
) {
    let n = parts.len();
    let mut permit = Some(permit);
    for (i, (part, slots)) in parts.into_iter().zip(slots).enumerate() {
        let share = if i + 1 == n {
            permit.take().expect("the last part takes the rest")
        } else {
            let p = permit.as_mut().expect("taken only by the last part");
            let c = (part.charge as usize).min(p.num_permits());
            p.split(c).expect("no more than held")
        };
        let batch = Arc::new(
            Batch::with_budget(category, part.content, share)
                .with_groups(part.groups)
                .with_wal(ticket.clone()),
        );
        for slot in slots {
            slot.send(batch.clone());
        }
    }
}
