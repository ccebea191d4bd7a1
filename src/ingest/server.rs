//! The ingest server's connections: what `axum::serve` would do, plus the limits a host
//! whose clients may be hostile needs.
//!
//! In: a bound listener, the router, `[ingest]`'s `max_connections` and
//! `header_read_timeout`, and a token that ends serving. Out: HTTP/1.1 connections served
//! by the router until then.
//!
//! - **Connection cap.** At most `max_connections` open at once, and never more than half
//!   the open-file soft limit (the other half is for the WAL, the fail-cache, upstream
//!   connections and plugins). When the cap is reached, the accept loop closes the oldest
//!   *idle* connection (no request in progress: an idle keep-alive connection, or a client
//!   still sending its request head) to make room for the new one. So idle connections,
//!   however many, cannot lock `/health`, `/metrics` or writes out: a new connection is the
//!   last one to be closed. A connection whose request is in progress is never cut; if
//!   every connection is in a request, the new one waits until one ends (and the listen
//!   backlog holds those after it).
//! - **Header-read timeout** (hyper's): a connection that has not sent a complete request
//!   head `header_read_timeout` after it connected, or after its last answer, is closed.
//!   hyper's clock runs whenever a connection waits for a head, so this one setting closes
//!   slow-header clients and idle keep-alive connections alike.
//! - **Accept errors** never end the loop and never spin: on any error that is not one
//!   connection's (most likely out of file descriptors: `EMFILE`, `ENFILE`), the oldest
//!   idle connection is closed and accepting pauses briefly; a connection that failed
//!   before it was accepted (`ECONNABORTED`, ...) is skipped.
//! - **Closing** (the daemon cancels `close` after its drain): the listener closes, idle
//!   connections are closed at once, those with a request in progress finish it first.
//!
//! Counted in `dataway_ingest_connections` (open now), `dataway_ingest_connections_max`
//! (the cap in effect) and `dataway_ingest_connections_closed_total{reason}` ([`Closed`]).

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The limits of [`serve`], from `[ingest]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// How long accepting pauses after an error that is not one connection's: long enough not
/// to spin on a descriptor shortage, short enough that clients hardly notice.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often, at most, a full cap or a descriptor shortage is logged as a warning.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a connection ended: the `reason` label of `dataway_ingest_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or an answer said `Connection: close` (while draining).
    Client,
    /// No complete request head within `header_read_timeout` (slow or idle keep-alive).
    HeaderTimeout,
    /// Closed idle to make room for a new connection under the cap.
    IdleEvicted,
    /// Closed idle to free a descriptor after an accept error (`EMFILE`, ...).
    AcceptError,
    /// The server closed.
    Shutdown,
    /// A malformed request or an I/O error.
    Error,
}

impl Closed {
    pub const ALL: [Closed; 6] = [
        Closed::Client,
        Closed::HeaderTimeout,
        Closed::IdleEvicted,
        Closed::AcceptError,
        Closed::Shutdown,
        Closed::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleEvicted => "idle_evicted",
            Closed::AcceptError => "accept_error",
            Closed::Shutdown => "shutdown",
            Closed::Error => "error",
        }
    }
}

/// Serves connections from `listener` until `close` is cancelled, then stops listening and
/// returns once every connection has ended (each finishing the request it is in).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    close: CancellationToken,
) -> std::io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    metrics
        .ingest_connections_max
        .set(i64::try_from(cap).unwrap_or(i64::MAX));
    // Every reason from the start (at zero), so a rate or an alert has a series to read.
    for c in Closed::ALL {
        metrics
            .ingest_connections_closed_total
            .with_label_values(&[c.label()]);
    }
    let conns = Arc::new(Conns::new(metrics));
    let mut warned: Option<Instant> = None;
    let mut warn = |what: &str| {
        if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warned = Some(Instant::now());
            tracing::warn!("ingest: {what} (logged at most once a minute)");
        }
    };
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) if one_connections_error(&e) => {
                    tracing::debug!("ingest: a connection failed before it was accepted: {e}");
                    continue;
                }
                Err(e) => {
                    // Most likely out of descriptors: free one, and let the others go first.
                    conns.close_idle(1, Closed::AcceptError);
                    warn(&format!(
                        "cannot accept connections: {e}; closing the oldest idle connection \
                         and pausing {ACCEPT_BACKOFF:?} (raise the open-file limit, or lower \
                         ingest.max_connections)"
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = close.cancelled() => break,
                    }
                }
            },
            _ = close.cancelled() => break,
        };
        // Room for it: the oldest idle connections are asked to close, and it waits until
        // they have (or, none idle, until a request ends and its connection is idle).
        let mut full_logged = false;
        loop {
            let mut changed = pin!(conns.changed.notified());
            changed.as_mut().enable();
            if conns.make_room(cap) {
                break;
            }
            if !full_logged {
                full_logged = true;
                warn(&format!(
                    "{cap} connections open (ingest.max_connections, at most half the \
                     open-file limit): closing the oldest idle ones for new ones"
                ));
            }
            tokio::select! {
                _ = changed => {}
                _ = close.cancelled() => break,
            }
        }
        if close.is_cancelled() {
            break;
        }
        let (id, conn) = conns.add();
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            limits.header_read_timeout,
            conn,
            conns.clone(),
            id,
            close.clone(),
        ));
    }
    drop(listener);
    loop {
        let mut changed = pin!(conns.changed.notified());
        changed.as_mut().enable();
        if conns.len() == 0 {
            return Ok(());
        }
        changed.await;
    }
}

