//! DataKit's v2 wire format: points as one protobuf `PBPoints` message (`com.guance.Point`),
//! the body DataKit uploads with `content_encoding = "v2"`.
//!
//! In: [`Point`]s for [`encode`] / [`encode_batches`]; a v2 body (not gzipped) for
//! [`decode`]. Out: `PBPoints` bytes; [`Point`]s. The message types are generated at build
//! time (build/proto.rs) from DataKit's own schema, vendored as `v2/point.proto`.
//!
//! # Mapping
//!
//! A `PBPoint` is `name`, `time` (ns) and a list of `Field`s; a tag is a `Field` with
//! `is_tag = true` and a string value. Our point encodes as its tags first (in order), then
//! its fields (in order): `Int` → `i`, `Uint` → `u`, `Float` → `f`, `Bool` → `b`, `Str` →
//! `s`. Decoding is the inverse, with the checks line protocol makes (so that every point
//! that gets in can also leave as line protocol: to a v1 endpoint, the WAL, a `file://`
//! endpoint):
//!
//! * v2 values our model has no type for are **refused**, never dropped or converted:
//!   bytes (`d`), `google.protobuf.Any` (`a`: DataKit's arrays and maps), a field with no
//!   value, and a tag whose value is not a string. The error names the point and the key.
//! * Refused too, as line protocol refuses them: an empty measurement, key or tag value, a
//!   duplicate tag key or field key, a point without fields, a NaN or infinite float, and a
//!   newline anywhere (names, tag values, string values: our line protocol cannot carry it).
//! * Time 0 means "not set" (as in DataKit): it becomes [`ParseOptions::default_time`];
//!   other times are scaled by [`ParseOptions::precision`], with overflow checks.
//! * Dropped, as DataKit drops them when it writes line protocol: a field's `unit` and
//!   metric `type`, and the point's `warns` and `debugs` (build-time diagnostics that
//!   "should not write to the final storage", says the schema).
//!
//! # Batches
//!
//! [`encode_batches`] cuts a run of points into bodies with DataKit's own rule (cliutils
//! `point.Encoder.Next`, used by DataKit's dataway with a buffer of `max_raw_body_size`):
//! points are taken while the sum of their *approximate* sizes ([`approx_size`], DataKit's
//! `Point.Size()`) stays within the limit; then, while the real encoded size is not below
//! the limit, tail points are given back to the next body, 1, then 2, then 4, ... at a time.
//! One difference: a point that alone is not below the limit travels alone in its body,
//! where DataKit drops it (and, through a bug, the points after it in that batch): the
//! server is the one to judge it, as for line protocol.

use prost::Message;

use super::{FieldValue, ParseOptions, Point};

/// The types generated from `v2/point.proto` (DataKit's protobuf package `point`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/point.rs"));
}

use pb::field::Val;

/// The `Content-Type` of a v2 body, as DataKit sends it (and as its HTTP API recognises it).
pub const CONTENT_TYPE: &str = "application/protobuf; proto=com.guance.Point";

/// Why a v2 body was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a `PBPoints` message.
    #[error("body is not a v2 (protobuf PBPoints) message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A point that cannot be taken as it is.
    #[error("point {index} (`{measurement}`): {message}")]
    Point {
        /// 0-based position in the body.
        index: usize,
        measurement: String,
        message: String,
    },
}

/// The `PBPoint` of `p`: its tags (as `is_tag` string fields), then its fields.
pub fn to_pb(p: &Point) -> pb::PbPoint {
    let mut fields = Vec::with_capacity(p.tags.len() + p.fields.len());
    for (k, v) in &p.tags {
        fields.push(pb::Field {
            key: k.clone(),
            is_tag: true,
            val: Some(Val::S(v.clone())),
            ..Default::default()
        });
    }
    for (k, v) in &p.fields {
        let val = match v {
            FieldValue::Int(i) => Val::I(*i),
            FieldValue::Uint(u) => Val::U(*u),
            FieldValue::Float(f) => Val::F(*f),
            FieldValue::Bool(b) => Val::B(*b),
            FieldValue::Str(s) => Val::S(s.clone()),
        };
        fields.push(pb::Field {
            key: k.clone(),
            val: Some(val),
            ..Default::default()
        });
    }
    pb::PbPoint {
        name: p.measurement.clone(),
        fields,
        time: p.time,
        warns: Vec::new(),
        debugs: Vec::new(),
    }
}

