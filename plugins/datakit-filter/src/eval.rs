//! The evaluator: compiles parsed filters into a [`Program`] and runs it over a batch, columnar.
//!
//! Per [`Program::eval`] call, each key a condition uses is fetched at most once: its tag column
//! (dictionary-encoded, so a condition is tested once per distinct tag value), and its field
//! column only when some point lacks the tag. Conditions yield bitsets over the batch's points
//! that `and`/`or`/groups combine word by word; a conjunction stops once no point is left, a
//! disjunction once every point matched.
//!
//! Semantics (see the crate README for the reasoning):
//! - a key is the category's injected key (`source`, `measurement`, `class`) when it is one,
//!   else the point's tag, else its field;
//! - `=`, `!=`, ordering: same type on both sides, else false; numbers (int, uint, float fields
//!   and int/float literals) compare numerically, floats equal within 1e-9; strings order
//!   bytewise; bools only `=`/`!=`; a missing key is false, except `= nil` (true) — `!= nil` is
//!   true when the key is present;
//! - `in`: some element equals the value (`nil` in the list matches a missing key); `notin`: none
//!   does (so a missing key is in no list without `nil`);
//! - `match`/`= re()`: some regex matches (unanchored) a string value; `notmatch`/`!= re()`: none
//!   does; a missing key or non-string value is false for all four.

use std::cmp::Ordering;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;

use crate::parser::{CmpOp, Cond, Expr, Filter, Lit, Op, ParseError, RegexLit};

/// A field value, as the host sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
    Uint(u64),
    Bool(bool),
    Str(String),
}

/// A dictionary-encoded column of optional strings: point `i` has `dict[index[i]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StringColumn {
    pub dict: Vec<Option<String>>,
    pub index: Vec<u32>,
}

/// Where the evaluator gets a batch's columns from: the WIT batch in the plugin, an in-memory
/// batch in tests.
pub trait Columns {
    /// Number of points.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The category's name (`metric`, `logging`, ...).
    fn category(&self) -> String;
    /// The measurement of each point.
    fn measurements(&self) -> StringColumn;
    /// Tag `key` of each point (`None` where absent).
    fn tag_column(&self, key: &str) -> StringColumn;
    /// Field `key` of each point (`None` where absent).
    fn field_column(&self, key: &str) -> Vec<Option<Value>>;
}

/// The key whose value is the measurement name in `category`, overriding a tag of that name.
pub fn injected_key(category: &str) -> Option<&'static str> {
    match category {
        "logging" | "network" | "keyevent" | "rum" => Some("source"),
        "metric" => Some("measurement"),
        "object" | "custom_object" => Some("class"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Values and predicates

/// A borrowed value of a key for one point.
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    Missing,
    Str(&'a str),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
}

impl<'a> From<Option<&'a Value>> for V<'a> {
    fn from(v: Option<&'a Value>) -> V<'a> {
        match v {
            None => V::Missing,
            Some(Value::Str(s)) => V::Str(s),
            Some(Value::Int(i)) => V::Int(*i),
            Some(Value::Uint(u)) => V::Uint(*u),
            Some(Value::Float(f)) => V::Float(*f),
            Some(Value::Bool(b)) => V::Bool(*b),
        }
    }
}

/// A number: integers (int, uint) exactly, floats as f64.
#[derive(Debug, Clone, Copy)]
enum Num {
    I(i128),
    F(f64),
}

impl Num {
    fn of(v: V<'_>) -> Option<Num> {
        match v {
            V::Int(i) => Some(Num::I(i as i128)),
            V::Uint(u) => Some(Num::I(u as i128)),
            V::Float(f) => Some(Num::F(f)),
            _ => None,
        }
    }

    fn of_lit(l: &Lit) -> Option<Num> {
        match l {
            Lit::Int(i) => Some(Num::I(*i as i128)),
            Lit::Float(f) => Some(Num::F(*f)),
            _ => None,
        }
    }

    fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn eq(self, o: Num) -> bool {
        match (self, o) {
            (Num::I(a), Num::I(b)) => a == b,
            _ => {
                let (a, b) = (self.f(), o.f());
                a == b || (a - b).abs() <= FLOAT_EPSILON
            }
        }
    }

    fn cmp(self, o: Num) -> Option<Ordering> {
        match (self, o) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            _ => self.f().partial_cmp(&o.f()),
        }
    }
}

/// Float equality tolerance, as DataKit's.
pub const FLOAT_EPSILON: f64 = 1e-9;

/// `v = lit`: `None` when the types differ (or either side is nil).
fn equals(v: V<'_>, lit: &Lit) -> Option<bool> {
    match (v, lit) {
        (V::Str(a), Lit::Str(b)) => Some(a == b),
        (V::Bool(a), Lit::Bool(b)) => Some(a == *b),
        _ => Some(Num::of(v)?.eq(Num::of_lit(lit)?)),
    }
}

/// `v <=> lit` for the orderings: strings bytewise, numbers numerically, else `None`.
fn order(v: V<'_>, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (V::Str(a), Lit::Str(b)) => Some(a.cmp(b.as_str())),
        _ => Num::of(v)?.cmp(Num::of_lit(lit)?),
    }
}

