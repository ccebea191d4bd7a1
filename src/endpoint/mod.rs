//! An endpoint: one remote Dataway server (or a local directory), with its own bounded queue
//! and its own send workers, so a slow or dead endpoint never delays another.
//!
//! In: [`Batch`]es of points of one category, through [`Endpoint::try_reserve`] /
//! [`Endpoint::reserve`] (backpressure is explicit: a full queue refuses, it never grows).
//! Out: HTTP requests (via `httpcli`, with retry) or appends to `DIR/<category>.lp`, and the
//! seed's metrics for each body sent.
//!
//! Shutdown is two-step: [`Endpoint::close`] stops new batches while the queue drains;
//! [`Endpoint::join`] waits for the drain up to a deadline and then abandons what is left,
//! counting it (`dataway_dropped_points_total{reason="shutdown"}`).

pub mod grouping;
pub mod other_api;
mod request_builder;
mod resend;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::category::Category;
use crate::config::ContentEncoding;
use crate::failcache;
use crate::httpcli::{self, HttpCli, HttpOptions, Outcome, Request, Response};
use crate::metrics::{Metrics, status_label};
use crate::point::Content;

pub use crate::endpoint_url::{BadUrl, EndpointUrl, redact};
pub use request_builder::{Body, build_bodies, build_text_bodies, content_type, gzip};
pub use resend::OpenCaches;

