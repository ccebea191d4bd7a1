//! The HTTP sender: one pooled client per endpoint, and the retry policy.
//!
//! In: a fully built [`Request`] (URL, headers, body bytes). Out: an [`Outcome`] telling the
//! final status (or transport error), how many attempts it took and how long in total.
//!
//! Why it looks like this (`lessons.md`): the body is `Bytes`, so every attempt sends the
//! identical body (DataKit once retried with an already-consumed, empty body); the pool is
//! never flushed on errors (DataKit closed idle connections after each failure and the TCP
//! connection count grew under 5xx storms); retries follow `protocol.md`: transport errors,
//! 429 and 5xx except 501, with exponential backoff plus jitter and `Retry-After` honoured.
//! An answer's body is read up to [`MAX_RESPONSE_BODY`] only: the server is not trusted to
//! bound it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};

/// How the client connects and retries. Its own options, not the config's: `endpoint`
/// builds them from `[dataway]`, so this module knows nothing of the config's schema.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Proxy URL with scheme.
    pub proxy: Option<String>,
    /// PEM file of CA certificates trusted besides the built-in roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Accept any server certificate (DataKit's `tls_insecure`): no verification at all.
    pub accept_invalid_certs: bool,
    /// Idle connections kept per host.
    pub max_idle_conns_per_host: usize,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retry_count: u32,
    /// First backoff delay.
    pub retry_delay: Duration,
    /// Cap of one delay, `Retry-After` included.
    pub max_retry_delay: Duration,
}

impl HttpOptions {
    /// The backoff's waits between attempts, one per retry: `retry_delay`, doubling up to
    /// `max_retry_delay`, each plus a random jitter of up to as much again.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.retry_delay)
            .with_max_delay(self.max_retry_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_retry_count as usize)
            .build()
    }

    /// The wait before the next attempt: the server's `Retry-After` when it gave one (at
    /// least `retry_delay`), else the backoff's; never more than `max_retry_delay`, so a
    /// server asking for an hour cannot stall the queue that long.
    fn delay(&self, backoff: Duration, retry_after: Option<Duration>) -> Duration {
        retry_after
            .map_or(backoff, |ra| ra.max(self.retry_delay))
            .min(self.max_retry_delay)
    }
}

/// One request, ready to send as many times as needed.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The most of an answer's body that is read (32 MiB, the default `ingest.max_body`).
/// Dataway answers a write with a line or two and the other APIs with JSON of a few MiB at
/// most; a server that sends more (broken, or hostile) must not take the daemon's memory.
pub const MAX_RESPONSE_BODY: usize = 32 * 1024 * 1024;

/// A response that arrived (any status).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body; when `truncated`, only its first bytes (none if its declared length was
    /// already over the limit).
    pub body: Bytes,
    /// The server sent, or announced, more than [`MAX_RESPONSE_BODY`] bytes: the rest was
    /// not read (and the connection is not reused). Whoever passes the body on must not
    /// pass this one as if whole.
    pub truncated: bool,
}

/// The end of a logical request: its last response or transport error, after retries.
#[derive(Debug)]
pub struct Outcome {
    /// The final response, or the final transport error.
    pub result: Result<Response, reqwest::Error>,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Time from the first attempt to the end, backoff included.
    pub elapsed: Duration,
}

impl Outcome {
    /// The final status, `None` for a transport error.
    pub fn status(&self) -> Option<StatusCode> {
        self.result.as_ref().ok().map(|r| r.status)
    }

    /// Whether the data should be kept for a later resend (fail-cache): the server never
    /// accepted nor refused it.
    pub fn is_retryable_failure(&self) -> bool {
        match &self.result {
            Ok(r) => is_retryable_status(r.status),
            Err(_) => true,
        }
    }
}

/// 429 and every 5xx except 501 Not Implemented are worth retrying; other 4xx mean the
/// server refused the data and a resend would be refused again.
pub fn is_retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || (s.is_server_error() && s != StatusCode::NOT_IMPLEMENTED)
}

/// A pooled HTTP client with the retry policy. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct HttpCli {
    client: reqwest::Client,
    opts: HttpOptions,
}

