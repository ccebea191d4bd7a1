//! The `batch` resource of the WIT contract: points the host lends to a plugin for one call.
//!
//! In: an `Arc` of the points being routed (no copy), parsed or as checked text. Out: the columns a plugin asks for,
//! built on demand; string columns are dictionary-encoded so each distinct value crosses
//! into the guest once (a guest allocation per string is what dominates the call cost).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::Resource;

use super::plugin::StoreState;
use super::plugin::bindings::dataway::sinker::types::{
    BoolValues, FieldValue as WitValue, FloatValues, Host, HostBatch, IntValues, KeyCount,
    StringColumn, TypedColumn, UintValues,
};
use crate::category::Category;
use crate::point::dict::{Dict, same};
use crate::point::{Content, FieldValue, Noting, Point, Scalar, TagColumn, Text, ValueAt};

/// What a `batch` handle points at in a store's resource table: the points being routed,
/// parsed or as the checked text they came in as (then each column is read from the lines
/// it needs: [`crate::point::LineView`]).
pub struct PointBatch {
    pub category: Category,
    pub points: Arc<Content>,
    pub columns: Arc<Columns>,
}

/// The string columns built for one batch, kept for the next condition that asks: with
/// several sinkers on a category (each with its own `host` rule) a column is built once per
/// batch, not once per sinker.
#[derive(Default)]
pub struct Columns {
    /// Off for a batch only one condition sees: nothing would ask twice.
    keep: bool,
    /// By tag key; `None`: the measurements.
    built: std::sync::Mutex<Vec<(Option<String>, StringColumn)>>,
    /// `key-counts` answers, by key.
    counts: std::sync::Mutex<Vec<(String, KeyCount)>>,
    /// Over text, where each counted key's tag values are, line by line (empty: no line
    /// has it as a tag): the `key-counts` scan finds them, and the `tag-column` a condition
    /// asks next is read from them instead of scanning every line's tags again. Kept even
    /// for one condition, which asks both.
    values: std::sync::Mutex<Vec<(String, Arc<Vec<ValueAt>>)>>,
    /// The keys conditions asked of a text (`key-counts`, `tag-column`, the field columns),
    /// in the order first asked: the parser notes them in the category's next write
    /// ([`Columns::asked`]).
    asked: std::sync::Mutex<Vec<String>>,
    /// Whether a condition asked for the measurements of a text (noted the same way).
    asked_measurements: std::sync::atomic::AtomicBool,
}

impl Columns {
    /// Columns kept for every condition that sees the batch.
    pub fn shared() -> Columns {
        Columns {
            keep: true,
            ..Columns::default()
        }
    }

    /// The counts of `keys`, those not yet known counted by `count` (in one call).
    fn counts(
        &self,
        keys: &[String],
        count: impl FnOnce(&[String]) -> wasmtime::Result<Vec<KeyCount>>,
    ) -> wasmtime::Result<Vec<KeyCount>> {
        if !self.keep {
            return count(keys);
        }
        let mut known = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let find = |known: &[(String, KeyCount)], k: &str| {
            known.iter().find(|(key, _)| key == k).map(|(_, c)| *c)
        };
        let mut missing: Vec<String> = Vec::new();
        for k in keys {
            if find(&known, k).is_none() && !missing.contains(k) {
                missing.push(k.clone());
            }
        }
        if !missing.is_empty() {
            let counted = count(&missing)?;
            known.extend(missing.into_iter().zip(counted));
        }
        Ok(keys
            .iter()
            .map(|k| find(&known, k).expect("counted above"))
            .collect())
    }

    /// What was asked of a text so far: the keys, first asked first, and whether the
    /// measurements.
    pub fn asked(&self) -> Noting {
        let keys = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        Noting {
            keys: keys.as_slice().into(),
            measurement: self.asked_measurements.load(Ordering::Relaxed),
        }
    }

    /// Notes that a condition asked about `keys` of a text.
    fn ask<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if !asked.iter().any(|a| a == k) {
                asked.push(k.to_string());
            }
        }
    }

    /// Where tag `key`'s values are, if a `key-counts` scan found out.
    fn values(&self, key: &str) -> Option<Arc<Vec<ValueAt>>> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The column of `key` (`None`: the measurements), built by `build` the first time.
    fn get(&self, key: Option<&str>, build: impl FnOnce() -> StringColumn) -> StringColumn {
        if !self.keep {
            return build();
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = built.iter().find(|(k, _)| k.as_deref() == key) {
            return c.clone();
        }
        let c = build();
        built.push((key.map(String::from), c.clone()));
        c
    }
}