/// The `User-Agent` every request carries: `dataway/<version> (<os>; <arch>)`.
pub fn user_agent() -> String {
    format!(
        "dataway/{} ({}; {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Points of one category, shared by every endpoint that sends them. Holding the memory
/// budget permit here means the budget is returned exactly when the last endpoint is done
/// with the batch.
#[derive(Debug)]
pub struct Batch {
    pub category: Category,
    pub content: Content,
    /// With `enable_sinker`: the runs of `points` sent in bodies of their own, each with
    /// its `X-Global-Tags` ([`grouping`]); empty otherwise (always, for text).
    pub groups: Vec<grouping::Group>,
    _budget: Option<OwnedSemaphorePermit>,
    /// The write's WAL entry, removed when every batch of the write is done with.
    _wal: Option<Arc<crate::wal::Ticket>>,
}

impl Batch {
    /// A batch outside any memory budget.
    pub fn new(category: Category, content: impl Into<Content>) -> Batch {
        Batch {
            category,
            content: content.into(),
            groups: Vec::new(),
            _budget: None,
            _wal: None,
        }
    }

    /// A batch that returns `permit` to its budget when dropped.
    pub fn with_budget(
        category: Category,
        content: impl Into<Content>,
        permit: OwnedSemaphorePermit,
    ) -> Batch {
        Batch {
            _budget: Some(permit),
            ..Batch::new(category, content)
        }
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.content.len()
    }

    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The request bodies of the batch for an endpoint (see [`request_builder`]).
    pub fn bodies(&self, max_raw: usize, gzip: bool, encoding: ContentEncoding) -> Vec<Body> {
        match &self.content {
            Content::Points(points) => grouping::bodies(points, &self.groups, |p| {
                build_bodies(p, max_raw, gzip, encoding)
            }),
            Content::Text(text) => match encoding {
                ContentEncoding::V1 => build_text_bodies(text, max_raw, gzip),
                // Not routed so (text goes only where line protocol is sent), but correct.
                ContentEncoding::V2 => build_bodies(&text.to_points(), max_raw, gzip, encoding),
            },
        }
    }

    /// The write's WAL ticket: whoever still needs the write on disk holds a clone.
    pub fn wal(&self) -> Option<Arc<crate::wal::Ticket>> {
        self._wal.clone()
    }

    /// Sends `points` in these runs (from [`grouping::Grouper::group`]).
    pub fn with_groups(mut self, groups: Vec<grouping::Group>) -> Batch {
        debug_assert!(groups.is_empty() || matches!(self.content, Content::Points(_)));
        self.groups = groups;
        self
    }

    /// Holds `ticket` until the batch is dropped (its WAL entry outlives the batch).
    pub fn with_wal(mut self, ticket: Option<Arc<crate::wal::Ticket>>) -> Batch {
        self._wal = ticket;
        self
    }
}

/// How one endpoint sends. Built from `[dataway]`.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    pub http: HttpOptions,
    pub gzip: bool,
    pub max_raw_body_size: usize,
    /// Wire format of the bodies: line protocol (v1) or DataKit's protobuf (v2).
    /// `file://` endpoints always write line protocol.
    pub content_encoding: crate::config::ContentEncoding,
    pub workers: usize,
    pub queue_size: usize,
    /// The sinker this endpoint belongs to (`None`: a main endpoint). A sinker's
    /// endpoint also counts `datakit_io_dataway_sink_point_total`.
    pub sinker: Option<String>,
    /// Where bodies that fail after retries are kept for resending (`None`: dropped).
    pub fail_cache: Option<FailCacheOptions>,
}

/// The fail-cache of an endpoint: `[dataway.fail_cache]`.
#[derive(Debug, Clone)]
pub struct FailCacheOptions {
    /// Directory of the per-endpoint cache files.
    pub dir: PathBuf,
    pub limits: failcache::Limits,
    /// Pause before resending again after a resend failed.
    pub clean_interval: std::time::Duration,
}

impl EndpointOptions {
    /// The options `[dataway]` describes.
    pub fn from_config(d: &crate::config::DatawayConfig) -> EndpointOptions {
        EndpointOptions {
            http: HttpOptions {
                timeout: d.timeout,
                proxy: d.http_proxy.clone(),
                tls_ca_file: d.tls_ca_file.clone(),
                accept_invalid_certs: d.tls_insecure,
                max_idle_conns_per_host: d.max_idle_conns_per_host,
                idle_timeout: d.idle_timeout,
                max_retry_count: d.max_retry_count,
                retry_delay: d.retry_delay,
                max_retry_delay: d.max_retry_delay,
            },
            gzip: d.gzip,
            max_raw_body_size: d.max_raw_body_size,
            content_encoding: d.content_encoding,
            workers: d.workers,
            queue_size: d.queue_size,
            sinker: None,
            fail_cache: d.fail_cache.enabled.then(|| FailCacheOptions {
                dir: d.fail_cache.path.clone(),
                limits: failcache::Limits {
                    max_capacity: d.fail_cache.max_capacity,
                    drop_expired_after: d.fail_cache.drop_expired_after,
                    shed_on_full_disk: !d.wal.enabled,
                },
                clean_interval: d.fail_cache.clean_interval,
            }),
        }
    }

    /// A sinker's endpoint options: the main ones with the sinker's overrides.
    pub fn for_sinker(
        s: &crate::config::SinkerConfig,
        main: &crate::config::DatawayConfig,
    ) -> EndpointOptions {
        let mut opts = EndpointOptions::from_config(main);
        if let Some(t) = s.timeout {
            opts.http.timeout = t;
        }
        if let Some(p) = &s.http_proxy {
            opts.http.proxy = Some(p.clone());
        }
        if let Some(n) = s.max_retry_count {
            opts.http.max_retry_count = n;
        }
        if let Some(g) = s.gzip {
            opts.gzip = g;
        }
        if let Some(w) = s.workers {
            opts.workers = w;
        }
        if let Some(q) = s.queue_size {
            opts.queue_size = q;
        }
        opts.sinker = Some(s.name.clone());
        opts
    }
}

/// Why an endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Client(#[from] httpcli::BuildError),
}

/// Why an "other API" request got no answer from the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "other APIs go to the first endpoint of dataway.urls, and {0} is a file:// directory: \
         list the Dataway server's URL first to forward them"
    )]
    NotHttp(EndpointUrl),
    #[error("endpoint {endpoint}: {message}")]
    Transport {
        endpoint: EndpointUrl,
        message: String,
    },
}

/// What a drain left behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Points abandoned because the deadline came first.
    pub abandoned_points: usize,
    /// Points not delivered during the drain but kept (fail-cache, or the WAL without
    /// one) for the next start: those the deadline interrupted or found queued, and those
    /// whose retries ended during the drain.
    pub persisted_points: usize,
}

enum Sender {
    Http(HttpCli),
    File(FileSink),
}

