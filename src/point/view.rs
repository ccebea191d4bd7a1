//! A line of a [`Text`](super::Text) read again, one part at a time.
//!
//! In: one line the parser has already checked. Out: its measurement, a tag or field by
//! key, all its tags or fields, its timestamp: each found by scanning the line's bytes,
//! without the checks and without the allocations of building a [`Point`](super::Point).
//!
//! Why: a sinker condition asks for a few columns of a batch (a `host` tag, the
//! measurement); parsing every point whole to answer it cost more than the rest of
//! routing. The answers are those of the parsed point, exactly (the tests compare them
//! over the parser's own cases).

use std::borrow::Cow;

use super::FieldValue;
use super::lineproto::{
    STRING_SPECIAL, TOKEN_END, find, is_measurement_escapable, is_name_escapable,
    is_string_escapable, parse_scalar, scan_measurement, scan_name, skip_spaces, unescape,
};

/// One checked line (without its `\n`): `measurement[,tag=v…] field=v[,field=v…] time`,
/// the time in nanoseconds as [`super::Text`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct LineView<'a> {
    s: &'a str,
    b: &'a [u8],
    /// Where the line starts in its [`super::Text`] (0 for a line on its own): what a
    /// [`ValueAt`] counts from.
    base: usize,
    /// Where the measurement ends (the tag set or the spaces before the field set start).
    m_end: usize,
    m_esc: bool,
}

/// A key or value in the line: where it is and whether it holds a backslash.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    esc: bool,
}

/// Where a tag value is in a [`super::Text`] (a column of them per key is what a batch
/// keeps between a `key-counts` scan and the `tag-column` that follows); the default:
/// nowhere (no tag value starts at a text's first byte, where a measurement is). Read back
/// with [`super::Text::tag_value`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueAt {
    start: u32,
    end: u32,
    esc: bool,
}

impl ValueAt {
    fn new(base: usize, v: Span) -> ValueAt {
        // A text's offsets fit in u32: its line ends are u32.
        ValueAt {
            start: (base + v.start) as u32,
            end: (base + v.end) as u32,
            esc: v.esc,
        }
    }

    /// The value at `start..end` of its text (`esc`: it holds a backslash).
    pub(super) fn at(start: usize, end: usize, esc: bool) -> ValueAt {
        ValueAt {
            start: start as u32,
            end: end as u32,
            esc,
        }
    }

    /// Whether the value holds a backslash (so reading it unescapes into a new string).
    pub fn escaped(self) -> bool {
        self.esc
    }

    /// The value's byte range in its text and whether it holds an escape; `None`: nowhere.
    pub(super) fn range(self) -> Option<(usize, usize, bool)> {
        (self.start != 0).then_some((self.start as usize, self.end as usize, self.esc))
    }
}

/// A field value in the line, not yet read: a quoted string, or a token.
#[derive(Debug, Clone, Copy)]
enum RawValue {
    Str(Span),
    Token(usize, usize),
}

impl<'a> LineView<'a> {
    /// The view of `line`, which the parser checked (a [`super::Text`] line).
    pub fn new(line: &'a str) -> LineView<'a> {
        LineView::at(line, 0)
    }

    /// The view of `line`, which starts at byte `base` of its text.
    pub(super) fn at(line: &'a str, base: usize) -> LineView<'a> {
        let b = line.as_bytes();
        let (m_end, m_esc) = scan_measurement(b, 0);
        LineView {
            s: line,
            b,
            base,
            m_end,
            m_esc,
        }
    }

    /// Where the line starts in its text (what [`LineView::tag_at_and_fields_start`]
    /// counts from).
    pub fn base(&self) -> usize {
        self.base
    }

    /// The line's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.b
    }

    /// The text at `start..end`: the scans end on ASCII bytes, so on char boundaries.
    fn str(&self, start: usize, end: usize) -> &'a str {
        &self.s[start..end]
    }

