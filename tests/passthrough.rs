//! The pass-through to Dataway's other APIs and the ingest token, as a hostile client meets
//! them: a client cannot add a token or smuggle headers upstream, and the ingest token is
//! compared exactly (but for the whitespace HTTP itself strips around a header value). Also where the crash-loss window of the chosen mode is told (`check`,
//! start-up log). Real daemon, real HTTP over loopback, a recording mock Dataway.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::process::DaemonProcess;
use common::{MockDataway, TestDaemon, config_file, config_for};

const TOKEN: &str = "tkn_0123456789abcdef0123456789abcdef";

/// The values of every `token` parameter of a query, as a server decodes them.
fn tokens(query: Option<&str>) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k.eq_ignore_ascii_case("token"))
        .map(|(_, v)| v.into_owned())
        .collect()
}

#[tokio::test]
async fn a_clients_token_parameters_never_reach_dataway() {
    let mock = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[mock.url(TOKEN)], "", "")).await;
    let cli = reqwest::Client::new();
    for query in [
        "token=tkn_ATTACKER",
        "q=1&token=tkn_ATTACKER",
        "token=tkn_ATTACKER&q=1&token=tkn_OTHER",
        "%74oken=tkn_ATTACKER&q=1",
        "TOKEN=tkn_ATTACKER&q=1",
        "q=1;token=tkn_ATTACKER&r=2",
    ] {
        let r = cli
            .post(d.url(&format!("/v1/query/raw?{query}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{query}");
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6);
    for r in &reqs {
        assert_eq!(r.path, "/v1/query/raw");
        assert_eq!(tokens(r.query.as_deref()), [TOKEN], "{:?}", r.query);
        assert!(!r.query.as_deref().unwrap().contains("ATTACKER"));
    }
    // The caller's other parameters still go, after the configured token.
    assert_eq!(
        reqs[1].query.as_deref(),
        Some(&*format!("token={TOKEN}&q=1"))
    );
    assert_eq!(
        reqs[5].query.as_deref(),
        Some(&*format!("token={TOKEN}&r=2"))
    );
}

#[tokio::test]
async fn only_the_headers_the_dataway_apis_use_are_forwarded() {
    let mock = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[mock.url(TOKEN)], "", "")).await;
    let body = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"queries\":[]}").unwrap();
        gz.finish().unwrap()
    };
    let r = reqwest::Client::new()
        .post(d.url("/v1/query/raw"))
        // Allowed.
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .header("x-global-tags", "host=h1")
        .header("x-global-tags-v2", "host=h1")
        .header("x-datakit-version", "1.60.0")
        .header("x-datakit-profileid", "p-1")
        .header("x-datakit-unixnano", "1700000000000000000")
        .header("host-name", "h1")
        // Not allowed.
        .header("cookie", "session=stolen")
        .header("x-forwarded-host", "evil.example.com")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-custom", "yes")
        .header("user-agent", "attacker/1.0")
        .header("authorization", "Bearer whatever")
        .header("proxy-authorization", "Basic eDp5")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("accept-encoding", "gzip"),
        ("x-global-tags", "host=h1"),
        ("x-global-tags-v2", "host=h1"),
        ("x-datakit-version", "1.60.0"),
        ("x-datakit-profileid", "p-1"),
        ("x-datakit-unixnano", "1700000000000000000"),
        ("host-name", "h1"),
    ] {
        assert_eq!(up.header(name), Some(value), "{name} is forwarded");
    }
    assert_eq!(
        up.text, "{\"queries\":[]}",
        "the body is forwarded as it came"
    );
    for name in [
        "cookie",
        "x-forwarded-host",
        "x-forwarded-for",
        "x-custom",
        "authorization",
        "proxy-authorization",
    ] {
        assert_eq!(up.header(name), None, "{name} must not be forwarded");
    }
    let ua = up.header("user-agent").unwrap();
    assert!(
        ua.starts_with("dataway/"),
        "our own User-Agent, not the client's: {ua}"
    );
    // Nothing but the allowed headers and those of the daemon's own hop.
    for (name, _) in &up.headers {
        assert!(
            dataway::endpoint::other_api::FORWARDED_HEADERS.contains(&name.as_str())
                || ["host", "user-agent", "content-length", "accept"].contains(&name.as_str()),
            "unexpected header `{name}` upstream"
        );
    }
}