/// State the dispatcher and its send tasks share.
struct Shared {
    url: EndpointUrl,
    label: String,
    sender: Sender,
    opts: EndpointOptions,
    metrics: Arc<Metrics>,
    /// Bodies that failed after retries, for this endpoint only (HTTP endpoints).
    /// Shared with the other endpoints of the same URL and token, if any.
    cache: std::sync::OnceLock<Arc<resend::SharedCache>>,
    /// Points kept for the next start (fail-cache or WAL) since the endpoint was closed:
    /// at the shutdown deadline, or because their retries ended during the drain (for
    /// the drain report).
    persisted: AtomicUsize,
}

/// A running endpoint. Dropping it without [`Endpoint::close`] + [`Endpoint::join`] leaves
/// its tasks to finish on their own.
pub struct Endpoint {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Arc<Batch>>,
    closing: CancellationToken,
    abort: CancellationToken,
    task: Mutex<Option<JoinHandle<DrainReport>>>,
    /// The fail-cache resend task: joined too, so that a body it has just resent is
    /// removed from the cache before the process exits (else it is sent again at restart).
    resend_task: Mutex<Option<JoinHandle<()>>>,
}

impl Endpoint {
    /// Starts the endpoint's dispatcher on the current tokio runtime. `caches` is the
    /// process's registry of open fail-cache files (one per daemon).
    pub fn start(
        url: EndpointUrl,
        opts: EndpointOptions,
        metrics: Arc<Metrics>,
        caches: &Arc<OpenCaches>,
    ) -> Result<Endpoint, StartError> {
        let sender = match &url {
            EndpointUrl::Http { .. } => {
                Sender::Http(HttpCli::new(opts.http.clone(), &user_agent())?)
            }
            EndpointUrl::File { dir } => Sender::File(FileSink::new(dir.clone())),
        };
        let (tx, rx) = mpsc::channel(opts.queue_size);
        let opened = resend::open_cache(&url, &opts, &metrics, caches);
        let cache = std::sync::OnceLock::new();
        let resend = match opened {
            resend::Opened::Ready(c) => {
                let _ = cache.set(c);
                true
            }
            resend::Opened::Busy => true,
            resend::Opened::None => false,
        };
        let shared = Arc::new(Shared {
            label: url.to_string(),
            url,
            sender,
            opts,
            metrics,
            cache,
            persisted: AtomicUsize::new(0),
        });
        if let Sender::Http(_) = shared.sender {
            // At zero from the start, so a dashboard's rate has a series before any retry.
            shared
                .metrics
                .retries_total
                .with_label_values(&[&shared.label]);
        }
        let closing = CancellationToken::new();
        let abort = CancellationToken::new();
        let resend_task = resend.then(|| {
            tokio::spawn(resend::run(
                shared.clone(),
                caches.clone(),
                closing.clone(),
                abort.clone(),
            ))
        });
        let task = tokio::spawn(dispatch(shared.clone(), rx, closing.clone(), abort.clone()));
        Ok(Endpoint {
            shared,
            tx,
            closing,
            abort,
            task: Mutex::new(Some(task)),
            resend_task: Mutex::new(resend_task),
        })
    }

    /// The endpoint's URL (its `Display` is redacted).
    pub fn url(&self) -> &EndpointUrl {
        &self.shared.url
    }

