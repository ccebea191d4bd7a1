//! Sinker conditions: points/s of one 3-clause rule through the DataKit filter plugin, the
//! same rule in native Rust, and a hand-written plugin reading the batch through each WIT
//! shape; plus the cost of loading (reloading) a plugin with and without the compile cache.
//!
//! `cargo bench --bench sinker` (builds the plugins for wasm32-wasip2 first). The rule:
//! `{ measurement = 'cpu' and host in ['web-1','web-2'] and usage > 90 }`.
//!
//! Groups: `sinker_match/<batch size>` (points/s; `native`, `datakit-filter`,
//! `datakit-filter-text` (over the checked text), `datakit-filter-noted` (over text whose
//! keys the parser noted), `empty`,
//! `columnar`, `per-point`, `per-point-full`) and `sinker_reload/<how>/<plugin>` (time of one
//! `Runtime::load`: compile or cache read, instantiate, `init`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataway::Category;
use dataway::point::reader::{Format, Reader, Source};
use dataway::point::{Content, FieldValue, Noting, ParseOptions, Point, Precision, Text};
use dataway::sinker::{Limits, LogFn, Plugin, Runtime};

#[allow(dead_code)]
#[path = "../tests/common/plugins.rs"]
mod plugins;

const RULE: &str = "{ measurement = 'cpu' and host in ['web-1','web-2'] and usage > 90 }";
const SIZES: [usize; 4] = [1, 64, 1024, 8192];
const SHAPES: [&str; 4] = ["empty", "columnar", "per-point", "per-point-full"];

/// xorshift64: deterministic points without extra dependencies.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Metric points as agents send them: measurements cpu/mem/disk, hosts web-1..web-9, 3 tags,
/// 4 fields with `usage` a float in 0..100 (10% above 90). Point 0 matches, so a batch of one
/// runs every clause; overall about 1/3 * 2/9 * 1/10 = 0.74% match.
fn points(n: usize) -> Vec<Point> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let (m, host, usage) = if i == 0 {
                ("cpu", 1, 95.5)
            } else {
                (
                    ["cpu", "mem", "disk"][rng.below(3) as usize],
                    1 + rng.below(9),
                    rng.below(1000) as f64 / 10.0,
                )
            };
            Point {
                measurement: m.to_string(),
                tags: vec![
                    ("host".into(), format!("web-{host}")),
                    ("region".into(), "eu-west-1".into()),
                    ("service".into(), "checkout".into()),
                ],
                fields: vec![
                    ("usage".into(), FieldValue::Float(usage)),
                    ("load".into(), FieldValue::Int(rng.below(16) as i64)),
                    ("total".into(), FieldValue::Uint(1 << 34)),
                    ("ok".into(), FieldValue::Bool(true)),
                ],
                time: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
            }
        })
        .collect()
}

/// The rule in native Rust over the points: what the WASM versions are measured against.
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
                    .find(|(k, _)| k == "usage")
                    .is_some_and(|(_, v)| matches!(v, FieldValue::Float(f) if *f > 90.0))
        })
        .collect()
}

/// `points` as line protocol, read as ingest reads a write while noting `keys` and the
/// measurements.
fn noted_text(points: &[Point], keys: &[&str]) -> Text {
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    let noting = Noting {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        measurement: true,
    };
    let body = Text::from_points(points).joined();
    let source = Source::Bytes(body);
    let mut reader = Reader::new(source, Format::LineProtocol, opts, usize::MAX)
        .forwarding()
        .noting(Some(noting));
    let chunk = reader.next_chunk(usize::MAX, &mut |_| true).unwrap();
    let text = chunk.text.expect("a forwarding reader gives text");
    assert_eq!(text.len(), points.len(), "one chunk holds the body");
    text
}

