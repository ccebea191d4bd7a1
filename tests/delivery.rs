//! Delivery to Dataway servers over real loopback HTTP: URLs, headers, bodies, retries.

mod common;

use std::time::Duration;

use common::process::DaemonProcess;
use common::{MockDataway, Reply, TestDaemon, config_for, lines, sample, wait_metric};

const TOKEN: &str = "tkn_0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn each_category_goes_to_its_write_path_with_the_token_and_protocol_headers() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "", "")).await;
    for (i, c) in ["metric", "L", "object", "CO", "tracing"]
        .iter()
        .enumerate()
    {
        let r = d.post(c, lines("m", 3, i * 3)).await;
        assert_eq!(r.status(), 200, "{c}");
    }
    assert!(dw.wait_points(15, WAIT).await);
    let mut paths: Vec<_> = dw.requests().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/v1/write/custom_object",
            "/v1/write/logging",
            "/v1/write/metric",
            "/v1/write/object",
            "/v1/write/tracing"
        ]
    );
    for r in dw.requests() {
        assert_eq!(r.query.as_deref(), Some(format!("token={TOKEN}").as_str()));
        assert_eq!(r.header("content-type"), Some("application/line-protocol"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.x_points(), 3);
        let ua = r.header("user-agent").unwrap();
        assert!(
            ua.starts_with(&format!("dataway/{} (", env!("CARGO_PKG_VERSION"))),
            "{ua}"
        );
        assert!(ua.contains(std::env::consts::OS) && ua.contains(std::env::consts::ARCH));
    }
    d.stop().await;
}

#[tokio::test]
async fn gzip_body_decompresses_to_the_posted_lines_and_plain_when_gzip_is_off() {
    for gzip in [true, false] {
        let dw = MockDataway::start().await;
        let extra = format!("gzip = {gzip}");
        let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], &extra, "")).await;
        let body = "cpu,host=a\\ b,region=東京 usage=1.5,n=3i,u=7u,ok=true,msg=\"say \\\"hi\\\"\" 1700000000000000000\n\
                    mem free=2i 1700000000000000001";
        assert_eq!(d.post("metric", body).await.status(), 200);
        assert!(dw.wait_points(2, WAIT).await);
        let r = &dw.requests()[0];
        assert_eq!(r.header("content-encoding").is_some(), gzip);
        if !gzip {
            assert_eq!(r.body, r.text.as_bytes());
        }
        assert_eq!(r.text, body);
        d.stop().await;
    }
}

#[tokio::test]
async fn large_batches_are_split_below_max_raw_body_size() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "max_raw_body_size = 2048", "")).await;
    let body = lines("cpu", 500, 0);
    assert_eq!(d.post("metric", body.clone()).await.status(), 200);
    assert!(dw.wait_points(500, WAIT).await);
    let reqs = dw.requests();
    assert!(reqs.len() > 10, "{} bodies", reqs.len());
    for r in &reqs {
        assert!(r.text.len() <= 2048, "{}", r.text.len());
        assert_eq!(r.text.lines().count(), r.x_points());
    }
    // Every line once, in order.
    assert_eq!(dw.lines_accepted().join("\n"), body);
    d.stop().await;
}

#[tokio::test]
async fn a_503_is_retried_with_the_identical_body_and_counted_as_one_request() {
    let dw = MockDataway::start().await;
    dw.script([Reply::Status(503), Reply::Status(502)]);
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 10, 0)).await.status(), 200);
    assert!(dw.wait_points(10, WAIT).await);
    let ok = "{api=\"/v1/write/metric\",status=\"OK\"}";
    assert!(
        wait_metric(
            &d.metrics,
            &format!("datakit_io_dataway_api_request_total{ok}"),
            1.0
        )
        .await
    );
    let reqs = dw.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status.unwrap()).collect::<Vec<_>>(),
        [503, 502, 200]
    );
    assert!(!reqs[0].body.is_empty());
    assert!(
        reqs.iter().all(|r| r.body == reqs[0].body),
        "every attempt sends the same bytes"
    );
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"Service Unavailable\"}"
        ),
        None,
        "intermediate attempts are not separate requests"
    );
    assert_eq!(
        sample(&text, &format!("datakit_io_dataway_api_latency_count{ok}")),
        Some(1.0)
    );
    d.stop().await;
}