    /// Reserves a queue slot without waiting; `None` when the queue is full or closed.
    /// Reserving first lets the router enqueue a batch on every endpoint or on none.
    pub fn try_reserve(&self) -> Option<Slot<'_>> {
        self.tx
            .try_reserve()
            .ok()
            .map(|permit| Slot { permit, ep: self })
    }

    /// Whether its bodies are line protocol (points kept as text go out as they are).
    pub fn sends_line_protocol(&self) -> bool {
        self.shared.encoding() == ContentEncoding::V1
    }

    /// Whether the queue has a free slot now (a hint: [`Endpoint::try_reserve`] decides).
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Reserves a queue slot, waiting for room; `None` once the endpoint is closed.
    pub async fn reserve(&self) -> Option<Slot<'_>> {
        tokio::select! {
            p = self.tx.reserve() => p.ok().map(|permit| Slot { permit, ep: self }),
            _ = self.closing.cancelled() => None,
        }
    }

    /// Sends one "other API" request (`/v1/query/raw`, `/v1/election`, …) with this
    /// endpoint's token query, through the same client and retry policy, and counts it.
    /// The caller's `token` parameters and the headers the Dataway APIs do not use are
    /// dropped ([`other_api`]): the configured token is the only one Dataway sees.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let s = &self.shared;
        let query = other_api::query_without_token(query);
        let (Sender::Http(cli), Some(url)) = (&s.sender, s.url.api_url(path, query.as_deref()))
        else {
            return Err(ApiError::NotHttp(s.url.clone()));
        };
        let outcome = cli
            .send(&Request {
                method,
                url,
                headers: other_api::forwarded_headers(&headers),
                body,
            })
            .await;
        s.record_api(path, &outcome);
        outcome.result.map_err(|e| ApiError::Transport {
            endpoint: s.url.clone(),
            message: httpcli::without_url(&e),
        })
    }

    /// Stops accepting batches; those already queued are still delivered.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Whether [`Endpoint::close`] was called (the drain has begun).
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// The token that, once cancelled, stops delivering and keeps what is left (the
    /// shutdown deadline). Cancel it for every endpoint at once so they persist in parallel.
    pub fn deadline_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Waits until the queue is drained or `deadline` passes; then abandons the rest.
    pub async fn join(&self, deadline: Instant) -> DrainReport {
        self.close();
        let Some(mut task) = self.task.lock().expect("not poisoned").take() else {
            return DrainReport::default();
        };
        let until = tokio::time::Instant::from_std(deadline);
        let report = match tokio::time::timeout_at(until, &mut task).await {
            Ok(r) => r.unwrap_or_default(),
            Err(_) => {
                self.abort.cancel();
                task.await.unwrap_or_default()
            }
        };
        let resend = self.resend_task.lock().expect("not poisoned").take();
        if let Some(mut resend) = resend {
            // It stops at `close` unless a resend is in flight; that one finishes (and its
            // record is removed) unless the deadline comes first.
            if tokio::time::timeout_at(until, &mut resend).await.is_err() {
                self.abort.cancel();
                let _ = resend.await;
            }
        }
        report
    }
}

/// A reserved place in an endpoint's queue.
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Arc<Batch>>,
    ep: &'a Endpoint,
}

impl Slot<'_> {
    /// Puts the batch in the reserved place (cannot fail).
    pub fn send(self, batch: Arc<Batch>) {
        self.ep
            .shared
            .metrics
            .queue_batches
            .with_label_values(&[&self.ep.shared.label])
            .inc();
        self.permit.send(batch);
    }
}

/// Takes batches off the queue and runs up to `workers` deliveries at once.
async fn dispatch(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    closing: CancellationToken,
    abort: CancellationToken,
) -> DrainReport {
    let workers = Arc::new(Semaphore::new(shared.opts.workers));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let queued = shared
        .metrics
        .queue_batches
        .with_label_values(&[&shared.label]);
    let mut closed = false;
    loop {
        while tasks.try_join_next().is_some() {}
        let worker = tokio::select! {
            w = workers.clone().acquire_owned() => w.expect("never closed"),
            _ = abort.cancelled() => break,
        };
        let next = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            _ = closing.cancelled(), if !closed => {
                // Refuse new batches but keep draining the ones already queued.
                rx.close();
                closed = true;
                continue;
            }
            b = rx.recv() => b,
        };
        let Some(batch) = next else { break };
        queued.dec();
        let shared = shared.clone();
        let guard = InFlight::new(&shared, batch.category, batch.len(), in_flight.clone());
        let (closing, abort) = (closing.clone(), abort.clone());
        tasks.spawn(async move {
            deliver(&shared, batch, guard, &closing, &abort).await;
            drop(worker);
        });
    }
    if !abort.is_cancelled() {
        tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => {}
            _ = abort.cancelled() => {}
        }
    }
    // Past the deadline: deliveries in progress put what they have not sent into the
    // fail-cache (they were told by `abort`); give them a moment, then stop them.
    let persisting = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(PERSIST_GRACE, persisting)
        .await
        .is_err()
    {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    rx.close();
    let mut abandoned = in_flight.load(Ordering::Relaxed);
    let mut persisted = shared.persisted.swap(0, Ordering::Relaxed);
    while let Ok(b) = rx.try_recv() {
        queued.dec();
        let n = b.len();
        let left = persist_batch(&shared, &b).await;
        if left == 0 {
            persisted += n;
        } else if let Some(t) = b.wal() {
            t.keep(); // replayed from the WAL at the next start
            persisted += n;
        } else {
            persisted += n - left;
            abandoned += left;
            shared
                .metrics
                .dropped_points_total
                .with_label_values(&[b.category.name(), "shutdown"])
                .inc_by(left as u64);
        }
    }
    if persisted > 0 {
        tracing::info!(endpoint = %shared.label, points = persisted, "shutdown deadline passed: undelivered points kept (fail-cache or WAL) for the next start");
    }
    if abandoned > 0 {
        tracing::error!(endpoint = %shared.label, points = abandoned, "shutdown deadline passed: points not delivered");
    }
    DrainReport {
        abandoned_points: abandoned,
        persisted_points: persisted,
    }
}

