//! One cached body on disk: versioned and checksummed, so a reader can tell a damaged or
//! future record from a good one instead of sending garbage.
//!
//! Layout, version 1 (integers little-endian):
//! `version: u8 = 1 | crc32: u32 (of everything after it) | created_ms: i64 | points: u64 |
//!  flags: u8 | category length: u8 | category name | payload`. Flags: bit 0 gzipped,
//! bit 1 sunk (the body was a sinker's), bit 2 protobuf (a v2 body, resent with DataKit's
//! protobuf `Content-Type`; without it, line protocol). Records written before a flag
//! existed have it clear, which is what they were: the first records had only bit 0 (so
//! they read as not sunk, unless a sinker stored them), and every body was line protocol
//! until v2.
//!
//! Version 2, only for a body that travels with headers of its own (the `X-Global-Tags`
//! of an `enable_sinker` group), so that its resend carries them: version 1's layout with
//! `header count: u8 | per header: name length: u8 | name | value length: u32 | value`
//! between the category name and the payload. Bodies without such headers are still
//! written as version 1, byte for byte; a binary that knows only version 1 skips a
//! version-2 record as damaged rather than sending it without its routing header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::category::Category;

const VERSION: u8 = 1;
/// Version 1 plus the body's own headers.
const VERSION_HEADERS: u8 = 2;
const FIXED: usize = 1 + 4 + 8 + 8 + 1 + 1;

/// A body waiting to be resent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub category: Category,
    /// Whether `payload` is gzipped (sent with `Content-Encoding: gzip`).
    pub gzipped: bool,
    /// Whether a sinker's endpoint stored it. Resends are not counted in the point
    /// metrics (as in DataKit), so nothing reads it today; it records who stored the body.
    pub sunk: bool,
    /// Whether `payload` is a v2 (protobuf) body rather than line protocol.
    pub protobuf: bool,
    /// Points in the body (`X-Points`).
    pub points: u64,
    /// When it was first cached, ms since the Unix epoch.
    pub created_ms: i64,
    /// The body, byte for byte as first sent.
    pub payload: Bytes,
    /// Headers of its own the body was sent with, resent with it (names in lower case).
    pub headers: Vec<(String, Bytes)>,
}

/// A record read back.
pub enum Decoded {
    Ok(Record),
    /// Damaged (bad checksum, truncated) or of an unknown version: what is wrong.
    Corrupt(String),
}

impl Record {
    /// A record created now.
    pub fn new(category: Category, gzipped: bool, points: u64, payload: Bytes) -> Record {
        Record {
            category,
            gzipped,
            sunk: false,
            protobuf: false,
            points,
            created_ms: now_ms(),
            payload,
            headers: Vec::new(),
        }
    }

    /// The headers of its own the body was sent with (see [`Record::headers`]). At most
    /// 255, names up to 255 bytes: HTTP headers of a body are far below both.
    pub fn with_headers(mut self, headers: Vec<(String, Bytes)>) -> Record {
        self.headers = headers;
        self
    }

    /// Marks the record as a sinker's body (see [`Record::sunk`]).
    pub fn sunk(mut self, sunk: bool) -> Record {
        self.sunk = sunk;
        self
    }

    /// Marks the record as a v2 (protobuf) body (see [`Record::protobuf`]).
    pub fn protobuf(mut self, protobuf: bool) -> Record {
        self.protobuf = protobuf;
        self
    }

    /// How long before `now_ms` (ms since the Unix epoch) it was cached.
    pub fn age_at(&self, now_ms: i64) -> Duration {
        Duration::from_millis((now_ms - self.created_ms).max(0) as u64)
    }

