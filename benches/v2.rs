//! v2 (DataKit's protobuf) against v1 (line protocol) encoding, per point, on the same
//! non-repetitive points.
//!
//! `cargo bench --bench v2`. Criterion reports points/s (`Throughput::Elements`):
//! * `encode/v1`, `encode/v2`: the wire form of 10,000 points, one body, no size limit;
//! * `bodies/v1`, `bodies/v2`: what an endpoint does per batch (`endpoint::build_bodies`):
//!   encode, cut at `max_raw_body_size` (1 MiB, DataKit's default) by each format's rule, gzip.

use std::hint::black_box;
use std::io::Write as _;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataway::config::ContentEncoding;
use dataway::endpoint::build_bodies;
use dataway::point::{ParseOptions, Point, Precision, encode_points, parse, v2};

const POINTS: usize = 10_000;

/// xorshift64*: deterministic without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Metric points in the shape agents send: 3-5 tags, 3-6 fields of every type, random
/// values (no two points alike), some names and strings with escapes and unicode.
fn points() -> Vec<Point> {
    const MEASUREMENTS: &[&str] = &["cpu", "mem", "disk", "net", "http\\ server", "温度"];
    const HOSTS: &[&str] = &["web-01", "web-02", "db-primary", "cache-7", "edge\\ node"];
    const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "ap-south-1"];
    const SERVICES: &[&str] = &["checkout", "search", "auth", "billing\\,v2", "inventory"];
    const MESSAGES: &[&str] = &[
        "\"request served\"",
        "\"GET /api/v1/items?id=42 200\"",
        "\"user said \\\"hi\\\", left\"",
        "\"🚀 deploy finished\"",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(POINTS * 200);
    let mut time: i64 = 1_700_000_000_000_000_000;
    for i in 0..POINTS {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(rng.pick(MEASUREMENTS).as_bytes());
        write!(out, ",host={}", rng.pick(HOSTS)).unwrap();
        write!(out, ",region={}", rng.pick(REGIONS)).unwrap();
        write!(out, ",service={}", rng.pick(SERVICES)).unwrap();
        if rng.below(2) == 0 {
            write!(out, ",version=1.{}.{}", rng.below(20), rng.below(100)).unwrap();
        }
        write!(out, " usage={}.{}", rng.below(100), rng.below(1000)).unwrap();
        write!(out, ",count={}i", rng.below(1_000_000)).unwrap();
        write!(out, ",bytes={}u", rng.next() >> 20).unwrap();
        let extra = rng.below(4);
        if extra > 0 {
            write!(out, ",ok={}", rng.below(2) == 0).unwrap();
        }
        if extra > 1 {
            write!(out, ",msg={}", rng.pick(MESSAGES)).unwrap();
        }
        if extra > 2 {
            write!(out, ",latency=-{}.{}e-3", rng.below(10), rng.below(100)).unwrap();
        }
        time += 1_000_000 + rng.below(1000) as i64;
        write!(out, " {time}").unwrap();
    }
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    parse(&out, opts).expect("the bench body parses")
}

fn bench(c: &mut Criterion) {
    let points = points();
    assert_eq!(points.len(), POINTS);

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(POINTS as u64));
    let mut out = Vec::with_capacity(POINTS * 200);
    group.bench_function("v1", |b| {
        b.iter(|| {
            out.clear();
            encode_points(black_box(&points), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("v2", |b| b.iter(|| v2::encode(black_box(&points)).len()));
    group.finish();

    let mut group = c.benchmark_group("bodies");
    group.throughput(Throughput::Elements(POINTS as u64));
    for (name, enc) in [("v1", ContentEncoding::V1), ("v2", ContentEncoding::V2)] {
        group.bench_function(name, |b| {
            b.iter(|| build_bodies(black_box(&points), 1 << 20, true, enc).len())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

// The daemon's allocator (see src/main.rs), so these numbers are the daemon's: v2 encoding
// allocates (the generated message owns copies of every key and string).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
