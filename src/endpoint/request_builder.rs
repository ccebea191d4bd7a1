//! Turns a batch of points into request bodies for one endpoint.
//!
//! In: points of one category. Out: [`Body`]s in the endpoint's wire format, gzipped when
//! asked. Bodies are `Bytes` so a retry (and the fail-cache) resends exactly what the first
//! attempt sent.
//!
//! * v1 (line protocol): each body is a run of whole lines whose uncompressed size stays
//!   within `max_raw_body_size`.
//! * v2 (DataKit's protobuf): each body is one `PBPoints` message, cut by DataKit's own
//!   rule (`point::v2::encode_batches`: encoded size below `max_raw_body_size`).
//!
//! In both, a single point over the limit still goes, alone in its body: dropping it
//! silently would be worse, and the server is the one to judge it.

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor};

use crate::config::ContentEncoding;
use crate::point::{Point, Text, v2};

/// One request body.
#[derive(Debug, Clone)]
pub struct Body {
    /// What goes on the wire (gzipped if `gzipped`).
    pub payload: Bytes,
    /// Uncompressed size.
    pub raw_len: usize,
    /// Points in this body (the `X-Points` header).
    pub points: usize,
    /// Whether `payload` is gzip.
    pub gzipped: bool,
    /// Headers the body travels with, through retries and the fail-cache (the
    /// `X-Global-Tags` of an `enable_sinker` group: see `grouping`).
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// Line protocol (v1) or protobuf (v2): the `Content-Type`.
    pub encoding: ContentEncoding,
}

impl Body {
    /// The `Content-Type` DataKit sends for this body's encoding.
    pub fn content_type(&self) -> &'static str {
        content_type(self.encoding)
    }
}

/// The `Content-Type` DataKit sends for `encoding`.
pub fn content_type(encoding: ContentEncoding) -> &'static str {
    match encoding {
        ContentEncoding::V1 => "application/line-protocol",
        ContentEncoding::V2 => v2::CONTENT_TYPE,
    }
}

/// Encodes `points` as `encoding`, cut into bodies by `max_raw` (see the module doc).
pub fn build_bodies(
    points: &[Point],
    max_raw: usize,
    gzip: bool,
    encoding: ContentEncoding,
) -> Vec<Body> {
    match encoding {
        ContentEncoding::V1 => build_lines(points, max_raw, gzip),
        ContentEncoding::V2 => v2::encode_batches(points, max_raw)
            .into_iter()
            .map(|b| finish(&b.payload, b.points, gzip, ContentEncoding::V2))
            .collect(),
    }
}

/// Line protocol, cut into bodies before `max_raw` bytes.
fn build_lines(points: &[Point], max_raw: usize, gzip: bool) -> Vec<Body> {
    let mut bodies = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(max_raw.min(1 << 20));
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut n = 0;
    for p in points {
        line.clear();
        p.encode_into(&mut line);
        let extra = if buf.is_empty() {
            line.len()
        } else {
            line.len() + 1
        };
        if !buf.is_empty() && buf.len() + extra > max_raw {
            bodies.push(finish(&buf, n, gzip, ContentEncoding::V1));
            buf.clear();
            n = 0;
        }
        if !buf.is_empty() {
            buf.push(b'\n');
        }
        buf.extend_from_slice(&line);
        n += 1;
    }
    if n > 0 {
        bodies.push(finish(&buf, n, gzip, ContentEncoding::V1));
    }
    bodies
}

/// Line protocol bodies cut from text already encoded ([`Text::runs`]): the same bodies
/// [`build_bodies`] makes from the same points, with a copy at most instead of an encode.
pub fn build_text_bodies(text: &Text, max_raw: usize, gzip: bool) -> Vec<Body> {
    text.runs(max_raw)
        .into_iter()
        .map(|(raw, points)| Body {
            payload: if gzip { self::gzip(&raw) } else { raw.clone() },
            raw_len: raw.len(),
            points,
            gzipped: gzip,
            headers: Vec::new(),
            encoding: ContentEncoding::V1,
        })
        .collect()
}

