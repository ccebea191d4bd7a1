//! Dictionaries of strings: each distinct value once, and each point's entry.
//!
//! In: a column's values, one at a time (a tag of every line, a string field). Out: the
//! distinct values in first-seen order (`None`, a point without one, is a value too) and
//! each value's entry. Sinker columns are sent to plugins this way: a distinct value
//! crosses into the guest once. The same dictionary is built by the parser for the tags it
//! notes ([`super::keys`]), while each line is in the cache, and by the sinker batch for
//! columns read later ([`crate::sinker`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries a dictionary is searched linearly for before it gets a hash map.
const LINEAR_DICT: usize = 16;

/// Slots of a dictionary's lookaside table (a power of two). 256: with 64, a column of 40
/// hosts had about 6 sharing a slot with another, and their lines missed (the table is 1
/// KiB, zeroed once per column).
const SLOTS: usize = 256;

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

/// Whether two strings are equal, inline for the short keys and values points carry: a libc
/// `memcmp` call per comparison was a fifth of a plugin call.
#[inline(always)]
pub fn same(a: &str, b: &str) -> bool {
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

/// The distinct values of a string column, in first-seen order: borrowed (`S = &str`) when
/// the values outlive the dictionary, owned (`S = String`) when they do not.
pub struct Dict<S> {
    values: Vec<Option<S>>,
    /// Built once `values` outgrows [`LINEAR_DICT`] (high-cardinality columns, e.g. ids).
    map: Option<HashMap<S, u32, foldhash::fast::RandomState>>,
    /// Lookaside table: entry + 1 of the last value seen in each slot ([`slot_of`]), 0 for
    /// none. Most points find their value here with one comparison and no data-dependent
    /// branch to mispredict (a linear scan of the dictionary was a quarter of a call).
    slots: [u32; SLOTS],
    /// The entry of `None`, once seen.
    none: Option<u32>,
}

impl<S> std::fmt::Debug for Dict<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dict({} values)", self.values.len())
    }
}

impl<S: Borrow<str> + Hash + Eq + Clone> Default for Dict<S> {
    fn default() -> Dict<S> {
        Dict::new()
    }
}

impl<S: Borrow<str> + Hash + Eq + Clone> Dict<S> {
    pub fn new() -> Dict<S> {
        Dict {
            values: Vec::new(),
            map: None,
            slots: [0; SLOTS],
            none: None,
        }
    }

    /// The entry of `v`, added if new. `v` is made into an `S` only then (for an owned
    /// dictionary: a string is allocated per distinct value, not per point).
    #[inline(always)]
    pub fn index_of<Q: AsRef<str> + Into<S>>(&mut self, v: Option<Q>) -> u32 {
        let Some(q) = v else {
            return match self.none {
                Some(i) => i,
                None => {
                    let i = self.insert(None);
                    self.none = Some(i);
                    i
                }
            };
        };
        let slot = slot_of(q.as_ref());
        let c = self.slots[slot];
        if c != 0
            && let Some(Some(d)) = self.values.get(c as usize - 1)
            && same(d.borrow(), q.as_ref())
        {
            return c - 1;
        }
        let i = self.lookup(q);
        self.slots[slot] = i + 1;
        i
    }

    /// The entry of `q`, added if new: by a linear scan or the hash map.
    #[inline(never)]
    fn lookup<Q: AsRef<str> + Into<S>>(&mut self, q: Q) -> u32 {
        let s = q.as_ref();
        let found = match &self.map {
            Some(map) => map.get(s).copied(),
            None => self
                .values
                .iter()
                .position(|d| d.as_ref().is_some_and(|d| same(d.borrow(), s)))
                .map(|i| i as u32),
        };
        match found {
            Some(i) => i,
            None => self.insert(Some(q.into())),
        }
    }

    /// Appends `v` (not in the dictionary yet) and returns its entry.
    fn insert(&mut self, v: Option<S>) -> u32 {
        let i = self.values.len() as u32;
        match (&mut self.map, &v) {
            (Some(map), Some(s)) => {
                map.insert(s.clone(), i);
            }
            (None, _) if self.values.len() >= LINEAR_DICT => {
                let mut map = HashMap::with_capacity_and_hasher(
                    4 * LINEAR_DICT,
                    foldhash::fast::RandomState::default(),
                );
                let values = self.values.iter().chain(std::iter::once(&v));
                map.extend(
                    values
                        .zip(0u32..)
                        .filter_map(|(v, i)| Some((v.clone()?, i))),
                );
                self.map = Some(map);
            }
            _ => {}
        }
        self.values.push(v);
        i
    }

    /// The number of distinct values (`None` included, if seen).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The distinct values, first seen first.
    pub fn values(&self) -> &[Option<S>] {
        &self.values
    }

    /// The distinct values, first seen first.
    pub fn into_values(self) -> Vec<Option<S>> {
        self.values
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
                if i.is_multiple_of(4) {
                    values.push(v); // a run
                }
            }
        }
        let mut dict: Dict<&str> = Dict::new();
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

    /// Borrowed and owned dictionaries give each value the entry of its first sighting,
    /// below and past the size where the hash map takes over, with `None` among them.
    #[test]
    fn entries_are_first_seen_order() {
        let words: Vec<String> = (0..200).map(|i| format!("host-{}", i % 70)).collect();
        let values: Vec<Option<&str>> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (i % 9 != 4).then_some(w.as_str()))
            .collect();
        let mut borrowed: Dict<&str> = Dict::new();
        let mut owned: Dict<String> = Dict::new();
        let mut expected: Vec<Option<&str>> = Vec::new();
        for v in &values {
            let want = match expected.iter().position(|e| e == v) {
                Some(i) => i,
                None => {
                    expected.push(*v);
                    expected.len() - 1
                }
            } as u32;
            assert_eq!(borrowed.index_of(*v), want, "{v:?}");
            assert_eq!(owned.index_of(*v), want, "{v:?}");
        }
        assert_eq!(borrowed.into_values(), expected);
        let owned: Vec<Option<String>> = owned.into_values();
        assert!(owned.iter().map(Option::as_deref).eq(expected));
    }
}