/// A column of strings, dictionary-encoded.
fn string_column<'a>(values: impl Iterator<Item = Option<&'a str>>) -> StringColumn {
    let mut dict: Dict<&str> = Dict::new();
    let index = values.map(|v| dict.index_of(v)).collect();
    into_column(dict, index)
}

/// A column the parser noted, copied for the guest.
fn owned_column(c: TagColumn<'_>) -> StringColumn {
    StringColumn {
        dict: c.values.to_vec(),
        index: c.index.to_vec(),
    }
}

/// The column of `index` (entries of `dict`), with the dictionary's strings.
fn into_column(dict: Dict<&str>, index: Vec<u32>) -> StringColumn {
    StringColumn {
        dict: dict
            .into_values()
            .into_iter()
            .map(|v| v.map(String::from))
            .collect(),
        index,
    }
}

/// A column of strings read from text lines: borrowed from the lines where no escape
/// was undone, so the dictionary compares them in place.
fn text_column<'a>(
    text: &'a Text,
    value: impl Fn(crate::point::LineView<'a>) -> Option<Cow<'a, str>>,
) -> StringColumn {
    cow_column(text.lines().map(value))
}

/// A column of strings borrowed from a text, or unescaped into owned ones.
fn cow_column<'a>(values: impl Iterator<Item = Option<Cow<'a, str>>>) -> StringColumn {
    // Collected first: the dictionary borrows each value, owned ones included.
    let values: Vec<Option<Cow<'a, str>>> = values.collect();
    string_column(values.iter().map(|v| v.as_deref()))
}

/// Most keys one `key-counts` call takes: the host function runs outside the call's deadline
/// (wasm is interrupted only between instructions of its own), so its work is bounded.
pub const MAX_COUNTED_KEYS: usize = 64;

impl PointBatch {
    /// `key-counts`: per key, the points that have it as a tag and as a field; an error (a
    /// trap) for more than [`MAX_COUNTED_KEYS`] keys.
    fn key_counts(&self, keys: &[String]) -> wasmtime::Result<Vec<KeyCount>> {
        if keys.len() > MAX_COUNTED_KEYS {
            wasmtime::bail!(
                "key-counts was asked for {} keys; it takes at most {MAX_COUNTED_KEYS} per call",
                keys.len()
            );
        }
        // One walk over each point's keys, not a search per asked key: a key is compared with
        // the asked ones only when some asked key has its length (`lengths`, bit `len % 64`),
        // so most keys of a point cost one bit test. `seen` counts a key once per point even
        // if the point repeats it, as `find` (the first occurrence) would.
        let lengths = keys.iter().fold(0u64, |m, k| m | 1 << (k.len() % 64));
        let mut tags = vec![0u32; keys.len()];
        let mut fields = vec![0u32; keys.len()];
        /// Bit `j` set when `point_keys` has `keys[j]`.
        #[inline(always)]
        fn seen_in<K: AsRef<str>>(
            point_keys: impl Iterator<Item = K>,
            keys: &[String],
            lengths: u64,
        ) -> u64 {
            let mut seen = 0u64;
            for k in point_keys {
                let k = k.as_ref();
                if lengths >> (k.len() % 64) & 1 == 0 {
                    continue;
                }
                for (j, key) in keys.iter().enumerate() {
                    if same(k, key) {
                        seen |= 1 << j;
                    }
                }
            }
            seen
        }
        let add = |counts: &mut [u32], seen: u64| {
            for j in bits(seen) {
                counts[j] += 1;
            }
        };
        match self.points.as_ref() {
            Content::Points(ps) => {
                for p in ps {
                    add(
                        &mut tags,
                        seen_in(p.tags.iter().map(|(k, _)| k), keys, lengths),
                    );
                    add(
                        &mut fields,
                        seen_in(p.fields.iter().map(|(k, _)| k), keys, lengths),
                    );
                }
            }
            Content::Text(t) => {
                self.columns.ask(keys.iter().map(String::as_str));
                let places = t.key_places(keys);
                let mut values = self
                    .columns
                    .values
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for (j, (k, p)) in keys.iter().zip(places).enumerate() {
                    tags[j] = p.tags;
                    fields[j] = p.fields;
                    // A noted key's column is the parser's: it has no places.
                    let noted = t.noted_column(k).is_some();
                    if !noted && !values.iter().any(|(known, _)| known == k) {
                        values.push((k.clone(), Arc::new(p.at)));
                    }
                }
            }
        }
        let counts = tags
            .into_iter()
            .zip(fields)
            .map(|(tags, fields)| KeyCount { tags, fields })
            .collect();
        Ok(counts)
    }