/// How long deliveries in progress get to write their bodies to the fail-cache at the
/// shutdown deadline.
const PERSIST_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Encodes a queued batch and keeps its bodies in the fail-cache; the points it could not
/// store (all of them without a cache).
async fn persist_batch(shared: &Arc<Shared>, batch: &Arc<Batch>) -> usize {
    let all = batch.len();
    if shared.cache.get().is_none() {
        return all;
    }
    let (max_raw, gzip) = (shared.opts.max_raw_body_size, shared.opts.gzip);
    let encoding = shared.encoding();
    let b = batch.clone();
    let Ok(bodies) = tokio::task::spawn_blocking(move || b.bodies(max_raw, gzip, encoding)).await
    else {
        return all;
    };
    let mut left = 0;
    for body in &bodies {
        if let Err(e) = resend::keep(shared, batch.category, body).await {
            tracing::error!(endpoint = %shared.label, category = %batch.category, points = body.points, "at the shutdown deadline, could not keep the body in the fail-cache: {e}");
            left += body.points;
        }
    }
    left
}

/// Counts the points of a delivery that has not finished: if the task is aborted at the
/// shutdown deadline, dropping the guard counts what was left as abandoned.
struct InFlight {
    metrics: Arc<Metrics>,
    category: Category,
    remaining: usize,
    total: Arc<AtomicUsize>,
}

impl InFlight {
    fn new(
        shared: &Shared,
        category: Category,
        points: usize,
        total: Arc<AtomicUsize>,
    ) -> InFlight {
        total.fetch_add(points, Ordering::Relaxed);
        InFlight {
            metrics: shared.metrics.clone(),
            category,
            remaining: points,
            total,
        }
    }

    fn done(&mut self, points: usize) {
        let n = points.min(self.remaining);
        self.remaining -= n;
        self.total.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.remaining > 0 {
            self.metrics
                .dropped_points_total
                .with_label_values(&[self.category.name(), "shutdown"])
                .inc_by(self.remaining as u64);
        }
    }
}

