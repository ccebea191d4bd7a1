//! Points kept as the line protocol they came in as.
//!
//! In: the lines of a body the parser has checked ([`super::reader::Reader::forwarding`]).
//! Out: request bodies cut from them without encoding anything again.
//!
//! Why: in the common case (no `X-Global-Tags` grouping, line protocol on the wire) the
//! bytes that go out are the bytes that came in, split between sinkers line by line. Keeping them
//! costs ~1/6 of the memory of parsed [`Point`]s and makes the bodies with a copy instead
//! of an encode. Each line is kept from its measurement to the end of its field set, as
//! written, followed by its timestamp in nanoseconds as the encoder writes it: the one part
//! of a line that can change on the way (a line without one is stamped, a `precision`
//! other than `n` is scaled). So a body made here is byte for byte the one
//! [`Point::encode_into`] makes from the same points whenever the input is written as the
//! encoder writes (DataKit's own encoder does); otherwise it is the same points, spelled
//! as the client spelled them (`1.50`, `T`), which every line protocol reader takes alike.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::keys::{Noted, Noting};
use super::lineproto::{is_name_escapable, unescape};
use super::view::{LineView, ValueAt};
use super::{ParseOptions, Point, Precision, parse};

/// A write's points: parsed, or the checked line protocol they came in as (sent without
/// being encoded again: [`Text`]).
#[derive(Debug, Clone)]
pub enum Content {
    Points(Vec<Point>),
    Text(Text),
}