#[tokio::test]
async fn a_501_and_a_400_are_not_retried_and_are_dropped_and_counted() {
    for (code, reason) in [(501, "Not Implemented"), (400, "Bad Request")] {
        let dw = MockDataway::start().await;
        dw.script([Reply::Status(code)]);
        // One worker: the first body sent is the first posted, the one the script refuses.
        let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "workers = 1", "")).await;
        assert_eq!(d.post("logging", lines("nginx", 4, 0)).await.status(), 200);
        // A second write proves the endpoint goes on after a refusal.
        assert_eq!(d.post("logging", lines("nginx", 2, 4)).await.status(), 200);
        assert!(dw.wait_points(2, WAIT).await);
        let dropped = "dataway_dropped_points_total{category=\"logging\",reason=\"rejected\"}";
        assert!(wait_metric(&d.metrics, dropped, 4.0).await);
        let statuses: Vec<_> = dw.answered().iter().map(|r| r.status.unwrap()).collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == code).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(statuses.len(), 2, "{statuses:?}");
        let text = d.metrics.encode_text();
        assert_eq!(
            sample(
                &text,
                &format!(
                    "datakit_io_dataway_point_total{{category=\"logging\",status=\"{reason}\"}}"
                )
            ),
            Some(4.0)
        );
        d.stop().await;
    }
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let dw = MockDataway::start().await;
    dw.script([Reply::RetryAfter(429, 1)]);
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 1, 0)).await.status(), 200);
    assert!(dw.wait_points(1, WAIT).await);
    let reqs = dw.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status.unwrap()).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = reqs[1].at - reqs[0].at;
    // retry_delay is 20ms in tests: only Retry-After explains a wait of a second.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    d.stop().await;
}

#[tokio::test]
async fn retries_give_up_after_max_retry_count() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(500)));
    // Without a fail-cache the body is dropped and counted (with one: tests/failcache.rs).
    let d = TestDaemon::start(config_for(
        &[dw.url(TOKEN)],
        "max_retry_count = 2\n[dataway.fail_cache]\nenabled = false",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    assert!(dw.wait_for(WAIT, |m| m.requests().len() >= 3).await);
    let exhausted =
        "dataway_dropped_points_total{category=\"metric\",reason=\"retries_exhausted\"}";
    assert!(wait_metric(&d.metrics, exhausted, 5.0).await);
    let m = d.metrics.clone();
    assert_eq!(dw.requests().len(), 3, "1 attempt + 2 retries");
    let text = m.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"Internal Server Error\"}"
        ),
        Some(1.0)
    );
    d.stop().await;
}

#[tokio::test]
async fn a_hanging_server_times_out_and_the_retry_succeeds() {
    let dw = MockDataway::start().await;
    // Far longer than the test waits: only a per-attempt timeout gets the data through.
    let hang = Duration::from_secs(60);
    dw.script([Reply::Slow(hang)]);
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "timeout = \"300ms\"", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 2, 0)).await.status(), 200);
    let ok = "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"OK\"}";
    assert!(wait_metric(&d.metrics, ok, 1.0).await);
    // Two attempts arrived: the one the client gave up on at its timeout, and the retry
    // that delivered while the first was still unanswered.
    let reqs = dw.requests();
    assert_eq!(dw.arrived(), 2, "{reqs:?}");
    assert_eq!(
        reqs[0].status, None,
        "the hanging attempt is still unanswered"
    );
    assert!(reqs[1].ok());
    assert_eq!(reqs[1].body, reqs[0].body);
    let delivered = reqs[1].answered_at.unwrap() - reqs[0].at;
    assert!(delivered < hang / 4, "delivered after {delivered:?}");
    // The timed-out attempt was not counted as a request of its own, but its time was.
    let text = d.metrics.encode_text();
    let sum = "datakit_io_dataway_api_latency_sum{api=\"/v1/write/metric\",status=\"OK\"}";
    assert!(sample(&text, sum).unwrap() >= 300.0);
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"unknown\"}"
        ),
        None
    );
    d.stop().await;
}

