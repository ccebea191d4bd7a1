//! InfluxDB line protocol: a hand-written byte parser and the matching encoder.
//!
//! ```text
//! measurement[,tag_key=tag_value…] field_key=field_value[,field_key=field_value…] [timestamp]
//! ```
//!
//! # Parsing rules
//!
//! * The body is split on `\n`; one trailing `\r` per line is dropped (CRLF bodies).
//! * Lines that are empty or only spaces/tabs, and lines whose first non-blank byte is `#`,
//!   are skipped. Spaces and tabs before the measurement are skipped.
//! * Measurement: `\,` `\ ` and `\\` are escapes; it ends at the first unescaped `,` (tags
//!   follow) or space. **At the first position only**, `\#` and `\<TAB>` are escapes too, so
//!   that a measurement starting with `#` or a tab can be written without being read as a
//!   comment or as leading blank space. Anywhere else `\#` stays literally `\#`.
//! * Tag keys, tag values and field keys: `\,` `\=` `\ ` and `\\` are escapes.
//! * In all names a backslash before any other byte is kept literally (`a\b` is `a\b`).
//! * Field values: float (`1`, `-1.5`, `1.`, `.5`, `2e-3`; a bare number is a float), signed
//!   integer `12i`, unsigned integer `12u`, boolean (`t T true True TRUE f F false False
//!   FALSE`), or a `"`-quoted string whose escapes are `\"` and `\\` (any other backslash is
//!   literal; spaces, commas and `=` need no escaping inside quotes). NaN and infinities are
//!   rejected: line protocol cannot carry them.
//! * Sections are separated by one or more spaces; spaces at the end of a line are ignored.
//! * The timestamp is an optional signed integer in [`ParseOptions::precision`] units, scaled
//!   to nanoseconds with overflow checks. A line without one gets
//!   [`ParseOptions::default_time`] (already in nanoseconds, not scaled).
//! * Empty names or tag values, duplicate tag keys and duplicate field keys are errors.
//! * The body must be UTF-8; an invalid byte is reported on its line.
//!
//! Parsing is all-or-nothing: one bad line fails the whole body, and the error keeps the first
//! [`MAX_KEPT_ERRORS`] bad lines plus the total count so a client can fix them all at once.
//!
//! # Encoding rules
//!
//! The encoder writes the inverse of the rules above, so `parse(encode(p)) == p` for every
//! point the parser can produce (that is, with no `\n` anywhere and with finite floats): a
//! backslash is doubled only where it would otherwise form an escape (before an escapable
//! byte, another backslash, or at the end of a name), which keeps ordinary backslashes such as
//! Windows paths readable and compatible with other line protocol readers.

use std::fmt;
use std::str::FromStr;

use super::dict::same;
use super::keys::{Noted, ParsedLine, Scalar};
use super::text::{Text, TextBuilder};
use super::{FieldValue, Point};

/// How many bad lines a [`ParseErrors`] keeps (it still counts all of them).
pub const MAX_KEPT_ERRORS: usize = 10;

/// Unit of the timestamps in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanos,
    Micros,
    Millis,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Nanoseconds per unit.
    pub const fn nanos_per_unit(self) -> i64 {
        match self {
            Precision::Nanos => 1,
            Precision::Micros => 1_000,
            Precision::Millis => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }

    /// Converts a timestamp in this unit to nanoseconds; `None` if it overflows `i64`.
    pub fn to_nanos(self, t: i64) -> Option<i64> {
        t.checked_mul(self.nanos_per_unit())
    }

    /// The canonical short name: `ns`, `us`, `ms`, `s`, `m` or `h`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Precision::Nanos => "ns",
            Precision::Micros => "us",
            Precision::Millis => "ms",
            Precision::Seconds => "s",
            Precision::Minutes => "m",
            Precision::Hours => "h",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    /// Accepts `n`/`ns`, `u`/`us`/`µs`, `ms`, `s`, `m` and `h` (the values of InfluxDB's
    /// `precision` query parameter).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "n" | "ns" => Ok(Precision::Nanos),
            "u" | "us" | "µs" | "μs" => Ok(Precision::Micros),
            "ms" => Ok(Precision::Millis),
            "s" => Ok(Precision::Seconds),
            "m" => Ok(Precision::Minutes),
            "h" => Ok(Precision::Hours),
            other => Err(format!(
                "unknown precision `{}`: expected one of n, ns, u, us, µs, ms, s, m, h",
                snippet(other)
            )),
        }
    }
}

/// How to read a body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Unit of the timestamps written in the body.
    pub precision: Precision,
    /// Time (ns since the epoch) for lines without a timestamp; not scaled by `precision`.
    pub default_time: i64,
}

/// One bad line: 1-based line number (counting `\n` in the body), 1-based byte column where
/// the problem is, and a message saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct LineError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// All-or-nothing parse failure: the first up-to-[`MAX_KEPT_ERRORS`] bad lines plus the total
/// count of bad lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseErrors {
    pub errors: Vec<LineError>,
    pub total: usize,
}

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.total == 1 { "" } else { "s" };
        write!(f, "{} bad line{plural}", self.total)?;
        for e in &self.errors {
            write!(f, "; {e}")?;
        }
        if self.total > self.errors.len() {
            write!(f, "; and {} more", self.total - self.errors.len())?;
        }
        Ok(())
    }
}

/// Parses a whole body. Either every line is good and all points come back in body order, or
/// nothing does and the error lists the bad lines.
pub fn parse(body: &[u8], opts: ParseOptions) -> Result<Vec<Point>, ParseErrors> {
    let mut lines = Lines::new(opts);
    let mut points = Vec::with_capacity(body.len() / 128 + 1);
    lines.parse_some(body, true, usize::MAX, &mut points, None);
    lines.finish().map(|()| points)
}

/// Checks a whole body and keeps its lines as text, as a forwarding reader does
/// ([`super::reader::Reader::forwarding`]), in one piece.
pub fn parse_text(body: &[u8], opts: ParseOptions) -> Result<Text, ParseErrors> {
    let mut lines = Lines::new(opts);
    let mut text = TextBuilder::with_capacity(body.len() + 32);
    lines.parse_some(body, true, usize::MAX, &mut Vec::new(), Some(&mut text));
    lines.finish().map(|()| text.finish())
}

/// How many bytes of lines are checked as UTF-8 at once: one fast pass over a region, then
/// `str::split` finds its newlines with memchr.
const REGION: usize = 64 * 1024;

/// A body parsed a piece at a time (see [`crate::point::reader`]): the line count and the
/// bad lines carry from piece to piece, so line numbers and the all-or-nothing rule are
/// those of the whole body.
pub(crate) struct Lines {
    opts: ParseOptions,
    scratch: Scratch,
    /// Lines consumed so far.
    line: usize,
    errors: Vec<LineError>,
    total: usize,
}

