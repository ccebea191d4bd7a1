//! Which lines of a [`Text`] have a key as a tag or as a field, and where the tag values are.
//!
//! In: a text (checked lines) and up to 64 keys a sinker condition asks about. Out: per key,
//! how many lines have it as a tag and as a field, and each line's tag value place
//! ([`ValueAt`]), for the `tag-column` that follows.
//!
//! Why not walk each line's tags ([`LineView`]): that walk, byte by byte through every
//! tag of every line, was most of what one sinker cost over text. Here each key is searched
//! for once in the whole text with a SIMD substring search (`memchr::memmem`), and each hit
//! `key=` is placed by what comes before it in its line: neither a space nor a backslash,
//! and a `,` just before it: the tag (before the first space every `,` ends a measurement
//! or a tag value); a space first: among the fields (that line's field keys are read); a
//! backslash first: that line's tags are walked, for this key. A key with a character
//! line protocol escapes is looked for by walking every line. The answers are the walk's
//! (`tests` compares them over hand-written, random escaped and random plain lines).
//!
//! Cheaper still: the keys the sinkers asked of the last write of a category are noted by
//! the parser while it checks the next write's lines ([`Noted`]): it has every tag and
//! field key of a line in hand then, so a noted key costs a comparison per tag, not a
//! search. A key not noted (a plugin asking something new) is searched for as above.

use std::sync::Arc;

use memchr::memmem::Finder;

use super::dict::Dict;
use super::lineproto::scan_name;
use super::view::{LineView, ValueAt};
use super::{FieldValue, Text};

/// What a text says of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPlaces {
    /// Lines with the key as a tag.
    pub tags: u32,
    /// Lines with the key as a field.
    pub fields: u32,
    /// Each line's value of the key as a tag (the first, if a line repeats it), or
    /// nowhere; empty when no line has it as a tag, and for a key the parser noted
    /// (its column is read with [`Text::noted_column`]).
    pub at: Vec<ValueAt>,
}

/// Moves `line` forward to the line that holds byte `pos` (positions come in order).
#[inline(always)]
fn line_of(ends: &[u32], line: &mut usize, pos: usize) -> usize {
    while ends[*line] as usize <= pos {
        *line += 1;
    }
    *line
}

