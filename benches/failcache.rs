//! Fail-cache and WAL throughput: writing bodies durably (one fsync per body, as the
//! daemon does) and replaying them (read the head, remove it).
//!
//! `cargo bench --bench failcache`. Bodies of 64 KiB (a typical gzipped request body).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataway::Category;
use dataway::failcache::{FailCache, Head, Limits, Record};
use dataway::metrics::Metrics;

const BODY: usize = 64 * 1024;
const RECORDS: usize = 32;

fn cache(dir: &std::path::Path) -> FailCache {
    FailCache::open(
        &dir.join("bench.redb"),
        Limits {
            max_capacity: 1 << 40,
            drop_expired_after: Duration::from_secs(3600),
            shed_on_full_disk: true,
        },
        "bench".into(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn body(i: usize) -> Record {
    // Incompressible-looking bytes, like a gzipped body.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let payload: Vec<u8> = (0..BODY)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Record::new(Category::Metric, true, 100, Bytes::from(payload))
}

fn failcache(c: &mut Criterion) {
    let records: Vec<Record> = (0..RECORDS).map(body).collect();
    let mut g = c.benchmark_group("failcache");
    g.throughput(Throughput::Bytes((BODY * RECORDS) as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("write (fsync per body)", |b| {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        b.iter(|| {
            for r in &records {
                c.push(black_box(r)).unwrap();
            }
        })
    });
    g.bench_function("replay (head + remove)", |b| {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        b.iter_batched(
            || {
                for r in &records {
                    c.push(r).unwrap();
                }
            },
            |()| {
                while let Head::Ready(k, r) = c.head().unwrap() {
                    black_box(&r);
                    c.remove(k).unwrap();
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, failcache);
criterion_main!(benches);