/// All of `points` as one `PBPoints` body (no size limit).
pub fn encode(points: &[Point]) -> Vec<u8> {
    pb::PbPoints {
        arr: points.iter().map(to_pb).collect(),
    }
    .encode_to_vec()
}

/// DataKit's approximate size of a point (cliutils `Point.Size()`), which decides how many
/// points a body is first filled with: the name, and per tag or field its key plus 13
/// (is_tag 1, time 8, metric type 4) plus 8 for a number, 1 for a bool, the length of a
/// string.
pub fn approx_size(p: &Point) -> usize {
    const PER_KEY: usize = 1 + 8 + 4;
    let tags: usize = p
        .tags
        .iter()
        .map(|(k, v)| k.len() + PER_KEY + v.len())
        .sum();
    let fields: usize = p
        .fields
        .iter()
        .map(|(k, v)| {
            k.len()
                + PER_KEY
                + match v {
                    FieldValue::Int(_) | FieldValue::Uint(_) | FieldValue::Float(_) => 8,
                    FieldValue::Bool(_) => 1,
                    FieldValue::Str(s) => s.len(),
                }
        })
        .sum();
    p.measurement.len() + tags + fields
}

/// One body of [`encode_batches`].
#[derive(Debug, Clone)]
pub struct Batch {
    /// The `PBPoints` message.
    pub payload: Vec<u8>,
    /// How many points it holds (the next ones in the input, in order).
    pub points: usize,
}

/// Encodes `points` in order as bodies cut by DataKit's rule (see the module doc): each
/// body's encoded size is below `max_raw`, except a body holding a single point that alone
/// is not.
pub fn encode_batches(points: &[Point], max_raw: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut next = 0;
    while next < points.len() {
        let mut arr = Vec::new();
        let mut approx = 0;
        for p in &points[next..] {
            let size = approx_size(p);
            if approx + size > max_raw && !arr.is_empty() {
                break;
            }
            approx += size;
            arr.push(to_pb(p));
            if approx > max_raw {
                break; // an oversized point: alone
            }
        }
        let mut msg = pb::PbPoints { arr };
        // DataKit's `tryTrim`: give back 1, 2, 4, ... tail points until the body fits.
        let mut trim = 1;
        while msg.arr.len() > 1 && msg.encoded_len() >= max_raw {
            let n = trim.min(msg.arr.len() - 1);
            msg.arr.truncate(msg.arr.len() - n);
            trim *= 2;
        }
        next += msg.arr.len();
        out.push(Batch {
            points: msg.arr.len(),
            payload: msg.encode_to_vec(),
        });
    }
    out
}

/// Decodes a v2 body (already un-gzipped) into points, all or nothing (see the module doc
/// for what is refused and why).
pub fn decode(body: &[u8], opts: ParseOptions) -> Result<Vec<Point>, DecodeError> {
    let mut entries = Entries::new(opts);
    let mut points = Vec::with_capacity(body.len() / 64 + 1);
    entries.decode_some(body, true, usize::MAX, &mut points);
    entries.finish().map(|()| points)
}

/// A v2 body decoded a piece at a time (see [`crate::point::reader`]): `PBPoints` is a
/// sequence of length-delimited `arr` entries, one per point, so each entry can be decoded
/// as soon as all of its bytes are there. The first bad entry refuses the body.
pub(crate) struct Entries {
    opts: ParseOptions,
    /// Points decoded so far (for the error's position).
    index: usize,
    error: Option<DecodeError>,
}

