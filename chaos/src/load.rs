//! The load: writers posting points that each carry a unique `seq`, and the ledger of what
//! the daemon acknowledged (200) or refused, against which the stand-in's deliveries are
//! counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An HTTP/1.1 client on one keep-alive connection, reconnecting after any error.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

/// A request's outcome: the status and body, or why none came.
pub type Answer = Result<(u16, Bytes), String>;

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            timeout,
            conn: None,
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        let (timeout, host) = (self.timeout, self.addr.to_string());
        let attempt = async {
            let sender = self.connected().await?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        let answer = tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        if answer.is_err() {
            self.conn = None;
        }
        answer
    }

    /// The keep-alive connection, made anew if there is none or it closed.
    async fn connected(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.conn = Some(sender);
        }
        Ok(self.conn.as_mut().expect("connected"))
    }
}

/// GET /health on a new connection answers 200 within 2 s.
pub async fn healthy(addr: SocketAddr) -> bool {
    let mut c = Client::new(addr, Duration::from_secs(2));
    matches!(
        c.send("GET", "/health", &[], Bytes::new()).await,
        Ok((200, _))
    )
}

/// Which seqs were handed out, acknowledged, refused.
#[derive(Default)]
pub struct Ledger {
    next: AtomicU64,
    acked: Mutex<Vec<Range<u64>>>,
    /// Answered with a status other than 2xx: none of these may be delivered (a write is
    /// taken whole or not at all). Transport errors are neither: the daemon may have taken
    /// the write before the connection broke.
    refused: Mutex<Vec<Range<u64>>>,
    statuses: Mutex<BTreeMap<String, u64>>,
}

impl Ledger {
    /// `n` fresh seqs.
    pub fn take(&self, n: u64) -> Range<u64> {
        let a = self.next.fetch_add(n, Ordering::SeqCst);
        a..a + n
    }

    /// The first seq not yet handed out: seqs from here on belong to a later phase.
    pub fn mark(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Records how the write of `seqs` ended; true if acknowledged.
    pub fn settle(&self, seqs: Range<u64>, answer: &Answer) -> bool {
        let key = match answer {
            Ok((s, _)) => s.to_string(),
            Err(_) => "error".to_string(),
        };
        *self.statuses.lock().unwrap().entry(key).or_default() += 1;
        match answer {
            Ok((200..=299, _)) => {
                self.acked.lock().unwrap().push(seqs);
                true
            }
            Ok(_) => {
                self.refused.lock().unwrap().push(seqs);
                false
            }
            Err(_) => false,
        }
    }

    pub fn acked(&self) -> Vec<Range<u64>> {
        self.acked.lock().unwrap().clone()
    }

    pub fn refused(&self) -> Vec<Range<u64>> {
        self.refused.lock().unwrap().clone()
    }

    /// How many answers of each status, e.g. `200×120 503×4 error×2`.
    pub fn statuses(&self) -> String {
        let s = self.statuses.lock().unwrap();
        s.iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether every acknowledged seq from `from` on is in `delivered`.
    pub fn all_delivered(&self, delivered: &HashMap<u64, u32>, from: u64) -> bool {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.start.max(from)..r.end)
            .all(|s| delivered.contains_key(&s))
    }
}

/// A scrambled value of `x` (splitmix64): padding that does not compress away, so bodies
/// take room on disk as real data would.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One line per seq: `chaos,row=ROW,host=hN seq=<seq>i,v=…,pad="…"`, no timestamp (the
/// daemon stamps them), never two alike.
pub fn lines(row: &str, seqs: Range<u64>) -> String {
    let mut out = String::with_capacity((seqs.end - seqs.start) as usize * 90);
    for s in seqs {
        let _ = writeln!(
            out,
            "chaos,row={row},host=h{} seq={s}i,v={}.5,pad=\"{:016x}{:016x}{:016x}\"",
            s % 16,
            s % 1000,
            mix(s),
            mix(!s),
            mix(s ^ 0x5555)
        );
    }
    out
}

/// Writes `n` fresh points to /v1/write/metric; true if acknowledged.
pub async fn write(client: &mut Client, ledger: &Ledger, row: &str, n: u64) -> bool {
    let seqs = ledger.take(n);
    let body = Bytes::from(lines(row, seqs.clone()));
    let answer = client.send("POST", "/v1/write/metric", &[], body).await;
    ledger.settle(seqs, &answer)
}

/// How hard the writers push: each posts `batch` points, then pauses.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub writers: usize,
    pub batch: u64,
    pub pause: Duration,
}

/// Writers running until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, ledger: Arc<Ledger>, row: &'static str, shape: Shape) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..shape.writers)
            .map(|_| {
                let (ledger, stop) = (ledger.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut client = Client::new(addr, Duration::from_secs(30));
                    while !stop.load(Ordering::SeqCst) {
                        write(&mut client, &ledger, row, shape.batch).await;
                        tokio::time::sleep(shape.pause).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the writers after their write in progress (answered or timed out).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