impl Text {
    /// Per key of `keys` (at most 64), the lines that have it as a tag and as a field,
    /// and where its tag values are (see [`KeyPlaces`]).
    pub fn key_places(&self, keys: &[String]) -> Vec<KeyPlaces> {
        assert!(keys.len() <= 64, "at most 64 keys at a time");
        let Some(noted) = &self.noted else {
            return self.find_places(keys);
        };
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| noted.note(k).is_none())
            .cloned()
            .collect();
        let mut found = self.find_places(&missing).into_iter();
        keys.iter()
            .map(|k| match noted.places(k) {
                Some(p) => p,
                None => found.next().expect("one found per missing key"),
            })
            .collect()
    }

    /// Tag `key`'s column as the parser noted it, if it was asked to ([`Noted`]).
    pub fn noted_column(&self, key: &str) -> Option<TagColumn<'_>> {
        self.noted.as_ref()?.column(key)
    }

    /// The measurements' column as the parser noted it, if it was asked to
    /// ([`Noting::measurement`]): each line's entry, no `None` among the values.
    pub fn noted_measurements(&self) -> Option<TagColumn<'_>> {
        self.noted.as_ref()?.measurements()
    }

    /// Field `key`'s value on each line as the parser noted it, if it was asked to and no
    /// line has a string there; empty when no line has the field.
    pub fn noted_field(&self, key: &str) -> Option<&[Scalar]> {
        self.noted.as_ref()?.field(key)
    }

    /// The keys the parser was asked to note but gave up on: their tag had more than
    /// [`Noted::MAX_VALUES`] distinct values (an id). Noting them again in the next write
    /// would likely be given up again, after building most of a dictionary for nothing.
    pub fn noted_given_up(&self) -> Vec<String> {
        self.noted.as_ref().map_or_else(Vec::new, |n| {
            n.keys
                .iter()
                .zip(&n.notes)
                .filter(|(_, note)| note.column.is_none())
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// [`Text::key_places`] by searching the text.
    fn find_places(&self, keys: &[String]) -> Vec<KeyPlaces> {
        let n = self.len();
        let mut out = vec![KeyPlaces::default(); keys.len()];
        let plain = |k: &String| {
            !k.is_empty()
                && !k
                    .bytes()
                    .any(|c| matches!(c, b',' | b'=' | b' ' | b'\\' | b'\n'))
        };
        if !keys.iter().all(plain) {
            // A key that could be written escaped: every line is walked.
            for (i, line) in self.lines().enumerate() {
                exact_line(line, i, n, keys, &mut out);
            }
            return out;
        }
        for (key, places) in keys.iter().zip(&mut out) {
            self.search(key, places);
            places.finish(n);
        }
        out
    }

    /// Fills `places` for `key` (plain: no character line protocol escapes) from its hits.
    fn search(&self, key: &str, places: &mut KeyPlaces) {
        let b = self.as_str().as_bytes();
        let n = self.len();
        let start_of = |i: usize| if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let pattern = format!("{key}=");
        let finder = Finder::new(pattern.as_bytes());
        // The last line whose tag, and whose fields, are settled; the last line read
        // exactly, and where its fields start.
        let (mut line, mut tag_done, mut fields_done) = (0, usize::MAX, usize::MAX);
        let (mut exact, mut fields_from) = (usize::MAX, 0);
        for hit in finder.find_iter(b) {
            let i = line_of(&self.ends, &mut line, hit);
            if fields_done == i {
                continue;
            }
            let start = start_of(i);
            let among_fields = if exact == i {
                hit >= fields_from
            } else {
                // Before the hit: a space first puts it among the fields; a backslash
                // first may escape anything (the line's tags are walked); neither: the
                // hit is in the measurement or the tags, every `,` before it a separator.
                match b[start..hit].iter().find(|&&c| c == b' ' || c == b'\\') {
                    Some(b' ') => true,
                    Some(_) => {
                        let (tag, from) = self.line(i).tag_at_and_fields_start(key);
                        (exact, fields_from) = (i, from);
                        if tag_done != i {
                            tag_done = i;
                            if let Some(v) = tag {
                                places.set(i, n, v);
                            }
                        }
                        hit >= from
                    }
                    None => {
                        if tag_done != i && hit > start && b[hit - 1] == b',' {
                            tag_done = i;
                            let v = hit + pattern.len();
                            let (end, esc) = scan_name(b, v, false);
                            places.set(i, n, ValueAt::at(v, end, esc));
                        }
                        false
                    }
                }
            };
            // A string value can hold `key=` too: the fields are walked.
            if among_fields {
                fields_done = i;
                if self.line(i).field_keys().any(|k| k == key) {
                    places.fields += 1;
                }
            }
        }
    }
}

impl KeyPlaces {
    /// Line `i` (of `n`; lines come in order) has the key as a tag, its value at `v`.
    /// The lines before it without one are filled in as they are passed, not all up
    /// front.
    #[inline]
    fn set(&mut self, i: usize, n: usize, v: ValueAt) {
        if self.at.is_empty() {
            self.at.reserve_exact(n);
        }
        debug_assert!(self.at.len() <= i, "lines come in order, each once");
        self.at.resize(i, ValueAt::default());
        self.at.push(v);
        self.tags += 1;
    }

    /// Fills in the lines after the last one with the key as a tag.
    fn finish(&mut self, n: usize) {
        if !self.at.is_empty() {
            self.at.resize(n, ValueAt::default());
        }
    }
}

/// Keys whose places the parser notes while it checks lines, and what it found: the
/// counts the search would give, each key's tag column, dictionary-encoded, and its
/// number or boolean field values, while each line is still in the cache (read later from the text, a tag value is a cache miss per
/// line: that was most of what a `tag-column` cost). A text made by selecting or
/// compacting lines has none (its columns would be wrong).
#[derive(Debug)]
pub(crate) struct Noted {
    keys: Arc<[String]>,
    notes: Vec<NotedKey>,
    /// About how many lines there will be: each column is reserved once.
    lines: usize,
    /// The measurements' column, if asked for; `None` too once it has more than
    /// [`Noted::MAX_VALUES`] distinct values.
    measurement: Option<NotedColumn>,
    /// The memory the columns hold ([`Noted::memory_size`]), kept as they grow: the
    /// parser asks after every line, and summing the columns then was a cost per line.
    size: usize,
    /// Where an escaped value is unescaped to be looked up (a `String` per escaped value
    /// and line was half of what noting an escaped tag cost).
    buf: String,
}

/// One line as the parser read it, as [`Noted::line`] asks it. Values are unescaped, into
/// `buf` when they have escapes.
pub(crate) trait ParsedLine {
    /// The line's measurement.
    fn measurement<'a>(&'a self, buf: &'a mut String) -> &'a str;
    /// Its value of tag `key`, if it has the tag.
    fn tag<'a>(&'a self, key: &str, buf: &'a mut String) -> Option<&'a str>;
    /// Its value of field `key` ([`Scalar::Absent`]: none).
    fn field(&self, key: &str) -> Scalar;
}

/// The bytes `v` grew by since its capacity was `before`.
fn grown<T>(v: &Vec<T>, before: usize) -> usize {
    (v.capacity() - before) * size_of::<T>()
}

/// What the parser is to note in a write: what the sinkers asked of the category's last
/// one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Noting {
    /// Tag and field keys (the first [`Noted::MAX_KEYS`] are noted).
    pub keys: Arc<[String]>,
    /// The measurements' column too.
    pub measurement: bool,
}

impl Noting {
    /// Noting `keys`, not the measurements.
    pub fn keys(keys: &[String]) -> Noting {
        Noting {
            keys: keys.into(),
            measurement: false,
        }
    }

    /// Whether there is nothing to note.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.measurement
    }
}

