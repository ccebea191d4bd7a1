//! The seed's metrics after a known workload: exact names, types, labels and values.

mod common;

use std::time::Duration;

use common::{
    MockDataway, Reply, TestDaemon, config_for, lines, sample, samples_matching, wait_metric,
};

#[tokio::test]
async fn metrics_after_a_known_workload() {
    let dw = MockDataway::start().await;
    // First write body: 500 then OK. Second: 400 (refused). Third: OK.
    dw.script([Reply::Status(500), Reply::Status(200), Reply::Status(400)]);
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_m")],
        "workers = 1\ngzip = true",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 10, 0)).await.status(), 200);
    assert!(dw.wait_points(10, Duration::from_secs(10)).await);
    assert_eq!(d.post("metric", lines("cpu", 4, 10)).await.status(), 200);
    assert_eq!(d.post("logging", lines("nginx", 3, 0)).await.status(), 200);
    assert!(
        wait_metric(
            &d.metrics,
            "datakit_io_dataway_point_total{category=\"logging\",status=\"OK\"}",
            3.0
        )
        .await
    );
    assert_eq!(d.post("metric", "broken").await.status(), 400);

    let r = reqwest::get(d.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();

    for (name, kind) in [
        ("datakit_io_dataway_api_request_total", "counter"),
        ("datakit_io_dataway_point_total", "counter"),
        ("datakit_io_dataway_point_bytes_total", "counter"),
        ("datakit_io_dataway_sink_total", "counter"),
        ("datakit_io_dataway_sink_point_total", "counter"),
        ("datakit_io_dataway_not_sink_point_total", "counter"),
        ("datakit_io_dataway_api_latency", "summary"),
        ("datakit_io_flush_failcache_bytes", "summary"),
    ] {
        // sink_point_total and failcache_bytes have no series until sinkers and the
        // fail-cache exist; the others must be typed in the exposition.
        if !matches!(
            name,
            "datakit_io_dataway_sink_point_total" | "datakit_io_flush_failcache_bytes"
        ) {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}\n{text}"
            );
        }
    }
    let s = |series: &str| sample(&text, series);
    // Requests: one logical request per body, whatever its retries.
    assert_eq!(
        s("datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"OK\"}"),
        Some(1.0)
    );
    assert_eq!(
        s("datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"Bad Request\"}"),
        Some(1.0)
    );
    assert_eq!(
        s("datakit_io_dataway_api_request_total{api=\"/v1/write/logging\",status=\"OK\"}"),
        Some(1.0)
    );
    assert_eq!(
        s(
            "datakit_io_dataway_api_request_total{api=\"/v1/write/metric\",status=\"Internal Server Error\"}"
        ),
        None
    );
    // Points by category and final status.
    assert_eq!(
        s("datakit_io_dataway_point_total{category=\"metric\",status=\"OK\"}"),
        Some(10.0)
    );
    assert_eq!(
        s("datakit_io_dataway_point_total{category=\"metric\",status=\"Bad Request\"}"),
        Some(4.0)
    );
    assert_eq!(
        s("datakit_io_dataway_point_total{category=\"logging\",status=\"OK\"}"),
        Some(3.0)
    );
    // Bytes on the wire: the gzipped sizes the mock received.
    let reqs = dw.requests();
    let wire = |path: &str, status: u16| -> f64 {
        // The first (500) attempt sent the same bytes as the OK one: count the final one only.
        reqs.iter()
            .filter(|r| r.path == path && r.status == Some(status))
            .map(|r| r.body.len())
            .sum::<usize>() as f64
    };
    assert_eq!(
        s("datakit_io_dataway_point_bytes_total{category=\"metric\",status=\"OK\"}"),
        Some(wire("/v1/write/metric", 200))
    );
    assert_eq!(
        s("datakit_io_dataway_point_bytes_total{category=\"metric\",status=\"Bad Request\"}"),
        Some(wire("/v1/write/metric", 400))
    );
    assert_eq!(
        s("datakit_io_dataway_point_bytes_total{category=\"logging\",status=\"OK\"}"),
        Some(wire("/v1/write/logging", 200))
    );
    // Latency summary: quantiles 0.5/0.9/0.99 plus _sum and _count per label set. One
    // observation (the 500-then-OK body): every quantile is it, and it spans both attempts
    // and the backoff between them (retry_delay 20ms). Values by distribution:
    // `latency_quantiles_by_value`.
    assert_eq!(
        s("datakit_io_dataway_api_latency_count{api=\"/v1/write/metric\",status=\"OK\"}"),
        Some(1.0)
    );
    let latency =
        s("datakit_io_dataway_api_latency_sum{api=\"/v1/write/metric\",status=\"OK\"}").unwrap();
    assert!(
        latency >= 20.0,
        "latency {latency} ms, under the 20ms backoff"
    );
    for q in ["0.5", "0.9", "0.99"] {
        let v = s(&format!(
            "datakit_io_dataway_api_latency{{api=\"/v1/write/metric\",status=\"OK\",quantile=\"{q}\"}}"
        ));
        assert_eq!(v, Some(latency), "quantile {q}");
    }
    // Sink metrics exist at zero before any sinker.
    assert_eq!(
        s("datakit_io_dataway_sink_total{category=\"metric\"}"),
        Some(0.0)
    );
    assert_eq!(
        s("datakit_io_dataway_not_sink_point_total{category=\"metric\"}"),
        Some(0.0)
    );
    // Our own: ingest answers and points.
    assert_eq!(
        s("dataway_ingest_requests_total{category=\"metric\",code=\"200\"}"),
        Some(2.0)
    );
    assert_eq!(
        s("dataway_ingest_requests_total{category=\"metric\",code=\"400\"}"),
        Some(1.0)
    );
    assert_eq!(
        s("dataway_ingest_points_total{category=\"metric\"}"),
        Some(14.0)
    );
    assert_eq!(
        s("dataway_dropped_points_total{category=\"metric\",reason=\"rejected\"}"),
        Some(4.0)
    );
    // No token in the exposition.
    assert!(!text.contains("tkn_m"), "token leaked into metrics");
    d.stop().await;
}

