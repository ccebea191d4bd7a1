//! The `batch` resource of the WIT contract: points the host lends to a plugin for one call.
//!
//! In: an `Arc` of the points being routed (no copy), parsed or as checked text. Out: the columns a plugin asks for,
//! built on demand; string columns are dictionary-encoded so each distinct value crosses
//! into the guest once (a guest allocation per string is what dominates the call cost).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::Resource;

use super::plugin::StoreState;
use super::plugin::bindings::dataway::sinker::types::{
    FieldValue as WitValue, Host, HostBatch, StringColumn,
};
use crate::category::Category;
use crate::point::{Content, FieldValue, Point, Text};

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
}

impl Columns {
    /// Columns kept for every condition that sees the batch.
    pub fn shared() -> Columns {
        Columns {
            keep: true,
            ..Columns::default()
        }
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
    let mut dict = Dict::new();
    let index = values.map(|v| dict.index_of(v)).collect();
    StringColumn {
        dict: dict
            .values
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
    let values: Vec<Option<Cow<'a, str>>> = text.lines().map(value).collect();
    string_column(values.iter().map(|v| v.as_deref()))
}

/// Whether two strings are equal, inline for the short keys and values points carry: a libc
/// `memcmp` call per comparison was a fifth of a plugin call.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let u64_at = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
    let u32_at = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
    match n {
        // Two overlapping words cover every byte.
        8..=16 => u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8),
        4..=7 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

#[inline(always)]
fn same_opt(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
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

/// Entries a dictionary is searched linearly for before it gets a hash map.
const LINEAR_DICT: usize = 16;

/// Slots of a dictionary's lookaside table (a power of two).
const SLOTS: usize = 64;

/// A cheap hash of a short string, for the lookaside table: its length and up to 16 of its
/// bytes (a collision only costs the slow path).
#[inline(always)]
fn slot_of(s: &str) -> usize {
    let b = s.as_bytes();
    let n = b.len();
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u64::from(u32::from_le_bytes(b[i..i + 4].try_into().unwrap()));
    let x = match n {
        8.. => u64_at(0) ^ u64_at(n - 8).rotate_left(29),
        4..=7 => u32_at(0) | u32_at(n - 4) << 32,
        _ => b.iter().fold(0u64, |h, &c| h << 8 | u64::from(c)),
    };
    ((x ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The distinct values of a string column, in first-seen order.
struct Dict<'a> {
    values: Vec<Option<&'a str>>,
    /// Built once `values` outgrows [`LINEAR_DICT`] (high-cardinality columns, e.g. ids).
    map: Option<HashMap<Option<&'a str>, u32, foldhash::fast::RandomState>>,
    /// Lookaside table: entry + 1 of the last value seen in each slot ([`slot_of`]), 0 for
    /// none. Most points find their value here with one comparison and no data-dependent
    /// branch to mispredict (a linear scan of the dictionary was a quarter of a call).
    slots: [u32; SLOTS],
    /// The entry of `None`, once seen.
    none: Option<u32>,
}

impl<'a> Dict<'a> {
    fn new() -> Dict<'a> {
        Dict {
            values: Vec::new(),
            map: None,
            slots: [0; SLOTS],
            none: None,
        }
    }

    #[inline(always)]
    fn index_of(&mut self, v: Option<&'a str>) -> u32 {
        let Some(s) = v else {
            return match self.none {
                Some(i) => i,
                None => {
                    let i = self.insert(None);
                    self.none = Some(i);
                    i
                }
            };
        };
        let slot = slot_of(s);
        let c = self.slots[slot];
        if c != 0
            && let Some(Some(d)) = self.values.get(c as usize - 1)
            && same(d, s)
        {
            return c - 1;
        }
        let i = self.lookup(v);
        self.slots[slot] = i + 1;
        i
    }

    /// The entry of `v`, added if new: by a linear scan or the hash map.
    #[inline(never)]
    fn lookup(&mut self, v: Option<&'a str>) -> u32 {
        let next = self.values.len() as u32;
        let i = match &mut self.map {
            Some(map) => *map.entry(v).or_insert(next),
            None => self
                .values
                .iter()
                .position(|d| same_opt(*d, v))
                .map_or(next, |i| i as u32),
        };
        if i == next {
            self.insert(v);
        }
        i
    }

    /// Appends `v` (not in the dictionary yet) and returns its entry.
    fn insert(&mut self, v: Option<&'a str>) -> u32 {
        let i = self.values.len() as u32;
        self.values.push(v);
        match &mut self.map {
            Some(map) => {
                map.insert(v, i);
            }
            None if self.values.len() > LINEAR_DICT => {
                let mut map = HashMap::with_capacity_and_hasher(
                    4 * LINEAR_DICT,
                    foldhash::fast::RandomState::default(),
                );
                map.extend(self.values.iter().zip(0u32..).map(|(v, i)| (*v, i)));
                self.map = Some(map);
            }
            None => {}
        }
        i
    }
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
        let batch = self.table.get(&b)?;
        Ok(batch.columns.get(None, || match batch.points.as_ref() {
            Content::Points(ps) => string_column(ps.iter().map(|p| Some(p.measurement.as_str()))),
            Content::Text(t) => text_column(t, |l| Some(l.measurement())),
        }))
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
        let batch = self.table.get(&b)?;
        Ok(batch
            .columns
            .get(Some(&key), || match batch.points.as_ref() {
                Content::Points(ps) => {
                    let mut hint = 0;
                    string_column(
                        ps.iter()
                            .map(|p| find(&p.tags, &key, &mut hint).map(String::as_str)),
                    )
                }
                Content::Text(t) => text_column(t, |l| l.tag(&key)),
            }))
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
            Content::Text(t) => t.lines().map(|l| l.field(&key).map(into_wit)).collect(),
        })
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

    #[test]
    fn same_is_string_equality() {
        let base: String = ('a'..='z').chain('A'..='Z').collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(same(a, a), "{a}");
            let copy = String::from(a); // another allocation: equal bytes, not pointers
            assert!(same(a, &copy), "{a}");
            if n > 0 {
                assert!(!same(a, &base[..n - 1]), "{a}");
            }
            // A difference at any one byte is seen.
            for i in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[i] = b'0';
                assert!(!same(a, std::str::from_utf8(&b).unwrap()), "{a} byte {i}");
            }
        }
        assert!(same_opt(None, None));
        assert!(!same_opt(Some(""), None));
        assert!(!same_opt(None, Some("")));
    }

    /// Runs, repeats, `None`, and more distinct values than the linear scan takes: the
    /// column decodes to the input and its dictionary holds each value once.
    #[test]
    fn dictionary_encodes_every_value_once() {
        let mut values: Vec<Option<String>> = Vec::new();
        for round in 0..3 {
            for i in 0..(LINEAR_DICT * 3) {
                let v = (i % 7 != 3).then(|| format!("value-{}", (i * 5 + round) % 41));
                values.push(v.clone());
                if i % 4 == 0 {
                    values.push(v); // a run
                }
            }
        }
        let mut dict = Dict::new();
        let index: Vec<u32> = values.iter().map(|v| dict.index_of(v.as_deref())).collect();
        let decoded: Vec<Option<&str>> = index.iter().map(|&i| dict.values[i as usize]).collect();
        let want: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        assert_eq!(decoded, want);
        let mut distinct = dict.values.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            dict.values.len(),
            "duplicates in {:?}",
            dict.values
        );
        assert!(dict.values.len() > LINEAR_DICT && dict.map.is_some());
    }

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