    /// `tag-column`: tag `key` of each point, dictionary-encoded; over text, read from
    /// where an earlier `key-counts` scan found the values, if one did.
    fn tag_column(&self, key: &str) -> StringColumn {
        self.columns.get(Some(key), || match self.points.as_ref() {
            Content::Points(ps) => {
                let mut hint = 0;
                string_column(
                    ps.iter()
                        .map(|p| find(&p.tags, key, &mut hint).map(String::as_str)),
                )
            }
            Content::Text(t) => {
                self.columns.ask([key]);
                // As the parser noted it: no line is read again.
                if let Some(c) = t.noted_column(key) {
                    return if c.index.is_empty() {
                        string_column((0..t.len()).map(|_| None))
                    } else {
                        owned_column(c)
                    };
                }
                // Where a `key-counts` scan found them.
                match self.columns.values(key).as_deref().map(Vec::as_slice) {
                    Some([]) => string_column((0..t.len()).map(|_| None)),
                    // Borrowed from the text (no line needs an escape undone): no copy.
                    Some(at) if !at.iter().any(|v| v.escaped()) => {
                        string_column(at.iter().map(|&v| match t.tag_value(v) {
                            Some(Cow::Borrowed(s)) => Some(s),
                            Some(Cow::Owned(_)) => {
                                unreachable!("a value without escapes is read in place")
                            }
                            None => None,
                        }))
                    }
                    Some(at) => cow_column(at.iter().map(|&v| t.tag_value(v))),
                    None => text_column(t, |l| l.tag(key)),
                }
            }
        })
    }

    /// `measurements`: each point's measurement, dictionary-encoded.
    fn measurement_column(&self) -> StringColumn {
        self.columns.get(None, || match self.points.as_ref() {
            Content::Points(ps) => string_column(ps.iter().map(|p| Some(p.measurement.as_str()))),
            Content::Text(t) => {
                self.columns
                    .asked_measurements
                    .store(true, Ordering::Relaxed);
                match t.noted_measurements() {
                    // As the parser noted them: no line is read again.
                    Some(c) => owned_column(c),
                    None => text_column(t, |l| Some(l.measurement())),
                }
            }
        })
    }

    /// `typed-field-column`: field `key` of each point as flat lists by type.
    fn typed_column(&self, key: &str) -> TypedColumn {
        match self.points.as_ref() {
            Content::Points(ps) => {
                let mut hint = 0;
                let values = ps.iter().map(|p| Cell::of(find(&p.fields, key, &mut hint)));
                typed_column(values, ps.len())
            }
            Content::Text(t) => {
                self.columns.ask([key]);
                match t.noted_field(key) {
                    // Straight from what the parser noted (no string among them).
                    Some(noted) => {
                        let values = noted.iter().map(|&v| Cell::from(v));
                        let absent = std::iter::repeat_n(Cell::None, t.len() - noted.len());
                        typed_column(values.chain(absent), t.len())
                    }
                    None => {
                        let values: Vec<Option<FieldValue>> =
                            t.lines().map(|l| l.field(key)).collect();
                        typed_column(values.iter().map(|v| Cell::of(v.as_ref())), t.len())
                    }
                }
            }
        }
    }

    /// Field `key` of each line of `t`: as the parser noted it (no line is read again),
    /// else read from each line.
    fn text_field(&self, t: &Text, key: &str) -> Vec<Option<FieldValue>> {
        self.columns.ask([key]);
        match t.noted_field(key) {
            Some(noted) => {
                let mut values: Vec<Option<FieldValue>> =
                    noted.iter().map(|v| v.to_field()).collect();
                values.resize(t.len(), None);
                values
            }
            None => t.lines().map(|l| l.field(key)).collect(),
        }
    }
}

/// A field value as [`typed_column`] reads it: from a point's fields, or from what the
/// parser noted, without making a `FieldValue` of it first.
#[derive(Clone, Copy)]
enum Cell<'a> {
    None,
    Float(f64),
    Int(i64),
    Uint(u64),
    Bool(bool),
    Str(&'a str),
}

impl<'a> Cell<'a> {
    #[inline(always)]
    fn of(v: Option<&'a FieldValue>) -> Cell<'a> {
        match v {
            None => Cell::None,
            Some(FieldValue::Float(f)) => Cell::Float(*f),
            Some(FieldValue::Int(v)) => Cell::Int(*v),
            Some(FieldValue::Uint(v)) => Cell::Uint(*v),
            Some(FieldValue::Bool(b)) => Cell::Bool(*b),
            Some(FieldValue::Str(s)) => Cell::Str(s),
        }
    }
}

impl From<Scalar> for Cell<'_> {
    /// A noted value ([`Scalar::Str`] never is in a noted column: it gives it up).
    #[inline(always)]
    fn from(v: Scalar) -> Self {
        match v {
            Scalar::Float(f) => Cell::Float(f),
            Scalar::Int(v) => Cell::Int(v),
            Scalar::Uint(v) => Cell::Uint(v),
            Scalar::Bool(b) => Cell::Bool(b),
            Scalar::Absent | Scalar::Str => Cell::None,
        }
    }
}

