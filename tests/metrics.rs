//! The seed's metrics after a known workload: exact names, types, labels and values.

mod common;

use std::time::Duration;

use common::{MockDataway, Reply, TestDaemon, config_for, lines, sample, wait_metric};

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
    // Latency summary: quantiles 0.5/0.9/0.99 plus _sum and _count per label set.
    for q in ["0.5", "0.9", "0.99"] {
        let v = s(&format!(
            "datakit_io_dataway_api_latency{{api=\"/v1/write/metric\",status=\"OK\",quantile=\"{q}\"}}"
        ));
        assert!(v.is_some_and(|v| v >= 0.0), "quantile {q}: {v:?}");
    }
    assert_eq!(
        s("datakit_io_dataway_api_latency_count{api=\"/v1/write/metric\",status=\"OK\"}"),
        Some(1.0)
    );
    assert!(
        s("datakit_io_dataway_api_latency_sum{api=\"/v1/write/metric\",status=\"OK\"}").unwrap()
            > 0.0
    );
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
