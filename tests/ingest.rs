//! The ingest server's answers: 200 / 400 / 401 / 404 / 413 / 415 / 503, gzip, precision.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    MockDataway, Reply, TestDaemon, config_for, lines, sample, samples_matching, wait_metric,
};

const WAIT: Duration = Duration::from_secs(10);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn malformed_body_is_refused_whole_with_the_line_number() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url("tkn_x")], "", "")).await;
    let body = "cpu v=1 1\n# a comment\ncpu v=oops 2\ncpu v=3 3\n";
    let r = d.post("metric", body).await;
    assert_eq!(r.status(), 400);
    let j: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(j["errors"][0]["line"], 3, "{j}");
    assert_eq!(j["bad_lines"], 1);
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains("line 3") && msg.contains("nothing was accepted"),
        "{msg}"
    );
    // All-or-nothing: the good lines 1 and 4 were not queued either. A later good write
    // arrives alone.
    assert_eq!(d.post("metric", "mem v=1 9").await.status(), 200);
    assert!(dw.wait_points(1, WAIT).await);
    assert_eq!(dw.lines_accepted(), ["mem v=1 9"]);
    let text = d.metrics.encode_text();
    assert_eq!(
        sample(
            &text,
            "dataway_ingest_requests_total{category=\"metric\",code=\"400\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "dataway_ingest_points_total{category=\"metric\"}"),
        Some(1.0)
    );
    d.stop().await;
}

#[tokio::test]
async fn gzip_bodies_and_precision_are_understood() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url("tkn_x")], "gzip = false", "")).await;
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric?precision=s"))
        .header("content-encoding", "gzip")
        .body(gzip(b"cpu v=1 1700000000\r\ncpu v=2 1700000001\r\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(j["points"], 2);
    assert!(dw.wait_points(2, WAIT).await);
    assert_eq!(
        dw.lines_accepted(),
        ["cpu v=1 1700000000000000000", "cpu v=2 1700000001000000000"]
    );
    let r = d.post("metric", "x").await;
    assert_eq!(r.status(), 400);
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric?precision=weeks"))
        .body("cpu v=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("precision"));
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric"))
        .header("content-encoding", "br")
        .body("cpu v=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric"))
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    d.stop().await;
}

#[tokio::test]
async fn a_point_without_timestamp_gets_the_time_it_arrived() {
    let dw = MockDataway::start().await;
    let d = TestDaemon::start(config_for(&[dw.url("tkn_x")], "", "")).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert_eq!(d.post("metric", "cpu v=1").await.status(), 200);
    assert!(dw.wait_points(1, WAIT).await);
    let line = &dw.lines_accepted()[0];
    let ts: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ts >= before && ts - before < 60_000_000_000, "{line}");
    d.stop().await;
}