impl Lines {
    pub(crate) fn new(opts: ParseOptions) -> Lines {
        Lines {
            opts,
            scratch: Scratch::default(),
            line: 0,
            errors: Vec::new(),
            total: 0,
        }
    }

    /// Whether a bad line has been seen: no point of the body will be accepted.
    pub(crate) fn failed(&self) -> bool {
        self.total > 0
    }

    /// Parses whole lines from the front of `text` into `out` until the points added hold
    /// `max_memory` bytes ([`Point::memory_size`]) or `text` runs out; returns the bytes
    /// consumed and the memory of the points added (0 when `max_memory` is `usize::MAX`:
    /// not counted). `text` ends just after a `\n`, or, when `last`, at the end of the body.
    /// Once a line is bad no more points are kept (the body will be refused whole), but the
    /// rest is still read, to count and report every bad line.
    ///
    /// With `lines`, each good line is kept there as text instead ([`super::text`]), and
    /// the memory counted is that of the text.
    pub(crate) fn parse_some(
        &mut self,
        text: &[u8],
        last: bool,
        max_memory: usize,
        out: &mut Vec<Point>,
        mut lines: Option<&mut TextBuilder>,
    ) -> (usize, usize) {
        let limited = max_memory != usize::MAX;
        let mut memory = 0;
        let mut pos = 0;
        while pos < text.len() {
            let end = region_end(text, pos);
            let region = &text[pos..end];
            match std::str::from_utf8(region) {
                Ok(s) => {
                    for raw in s.split_inclusive('\n') {
                        pos += raw.len();
                        let line = raw.strip_suffix('\n').unwrap_or(raw);
                        let line = line.strip_suffix('\r').unwrap_or(line);
                        let result = parse_line(line, &self.opts, &mut self.scratch);
                        memory += self.add(result, line, out, lines.as_deref_mut(), limited);
                        if memory >= max_memory {
                            return (pos, memory);
                        }
                    }
                }
                // Some line is not UTF-8: check line by line to say which.
                Err(_) => {
                    for raw in region.split_inclusive(|&b| b == b'\n') {
                        pos += raw.len();
                        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        let (result, line) = match std::str::from_utf8(line) {
                            Ok(line) => (parse_line(line, &self.opts, &mut self.scratch), line),
                            Err(e) => (
                                Err(Bad::new(e.valid_up_to(), "invalid UTF-8".to_owned())),
                                "",
                            ),
                        };
                        memory += self.add(result, line, out, lines.as_deref_mut(), limited);
                        if memory >= max_memory {
                            return (pos, memory);
                        }
                    }
                }
            }
        }
        debug_assert!(last || text.last().is_none_or(|&b| b == b'\n'));
        (pos, if self.failed() { 0 } else { memory })
    }

    /// Takes one line's result; returns the memory of what was kept (0 when not counted).
    #[inline]
    fn add(
        &mut self,
        result: Result<Option<Line>, Bad>,
        line: &str,
        out: &mut Vec<Point>,
        lines: Option<&mut TextBuilder>,
        count: bool,
    ) -> usize {
        self.line += 1;
        match result {
            Ok(Some(l)) if self.total == 0 => match lines {
                Some(t) => {
                    let before = t.used();
                    let i = t.next_line();
                    if let Some(noted) = &mut t.noting {
                        note(noted, i, &l, line, &self.scratch);
                    }
                    t.buf
                        .extend_from_slice(&line.as_bytes()[l.measurement.start..l.fields_end]);
                    t.buf.push(b' ');
                    write_i64(l.time, &mut t.buf);
                    t.end_line();
                    // Less when a noted column was given up ([`Noted::MAX_VALUES`]).
                    t.used().saturating_sub(before)
                }
                None => {
                    let p = l.point(line, &mut self.scratch);
                    let size = if count { p.memory_size() } else { 0 };
                    out.push(p);
                    size
                }
            },
            Ok(_) => 0,
            Err(bad) => {
                self.total += 1;
                if self.errors.len() < MAX_KEPT_ERRORS {
                    self.errors.push(LineError {
                        line: self.line,
                        column: bad.at + 1,
                        message: bad.message,
                    });
                }
                // The points will not be returned now; free them early.
                if self.total == 1 {
                    *out = Vec::new();
                    if let Some(t) = lines {
                        *t = TextBuilder::default();
                    }
                }
                0
            }
        }
    }

    /// The verdict on the whole body, once all of it has been parsed.
    pub(crate) fn finish(self) -> Result<(), ParseErrors> {
        if self.total == 0 {
            Ok(())
        } else {
            Err(ParseErrors {
                errors: self.errors,
                total: self.total,
            })
        }
    }
}

/// The end of the next region of whole lines starting at `pos`: about [`REGION`] bytes,
/// through a `\n` (or to the end of `text`).
fn region_end(text: &[u8], pos: usize) -> usize {
    if text.len() - pos <= REGION {
        return text.len();
    }
    let window = &text[pos..pos + REGION];
    match window.iter().rposition(|&b| b == b'\n') {
        Some(i) => pos + i + 1,
        None => text[pos + REGION..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| pos + REGION + i + 1),
    }
}

/// Tag and field lists under construction, reused across lines so that each point gets
/// exactly-sized vectors with one allocation each.
#[derive(Default)]
struct Scratch {
    tags: Vec<(Span, Span)>,
    fields: Vec<(Span, Value)>,
}

/// Joins points with `\n` into `out` (no newline after the last one).
pub fn encode_points(points: &[Point], out: &mut Vec<u8>) {
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        p.encode_into(out);
    }
}

impl Point {
    /// Appends this point as one line protocol line (no trailing newline) to `out`.
    ///
    /// The timestamp is always written, in nanoseconds. Strings must not contain `\n` and
    /// floats must be finite for the line to parse back to an equal point (the parser never
    /// produces anything else).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        escape_measurement(&self.measurement, out);
        for (k, v) in &self.tags {
            out.push(b',');
            escape_name(k, out);
            out.push(b'=');
            escape_name(v, out);
        }
        let mut sep = b' ';
        for (k, v) in &self.fields {
            out.push(sep);
            sep = b',';
            escape_name(k, out);
            out.push(b'=');
            encode_value(v, out);
        }
        out.push(b' ');
        write_i64(self.time, out);
    }

    /// Convenience: the line as a `String`.
    pub fn to_line_protocol(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        // Everything written is either copied from `String`s or ASCII, split only at ASCII.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// A problem at byte offset `at` of the line.
struct Bad {
    at: usize,
    message: String,
}

impl Bad {
    fn new(at: usize, message: String) -> Self {
        Bad { at, message }
    }
}

/// Bytes that `\` escapes in tag keys, tag values and field keys.
#[inline(always)]
pub(super) fn is_name_escapable(c: u8) -> bool {
    matches!(c, b',' | b'=' | b' ' | b'\\')
}

/// Bytes that `\` escapes in a measurement; `first` is true at its first byte.
#[inline(always)]
pub(super) fn is_measurement_escapable(c: u8, first: bool) -> bool {
    matches!(c, b',' | b' ' | b'\\') || (first && matches!(c, b'#' | b'\t'))
}

/// Bytes that `\` escapes inside a quoted string.
#[inline(always)]
pub(super) fn is_string_escapable(c: u8) -> bool {
    matches!(c, b'"' | b'\\')
}

/// Owned copy of `s`, dropping the backslash of every escape. `escapable(c, at_first_byte)`
/// says whether `\c` is an escape.
pub(super) fn unescape(s: &str, escapable: impl Fn(u8, bool) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    unescape_into(s, escapable, &mut out);
    out
}

/// [`unescape`] into `out` (cleared first), reusing its allocation.
pub(super) fn unescape_into(s: &str, escapable: impl Fn(u8, bool) -> bool, out: &mut String) {
    out.clear();
    let b = s.as_bytes();
    let mut chunk = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && escapable(b[i + 1], i == 0) {
            out.push_str(&s[chunk..i]);
            chunk = i + 1; // keep the escaped byte, drop the backslash
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[chunk..]);
}

const fn byte_table(special: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = true;
        i += 1;
    }
    t
}