fn load(rt: &Runtime, path: &Path, config: &str) -> Plugin {
    let quiet: LogFn = Arc::new(|_, _| {});
    let bytes = std::fs::read(path).unwrap();
    rt.load(&bytes, config, &Limits::default(), quiet)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn matching(c: &mut Criterion) {
    let rt = Runtime::new(None).unwrap();
    let shapes_wasm = plugins::rust_plugin("bench-shapes");
    let mut conditions = vec![(
        "datakit-filter",
        load(&rt, &plugins::rust_plugin("datakit-filter"), RULE),
    )];
    for shape in SHAPES {
        conditions.push((shape, load(&rt, &shapes_wasm, shape)));
    }
    for n in SIZES {
        let parsed = points(n);
        let want = native(&parsed);
        // The same points as the checked text the daemon keeps when it forwards.
        let text = Arc::new(Content::Text(Text::from_points(&parsed)));
        // The same text as ingest reads it once a sinker has asked for the measurements,
        // `host` and `usage`: the parser noted their columns while parsing.
        let noted = Arc::new(Content::Text(noted_text(&parsed, &["host", "usage"])));
        let batch = Arc::new(Content::Points(parsed.clone()));
        for (how, text) in [("text", &text), ("noted text", &noted)] {
            assert_eq!(
                conditions[0].1.matches(Category::Metric, text).unwrap(),
                want,
                "datakit-filter over {how} disagrees with native at {n} points"
            );
        }
        for (name, p) in &conditions {
            let got = p.matches(Category::Metric, &batch).unwrap();
            if *name == "empty" {
                assert_eq!(got, vec![false; n]);
            } else {
                assert_eq!(got, want, "{name} disagrees with native at {n} points");
            }
        }
        if n == *SIZES.last().unwrap() {
            let hits = want.iter().filter(|&&b| b).count();
            println!("{hits} of {n} points match");
        }
        let mut g = c.benchmark_group(format!("sinker_match/{n}"));
        g.throughput(Throughput::Elements(n as u64))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.bench_function("native", |b| b.iter(|| native(black_box(&parsed))));
        for (name, text) in [
            ("datakit-filter-text", &text),
            ("datakit-filter-noted", &noted),
        ] {
            g.bench_function(name, |b| {
                b.iter(|| {
                    conditions[0]
                        .1
                        .matches(Category::Metric, black_box(text))
                        .unwrap()
                })
            });
        }
        for (name, p) in &conditions {
            g.bench_function(*name, |b| {
                b.iter(|| p.matches(Category::Metric, black_box(&batch)).unwrap())
            });
        }
        g.finish();
    }
}

fn reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("sinker_reload");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let cache = tempfile::tempdir().unwrap();
    for (krate, config) in [("example-rust", "cpu,mem"), ("datakit-filter", RULE)] {
        let path = plugins::rust_plugin(krate);
        let cold = Runtime::new(None).unwrap();
        g.bench_with_input(BenchmarkId::new("no-cache", krate), &path, |b, p| {
            b.iter(|| load(&cold, p, config))
        });
        let warm = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
        load(&warm, &path, config); // compiles and writes the cache file
        g.bench_with_input(BenchmarkId::new("warm-cache", krate), &path, |b, p| {
            b.iter(|| load(&warm, p, config))
        });
    }
    g.finish();
    // The Python component takes seconds to compile: timed once here, not by criterion.
    // Skipped where componentize-py is missing (build.rs).
    if cfg!(not(dataway_no_py_toolchain)) {
        let py = plugins::script_plugin("example-py");
        let rt = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
        let t = std::time::Instant::now();
        load(&rt, &py, "cpu");
        let cold = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            load(&rt, &py, "cpu");
        }
        let warm = t.elapsed() / 10;
        println!(
            "sinker_reload/example-py: no-cache {cold:?}, warm-cache {warm:?} ({:.0}x)",
            cold.as_secs_f64() / warm.as_secs_f64()
        );
    }
}

criterion_group!(benches, matching, reload);
criterion_main!(benches);
