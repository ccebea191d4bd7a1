//! The stand-in Dataway: an HTTP server on 127.0.0.1 that records every point it accepts by
//! its `seq` field, and that a row can make fail (503), hang, or go down for a fault window.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the stand-in answers writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, and the points count as delivered.
    Up,
    /// The connection is closed without an answer: a transport error, as for a server that
    /// is down or a network that drops.
    Down,
    /// No answer until the mode changes, then 503: bodies held in flight (never counted
    /// as delivered, since nothing acknowledged them).
    Hang,
}

#[derive(Default)]
struct Record {
    /// seq -> times delivered (answered 200).
    seqs: HashMap<u64, u32>,
    /// Delivered lines without a `seq` (the gzip bomb's `a v=1`).
    anonymous: u64,
    last: Option<Instant>,
}

struct State {
    mode: watch::Sender<Mode>,
    record: Mutex<Record>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in Dataway on 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: watch::channel(Mode::Up).0,
            record: Mutex::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, state, task }
    }

    /// The endpoint URL for the daemon's config.
    pub fn url(&self) -> String {
        format!("http://{}?token=tkn_chaos", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }

    /// seq -> times delivered, and the delivered lines without a seq.
    pub fn delivered(&self) -> (HashMap<u64, u32>, u64) {
        let r = self.state.record.lock().unwrap();
        (r.seqs.clone(), r.anonymous)
    }

    /// Waits until `done` holds for what was delivered, or nothing new arrived for `quiet`
    /// (the daemon has nothing more to send), or `limit` passed. True if `done` held.
    pub async fn drain(
        &self,
        limit: Duration,
        quiet: Duration,
        done: impl Fn(&HashMap<u64, u32>, u64) -> bool,
    ) -> bool {
        let t0 = Instant::now();
        loop {
            let (ok, last) = {
                let r = self.state.record.lock().unwrap();
                (done(&r.seqs, r.anonymous), r.last)
            };
            if ok {
                // A little longer, so a duplicate still on its way is counted too.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return true;
            }
            let since = last.map_or(t0.elapsed(), |l| l.elapsed().min(t0.elapsed()));
            if since >= quiet || t0.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>>;

fn reply(status: u16, text: &'static str) -> Reply {
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap())
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Reply {
    let write = req.uri().path().starts_with("/v1/write/");
    let mut mode = st.mode.subscribe();
    let now = *mode.borrow_and_update();
    match now {
        Mode::Down => return Err("stand-in Dataway is down".into()),
        Mode::Hang => {
            // Until the fault ends (or the daemon goes away, which drops this future).
            let _ = mode.wait_for(|m| *m != Mode::Hang).await;
            return reply(503, "was hanging");
        }
        Mode::Up => {}
    }
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, "body not read"),
    };
    if !write {
        return reply(200, "");
    }
    let text = if gzip {
        let mut raw = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .is_err()
        {
            return reply(400, "bad gzip");
        }
        raw
    } else {
        body.to_vec()
    };
    let text = String::from_utf8_lossy(&text);
    let mut r = st.record.lock().unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match seq_of(line) {
            Some(seq) => *r.seqs.entry(seq).or_default() += 1,
            None => r.anonymous += 1,
        }
    }
    r.last = Some(Instant::now());
    drop(r);
    reply(200, "")
}

/// The `seq=<n>i` field of a line the load sender wrote.
pub fn seq_of(line: &str) -> Option<u64> {
    line.split([' ', ','])
        .find_map(|kv| kv.strip_prefix("seq="))
        .and_then(|v| v.trim_end_matches('i').parse().ok())
}
