//! Line protocol throughput: parse, encode and gzip of a realistic ~10k point body.
//!
//! `cargo bench --bench lineproto`. The `bytes` group reports MB/s of line protocol text, the
//! `points` group points/s. `gzip` is zlib's level 6 (DataKit's), `gzip_ours` the daemon's
//! request-body compressor (`endpoint::gzip`, libdeflate level 4); the sizes they make are
//! printed once, so the two are compared at the bytes they put on the wire. The
//! `key_places` group is what a sinker condition's `key-counts` costs over forwarded text:
//! `search` (the daemon's, [`dataway::point::Text::key_places`]) against `walk` (every
//! line's tags read in turn, as before it).

use std::hint::black_box;
use std::io::Write as _;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataway::point::reader::{Format, Reader, Source};
use dataway::point::{Noting, ParseOptions, Precision, parse, parse_text};
use flate2::Compression;
use flate2::write::GzEncoder;

mod common;

use common::{POINTS, body};

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
        let zlib = {
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(&body).unwrap();
            gz.finish().unwrap().len()
        };
        let ours = dataway::endpoint::gzip(&body).len();
        println!(
            "gzip of {} bytes: zlib level 6 {zlib} bytes, ours {ours} bytes ({:.3}x)",
            body.len(),
            ours as f64 / zlib as f64
        );
        group.bench_function("gzip_ours", |b| {
            b.iter(|| dataway::endpoint::gzip(black_box(&body)))
        });
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

fn key_places(c: &mut Criterion) {
    // The body as it is (a quarter of its measurements and a fifth of its hosts escaped),
    // and without escapes before the fields (`plain`).
    let escaped = body();
    let mut plain = String::from_utf8(escaped.clone()).unwrap();
    for (from, to) in [
        ("http\\ server", "http_server"),
        ("jvm\\,gc", "jvm_gc"),
        ("edge\\ node", "edge_node"),
        ("billing\\,v2", "billing_v2"),
        ("C:\\data\\logs", "C:/data/logs"),
    ] {
        plain = plain.replace(from, to);
    }
    let keys = vec!["host".to_string()];
    let mut group = c.benchmark_group("key_places");
    group.throughput(Throughput::Elements(POINTS as u64));
    for (name, body) in [("escaped", escaped), ("plain", plain.into_bytes())] {
        let text = parse_text(&body, OPTS).expect("the bench body parses");
        group.bench_function(format!("search/{name}"), |b| {
            b.iter(|| black_box(&text).key_places(&keys))
        });
        // The same answers line by line, as `key-counts` read them before: each line's
        // tags walked, its field set searched for the key and walked if it is there.
        let finder = memchr::memmem::Finder::new("host");
        group.bench_function(format!("walk/{name}"), |b| {
            b.iter(|| {
                let mut fields = 0;
                let mut at = Vec::with_capacity(text.len());
                for l in black_box(&text).lines() {
                    let (tag, from) = l.tag_at_and_fields_start("host");
                    at.push(tag);
                    let rest = &l.as_bytes()[from - l.base()..];
                    if finder.find(rest).is_some() && l.field_keys().any(|k| k == "host") {
                        fields += 1;
                    }
                }
                (at, fields)
            })
        });
        // Noted by the parser instead (what an ingest reads after a sinker asked once):
        // the body read as ingest reads it, without and with noting `host`; the difference
        // is what noting costs, against `search`.
        // And a tag plus a field, as a rule like `host in [..] or usage > 99` asks.
        let both = Noting::keys(&["host".to_string(), "usage".to_string()]);
        // And `version`, with ~2,000 distinct values: given up past 1,024 (what a key
        // resting after a give-up saves each write, see `sinker::Sinkers::note`).
        let id_like = Noting::keys(&["version".to_string()]);
        let keys = Noting::keys(&keys);
        for (how, noting) in [
            ("read", None),
            ("read-noting", Some(keys)),
            ("read-noting-tag-and-field", Some(both)),
            ("read-noting-given-up", Some(id_like)),
        ] {
            group.bench_function(format!("{how}/{name}"), |b| {
                b.iter(|| {
                    let mut r = Reader::new(
                        Source::Bytes(Bytes::copy_from_slice(black_box(&body))),
                        Format::LineProtocol,
                        OPTS,
                        usize::MAX,
                    )
                    .forwarding()
                    .noting(noting.clone());
                    r.next_chunk(usize::MAX, &mut |_| true).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bytes, points, key_places);
criterion_main!(benches);
