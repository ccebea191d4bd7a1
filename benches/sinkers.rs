//! Sinker conditions: points/s through WASM plugins vs the same rule in native Rust, the
//! two WIT shapes, the bare call overhead, and plugin load (reload) time.
//!
//! `cargo bench --bench sinkers`. Builds the plugins first (wasm32-wasip2). The rule is the
//! issue's typical 3-clause one:
//! `{ measurement = 'cpu' and host in ['web-1', 'web-2'] and usage > 90 }`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataway::Category;
use dataway::point::{FieldValue, Point};
use dataway::sinker::{Limits, LogFn, Plugin, Runtime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "../tests/common/plugins.rs"]
mod plugins;

const RULE: &str = "{ measurement = 'cpu' and host in ['web-1', 'web-2'] and usage > 90 }";
const SIZES: [usize; 4] = [1, 64, 1024, 8192];

/// Metric points as agents send them: 3 measurements, 9 hosts, usage 0..100.
fn points(n: usize) -> Vec<Point> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Point {
                measurement: ["cpu", "mem", "disk"][(x % 3) as usize].to_string(),
                tags: vec![
                    ("host".into(), format!("web-{}", 1 + (x >> 8) % 9)),
                    ("region".into(), "eu-west-1".into()),
                    ("service".into(), "checkout".into()),
                ],
                fields: vec![
                    (
                        "usage".into(),
                        FieldValue::Float(((x >> 16) % 1000) as f64 / 10.0),
                    ),
                    ("load".into(), FieldValue::Int(((x >> 24) % 16) as i64)),
                    ("ok".into(), FieldValue::Bool(true)),
                ],
                time: 1_700_000_000_000_000_000 + i as i64,
            }
        })
        .collect()
}

/// The rule in native Rust, over the same points.
fn native(points: &[Point]) -> Vec<bool> {
    points
        .iter()
        .map(|p| {
            p.measurement == "cpu"
                && p.tags
                    .iter()
                    .any(|(k, v)| k == "host" && (v == "web-1" || v == "web-2"))
                && p.fields
                    .iter()
                    .any(|(k, v)| k == "usage" && matches!(v, FieldValue::Float(f) if *f > 90.0))
        })
        .collect()
}

fn load(rt: &Runtime, path: &std::path::Path, config: &str) -> Plugin {
    let quiet: LogFn = Arc::new(|_, _| {});
    rt.load(
        &std::fs::read(path).unwrap(),
        config,
        &Limits::default(),
        quiet,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn conditions(c: &mut Criterion) {
    let rt = Runtime::new(None).unwrap();
    let filter = load(&rt, &plugins::rust_plugin("datakit-filter"), RULE);
    let shapes = plugins::rust_plugin("bench-rule");
    let columnar = load(&rt, &shapes, "columnar");
    let per_point = load(&rt, &shapes, "per-point");
    let empty = load(&rt, &shapes, "empty");
    for n in SIZES {
        let batch = Arc::new(points(n));
        let want = native(&batch);
        for (name, p) in [
            ("datakit-filter", &filter),
            ("columnar", &columnar),
            ("per-point", &per_point),
        ] {
            assert_eq!(
                p.matches(Category::Metric, &batch).unwrap(),
                want,
                "{name} agrees with native"
            );
        }
        let mut g = c.benchmark_group(format!("condition/{n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        g.bench_function("native", |b| b.iter(|| native(black_box(&batch))));
        for (name, p) in [
            ("datakit-filter", &filter),
            ("wit-columnar", &columnar),
            ("wit-per-point", &per_point),
            ("empty-plugin", &empty),
        ] {
            g.bench_function(name, |b| {
                b.iter(|| p.matches(Category::Metric, black_box(&batch)).unwrap())
            });
        }
        g.finish();
    }
}

fn reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("reload");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let cache = tempfile::tempdir().unwrap();
    for krate in ["example-rust", "datakit-filter"] {
        let path = plugins::rust_plugin(krate);
        let config = if krate == "datakit-filter" {
            RULE
        } else {
            "cpu"
        };
        let cold = Runtime::new(None).unwrap();
        g.bench_with_input(BenchmarkId::new("compile+init", krate), &path, |b, p| {
            b.iter(|| load(&cold, p, config))
        });
        let warm = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
        load(&warm, &path, config);
        g.bench_with_input(BenchmarkId::new("cached+init", krate), &path, |b, p| {
            b.iter(|| load(&warm, p, config))
        });
    }
    g.finish();
    // The Python component takes seconds to compile: timed once here, not by criterion.
    if let Some(py) = plugins::script_plugin("example-py") {
        let rt = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
        let t = Instant::now();
        load(&rt, &py, "cpu");
        let cold = t.elapsed();
        let t = Instant::now();
        for _ in 0..10 {
            load(&rt, &py, "cpu");
        }
        let cached = t.elapsed() / 10;
        println!(
            "reload/python example-py: compile+init {cold:?}, cached+init {cached:?} ({:.0}x)",
            cold.as_secs_f64() / cached.as_secs_f64()
        );
    }
}

criterion_group!(benches, conditions, reload);
criterion_main!(benches);
