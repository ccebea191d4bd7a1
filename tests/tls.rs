//! https, the production case: a loopback Dataway behind TLS with a CA made by the test,
//! trusted through `dataway.tls_ca_file`, directly and through an `http_proxy` (CONNECT).
//!
//! The TLS server is a front that terminates TLS and relays the plain bytes to a
//! [`MockDataway`], so every request is recorded and scripted as in the other tests.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use common::{MockDataway, TestDaemon, config_for, lines, sample, scratch_dir, seqs, wait_metric};
use dataway::config::Config;

/// A certificate authority made for one test.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate as a PEM file in a scratch directory.
    fn write(&self) -> PathBuf {
        let path = scratch_dir("tls").join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by this CA.
    fn server_cert(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

/// Terminates TLS on 127.0.0.1 with a certificate of `ca` and relays each connection to
/// `backend` (a plain-HTTP mock). Counts handshakes that succeeded and failed.
struct TlsFront {
    addr: SocketAddr,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    async fn start(ca: &TestCa, backend: SocketAddr) -> TlsFront {
        let (cert, key) = ca.server_cert();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ok, failed) = (Arc::default(), Arc::default());
        let (ok2, failed2): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&ok), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, ok, failed) = (acceptor.clone(), ok2.clone(), failed2.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    ok.fetch_add(1, Ordering::SeqCst);
                    let mut plain = TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            ok,
            failed,
            task,
        }
    }

    fn url(&self, token: &str) -> String {
        format!("https://{}?token={token}", self.addr)
    }

    fn handshakes(&self) -> (usize, usize) {
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    /// Waits until `pred(ok, failed)` holds: the server may finish its side of a handshake
    /// after the client has already given up. Gives up after 20 s.
    async fn wait_handshakes(&self, pred: impl Fn(usize, usize) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, failed) = self.handshakes();
            if pred(ok, failed) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A forward proxy on 127.0.0.1 that only tunnels (`CONNECT host:port`), to loopback
/// targets only. Records the request head of every connection.
struct ConnectProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(tunnel(client, h.clone()));
            }
        });
        ConnectProxy { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel(mut client: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    // The head, a byte at a time: the client sends nothing past it before our answer.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        if client.read(&mut b).await.unwrap_or(0) == 0 || head.len() > 8192 {
            return;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().unwrap().push(head.clone());
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split(' ').next())
        .and_then(|t| t.parse::<SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback());
    let Some(target) = target else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

fn tls_ca_file(path: &Path) -> String {
    format!("tls_ca_file = \"{}\"\n", path.display())
}

/// Checks what reached the mock: the points by `seq`, gzipped, token in the query.
fn assert_delivered(dw: &MockDataway, token: &str, n: u64) {
    let reqs = dw.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.path, "/v1/write/metric");
        assert_eq!(r.query.as_deref(), Some(format!("token={token}").as_str()));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    let got = seqs(dw);
    assert_eq!(got.len() as u64, n, "{got:?}");
    assert!((0..n).all(|s| got.get(&s) == Some(&1)), "{got:?}");
}