/// One raw HTTP/1.1 request, byte for byte as given (no client library tidying the header
/// value): the status code of the answer.
fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let line = String::from_utf8_lossy(&head);
    line[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("status line {line:?}"))
}

#[tokio::test]
async fn the_ingest_token_is_compared_exactly() {
    let mock = MockDataway::start().await;
    let d = TestDaemon::start(config_for(
        &[mock.url(TOKEN)],
        "",
        "[ingest]\ntoken = \"s3cret\"",
    ))
    .await;
    let addr = d.addr;
    let write = |auth: &'static str| {
        let req = format!(
            "POST /v1/write/metric HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             {auth}Content-Length: 7\r\n\r\ncpu v=1"
        );
        tokio::task::spawn_blocking(move || raw_status(addr, &req))
    };
    // Whitespace after a header's value is not part of it (RFC 9110 5.5): the HTTP parser
    // drops it before the daemon sees the value, and the README says so.
    for auth in [
        "Authorization: Bearer s3cret\r\n",
        "Authorization: Bearer s3cret \r\n",
        "Authorization: Bearer s3cret\t\r\n",
    ] {
        assert_eq!(write(auth).await.unwrap(), 200, "{auth:?}");
    }
    // Anything else but the exact `Bearer <token>` is refused.
    for auth in [
        "Authorization: Bearer  s3cret\r\n",
        "Authorization: Bearer s3cret x\r\n",
        "Authorization: Bearer\ts3cret\r\n",
        "Authorization: bearer s3cret\r\n",
        "Authorization: Bearer s3cre\r\n",
        "Authorization: Bearer s3cretX\r\n",
        "Authorization: s3cret\r\n",
        "",
    ] {
        assert_eq!(write(auth).await.unwrap(), 401, "{auth:?}");
    }
    // The other APIs take the same check.
    let r = reqwest::Client::new()
        .post(d.url("/v1/query/raw"))
        .header("authorization", "Bearer  s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        mock.requests().iter().all(|r| r.path != "/v1/query/raw"),
        "a refused forward never reaches Dataway"
    );
}