/// The `n` values of a field as flat lists by type, in one pass. A type's lists are made
/// when its first value is met.
fn typed_column<'a>(values: impl Iterator<Item = Cell<'a>>, n: usize) -> TypedColumn {
    let words = n.div_ceil(64);
    let mask = || vec![0u64; words];
    let mut floats: Option<FloatValues> = None;
    let mut ints: Option<IntValues> = None;
    let mut uints: Option<UintValues> = None;
    let mut bools: Option<BoolValues> = None;
    // The string dictionary and the index of the points seen so far.
    let mut strs: Option<(Dict<&str>, Vec<u32>)> = None;
    for (i, value) in values.enumerate() {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        match value {
            Cell::Float(f) => {
                let c = floats.get_or_insert_with(|| FloatValues {
                    mask: mask(),
                    values: vec![0.0; n],
                });
                c.mask[w] |= bit;
                c.values[i] = f;
            }
            Cell::Int(v) => {
                let c = ints.get_or_insert_with(|| IntValues {
                    mask: mask(),
                    values: vec![0; n],
                });
                c.mask[w] |= bit;
                c.values[i] = v;
            }
            Cell::Uint(v) => {
                let c = uints.get_or_insert_with(|| UintValues {
                    mask: mask(),
                    values: vec![0; n],
                });
                c.mask[w] |= bit;
                c.values[i] = v;
            }
            Cell::Bool(b) => {
                let c = bools.get_or_insert_with(|| BoolValues {
                    mask: mask(),
                    trues: mask(),
                });
                c.mask[w] |= bit;
                if b {
                    c.trues[w] |= bit;
                }
            }
            Cell::Str(_) | Cell::None => {}
        }
        let text = match value {
            Cell::Str(s) => Some(s),
            _ => None,
        };
        match (&mut strs, text) {
            (Some((dict, index)), v) => index.push(dict.index_of(v)),
            (None, Some(v)) => {
                // The first string: every point before it has none.
                let mut dict = Dict::new();
                let mut index = Vec::with_capacity(n);
                if i > 0 {
                    index.resize(i, dict.index_of(None::<&str>));
                }
                index.push(dict.index_of(Some(v)));
                strs = Some((dict, index));
            }
            (None, None) => {}
        }
    }
    TypedColumn {
        floats,
        ints,
        uints,
        bools,
        strs: strs.map(|(dict, index)| into_column(dict, index)),
    }
}

/// The positions of the set bits of `word`.
#[inline(always)]
fn bits(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let bit = word.trailing_zeros() as usize;
            word &= word - 1;
            bit
        })
    })
}

/// The value of `key` among a point's `(key, value)` pairs, trying position `*hint` first (the
/// points of a batch mostly list their keys in the same order) and moving the hint to where
/// the key was found.
#[inline]
fn find<'a, V>(pairs: &'a [(String, V)], key: &str, hint: &mut usize) -> Option<&'a V> {
    if let Some((k, v)) = pairs.get(*hint)
        && same(k, key)
    {
        return Some(v);
    }
    let i = pairs.iter().position(|(k, _)| same(k, key))?;
    *hint = i;
    Some(&pairs[i].1)
}

fn to_wit(v: &FieldValue) -> WitValue {
    match v {
        FieldValue::Float(f) => WitValue::Float(*f),
        FieldValue::Int(i) => WitValue::Int(*i),
        FieldValue::Uint(u) => WitValue::Uint(*u),
        FieldValue::Bool(b) => WitValue::Boolean(*b),
        FieldValue::Str(s) => WitValue::Str(s.clone()),
    }
}

fn into_wit(v: FieldValue) -> WitValue {
    match v {
        FieldValue::Str(s) => WitValue::Str(s),
        v => to_wit(&v),
    }
}

fn distinct_keys<K: AsRef<str>>(keys: impl Iterator<Item = K>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let k = k.as_ref();
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
    }
    out
}

impl Host for StoreState {}