/// Encodes one batch into bodies and sends them one after another. At the shutdown
/// deadline (`abort`) the bodies not yet delivered go to the fail-cache, if there is one.
/// Once the endpoint is `closing`, a body whose retries end is also kept for the next
/// start, and counted so in the drain report.
async fn deliver(
    shared: &Arc<Shared>,
    batch: Arc<Batch>,
    mut guard: InFlight,
    closing: &CancellationToken,
    abort: &CancellationToken,
) {
    let gzip = shared.opts.gzip && matches!(shared.sender, Sender::Http(_));
    let max_raw = shared.opts.max_raw_body_size;
    let encoding = shared.encoding();
    // Encoding and gzip are CPU work: keep them off the async workers.
    let b = batch.clone();
    let encode = move || b.bodies(max_raw, gzip, encoding);
    let bodies = match tokio::task::spawn_blocking(encode).await {
        Ok(bodies) => bodies,
        Err(e) => {
            tracing::error!(endpoint = %shared.label, error = %e, "encoding a batch failed");
            return;
        }
    };
    // The points can go (their memory budget returns now); the WAL entry must stay until
    // the bodies are delivered or in the fail-cache.
    let _wal = batch.wal();
    drop(batch);
    let category = guard.category;
    let mut bodies = bodies.into_iter();
    while let Some(body) = bodies.next() {
        match &shared.sender {
            Sender::Http(cli) => {
                if !deliver_body(
                    shared,
                    cli,
                    category,
                    &body,
                    _wal.as_deref(),
                    closing,
                    abort,
                )
                .await
                {
                    // The deadline cut a send: the server may have got that body
                    // (at-least-once); it and the rest are kept for the next start.
                    for b in std::iter::once(body).chain(bodies) {
                        let kept = match resend::keep(shared, category, &b).await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::error!(endpoint = %shared.label, %category, points = b.points, "at the shutdown deadline, could not keep the body in the fail-cache: {e}");
                                // Not delivered, not cached: replayed from the WAL, if on.
                                _wal.as_ref().is_some_and(|t| {
                                    t.keep();
                                    true
                                })
                            }
                        };
                        if kept {
                            guard.done(b.points);
                            shared.persisted.fetch_add(b.points, Ordering::Relaxed);
                        }
                    }
                    return;
                }
            }
            Sender::File(f) => f.append(shared, category, &body).await,
        }
        guard.done(body.points);
    }
}

/// The write request for `body`; `from_cache` adds DataKit's `X-Fail-Cache-Retry: 1`.
fn write_request(shared: &Shared, category: Category, body: &Body, from_cache: bool) -> Request {
    let path = category.write_path();
    let url = shared.url.api_url(path, None).expect("http endpoint");
    let mut headers = HeaderMap::new();
    if from_cache {
        headers.insert(
            HeaderName::from_static("x-fail-cache-retry"),
            HeaderValue::from_static("1"),
        );
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(body.content_type()));
    if body.gzipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(
        HeaderName::from_static("x-points"),
        HeaderValue::from(body.points),
    );
    for (name, value) in &body.headers {
        headers.insert(name.clone(), value.clone());
    }
    Request {
        method: Method::POST,
        url,
        headers,
        body: body.payload.clone(),
    }
}

/// Delivers one body: sends it with retries; if it still fails (a retryable error), keeps
/// it in the fail-cache. If the fail-cache cannot take it either (a full disk, a file it
/// could not open) and the WAL holds the write, the body is not given up: it waits
/// `clean_interval` and goes round again, holding its WAL entry (and its delivery slot, so
/// a long fault backs up into the queue and ingest refuses, never loses). Once the
/// endpoint is closing, such a body is left in the WAL for the next start instead.
/// Without a WAL it is dropped and counted.
///
/// `false` when the shutdown deadline (`abort`) cut a send; the body is then not settled.
async fn deliver_body(
    shared: &Arc<Shared>,
    cli: &HttpCli,
    category: Category,
    body: &Body,
    wal: Option<&crate::wal::Ticket>,
    closing: &CancellationToken,
    abort: &CancellationToken,
) -> bool {
    let interval = shared
        .opts
        .fail_cache
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |f| f.clean_interval);
    let mut held: Option<Held> = None;
    loop {
        // Only the send races the deadline; storing a body in the cache does not
        // (cancelling it half-way could store it and then store it again).
        let (error, attempts) = tokio::select! {
            biased;
            // Points are counted by their first send only, as fail-cache resends are.
            failed = send_http(shared, cli, category, body, held.is_none()) => match failed {
                None => return true,
                Some(failed) => failed,
            },
            _ = abort.cancelled() => return false,
        };
        if shared.opts.fail_cache.is_none() {
            // No fail-cache is the user's choice to drop what fails after retries (the WAL,
            // if on, guards what is in flight against a crash, not against an outage).
            tracing::error!(endpoint = %shared.label, %category, attempts, points = body.points, %error, "delivery failed after retries; dropped (no fail-cache)");
            shared.drop_points(category, body.points, "retries_exhausted");
            return true;
        }
        if held.is_none() {
            tracing::warn!(endpoint = %shared.label, %category, attempts, points = body.points, %error, "delivery failed after retries; keeping it in the fail-cache");
        }
        let error = match resend::keep(shared, category, body).await {
            Ok(()) => {
                if closing.is_cancelled() {
                    // During the drain, the body is one the next start sends.
                    shared.persisted.fetch_add(body.points, Ordering::Relaxed);
                }
                return true;
            }
            Err(e) => e,
        };
        let Some(ticket) = wal else {
            tracing::error!(endpoint = %shared.label, %category, points = body.points, "could not keep the body in the fail-cache, and the WAL is off; dropped: {error}");
            shared.drop_points(category, body.points, "failcache_write_error");
            return true;
        };
        if closing.is_cancelled() {
            ticket.keep(); // replayed from the WAL at the next start
            shared.persisted.fetch_add(body.points, Ordering::Relaxed);
            return true;
        }
        if held.is_none() {
            tracing::warn!(endpoint = %shared.label, %category, points = body.points, retry_in = ?interval, "could not keep the body in the fail-cache; the WAL holds it, so it is sent again after the interval, and again until it is delivered or kept: {error}");
            held = Some(Held::new(shared, category, body.points));
        }
        let woke = tokio::select! {
            _ = tokio::time::sleep(interval) => None,
            _ = closing.cancelled() => Some(true),
            _ = abort.cancelled() => Some(false),
        };
        match woke {
            None => {}
            Some(true) => {
                ticket.keep();
                shared.persisted.fetch_add(body.points, Ordering::Relaxed);
                return true;
            }
            Some(false) => return false,
        }
    }
}