/// What the parser found of one noted key.
#[derive(Debug, Default)]
struct NotedKey {
    tags: u32,
    fields: u32,
    /// `None` once it has more than [`Noted::MAX_VALUES`] distinct values: then the key
    /// counts as not noted, and is searched for.
    column: Option<NotedColumn>,
    /// Each line's value of the key as a field, up to the last line that has one; emptied
    /// for good once a line has a string there (strings are not noted: a log message
    /// would be a copy of the text).
    values: Vec<Scalar>,
    /// A line had a string value: `values` is not the column.
    strings: bool,
}

/// A line's value of a noted field key, as the parser read it (the column
/// [`Text::noted_field`] gives). A string value is only marked: it is not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Scalar {
    /// The line has no such field.
    #[default]
    Absent,
    Float(f64),
    Int(i64),
    Uint(u64),
    Bool(bool),
    /// A string (never in a column: it gives the column up).
    Str,
}

impl Scalar {
    /// The value as a [`FieldValue`]; `None` for [`Scalar::Absent`] (and [`Scalar::Str`],
    /// whose string was not kept).
    pub fn to_field(self) -> Option<FieldValue> {
        match self {
            Scalar::Float(f) => Some(FieldValue::Float(f)),
            Scalar::Int(v) => Some(FieldValue::Int(v)),
            Scalar::Uint(v) => Some(FieldValue::Uint(v)),
            Scalar::Bool(b) => Some(FieldValue::Bool(b)),
            Scalar::Absent | Scalar::Str => None,
        }
    }

    /// A value the parser read, marked (a string) or copied.
    pub(crate) fn of(v: &FieldValue) -> Scalar {
        match v {
            FieldValue::Float(f) => Scalar::Float(*f),
            FieldValue::Int(v) => Scalar::Int(*v),
            FieldValue::Uint(v) => Scalar::Uint(*v),
            FieldValue::Bool(b) => Scalar::Bool(*b),
            FieldValue::Str(_) => Scalar::Str,
        }
    }
}