#[tokio::test]
async fn two_endpoints_both_get_everything_and_a_dead_one_does_not_delay_the_other() {
    let healthy = MockDataway::start().await;
    let dead = MockDataway::start().await;
    dead.set_default(Some(Reply::Slow(Duration::from_secs(30))));
    let d = TestDaemon::start(config_for(
        &[dead.url("tkn_dead"), healthy.url("tkn_live")],
        "timeout = \"20s\"\nworkers = 1",
        "",
    ))
    .await;
    for i in 0..20 {
        assert_eq!(
            d.post("metric", lines("cpu", 10, i * 10)).await.status(),
            200
        );
    }
    // The dead endpoint holds its only worker for 20 s; the healthy one gets everything
    // before that (the wait is bounded below the dead one's timeout).
    assert!(healthy.wait_points(200, Duration::from_secs(15)).await);
    assert!(
        healthy
            .requests()
            .iter()
            .all(|r| r.query.as_deref() == Some("token=tkn_live"))
    );
    let mut got = healthy.lines_accepted();
    got.sort();
    let mut want: Vec<String> = lines("cpu", 200, 0).lines().map(String::from).collect();
    want.sort();
    assert_eq!(got, want, "each point exactly once");
    assert_eq!(dead.points_accepted(), 0);
    // And with both healthy, both receive everything.
    dead.set_default(None);
    let both = MockDataway::start().await;
    let d2 = TestDaemon::start(config_for(
        &[both.url("tkn_a"), healthy.url("tkn_b")],
        "",
        "",
    ))
    .await;
    assert_eq!(d2.post("metric", lines("mem", 30, 0)).await.status(), 200);
    assert!(both.wait_points(30, WAIT).await);
    assert!(healthy.wait_points(230, WAIT).await);
    d2.stop().await;
}

#[tokio::test]
async fn other_apis_go_to_the_first_endpoint_only() {
    let first = MockDataway::start().await;
    let second = MockDataway::start().await;
    let d = TestDaemon::start(config_for(
        &[first.url("tkn_first"), second.url("tkn_second")],
        "",
        "",
    ))
    .await;
    let cli = reqwest::Client::new();
    let r = cli
        .post(d.url("/v1/query/raw?q=1"))
        .header("x-global-tags", "host=h1")
        .body("{\"queries\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "mock says 200");
    let r = cli.get(d.url("/v1/ntp")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    first.script([Reply::Status(404)]);
    let r = cli.delete(d.url("/v1/object/labels")).send().await.unwrap();
    assert_eq!(r.status(), 404, "the server's answer is passed back");
    let reqs = first.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1/query/raw");
    assert_eq!(reqs[0].query.as_deref(), Some("token=tkn_first&q=1"));
    assert_eq!(reqs[0].text, "{\"queries\":[]}");
    assert_eq!(reqs[0].header("x-global-tags"), Some("host=h1"));
    assert_eq!(reqs[1].path, "/v1/ntp");
    assert_eq!(reqs[2].method, "DELETE");
    assert!(second.requests().is_empty());
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/query/raw\",status=\"OK\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "datakit_io_dataway_api_request_total{api=\"/v1/object/labels\",status=\"Not Found\"}"
        ),
        Some(1.0)
    );
    d.stop().await;
}

#[tokio::test]
async fn file_endpoint_appends_line_protocol_per_category() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let d = TestDaemon::start(config_for(&[url], "", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 3, 0)).await.status(), 200);
    assert_eq!(d.post("L", lines("nginx", 2, 0)).await.status(), 200);
    d.stop().await;
    let metric = std::fs::read_to_string(dir.path().join("metric.lp")).unwrap();
    assert_eq!(metric, lines("cpu", 3, 0) + "\n");
    let logging = std::fs::read_to_string(dir.path().join("logging.lp")).unwrap();
    assert_eq!(logging, lines("nginx", 2, 0) + "\n");
}

#[tokio::test]
async fn the_connection_is_kept_across_5xx_answers() {
    let dw = MockDataway::start().await;
    dw.script([
        Reply::Status(503),
        Reply::Status(500),
        Reply::Status(502),
        Reply::Status(503),
    ]);
    let d = TestDaemon::start(config_for(
        &[dw.url(TOKEN)],
        "workers = 1\nmax_retry_count = 5",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 3, 0)).await.status(), 200);
    assert!(dw.wait_points(3, WAIT).await);
    assert_eq!(d.post("metric", lines("cpu", 3, 3)).await.status(), 200);
    assert!(dw.wait_points(6, WAIT).await);
    let reqs = dw.requests();
    assert_eq!(reqs.len(), 6);
    // DataKit closed idle connections after each failure; we keep using the one we have.
    assert!(
        reqs.iter().all(|r| r.peer == reqs[0].peer),
        "{:?}",
        reqs.iter().map(|r| r.peer).collect::<Vec<_>>()
    );
    d.stop().await;
}