/// Points held by [`deliver_body`] (`dataway_wal_held_points`), from the first time the
/// fail-cache could not take their body until the body is settled or its task ends.
struct Held(prometheus::IntGauge, i64);

impl Held {
    fn new(shared: &Shared, category: Category, points: usize) -> Held {
        let g = shared
            .metrics
            .held_points
            .with_label_values(&[&shared.label, category.name()]);
        g.add(points as i64);
        Held(g, points as i64)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

/// Sends one body with retries (counting its points by status if `count_points`). `None`
/// when it is settled (delivered, or refused for good: dropped and counted); the error and
/// the attempts made when it still failed with a retryable one.
async fn send_http(
    shared: &Shared,
    cli: &HttpCli,
    category: Category,
    body: &Body,
    count_points: bool,
) -> Option<(String, u32)> {
    let path = category.write_path();
    let req = write_request(shared, category, body, false);
    let outcome = cli.send(&req).await;
    shared.record_api(path, &outcome);
    if count_points {
        shared.record_points(
            category,
            outcome.status(),
            body,
            shared.opts.sinker.is_some(),
        );
    }
    match &outcome.result {
        Ok(r) if r.status.is_success() => None,
        Ok(r) if !outcome.is_retryable_failure() => {
            let msg = String::from_utf8_lossy(&r.body[..r.body.len().min(512)]).into_owned();
            tracing::warn!(endpoint = %shared.label, %category, status = %r.status, points = body.points, server_message = %msg, "Dataway refused the data; dropped");
            shared.drop_points(category, body.points, "rejected");
            None
        }
        Err(e) => Some((httpcli::without_url(e), outcome.attempts)),
        Ok(r) => Some((r.status.to_string(), outcome.attempts)),
    }
}

impl Shared {
    /// The wire format of this endpoint's bodies: a `file://` endpoint appends line
    /// protocol to `.lp` files whatever `content_encoding` says.
    fn encoding(&self) -> crate::config::ContentEncoding {
        match self.sender {
            Sender::Http(_) => self.opts.content_encoding,
            Sender::File(_) => crate::config::ContentEncoding::V1,
        }
    }

    fn record_api(&self, path: &str, o: &Outcome) {
        let status = status_label(o.status());
        let m = &self.metrics;
        m.api_request_total
            .with_label_values(&[path, &status])
            .inc();
        m.api_latency
            .observe(&[path, &status], o.elapsed.as_secs_f64() * 1000.0);
        if o.attempts > 1 {
            m.retries_total
                .with_label_values(&[&self.label])
                .inc_by(u64::from(o.attempts - 1));
        }
    }

    /// Counts a body sent; `sunk` bodies (a sinker's) also count as sunk points.
    fn record_points(
        &self,
        category: Category,
        status: Option<StatusCode>,
        body: &Body,
        sunk: bool,
    ) {
        let status = status_label(status);
        let (points, bytes) = (body.points as u64, body.payload.len() as u64);
        let dk = [category.name(), status.as_str()];
        let m = &self.metrics;
        m.point_total.with_label_values(&dk).inc_by(points);
        m.point_bytes_total.with_label_values(&dk).inc_by(bytes);
        let ep = [self.label.as_str(), category.name(), status.as_str()];
        m.endpoint_points_total
            .with_label_values(&ep)
            .inc_by(points);
        m.endpoint_point_bytes_total
            .with_label_values(&ep)
            .inc_by(bytes);
        if sunk {
            m.sink_point_total.with_label_values(&dk).inc_by(points);
        }
    }

    fn drop_points(&self, category: Category, points: usize, reason: &str) {
        self.metrics
            .dropped_points_total
            .with_label_values(&[category.name(), reason])
            .inc_by(points as u64);
    }
}

/// The `file://DIR` endpoint: appends what would have been sent to `DIR/<category>.lp`.
/// It makes the daemon useful with no account, and lets tests and users see the exact
/// line protocol.
struct FileSink {
    dir: PathBuf,
    // One writer at a time, so concurrent bodies never interleave inside a file.
    lock: tokio::sync::Mutex<()>,
}

impl FileSink {
    fn new(dir: PathBuf) -> FileSink {
        FileSink {
            dir,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn append(&self, shared: &Shared, category: Category, body: &Body) {
        let start = Instant::now();
        let _guard = self.lock.lock().await;
        let path = self.dir.join(format!("{}.lp", category.name()));
        let result = async {
            // What the daemon creates here holds customer data: the directory 0700 and
            // the files 0600, whatever the umask. A directory or file that already exists
            // keeps the mode its owner gave it (another reader may be meant to see it).
            let mut dir = tokio::fs::DirBuilder::new();
            dir.recursive(true).mode(0o700);
            dir.create(&self.dir).await?;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .await?;
            let mut data = Vec::with_capacity(body.payload.len() + 1);
            data.extend_from_slice(&body.payload);
            data.push(b'\n');
            f.write_all(&data).await?;
            f.flush().await
        }
        .await;
        let status = match &result {
            Ok(()) => Some(StatusCode::OK),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, points = body.points, "cannot append to the file endpoint; dropped");
                shared.drop_points(category, body.points, "file_error");
                None
            }
        };
        let label = status_label(status);
        let api = category.write_path();
        let m = &shared.metrics;
        m.api_request_total.with_label_values(&[api, &label]).inc();
        m.api_latency
            .observe(&[api, &label], start.elapsed().as_secs_f64() * 1000.0);
        shared.record_points(category, status, body, shared.opts.sinker.is_some());
    }
}

#[cfg(test)]
mod options_tests {
    use std::time::Duration;

    use super::EndpointOptions;
    use crate::config::Config;

    #[test]
    fn a_sinker_overrides_the_main_options_it_names_and_keeps_the_others() {
        let cfg = Config::from_toml(
            r#"
            [dataway]
            urls = ["file://main"]
            timeout = "9s"
            tls_insecure = true
            [[dataway.sinkers]]
            name = "web"
            categories = ["M"]
            urls = ["file://sink"]
            timeout = "2s"
            gzip = false
            [[dataway.sinkers]]
            name = "all"
            categories = ["metric"]
            urls = ["file://all"]
            "#,
            "test",
        )
        .unwrap();
        let d = &cfg.dataway;
        let opts = EndpointOptions::for_sinker(&d.sinkers[0], d);
        assert_eq!(opts.http.timeout, Duration::from_secs(2));
        assert!(!opts.gzip);
        assert_eq!(opts.sinker.as_deref(), Some("web"));
        assert!(
            opts.http.accept_invalid_certs,
            "tls_insecure is the main one's"
        );
        let all = EndpointOptions::for_sinker(&d.sinkers[1], d);
        assert_eq!(all.http.timeout, Duration::from_secs(9));
        assert!(all.gzip);
        assert!(
            !EndpointOptions::from_config(&Config::default().dataway)
                .http
                .accept_invalid_certs
        );
    }
}