/// `max_connections`, lowered to half the open-file soft limit when that is smaller.
fn connection_cap(max_connections: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let half = limit.map_or(usize::MAX, |l| usize::try_from(l / 2).unwrap_or(usize::MAX));
    let cap = max_connections.min(half).max(1);
    if cap < max_connections {
        tracing::info!(
            max_connections,
            open_file_limit = limit,
            "ingest: at most {cap} connections, half the open-file limit"
        );
    }
    cap
}

/// Errors of one connection that failed between the client's connect and our accept: the
/// next accept is unaffected.
fn one_connections_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being served on it (0 is idle).
    requests: AtomicUsize,
    /// Cancelled to make room: the connection closes now if idle, after its request if not.
    evict: CancellationToken,
    /// Why `evict` was cancelled, set before it is.
    evicted_for: OnceLock<Closed>,
}

/// The open connections by id, so oldest first; and the next id.
struct Conns {
    open: Mutex<(u64, BTreeMap<u64, Arc<Conn>>)>,
    /// Notified when a connection ends or a request on one does.
    changed: Notify,
    metrics: Arc<Metrics>,
}

impl Conns {
    fn new(metrics: Arc<Metrics>) -> Conns {
        Conns {
            open: Mutex::default(),
            changed: Notify::new(),
            metrics,
        }
    }

    fn len(&self) -> usize {
        self.open.lock().unwrap().1.len()
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let mut open = self.open.lock().unwrap();
        let id = open.0;
        open.0 += 1;
        let conn = Arc::new(Conn {
            requests: AtomicUsize::new(0),
            evict: CancellationToken::new(),
            evicted_for: OnceLock::new(),
        });
        open.1.insert(id, conn.clone());
        self.metrics.ingest_connections.set(open.1.len() as i64);
        (id, conn)
    }

    fn remove(&self, id: u64, why: Closed) {
        {
            let mut open = self.open.lock().unwrap();
            open.1.remove(&id);
            self.metrics.ingest_connections.set(open.1.len() as i64);
        }
        self.metrics
            .ingest_connections_closed_total
            .with_label_values(&[why.label()])
            .inc();
        self.changed.notify_waiters();
    }

    /// Whether there is room for one more connection under `cap`; if not, asks as many of
    /// the oldest idle connections to close as it takes (counting those already asked).
    fn make_room(&self, cap: usize) -> bool {
        let open = self.open.lock().unwrap();
        let n = open.1.len();
        if n < cap {
            return true;
        }
        let closing = open.1.values().filter(|c| c.evict.is_cancelled()).count();
        evict_idle(
            &open.1,
            (n + 1 - cap).saturating_sub(closing),
            Closed::IdleEvicted,
        );
        false
    }

    /// Asks the `n` oldest idle connections to close, for `why`.
    fn close_idle(&self, n: usize, why: Closed) {
        evict_idle(&self.open.lock().unwrap().1, n, why);
    }
}

fn evict_idle(open: &BTreeMap<u64, Arc<Conn>>, n: usize, why: Closed) {
    open.values()
        .filter(|c| !c.evict.is_cancelled() && c.requests.load(Ordering::SeqCst) == 0)
        .take(n)
        .for_each(|c| {
            let _ = c.evicted_for.set(why);
            c.evict.cancel();
        });
}

/// A request in progress on a connection.
struct Busy {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Busy {
    fn new(conn: Arc<Conn>, conns: Arc<Conns>) -> Busy {
        conn.requests.fetch_add(1, Ordering::SeqCst);
        Busy { conn, conns }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.requests.fetch_sub(1, Ordering::SeqCst);
        // The connection is idle again: a waiting accept may close it.
        self.conns.changed.notify_waiters();
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    header_read_timeout: Duration,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    id: u64,
    close: CancellationToken,
) {
    let (c, cs) = (conn.clone(), conns.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // Counted from the moment hyper has the head, so an eviction never cuts a request.
        let busy = Busy::new(c.clone(), cs.clone());
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, req).await;
            drop(busy);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    // Why we asked it to close, once we have.
    let mut asked: Option<Closed> = None;
    let why = loop {
        tokio::select! {
            r = connection.as_mut() => break match r {
                Ok(()) => asked.unwrap_or(Closed::Client),
                Err(e) if e.is_timeout() => Closed::HeaderTimeout,
                Err(e) => {
                    tracing::debug!("ingest connection ended: {e}");
                    asked.unwrap_or(Closed::Error)
                }
            },
            _ = conn.evict.cancelled(), if asked.is_none() => {
                asked = Some(conn.evicted_for.get().copied().unwrap_or(Closed::Error));
            }
            _ = close.cancelled(), if asked.is_none() => asked = Some(Closed::Shutdown),
        }
        // Asked to close: an idle connection now (dropping it closes the socket); one in a
        // request once its answer is sent.
        if conn.requests.load(Ordering::SeqCst) == 0 {
            break asked.unwrap_or(Closed::Error);
        }
        connection.as_mut().graceful_shutdown();
    };
    conns.remove(id, why);
}