/// libdeflate's level for request bodies. Compression is most of the daemon's CPU, so the
/// compressor is chosen by measurement (BENCHMARKS.md, *gzip of request bodies*): level 5
/// makes bodies 3-5% smaller than zlib's default level 6 (what DataKit sends) in 0.51-0.56
/// of its CPU on two realistic datasets; level 4 is ~10% faster but up to 5% larger.
const GZIP_LEVEL: i32 = 5;

/// A compressor and its output buffer, reused from body to body: no compressor state or
/// worst-case output buffer is allocated per body.
struct Gzipper {
    compressor: Compressor,
    out: Vec<u8>,
}

/// The idle gzippers. Bodies are gzipped on the blocking pool, whose threads come and go
/// (a dozen under load): one gzipper per thread held ~2 MB on each (heap profile,
/// BENCHMARKS.md). Pooled, no more are kept than there are CPUs to run them.
static GZIPPERS: Mutex<Vec<Gzipper>> = Mutex::new(Vec::new());

/// How many idle gzippers [`GZIPPERS`] keeps.
fn gzippers_kept() -> usize {
    static KEPT: OnceLock<usize> = OnceLock::new();
    *KEPT.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// `raw` as one gzip member.
pub fn gzip(raw: &[u8]) -> Bytes {
    let idle = GZIPPERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut g = idle.unwrap_or_else(|| Gzipper {
        compressor: Compressor::new(CompressionLvl::new(GZIP_LEVEL).expect("a valid level")),
        out: Vec::new(),
    });
    // Grown, never shrunk: a buffer cut down for a small body (a sinker's share) was
    // zeroed again up to the next large one's bound, a memset as long as the body.
    let bound = g.compressor.gzip_compress_bound(raw.len());
    if g.out.len() < bound {
        g.out.resize(bound, 0);
    }
    let n = g
        .compressor
        .gzip_compress(raw, &mut g.out)
        .expect("the output buffer is the compressor's own bound");
    let payload = Bytes::copy_from_slice(&g.out[..n]);
    // Keep the buffer for the next body, unless one huge body grew it.
    if g.out.capacity() > 4 << 20 {
        g.out = Vec::new();
    }
    let mut pool = GZIPPERS.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < gzippers_kept() {
        pool.push(g);
    }
    payload
}

fn finish(raw: &[u8], points: usize, gzip: bool, encoding: ContentEncoding) -> Body {
    let payload = if gzip {
        self::gzip(raw)
    } else {
        Bytes::copy_from_slice(raw)
    };
    Body {
        payload,
        raw_len: raw.len(),
        points,
        gzipped: gzip,
        headers: Vec::new(),
        encoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{FieldValue, ParseOptions, Precision, parse};
    use std::io::Read;

    const OPTS: ParseOptions = ParseOptions {
        precision: Precision::Nanos,
        default_time: 0,
    };

    fn points(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                measurement: "cpu".into(),
                tags: vec![("host".into(), format!("h{i}"))],
                fields: vec![("usage".into(), FieldValue::Float(i as f64 / 3.0))],
                time: 1_700_000_000_000_000_000 + i as i64,
            })
            .collect()
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_body_decompresses_to_the_encoded_points() {
        let pts = points(100);
        let bodies = build_bodies(&pts, 1 << 20, true, ContentEncoding::V1);
        assert_eq!(bodies.len(), 1);
        let raw = gunzip(&bodies[0].payload);
        assert_eq!(raw.len(), bodies[0].raw_len);
        let expected: Vec<String> = pts.iter().map(|p| p.to_line_protocol()).collect();
        assert_eq!(String::from_utf8(raw.clone()).unwrap(), expected.join("\n"));
        let back = parse(&raw, OPTS).unwrap();
        assert_eq!(back, pts);
    }

    /// A pooled buffer is reused: a small body after a large one (and the reverse)
    /// is exactly its own bytes, and no larger than zlib's default level makes it.
    #[test]
    fn gzip_reuses_its_buffer_and_each_body_is_whole() {
        let big: Vec<u8> = points(20_000)
            .iter()
            .flat_map(|p| p.to_line_protocol().into_bytes().into_iter().chain([b'\n']))
            .collect();
        for raw in [&big[..], b"m v=1", &big[..1000], &big] {
            let z = gzip(raw);
            assert_eq!(gunzip(&z), raw);
            let mut zlib =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut zlib, raw).unwrap();
            let zlib = zlib.finish().unwrap();
            assert!(
                z.len() <= zlib.len() + 32,
                "{} vs zlib {}",
                z.len(),
                zlib.len()
            );
        }
    }

    #[test]
    fn bodies_are_cut_before_the_raw_limit_and_keep_every_point_in_order() {
        let pts = points(1000);
        let limit = 4096;
        let bodies = build_bodies(&pts, limit, false, ContentEncoding::V1);
        assert!(bodies.len() > 1);
        assert_eq!(bodies.iter().map(|b| b.points).sum::<usize>(), 1000);
        let mut all = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            assert!(b.raw_len <= limit, "{} > {limit}", b.raw_len);
            assert_eq!(b.payload.len(), b.raw_len);
            // Cut as late as possible: the next body's first line would not have fit.
            if let Some(next) = bodies.get(i + 1) {
                let first = next.payload.split(|&c| c == b'\n').next().unwrap();
                assert!(b.raw_len + 1 + first.len() > limit);
            }
            all.extend(parse(&b.payload, OPTS).unwrap());
        }
        assert_eq!(all, pts);
    }

    #[test]
    fn an_oversized_point_travels_alone() {
        let mut big = points(3);
        big[1]
            .fields
            .push(("blob".into(), FieldValue::Str("x".repeat(5000))));
        for enc in [ContentEncoding::V1, ContentEncoding::V2] {
            let bodies = build_bodies(&big, 1024, false, enc);
            assert_eq!(
                bodies.iter().map(|b| b.points).collect::<Vec<_>>(),
                vec![1, 1, 1]
            );
        }
    }

    /// Bodies cut from text are byte for byte those encoded from the same points: same
    /// cuts, same bytes, same counts, gzipped or not.
    #[test]
    fn text_bodies_are_the_bodies_encoded_from_the_same_points() {
        let pts: Vec<Point> = points(500)
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                p.tags[0].1 = format!("h{}", i * 37 % 1000);
                p
            })
            .collect();
        let text = Text::from_points(&pts);
        assert_eq!(text.to_points(), pts);
        for gzip in [false, true] {
            for max_raw in [1, 40, 100, 1000, 7777, 1 << 20] {
                let from_text = build_text_bodies(&text, max_raw, gzip);
                let from_points = build_bodies(&pts, max_raw, gzip, ContentEncoding::V1);
                assert_eq!(from_text.len(), from_points.len(), "max_raw {max_raw}");
                for (t, p) in from_text.iter().zip(&from_points) {
                    assert_eq!(t.payload, p.payload, "max_raw {max_raw}");
                    assert_eq!(
                        (t.points, t.raw_len, t.gzipped),
                        (p.points, p.raw_len, p.gzipped)
                    );
                }
            }
        }
    }

    #[test]
    fn v2_bodies_are_gzipped_pbpoints_below_the_raw_limit() {
        let pts = points(1000);
        let limit = 4096;
        let bodies = build_bodies(&pts, limit, true, ContentEncoding::V2);
        assert!(bodies.len() > 1);
        let mut all = Vec::new();
        for b in &bodies {
            assert_eq!(
                b.content_type(),
                "application/protobuf; proto=com.guance.Point"
            );
            assert!(b.gzipped);
            let raw = gunzip(&b.payload);
            assert_eq!(raw.len(), b.raw_len);
            assert!(b.raw_len < limit, "{} >= {limit}", b.raw_len);
            let got = v2::decode(&raw, OPTS).unwrap();
            assert_eq!(got.len(), b.points);
            all.extend(got);
        }
        assert_eq!(all, pts);
    }
}