/// A compiled condition on one key's value.
#[derive(Debug)]
enum Pred {
    Cmp(CmpOp, Lit),
    In {
        items: Vec<Lit>,
        has_nil: bool,
        negated: bool,
    },
    /// `match`, `= re()` (`negated: false`) and `notmatch`, `!= re()` (`negated: true`).
    Match {
        res: Vec<Regex>,
        negated: bool,
    },
}

impl Pred {
    fn test(&self, v: V<'_>) -> bool {
        match self {
            Pred::Cmp(op, lit) => match (v, lit) {
                (V::Missing, _) => *op == CmpOp::Eq && *lit == Lit::Nil,
                (_, Lit::Nil) => *op == CmpOp::Ne,
                _ => match op {
                    CmpOp::Eq => equals(v, lit) == Some(true),
                    CmpOp::Ne => equals(v, lit) == Some(false),
                    CmpOp::Lt => order(v, lit) == Some(Ordering::Less),
                    CmpOp::Le => matches!(order(v, lit), Some(Ordering::Less | Ordering::Equal)),
                    CmpOp::Gt => order(v, lit) == Some(Ordering::Greater),
                    CmpOp::Ge => {
                        matches!(order(v, lit), Some(Ordering::Greater | Ordering::Equal))
                    }
                },
            },
            Pred::In {
                items,
                has_nil,
                negated,
            } => {
                let found = match v {
                    V::Missing => *has_nil,
                    _ => items.iter().any(|l| equals(v, l) == Some(true)),
                };
                found != *negated
            }
            Pred::Match { res, negated } => match v {
                V::Str(s) => res.iter().any(|r| r.is_match(s)) != *negated,
                _ => false,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Go regexp → Rust regex

/// Rewrites a Go (RE2) regexp so regex-automata reads it the way Go does: `\d \s \w \b` (and
/// their negations) are ASCII-only in Go but Unicode-aware here; `\Q…\E` quotes literally; inside
/// a class, Go takes `[` (outside `[:name:]`), `&&` and `~~` literally where Rust nests or
/// combines classes.
pub fn go_regex_to_rust(pat: &str) -> String {
    let mut out = String::with_capacity(pat.len() + 8);
    let chars: Vec<char> = pat.chars().collect();
    let mut i = 0;
    // Inside a bracketed class; `class_start` is the index right after `[` / `[^`.
    let mut in_class = false;
    let mut class_start = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let e = chars[i + 1];
                i += 2;
                match e {
                    'd' => out.push_str("[0-9]"),
                    'D' => out.push_str("[^0-9]"),
                    's' => out.push_str(r"[\t\n\f\r ]"),
                    'S' => out.push_str(r"[^\t\n\f\r ]"),
                    'w' => out.push_str("[0-9A-Za-z_]"),
                    'W' => out.push_str("[^0-9A-Za-z_]"),
                    'b' if !in_class => out.push_str(r"(?-u:\b)"),
                    'B' if !in_class => out.push_str(r"(?-u:\B)"),
                    'Q' if !in_class => {
                        let rest: String = chars[i..].iter().collect();
                        let (lit, skip) = match rest.find(r"\E") {
                            Some(end) => (&rest[..end], end + 2),
                            None => (rest.as_str(), rest.len()),
                        };
                        for c in lit.chars() {
                            if r"\.+*?()|[]{}^$#&-~".contains(c) {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                        i += rest[..skip].chars().count();
                    }
                    e => {
                        out.push('\\');
                        out.push(e);
                    }
                }
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                class_start = i;
                continue;
            }
            '[' if chars.get(i + 1) == Some(&':') => {
                // A POSIX class `[:alpha:]`: copy through its `:]`.
                let rest: String = chars[i..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    out.push_str(&rest[..end + 2]);
                    i += rest[..end + 2].chars().count();
                } else {
                    out.push_str(r"\[");
                    i += 1;
                }
                continue;
            }
            '[' => out.push_str(r"\["),
            ']' if in_class && i != class_start => {
                in_class = false;
                out.push(']');
            }
            ']' if in_class => out.push_str(r"\]"),
            '&' | '~' if in_class && chars.get(i + 1) == Some(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn compile_regex(lit: &RegexLit) -> Result<Regex, ParseError> {
    Regex::builder()
        .syntax(syntax::Config::new().octal(true))
        .build(&go_regex_to_rust(&lit.pattern))
        .map_err(|e| {
            // A syntax error's Display is a multi-line diagram; keep its last line.
            let text = match e.syntax_error() {
                Some(se) => se.to_string(),
                None => e.to_string(),
            };
            let reason = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(text.trim())
                .to_string();
            ParseError {
                pos: lit.pos,
                msg: format!("invalid regex {:?}: {reason}", lit.pattern),
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Program

#[derive(Debug)]
enum CExpr {
    Leaf { key: usize, pred: Pred },
    And(Vec<CExpr>),
    Or(Vec<CExpr>),
}

/// Compiled filters: ready to evaluate over batches.
#[derive(Debug)]
pub struct Program {
    /// Each group is a conjunction; the groups are ORed.
    groups: Vec<Vec<CExpr>>,
    /// The distinct keys the conditions use; `CExpr::Leaf::key` indexes this.
    keys: Vec<String>,
    filters: usize,
    conditions: usize,
}

impl Program {
    /// Compiles parsed filter strings. A regex that does not compile is an error of the filter
    /// (its index in `filters`) at the regex's position.
    pub fn compile(filters: &[Filter]) -> Result<Program, (usize, ParseError)> {
        let mut prog = Program {
            groups: Vec::new(),
            keys: Vec::new(),
            filters: filters.len(),
            conditions: 0,
        };
        for (fi, f) in filters.iter().enumerate() {
            for g in &f.groups {
                let elems = g
                    .elems
                    .iter()
                    .map(|e| prog.compile_expr(e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| (fi, e))?;
                prog.groups.push(elems);
            }
        }
        Ok(prog)
    }

    fn compile_expr(&mut self, e: &Expr) -> Result<CExpr, ParseError> {
        Ok(match e {
            Expr::And(v) => CExpr::And(
                v.iter()
                    .map(|e| self.compile_expr(e))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Or(v) => CExpr::Or(
                v.iter()
                    .map(|e| self.compile_expr(e))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Cond(c) => self.compile_cond(c)?,
        })
    }

    fn compile_cond(&mut self, c: &Cond) -> Result<CExpr, ParseError> {
        self.conditions += 1;
        let key = match self.keys.iter().position(|k| *k == c.key) {
            Some(i) => i,
            None => {
                self.keys.push(c.key.clone());
                self.keys.len() - 1
            }
        };
        let regexes = |v: &[RegexLit]| v.iter().map(compile_regex).collect::<Result<Vec<_>, _>>();
        let pred = match &c.op {
            Op::Cmp(op, lit) => Pred::Cmp(*op, lit.clone()),
            Op::Re { negated, re } => Pred::Match {
                res: vec![compile_regex(re)?],
                negated: *negated,
            },
            Op::In(items) | Op::NotIn(items) => Pred::In {
                has_nil: items.contains(&Lit::Nil),
                items: items.iter().filter(|l| **l != Lit::Nil).cloned().collect(),
                negated: matches!(c.op, Op::NotIn(_)),
            },
            Op::Match(v) => Pred::Match {
                res: regexes(v)?,
                negated: false,
            },
            Op::NotMatch(v) => Pred::Match {
                res: regexes(v)?,
                negated: true,
            },
        };
        Ok(CExpr::Leaf { key, pred })
    }

    /// One line for the log: `2 filters, 3 groups, 5 conditions on 4 keys`.
    pub fn summary(&self) -> String {
        if self.groups.is_empty() {
            return "no filters: every point matches".into();
        }
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {} on {}",
            plural(self.filters, "filter"),
            plural(self.groups.len(), "group"),
            plural(self.conditions, "condition"),
            plural(self.keys.len(), "key"),
        )
    }

    /// Says which points of `batch` match: element `i` is true when point `i` matches some group.
    /// With no groups at all (an empty filter list), every point matches.
    pub fn eval<C: Columns + ?Sized>(&self, batch: &C) -> Vec<bool> {
        let n = batch.len();
        if self.groups.is_empty() {
            return vec![true; n];
        }
        let category = batch.category();
        let mut ctx = Ctx {
            batch,
            n,
            injected: injected_key(&category),
            measurements: None,
            cols: (0..self.keys.len()).map(|_| None).collect(),
            keys: &self.keys,
        };
        let mut result = Bits::zeros(n);
        for g in &self.groups {
            let m = ctx.conj(g);
            result.or(&m);
            if result.all() {
                break;
            }
        }
        result.to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// Columnar evaluation

/// A bitset over a batch's points.
#[derive(Debug, Clone)]
struct Bits {
    words: Vec<u64>,
    n: usize,
}

impl Bits {
    fn zeros(n: usize) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64)],
            n,
        }
    }

    fn ones(n: usize) -> Bits {
        let mut b = Bits {
            words: vec![!0; n.div_ceil(64)],
            n,
        };
        if !n.is_multiple_of(64) {
            let last = b.words.len() - 1;
            b.words[last] = (1u64 << (n % 64)) - 1;
        }
        b
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn and(&mut self, o: &Bits) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a &= b);
    }

    fn or(&mut self, o: &Bits) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a |= b);
    }

    fn none(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    fn all(&self) -> bool {
        self.words
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            == self.n
    }

    fn to_vec(&self) -> Vec<bool> {
        (0..self.n)
            .map(|i| self.words[i / 64] & (1 << (i % 64)) != 0)
            .collect()
    }
}

/// A key's columns, fetched once per batch.
enum KeyCol {
    /// The category's injected key: the measurements column.
    Injected,
    /// The tag column, and the field column when some point lacks the tag.
    TagOrField {
        tags: StringColumn,
        fields: Option<Vec<Option<Value>>>,
    },
}

struct Ctx<'a, C: Columns + ?Sized> {
    batch: &'a C,
    n: usize,
    injected: Option<&'static str>,
    measurements: Option<StringColumn>,
    cols: Vec<Option<KeyCol>>,
    keys: &'a [String],
}

impl<C: Columns + ?Sized> Ctx<'_, C> {
    fn conj(&mut self, elems: &[CExpr]) -> Bits {
        let mut acc = Bits::ones(self.n);
        for e in elems {
            let m = self.expr(e);
            acc.and(&m);
            if acc.none() {
                break;
            }
        }
        acc
    }

    fn expr(&mut self, e: &CExpr) -> Bits {
        match e {
            CExpr::Leaf { key, pred } => self.leaf(*key, pred),
            CExpr::And(v) => self.conj(v),
            CExpr::Or(v) => {
                let mut acc = Bits::zeros(self.n);
                for e in v {
                    let m = self.expr(e);
                    acc.or(&m);
                    if acc.all() {
                        break;
                    }
                }
                acc
            }
        }
    }

    /// Fetches key `k`'s columns if not yet done in this batch.
    fn fetch(&mut self, k: usize) {
        if self.cols[k].is_some() {
            return;
        }
        let key = self.keys[k].as_str();
        let col = if self.injected == Some(key) {
            if self.measurements.is_none() {
                self.measurements = Some(self.batch.measurements());
            }
            KeyCol::Injected
        } else {
            let tags = self.batch.tag_column(key);
            let fields = tags
                .dict
                .iter()
                .any(Option::is_none)
                .then(|| self.batch.field_column(key));
            KeyCol::TagOrField { tags, fields }
        };
        self.cols[k] = Some(col);
    }

    fn leaf(&mut self, k: usize, pred: &Pred) -> Bits {
        self.fetch(k);
        let mut out = Bits::zeros(self.n);
        let (tags, fields) = match self.cols[k].as_ref().expect("fetched") {
            KeyCol::Injected => (self.measurements.as_ref().expect("fetched"), None),
            KeyCol::TagOrField { tags, fields } => (tags, fields.as_ref()),
        };
        // Once per distinct tag value: 1 = true, 0 = false, 2 = no tag (look at the field).
        let per_entry: Vec<u8> = tags
            .dict
            .iter()
            .map(|e| match e {
                Some(s) => pred.test(V::Str(s)) as u8,
                None => 2,
            })
            .collect();
        let when_missing = pred.test(V::Missing);
        for i in 0..self.n {
            let entry = tags
                .index
                .get(i)
                .and_then(|&d| per_entry.get(d as usize))
                .copied();
            let hit = match entry {
                Some(0) => false,
                Some(1) => true,
                _ => match fields.and_then(|f| f.get(i)).and_then(Option::as_ref) {
                    Some(v) => pred.test(V::from(Some(v))),
                    None => when_missing,
                },
            };
            if hit {
                out.set(i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_regex_translation() {
        let cases: &[(&str, &str)] = &[
            ("abc", "abc"),
            (r"\d+", "[0-9]+"),
            (r"[\d.]", "[[0-9].]"),
            (
                r"\w\W\s\S\D",
                r"[0-9A-Za-z_][^0-9A-Za-z_][\t\n\f\r ][^\t\n\f\r ][^0-9]",
            ),
            (r"\bx\B", r"(?-u:\b)x(?-u:\B)"),
            (r"\Qa.b\E.c", r"a\.b.c"),
            (r"\Qa.b", r"a\.b"),
            ("[[:alpha:]]", "[[:alpha:]]"),
            ("[a[]", r"[a\[]"),
            ("[]a]", r"[\]a]"),
            ("[^]a]", r"[^\]a]"),
            ("[a&&b]", r"[a\&&b]"),
            ("[a~~b]", r"[a\~~b]"),
            (r"\.\\", r"\.\\"),
            ("a&&b", "a&&b"),
        ];
        for (go, rust) in cases {
            assert_eq!(go_regex_to_rust(go), *rust, "{go}");
        }
        let re = |p: &str| {
            compile_regex(&RegexLit {
                pattern: p.into(),
                pos: crate::parser::Pos { line: 1, col: 1 },
            })
            .unwrap()
        };
        assert!(!re(r"^\d$").is_match("٣")); // Arabic-Indic digit: not \d in Go
        assert!(re(r"^\pN$").is_match("٣"));
        assert!(!re(r"^\w+$").is_match("é"));
        assert!(re(r"(?i)^é$").is_match("É"));
        assert!(re(r"\bfoo\b").is_match("a foo b"));
        assert!(!re(r"\bfoo\b").is_match("afoob"));
        assert!(re(r"^\101$").is_match("A")); // octal, as Go
        assert!(re(r"^[a[]+$").is_match("a[a"));
    }

    #[test]
    fn bits() {
        for n in [1, 63, 64, 65, 1024] {
            assert!(Bits::ones(n).all());
            assert!(Bits::zeros(n).none());
            let mut b = Bits::zeros(n);
            b.set(n - 1);
            assert!(!b.none() && (n == 1) == b.all());
            assert_eq!(b.to_vec().iter().filter(|x| **x).count(), 1);
        }
    }
}