impl Content {
    /// The number of points.
    pub fn len(&self) -> usize {
        match self {
            Content::Points(p) => p.len(),
            Content::Text(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<Point>> for Content {
    fn from(p: Vec<Point>) -> Content {
        Content::Points(p)
    }
}

impl From<Text> for Content {
    fn from(t: Text) -> Content {
        Content::Text(t)
    }
}

/// Checked lines of one category, each ending in `\n`, every one with a timestamp in
/// nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Text {
    bytes: Bytes,
    /// The offset just past each line's `\n`.
    pub(super) ends: Vec<u32>,
    /// The bytes the buffer holds (its capacity): more than `bytes` after
    /// [`Text::retain`] compacted it in place.
    held: usize,
    /// Where the keys the parser was asked to note are ([`super::keys`]); only on a text
    /// as the parser made it.
    pub(super) noted: Option<Arc<Noted>>,
}

impl Text {
    /// Encodes `points` (for writes that arrive parsed, and for tests).
    pub fn from_points(points: &[Point]) -> Text {
        let mut b = TextBuilder::default();
        let mut line = Vec::new();
        for p in points {
            line.clear();
            p.encode_into(&mut line);
            b.buf.extend_from_slice(&line);
            b.end_line();
        }
        b.finish()
    }

    /// Lines joined by `\n` as [`Text::joined`] gives them (a WAL entry), taken as
    /// checked: they were, before they were logged. Only their UTF-8 is checked again (the
    /// lines are read as text when a sinker looks at them): `None` if that fails.
    pub fn from_joined(joined: &[u8]) -> Option<Text> {
        std::str::from_utf8(joined).ok()?;
        let mut b = TextBuilder::with_capacity(joined.len() + 1);
        for line in joined.split(|&c| c == b'\n') {
            b.buf.extend_from_slice(line);
            b.end_line();
        }
        Some(b.finish())
    }

    /// The number of lines (points).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The memory it holds, as the budget counts it.
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Text>()
            + self.held.max(self.bytes.len())
            + self.ends.len() * 4
            + self.noted.as_ref().map_or(0, |n| n.memory_size())
    }

    /// The lines joined by `\n`, with no newline after the last (as
    /// [`super::encode_points`] writes them). No copy.
    pub fn joined(&self) -> Bytes {
        self.bytes.slice(..self.bytes.len().saturating_sub(1))
    }

    /// The lines cut into runs whose joined size stays within `max_raw` bytes (a line over
    /// it alone in its run), as the line protocol body builder cuts points: each run's
    /// bytes (joined, no copy) and its number of lines.
    pub fn runs(&self, max_raw: usize) -> Vec<(Bytes, usize)> {
        let mut out = Vec::new();
        let mut start = 0usize;
        let mut first = 0usize;
        for (i, &end) in self.ends.iter().enumerate() {
            let end = end as usize;
            // The run start..end joined, without the last line's `\n`.
            if i > first && end - 1 - start > max_raw {
                let prev = self.ends[i - 1] as usize;
                out.push((self.bytes.slice(start..prev - 1), i - first));
                start = prev;
                first = i;
            }
        }
        if first < self.ends.len() {
            out.push((
                self.bytes.slice(start..self.bytes.len() - 1),
                self.ends.len() - first,
            ));
        }
        out
    }

    /// Line `i` (without its `\n`), to read its parts ([`LineView`]).
    pub fn line(&self, i: usize) -> LineView<'_> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        LineView::at(&self.as_str()[start..self.ends[i] as usize - 1], start)
    }

    /// The lines as one string, each ending in `\n`.
    pub(super) fn as_str(&self) -> &str {
        debug_assert!(std::str::from_utf8(&self.bytes).is_ok());
        // SAFETY: a text's bytes are UTF-8 from the start and stay so. The parser writes
        // lines it read as `str` (and ASCII timestamps) into a `TextBuilder`;
        // `from_points` writes points' strings; `from_joined` checks; `select` and
        // `retain` copy whole lines, cut at `\n`. Checking again here, on every column a
        // condition asks for, was a tenth of what a sinker cost.
        unsafe { std::str::from_utf8_unchecked(&self.bytes) }
    }

    /// Every line, in order.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = LineView<'_>> + '_ {
        let all = self.as_str();
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let line = &all[start..end as usize - 1];
            let view = LineView::at(line, start);
            start = end as usize;
            view
        })
    }

    /// The tag value `at` says where (a place one of its lines gave:
    /// [`LineView::tags_at_and_field_set`]), unescaped; `None` for nowhere.
    pub fn tag_value(&self, at: ValueAt) -> Option<Cow<'_, str>> {
        let (start, end, esc) = at.range()?;
        // Both ends are next to ASCII bytes (`=`, `,`, a space, a line end).
        let raw = &self.as_str()[start..end];
        Some(if esc {
            Cow::Owned(unescape(raw, |c, _| is_name_escapable(c)))
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// The lines `keep` says yes to, copied into a text of their own (as a sinker's share
    /// of a write: its lines go out as they came, not encoded again).
    pub fn select(&self, keep: impl Fn(usize) -> bool) -> Text {
        self.select_each(1, |_, i| keep(i))
            .pop()
            .expect("one selection")
    }

    /// For each of `sets` selections, the lines `keep(set, line)` says yes to, as
    /// [`Text::select`] gives them: every sinker's share of a write. Each is sized in a
    /// first pass and copied into a buffer of exactly its size (grown as it went, a
    /// share's buffer was reallocated and copied again a dozen times); a selection of
    /// every line shares this text's buffer.
    pub fn select_each(&self, sets: usize, keep: impl Fn(usize, usize) -> bool) -> Vec<Text> {
        let mut sizes = vec![(0usize, 0usize); sets];
        let mut start = 0usize;
        for (i, &end) in self.ends.iter().enumerate() {
            let len = end as usize - start;
            for (j, (bytes, lines)) in sizes.iter_mut().enumerate() {
                if keep(j, i) {
                    *bytes += len;
                    *lines += 1;
                }
            }
            start = end as usize;
        }
        sizes
            .into_iter()
            .enumerate()
            .map(|(j, (bytes, lines))| match lines {
                0 => Text::default(),
                n if n == self.len() => self.clone(),
                _ => self.copy_lines(bytes, lines, |i| keep(j, i)),
            })
            .collect()
    }

    /// The `lines` lines (`bytes` bytes) that `keep` says yes to, copied.
    fn copy_lines(&self, bytes: usize, lines: usize, keep: impl Fn(usize) -> bool) -> Text {
        let mut buf = Vec::with_capacity(bytes);
        let mut ends = Vec::with_capacity(lines);
        // The run of adjacent kept lines not yet copied: copied as one.
        let mut run: Option<(usize, usize)> = None;
        let mut start = 0usize;
        for (i, &end) in self.ends.iter().enumerate() {
            let end = end as usize;
            if keep(i) {
                ends.push(
                    u32::try_from(buf.len() + (end - run.map_or(start, |(s, _)| s)))
                        .expect("a selection is no larger than its text"),
                );
                run = Some((run.map_or(start, |(s, _)| s), end));
            } else if let Some((s, e)) = run.take() {
                buf.extend_from_slice(&self.bytes[s..e]);
            }
            start = end;
        }
        if let Some((s, e)) = run {
            buf.extend_from_slice(&self.bytes[s..e]);
        }
        debug_assert_eq!((buf.len(), ends.len()), (bytes, lines));
        Text {
            held: buf.capacity(),
            bytes: Bytes::from(buf),
            ends,
            noted: None,
        }
    }

    /// The lines `keep` says yes to, as [`Text::select`] gives them, but moved down in
    /// this text's own buffer when no one else holds it and most of it stays (the main
    /// endpoints' share after sinkers took theirs): no new buffer to allocate and fault
    /// in. The bytes freed stay held (and counted by [`Text::memory_size`]) until the text
    /// is dropped.
    pub fn retain(self, mut keep: impl FnMut(usize) -> bool) -> Text {
        let keeps: Vec<bool> = (0..self.len()).map(&mut keep).collect();
        let mut kept_bytes = 0usize;
        let mut start = 0usize;
        for (&end, &k) in self.ends.iter().zip(&keeps) {
            kept_bytes += if k { end as usize - start } else { 0 };
            start = end as usize;
        }
        if kept_bytes == self.bytes.len() {
            return self;
        }
        if kept_bytes < self.bytes.len() / 2 {
            return self.select(|i| keeps[i]);
        }
        let Text { bytes, ends, .. } = self;
        let mut buf = match bytes.try_into_mut() {
            Ok(buf) => buf,
            Err(bytes) => {
                let shared = Text {
                    held: bytes.len(),
                    bytes,
                    ends,
                    noted: None,
                };
                return shared.select(|i| keeps[i]);
            }
        };
        let held = buf.capacity();
        let mut out_ends = Vec::with_capacity(keeps.iter().filter(|&&k| k).count());
        let mut w = 0usize;
        let mut start = 0usize;
        for (&end, &k) in ends.iter().zip(&keeps) {
            let end = end as usize;
            if k {
                if w != start {
                    buf.copy_within(start..end, w);
                }
                w += end - start;
                out_ends.push(w as u32);
            }
            start = end;
        }
        buf.truncate(w);
        Text {
            bytes: buf.freeze(),
            ends: out_ends,
            held,
            noted: None,
        }
    }

    /// The points, parsed again (for a part that must be routed or encoded as points after
    /// all: a sinker added since the write was read, a v2 endpoint).
    pub fn to_points(&self) -> Vec<Point> {
        let opts = ParseOptions {
            precision: Precision::Nanos,
            default_time: 0,
        };
        parse(&self.bytes, opts).expect("lines checked by the parser parse again")
    }
}

/// A [`Text`] under construction (by the parser). Growing by doubling can hold up to twice
/// what is written (a heap profile found text buffers 1.5x over what the budget was
/// charged), so the caller sizes it up front ([`TextBuilder::with_capacity`]) and
/// [`TextBuilder::finish`] gives back the excess: a text holds what it is charged.
#[derive(Debug, Default)]
pub(crate) struct TextBuilder {
    pub(super) buf: Vec<u8>,
    ends: Vec<u32>,
    /// The keys to note as lines are added, and what was found so far.
    pub(super) noting: Option<Noted>,
}

impl TextBuilder {
    /// A builder for about `bytes` of text.
    pub(crate) fn with_capacity(bytes: usize) -> TextBuilder {
        TextBuilder {
            buf: Vec::with_capacity(bytes),
            // A line is rarely under ~40 bytes.
            ends: Vec::with_capacity(bytes / 40),
            noting: None,
        }
    }

    /// Notes what `noting` asks as lines are added (see [`super::keys`]); nothing if
    /// `None` or empty.
    pub(crate) fn noting(mut self, noting: Option<Noting>) -> TextBuilder {
        self.noting = noting
            .filter(|n| !n.is_empty())
            .map(|n| Noted::new(n, self.ends.capacity()));
        self
    }

    /// The index the next line will have.
    pub(super) fn next_line(&self) -> usize {
        self.ends.len()
    }

    /// Ends the line written into `buf` since the last one.
    pub(crate) fn end_line(&mut self) {
        self.buf.push(b'\n');
        let end = u32::try_from(self.buf.len()).expect("a chunk is far below 4 GiB");
        self.ends.push(end);
    }

    /// The memory the text written so far will hold once finished (as
    /// [`Text::memory_size`] counts it).
    pub(crate) fn used(&self) -> usize {
        std::mem::size_of::<Text>()
            + self.buf.len()
            + self.ends.len() * 4
            + self.noting.as_ref().map_or(0, Noted::memory_size)
    }

    /// The text, holding no more memory than [`Text::memory_size`] counts (give or take
    /// 1/16).
    pub(crate) fn finish(mut self) -> Text {
        fit(&mut self.buf);
        fit(&mut self.ends);
        let n = self.ends.len();
        Text {
            held: self.buf.capacity(),
            bytes: Bytes::from(self.buf),
            ends: self.ends,
            noted: self.noting.map(|mut noted| {
                noted.finish(n);
                Arc::new(noted)
            }),
        }
    }
}

/// Gives back a vector's spare capacity when it is over 1/16 of its length.
fn fit<T>(v: &mut Vec<T>) {
    if v.capacity() - v.len() > v.len() / 16 {
        v.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer grown by doubling holds up to twice its length; once fitted, no more than
    /// 1/16 over it (what the budget is charged is what is held).
    #[test]
    fn a_finished_text_holds_about_its_length() {
        let mut b = TextBuilder::with_capacity(16);
        while b.buf.len() < 100_000 {
            b.buf.extend_from_slice(b"cpu,host=h1 usage=1.5 1");
            b.end_line();
        }
        assert!(b.buf.capacity() > b.buf.len() + b.buf.len() / 16);
        let len = b.buf.len();
        let mut grown = std::mem::take(&mut b.buf);
        fit(&mut grown);
        assert!(grown.capacity() <= len + len / 16, "{}", grown.capacity());
        b.buf = grown;
        let text = b.finish();
        assert_eq!(
            text.memory_size(),
            std::mem::size_of::<Text>() + len + text.len() * 4
        );
    }

    /// Each selection is the lines its set keeps, in order, as they were, held in a
    /// buffer of exactly its size; one of every line shares the text's buffer.
    #[test]
    fn select_each_gives_every_share_exactly() {
        let body: String = (0..300).map(|i| format!("m{i},t=x v={i}i {i}\n")).collect();
        let opts = super::super::ParseOptions {
            precision: Precision::Nanos,
            default_time: 0,
        };
        let text = super::super::parse_text(body.as_bytes(), opts).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        let keep = |j: usize, i: usize| match j {
            0 => i % 7 < 3,
            1 => i % 2 == 1,
            2 => false,
            3 => true,
            _ => i > 250,
        };
        let shares = text.select_each(5, keep);
        assert_eq!(shares.len(), 5);
        for (j, share) in shares.iter().enumerate() {
            let want: Vec<&str> = (0..lines.len())
                .filter(|&i| keep(j, i))
                .map(|i| lines[i])
                .collect();
            assert_eq!(share.len(), want.len(), "set {j}");
            assert_eq!(share.joined(), want.join("\n").into_bytes(), "set {j}");
            assert_eq!(
                share.lines().map(|l| l.time()).collect::<Vec<_>>(),
                want.iter()
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
                    .collect::<Vec<_>>(),
                "set {j}"
            );
            if j != 3 {
                assert_eq!(
                    share.memory_size(),
                    std::mem::size_of::<Text>() + share.bytes.len() + share.len() * 4,
                    "set {j}"
                );
            }
        }
        assert_eq!(shares[3].joined().as_ptr(), text.joined().as_ptr());
    }
}