/// A column the parser builds (a noted tag's, the measurements'): each line's entry of the
/// dictionary, up to the last line with a value.
#[derive(Debug, Default)]
struct NotedColumn {
    dict: Dict<String>,
    index: Vec<u32>,
}

impl NotedColumn {
    /// Adds line `i`'s value `v` (the lines before it without one get `None`), reserving
    /// for about `lines` lines at first, and counts the memory it took in `size`. `false`
    /// once the dictionary is past [`Noted::MAX_VALUES`]: the column is to be given up
    /// (its index is no longer counted; its strings stay counted, a little over).
    #[inline]
    fn push(&mut self, i: usize, v: &str, lines: usize, size: &mut usize) -> bool {
        let (cap, before) = (self.index.capacity(), self.dict.len());
        if cap == 0 {
            self.index.reserve_exact(lines.max(i + 1));
        }
        if self.index.len() < i {
            let none = self.dict.index_of(None::<&str>);
            self.index.resize(i, none);
        }
        let len = v.len();
        self.index.push(self.dict.index_of(Some(v)));
        *size += grown(&self.index, cap);
        if self.dict.len() > before {
            // A `String` and its slot in the vector and the map, roughly.
            *size += len + 64;
        }
        if self.dict.len() > Noted::MAX_VALUES {
            *size -= self.index.capacity() * 4;
            return false;
        }
        true
    }

    /// Fills the lines after the last one with a value, up to `n`, with `None`; returns
    /// the memory that took.
    fn fill(&mut self, n: usize) -> usize {
        if self.index.len() >= n {
            return 0;
        }
        let (cap, none) = (self.index.capacity(), self.dict.index_of(None::<&str>));
        self.index.resize(n, none);
        grown(&self.index, cap)
    }

    fn view(&self) -> TagColumn<'_> {
        TagColumn {
            values: self.dict.values(),
            index: &self.index,
        }
    }
}

/// A noted tag's column: each line's entry of `values`, its distinct values (`None`: a
/// line without the tag) in first-seen order. `index` is empty when no line has the tag.
#[derive(Debug, Clone, Copy)]
pub struct TagColumn<'a> {
    pub values: &'a [Option<String>],
    pub index: &'a [u32],
}

impl Noted {
    /// Most keys noted for one write: each costs a comparison per tag and field of every
    /// line, whether a sinker asks for it again or not.
    pub(crate) const MAX_KEYS: usize = 8;

    /// Most distinct values a noted tag's column holds: past it (an id, say) the column is
    /// given up, as a dictionary no smaller than the text's lines would be.
    pub(crate) const MAX_VALUES: usize = 1024;

    /// Notes what `noting` asks (at most [`Noted::MAX_KEYS`] keys; the rest are not
    /// noted) over about `lines` lines.
    pub(crate) fn new(noting: Noting, lines: usize) -> Noted {
        let Noting { keys, measurement } = noting;
        let keys: Arc<[String]> = if keys.len() > Noted::MAX_KEYS {
            keys[..Noted::MAX_KEYS].into()
        } else {
            keys
        };
        Noted {
            notes: (0..keys.len())
                .map(|_| NotedKey {
                    column: Some(NotedColumn::default()),
                    ..NotedKey::default()
                })
                .collect(),
            keys,
            lines,
            measurement: measurement.then(NotedColumn::default),
            size: 0,
            buf: String::new(),
        }
    }

