//! Line protocol throughput: parse, encode and gzip of a realistic ~10k point body.
//!
//! `cargo bench --bench lineproto`. The `bytes` group reports MB/s of line protocol text, the
//! `points` group points/s.

use std::hint::black_box;
use std::io::Write as _;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataway::point::{ParseOptions, Precision, parse};
use flate2::Compression;
use flate2::write::GzEncoder;

const POINTS: usize = 10_000;

/// xorshift64*: a deterministic body without extra dependencies.
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

/// Mixed metric lines in the shape agents send: 3-5 tags, 3-6 fields of every type, some
/// strings and names with escapes, millisecond-spaced nanosecond timestamps.
fn body() -> Vec<u8> {
    const MEASUREMENTS: &[&str] = &[
        "cpu",
        "mem",
        "disk",
        "net",
        "nginx_requests",
        "http\\ server",
        "jvm\\,gc",
        "温度",
    ];
    const HOSTS: &[&str] = &["web-01", "web-02", "db-primary", "cache-7", "edge\\ node"];
    const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "ap-south-1"];
    const SERVICES: &[&str] = &["checkout", "search", "auth", "billing\\,v2", "inventory"];
    const PATHS: &[&str] = &[
        "/",
        "/api/v1/orders",
        "/health",
        "C:\\data\\logs",
        "/var/lib/x",
    ];
    const MESSAGES: &[&str] = &[
        "\"ok\"",
        "\"request served in 12ms\"",
        "\"GET /api/v1/items?id=42 200\"",
        "\"user said \\\"hi\\\", left\"",
        "\"path C:\\\\temp\\\\file.txt, size=12\"",
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
        let extra_tags = rng.below(3);
        if extra_tags > 0 {
            write!(out, ",path={}", rng.pick(PATHS)).unwrap();
        }
        if extra_tags > 1 {
            write!(out, ",version=1.{}.{}", rng.below(20), rng.below(100)).unwrap();
        }
        let (whole, frac) = (rng.below(100), rng.below(1000));
        write!(out, " usage={whole}.{frac}").unwrap();
        write!(out, ",count={}i", rng.below(1_000_000)).unwrap();
        write!(out, ",bytes={}u", rng.next() >> 20).unwrap();
        let extra_fields = rng.below(4);
        if extra_fields > 0 {
            write!(out, ",ok={}", if rng.below(2) == 0 { "true" } else { "f" }).unwrap();
        }
        if extra_fields > 1 {
            write!(out, ",msg={}", rng.pick(MESSAGES)).unwrap();
        }
        if extra_fields > 2 {
            write!(out, ",latency=-{}.{}e-3", rng.below(10), rng.below(100)).unwrap();
        }
        time += 1_000_000 + rng.below(1000) as i64;
        write!(out, " {time}").unwrap();
    }
    out
}

const OPTS: ParseOptions = ParseOptions {
    precision: Precision::Nanos,
    default_time: 0,
};

fn bench_group(c: &mut Criterion, name: &str, throughput: Throughput, with_gzip: bool) {
    let body = body();
    let points = parse(&body, OPTS).expect("the bench body parses");
    assert_eq!(points.len(), POINTS);

    let mut group = c.benchmark_group(name);
    group.throughput(throughput);
    group.bench_function("parse", |b| {
        b.iter(|| parse(black_box(&body), black_box(OPTS)).unwrap())
    });
    let mut out = Vec::with_capacity(body.len() + body.len() / 4);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            for (i, p) in black_box(&points).iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                p.encode_into(&mut out);
            }
            black_box(out.len())
        })
    });
    if with_gzip {
        group.bench_function("gzip", |b| {
            b.iter(|| {
                let mut gz =
                    GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::default());
                gz.write_all(black_box(&body)).unwrap();
                gz.finish().unwrap()
            })
        });
    }
    group.finish();
}

fn bytes(c: &mut Criterion) {
    let len = body().len() as u64;
    bench_group(c, "lineproto_bytes", Throughput::Bytes(len), true);
}

fn points(c: &mut Criterion) {
    bench_group(
        c,
        "lineproto_points",
        Throughput::Elements(POINTS as u64),
        false,
    );
}

criterion_group!(benches, bytes, points);
criterion_main!(benches);

// The daemon's allocator (see src/main.rs), so these numbers are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
