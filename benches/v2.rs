//! v2 (DataKit's protobuf) against v1 (line protocol) encoding, per point, on the same
//! non-repetitive points.
//!
//! `cargo bench --bench v2`. Criterion reports points/s (`Throughput::Elements`):
//! * `encode/v1`, `encode/v2`: the wire form of 10,000 points, one body, no size limit;
//! * `bodies/v1`, `bodies/v2`: what an endpoint does per batch (`endpoint::build_bodies`):
//!   encode, cut at `max_raw_body_size` (1 MiB, DataKit's default) by each format's rule, gzip.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataway::config::ContentEncoding;
use dataway::endpoint::build_bodies;
use dataway::point::{ParseOptions, Point, Precision, encode_points, parse, v2};

mod common;

use common::{POINTS, body};

/// The line-protocol bench's body as points.
fn points() -> Vec<Point> {
    let opts = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };
    parse(&body(), opts).expect("the bench body parses")
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