impl HostBatch for StoreState {
    fn len(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&b)?.points.len() as u32)
    }

    fn category(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<String> {
        Ok(self.table.get(&b)?.category.name().to_string())
    }

    fn measurements(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<StringColumn> {
        Ok(self.table.get(&b)?.measurement_column())
    }

    fn times(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<i64>> {
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => ps.iter().map(|p| p.time).collect(),
            Content::Text(t) => t.lines().map(|l| l.time()).collect(),
        })
    }

    fn tag_column(
        &mut self,
        b: Resource<PointBatch>,
        key: String,
    ) -> wasmtime::Result<StringColumn> {
        Ok(self.table.get(&b)?.tag_column(&key))
    }

    fn field_column(
        &mut self,
        b: Resource<PointBatch>,
        key: String,
    ) -> wasmtime::Result<Vec<Option<WitValue>>> {
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => {
                let mut hint = 0;
                ps.iter()
                    .map(|p| find(&p.fields, &key, &mut hint).map(to_wit))
                    .collect()
            }
            Content::Text(t) => {
                let batch = self.table.get(&b)?;
                let values = batch.text_field(t, &key);
                values.into_iter().map(|v| v.map(into_wit)).collect()
            }
        })
    }

    fn key_counts(
        &mut self,
        b: Resource<PointBatch>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Vec<KeyCount>> {
        let batch = self.table.get(&b)?;
        batch
            .columns
            .counts(&keys, |missing| batch.key_counts(missing))
    }

    fn typed_field_column(
        &mut self,
        b: Resource<PointBatch>,
        key: String,
    ) -> wasmtime::Result<TypedColumn> {
        Ok(self.table.get(&b)?.typed_column(&key))
    }

    fn tag_keys(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<String>> {
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => {
                distinct_keys(ps.iter().flat_map(|p| p.tags.iter().map(|(k, _)| k)))
            }
            Content::Text(t) => distinct_keys(t.lines().flat_map(|l| l.tag_keys())),
        })
    }

    fn field_keys(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<String>> {
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => {
                distinct_keys(ps.iter().flat_map(|p| p.fields.iter().map(|(k, _)| k)))
            }
            Content::Text(t) => distinct_keys(t.lines().flat_map(|l| l.field_keys())),
        })
    }

    fn tags(
        &mut self,
        b: Resource<PointBatch>,
        index: u32,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        let i = index as usize;
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => ps.get(i).map(|p| p.tags.clone()).unwrap_or_default(),
            Content::Text(t) if i < t.len() => t.line(i).tags(),
            Content::Text(_) => Vec::new(),
        })
    }

    fn fields(
        &mut self,
        b: Resource<PointBatch>,
        index: u32,
    ) -> wasmtime::Result<Vec<(String, WitValue)>> {
        let i = index as usize;
        let pairs = |p: &Point| {
            p.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_wit(v)))
                .collect()
        };
        Ok(match self.table.get(&b)?.points.as_ref() {
            Content::Points(ps) => ps.get(i).map(pairs).unwrap_or_default(),
            Content::Text(t) if i < t.len() => t
                .line(i)
                .fields()
                .into_iter()
                .map(|(k, v)| (k, into_wit(v)))
                .collect(),
            Content::Text(_) => Vec::new(),
        })
    }

    fn drop(&mut self, _b: Resource<PointBatch>) -> wasmtime::Result<()> {
        // The host owns every batch and removes it from the table after the call; a
        // guest never receives an owned handle, so there is nothing to drop here.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared, a column is built once per key and handed out again; not shared, built at
    /// every ask.
    #[test]
    fn shared_columns_are_built_once_per_key() {
        let column = |v: &str| StringColumn {
            dict: vec![Some(v.to_string())],
            index: vec![0],
        };
        for (columns, builds) in [(Columns::shared(), 3), (Columns::default(), 5)] {
            let mut n = 0;
            let mut ask = |key: Option<&str>| {
                columns.get(key, || {
                    n += 1;
                    column(key.unwrap_or("measurements"))
                })
            };
            for key in [Some("host"), None, Some("host"), Some("zone"), None] {
                let got = ask(key);
                assert_eq!(got.dict, [Some(key.unwrap_or("measurements").to_string())]);
            }
            assert_eq!(n, builds);
        }
    }

    /// Shared, key counts are counted once per key, only the keys not yet known at each ask.
    #[test]
    fn shared_key_counts_count_each_key_once() {
        let columns = Columns::shared();
        let mut asked: Vec<Vec<String>> = Vec::new();
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for ask in [
            keys(&["host", "zone"]),
            keys(&["zone", "host"]),
            keys(&["a", "host", "a"]),
        ] {
            let got = columns
                .counts(&ask, |missing| {
                    asked.push(missing.to_vec());
                    Ok(missing
                        .iter()
                        .map(|k| KeyCount {
                            tags: k.len() as u32,
                            fields: 0,
                        })
                        .collect())
                })
                .unwrap();
            let want: Vec<u32> = ask.iter().map(|k| k.len() as u32).collect();
            assert_eq!(got.iter().map(|c| c.tags).collect::<Vec<_>>(), want);
        }
        assert_eq!(asked, [keys(&["host", "zone"]), keys(&["a"])]);
    }

    /// Points with field `v` of every type (and none), tag `t` on some, `both` as tag and field
    /// on some, and strings first met after a few points: over two bitmap words.
    fn mixed() -> Vec<Point> {
        (0..150)
            .map(|i: usize| {
                let mut tags = vec![("host".to_string(), format!("h{}", i % 3))];
                let mut fields = vec![("x".to_string(), FieldValue::Int(i as i64))];
                let v = match i % 7 {
                    0 => None,
                    1 => Some(FieldValue::Float(i as f64 / 4.0)),
                    2 => Some(FieldValue::Int(-(i as i64))),
                    3 => Some(FieldValue::Uint(u64::MAX - i as u64)),
                    4 => Some(FieldValue::Bool(i.is_multiple_of(2))),
                    // Strings from point 5 on, repeated, one of them empty.
                    _ => Some(FieldValue::Str(["", "a", "bb"][i % 3].to_string())),
                };
                if let Some(v) = v {
                    // Not always at the same position, so the hint is missed sometimes.
                    fields.insert(i % 2, ("v".to_string(), v));
                }
                if i.is_multiple_of(5) {
                    tags.push(("t".to_string(), "x".to_string()));
                }
                if i.is_multiple_of(4) {
                    tags.insert(0, ("both".to_string(), "tag".to_string()));
                    fields.push(("both".to_string(), FieldValue::Float(0.5)));
                }
                Point {
                    measurement: "m".into(),
                    tags,
                    fields,
                    time: i as i64,
                }
            })
            .collect()
    }

    /// `points` lent as they are, or as the text they encode to (`text`).
    fn lent(points: &[Point], text: bool) -> PointBatch {
        PointBatch {
            category: Category::Metric,
            points: Arc::new(if text {
                Content::Text(Text::from_points(points))
            } else {
                Content::Points(points.to_vec())
            }),
            columns: Arc::default(),
        }
    }

    /// Reads a typed column back into one value per point, checking the shape the WIT
    /// promises on the way: mask and value lengths, bits past the end clear, one type per
    /// point, zeros where a type's bit is clear, `trues` within `mask`, a valid string index.
    fn decode(c: &TypedColumn, n: usize) -> Vec<Option<FieldValue>> {
        let words = n.div_ceil(64);
        let bit = |mask: &[u64], i: usize| mask[i / 64] >> (i % 64) & 1 == 1;
        let check_mask = |mask: &[u64]| {
            assert_eq!(mask.len(), words);
            if !n.is_multiple_of(64) {
                assert_eq!(mask[words - 1] >> (n % 64), 0, "bits past the end");
            }
        };
        let mut out: Vec<Option<FieldValue>> = vec![None; n];
        let mut set = |i: usize, v: FieldValue| {
            assert!(out[i].is_none(), "point {i} has two types");
            out[i] = Some(v);
        };
        if let Some(f) = &c.floats {
            check_mask(&f.mask);
            assert_eq!(f.values.len(), n);
            for i in 0..n {
                if bit(&f.mask, i) {
                    set(i, FieldValue::Float(f.values[i]));
                } else {
                    assert_eq!(f.values[i], 0.0);
                }
            }
        }
        if let Some(f) = &c.ints {
            check_mask(&f.mask);
            assert_eq!(f.values.len(), n);
            for i in 0..n {
                if bit(&f.mask, i) {
                    set(i, FieldValue::Int(f.values[i]));
                } else {
                    assert_eq!(f.values[i], 0);
                }
            }
        }
        if let Some(f) = &c.uints {
            check_mask(&f.mask);
            assert_eq!(f.values.len(), n);
            for i in 0..n {
                if bit(&f.mask, i) {
                    set(i, FieldValue::Uint(f.values[i]));
                } else {
                    assert_eq!(f.values[i], 0);
                }
            }
        }
        if let Some(f) = &c.bools {
            check_mask(&f.mask);
            check_mask(&f.trues);
            for i in 0..n {
                if bit(&f.mask, i) {
                    set(i, FieldValue::Bool(bit(&f.trues, i)));
                } else {
                    assert!(!bit(&f.trues, i), "a true outside the mask");
                }
            }
        }
        if let Some(s) = &c.strs {
            assert_eq!(s.index.len(), n);
            for (i, &d) in s.index.iter().enumerate() {
                if let Some(v) = &s.dict[d as usize] {
                    set(i, FieldValue::Str(v.clone()));
                }
            }
            let mut distinct = s.dict.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), s.dict.len(), "duplicates in {:?}", s.dict);
        }
        out
    }

    /// `points` read as ingest reads a write, the parser noting `keys` and the
    /// measurements.
    fn read_noting(points: &[Point], keys: &[String]) -> PointBatch {
        use crate::point::reader::{Format, Reader, Source};
        let body = Text::from_points(points).joined();
        let opts = crate::point::ParseOptions {
            precision: crate::point::Precision::Nanos,
            default_time: 0,
        };
        let mut reader = Reader::new(Source::Bytes(body), Format::LineProtocol, opts, usize::MAX)
            .forwarding()
            .noting(Some(Noting {
                keys: keys.into(),
                measurement: true,
            }));
        let chunk = reader.next_chunk(usize::MAX, &mut |_| true).unwrap();
        let text = chunk.text.expect("forwarded");
        assert_eq!(text.len(), points.len());
        PointBatch {
            category: Category::Metric,
            points: Arc::new(Content::Text(text)),
            columns: Arc::default(),
        }
    }

    /// Makes a batch of points: as points, as text, as noted text.
    type MakeBatch<'a> = dyn Fn(&[Point]) -> PointBatch + 'a;

    const FIELD_KEYS: [&str; 6] = ["v", "x", "both", "t", "host", "nothing"];

    /// Over points, over text, and over text whose keys the parser noted (the number
    /// fields `x` and `both` from the parser's notes; `v`, with strings, read from the lines).
    #[test]
    fn typed_column_holds_each_points_field() {
        let keys: Vec<String> = FIELD_KEYS.map(String::from).to_vec();
        let noted = |p: &[Point]| read_noting(p, &keys);
        let made: [(&str, &MakeBatch); 3] = [
            ("points", &|p| lent(p, false)),
            ("text", &|p| lent(p, true)),
            ("noted text", &noted),
        ];
        for (how, make) in made {
            typed_column_holds_each_points_field_of(how, make);
        }
        let b = noted(&mixed());
        let Content::Text(t) = b.points.as_ref() else {
            unreachable!()
        };
        for (key, numbers) in [("x", true), ("both", true), ("v", false), ("t", true)] {
            assert_eq!(t.noted_field(key).is_some(), numbers, "{key}");
        }
    }

    fn typed_column_holds_each_points_field_of(how: &str, make: &MakeBatch) {
        let points = mixed();
        let b = make(&points);
        let n = points.len();
        for key in FIELD_KEYS {
            let c = b.typed_column(key);
            let want: Vec<Option<FieldValue>> = points
                .iter()
                .map(|p| {
                    p.fields
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                })
                .collect();
            assert_eq!(decode(&c, n), want, "{key}, {how}");
            // A type no point has is `none`.
            let has = |f: fn(&FieldValue) -> bool| want.iter().flatten().any(f);
            assert_eq!(
                c.floats.is_some(),
                has(|v| matches!(v, FieldValue::Float(_)))
            );
            assert_eq!(c.ints.is_some(), has(|v| matches!(v, FieldValue::Int(_))));
            assert_eq!(c.uints.is_some(), has(|v| matches!(v, FieldValue::Uint(_))));
            assert_eq!(c.bools.is_some(), has(|v| matches!(v, FieldValue::Bool(_))));
            assert_eq!(c.strs.is_some(), has(|v| matches!(v, FieldValue::Str(_))));
        }
        // A batch of one point, with a string.
        let one = make(&points[5..6]);
        let c = one.typed_column("v");
        assert_eq!(decode(&c, 1), [Some(FieldValue::Str("bb".into()))]);
    }

    /// Over text, a tag column asked after `key-counts` is read from the places that scan
    /// found, and equals the points' column: escaped values, keys some points lack, one
    /// that is a field elsewhere, one no point has.
    #[test]
    fn tag_columns_after_key_counts_are_the_points_columns() {
        let mut points = mixed();
        for (i, p) in points.iter_mut().enumerate() {
            p.measurement = ["m", "cpu", "a b,c=d\\"][i % 3].to_string();
            if i % 5 == 0 {
                p.tags.push(("esc".into(), format!("a b,c=d\\{i}")));
            }
            if i % 11 == 0 {
                p.tags.retain(|(k, _)| k != "host");
            }
        }
        let keys: Vec<String> = ["host", "esc", "t", "both", "nothing"]
            .map(String::from)
            .to_vec();
        let want: Vec<StringColumn> = keys
            .iter()
            .map(|k| lent(&points, false).tag_column(k))
            .collect();
        let decode = |c: &StringColumn| -> Vec<Option<String>> {
            c.index
                .iter()
                .map(|&i| c.dict[i as usize].clone())
                .collect()
        };
        let scanned = lent(&points, true);
        let counted = lent(&points, true);
        counted.key_counts(&keys).unwrap();
        // Read as ingest reads a write, the parser noting the keys (all but the last).
        let noted = read_noting(&points, &keys[..keys.len() - 1]);
        noted.key_counts(&keys).unwrap();
        // The measurements too, as the parser noted them (escapes undone).
        let Content::Text(t) = noted.points.as_ref() else {
            unreachable!()
        };
        assert!(t.noted_measurements().is_some());
        let (measurements, from_points) = (
            noted.measurement_column(),
            lent(&points, false).measurement_column(),
        );
        assert_eq!(decode(&measurements), decode(&from_points));
        assert_eq!(measurements.dict, from_points.dict, "first seen first");
        assert_eq!(decode(&measurements)[2].as_deref(), Some("a b,c=d\\"));
        assert!(noted.columns.asked().measurement, "asked: noted next time");
        for (k, want) in keys.iter().zip(&want) {
            let Content::Text(t) = noted.points.as_ref() else {
                unreachable!()
            };
            assert_eq!(t.noted_column(k).is_some(), k != "nothing", "{k}");
            assert_eq!(decode(&noted.tag_column(k)), decode(want), "{k}, noted");
            assert_eq!(
                noted.tag_column(k).dict,
                want.dict,
                "{k}, noted: first seen first"
            );
        }
        for (k, want) in keys.iter().zip(&want) {
            assert!(scanned.columns.values(k).is_none());
            assert!(
                counted.columns.values(k).is_some(),
                "{k}: kept by key-counts"
            );
            assert_eq!(decode(&scanned.tag_column(k)), decode(want), "{k}, scanned");
            assert_eq!(
                decode(&counted.tag_column(k)),
                decode(want),
                "{k}, after key-counts"
            );
        }
        assert_eq!(decode(&want[1])[5].as_deref(), Some("a b,c=d\\5"));
        assert_eq!(decode(&want[0])[11], None);
    }

    #[test]
    fn key_counts_count_tags_and_fields() {
        for text in [false, true] {
            key_counts_count_tags_and_fields_of(text);
        }
    }

    fn key_counts_count_tags_and_fields_of(text: bool) {
        let points = mixed();
        let b = lent(&points, text);
        let keys: Vec<String> = ["v", "host", "both", "t", "x", "nothing", "v"]
            .map(String::from)
            .to_vec();
        let got: Vec<(u32, u32)> = b
            .key_counts(&keys)
            .unwrap()
            .iter()
            .map(|c| (c.tags, c.fields))
            .collect();
        let want: Vec<(u32, u32)> = keys
            .iter()
            .map(|k| {
                let count =
                    |has: &dyn Fn(&Point) -> bool| points.iter().filter(|p| has(p)).count() as u32;
                (
                    count(&|p| p.tags.iter().any(|(t, _)| t == k)),
                    count(&|p| p.fields.iter().any(|(f, _)| f == k)),
                )
            })
            .collect();
        assert_eq!(got, want, "text: {text}");
        assert_eq!(want[0], (0, 150 - 150 / 7 - 1)); // `v`: every point but i % 7 == 0
        assert!(b.key_counts(&[]).unwrap().is_empty());
        // A key a point repeats counts once; a key of another length sharing `len % 64`.
        let long = "x".repeat(66);
        let dup = lent(
            &[Point {
                measurement: "m".into(),
                tags: vec![
                    ("a".into(), "1".into()),
                    ("a".into(), "2".into()),
                    ("y".repeat(40), "3".into()),
                ],
                fields: vec![("bb".into(), FieldValue::Int(1))],
                time: 0,
            }],
            text,
        );
        let got: Vec<(u32, u32)> = dup
            .key_counts(&["a".into(), long, "bb".into(), "y".repeat(40)])
            .unwrap()
            .iter()
            .map(|c| (c.tags, c.fields))
            .collect();
        assert_eq!(got, [(1, 0), (0, 0), (0, 1), (1, 0)]);
        // At most MAX_COUNTED_KEYS keys: more is an error (a trap in the plugin).
        let many: Vec<String> = (0..=MAX_COUNTED_KEYS).map(|i| format!("k{i}")).collect();
        assert_eq!(b.key_counts(&many[1..]).unwrap().len(), MAX_COUNTED_KEYS);
        let err = b.key_counts(&many).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn find_uses_and_moves_the_hint() {
        let pairs: Vec<(String, u8)> = vec![("a".into(), 1), ("bb".into(), 2), ("cc".into(), 3)];
        let mut hint = 0;
        assert_eq!(find(&pairs, "cc", &mut hint), Some(&3));
        assert_eq!(hint, 2);
        assert_eq!(find(&pairs, "a", &mut hint), Some(&1));
        assert_eq!(find(&pairs, "bb", &mut hint), Some(&2));
        assert_eq!(find(&pairs, "dd", &mut hint), None);
        assert_eq!(find(&pairs[..1], "bb", &mut hint), None);
    }
}