    pub fn encode(&self) -> Vec<u8> {
        let name = self.category.name().as_bytes();
        let mut out = Vec::with_capacity(FIXED + name.len() + self.payload.len());
        let version = if self.headers.is_empty() {
            VERSION
        } else {
            VERSION_HEADERS
        };
        out.push(version);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.points.to_le_bytes());
        out.push(
            u8::from(self.gzipped) | (u8::from(self.sunk) << 1) | (u8::from(self.protobuf) << 2),
        );
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        if version == VERSION_HEADERS {
            let headers = &self.headers[..self.headers.len().min(255)];
            out.push(headers.len() as u8);
            for (k, v) in headers {
                let k = &k.as_bytes()[..k.len().min(255)];
                out.push(k.len() as u8);
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Decoded {
        let bad = |why: &str| Decoded::Corrupt(why.to_string());
        if b.len() < FIXED {
            return bad("truncated");
        }
        if b[0] != VERSION && b[0] != VERSION_HEADERS {
            return Decoded::Corrupt(format!("unknown record version {}", b[0]));
        }
        let crc = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[5..]) != crc {
            return bad("checksum mismatch");
        }
        let created_ms = i64::from_le_bytes(b[5..13].try_into().expect("8 bytes"));
        let points = u64::from_le_bytes(b[13..21].try_into().expect("8 bytes"));
        let (gzipped, sunk, protobuf) = (b[21] & 1 != 0, b[21] & 2 != 0, b[21] & 4 != 0);
        let n = b[22] as usize;
        let Some(name) = b.get(FIXED..FIXED + n) else {
            return bad("truncated category");
        };
        let Ok(category) = std::str::from_utf8(name)
            .map_err(|_| ())
            .and_then(|s| s.parse::<Category>().map_err(|_| ()))
        else {
            return bad("unknown category");
        };
        let mut at = FIXED + n;
        let mut headers = Vec::new();
        if b[0] == VERSION_HEADERS {
            let Some(&count) = b.get(at) else {
                return bad("truncated headers");
            };
            at += 1;
            for _ in 0..count {
                let Some(&kn) = b.get(at) else {
                    return bad("truncated headers");
                };
                let k = at + 1;
                let Some(vn) = b.get(k + kn as usize..k + kn as usize + 4) else {
                    return bad("truncated headers");
                };
                let v = k + kn as usize + 4;
                let vn = u32::from_le_bytes(vn.try_into().expect("4 bytes")) as usize;
                let (Ok(name), Some(value)) = (
                    std::str::from_utf8(&b[k..k + kn as usize]),
                    b.get(v..v.saturating_add(vn)),
                ) else {
                    return bad("bad header");
                };
                headers.push((name.to_string(), Bytes::copy_from_slice(value)));
                at = v + vn;
            }
        }
        Decoded::Ok(Record {
            category,
            gzipped,
            sunk,
            protobuf,
            points,
            created_ms,
            payload: Bytes::copy_from_slice(&b[at..]),
            headers,
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::new(
            Category::Logging,
            true,
            42,
            Bytes::from_static(b"\x1f\x8bbody"),
        )
    }

    fn with_global_tags() -> Record {
        sample().with_headers(vec![
            (
                "x-global-tags".into(),
                Bytes::from_static(b"app=a,category=logging"),
            ),
            ("x-empty".into(), Bytes::new()),
        ])
    }

    #[test]
    fn round_trips() {
        for r in [
            sample(),
            sample().sunk(true),
            sample().protobuf(true),
            sample().sunk(true).protobuf(true),
            with_global_tags().sunk(true),
            with_global_tags().protobuf(true),
        ] {
            match Record::decode(&r.encode()) {
                Decoded::Ok(back) => assert_eq!(back, r),
                Decoded::Corrupt(why) => panic!("{why}"),
            }
        }
    }

    /// A record as the first version-1 writer laid it out (flags byte 0 or 1) still reads.
    #[test]
    fn records_written_before_the_sunk_flag_read_as_not_sunk() {
        let created: i64 = 1_700_000_000_000;
        let mut b = vec![1u8, 0, 0, 0, 0];
        b.extend_from_slice(&created.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.push(1); // gzipped
        b.push(3);
        b.extend_from_slice(b"rum");
        b.extend_from_slice(b"payload");
        let crc = crc32fast::hash(&b[5..]);
        b[1..5].copy_from_slice(&crc.to_le_bytes());
        match Record::decode(&b) {
            Decoded::Ok(r) => {
                assert!(r.gzipped && !r.sunk && !r.protobuf);
                assert_eq!(
                    (r.category, r.points, r.created_ms),
                    (Category::Rum, 7, created)
                );
                assert_eq!(&r.payload[..], b"payload");
            }
            Decoded::Corrupt(why) => panic!("{why}"),
        }
    }

    /// Only a body with headers of its own needs version 2: the others stay readable by a
    /// binary that knows version 1 only.
    #[test]
    fn version_2_only_for_bodies_with_headers() {
        assert_eq!(sample().encode()[0], 1);
        assert_eq!(with_global_tags().encode()[0], 2);
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_detected() {
        for good in [sample().encode(), with_global_tags().encode()] {
            flipped_or_truncated_is_corrupt(&good);
        }
    }

    fn flipped_or_truncated_is_corrupt(good: &[u8]) {
        for i in 0..good.len() {
            let mut b = good.to_vec();
            b[i] ^= 0x40;
            assert!(
                matches!(Record::decode(&b), Decoded::Corrupt(_)),
                "byte {i}"
            );
        }
        for n in 0..good.len() {
            assert!(
                matches!(Record::decode(&good[..n]), Decoded::Corrupt(_)),
                "len {n}"
            );
        }
    }
}