    fn name(&self, s: Span) -> Cow<'a, str> {
        let raw = self.str(s.start, s.end);
        if s.esc {
            Cow::Owned(unescape(raw, |c, _| is_name_escapable(c)))
        } else {
            Cow::Borrowed(raw)
        }
    }

    fn is_key(&self, s: Span, key: &str) -> bool {
        if s.esc {
            self.name(s) == key
        } else {
            &self.b[s.start..s.end] == key.as_bytes()
        }
    }

    /// The measurement, unescaped.
    pub fn measurement(&self) -> Cow<'a, str> {
        let raw = self.str(0, self.m_end);
        if self.m_esc {
            Cow::Owned(unescape(raw, is_measurement_escapable))
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// The tags' key and value spans, in line order.
    fn tag_spans(self) -> impl Iterator<Item = (Span, Span)> + 'a {
        let b = self.b;
        let mut i = self.m_end;
        std::iter::from_fn(move || {
            if i >= b.len() || b[i] != b',' {
                return None;
            }
            let (k_end, k_esc) = scan_name(b, i + 1, true);
            let key = Span {
                start: i + 1,
                end: k_end,
                esc: k_esc,
            };
            let (v_end, v_esc) = scan_name(b, k_end + 1, false);
            let value = Span {
                start: k_end + 1,
                end: v_end,
                esc: v_esc,
            };
            i = v_end;
            Some((key, value))
        })
    }

    /// Where the field set starts.
    fn fields_start(&self) -> usize {
        let mut end = self.m_end;
        for (_, v) in self.tag_spans() {
            end = v.end;
        }
        skip_spaces(self.b, end)
    }

    /// The field set as written (from its first key to the end of its last value).
    pub fn field_set(&self) -> &'a str {
        self.tags_at_and_field_set(|_, _| {})
    }

    /// Calls `each` with every tag key and where its value is, in line order, and returns
    /// the field set: one scan of the tags for both (what `key-counts` over text needs of
    /// every line; the places let a tag column be read later without scanning again).
    pub fn tags_at_and_field_set(self, mut each: impl FnMut(Cow<'a, str>, ValueAt)) -> &'a str {
        let mut tags_end = self.m_end;
        for (k, v) in self.tag_spans() {
            each(self.name(k), ValueAt::new(self.base, v));
            tags_end = v.end;
        }
        let end = self
            .b
            .iter()
            .rposition(|&c| c == b' ')
            .expect("a text line ends with its timestamp");
        &self.s[skip_spaces(self.b, tags_end)..end]
    }

    /// The fields' key spans and raw values, in line order.
    fn field_spans(self) -> impl Iterator<Item = (Span, RawValue)> + 'a {
        let b = self.b;
        let mut i = Some(self.fields_start());
        std::iter::from_fn(move || {
            let start = i?;
            let (k_end, k_esc) = scan_name(b, start, true);
            let key = Span {
                start,
                end: k_end,
                esc: k_esc,
            };
            let v = k_end + 1;
            let (value, end) = if b[v] == b'"' {
                let mut j = v + 1;
                let mut esc = false;
                loop {
                    j = find(b, j, &STRING_SPECIAL);
                    match b[j] {
                        b'"' => break,
                        // `\` then any byte: an escape is two bytes, a lone `\` is kept
                        // and its next byte read as usual (a `"` after it still ends
                        // the string only if it is not itself escapable).
                        _ if j + 1 < b.len() && is_string_escapable(b[j + 1]) => {
                            esc = true;
                            j += 2;
                        }
                        _ => j += 1,
                    }
                }
                let span = Span {
                    start: v + 1,
                    end: j,
                    esc,
                };
                (RawValue::Str(span), j + 1)
            } else {
                let end = find(b, v, &TOKEN_END);
                (RawValue::Token(v, end), end)
            };
            i = (end < b.len() && b[end] == b',').then_some(end + 1);
            Some((key, value))
        })
    }

    fn value(&self, v: RawValue) -> FieldValue {
        match v {
            RawValue::Str(s) => {
                let raw = self.str(s.start, s.end);
                FieldValue::Str(if s.esc {
                    unescape(raw, |c, _| is_string_escapable(c))
                } else {
                    raw.to_owned()
                })
            }
            RawValue::Token(start, end) => {
                parse_scalar(self.str(start, end)).expect("checked values parse again")
            }
        }
    }

    /// The value of tag `key`, unescaped.
    pub fn tag(&self, key: &str) -> Option<Cow<'a, str>> {
        self.tag_spans()
            .find(|&(k, _)| self.is_key(k, key))
            .map(|(_, v)| self.name(v))
    }

    /// Where the value of tag `key` is in the line's text (the first, if repeated), and
    /// where the field set starts: one walk of the tags for both.
    pub fn tag_at_and_fields_start(&self, key: &str) -> (Option<ValueAt>, usize) {
        let (mut found, mut end) = (None, self.m_end);
        for (k, v) in self.tag_spans() {
            if found.is_none() && self.is_key(k, key) {
                found = Some(ValueAt::new(self.base, v));
            }
            end = v.end;
        }
        (found, self.base + skip_spaces(self.b, end))
    }

    /// Every tag, in line order.
    pub fn tags(&self) -> Vec<(String, String)> {
        self.tag_spans()
            .map(|(k, v)| (self.name(k).into_owned(), self.name(v).into_owned()))
            .collect()
    }

    /// The tag keys, in line order.
    pub fn tag_keys(self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.tag_spans().map(move |(k, _)| self.name(k))
    }

    /// The value of field `key`.
    pub fn field(&self, key: &str) -> Option<FieldValue> {
        self.field_spans()
            .find(|&(k, _)| self.is_key(k, key))
            .map(|(_, v)| self.value(v))
    }

    /// Every field, in line order.
    pub fn fields(&self) -> Vec<(String, FieldValue)> {
        self.field_spans()
            .map(|(k, v)| (self.name(k).into_owned(), self.value(v)))
            .collect()
    }

    /// The field keys, in line order.
    pub fn field_keys(self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.field_spans().map(move |(k, _)| self.name(k))
    }

    /// The timestamp, in nanoseconds (the line's last token, as [`super::Text`] writes it).
    pub fn time(&self) -> i64 {
        let at = self
            .b
            .iter()
            .rposition(|&c| c == b' ')
            .expect("a text line ends with its timestamp");
        self.str(at + 1, self.b.len())
            .parse()
            .expect("a text line's timestamp is an integer")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rand::{RngExt, SeedableRng};

    use crate::point::{ParseOptions, Point, Precision, parse, parse_text};

    fn opts() -> ParseOptions {
        ParseOptions {
            precision: Precision::Nanos,
            default_time: 42,
        }
    }

    /// Every part a view reads equals the parsed point's, and a key a line lacks is absent.
    fn check(body: &str) {
        let points = parse(body.as_bytes(), opts()).unwrap();
        let text = parse_text(body.as_bytes(), opts()).unwrap();
        assert_eq!(text.len(), points.len());
        for (view, p) in text.lines().zip(&points) {
            let line = String::from_utf8_lossy(view.as_bytes()).into_owned();
            assert_eq!(view.measurement(), p.measurement, "{line}");
            assert_eq!(view.tags(), p.tags, "{line}");
            assert_eq!(view.fields(), p.fields, "{line}");
            assert_eq!(view.time(), p.time, "{line}");
            let set = view.field_set();
            assert!(line.ends_with(&format!("{set} {}", p.time)), "{line}");
            assert!(
                p.fields
                    .iter()
                    .all(|(k, _)| set.contains(k.as_str()) || k.contains([',', '=', ' ', '\\'])),
                "{line}"
            );
            for (k, v) in &p.tags {
                assert_eq!(view.tag(k).as_deref(), Some(v.as_str()), "{line}");
            }
            for (k, v) in &p.fields {
                assert_eq!(view.field(k).as_ref(), Some(v), "{line}");
            }
            let keys: Vec<_> = view.tag_keys().collect();
            assert_eq!(
                keys,
                p.tags.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
            );
            let keys: Vec<_> = view.field_keys().collect();
            assert_eq!(
                keys,
                p.fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
            );
            for absent in ["nope", "hos", "hostx", ""] {
                assert_eq!(view.tag(absent), p.tag(absent).map(Into::into), "{line}");
                assert_eq!(view.field(absent).as_ref(), p.field(absent), "{line}");
            }
        }
    }

    #[test]
    fn a_view_reads_what_the_parser_reads_from_awkward_lines() {
        check(
            "cpu,host=a  v=1.50,ok=T,s=\"a b\\\"c\"   17  \r\n\
             # comment\n\n\
             m\\,e\\ as,t\\ k=v\\,1,k2=a=b f\\=x=1i,g=2u,h=-3.5e3,i=\"x\\\\\",j=false 1\n\
             \\#hash,host=b\\ c used=3i,s=\"tab\there, comma, \\\"q\\\" \"\n\
             cpu usage=1e-9,s=\"\",n=-0.0\n\
             héllo,clé=välue wört=\"ü \\ x\"\n\
             m,t=\\  f=\"a\\b\",s2=\"\\\\\\\"\" -5\n",
        );
    }

    /// Random lines from an alphabet heavy in the characters line protocol escapes.
    #[test]
    fn a_view_reads_what_the_parser_reads_from_random_lines() {
        check(&random_lines(12));
    }

    /// 2,000 random lines (those the parser takes) from an alphabet heavy in the
    /// characters line protocol escapes; keys and values are made of `a`, `b`, `é`, `0`,
    /// `_` and those characters.
    pub(in crate::point) fn random_lines(seed: u64) -> String {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let name = |rng: &mut rand::rngs::StdRng, special: &[&str]| -> String {
            let n = rng.random_range(1..6);
            (0..n)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        special[rng.random_range(0..special.len())].to_string()
                    } else {
                        ["a", "b", "é", "0", "_"][rng.random_range(0..5)].to_string()
                    }
                })
                .collect()
        };
        let mut body = String::new();
        for _ in 0..2000 {
            let mut line = name(&mut rng, &["\\,", "\\ ", "\\\\", "="]);
            if line.starts_with('=') {
                line.insert(0, 'm');
            }
            let mut keys = std::collections::HashSet::new();
            for _ in 0..rng.random_range(0..4) {
                let k = name(&mut rng, &["\\,", "\\ ", "\\=", "\\\\"]);
                if keys.insert(k.clone()) {
                    let v = name(&mut rng, &["\\,", "\\ ", "=", "\\\\"]);
                    line.push_str(&format!(",{k}={v}"));
                }
            }
            line.push(' ');
            let mut keys = std::collections::HashSet::new();
            for i in 0..rng.random_range(1..5) {
                let k = name(&mut rng, &["\\,", "\\ ", "\\=", "\\\\"]);
                if !keys.insert(k.clone()) {
                    continue;
                }
                if i > 0 {
                    line.push(',');
                }
                let v = match rng.random_range(0..5) {
                    0 => format!("{}", rng.random::<f64>() * 1e6),
                    1 => format!("{}i", rng.random::<i32>()),
                    2 => format!("{}u", rng.random::<u32>()),
                    3 => ["t", "F", "true", "FALSE"][rng.random_range(0..4)].to_string(),
                    _ => format!(
                        "\"{}\"",
                        name(&mut rng, &["\\\"", "\\\\", " ", ",", "=", "\\x"])
                    ),
                };
                line.push_str(&format!("{k}={v}"));
            }
            if rng.random_bool(0.5) {
                line.push_str(&format!(" {}", rng.random::<u32>()));
            }
            body.push_str(&line);
            body.push('\n');
        }
        // The generator may make a line the parser refuses (e.g. a field key repeated
        // after unescaping); those are left out, the rest must all be read alike.
        let good: String = body
            .lines()
            .filter(|l| parse(l.as_bytes(), opts()).is_ok())
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(good.lines().count() > 1500, "{}", good.lines().count());
        good
    }

    /// A selection is the chosen lines, in order, as they were; none or all work too.
    #[test]
    fn select_keeps_the_chosen_lines_as_they_were() {
        let body = "a v=1 1\nb,t=x v=\"s p\" 2\nc v=3i 3\nd v=4u 4\ne v=T 5\n";
        let text = parse_text(body.as_bytes(), opts()).unwrap();
        let all: Vec<Point> = parse(body.as_bytes(), opts()).unwrap();
        for mask in 0u32..32 {
            let keep = |i: usize| mask & (1 << i) != 0;
            let chosen = text.select(keep);
            let want: Vec<Point> = (0..5)
                .filter(|&i| keep(i))
                .map(|i| all[i].clone())
                .collect();
            assert_eq!(chosen.to_points(), want, "mask {mask:05b}");
            assert_eq!(chosen.len(), want.len());
            let lines: Vec<&str> = body
                .lines()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, l)| l)
                .collect();
            assert_eq!(
                std::str::from_utf8(&chosen.joined()).unwrap(),
                lines.join("\n")
            );
        }
    }

    /// `retain` keeps what `select` keeps: in place when the buffer is its own and most
    /// of it stays (the freed bytes still counted as held), by a copy otherwise.
    #[test]
    fn retain_keeps_the_chosen_lines_in_place_when_it_can() {
        let body: String = (0..50).map(|i| format!("m{i},t=x v={i}i {i}\n")).collect();
        let whole = parse_text(body.as_bytes(), opts()).unwrap();
        let size = whole.memory_size();
        for (keep, in_place) in [
            (
                Box::new(|i: usize| i % 10 != 3) as Box<dyn Fn(usize) -> bool>,
                true,
            ),
            (Box::new(|i: usize| i % 10 == 3), false),
            (Box::new(|_| true), true),
            (Box::new(|_| false), false),
        ] {
            let want = whole.select(&keep);
            let text = parse_text(body.as_bytes(), opts()).unwrap();
            let before = text.joined().as_ptr();
            let got = text.retain(&keep);
            assert_eq!(got.joined(), want.joined());
            assert_eq!(got.len(), want.len());
            assert_eq!(got.to_points(), want.to_points());
            assert_eq!(got.joined().as_ptr() == before, in_place);
            if in_place {
                assert_eq!(got.memory_size() - got.len() * 4, size - whole.len() * 4);
            } else {
                assert_eq!(got.memory_size(), want.memory_size());
            }
        }
        // Shared (the WAL holds its bytes): copied, the original left as it was.
        let text = parse_text(body.as_bytes(), opts()).unwrap();
        let held = text.joined();
        let got = text.retain(|i| i != 0);
        assert_ne!(got.joined().as_ptr(), held.as_ptr());
        assert_eq!(held.as_ref(), body.trim_end().as_bytes());
        assert_eq!(got.len(), 49);
    }
}