/// Known answer delays give known latencies: each is at least its delay, plus whatever the
/// loopback round trip costs. Ten bodies in flight at once: five answered at once, four after
/// 2 s, one after 4 s, so the 5th, 9th and 10th smallest latencies (what 0.5, 0.9 and 0.99
/// read on ten observations) fall in the fast, the 2 s and the 4 s group.
#[tokio::test]
async fn latency_quantiles_by_value() {
    const MID: f64 = 2000.0;
    const TOP: f64 = 4000.0;
    let dw = MockDataway::start().await;
    let mut script = vec![Reply::Status(200); 5];
    script.extend(vec![Reply::Slow(Duration::from_millis(MID as u64)); 4]);
    script.push(Reply::Slow(Duration::from_millis(TOP as u64)));
    dw.script(script);
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_l")],
        "workers = 10\ntimeout = \"30s\"",
        "",
    ))
    .await;
    for i in 0..10 {
        assert_eq!(d.post("metric", lines("cpu", 1, i)).await.status(), 200);
    }
    let series = |name: &str| format!("{name}{{api=\"/v1/write/metric\",status=\"OK\"}}");
    assert!(
        wait_metric(
            &d.metrics,
            &series("datakit_io_dataway_api_latency_count"),
            10.0
        )
        .await
    );
    assert_eq!(dw.arrived(), 10, "one attempt per body");
    let text = d.metrics.encode_text();
    let q = |q: &str| {
        sample(
            &text,
            &format!(
                "datakit_io_dataway_api_latency{{api=\"/v1/write/metric\",status=\"OK\",quantile=\"{q}\"}}"
            ),
        )
        .unwrap()
    };
    let (q50, q90, q99) = (q("0.5"), q("0.9"), q("0.99"));
    // Lower bounds are exact (an answer never comes before its delay); upper bounds only say
    // "not from the slower group", with seconds of slack for a loaded machine.
    assert!((0.0..MID).contains(&q50), "0.5: {q50} ms");
    assert!((MID..TOP).contains(&q90), "0.9: {q90} ms");
    assert!(q99 >= TOP, "0.99: {q99} ms");
    // _sum: at least the delays; and the quantiles are order statistics of the same ten
    // values, which bounds the sum from both sides.
    let sum = sample(&text, &series("datakit_io_dataway_api_latency_sum")).unwrap();
    assert!(sum >= 4.0 * MID + TOP, "sum {sum}");
    assert!(
        sum >= q50 + 3.0 * MID + q90 + q99,
        "sum {sum}, quantiles {q50} {q90} {q99}"
    );
    assert!(
        sum <= 5.0 * q50 + 4.0 * q90 + q99,
        "sum {sum}, quantiles {q50} {q90} {q99}"
    );
    d.stop().await;
}

/// `datakit_io_flush_failcache_bytes` is observed once per body resent from the fail-cache,
/// with the body's size on the wire: exact values from the mock's side.
#[tokio::test]
async fn failcache_bytes_summary_by_value() {
    let dw = MockDataway::start().await;
    dw.set_default(Some(Reply::Status(500)));
    let d = TestDaemon::start(config_for(
        &[dw.url("tkn_f")],
        "max_retry_count = 0\n[dataway.fail_cache]\nclean_interval = \"50ms\"",
        "",
    ))
    .await;
    assert_eq!(d.post("metric", lines("cpu", 3, 0)).await.status(), 200);
    assert_eq!(d.post("metric", lines("cpu", 40, 100)).await.status(), 200);
    // Both bodies failed and wait in the cache; only then does the server recover.
    let records = |text: &str| -> f64 {
        samples_matching(text, "dataway_failcache_records", &[])
            .iter()
            .map(|s| s.value)
            .sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while records(&d.metrics.encode_text()) != 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bodies never cached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dw.set_default(None);
    assert!(
        wait_metric(
            &d.metrics,
            "datakit_io_flush_failcache_bytes_count{category=\"metric\"}",
            2.0
        )
        .await
    );
    let resent: Vec<f64> = dw
        .requests()
        .iter()
        .filter(|r| r.ok())
        .map(|r| {
            assert_eq!(r.header("x-fail-cache-retry"), Some("1"));
            r.body.len() as f64
        })
        .collect();
    assert_eq!(resent.len(), 2, "{resent:?}");
    let (small, big) = (resent[0].min(resent[1]), resent[0].max(resent[1]));
    assert!(small < big, "{resent:?}");
    let text = d.metrics.encode_text();
    let s = |series: &str| sample(&text, series);
    assert_eq!(
        s("datakit_io_flush_failcache_bytes_sum{category=\"metric\"}"),
        Some(small + big)
    );
    for (q, want) in [("0.5", small), ("0.9", big), ("0.99", big)] {
        assert_eq!(
            s(&format!(
                "datakit_io_flush_failcache_bytes{{category=\"metric\",quantile=\"{q}\"}}"
            )),
            Some(want),
            "quantile {q}"
        );
    }
    d.stop().await;
}