    /// Notes line `i` (lines come in order).
    #[inline]
    pub(crate) fn line(&mut self, i: usize, line: &impl ParsedLine) {
        let Noted {
            keys,
            notes,
            lines,
            measurement,
            size,
            buf,
        } = self;
        if let Some(c) = measurement
            && !c.push(i, line.measurement(buf), *lines, size)
        {
            *measurement = None;
        }
        for (key, note) in keys.iter().zip(notes.iter_mut()) {
            let Some(c) = &mut note.column else {
                continue;
            };
            if let Some(v) = line.tag(key, buf) {
                note.tags += 1;
                if !c.push(i, v, *lines, size) {
                    note.column = None;
                    continue;
                }
            }
            let values = &mut note.values;
            match line.field(key) {
                Scalar::Absent => {}
                Scalar::Str => {
                    note.fields += 1;
                    note.strings = true;
                    *size -= values.capacity() * size_of::<Scalar>();
                    *values = Vec::new();
                }
                v => {
                    note.fields += 1;
                    if !note.strings {
                        let cap = values.capacity();
                        if cap == 0 {
                            values.reserve_exact((*lines).max(i + 1));
                        }
                        values.resize(i, Scalar::Absent);
                        values.push(v);
                        *size += grown(values, cap);
                    }
                }
            }
        }
    }

    /// The memory the columns hold.
    pub(crate) fn memory_size(&self) -> usize {
        self.size
    }

    /// The memory the columns' vectors hold, summed (what `size` counts, but the
    /// strings).
    #[cfg(test)]
    fn vectors_size(&self) -> usize {
        self.notes
            .iter()
            .map(|n| {
                n.column.as_ref().map_or(0, |c| c.index.capacity() * 4)
                    + n.values.capacity() * size_of::<Scalar>()
            })
            .sum::<usize>()
            + self
                .measurement
                .as_ref()
                .map_or(0, |c| c.index.capacity() * 4)
    }

    /// Ends the noting at `n` lines.
    pub(crate) fn finish(&mut self, n: usize) {
        for note in &mut self.notes {
            if let Some(c) = &mut note.column
                && !c.index.is_empty()
            {
                self.size += c.fill(n);
            }
            let values = &mut note.values;
            if !values.is_empty() {
                let cap = values.capacity();
                values.resize(n, Scalar::Absent);
                self.size += grown(values, cap);
            }
        }
    }

    /// The measurements' column, if it was noted (and not given up).
    fn measurements(&self) -> Option<TagColumn<'_>> {
        self.measurement.as_ref().map(NotedColumn::view)
    }

    /// What was noted of `key`: `None` if it was not noted, or its column given up.
    fn note(&self, key: &str) -> Option<&NotedKey> {
        let j = self.keys.iter().position(|k| k == key)?;
        let note = &self.notes[j];
        note.column.is_some().then_some(note)
    }

    fn places(&self, key: &str) -> Option<KeyPlaces> {
        self.note(key).map(|n| KeyPlaces {
            tags: n.tags,
            fields: n.fields,
            at: Vec::new(),
        })
    }

    fn column(&self, key: &str) -> Option<TagColumn<'_>> {
        self.note(key)?.column.as_ref().map(NotedColumn::view)
    }

    fn field(&self, key: &str) -> Option<&[Scalar]> {
        let note = self.note(key)?;
        (!note.strings).then_some(&note.values)
    }
}