/// Where the next entry of a `PBPoints` message is.
enum Frame {
    /// A point (`arr`, field 1) at `body`, the entry ending at `end`.
    Point {
        body: std::ops::Range<usize>,
        end: usize,
    },
    /// Another field, skipped, ending at `end`.
    Skip {
        end: usize,
    },
    /// More bytes are needed.
    Incomplete,
    Malformed,
}

impl Entries {
    pub(crate) fn new(opts: ParseOptions) -> Entries {
        Entries {
            opts,
            index: 0,
            error: None,
        }
    }

    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Decodes whole entries from the front of `buf` into `out` until the points added hold
    /// `max_memory` bytes ([`Point::memory_size`]) or no whole entry is left; returns the
    /// bytes consumed and the memory of the points added (0 when `max_memory` is
    /// `usize::MAX`: not counted). When `last`, `buf` ends the body and an incomplete entry is an error.
    pub(crate) fn decode_some(
        &mut self,
        buf: &[u8],
        last: bool,
        max_memory: usize,
        out: &mut Vec<Point>,
    ) -> (usize, usize) {
        let limited = max_memory != usize::MAX;
        let mut memory = 0;
        let mut pos = 0;
        while pos < buf.len() && self.error.is_none() {
            match frame(&buf[pos..]) {
                Frame::Incomplete if !last => break,
                Frame::Incomplete | Frame::Malformed => {
                    self.fail(protobuf_error(&buf[pos..]), out);
                    pos = buf.len();
                }
                Frame::Skip { end } => pos += end,
                Frame::Point { body, end } => {
                    let entry = &buf[pos..][body];
                    pos += end;
                    let index = self.index;
                    self.index += 1;
                    match pb::PbPoint::decode(entry) {
                        Err(e) => self.fail(DecodeError::Protobuf(e), out),
                        Ok(p) => {
                            let measurement = p.name.clone();
                            match from_pb(p, self.opts) {
                                Ok(point) => {
                                    if limited {
                                        memory += point.memory_size();
                                    }
                                    out.push(point);
                                    if memory >= max_memory {
                                        break;
                                    }
                                }
                                Err(message) => self.fail(
                                    DecodeError::Point {
                                        index,
                                        measurement,
                                        message,
                                    },
                                    out,
                                ),
                            }
                        }
                    }
                }
            }
        }
        (pos, if self.failed() { 0 } else { memory })
    }

    fn fail(&mut self, e: DecodeError, out: &mut Vec<Point>) {
        self.error = Some(e);
        *out = Vec::new();
    }

    /// The verdict on the whole body, once all of it has been decoded.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Reads a base-128 varint: `Some(Ok((value, length)))`, `None` if `b` ends inside it.
fn varint(b: &[u8]) -> Option<Result<(u64, usize), ()>> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(Ok((v, i + 1)));
        }
    }
    if b.len() >= 10 { Some(Err(())) } else { None }
}

/// The next entry of a `PBPoints` message at the front of `b`.
fn frame(b: &[u8]) -> Frame {
    let (key, klen) = match varint(b) {
        None => return Frame::Incomplete,
        Some(Err(())) => return Frame::Malformed,
        Some(Ok(k)) => k,
    };
    let rest = &b[klen..];
    let fixed = |n: usize| {
        if rest.len() >= n {
            Frame::Skip { end: klen + n }
        } else {
            Frame::Incomplete
        }
    };
    match (key >> 3, key & 7) {
        (0, _) => Frame::Malformed,
        (_, 0) => match varint(rest) {
            None => Frame::Incomplete,
            Some(Err(())) => Frame::Malformed,
            Some(Ok((_, n))) => Frame::Skip { end: klen + n },
        },
        (_, 1) => fixed(8),
        (_, 5) => fixed(4),
        (field, 2) => {
            let (len, llen) = match varint(rest) {
                None => return Frame::Incomplete,
                Some(Err(())) => return Frame::Malformed,
                Some(Ok(l)) => l,
            };
            let Ok(len) = usize::try_from(len) else {
                return Frame::Malformed;
            };
            let start = klen + llen;
            match start.checked_add(len) {
                Some(end) if end <= b.len() => {
                    if field == 1 {
                        Frame::Point {
                            body: start..end,
                            end,
                        }
                    } else {
                        Frame::Skip { end }
                    }
                }
                Some(_) => Frame::Incomplete,
                None => Frame::Malformed,
            }
        }
        _ => Frame::Malformed,
    }
}