#[tokio::test]
async fn http_proxy_carries_every_request() {
    // The mock plays the proxy: a proxied plain-HTTP request arrives in absolute form,
    // naming the real (here unresolvable) Dataway host.
    let proxy = MockDataway::start().await;
    let extra = format!("http_proxy = \"http://{}\"", proxy.addr);
    let d = TestDaemon::start(config_for(
        &["http://dataway.invalid:9528?token=tkn_p".into()],
        &extra,
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 2, 0)).await.status(), 200);
    assert!(proxy.wait_points(2, WAIT).await);
    let r = &proxy.requests()[0];
    assert_eq!(r.path, "/v1/write/metric");
    assert_eq!(r.query.as_deref(), Some("token=tkn_p"));
    assert_eq!(r.header("host"), Some("dataway.invalid:9528"));
    d.stop().await;
}

#[tokio::test]
async fn backoff_doubles_from_retry_delay_and_is_capped_by_max_retry_delay() {
    let dw = MockDataway::start().await;
    dw.script(std::iter::repeat_n(Reply::Status(503), 6));
    let d = TestDaemon::start(config_for(
        &[dw.url(TOKEN)],
        "retry_delay = \"200ms\"\nmax_retry_delay = \"800ms\"\nmax_retry_count = 6\nworkers = 1",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 3, 0)).await.status(), 200);
    assert!(dw.wait_points(3, WAIT).await);
    let reqs = dw.requests();
    assert_eq!(reqs.len(), 7, "1 attempt + 6 retries");
    let gaps: Vec<Duration> = reqs.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Each wait is at least its backoff: 200 ms doubling, up to the 800 ms cap (jitter only
    // adds; the exact spread is src/httpcli's unit test).
    let ms = Duration::from_millis;
    for (i, (gap, least)) in gaps.iter().zip([200, 400, 800, 800, 800, 800]).enumerate() {
        assert!(*gap >= ms(least), "wait {i} {gap:?} < {least} ms: {gaps:?}");
    }
    // Uncapped, the last wait alone would be 6.4 s or more (200 ms doubled five times).
    assert!(gaps.iter().all(|g| *g < ms(4000)), "{gaps:?}");
    d.stop().await;
}

#[tokio::test]
async fn retry_after_longer_than_max_retry_delay_is_capped() {
    let dw = MockDataway::start().await;
    dw.script([Reply::RetryAfter(503, 60)]);
    let d = TestDaemon::start(config_for(&[dw.url(TOKEN)], "max_retry_delay = \"1s\"", "")).await;
    assert_eq!(d.post("metric", lines("cpu", 1, 0)).await.status(), 200);
    assert!(dw.wait_points(1, Duration::from_secs(20)).await);
    let reqs = dw.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    // retry_delay is 20 ms: Retry-After was honoured up to the cap, and not past it.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(
        gap < Duration::from_secs(20),
        "waited for Retry-After: {gap:?}"
    );
    d.stop().await;
}

/// A socket bound to a loopback port but not listening: connecting to it is refused, and
/// `listen` later opens the same port (no free-port race).
fn refusing_socket() -> tokio::net::TcpSocket {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    sock
}

/// Polls `/metrics` at `url` until `series` satisfies `done` (20 s at most: a limit for a
/// stuck daemon), and returns its last value.
async fn scrape_until(url: &str, series: &str, done: impl Fn(Option<f64>) -> bool) -> Option<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        let v = sample(&text, series);
        if done(v) || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count_lines(log: &str, all: &[&str]) -> usize {
    log.lines()
        .filter(|l| all.iter().all(|w| l.contains(w)))
        .count()
}

// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_refused_connections_is_retried_and_delivered() {
    let sock = refusing_socket();
    let addr = sock.local_addr().unwrap();
    let token = "tkn_outage_0123456789abcdef0123456";
    let cfg = common::config_file(
        &[format!("http://{addr}?token={token}")],
        "retry_delay = \"20ms\"\nmax_retry_delay = \"100ms\"\nmax_retry_count = 100\nworkers = 1",
        "",
    );
    // Even at trace level, for every crate, no token may reach the log.
    let p = DaemonProcess::start(&cfg, &[("RUST_LOG", "trace")]);
    let cli = reqwest::Client::new();
    let r = cli
        .post(p.url("/v1/write/metric"))
        .body(lines("cpu", 5, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Seen refused three times, then the server comes up on that port.
    let refused = |log: &str| (count_lines(log, &["retrying", "connect error"]) >= 3).then_some(());
    let log = p.wait_log(Duration::from_secs(20), refused);
    assert!(log.is_some(), "no refused attempts logged:\n{}", p.log());
    let dw = MockDataway::serve_on(sock.listen(64).unwrap()).await;
    assert!(dw.wait_points(5, Duration::from_secs(20)).await);
    assert_eq!(dw.arrived(), 1, "a refused attempt never arrives");
    assert!(common::seqs(&dw).values().all(|&n| n == 1));
    let ok = "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"OK\"}";
    let counted = scrape_until(&p.url("/metrics"), ok, |v| v.is_some()).await;
    assert_eq!(counted, Some(1.0), "one request across the outage");
    let mut p = p;
    p.signal("TERM");
    assert!(p.wait(Duration::from_secs(30)).success());
    let log = p.log();
    assert!(log.contains("token=tkn_***"), "endpoint not logged:\n{log}");
    assert!(!log.contains(token), "token in the log:\n{log}");
}

// DaemonProcess waits block a thread: the mock needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_never_log_the_token_and_other_apis_answer_502() {
    // The first endpoint refuses connections, the second never answers in time.
    let sock = refusing_socket();
    let refused = format!(
        "http://{}?token=tkn_refused_0123456789abcdef01",
        sock.local_addr().unwrap()
    );
    let hanging = MockDataway::start().await;
    hanging.set_default(Some(Reply::Slow(Duration::from_secs(60))));
    let cfg = common::config_file(
        &[refused, hanging.url("tkn_hanging_0123456789abcdef01")],
        "timeout = \"300ms\"\nmax_retry_count = 1\nshutdown_timeout = \"2s\"",
        "",
    );
    let mut p = DaemonProcess::start(&cfg, &[("RUST_LOG", "trace")]);
    let cli = reqwest::Client::new();
    let r = cli
        .post(p.url("/v1/write/metric"))
        .body(lines("cpu", 2, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The first endpoint serves the other APIs: unreachable, they answer 502 saying why.
    let r = cli
        .post(p.url("/v1/query/raw"))
        .body("{\"queries\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("connect error") && body.contains("token=tkn_***"),
        "{body}"
    );
    assert!(!body.contains("tkn_refused"), "{body}");
    // Both endpoints' failures are logged with their cause.
    let failed = |log: &str| {
        (count_lines(log, &["delivery failed after retries", "connect error"]) >= 1
            && count_lines(log, &["delivery failed after retries", "timeout"]) >= 1)
            .then_some(())
    };
    let seen = p.wait_log(Duration::from_secs(20), failed);
    assert!(seen.is_some(), "transport errors not logged:\n{}", p.log());
    p.signal("TERM");
    assert!(p.wait(Duration::from_secs(30)).success());
    let log = p.log();
    assert!(!log.contains("tkn_refused"), "token in the log:\n{log}");
    assert!(!log.contains("tkn_hanging"), "token in the log:\n{log}");
    assert!(
        hanging.arrived() >= 2,
        "the hanging endpoint was tried and retried"
    );
}

/// A `file://` endpoint's output holds customer data: the directory and files the daemon
/// creates are 0700 and 0600 whatever the umask (the test's umask is the usual 022, under
/// which they would otherwise be 0755 and 0644).
#[tokio::test]
async fn a_file_endpoint_creates_its_directory_and_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let out = common::scratch_dir("file-endpoint").join("out");
    let d = TestDaemon::start(config_for(&[format!("file://{}", out.display())], "", "")).await;
    assert_eq!(
        d.post("metric", lines("m", 3, 0)).await.status().as_u16(),
        200
    );
    d.stop().await;
    let file = out.join("metric.lp");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&file), 0o600);
}