/// Bytes that end or interrupt a measurement scan.
static MEASUREMENT_SPECIAL: [bool; 256] = byte_table(b", \\");
/// Bytes that end or interrupt a tag key or field key scan.
static KEY_SPECIAL: [bool; 256] = byte_table(b", =\\");
/// Bytes that end or interrupt a tag value scan (`=` is allowed unescaped in values).
static TAG_VALUE_SPECIAL: [bool; 256] = byte_table(b", \\");
/// Bytes that end or interrupt a quoted string scan.
pub(super) static STRING_SPECIAL: [bool; 256] = byte_table(b"\"\\");
/// Bytes that end an unquoted field value or a timestamp.
pub(super) static TOKEN_END: [bool; 256] = byte_table(b", ");

/// First index at or after `i` whose byte is in `table`, or `b.len()`.
#[inline(always)]
pub(super) fn find(b: &[u8], i: usize, table: &[bool; 256]) -> usize {
    match b[i..].iter().position(|&c| table[usize::from(c)]) {
        Some(n) => i + n,
        None => b.len(),
    }
}

/// Scans a measurement from `start`; returns its end (an unescaped `,` or space, or the end of
/// the line) and whether it has a backslash.
#[inline]
pub(super) fn scan_measurement(b: &[u8], start: usize) -> (usize, bool) {
    let mut i = start;
    let mut esc = false;
    loop {
        i = find(b, i, &MEASUREMENT_SPECIAL);
        if i < b.len() && b[i] == b'\\' {
            esc = true;
            let skip = i + 1 < b.len() && is_measurement_escapable(b[i + 1], i == start);
            i += if skip { 2 } else { 1 };
        } else {
            return (i, esc);
        }
    }
}

/// Scans a tag key or field key (`key`: also stops at `=`) or a tag value; returns its end
/// and whether it has a backslash.
#[inline]
pub(super) fn scan_name(b: &[u8], start: usize, key: bool) -> (usize, bool) {
    let table = if key {
        &KEY_SPECIAL
    } else {
        &TAG_VALUE_SPECIAL
    };
    let mut i = start;
    let mut esc = false;
    loop {
        i = find(b, i, table);
        if i < b.len() && b[i] == b'\\' {
            esc = true;
            let skip = i + 1 < b.len() && is_name_escapable(b[i + 1]);
            i += if skip { 2 } else { 1 };
        } else {
            return (i, esc);
        }
    }
}

#[inline]
fn owned_name(line: &str, start: usize, end: usize, esc: bool) -> String {
    let s = &line[start..end];
    if esc {
        unescape(s, |c, _| is_name_escapable(c))
    } else {
        s.to_owned()
    }
}

#[inline]
pub(super) fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    i
}

/// Notes what line `i` says: its measurement, and each noted key's tag and field value.
/// Keys are compared as the parser compares them for duplicates: unescaped. Never
/// inlined: in the line loop it changed how the rest of the loop was compiled (the
/// timestamp parse cost 8 ns a point more).
#[inline(never)]
fn note(noted: &mut Noted, i: usize, l: &Line, line: &str, scratch: &Scratch) {
    noted.line(
        i,
        &Read {
            line,
            measurement: l.measurement,
            scratch,
        },
    );
}

/// A line being read, as [`Noted::line`] asks it.
struct Read<'a> {
    line: &'a str,
    measurement: Span,
    scratch: &'a Scratch,
}

impl Read<'_> {
    /// Whether the name at `s` is `key`: lengths first (most keys differ in length from
    /// the noted ones), then bytes compared inline.
    /// By reference: a `Span` copied out of the scratch and read back was a
    /// store-forwarding stall per key compared.
    #[inline(always)]
    fn is(&self, s: &Span, key: &str) -> bool {
        if s.esc {
            s.name(self.line) == key
        } else {
            s.end - s.start == key.len() && same(&self.line[s.start..s.end], key)
        }
    }

    /// The text at `s`, unescaped into `buf` if it has escapes.
    #[inline(always)]
    fn text<'a>(
        &'a self,
        s: &Span,
        buf: &'a mut String,
        escapable: fn(u8, bool) -> bool,
    ) -> &'a str {
        let raw = &self.line[s.start..s.end];
        if s.esc {
            unescape_into(raw, escapable, buf);
            buf
        } else {
            raw
        }
    }
}

impl ParsedLine for Read<'_> {
    fn measurement<'a>(&'a self, buf: &'a mut String) -> &'a str {
        self.text(&self.measurement, buf, is_measurement_escapable)
    }

    // A line has each tag key and each field key once (else it was refused).
    #[inline]
    fn tag<'a>(&'a self, key: &str, buf: &'a mut String) -> Option<&'a str> {
        let (_, v) = self.scratch.tags.iter().find(|(k, _)| self.is(k, key))?;
        Some(self.text(v, buf, |c, _| is_name_escapable(c)))
    }

    #[inline]
    fn field(&self, key: &str) -> Scalar {
        match self.scratch.fields.iter().find(|(k, _)| self.is(k, key)) {
            None => Scalar::Absent,
            Some((_, Value::Scalar(v))) => *v,
            Some((_, Value::Str(_))) => Scalar::Str,
        }
    }
}

/// Where a name or string is in its line, and whether it has a backslash (then it is
/// unescaped when made into a `String`).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    esc: bool,
}

impl Span {
    fn name(self, line: &str) -> String {
        owned_name(line, self.start, self.end, self.esc)
    }

    /// Whether two names are the same once unescaped (compared in place when neither has
    /// a backslash, as nearly every name). Inline, lengths first: each new key of a line
    /// is compared with every key before it, and a call plus a libc `memcmp` per pair was
    /// a tenth of a line's parse.
    #[inline(always)]
    fn same_name(self, other: Span, line: &str) -> bool {
        if !self.esc && !other.esc {
            self.end - self.start == other.end - other.start
                && same(&line[self.start..self.end], &line[other.start..other.end])
        } else {
            self.name(line) == other.name(line)
        }
    }
}