/// Prost's own words for what is wrong at the front of `rest` (a framing problem found
/// above), so a bad body is described as a whole-message decode would describe it.
fn protobuf_error(rest: &[u8]) -> DecodeError {
    match pb::PbPoints::decode(rest) {
        Err(e) => DecodeError::Protobuf(e),
        // Cannot happen: prost refuses what `frame` refuses. Say so plainly if it does.
        Ok(_) => DecodeError::Point {
            index: 0,
            measurement: String::new(),
            message: "the body ends inside a point".to_owned(),
        },
    }
}

fn from_pb(p: pb::PbPoint, opts: ParseOptions) -> Result<Point, String> {
    if p.name.is_empty() {
        return Err("the measurement name is empty".into());
    }
    no_newline("the measurement name", &p.name)?;
    let mut tags: Vec<(String, String)> = Vec::new();
    let mut fields: Vec<(String, FieldValue)> = Vec::with_capacity(p.fields.len());
    for f in p.fields {
        let what = if f.is_tag { "tag" } else { "field" };
        if f.key.is_empty() {
            return Err(format!("a {what} has an empty key"));
        }
        no_newline(&format!("{what} key `{}`", f.key), &f.key)?;
        if f.is_tag {
            let value = match f.val {
                Some(Val::S(s)) => s,
                other => {
                    return Err(format!(
                        "tag `{}` holds {}: tag values must be strings",
                        f.key,
                        type_name(other.as_ref())
                    ));
                }
            };
            if value.is_empty() {
                return Err(format!("tag `{}` has an empty value", f.key));
            }
            no_newline(&format!("the value of tag `{}`", f.key), &value)?;
            if tags.iter().any(|(k, _)| *k == f.key) {
                return Err(format!("tag `{}` appears twice", f.key));
            }
            tags.push((f.key, value));
        } else {
            let value = match f.val {
                Some(Val::I(i)) => FieldValue::Int(i),
                Some(Val::U(u)) => FieldValue::Uint(u),
                Some(Val::F(x)) if x.is_finite() => FieldValue::Float(x),
                Some(Val::F(x)) => {
                    return Err(format!(
                        "field `{}` is {x}: NaN and infinities cannot be carried",
                        f.key
                    ));
                }
                Some(Val::B(b)) => FieldValue::Bool(b),
                Some(Val::S(s)) => {
                    no_newline(&format!("the value of field `{}`", f.key), &s)?;
                    FieldValue::Str(s)
                }
                other => {
                    return Err(format!(
                        "field `{}` holds {}, which this daemon cannot carry (it has \
                         int, uint, float, bool and string fields); send it as one of those",
                        f.key,
                        type_name(other.as_ref())
                    ));
                }
            };
            if fields.iter().any(|(k, _)| *k == f.key) {
                return Err(format!("field `{}` appears twice", f.key));
            }
            fields.push((f.key, value));
        }
    }
    if fields.is_empty() {
        return Err("the point has no field (only tags)".into());
    }
    let time = if p.time == 0 {
        opts.default_time
    } else {
        opts.precision.to_nanos(p.time).ok_or_else(|| {
            format!(
                "time {} in {} overflows nanoseconds since 1970",
                p.time, opts.precision
            )
        })?
    };
    Ok(Point {
        measurement: p.name,
        tags,
        fields,
        time,
    })
}

