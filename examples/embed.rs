//! Embedding dataway in another program: build points, hand them to the router, stop.
//!
//! Run: `cargo run --example embed` (writes to ./dataway-out/metric.lp), or set
//! `ENV_DATAWAY=https://openway.example.com?token=tkn_...` to send to a Dataway server.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataway::config::Config;
use dataway::endpoint::OpenCaches;
use dataway::metrics::Metrics;
use dataway::{Category, Dataway, FieldValue, Point};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::load(None, |k| std::env::var(k).ok())?;
    let metrics = Arc::new(Metrics::new());
    // No sinkers here; the registry lets endpoints with the same URL share a fail-cache file.
    let caches = Arc::new(OpenCaches::default());
    let dw = Dataway::start(&cfg.dataway, metrics.clone(), &caches, Vec::new())?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    let points = (0..3)
        .map(|i| Point {
            measurement: "cpu".into(),
            tags: vec![("host".into(), format!("web-{i}"))],
            fields: vec![("usage".into(), FieldValue::Float(10.0 * i as f64))],
            time: now,
        })
        .collect();
    // `write` waits for room when queues are full; `try_write` refuses instead.
    dw.write(Category::Metric, points).await?;

    let report = dw.shutdown(Duration::from_secs(10)).await;
    println!("delivered; {} points abandoned", report.abandoned_points);
    print!(
        "{}",
        metrics
            .encode_text()
            .lines()
            .filter(|l| l.starts_with("datakit_io_dataway_point_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!();
    Ok(())
}