/// Why the client could not be built (a bad proxy or CA file, usually).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("dataway.tls_ca_file: cannot read `{}`: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HttpCli {
    /// Builds the client. `user_agent` is sent on every request.
    pub fn new(opts: HttpOptions, user_agent: &str) -> Result<HttpCli, BuildError> {
        let mut b = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .pool_max_idle_per_host(opts.max_idle_conns_per_host)
            .pool_idle_timeout(opts.idle_timeout)
            .tcp_nodelay(true)
            // Off unless asked for; the daemon warns at start when it is on.
            .danger_accept_invalid_certs(opts.accept_invalid_certs);
        b = match &opts.proxy {
            Some(p) => b.proxy(reqwest::Proxy::all(p)?),
            // No configured proxy means none: a daemon's destination must not change with
            // whatever HTTP_PROXY its service manager happens to export.
            None => b.no_proxy(),
        };
        if let Some(path) = &opts.tls_ca_file {
            // Read again at each build (config validated it): a drop-in sinker started later
            // trusts the file as it is then.
            let pem = std::fs::read(path).map_err(|source| BuildError::CaFile {
                path: path.clone(),
                source,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(HttpCli {
            client: b.build()?,
            opts,
        })
    }

    /// Sends `req`, retrying retryable failures. Never gives up early on its own: the caller
    /// bounds the total time by dropping the future (shutdown) if it must.
    pub async fn send(&self, req: &Request) -> Outcome {
        let start = Instant::now();
        let mut backoff = self.opts.backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self.attempt(req).await;
            let (retry, retry_after) = match &result {
                Ok(r) => (is_retryable_status(r.status), retry_after(&r.headers)),
                Err(_) => (true, None),
            };
            let next = if retry { backoff.next() } else { None };
            let Some(delay) = next else {
                return Outcome {
                    result,
                    attempts,
                    elapsed: start.elapsed(),
                };
            };
            let delay = self.opts.delay(delay, retry_after);
            match &result {
                Ok(r) => {
                    tracing::debug!(url = %crate::endpoint_url::redact(&req.url), status = %r.status, attempt = attempts, ?delay, "retrying")
                }
                Err(e) => {
                    tracing::debug!(url = %crate::endpoint_url::redact(&req.url), error = %without_url(e), attempt = attempts, ?delay, "retrying")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends `req` once, without retries: for the fail-cache's resends, which are retried
    /// by their own loop, so that a stop waits for one attempt at most, not a backoff.
    pub async fn send_once(&self, req: &Request) -> Outcome {
        let start = Instant::now();
        let result = self.attempt(req).await;
        Outcome {
            result,
            attempts: 1,
            elapsed: start.elapsed(),
        }
    }

    async fn attempt(&self, req: &Request) -> Result<Response, reqwest::Error> {
        let mut resp = self
            .client
            .request(req.method.clone(), &req.url)
            .headers(req.headers.clone())
            .body(req.body.clone())
            .send()
            .await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let (body, truncated) = read_body(&mut resp, MAX_RESPONSE_BODY).await?;
        Ok(Response {
            status,
            headers,
            body,
            truncated,
        })
    }
}

/// The body of `resp`, at most `max` bytes of it, and whether there was more.
async fn read_body(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Ok((Bytes::new(), true));
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = resp.chunk().await? {
        let room = max - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf.freeze(), true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), false))
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error's text without its URL: reqwest's own message carries the full URL
/// (token included), and tokens must never reach a log. The kind plus the source chain
/// (connection refused, reset, …) says what happened.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut msg = String::from(if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "response body error"
    } else {
        "request error"
    });
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_follows_the_protocol() {
        for code in [429, 500, 502, 503, 504, 599] {
            assert!(
                is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 204, 400, 401, 403, 404, 413, 501] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    fn opts(retry_delay_ms: u64, max_retry_delay_ms: u64, max_retry_count: u32) -> HttpOptions {
        HttpOptions {
            timeout: Duration::from_secs(5),
            proxy: None,
            max_idle_conns_per_host: 1,
            idle_timeout: Duration::from_secs(90),
            max_retry_count,
            retry_delay: Duration::from_millis(retry_delay_ms),
            max_retry_delay: Duration::from_millis(max_retry_delay_ms),
            tls_ca_file: None,
            accept_invalid_certs: false,
        }
    }

    #[test]
    fn backoff_doubles_from_retry_delay_with_jitter_and_stops_at_the_cap() {
        let o = opts(200, 1000, 6);
        let ms = Duration::from_millis;
        // Without jitter: 200, 400, 800, then the cap. Jitter adds up to as much again,
        // and the cap holds for the total.
        let bounds = [
            (200, 400),
            (400, 800),
            (800, 1000),
            (1000, 1000),
            (1000, 1000),
        ];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..100 {
            let delays: Vec<_> = o.backoff().map(|d| o.delay(d, None)).collect();
            assert_eq!(delays.len(), 6, "one wait per retry: {delays:?}");
            for (d, (lo, hi)) in delays.iter().zip(bounds) {
                assert!(*d >= ms(lo) && *d <= ms(hi), "{delays:?}");
            }
            assert_eq!(delays[5], ms(1000));
            firsts.insert(delays[0]);
        }
        // Jitter: a hundred clients failing at once do not all retry at the same moment.
        assert!(firsts.len() > 10, "{firsts:?}");
    }

    #[test]
    fn retry_after_is_honoured_between_retry_delay_and_the_cap() {
        let o = opts(200, 1000, 3);
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(o.delay(ms(300), Some(s(3600))), ms(1000));
        assert_eq!(o.delay(ms(300), Some(ms(700))), ms(700));
        assert_eq!(o.delay(ms(300), Some(s(0))), ms(200));
        assert_eq!(o.delay(ms(300), None), ms(300));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