fn no_newline(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\n') {
        Err(format!(
            "{what} contains a newline, which this daemon cannot carry (its points travel \
             as line protocol too: v1 uploads, the WAL, file endpoints)"
        ))
    } else {
        Ok(())
    }
}

/// How an error names a v2 value type.
fn type_name(v: Option<&Val>) -> &'static str {
    match v {
        None => "no value",
        Some(Val::I(_)) => "an int (`i`)",
        Some(Val::U(_)) => "a uint (`u`)",
        Some(Val::F(_)) => "a float (`f`)",
        Some(Val::B(_)) => "a bool (`b`)",
        Some(Val::S(_)) => "a string (`s`)",
        Some(Val::D(_)) => "bytes (`d`)",
        Some(Val::A(_)) => "an array or map (`a`, google.protobuf.Any)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::Precision;

    const OPTS: ParseOptions = ParseOptions {
        precision: Precision::Nanos,
        default_time: 42,
    };

    fn sample() -> Point {
        Point {
            measurement: "温度 a,b".into(),
            tags: vec![
                ("host".into(), "web 1,=x".into()),
                ("region".into(), "eu".into()),
            ],
            fields: vec![
                ("i".into(), FieldValue::Int(i64::MIN)),
                ("u".into(), FieldValue::Uint(u64::MAX)),
                ("f".into(), FieldValue::Float(-0.25)),
                ("b".into(), FieldValue::Bool(false)),
                ("s".into(), FieldValue::Str(String::new())),
                ("z".into(), FieldValue::Int(0)),
            ],
            time: -5,
        }
    }

    #[test]
    fn round_trips_every_field_type() {
        let pts = vec![sample(), sample()];
        assert_eq!(decode(&encode(&pts), OPTS).unwrap(), pts);
    }

    #[test]
    fn tags_are_string_fields_marked_is_tag() {
        let pb = to_pb(&sample());
        assert_eq!(pb.fields[0].key, "host");
        assert!(pb.fields[0].is_tag);
        assert_eq!(pb.fields[0].val, Some(Val::S("web 1,=x".into())));
        assert!(!pb.fields[2].is_tag);
        assert_eq!(pb.fields[2].val, Some(Val::I(i64::MIN)));
    }

    fn one(f: pb::Field) -> Vec<u8> {
        pb::PbPoints {
            arr: vec![pb::PbPoint {
                name: "m".into(),
                fields: vec![
                    f,
                    pb::Field {
                        key: "ok".into(),
                        val: Some(Val::I(1)),
                        ..Default::default()
                    },
                ],
                time: 7,
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn refused(f: pb::Field) -> String {
        decode(&one(f), OPTS).unwrap_err().to_string()
    }

    #[test]
    fn types_the_model_lacks_are_refused_naming_the_key() {
        let e = refused(pb::Field {
            key: "blob".into(),
            val: Some(Val::D(vec![1, 2])),
            ..Default::default()
        });
        assert!(
            e.contains("point 0 (`m`)") && e.contains("`blob`") && e.contains("bytes"),
            "{e}"
        );
        let e = refused(pb::Field {
            key: "arr".into(),
            val: Some(Val::A(prost_types::Any::default())),
            ..Default::default()
        });
        assert!(e.contains("`arr`") && e.contains("array"), "{e}");
        let e = refused(pb::Field {
            key: "nothing".into(),
            ..Default::default()
        });
        assert!(e.contains("`nothing`") && e.contains("no value"), "{e}");
        let e = refused(pb::Field {
            key: "t".into(),
            is_tag: true,
            val: Some(Val::I(1)),
            ..Default::default()
        });
        assert!(e.contains("tag `t`") && e.contains("strings"), "{e}");
        let e = refused(pb::Field {
            key: "nan".into(),
            val: Some(Val::F(f64::NAN)),
            ..Default::default()
        });
        assert!(e.contains("`nan`"), "{e}");
        let e = refused(pb::Field {
            key: "msg".into(),
            val: Some(Val::S("a\nb".into())),
            ..Default::default()
        });
        assert!(e.contains("field `msg`") && e.contains("newline"), "{e}");
        let e = refused(pb::Field {
            key: "ok".into(),
            val: Some(Val::I(2)),
            ..Default::default()
        });
        assert!(e.contains("`ok` appears twice"), "{e}");
    }

    #[test]
    fn garbage_is_a_protobuf_error() {
        let e = decode(b"\xff\xff\xff", OPTS).unwrap_err();
        assert!(matches!(e, DecodeError::Protobuf(_)), "{e}");
    }

    #[test]
    fn time_zero_is_now_and_others_are_scaled() {
        let mut p = sample();
        p.time = 0;
        assert_eq!(decode(&encode(&[p.clone()]), OPTS).unwrap()[0].time, 42);
        p.time = 3;
        let secs = ParseOptions {
            precision: Precision::Seconds,
            default_time: 0,
        };
        assert_eq!(
            decode(&encode(&[p.clone()]), secs).unwrap()[0].time,
            3_000_000_000
        );
        p.time = i64::MAX;
        let e = decode(&encode(&[p]), secs).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
    }

    fn points(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                measurement: "cpu".into(),
                tags: vec![("host".into(), format!("h{}", i * 7919 % 1000))],
                fields: vec![
                    ("usage".into(), FieldValue::Float(i as f64 / 3.0)),
                    ("msg".into(), FieldValue::Str("x".repeat(i % 50))),
                ],
                time: 1_700_000_000_000_000_000 + i as i64,
            })
            .collect()
    }

    /// Points of a lone float: DataKit's approximate size underestimates them (it counts no
    /// per-point overhead), so their bodies need trimming.
    fn lone_floats(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                measurement: "m".into(),
                tags: vec![],
                fields: vec![("f".into(), FieldValue::Float(i as f64 / 7.0))],
                time: -(i as i64) - 1,
            })
            .collect()
    }

    /// Re-derives DataKit's cut points (approximate fill, then 1, 2, 4, ... trimmed) and checks
    /// every body against them: below the limit, in order, nothing lost.
    #[test]
    fn batches_follow_datakits_rule() {
        let mut trimmed_bodies = 0;
        for (pts, max) in [
            (points(2000), 300),
            (points(2000), 4096),
            (lone_floats(2000), 300),
            (lone_floats(2000), 10_000),
        ] {
            let batches = encode_batches(&pts, max);
            let mut start = 0;
            for b in &batches {
                assert!(b.payload.len() < max, "{} >= {max}", b.payload.len());
                let got = decode(&b.payload, OPTS).unwrap();
                assert_eq!(got, pts[start..start + b.points]);
                // The approximate fill this body started from.
                let mut fill = 0;
                let mut sum = 0;
                while start + fill < pts.len() && sum + approx_size(&pts[start + fill]) <= max {
                    sum += approx_size(&pts[start + fill]);
                    fill += 1;
                }
                // Trimmed by 1, 2, 4, ...: the kept count is `fill` minus 0, 1, 3, 7, ...
                let trimmed = fill - b.points;
                assert!((trimmed + 1).is_power_of_two(), "trimmed {trimmed}");
                if trimmed > 0 {
                    trimmed_bodies += 1;
                    // The last step was needed: with half as many given back it did not fit.
                    let undo = trimmed.div_ceil(2);
                    let bigger = encode(&pts[start..start + b.points + undo]);
                    assert!(bigger.len() >= max);
                }
                start += b.points;
            }
            assert_eq!(start, pts.len());
        }
        assert!(
            trimmed_bodies > 0,
            "no body needed trimming: the test misses it"
        );
    }

    #[test]
    fn an_oversized_point_travels_alone() {
        let mut pts = points(3);
        pts[1]
            .fields
            .push(("blob".into(), FieldValue::Str("y".repeat(5000))));
        let batches = encode_batches(&pts, 1024);
        assert_eq!(
            batches.iter().map(|b| b.points).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        assert!(batches[1].payload.len() > 1024);
    }
}