#[tokio::test]
async fn unknown_category_is_404_and_ping_and_health_answer() {
    let d = TestDaemon::start(config_for(&["file://target/test-unused".into()], "", "")).await;
    let r = d.post("bogus", "cpu v=1").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("unknown category `bogus`"));
    let r = reqwest::get(d.url("/v1/ping")).await.unwrap();
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        reqwest::get(d.url("/health"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    d.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_are_413_even_when_compressed() {
    let d = TestDaemon::start(config_for(
        &["file://target/test-unused".into()],
        "",
        "[ingest]\nmax_body = 4096",
    ))
    .await;
    let big = lines("cpu", 200, 0);
    assert!(big.len() > 4096);
    let r = d.post("metric", big.clone()).await;
    assert_eq!(r.status(), 413);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("ingest.max_body (4096 bytes)"), "{msg}");
    // The other APIs have the same limit, and say so too.
    let r = reqwest::Client::new()
        .post(d.url("/v1/query/raw"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("ingest.max_body"));
    let packed = gzip(big.as_bytes());
    assert!(packed.len() < 4096, "compressed {}", packed.len());
    let r = reqwest::Client::new()
        .post(d.url("/v1/write/metric"))
        .header("content-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("ingest.max_body"));
    assert_eq!(d.post("metric", lines("cpu", 5, 0)).await.status(), 200);
    d.stop().await;
}

#[tokio::test]
async fn ingest_token_is_required_when_configured() {
    let d = TestDaemon::start(config_for(
        &["file://target/test-unused".into()],
        "",
        "[ingest]\ntoken = \"s3cret\"",
    ))
    .await;
    assert_eq!(d.post("metric", "cpu v=1").await.status(), 401);
    let cli = reqwest::Client::new();
    let r = cli
        .post(d.url("/v1/write/metric"))
        .bearer_auth("wrong!")
        .body("cpu v=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = cli
        .post(d.url("/v1/write/metric"))
        .bearer_auth("s3cret")
        .body("cpu v=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        cli.get(d.url("/v1/ntp")).send().await.unwrap().status(),
        401
    );
    d.stop().await;
}

#[tokio::test]
async fn full_memory_budget_answers_503_with_retry_after_and_loses_nothing_accepted() {
    let dw = MockDataway::start().await;
    // The endpoint is slow: accepted batches stay in memory for a while. Each write is
    // ~1.1 KB of kept text: the budget takes about four.
    dw.set_default(Some(Reply::Slow(Duration::from_millis(600))));
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_x")],
        "max_pending_bytes = 6000\nworkers = 1",
        "[ingest]\nmax_body = 3000\n",
    ))
    .await;
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    for i in 0..10 {
        let seqs = i as u64 * 20..i as u64 * 20 + 20;
        let r = d.post("metric", lines("cpu", 20, i * 20)).await;
        match r.status().as_u16() {
            200 => accepted.extend(seqs),
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                refused.extend(seqs);
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        !accepted.is_empty() && !refused.is_empty(),
        "accepted {accepted:?}, refused {refused:?}"
    );
    let code503 = "dataway_ingest_requests_total{category=\"metric\",code=\"503\"}";
    assert_eq!(
        sample(&d.metrics.encode_text(), code503),
        Some((refused.len() / 20) as f64)
    );
    // A stop delivers everything queued: after it, what arrived is all that ever will.
    let report = d.stop().await;
    assert_eq!(report.abandoned_points, 0);
    // Every accepted point is delivered once; none of a refused request is.
    let arrived = common::seqs(&dw);
    assert!(arrived.values().all(|&n| n == 1), "{arrived:?}");
    let arrived: std::collections::BTreeSet<u64> = arrived.into_keys().collect();
    assert_eq!(arrived, accepted);
    assert!(arrived.is_disjoint(&refused));
}

#[tokio::test]
async fn full_endpoint_queue_answers_503() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_millis(500))));
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_x")],
        "queue_size = 1\nworkers = 1",
        "",
    ))
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(d.post("metric", lines("cpu", 1, i)).await.status().as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    let accepted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(
        sample(
            &d.metrics.encode_text(),
            "dataway_ingest_requests_total{category=\"metric\",code=\"503\"}"
        ),
        Some(refused as f64)
    );
    assert!(dw.wait_points(accepted, WAIT).await);
    let q = "dataway_queue_batches{endpoint=\"";
    assert!(
        wait_metric(
            &d.metrics,
            &format!("{q}{}?token=tkn_***\"}}", common_addr(&dw)),
            0.0
        )
        .await
    );
    d.stop().await;
}

fn common_addr(dw: &MockDataway) -> String {
    format!("http://{}", dw.addr)
}

/// Full send queues refuse a write before its body is decompressed or parsed (issue 12:
/// a refusal must cost next to nothing): a body that would be a 400 is a 503 while the
/// queues are full. A small body is read and dropped so the client's connection stays
/// open; a large one is not read, and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_a_write_before_parsing_it() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Slow(Duration::from_secs(3))));
    let d = TestDaemon::start(config_for(
        &[dw.url("t")],
        "workers = 1\nqueue_size = 1",
        "",
    ))
    .await;
    // One batch being sent, one queued: then the queue is full.
    let mut taken = 0;
    for i in 0..10 {
        match d
            .post("metric", format!("m v={i}i"))
            .await
            .status()
            .as_u16()
        {
            200 => taken += 1,
            503 => break,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        (1..10).contains(&taken),
        "the queue filled after {taken} writes"
    );
    let bad = "m,no_fields_here\n".repeat(4);
    let r = d.post("metric", bad.clone()).await;
    assert_eq!(
        r.status().as_u16(),
        503,
        "refused before the bad line is seen"
    );
    assert!(
        r.headers().get("retry-after").is_some() && r.headers().get("connection").is_none(),
        "a small body is read and dropped; the connection stays: {:?}",
        r.headers()
    );
    let large = bad.repeat(300 * 1024 / bad.len());
    let r = d.post("metric", large).await;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "a large body is not read"
    );
    // The refused writes were not parsed: no 400 was counted.
    let m = d.metrics.encode_text();
    let by_code = |code| samples_matching(&m, "dataway_ingest_requests_total", &[("code", code)]);
    assert_eq!(by_code("503").len(), 1, "{m}");
    assert!(by_code("400").is_empty(), "{m}");
}