#[tokio::test]
async fn https_endpoint_with_the_configured_ca_delivers() {
    let ca = TestCa::new("dataway test CA");
    let dw = MockDataway::start().await;
    let front = TlsFront::start(&ca, dw.addr).await;
    let d = TestDaemon::start(config_for(
        &[front.url("tkn_tls")],
        &tls_ca_file(&ca.write()),
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    assert_delivered(&dw, "tkn_tls", 5);
    // The daemon knows only the TLS port: what the mock got went through a handshake.
    assert_eq!(front.handshakes().1, 0);
    assert!(front.handshakes().0 >= 1);
    assert!(
        wait_metric(
            &d.metrics,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"OK\"}",
            1.0
        )
        .await
    );
    d.stop().await;
}

#[tokio::test]
async fn https_endpoint_through_a_connect_proxy() {
    let ca = TestCa::new("dataway test CA");
    let dw = MockDataway::start().await;
    let front = TlsFront::start(&ca, dw.addr).await;
    let proxy = ConnectProxy::start().await;
    let d = TestDaemon::start(config_for(
        &[front.url("tkn_px")],
        &format!(
            "{}http_proxy = \"http://{}\"\n",
            tls_ca_file(&ca.write()),
            proxy.addr
        ),
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    assert_delivered(&dw, "tkn_px", 5);
    let heads = proxy.heads();
    assert!(!heads.is_empty());
    let want = format!("CONNECT {} HTTP/1.1\r\n", front.addr);
    for h in &heads {
        assert!(h.starts_with(&want), "proxy saw {h:?}, want {want:?}");
        // The request itself, token included, went inside the tunnel, encrypted.
        assert!(!h.contains("tkn_px"), "{h}");
    }
    assert_eq!(front.handshakes().1, 0);
    d.stop().await;
}

/// A certificate the daemon does not trust is refused at the handshake: nothing reaches the
/// server, the body fails like any transport error and is counted. `ca_file`: the CA file
/// the daemon trusts (another CA), or none (only the built-in roots).
async fn untrusted_is_refused(ca_file: Option<PathBuf>) {
    let ca = TestCa::new("dataway test CA");
    let dw = MockDataway::start().await;
    let front = TlsFront::start(&ca, dw.addr).await;
    let mut extra = "max_retry_count = 0\n".to_string();
    if let Some(f) = &ca_file {
        extra.push_str(&tls_ca_file(f));
    }
    extra.push_str("[dataway.fail_cache]\nenabled = false\n");
    let d = TestDaemon::start(config_for(&[front.url("tkn_u")], &extra, "")).await;
    assert_eq!(d.post("metric", lines("cpu", 4, 0)).await.status(), 200);
    assert!(
        wait_metric(
            &d.metrics,
            "dataway_dropped_points_total{category=\"metric\",reason=\"retries_exhausted\"}",
            4.0
        )
        .await
    );
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"unknown\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"OK\"}"
        ),
        None
    );
    assert_eq!(
        dw.arrived(),
        0,
        "a request got past an untrusted certificate"
    );
    // The daemon did reach the server and refused it in the handshake.
    assert!(front.wait_handshakes(|_, failed| failed >= 1).await);
    assert_eq!(front.handshakes().0, 0);
    d.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    untrusted_is_refused(Some(TestCa::new("some other CA").write())).await;
}

#[tokio::test]
async fn without_tls_ca_file_a_private_ca_is_refused() {
    untrusted_is_refused(None).await;
}

/// A bad `tls_ca_file` is a config error that names the key and the file.
#[test]
fn tls_ca_file_is_validated() {
    let dir = scratch_dir("tls-config");
    let check = |path: &Path| {
        let text = format!(
            "[dataway]\nurls = [\"https://127.0.0.1:1?token=t\"]\n{}",
            tls_ca_file(path)
        );
        Config::from_toml(&text, "test")
            .unwrap()
            .validate()
            .map_err(|e| e.to_string())
    };
    let ok = TestCa::new("good").write();
    assert!(check(&ok).is_ok(), "{:?}", check(&ok));

    let missing = dir.join("missing.pem");
    let no_cert = dir.join("key.pem");
    std::fs::write(&no_cert, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
    for (path, why) in [
        (&missing, "cannot read"),
        (&no_cert, "holds no certificate"),
        (&garbage, "not a usable CA certificate"),
        (&not_pem, "not valid PEM"),
    ] {
        let err = check(path).expect_err(why);
        assert!(err.contains("dataway.tls_ca_file"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(why), "{err}");
    }
}

/// `dataway check` reports a bad `tls_ca_file` as a config error: exit code 2, key named.
#[test]
fn check_rejects_a_bad_tls_ca_file() {
    let dir = scratch_dir("tls-check");
    let cfg = dir.join("d.toml");
    let missing = dir.join("missing-ca.pem");
    std::fs::write(
        &cfg,
        format!(
            "[dataway]\nurls = [\"https://127.0.0.1:1?token=t\"]\n{}",
            tls_ca_file(&missing)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("dataway.tls_ca_file"), "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");
}