fn check(cfg: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dataway"))
        .args(["check", "-c"])
        .arg(cfg)
        .env_remove("ENV_DATAWAY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `config_file` with `[dataway.wal] enabled` set as given.
fn config_with_wal(urls: &[String], extra_dataway: &str, wal: bool) -> std::path::PathBuf {
    let file = config_file(urls, extra_dataway, "");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replace(
        "[dataway.wal]\n",
        &format!("[dataway.wal]\nenabled = {wal}\n"),
    );
    std::fs::write(&file, text).unwrap();
    file
}

const WAL_OFF: &str = "crash loss window (kill -9, OOM, power loss): the WAL is off, so \
     acknowledged points still in memory are lost, up to dataway.max_pending_bytes (64 MiB); \
     what is already in the fail-cache is kept; set [dataway.wal] enabled = true to lose none";
const WAL_ON: &str = "crash loss window (kill -9, OOM, power loss): none acknowledged; each \
     write is fsynced to the WAL before its 200 and replayed at the next start (some may be \
     sent twice)";

#[test]
fn check_names_the_crash_loss_window_of_the_chosen_mode() {
    let urls = ["http://127.0.0.1:9?token=tkn_x".to_string()];
    let off = check(&config_with_wal(&urls, "", false));
    assert!(off.lines().any(|l| l == WAL_OFF), "{off}");
    let on = check(&config_with_wal(&urls, "", true));
    assert!(on.lines().any(|l| l == WAL_ON), "{on}");
    // The window follows the configured budget.
    let small = check(&config_with_wal(
        &urls,
        "max_pending_bytes = 1000000\n",
        false,
    ));
    assert!(
        small.contains("up to dataway.max_pending_bytes (1000000 bytes)"),
        "{small}"
    );
}

#[tokio::test]
async fn the_start_up_log_names_the_crash_loss_window() {
    let mock = MockDataway::start().await;
    for (wal, line) in [(false, WAL_OFF), (true, WAL_ON)] {
        let cfg = config_with_wal(&[mock.url(TOKEN)], "", wal);
        let mut p = DaemonProcess::start(&cfg, &[]);
        // Logged before the server listens, and the start waited for that line.
        let log = p.log();
        assert!(log.contains(line), "WAL {wal}: no `{line}` in:\n{log}");
        p.signal("TERM");
        assert!(p.wait(Duration::from_secs(60)).success());
    }
}

/// How the stand-in Dataway of [`hostile_upstream`] sends a body.
#[derive(Clone, Copy)]
enum Framing {
    /// With `Content-Length`.
    Length,
    /// Chunked, with no length announced.
    Chunked,
}

/// A stand-in Dataway, raw HTTP/1.1 on loopback, that answers every request with `head`
/// (status line and headers, without framing) and a body of `size` bytes framed as told,
/// then closes. It stops writing when the client hangs up.
async fn hostile_upstream(head: &'static str, size: usize, framing: Framing) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // The request head (and whatever small body follows it) is not needed.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let framing_header = match framing {
                    Framing::Length => format!("content-length: {size}\r\n"),
                    Framing::Chunked => "transfer-encoding: chunked\r\n".to_string(),
                };
                let start = format!("{head}{framing_header}connection: close\r\n\r\n");
                if s.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b'a'; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = left.min(piece.len());
                    let sent = match framing {
                        Framing::Length => s.write_all(&piece[..n]).await,
                        Framing::Chunked => {
                            let mut chunk = format!("{n:x}\r\n").into_bytes();
                            chunk.extend_from_slice(&piece[..n]);
                            chunk.extend_from_slice(b"\r\n");
                            s.write_all(&chunk).await
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                    left -= n;
                }
                if matches!(framing, Framing::Chunked) {
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}?token={TOKEN}")
}

const LIMIT: usize = dataway::httpcli::MAX_RESPONSE_BODY;

/// An answer's body over the limit is not read into memory and not passed back cut short:
/// the client gets a 502 naming the limit, with the length announced or not. One at the
/// limit passes whole.
#[tokio::test]
async fn an_answer_over_the_size_limit_is_a_502_naming_it() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n";
    for framing in [Framing::Length, Framing::Chunked] {
        let url = hostile_upstream(head, LIMIT + (8 << 20), framing).await;
        let d = TestDaemon::start(config_for(&[url], "timeout = \"60s\"", "")).await;
        let r = reqwest::Client::new()
            .get(d.url("/v1/datakit/pull"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!("over {LIMIT} bytes")) && text.contains("/v1/datakit/pull"),
            "{text}"
        );
        // The daemon is fine, and counted the request by the status Dataway gave.
        assert_eq!(reqwest::get(d.url("/health")).await.unwrap().status(), 200);
        d.stop().await;
    }
    let url = hostile_upstream(head, LIMIT, Framing::Chunked).await;
    let d = TestDaemon::start(config_for(&[url], "timeout = \"60s\"", "")).await;
    let r = reqwest::Client::new()
        .get(d.url("/v1/datakit/pull"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), LIMIT);
}

/// Dataway's answer comes back with its status, body and only the headers of
/// `PASSED_BACK_HEADERS`: no cookie, no other header of an upstream that is not trusted.
#[tokio::test]
async fn only_the_answer_headers_the_apis_use_are_passed_back() {
    let head = "HTTP/1.1 429 Too Many Requests\r\n\
                content-type: application/json\r\n\
                content-encoding: identity\r\n\
                retry-after: 7\r\n\
                set-cookie: session=evil; Path=/\r\n\
                set-cookie: other=1\r\n\
                x-custom: yes\r\n\
                x-forwarded-host: evil.example.com\r\n\
                access-control-allow-origin: *\r\n\
                strict-transport-security: max-age=0\r\n\
                server: evil/1.0\r\n\
                www-authenticate: Basic\r\n";
    let url = hostile_upstream(head, 2, Framing::Length).await;
    // No retries: the 429 is the answer.
    let d = TestDaemon::start(config_for(&[url], "max_retry_count = 0", "")).await;
    let r = reqwest::Client::new()
        .post(d.url("/v1/query/raw"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let headers = r.headers().clone();
    assert_eq!(r.text().await.unwrap(), "aa", "the body as it came");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["content-encoding"], "identity");
    assert_eq!(headers["retry-after"], "7");
    for (name, _) in &headers {
        assert!(
            dataway::endpoint::other_api::PASSED_BACK_HEADERS.contains(&name.as_str())
                // The daemon's own hop.
                || ["content-length", "date"].contains(&name.as_str()),
            "`{name}` passed back: {headers:?}"
        );
    }
}