/// Adds what line `i` says of each key to `out`, by walking its tags and fields.
fn exact_line(line: LineView<'_>, i: usize, n: usize, keys: &[String], out: &mut [KeyPlaces]) {
    let mut seen = 0u64;
    line.tags_at_and_field_set(|k, v| {
        for (j, key) in keys.iter().enumerate() {
            // The first of a repeated key, as `LineView::tag` reads it.
            if seen >> j & 1 == 0 && k == key.as_str() {
                seen |= 1 << j;
                let places = &mut out[j];
                if places.at.is_empty() {
                    places.at = vec![ValueAt::default(); n];
                }
                places.at[i] = v;
                places.tags += 1;
            }
        }
    });
    let mut seen = 0u64;
    for k in line.field_keys() {
        for (j, key) in keys.iter().enumerate() {
            if seen >> j & 1 == 0 && k == key.as_str() {
                seen |= 1 << j;
                out[j].fields += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use std::borrow::Cow;

    use super::*;
    use crate::point::{ParseOptions, Precision, parse_text};

    /// The answers of the exact walk, line by line, for every key.
    fn walked(text: &Text, keys: &[String]) -> Vec<KeyPlaces> {
        let mut out = vec![KeyPlaces::default(); keys.len()];
        for (i, line) in text.lines().enumerate() {
            exact_line(line, i, text.len(), keys, &mut out);
        }
        out
    }

    /// The search gives what walking every line gives, and each place holds the tag value
    /// the line's view reads.
    fn opts() -> ParseOptions {
        ParseOptions {
            precision: Precision::Nanos,
            default_time: 42,
        }
    }

    fn check(body: &str, keys: &[&str]) {
        let text = parse_text(body.as_bytes(), opts()).unwrap();
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        check_places(&text, &keys, "searched");
        // Noted by the parser, in chunks of a few lines each: every key, then every other
        // one (the rest searched).
        let every_other: Vec<String> = keys.iter().step_by(2).cloned().collect();
        for noted in [&keys, &every_other] {
            let chunks = noted_chunks(body, noted);
            assert!(body.lines().count() < 3 || chunks.len() > 1);
            for text in &chunks {
                for key in noted.iter().take(Noted::MAX_KEYS) {
                    let c = text.noted_column(key).expect("noted");
                    assert!(c.index.is_empty() || c.index.len() == text.len());
                }
                check_places(text, &keys, &format!("noted {noted:?}"));
            }
        }
    }

    /// The counts of `keys` in `text` are the walk's; the places of a key searched for are
    /// the walk's and each reads the line's value; a noted key's column holds each line's
    /// value, and each distinct value once; a noted field's values are each line's.
    fn check_places(text: &Text, keys: &[String], how: &str) {
        if let Some(noted) = &text.noted {
            let (size, vectors) = (noted.memory_size(), noted.vectors_size());
            assert!(size >= vectors, "{how}: {size} counted, {vectors} held");
            let c = text.noted_measurements().expect("measurements noted");
            assert_eq!(c.index.len(), text.len(), "{how}");
            for (i, line) in text.lines().enumerate() {
                let m = c.values[c.index[i] as usize].as_deref();
                assert_eq!(m, Some(&*line.measurement()), "{how}: line {i}");
            }
            let mut distinct = c.values.to_vec();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), c.values.len(), "{how}: {:?}", c.values);
        }
        for key in keys {
            let Some(values) = text.noted_field(key) else {
                continue;
            };
            assert!(
                values.is_empty() || values.len() == text.len(),
                "{how}: {key}"
            );
            for (i, line) in text.lines().enumerate() {
                let v = values.get(i).copied().unwrap_or_default();
                assert_ne!(v, Scalar::Str, "{how}: {key} in line {i}");
                assert_eq!(
                    v.to_field(),
                    line.field(key),
                    "{how}: field {key} noted in line {i}"
                );
            }
        }
        let mut got = text.key_places(keys);
        let mut walked = walked(text, keys);
        for (key, (got, walked)) in keys.iter().zip(got.iter_mut().zip(&mut walked)) {
            let Some(c) = text.noted_column(key) else {
                continue;
            };
            assert!(got.at.is_empty(), "{how}: {key} noted, and placed");
            let mut distinct = c.values.to_vec();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                c.values.len(),
                "{how}: {key}: {:?}",
                c.values
            );
            for (i, line) in text.lines().enumerate() {
                let v = c.index.get(i).map(|&e| c.values[e as usize].as_deref());
                assert_eq!(
                    v.flatten().map(Cow::Borrowed),
                    line.tag(key),
                    "{how}: {key} noted in line {i}"
                );
            }
            walked.at.clear();
        }
        assert_eq!(got, walked, "{how}: {keys:?}");
        for (key, places) in keys.iter().zip(&got) {
            if text.noted_column(key).is_some() {
                continue;
            }
            for (i, line) in text.lines().enumerate() {
                let at = places.at.get(i).copied().unwrap_or_default();
                assert_eq!(
                    text.tag_value(at),
                    line.tag(key),
                    "{how}: {key} in line {i}"
                );
            }
        }
    }

    /// `body` read as a forwarding ingest reads it, noting `keys`, in chunks of about
    /// 200 bytes.
    fn noted_chunks(body: &str, keys: &[String]) -> Vec<Text> {
        read_noted(body, keys, 200)
    }

    /// `body` read as a forwarding ingest reads it, noting `keys` and the measurements, in
    /// chunks of about `chunk` bytes.
    fn read_noted(body: &str, keys: &[String], chunk: usize) -> Vec<Text> {
        use crate::point::reader::{Format, Reader, Source};
        let mut reader = Reader::new(
            Source::Bytes(bytes::Bytes::copy_from_slice(body.as_bytes())),
            Format::LineProtocol,
            opts(),
            usize::MAX,
        )
        .forwarding()
        .noting(Some(Noting {
            keys: keys.into(),
            measurement: true,
        }));
        let mut chunks = Vec::new();
        loop {
            let chunk = reader.next_chunk(chunk, &mut |_| true).unwrap();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk.text.expect("forwarded"));
        }
        reader.finish().unwrap();
        chunks
    }

    #[test]
    fn a_search_finds_what_a_walk_finds() {
        let body = "cpu,host=a,region=r usage=1,host=2i 1\n\
                    cpu,region=r,host=b usage=2 2\n\
                    host=m,x=host=1,host=d s=\"a,host=1\",host=3 3\n\
                    cpu,xhost=e,hostx=f hostx=1 4\n\
                    cpu,a=\\,host\\=g,host=h v=\"x host=1\" 5\n\
                    cpu,a=b host=\"h\" 6\n\
                    cpu v=1 7\n";
        for keys in [
            &["host"][..],
            &["host", "region", "usage", "nope", "a", "x"],
            &["host=", "a b"],
            &["s", "v", "hostx", "xhost"],
            &[],
        ] {
            check(body, keys);
        }
    }

    /// Two spellings of one tag value (a backslash before a character that needs none, and
    /// an escaped backslash) are one entry of a noted column; a tag with more distinct
    /// values than a noted column holds is searched for instead.
    #[test]
    fn noted_columns_hold_unescaped_values_once_and_give_up_on_ids() {
        let body = "cpu,host=x\\y,id=1 v=1 1\n\
                    cpu,host=x\\\\y,id=2 v=1 2\n\
                    cpu,host=x\\ y v=1 3\n\
                    cpu,host=x\\y v=1 4\n";
        let keys = ["host".to_string(), "id".to_string()];
        let text = &read_noted(body, &keys, usize::MAX)[0];
        assert_eq!(text.len(), 4);
        let c = text.noted_column("host").expect("noted");
        assert_eq!(
            c.values,
            [Some("x\\y".to_string()), Some("x y".to_string())]
        );
        assert_eq!(c.index, [0, 0, 1, 0]);
        let c = text.noted_column("id").expect("noted");
        assert_eq!(c.index, [0, 1, 2, 2]);
        assert_eq!(c.values[2], None);
        assert!(text.noted_given_up().is_empty());
        check(body, &["host", "id"]);

        let ids: String = (0..Noted::MAX_VALUES + 10)
            .map(|i| format!("cpu,host=h{},id={i} v=1 {i}\n", i % 3))
            .collect();
        let chunks = read_noted(&ids, &keys, usize::MAX);
        let [text] = &chunks[..] else {
            panic!("one chunk: {}", chunks.len())
        };
        assert_eq!(text.noted_column("host").expect("noted").values.len(), 3);
        assert!(text.noted_column("id").is_none(), "given up");
        assert_eq!(text.noted_given_up(), ["id"]);
        check_places(text, &keys, "ids");
        assert_eq!(text.key_places(&keys)[1].tags as usize, text.len());
    }

    /// A noted field's numbers and booleans are the column; a string on any line gives it
    /// up (and the key is still counted as noted).
    #[test]
    fn noted_fields_hold_numbers_and_give_up_on_strings() {
        let body = "cpu,host=a usage=1.5,load=2i,n=3u,ok=T,msg=\"x\" 1\n\
                    cpu,host=b other=1 2\n\
                    cpu,host=c usage=-2e3,load=-1i,ok=false,msg=2 3\n";
        let keys: Vec<String> = ["usage", "load", "n", "ok", "msg", "nope"]
            .map(String::from)
            .into();
        let text = &read_noted(body, &keys, usize::MAX)[0];
        let f = |k| text.noted_field(k).map(<[Scalar]>::to_vec);
        assert_eq!(
            f("usage"),
            Some(vec![
                Scalar::Float(1.5),
                Scalar::Absent,
                Scalar::Float(-2e3)
            ])
        );
        assert_eq!(
            f("load"),
            Some(vec![Scalar::Int(2), Scalar::Absent, Scalar::Int(-1)])
        );
        assert_eq!(
            f("n"),
            Some(vec![Scalar::Uint(3), Scalar::Absent, Scalar::Absent])
        );
        assert_eq!(
            f("ok"),
            Some(vec![
                Scalar::Bool(true),
                Scalar::Absent,
                Scalar::Bool(false)
            ])
        );
        assert_eq!(f("msg"), None, "a string on line 1");
        assert_eq!(f("nope"), Some(vec![]));
        let places = text.key_places(&keys);
        assert_eq!(places[4].fields, 2, "msg still counted");
        check_places(text, &keys, "noted");
        let searched = parse_text(body.as_bytes(), opts()).unwrap();
        assert_eq!(searched.key_places(&keys), places);
    }

    /// Over random lines full of escapes (most lines are walked), and over random lines
    /// without a backslash before their fields but with keys hidden everywhere else a
    /// search could find them: in the measurement, in tag values, in string fields with
    /// escaped quotes (all searched).
    #[test]
    fn a_search_finds_what_a_walk_finds_in_random_lines() {
        let keys = [
            "a", "b", "ab", "ba", "aa", "_", "é", "a0", "0", "b_a", "a\\,b",
        ];
        let escaped = crate::point::view::tests::random_lines(7);
        check(&escaped, &keys[..10]);
        check(&escaped, &keys);

        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let alphabet = ["a", "b", "ab", "é", "_", "a=", "=b", "b=a"];
        let word = |rng: &mut rand::rngs::StdRng| -> String {
            (0..rng.random_range(1..4))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        };
        let mut body = String::new();
        for _ in 0..3000 {
            let mut line = word(&mut rng).trim_start_matches('=').to_string();
            if line.is_empty() {
                line.push('m');
            }
            let mut used = std::collections::HashSet::new();
            for _ in 0..rng.random_range(0..5) {
                let k = keys[rng.random_range(0..10)];
                if used.insert(k) {
                    line.push_str(&format!(",{k}={}", word(&mut rng)));
                }
            }
            line.push(' ');
            let mut used = std::collections::HashSet::new();
            for i in 0..rng.random_range(1..4) {
                let k = keys[rng.random_range(0..10)];
                if !used.insert(k) {
                    continue;
                }
                let v = if rng.random_bool(0.5) {
                    format!(
                        "\"{} \\\",{}={}\\\\\"",
                        word(&mut rng),
                        keys[rng.random_range(0..10)],
                        word(&mut rng)
                    )
                } else {
                    format!("{}i", rng.random::<i16>())
                };
                line.push_str(&format!(
                    "{}{k}={v}",
                    if i > 0 && line.ends_with(|c| c != ' ') {
                        ","
                    } else {
                        ""
                    }
                ));
            }
            body.push_str(&line);
            body.push('\n');
        }
        let good: String = body
            .lines()
            .filter(|l| crate::point::parse(l.as_bytes(), opts()).is_ok())
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(good.lines().count() > 2000, "{}", good.lines().count());
        assert!(
            good.lines()
                .all(|l| !l[..l.find(' ').unwrap()].contains('\\'))
        );
        check(&good, &keys[..10]);
    }
}