/// Line protocol goes out as the lines it came in as (`point::Text`), not encoded again:
/// the bodies and the metrics are those the points path makes from the same points (run B
/// posts them as DataKit's v2 protobuf, which is decoded into points and encoded), and a
/// client's own spelling (`1.50`, `T`, spaces) reaches the server as written, meaning the
/// same points.
#[tokio::test]
async fn forwarded_writes_send_and_count_what_encoding_the_points_would() {
    use dataway::point::{ParseOptions, Precision, parse, v2};
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    let canonical: Vec<String> = (0..4).map(|i| lines("cpu", 300, i * 300)).collect();
    let mut runs = Vec::new();
    for protobuf in [false, true] {
        let main = MockDataway::start().await;
        let d = TestDaemon::start(config_for(&[main.url(TOKEN)], "", "")).await;
        assert!(d.dataway.forwards(dataway::category::Category::Metric));
        let cli = reqwest::Client::new();
        for (i, body) in canonical.iter().enumerate() {
            let req = cli.post(d.url("/v1/write/metric"));
            let req = if protobuf {
                let points = parse(body.as_bytes(), opts).unwrap();
                req.header("Content-Type", v2::CONTENT_TYPE)
                    .body(v2::encode(&points))
            } else {
                req.body(body.clone())
            };
            assert_eq!(req.send().await.unwrap().status(), 200);
            assert!(main.wait_points(300 * (i + 1), WAIT).await);
        }
        // Counted once the answer is in: wait for it, not only for the points.
        let sent = "datakit_io_dataway_point_total{category=\"metric\",status=\"OK\"}";
        assert!(wait_metric(&d.metrics, sent, 1200.0).await);
        let text = d.metrics.encode_text();
        let counted = [
            "datakit_io_dataway_point_total{category=\"metric\",status=\"OK\"}",
            "datakit_io_dataway_point_bytes_total{category=\"metric\",status=\"OK\"}",
            "dataway_ingest_points_total{category=\"metric\"}",
        ]
        .map(|s| sample(&text, s));
        let mut bodies: Vec<Vec<u8>> = main.requests().into_iter().map(|r| r.body).collect();
        bodies.sort();
        d.stop().await;
        runs.push((counted, bodies));
    }
    let (forwarded, encoded) = (&runs[0], &runs[1]);
    assert_eq!(forwarded.0[0], Some(1200.0));
    assert_eq!(forwarded.0, encoded.0, "the metrics count the same");
    assert_eq!(forwarded.1.len(), 4);
    assert_eq!(
        forwarded.1, encoded.1,
        "the bodies are byte for byte the same"
    );

    // A client's own spelling.
    let spelled = "  cpu,host=a  v=1.50,ok=T,s=\"a b\\\"c\"   1700000000  \r\nmem free=2u";
    let main = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[main.url(TOKEN)], "", "")).await;
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric?precision=s"))
        .body(spelled)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(main.wait_points(2, WAIT).await);
    let got = main.requests().pop().unwrap().text;
    d.stop().await;
    assert_eq!(
        got,
        "cpu,host=a  v=1.50,ok=T,s=\"a b\\\"c\" 1700000000000000000\nmem free=2u ".to_string()
            + &got[got.len() - 19..],
        "as written, timestamps in ns"
    );
    let sent = parse(got.as_bytes(), opts).unwrap();
    let want = parse(
        spelled.as_bytes(),
        ParseOptions {
            precision: Precision::Seconds,
            default_time: sent[1].time,
        },
    )
    .unwrap();
    assert_eq!(sent, want, "the same points");
}

/// Text read while no sinker looked at its category, routed after one came (a drop-in
/// plugin appearing between the two), goes through that sinker.
#[tokio::test]
async fn text_routed_after_a_sinker_came_is_sunk() {
    use dataway::category::Category;
    use dataway::point::{ParseOptions, Precision, Text, parse};
    let (main, other) = (MockDataway::start().await, MockDataway::start().await);
    let extra = format!(
        "[[dataway.sinkers]]\nname = \"all\"\ncategories = [\"metric\"]\nurls = [\"{}\"]\n",
        other.url(TOKEN)
    );
    let d = TestDaemon::start(config_for(&[main.url(TOKEN)], "", &extra)).await;
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    let points = parse(lines("cpu", 50, 0).as_bytes(), opts).unwrap();
    d.dataway
        .try_write_held(Category::Metric, Text::from_points(&points), None)
        .unwrap();
    assert!(other.wait_points(50, WAIT).await);
    let sunk = "datakit_io_dataway_sink_point_total{category=\"metric\",status=\"OK\"}";
    assert!(wait_metric(&d.metrics, sunk, 50.0).await);
    d.stop().await;
    assert_eq!(main.arrived(), 0);
    assert_eq!(
        other.lines_accepted(),
        lines("cpu", 50, 0).lines().collect::<Vec<_>>()
    );
}
