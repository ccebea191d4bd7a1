//! Arbitrary bytes into the line protocol parser: it must never panic, its errors must be
//! well-formed, and every body it accepts must survive encode → parse unchanged.
//!
//! `cargo +nightly fuzz run lineproto` (from the repository root).

#![no_main]

use dataway::point::{ParseOptions, Precision, parse};
use libfuzzer_sys::fuzz_target;

const PRECISIONS: [Precision; 6] = [
    Precision::Nanos,
    Precision::Micros,
    Precision::Millis,
    Precision::Seconds,
    Precision::Minutes,
    Precision::Hours,
];

/// Encoded points are always in nanoseconds with an explicit timestamp.
const REPARSE: ParseOptions = ParseOptions {
    precision: Precision::Nanos,
    default_time: i64::MIN,
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the precision, so timestamp scaling and its overflow checks are
    // exercised too; the rest is the body.
    let (precision, body) = match data.split_first() {
        Some((&b, rest)) => (PRECISIONS[usize::from(b) % PRECISIONS.len()], rest),
        None => (Precision::Nanos, data),
    };
    let opts = ParseOptions {
        precision,
        default_time: 1_700_000_000_000_000_000,
    };

    let points = match parse(body, opts) {
        Ok(points) => points,
        Err(e) => {
            assert!(e.total >= 1, "an error with no bad lines: {e:?}");
            assert!(!e.errors.is_empty() && e.errors.len() <= 10, "{e:?}");
            assert!(e.errors.len() <= e.total, "{e:?}");
            let lines = body.split(|&b| b == b'\n').count();
            let mut previous = 0;
            for le in &e.errors {
                assert!(le.line > previous && le.line <= lines, "{e:?}");
                assert!(le.column >= 1 && !le.message.is_empty(), "{e:?}");
                previous = le.line;
            }
            let _ = e.to_string();
            return;
        }
    };

    let mut all = Vec::new();
    for (i, p) in points.iter().enumerate() {
        assert!(!p.measurement.is_empty() && !p.fields.is_empty(), "{p:?}");

        // Each point alone.
        let line = p.to_line_protocol();
        let back = parse(line.as_bytes(), REPARSE)
            .unwrap_or_else(|e| panic!("{p:?} encoded as {line:?} does not parse: {e}"));
        assert_eq!(back.len(), 1, "{line:?}");
        assert_eq!(back[0], *p, "{line:?}");
        // The encoding is canonical: encoding the re-parsed point gives the same line.
        assert_eq!(back[0].to_line_protocol(), line);

        if i > 0 {
            all.push(b'\n');
        }
        p.encode_into(&mut all);
    }

    // And the whole body at once.
    let back = parse(&all, REPARSE).unwrap_or_else(|e| panic!("re-encoded body fails: {e}"));
    assert_eq!(back, points);
});