/// A field value as read: a number or boolean, or where its string is. `Copy`, so that
/// clearing a line's fields costs nothing (dropping `FieldValue`s was a loop per line).
#[derive(Debug, Clone, Copy)]
enum Value {
    /// Never [`Scalar::Absent`] nor [`Scalar::Str`].
    Scalar(Scalar),
    Str(Span),
}

/// A good line, as read: where its parts are (the tags and fields are in the parser's
/// [`Scratch`] until the next line) and its timestamp. Nothing is allocated until the
/// point is asked for ([`Line::point`]): a line kept as text ([`super::text`]) never is.
struct Line {
    measurement: Span,
    /// Where the field set ends (what [`super::text`] keeps runs from the measurement to
    /// here).
    fields_end: usize,
    time: i64,
}

impl Line {
    /// The point, with vectors of exactly their size; `scratch` keeps its capacity.
    fn point(&self, line: &str, scratch: &mut Scratch) -> Point {
        let measurement = if self.measurement.esc {
            unescape(
                &line[self.measurement.start..self.measurement.end],
                is_measurement_escapable,
            )
        } else {
            line[self.measurement.start..self.measurement.end].to_owned()
        };
        let tags = scratch
            .tags
            .iter()
            .map(|&(k, v)| (k.name(line), v.name(line)))
            .collect();
        let fields = scratch
            .fields
            .iter_mut()
            .map(|(k, v)| {
                let value = match v {
                    Value::Scalar(x) => x.to_field().expect("a scalar the parser read"),
                    Value::Str(s) => {
                        let raw = &line[s.start..s.end];
                        FieldValue::Str(if s.esc {
                            unescape(raw, |c, _| is_string_escapable(c))
                        } else {
                            raw.to_owned()
                        })
                    }
                };
                (k.name(line), value)
            })
            .collect();
        Point {
            measurement,
            tags,
            fields,
            time: self.time,
        }
    }
}

/// Parses one line (without its `\n` and trailing `\r`). `Ok(None)` for blank and comment
/// lines.
fn parse_line(line: &str, opts: &ParseOptions, scratch: &mut Scratch) -> Result<Option<Line>, Bad> {
    let b = line.as_bytes();
    let len = b.len();
    let mut i = 0;
    while i < len && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    if i == len || b[i] == b'#' {
        return Ok(None);
    }

    // Measurement.
    let m_start = i;
    let (m_end, m_esc) = scan_measurement(b, m_start);
    if m_end == m_start {
        return Err(Bad::new(
            m_start,
            "missing measurement: a line must start with a measurement name".to_owned(),
        ));
    }
    let measurement = Span {
        start: m_start,
        end: m_end,
        esc: m_esc,
    };
    i = m_end;

    // Tag set.
    let tags = &mut scratch.tags;
    tags.clear();
    while i < len && b[i] == b',' {
        i += 1;
        let k_start = i;
        let (k_end, k_esc) = scan_name(b, k_start, true);
        if k_end == k_start {
            return Err(Bad::new(
                k_start,
                "empty tag key: a `,` after the measurement or a tag must be followed by \
                 `key=value`"
                    .to_owned(),
            ));
        }
        if k_end == len || b[k_end] != b'=' {
            return Err(Bad::new(
                k_end,
                format!(
                    "tag key `{}` is missing `=value`",
                    snippet(&line[k_start..k_end])
                ),
            ));
        }
        let key = Span {
            start: k_start,
            end: k_end,
            esc: k_esc,
        };
        let v_start = k_end + 1;
        let (v_end, v_esc) = scan_name(b, v_start, false);
        if v_end == v_start {
            return Err(Bad::new(
                v_start,
                format!("tag `{}` has an empty value", snippet(&key.name(line))),
            ));
        }
        if tags.iter().any(|(k, _)| k.same_name(key, line)) {
            return Err(Bad::new(
                k_start,
                format!("duplicate tag key `{}`", snippet(&key.name(line))),
            ));
        }
        let value = Span {
            start: v_start,
            end: v_end,
            esc: v_esc,
        };
        tags.push((key, value));
        i = v_end;
    }

    // Field set.
    i = skip_spaces(b, i);
    if i == len {
        return Err(Bad::new(
            i,
            "missing field set: a line needs at least one field after the first unescaped space"
                .to_owned(),
        ));
    }
    let fields = &mut scratch.fields;
    fields.clear();
    loop {
        let k_start = i;
        let (k_end, k_esc) = scan_name(b, k_start, true);
        if k_end == k_start {
            let message = if k_start == len || b[k_start] == b' ' {
                "empty field key: a `,` in the field set must be followed by `key=value`"
            } else {
                "empty field key: expected `key=value`"
            };
            return Err(Bad::new(k_start, message.to_owned()));
        }
        if k_end == len || b[k_end] != b'=' {
            return Err(Bad::new(
                k_end,
                format!(
                    "field key `{}` is missing `=value`",
                    snippet(&line[k_start..k_end])
                ),
            ));
        }
        let key = Span {
            start: k_start,
            end: k_end,
            esc: k_esc,
        };
        let (value, end) = parse_field_value(line, k_end + 1, key)?;
        if fields.iter().any(|(k, _)| k.same_name(key, line)) {
            return Err(Bad::new(
                k_start,
                format!("duplicate field key `{}`", snippet(&key.name(line))),
            ));
        }
        fields.push((key, value));
        i = end;
        if i < len && b[i] == b',' {
            i += 1;
            continue;
        }
        break;
    }

    // Timestamp.
    let fields_end = i;
    i = skip_spaces(b, i);
    let time = if i == len {
        opts.default_time
    } else {
        let t_start = i;
        while i < len && b[i] != b' ' {
            i += 1;
        }
        let t =
            parse_timestamp(&line[t_start..i], opts.precision).map_err(|m| Bad::new(t_start, m))?;
        i = skip_spaces(b, i);
        if i < len {
            return Err(Bad::new(
                i,
                format!(
                    "unexpected `{}` after the timestamp: a line ends with its timestamp",
                    snippet(&line[i..])
                ),
            ));
        }
        t
    };

    Ok(Some(Line {
        measurement,
        fields_end,
        time,
    }))
}

