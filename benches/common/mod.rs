//! What the benches share: a realistic line-protocol body of non-repetitive points.

use std::io::Write as _;

pub const POINTS: usize = 10_000;

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
pub fn body() -> Vec<u8> {
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