/// Parses the field value starting at byte `start`; returns it and the offset just past it.
fn parse_field_value(line: &str, start: usize, key: Span) -> Result<(Value, usize), Bad> {
    let key = || key.name(line);
    let b = line.as_bytes();
    let len = b.len();
    if start == len || b[start] == b',' || b[start] == b' ' {
        return Err(Bad::new(
            start,
            format!("field `{}` has no value after `=`", snippet(&key())),
        ));
    }

    if b[start] == b'"' {
        let s_start = start + 1;
        let mut j = s_start;
        let mut esc = false;
        loop {
            j = find(b, j, &STRING_SPECIAL);
            if j >= len {
                return Err(Bad::new(
                    start,
                    format!(
                        "unterminated string in field `{}`: missing the closing `\"`",
                        snippet(&key())
                    ),
                ));
            }
            match b[j] {
                b'"' => break,
                b'\\' => {
                    if j + 1 < len && is_string_escapable(b[j + 1]) {
                        esc = true;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                _ => j += 1,
            }
        }
        let s = Span {
            start: s_start,
            end: j,
            esc,
        };
        let end = j + 1;
        if end < len && b[end] != b',' && b[end] != b' ' {
            let next = line[end..].chars().next().unwrap_or('?');
            return Err(Bad::new(
                end,
                format!(
                    "unexpected `{next}` after the closing quote of field `{}`: expected `,`, \
                     a space or the end of the line",
                    snippet(&key())
                ),
            ));
        }
        return Ok((Value::Str(s), end));
    }

    let end = find(b, start, &TOKEN_END);
    let token = &line[start..end];
    match parse_scalar(token) {
        Ok(v) => Ok((Value::Scalar(Scalar::of(&v)), end)),
        Err(why) => Err(Bad::new(
            start,
            format!(
                "field `{}` value `{}` {why}",
                snippet(&key()),
                snippet(token)
            ),
        )),
    }
}

const NOT_A_VALUE: &str =
    "is not a number, integer (`1i`), unsigned (`1u`), boolean or quoted string";

/// Parses an unquoted field value; the error completes "field `k` value `v` …".
pub(super) fn parse_scalar(token: &str) -> Result<FieldValue, &'static str> {
    let b = token.as_bytes();
    match token {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    let Some((&last, body)) = b.split_last() else {
        return Err(NOT_A_VALUE);
    };
    match last {
        b'i' => {
            if !is_integer(body, true) {
                return Err(NOT_A_VALUE);
            }
            // Only digits and a sign are left, so failing means out of range.
            token[..body.len()]
                .parse::<i64>()
                .map(FieldValue::Int)
                .map_err(|_| "is out of range for a signed 64-bit integer")
        }
        b'u' => {
            if is_integer(body, false) {
                token[..body.len()]
                    .parse::<u64>()
                    .map(FieldValue::Uint)
                    .map_err(|_| "is out of range for an unsigned 64-bit integer")
            } else if is_integer(body, true) {
                Err("is negative, but unsigned integers (`u`) cannot be")
            } else {
                Err(NOT_A_VALUE)
            }
        }
        _ => {
            if is_float(b) {
                match token.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(FieldValue::Float(v)),
                    Ok(_) => Err("is not a finite number (it overflows a 64-bit float)"),
                    Err(_) => Err(NOT_A_VALUE),
                }
            } else if is_nan_or_inf(token) {
                Err("is not a finite number: line protocol cannot carry NaN or infinity")
            } else {
                Err(NOT_A_VALUE)
            }
        }
    }
}

/// `-?[0-9]+` (the sign only if `signed`).
fn is_integer(b: &[u8], signed: bool) -> bool {
    let digits = match b {
        [b'-', rest @ ..] if signed => rest,
        _ => b,
    };
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// `-?(D+(.D*)?|.D+)([eE][+-]?D+)?`
fn is_float(b: &[u8]) -> bool {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut mantissa_digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        mantissa_digits += i - frac_start;
    }
    if mantissa_digits == 0 {
        return false;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

fn is_nan_or_inf(token: &str) -> bool {
    let t = token
        .strip_prefix('-')
        .or_else(|| token.strip_prefix('+'))
        .unwrap_or(token);
    ["nan", "inf", "infinity"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
}

fn parse_timestamp(token: &str, precision: Precision) -> Result<i64, String> {
    if !is_integer(token.as_bytes(), true) {
        let hint = if token.contains('=') {
            " (fields are separated by `,`, not spaces)"
        } else {
            ""
        };
        return Err(format!(
            "timestamp `{}` is not an integer{hint}",
            snippet(token)
        ));
    }
    let t: i64 = token.parse().map_err(|_| {
        format!(
            "timestamp `{}` is out of range for a 64-bit integer",
            snippet(token)
        )
    })?;
    precision.to_nanos(t).ok_or_else(|| {
        format!(
            "timestamp `{}` with precision `{precision}` overflows a 64-bit nanosecond time",
            snippet(token)
        )
    })
}

/// `s` for an error message, cut to a readable length at a char boundary.
fn snippet(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

fn escape_measurement(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let plain = !matches!(b.first(), Some(b'#' | b'\t'))
        && !b.iter().any(|&c| matches!(c, b',' | b' ' | b'\\'));
    if plain {
        out.extend_from_slice(b);
        return;
    }
    for (i, &c) in b.iter().enumerate() {
        let first = i == 0;
        if c == b'\\' {
            // Double it only where the parser would otherwise read an escape.
            let doubled = match b.get(i + 1) {
                None => true,
                Some(&next) => is_measurement_escapable(next, first),
            };
            out.extend_from_slice(if doubled { b"\\\\" } else { b"\\" });
        } else {
            if is_measurement_escapable(c, first) {
                out.push(b'\\');
            }
            out.push(c);
        }
    }
}

/// Tag keys, tag values and field keys.
fn escape_name(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    if !b.iter().any(|&c| is_name_escapable(c)) {
        out.extend_from_slice(b);
        return;
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b'\\' {
            let doubled = match b.get(i + 1) {
                None => true,
                Some(&next) => is_name_escapable(next),
            };
            out.extend_from_slice(if doubled { b"\\\\" } else { b"\\" });
        } else {
            if is_name_escapable(c) {
                out.push(b'\\');
            }
            out.push(c);
        }
    }
}

fn encode_value(v: &FieldValue, out: &mut Vec<u8>) {
    match v {
        FieldValue::Float(f) => write_f64(*f, out),
        FieldValue::Int(n) => {
            write_i64(*n, out);
            out.push(b'i');
        }
        FieldValue::Uint(n) => {
            write_u64(*n, out);
            out.push(b'u');
        }
        FieldValue::Bool(true) => out.extend_from_slice(b"true"),
        FieldValue::Bool(false) => out.extend_from_slice(b"false"),
        FieldValue::Str(s) => {
            out.push(b'"');
            let b = s.as_bytes();
            if b.iter().any(|&c| is_string_escapable(c)) {
                for &c in b {
                    if is_string_escapable(c) {
                        out.push(b'\\');
                    }
                    out.push(c);
                }
            } else {
                out.extend_from_slice(b);
            }
            out.push(b'"');
        }
    }
}

/// Shortest decimal that parses back to the same `f64`: plain notation (`1`, `0.25`) for
/// ordinary magnitudes, exponent notation (`1e300`, `5e-324`) for very large or small ones.
fn write_f64(f: f64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let a = f.abs();
    let r = if a == 0.0 || (1e-5..1e16).contains(&a) {
        write!(out, "{f}")
    } else {
        write!(out, "{f:e}")
    };
    debug_assert!(r.is_ok(), "writing to a Vec cannot fail");
}

fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(n: i64, out: &mut Vec<u8>) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(n.unsigned_abs(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions {
        ParseOptions {
            precision: Precision::Nanos,
            default_time: 42,
        }
    }

    fn one(line: &str) -> Point {
        let mut v = parse(line.as_bytes(), opts())
            .unwrap_or_else(|e| panic!("`{line}` should parse, got: {e}"));
        assert_eq!(v.len(), 1, "`{line}`");
        v.pop().unwrap()
    }

    fn err(body: &str) -> ParseErrors {
        match parse(body.as_bytes(), opts()) {
            Ok(p) => panic!("`{body}` should fail, got {p:?}"),
            Err(e) => e,
        }
    }

    fn pt(m: &str, tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>, time: i64) -> Point {
        Point {
            measurement: m.to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            time,
        }
    }

    use FieldValue::{Bool, Float, Int, Str, Uint};

    #[test]
    fn field_types() {
        let cases: Vec<(&str, FieldValue)> = vec![
            ("1", Float(1.0)),
            ("1.5", Float(1.5)),
            ("-1.5e3", Float(-1500.0)),
            ("1.", Float(1.0)),
            (".5", Float(0.5)),
            ("-.5", Float(-0.5)),
            ("2E-3", Float(0.002)),
            ("1e+2", Float(100.0)),
            ("-0", Float(-0.0)),
            ("1.7976931348623157e308", Float(f64::MAX)),
            ("12i", Int(12)),
            ("-12i", Int(-12)),
            ("9223372036854775807i", Int(i64::MAX)),
            ("-9223372036854775808i", Int(i64::MIN)),
            ("12u", Uint(12)),
            ("0u", Uint(0)),
            ("18446744073709551615u", Uint(u64::MAX)),
            ("t", Bool(true)),
            ("T", Bool(true)),
            ("true", Bool(true)),
            ("True", Bool(true)),
            ("TRUE", Bool(true)),
            ("f", Bool(false)),
            ("F", Bool(false)),
            ("false", Bool(false)),
            ("False", Bool(false)),
            ("FALSE", Bool(false)),
            (r#""hello""#, Str("hello".into())),
            (r#""""#, Str(String::new())),
            (r#""a b,c=d""#, Str("a b,c=d".into())),
            (r#""say \"hi\"""#, Str(r#"say "hi""#.into())),
            (r#""c:\\dir""#, Str(r"c:\dir".into())),
            (r#""c:\dir\n""#, Str(r"c:\dir\n".into())),
            (r#""tail\\""#, Str(r"tail\".into())),
            (r#""温度 🌡""#, Str("温度 🌡".into())),
        ];
        for (text, want) in cases {
            let line = format!("m v={text} 7");
            let p = one(&line);
            assert_eq!(p.fields, vec![("v".to_owned(), want.clone())], "{line}");
            assert_eq!(p.time, 7);
        }
    }

    #[test]
    fn full_line() {
        let p = one(
            "cpu,host=a,region=eu-west usage=0.5,count=3i,ok=t,msg=\"x y\" 1700000000000000000",
        );
        assert_eq!(
            p,
            pt(
                "cpu",
                &[("host", "a"), ("region", "eu-west")],
                vec![
                    ("usage", Float(0.5)),
                    ("count", Int(3)),
                    ("ok", Bool(true)),
                    ("msg", Str("x y".into())),
                ],
                1_700_000_000_000_000_000
            )
        );
    }

    #[test]
    fn escapes_in_every_position() {
        let cases: Vec<(&str, Point)> = vec![
            (
                r"my\ meas\,ure,t\ k\,e\=y=v\ a\,l\=ue f\ k\,e\=y=1",
                pt(
                    "my meas,ure",
                    &[("t k,e=y", "v a,l=ue")],
                    vec![("f k,e=y", Float(1.0))],
                    42,
                ),
            ),
            // `=` needs no escape in a measurement, and `\=` stays literal there.
            (
                r"a=b\=c f=1",
                pt(r"a=b\=c", &[], vec![("f", Float(1.0))], 42),
            ),
            // Backslashes before ordinary bytes are literal.
            (
                r"c:\path,k=d:\dir f\x=1",
                pt(
                    r"c:\path",
                    &[("k", r"d:\dir")],
                    vec![(r"f\x", Float(1.0))],
                    42,
                ),
            ),
            // `\\` is one backslash; a trailing one has to be doubled.
            (
                r"m\\,k\\=v\\ f\\=1",
                pt(r"m\", &[(r"k\", r"v\")], vec![(r"f\", Float(1.0))], 42),
            ),
            // `\#` is an escape only at the start of the measurement.
            (r"\#hash f=1", pt("#hash", &[], vec![("f", Float(1.0))], 42)),
            (r"a\#b f=1", pt(r"a\#b", &[], vec![("f", Float(1.0))], 42)),
            (r"\ lead f=1", pt(" lead", &[], vec![("f", Float(1.0))], 42)),
            ("\\\ttab f=1", pt("\ttab", &[], vec![("f", Float(1.0))], 42)),
            // `=` in tag values may be unescaped; `"` in names is literal.
            (
                r#"m,k=a=b "f"=1"#,
                pt("m", &[("k", "a=b")], vec![(r#""f""#, Float(1.0))], 42),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(one(line), want, "{line}");
        }
    }

    #[test]
    fn unicode() {
        let p = one("温度,城市=北京,emoji=🔥🚀 值=21.5,备注=\"très 😀\" 1");
        assert_eq!(
            p,
            pt(
                "温度",
                &[("城市", "北京"), ("emoji", "🔥🚀")],
                vec![("值", Float(21.5)), ("备注", Str("très 😀".into()))],
                1
            )
        );
        // Escapes next to multi-byte characters.
        let p = one(r"é\,ü,ß\ =\\ö f=1");
        assert_eq!(p.measurement, "é,ü");
        assert_eq!(p.tags, vec![("ß ".to_owned(), r"\ö".to_owned())]);
    }

    #[test]
    fn crlf_comments_blank_lines_and_spacing() {
        let body = "# a comment\r\n\r\n   \n\t\n  # indented comment\ncpu f=1 10\r\n  \tmem  f=2i   20  \ndisk f=3\r\n\n";
        let points = parse(body.as_bytes(), opts()).unwrap();
        assert_eq!(
            points,
            vec![
                pt("cpu", &[], vec![("f", Float(1.0))], 10),
                pt("mem", &[], vec![("f", Int(2))], 20),
                pt("disk", &[], vec![("f", Float(3.0))], 42),
            ]
        );
        assert_eq!(parse(b"", opts()).unwrap(), vec![]);
        assert_eq!(parse(b"\n\n\r\n", opts()).unwrap(), vec![]);
        // Trailing spaces after the field set with no timestamp.
        assert_eq!(one("m f=1   ").time, 42);
        assert_eq!(one("m,t=1    f=1    5").time, 5);
    }

    #[test]
    fn precisions() {
        let cases = [
            ("n", Precision::Nanos, 5),
            ("ns", Precision::Nanos, 5),
            ("u", Precision::Micros, 5_000),
            ("us", Precision::Micros, 5_000),
            ("µs", Precision::Micros, 5_000),
            ("ms", Precision::Millis, 5_000_000),
            ("s", Precision::Seconds, 5_000_000_000),
            ("m", Precision::Minutes, 300_000_000_000),
            ("h", Precision::Hours, 18_000_000_000_000),
        ];
        for (name, precision, want) in cases {
            assert_eq!(name.parse::<Precision>(), Ok(precision));
            assert_eq!(precision.as_str().parse::<Precision>(), Ok(precision));
            let o = ParseOptions {
                precision,
                default_time: 99,
            };
            let points = parse(b"m f=1 5\nm f=1 -5\nm f=1", o).unwrap();
            assert_eq!(points[0].time, want, "{name}");
            assert_eq!(points[1].time, -want, "{name}");
            // No timestamp: default_time, not scaled.
            assert_eq!(points[2].time, 99, "{name}");
        }
        let e = "sec".parse::<Precision>().unwrap_err();
        assert!(
            e.contains("`sec`") && e.contains("ns, u, us") && e.contains(", h"),
            "{e}"
        );
        assert_eq!(Precision::default(), Precision::Nanos);
        assert_eq!(Precision::Hours.to_nanos(i64::MAX), None);
        assert_eq!(Precision::Seconds.to_nanos(-2), Some(-2_000_000_000));
    }

    /// (body, line, column, message fragment)
    #[test]
    fn error_kinds() {
        let cases: &[(&str, usize, usize, &str)] = &[
            (
                "m f=12x",
                1,
                5,
                "value `12x` is not a number, integer (`1i`), unsigned (`1u`), boolean or quoted string",
            ),
            (
                "m",
                1,
                2,
                "missing field set: a line needs at least one field after the first unescaped space",
            ),
            ("m,t=1   ", 1, 9, "missing field set"),
            (
                "ok f=1\nm f=1,msg=\"abc",
                2,
                11,
                "unterminated string in field `msg`",
            ),
            ("m f=\"a\\\"", 1, 5, "unterminated string in field `f`"),
            ("m f=1 abc", 1, 7, "timestamp `abc` is not an integer"),
            (
                "m f=1 g=2",
                1,
                7,
                "not an integer (fields are separated by `,`, not spaces)",
            ),
            ("m f=1 1.5", 1, 7, "timestamp `1.5` is not an integer"),
            (
                "m f=1 99999999999999999999",
                1,
                7,
                "out of range for a 64-bit integer",
            ),
            ("m f=1 1 2", 1, 9, "unexpected `2` after the timestamp"),
            (",t=1 f=1", 1, 1, "missing measurement"),
            ("m,=v f=1", 1, 3, "empty tag key"),
            ("m, f=1", 1, 3, "empty tag key"),
            ("m,t f=1", 1, 4, "tag key `t` is missing `=value`"),
            ("m,t= f=1", 1, 5, "tag `t` has an empty value"),
            ("m,t=1,u=2,t=3 f=1", 1, 11, "duplicate tag key `t`"),
            ("m f=1,f=2", 1, 7, "duplicate field key `f`"),
            ("m =1", 1, 3, "empty field key"),
            (
                "m f=1,",
                1,
                7,
                "empty field key: a `,` in the field set must be followed",
            ),
            ("m f", 1, 4, "field key `f` is missing `=value`"),
            ("m f=", 1, 5, "field `f` has no value"),
            ("m f=,g=1", 1, 5, "field `f` has no value"),
            (
                "m f=\"a\"x",
                1,
                8,
                "unexpected `x` after the closing quote of field `f`",
            ),
            ("m f=NaN", 1, 5, "is not a finite number"),
            ("m f=-inf", 1, 5, "is not a finite number"),
            ("m f=Infinity", 1, 5, "is not a finite number"),
            ("m f=1e999", 1, 5, "is not a finite number"),
            ("m f=+1", 1, 5, "is not a number"),
            ("m f=1e", 1, 5, "is not a number"),
            ("m f=.", 1, 5, "is not a number"),
            ("m f=-", 1, 5, "is not a number"),
            ("m f=i", 1, 5, "is not a number"),
            ("m f=1.5i", 1, 5, "is not a number"),
            ("m f=yes", 1, 5, "is not a number"),
            (
                "m f=9223372036854775808i",
                1,
                5,
                "out of range for a signed 64-bit integer",
            ),
            (
                "m f=18446744073709551616u",
                1,
                5,
                "out of range for an unsigned 64-bit integer",
            ),
            ("m f=-1u", 1, 5, "is negative"),
            // An escaped space does not separate: the tag value swallows the field set.
            (r"m,k=v\ f=1", 1, 11, "missing field set"),
        ];
        for &(body, line, column, fragment) in cases {
            let e = err(body);
            assert_eq!(e.total, 1, "{body}: {e}");
            let got = &e.errors[0];
            assert!(got.message.contains(fragment), "{body}: {got}");
            assert_eq!((got.line, got.column), (line, column), "{body}: {got}");
        }
    }

    #[test]
    fn timestamp_overflow_by_precision() {
        let o = ParseOptions {
            precision: Precision::Seconds,
            default_time: 0,
        };
        let e = parse(b"m f=1 9223372037", o).unwrap_err();
        assert!(
            e.errors[0].message.contains("with precision `s` overflows"),
            "{e}"
        );
        assert_eq!(e.errors[0].column, 7);
        // The largest that fits.
        assert_eq!(
            parse(b"m f=1 9223372036", o).unwrap()[0].time,
            9_223_372_036_000_000_000
        );
        assert_eq!(one("m f=1 -9223372036854775808").time, i64::MIN);
    }

    #[test]
    fn invalid_utf8_reports_its_line() {
        let mut body = b"ok f=1\nok f=2\nm,t=a".to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(b" f=1\nok f=3");
        let e = parse(&body, opts()).unwrap_err();
        assert_eq!(e.total, 1);
        assert_eq!(
            e.errors[0],
            LineError {
                line: 3,
                column: 6,
                message: "invalid UTF-8".into()
            }
        );
        assert_eq!(e.to_string(), "1 bad line; line 3, column 6: invalid UTF-8");
    }

    #[test]
    fn bad_third_line() {
        let e = err("a f=1\nb f=2\nc f=oops\nd f=4");
        assert_eq!(e.total, 1);
        assert_eq!(e.errors[0].line, 3);
        assert_eq!(e.errors[0].column, 5);
        // CRLF and comment lines still count as lines.
        let e = err("# c\r\n\r\nc,t f=1\r\n");
        assert_eq!((e.errors[0].line, e.errors[0].column), (3, 4));
    }

    #[test]
    fn keeps_ten_and_counts_all() {
        let mut body = String::new();
        for i in 0..15 {
            if i % 5 == 2 {
                body.push_str("good f=1\n");
            } else {
                body.push_str("bad\n");
            }
        }
        let e = err(&body);
        assert_eq!(e.total, 12);
        assert_eq!(e.errors.len(), 10);
        let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 6, 7, 9, 10, 11, 12]);
        let text = e.to_string();
        assert!(
            text.starts_with("12 bad lines; line 1, column 4: missing field set"),
            "{text}"
        );
        assert!(text.ends_with("; and 2 more"), "{text}");
    }

    #[test]
    fn display_lists_kept_errors() {
        let e = err("m f=1\nx\nm f=2\nm f=1 t");
        assert_eq!(
            e.to_string(),
            "2 bad lines; line 2, column 2: missing field set: a line needs at least one field \
             after the first unescaped space; line 4, column 7: timestamp `t` is not an integer"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(500);
        let e = err(&format!("m f={long}"));
        let msg = &e.errors[0].message;
        assert!(msg.len() < 200 && msg.contains('…'), "{msg}");
    }

    fn round_trip(p: &Point) {
        let line = p.to_line_protocol();
        let back = parse(line.as_bytes(), opts())
            .unwrap_or_else(|e| panic!("{p:?} encoded as `{line}` does not parse: {e}"));
        assert_eq!(back, vec![p.clone()], "encoded as `{line}`");
        // The encoding is canonical.
        assert_eq!(back[0].to_line_protocol(), line);
    }

    #[test]
    fn round_trip_tricky_points() {
        let tricky = [
            "",
            " ",
            "a",
            "a\\",
            "\\",
            "\\\\",
            "a\\b",
            "a\\,",
            "\\ ",
            ",",
            "=",
            " a ",
            "a=b",
            "#",
            "#x",
            "\\#",
            "\t",
            "\tx",
            "x\t",
            "\"",
            "\"q\"",
            "温度",
            "🔥 🚀",
            "c:\\dir\\",
            "a\\=b",
            "a\\\\\\",
            "\r",
            "x\ry",
        ];
        let mut points = Vec::new();
        for s in tricky {
            if s.is_empty() {
                // Names can't be empty; only strings can.
                points.push(pt("m", &[], vec![("s", Str(String::new()))], 0));
                continue;
            }
            points.push(pt(
                s,
                &[(s, s), ("k", s)],
                vec![(s, Str(s.to_owned())), ("f", Float(1.0))],
                -1,
            ));
            points.push(pt(
                &format!("{s}{s}"),
                &[],
                vec![("x", Str(format!("{s}\\")))],
                1,
            ));
        }
        points.push(pt(
            "#m",
            &[],
            vec![
                ("f", Float(0.1)),
                ("g", Float(1.0)),
                ("h", Float(-0.0)),
                ("big", Float(f64::MAX)),
                ("small", Float(f64::MIN_POSITIVE)),
                ("tiny", Float(5e-324)),
                ("e16", Float(1e16)),
                ("e15", Float(123456789012345.6)),
                ("i", Int(i64::MIN)),
                ("j", Int(i64::MAX)),
                ("u", Uint(u64::MAX)),
                ("b", Bool(false)),
                ("t", Bool(true)),
            ],
            i64::MAX,
        ));
        for p in &points {
            round_trip(p);
        }
        // And all of them in one body.
        let mut body = Vec::new();
        encode_points(&points, &mut body);
        assert_eq!(parse(&body, opts()).unwrap(), points);
    }

    #[test]
    fn encoding_is_readable() {
        let p = pt(
            "cpu load",
            &[("host", "a,b"), ("path", r"c:\dir")],
            vec![
                ("v", Float(1.0)),
                ("n", Int(-3)),
                ("u", Uint(3)),
                ("ok", Bool(true)),
                ("s", Str(r#"say "hi" \o/"#.into())),
            ],
            123,
        );
        assert_eq!(
            p.to_line_protocol(),
            r#"cpu\ load,host=a\,b,path=c:\dir v=1,n=-3i,u=3u,ok=true,s="say \"hi\" \\o/" 123"#
        );
        assert_eq!(
            pt("#x", &[("k", r"v\")], vec![("f", Float(1e300))], 0).to_line_protocol(),
            r"\#x,k=v\\ f=1e300 0"
        );
        let mut out = Vec::new();
        encode_points(&[], &mut out);
        assert!(out.is_empty());
        encode_points(&[p.clone(), p], &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_ne!(out.last(), Some(&b'\n'));
    }

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const ALPHABET: &[&str] = &[
        "a", "b", "Z", "0", "1", "-", ".", " ", ",", "=", "\\", "\"", "#", "\t", "\r", "i", "u",
        "t", "e", "é", "温", "🔥", "'",
    ];

    fn random_text(rng: &mut Rng, min: usize) -> String {
        let n = min + rng.below(6);
        (0..n)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect()
    }

    /// Random points survive encode → parse; random junk never panics the parser.
    #[test]
    fn random_round_trip_and_junk() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut p = Point {
                measurement: random_text(&mut rng, 1),
                tags: Vec::new(),
                fields: Vec::new(),
                time: rng.next() as i64,
            };
            for _ in 0..rng.below(4) {
                let k = random_text(&mut rng, 1);
                if p.tags.iter().all(|(x, _)| *x != k) {
                    p.tags.push((k, random_text(&mut rng, 1)));
                }
            }
            for _ in 0..1 + rng.below(4) {
                let k = random_text(&mut rng, 1);
                if p.fields.iter().any(|(x, _)| *x == k) {
                    continue;
                }
                let v = match rng.below(6) {
                    0 => {
                        let f = f64::from_bits(rng.next());
                        Float(if f.is_finite() { f } else { 0.5 })
                    }
                    1 => Float((rng.next() % 100_000) as f64 / 8.0),
                    2 => Int(rng.next() as i64),
                    3 => Uint(rng.next()),
                    4 => Bool(rng.next() & 1 == 1),
                    _ => Str(random_text(&mut rng, 0)),
                };
                p.fields.push((k, v));
            }
            round_trip(&p);

            // Mutate the encoded line and make sure parsing never panics; anything accepted
            // must round-trip as well.
            let mut bytes = p.to_line_protocol().into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 => {
                        let s = ALPHABET[rng.below(ALPHABET.len())];
                        bytes.splice(at..at, s.bytes());
                    }
                    _ => bytes.insert(at, (rng.next() & 0xff) as u8),
                }
            }
            if let Ok(points) = parse(&bytes, opts()) {
                for q in &points {
                    round_trip(q);
                }
            }
        }
    }
}
