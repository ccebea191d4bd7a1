//! The evaluator: compiles parsed filters into a [`Program`] and runs it over a batch, columnar.
//!
//! In: the [`Filter`]s of one sinker and, per call, a batch of points of one category (through
//! [`Columns`]). Out: one bool per point, true when some group matches.
//!
//! Semantics are DataKit's (`cliutils/filter/eval.go` fed by DataKit's `KVs.Setup`), except for
//! the deliberate differences the README's table lists (marked "ours" below):
//! - a key is the point's tag, else its field, else the injected `category` (the category's
//!   name) or the category's name key (`measurement` for metric, `source` for logging, network,
//!   keyevent, rum, `class` for object, custom_object), else missing;
//! - `=`, `!=` and orderings need the same type on both sides (a string never equals a number);
//!   int, uint and float compare numerically across types (ours; DataKit: never true);
//!   floats are equal within 1e-9 but `!=` compares exactly; strings order bytewise; bools
//!   only `=` / `!=`; `!= nil` is true for any present value;
//! - a missing key is compared as `literal op nil`: `= nil` and `!= 'x'` are true, the rest
//!   false; `in [..]` is true only when the list *starts* with `nil`, `notin` when it holds no
//!   `nil`;
//! - `match` / `= re()`: some regex matches a string value; `notmatch`: none does (ours;
//!   DataKit: some regex does not), an empty list is false for both; `!= re()`: it does not match (ours; DataKit: always true for
//!   a string); a non-string value is false for all four, a missing key true only for `!= re()`;
//! - a literal on the left compares with the right side (`{ 1 = 1 }` is true); a key name on
//!   the right (`a = b`), a dotted name, a function call, `*` or arithmetic never matches, and
//!   neither does `and`/`or` with such an operand;
//! - a top-level `( … )` element evaluates like any other (ours; DataKit: never true);
//! - a filter string that is empty or starts with `;` ends the evaluation there: later groups
//!   never match (DataKit's nil condition).
//!
//! Per [`Program::eval`] call, the host first counts in one pass how many points have each key
//! as a tag and as a field ([`Columns::key_counts`]); then each key a condition uses is fetched
//! at most once: its tag column (dictionary-encoded, so a condition is tested once per distinct
//! tag value) unless no point has the tag, and its field column (flat lists by type) only when
//! some point lacks the tag and some point has the field. Conditions yield bitsets over the batch's points
//! that `and`/`or`/groups combine word by word. Each condition is evaluated only over the points
//! that can still change the answer (those left in its conjunction, not yet matched by an
//! earlier alternative or group): a conjunction stops once no point is left, a disjunction or
//! the list of groups once every point matched.

use std::cmp::Ordering;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;

use crate::parser::{BinOp, Filter, Node, Num, ParseError, RegexLit, node_kind};

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

/// How many points have a key as a tag and as a field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCount {
    pub tags: u32,
    pub fields: u32,
}

/// The values of one type of a field: `mask` has bit `i % 64` of word `i / 64` set for the
/// points with a value of that type, `values[i]` is point `i`'s value there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masked<T> {
    pub mask: Vec<u64>,
    pub values: Vec<T>,
}

/// The values of one field over a batch, by type (the WIT's `typed-column`): a point is in at
/// most one type's mask; one in none lacks the field. A type no point has is `None`. Booleans:
/// `values` is a second bitmap, the points whose value is true.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldColumn {
    pub floats: Option<Masked<f64>>,
    pub ints: Option<Masked<i64>>,
    pub uints: Option<Masked<u64>>,
    pub bools: Option<Masked<u64>>,
    /// Dictionary-encoded, `None` where the point's value is not a string.
    pub strs: Option<StringColumn>,
}

impl FieldColumn {
    /// The column of one value per point (`None`: the point lacks the field), in the host's
    /// shape: what a batch in memory answers.
    pub fn from_values(values: &[Option<Value>]) -> FieldColumn {
        let n = values.len();
        let words = n.div_ceil(64);
        fn masked<T: Clone + Default>(n: usize, words: usize) -> Masked<T> {
            Masked {
                mask: vec![0; words],
                values: vec![T::default(); n],
            }
        }
        let mut c = FieldColumn::default();
        let mut strings: Vec<Option<String>> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            let mut string = None;
            match v {
                None => {}
                Some(Value::Float(f)) => {
                    let m = c.floats.get_or_insert_with(|| masked(n, words));
                    m.mask[w] |= bit;
                    m.values[i] = *f;
                }
                Some(Value::Int(x)) => {
                    let m = c.ints.get_or_insert_with(|| masked(n, words));
                    m.mask[w] |= bit;
                    m.values[i] = *x;
                }
                Some(Value::Uint(x)) => {
                    let m = c.uints.get_or_insert_with(|| masked(n, words));
                    m.mask[w] |= bit;
                    m.values[i] = *x;
                }
                Some(Value::Bool(b)) => {
                    let m = c.bools.get_or_insert_with(|| Masked {
                        mask: vec![0; words],
                        values: vec![0; words],
                    });
                    m.mask[w] |= bit;
                    if *b {
                        m.values[w] |= bit;
                    }
                }
                Some(Value::Str(s)) => string = Some(s.clone()),
            }
            strings.push(string);
        }
        if strings.iter().any(Option::is_some) {
            let mut col = StringColumn::default();
            for v in strings {
                let d = match col.dict.iter().position(|e| *e == v) {
                    Some(d) => d,
                    None => {
                        col.dict.push(v);
                        col.dict.len() - 1
                    }
                };
                col.index.push(d as u32);
            }
            c.strs = Some(col);
        }
        c
    }
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
    /// How many points have each of `keys` as a tag and as a field, in the order of `keys`.
    fn key_counts(&self, keys: &[String]) -> Vec<KeyCount>;
    /// Field `key` of each point, by type.
    fn field_column(&self, key: &str) -> FieldColumn;
}

/// The key DataKit sets to the measurement name in `category` (`KVs.Setup`); a tag or field
/// of that name wins over it.
pub fn injected_key(category: &str) -> Option<&'static str> {
    match category {
        "logging" | "network" | "keyevent" | "rum" | "dialtesting" => Some("source"),
        "metric" => Some("measurement"),
        "object" | "custom_object" => Some("class"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Values and DataKit's binEval

/// Float equality tolerance, as DataKit's.
pub const FLOAT_EPSILON: f64 = 1e-9;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn of(op: BinOp) -> Option<Cmp> {
        Some(match op {
            BinOp::Eq => Cmp::Eq,
            BinOp::Ne => Cmp::Ne,
            BinOp::Lt => Cmp::Lt,
            BinOp::Le => Cmp::Le,
            BinOp::Gt => Cmp::Gt,
            BinOp::Ge => Cmp::Ge,
            _ => return None,
        })
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Cmp::Lt => o == Ordering::Less,
            Cmp::Le => o != Ordering::Greater,
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Ge => o != Ordering::Less,
            Cmp::Eq => o == Ordering::Equal,
            Cmp::Ne => o != Ordering::Equal,
        }
    }
}

/// A literal of a condition.
#[derive(Debug, Clone)]
enum Lit {
    Str(Vec<u8>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Re(Box<Regex>),
}

impl Lit {
    fn v(&self) -> V<'_> {
        match self {
            Lit::Str(s) => V::Str(s),
            Lit::Int(i) => V::Int(*i),
            Lit::Float(f) => V::Float(*f),
            Lit::Bool(b) => V::Bool(*b),
            Lit::Nil => V::Nil,
            Lit::Re(r) => V::Re(r),
        }
    }
}

/// A value as DataKit's `binEval` sees it (a Go `interface{}`).
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    Str(&'a [u8]),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Nil,
    Re(&'a Regex),
}

impl<'a> From<&'a Value> for V<'a> {
    fn from(v: &'a Value) -> V<'a> {
        match v {
            Value::Str(s) => V::Str(s.as_bytes()),
            Value::Int(i) => V::Int(*i),
            Value::Uint(u) => V::Uint(*u),
            Value::Float(f) => V::Float(*f),
            Value::Bool(b) => V::Bool(*b),
        }
    }
}

impl V<'_> {
    /// The Go type, for DataKit's "type conflict" rule.
    fn ty(self) -> u8 {
        match self {
            V::Str(_) => 0,
            V::Int(_) => 1,
            V::Uint(_) => 2,
            V::Float(_) => 3,
            V::Bool(_) => 4,
            V::Nil => 5,
            V::Re(_) => 6,
        }
    }

    fn is_num(self) -> bool {
        matches!(self, V::Int(_) | V::Uint(_) | V::Float(_))
    }
}

/// Go's `==` on two `interface{}` values: same type and same value.
fn go_eq(l: V<'_>, r: V<'_>) -> bool {
    match (l, r) {
        (V::Str(a), V::Str(b)) => a == b,
        (V::Int(a), V::Int(b)) => a == b,
        (V::Uint(a), V::Uint(b)) => a == b,
        (V::Float(a), V::Float(b)) => a == b,
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Nil, V::Nil) => true,
        (V::Re(a), V::Re(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

/// Numbers of different types (ours; DataKit calls this a type conflict: false). Integers
/// compare exactly, a float with either `=` within [`FLOAT_EPSILON`] or exactly for `!=` and
/// orderings, as floats do among themselves.
fn cross_numeric(op: Cmp, l: V<'_>, r: V<'_>) -> bool {
    let int = |v: V<'_>| match v {
        V::Int(i) => Some(i as i128),
        V::Uint(u) => Some(u as i128),
        _ => None,
    };
    let float = |v: V<'_>| match v {
        V::Int(i) => i as f64,
        V::Uint(u) => u as f64,
        V::Float(f) => f,
        _ => f64::NAN,
    };
    if let (Some(a), Some(b)) = (int(l), int(r)) {
        return op.holds(a.cmp(&b));
    }
    let (a, b) = (float(l), float(r));
    match op {
        Cmp::Eq => (a - b).abs() <= FLOAT_EPSILON,
        Cmp::Ne => a != b,
        _ => a.partial_cmp(&b).is_some_and(|o| op.holds(o)),
    }
}

/// DataKit's `binEval(op, lhs, rhs)` for the comparison operators.
fn bin_eval(op: Cmp, l: V<'_>, r: V<'_>) -> bool {
    if let V::Re(re) = r {
        let V::Str(s) = l else {
            return false; // a non-string never matches a regex
        };
        return match op {
            Cmp::Eq => re.is_match(s),
            Cmp::Ne => !re.is_match(s), // ours; DataKit: true (a string is not a regex)
            _ => false,
        };
    }
    if l.is_num() && r.is_num() && l.ty() != r.ty() {
        return cross_numeric(op, l, r);
    }
    if !matches!(r, V::Nil) && l.ty() != r.ty() {
        return false; // type conflict
    }
    match op {
        Cmp::Eq => match (l, r) {
            (V::Float(a), V::Float(b)) => (a - b).abs() <= FLOAT_EPSILON,
            (V::Float(_), _) => false,
            _ => go_eq(l, r),
        },
        // nil != nil is false: go_eq(nil, nil) holds.
        Cmp::Ne => !go_eq(l, r),
        _ => match (l, r) {
            (V::Int(a), V::Int(b)) => op.holds(a.cmp(&b)),
            (V::Str(a), V::Str(b)) => op.holds(a.cmp(b)),
            (V::Float(a), V::Float(b)) => a.partial_cmp(&b).is_some_and(|o| op.holds(o)),
            _ => false,
        },
    }
}

/// A compiled condition on one key's value.
#[derive(Debug)]
enum Pred {
    /// `key op literal`.
    Cmp(Cmp, Lit),
    /// `in` (`negated: false`) / `notin` over the list's literals (key names and `*` in the
    /// list are dropped, as DataKit drops them).
    In { items: Vec<Lit>, negated: bool },
    /// `match` (`negated: false`) / `notmatch`.
    Match { res: Vec<Regex>, negated: bool },
}

impl Pred {
    /// [`Pred::test`] for a field value, with a shortcut for the common case of a float
    /// field compared with a number (no `V` conversion, no type dispatch per point).
    #[cfg(test)]
    fn test_value(&self, v: &Value) -> bool {
        match v {
            Value::Float(a) => self.test_float(*a),
            _ => self.test(Some(V::from(v))),
        }
    }

    /// [`Pred::test`] for a float value.
    #[inline]
    fn test_float(&self, a: f64) -> bool {
        if let Pred::Cmp(op, lit) = self {
            let b = match lit {
                Lit::Float(b) => *b,
                Lit::Int(i) => *i as f64,
                _ => return self.test(Some(V::Float(a))),
            };
            // As bin_eval: a float with a float, or cross_numeric with an int literal (the
            // float side makes it a float comparison there too).
            return match op {
                Cmp::Eq => (a - b).abs() <= FLOAT_EPSILON,
                Cmp::Ne => a != b,
                _ => a.partial_cmp(&b).is_some_and(|o| op.holds(o)),
            };
        }
        self.test(Some(V::Float(a)))
    }

    /// The condition for one point's value (`None`: the key is missing).
    fn test(&self, v: Option<V<'_>>) -> bool {
        match (self, v) {
            (Pred::Cmp(op, lit), Some(v)) => bin_eval(*op, v, lit.v()),
            (Pred::Cmp(op, lit), None) => bin_eval(*op, lit.v(), V::Nil),
            (Pred::In { items, negated }, Some(v)) => {
                items.iter().any(|l| bin_eval(Cmp::Eq, v, l.v())) != *negated
            }
            // DataKit answers `in` for a missing key from the list's first element only.
            (
                Pred::In {
                    items,
                    negated: false,
                },
                None,
            ) => matches!(items.first(), Some(Lit::Nil)),
            (
                Pred::In {
                    items,
                    negated: true,
                },
                None,
            ) => !items.iter().any(|l| matches!(l, Lit::Nil)),
            // An empty list is false for both, as in DataKit.
            (Pred::Match { res, negated }, Some(V::Str(s))) => {
                !res.is_empty() && res.iter().any(|r| r.is_match(s)) != *negated
            }
            (Pred::Match { .. }, _) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Go regexp → Rust regex

/// Rewrites a Go (RE2) regexp so regex-automata reads it the way Go does: `\d \s \w \b` (and
/// their negations) are ASCII-only in Go but Unicode-aware here; `\Q…\E` quotes literally; inside
/// a class, Go takes `[` (outside `[:name:]`), `&&` and `~~` literally where Rust nests or
/// combines classes.
///
/// Go also refuses what Rust takes: a repetition of a repetition (`a**`, `a+?+`, `a{2}*`) and
/// counts above 1000; and reads a `{` that starts no `{n}`, `{n,}`, `{n,m}` as a literal, where
/// Rust refuses it. Those are errors / escaped here.
pub fn go_regex_to_rust(pat: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pat.len() + 8);
    let chars: Vec<char> = pat.chars().collect();
    let mut i = 0;
    // Inside a bracketed class; `class_start` is the index right after `[` / `[^`.
    let mut in_class = false;
    let mut class_start = 0;
    // The previous item was a repetition operator.
    let mut repeated = false;
    while i < chars.len() {
        let c = chars[i];
        let was_repeated = std::mem::replace(&mut repeated, false);
        if !in_class && matches!(c, '*' | '+' | '?' | '{') {
            let len = match c {
                '{' => counted_repeat(&chars[i..])?,
                _ => Some(1),
            };
            match len {
                Some(_) if was_repeated => {
                    return Err("invalid nested repetition operator".into());
                }
                Some(len) => {
                    out.extend(&chars[i..i + len]);
                    i += len;
                    if chars.get(i) == Some(&'?') {
                        out.push('?'); // non-greedy
                        i += 1;
                    }
                    repeated = true;
                }
                None => {
                    out.push_str(r"\{");
                    i += 1;
                }
            }
            continue;
        }
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
                    // `\p{Greek}`, `\x{10FFFF}`: the braces are the escape's, not a repetition.
                    'p' | 'P' | 'x' if chars.get(i) == Some(&'{') => {
                        let len = chars[i..]
                            .iter()
                            .position(|&c| c == '}')
                            .map_or(1, |e| e + 1);
                        out.push('\\');
                        out.push(e);
                        out.extend(&chars[i..i + len]);
                        i += len;
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
    Ok(out)
}

/// The length of a Go counted repetition (`{2}`, `{2,}`, `{2,5}`) at the start of `c`, or
/// `None` when the `{` is a literal there.
fn counted_repeat(c: &[char]) -> Result<Option<usize>, String> {
    let digits = |from: usize| c[from..].iter().take_while(|d| d.is_ascii_digit()).count();
    let n = digits(1);
    if n == 0 {
        return Ok(None);
    }
    let mut end = 1 + n;
    let mut counts = vec![&c[1..end]];
    if c.get(end) == Some(&',') {
        let m = digits(end + 1);
        counts.push(&c[end + 1..end + 1 + m]);
        end += 1 + m;
    }
    if c.get(end) != Some(&'}') {
        return Ok(None);
    }
    for d in counts {
        let v: String = d.iter().collect();
        if !v.is_empty() && v.parse::<u32>().map_or(true, |v| v > 1000) {
            return Err("invalid repeat count".into());
        }
    }
    Ok(Some(end + 1))
}

fn compile_regex(lit: &RegexLit) -> Result<Regex, ParseError> {
    let invalid = |reason: &str| ParseError {
        pos: lit.pos,
        msg: format!(
            "invalid regex {:?}: {reason}",
            String::from_utf8_lossy(&lit.pattern)
        ),
    };
    let pattern = std::str::from_utf8(&lit.pattern).map_err(|_| invalid("not UTF-8"))?;
    let pattern = go_regex_to_rust(pattern).map_err(|e| invalid(&e))?;
    Regex::builder()
        .syntax(syntax::Config::new().octal(true))
        .build(&pattern)
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
            invalid(&reason)
        })
}

// ---------------------------------------------------------------------------------------------
// Program

#[derive(Debug)]
enum CExpr {
    /// Known at compile time: a literal compared with a literal, or a shape DataKit never
    /// evaluates to true.
    Const(bool),
    Leaf {
        key: usize,
        pred: Pred,
    },
    And(Vec<CExpr>),
    Or(Vec<CExpr>),
}

/// Compiled filters: ready to evaluate over batches.
#[derive(Debug)]
pub struct Program {
    /// Each group is a conjunction; the groups are ORed.
    groups: Vec<Vec<CExpr>>,
    /// No filter at all: every point matches (a DataKit sinker without `filters`).
    match_all: bool,
    /// The distinct keys the conditions use; `CExpr::Leaf::key` indexes this.
    keys: Vec<String>,
    filters: usize,
    conditions: usize,
    warnings: Vec<String>,
}

/// Whether DataKit can evaluate `n` as an operand of `and`/`or` (its `Evaluable`).
fn evaluable(n: &Node) -> bool {
    matches!(n, Node::Binary(..) | Node::Paren(_))
}

impl Program {
    /// Compiles parsed filter strings. A regex that does not compile is an error of the filter
    /// (its index in `filters`) at the regex's position.
    pub fn compile(filters: &[Filter]) -> Result<Program, (usize, ParseError)> {
        let mut prog = Program {
            groups: Vec::new(),
            match_all: filters.is_empty(),
            keys: Vec::new(),
            filters: filters.len(),
            conditions: 0,
            warnings: Vec::new(),
        };
        let mut stopped = false;
        for (fi, f) in filters.iter().enumerate() {
            for g in &f.groups {
                for e in &g.elems {
                    check_regexes(e).map_err(|e| (fi, e))?;
                }
            }
            if stopped {
                continue;
            }
            if f.leading_empty {
                stopped = true;
                if fi + 1 < filters.len() || !f.groups.is_empty() {
                    prog.warnings.push(format!(
                        "filter #{} is empty or starts with ';': as in DataKit, no group from \
                         there on is evaluated (remove the empty filter or the leading ';')",
                        fi + 1
                    ));
                }
                continue;
            }
            for g in &f.groups {
                let elems = g.elems.iter().map(|e| prog.compile_bool(e)).collect();
                prog.groups.push(elems);
            }
        }
        Ok(prog)
    }

    /// Warnings for the log: conditions that can never be true, ignored groups.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn never(&mut self, n: &Node, why: &str) -> CExpr {
        self.conditions += 1;
        self.warnings
            .push(format!("{} never matches: {why}", describe_node(n)));
        CExpr::Const(false)
    }

    /// A node in a boolean position: a group element, an operand of `and`/`or`, the inside of
    /// `( … )`.
    fn compile_bool(&mut self, n: &Node) -> CExpr {
        match n {
            Node::Binary(op @ (BinOp::And | BinOp::Or), l, r) => {
                if !evaluable(l) || !evaluable(r) {
                    let bad = if evaluable(l) { r } else { l };
                    return self.never(
                        n,
                        &format!("{} is not a condition (as in DataKit)", node_kind(bad)),
                    );
                }
                let (l, r) = (self.compile_bool(l), self.compile_bool(r));
                if *op == BinOp::And {
                    CExpr::And(vec![l, r])
                } else {
                    CExpr::Or(vec![l, r])
                }
            }
            // Ours for a top-level `( … )` too; DataKit's group accepts only a binary element.
            Node::Paren(inner) if evaluable(inner) => self.compile_bool(inner),
            Node::Binary(op, l, r) => self.compile_single(n, *op, l, r),
            _ => self.never(n, "it is not a condition (as in DataKit)"),
        }
    }

    /// `l op r` for the comparison, `in` and `match` operators (DataKit's `singleEval`).
    fn compile_single(&mut self, n: &Node, op: BinOp, l: &Node, r: &Node) -> CExpr {
        let lit = |n: &Node| -> Option<Lit> {
            Some(match n {
                Node::Str(s) => Lit::Str(s.clone()),
                Node::Num(Num::Int(i)) => Lit::Int(*i),
                Node::Num(Num::Float(f)) => Lit::Float(*f),
                Node::Bool(b) => Lit::Bool(*b),
                Node::Nil => Lit::Nil,
                Node::Regex(re) => Lit::Re(Box::new(compile_regex(re).expect("checked"))),
                _ => return None,
            })
        };
        let pred = match (op, r) {
            (BinOp::In | BinOp::NotIn, Node::List(items)) => Pred::In {
                items: items
                    .iter()
                    .filter(|i| !matches!(i, Node::Regex(_)))
                    .filter_map(lit)
                    .collect(),
                negated: op == BinOp::NotIn,
            },
            (BinOp::Match | BinOp::NotMatch, Node::List(items)) => Pred::Match {
                res: items
                    .iter()
                    .filter_map(|i| match i {
                        Node::Regex(re) => Some(compile_regex(re).expect("checked")),
                        _ => None,
                    })
                    .collect(),
                negated: op == BinOp::NotMatch,
            },
            _ => match (Cmp::of(op), lit(r)) {
                (Some(cmp), Some(lit)) => Pred::Cmp(cmp, lit),
                (None, _) => return self.never(n, "arithmetic is not a condition"),
                (_, None) => {
                    let hint = match r {
                        Node::Ident(k) => format!(
                            " (quote it to compare with the string: '{}')",
                            String::from_utf8_lossy(k)
                        ),
                        _ => String::new(),
                    };
                    return self.never(
                        n,
                        &format!(
                            "its right side is {}, not a value, as in DataKit{hint}",
                            node_kind(r)
                        ),
                    );
                }
            },
        };
        let key = match l {
            Node::Ident(k) => k,
            // A literal on the left: DataKit compares the two literals.
            Node::Str(_) | Node::Num(_) | Node::Bool(_) | Node::Nil => {
                self.conditions += 1;
                let (Pred::Cmp(cmp, r), Some(l)) = (&pred, lit(l)) else {
                    unreachable!("the grammar puts only keys before in/match");
                };
                return CExpr::Const(bin_eval(*cmp, l.v(), r.v()));
            }
            _ => {
                return self.never(
                    n,
                    &format!(
                        "its left side is {}, not a key, as in DataKit",
                        node_kind(l)
                    ),
                );
            }
        };
        self.conditions += 1;
        let Ok(key) = String::from_utf8(key.clone()) else {
            // No point has a key that is not UTF-8: it is missing from every point.
            return CExpr::Const(pred.test(None));
        };
        let key = match self.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        };
        CExpr::Leaf { key, pred }
    }

    /// One line for the log: `2 filters, 3 groups, 5 conditions on 4 keys`.
    pub fn summary(&self) -> String {
        if self.match_all {
            return "no filters: every point matches".into();
        }
        if self.groups.is_empty() {
            return "no group to evaluate: no point matches".into();
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
    /// With no filters at all, every point matches.
    pub fn eval<C: Columns + ?Sized>(&self, batch: &C) -> Vec<bool> {
        let n = batch.len();
        if self.match_all {
            return vec![true; n];
        }
        let category = batch.category();
        let mut ctx = Ctx {
            batch,
            n,
            injected: injected_key(&category),
            category,
            measurements: None,
            counts: None,
            cols: (0..self.keys.len()).map(|_| None).collect(),
            keys: &self.keys,
        };
        let mut result = Bits::zeros(n);
        let everything = Bits::ones(n);
        for g in &self.groups {
            // Only the points no group matched yet.
            let rest = everything.and_not(&result);
            if rest.none() {
                break;
            }
            let m = ctx.conj(g, &rest);
            result.or(&m);
        }
        result.to_vec()
    }
}

/// Compiles every regex of `n`, for the error.
fn check_regexes(n: &Node) -> Result<(), ParseError> {
    match n {
        Node::Regex(re) => compile_regex(re).map(|_| ()),
        Node::Paren(x) => check_regexes(x),
        Node::Binary(_, l, r) => check_regexes(l).and_then(|()| check_regexes(r)),
        Node::List(items) => items.iter().try_for_each(check_regexes),
        _ => Ok(()),
    }
}

/// A short rendering of a condition, for warnings.
fn describe_node(n: &Node) -> String {
    match n {
        Node::Binary(op, l, r) => format!("condition `{} {} {}`", short(l), op.as_str(), short(r)),
        _ => format!("element {}", node_kind(n)),
    }
}

fn short(n: &Node) -> String {
    match n {
        Node::Ident(k) => String::from_utf8_lossy(k).into_owned(),
        Node::Str(s) => format!("'{}'", String::from_utf8_lossy(s)),
        Node::Num(Num::Int(i)) => i.to_string(),
        Node::Num(Num::Float(f)) => f.to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Nil => "nil".into(),
        Node::Paren(_) => "(…)".into(),
        Node::Binary(..) => "…".into(),
        Node::List(_) => "[…]".into(),
        Node::Regex(_) => "re(…)".into(),
        Node::Opaque(w) => format!("<{w}>"),
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

    #[cfg(test)]
    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// The points of `self` that are not in `o`.
    fn and_not(&self, o: &Bits) -> Bits {
        Bits {
            words: self
                .words
                .iter()
                .zip(&o.words)
                .map(|(a, b)| a & !b)
                .collect(),
            n: self.n,
        }
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

    #[cfg(test)]
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
struct KeyCol {
    /// `None` when no point has the key as a tag.
    tags: Option<StringColumn>,
    /// Fetched when some point lacks the tag; `None` also when no point has the field.
    fields: Option<FieldColumn>,
    /// What a point with neither tag nor field has under this key.
    fallback: Fallback,
}

/// DataKit's injected keys, looked up after the point's own.
#[derive(Clone, Copy, PartialEq)]
enum Fallback {
    Missing,
    /// `category`: the category's name.
    Category,
    /// The category's name key (`measurement`, `source`, `class`): the measurement.
    Measurement,
}

/// Most keys the host counts per `key-counts` call (the WIT's limit).
pub const MAX_COUNTED_KEYS: usize = 64;

struct Ctx<'a, C: Columns + ?Sized> {
    batch: &'a C,
    n: usize,
    category: String,
    injected: Option<&'static str>,
    measurements: Option<StringColumn>,
    /// How many points have each key as a tag and as a field, asked for all keys at the first
    /// fetch (one pass over the batch on the host's side).
    counts: Option<Vec<KeyCount>>,
    cols: Vec<Option<KeyCol>>,
    keys: &'a [String],
}

/// The set bits of `word`, as bit positions.
fn bits_of(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let bit = word.trailing_zeros() as usize;
            word &= word - 1;
            bit
        })
    })
}

/// Calls `f(bit, hits[index[base + bit]])` for the points `base..min(base + 64, n)`: a point's
/// entry in per-dictionary-entry answers (2, absent, where the host sent a short index or an
/// entry past the dictionary).
#[inline(always)]
fn each_entry(index: &[u32], hits: &[u8], base: usize, n: usize, mut f: impl FnMut(usize, u8)) {
    let end = (base + 64).min(n);
    if end <= index.len() {
        for (bit, &d) in index[base..end].iter().enumerate() {
            f(bit, hits.get(d as usize).copied().unwrap_or(2));
        }
    } else {
        for i in base..end {
            let h = index
                .get(i)
                .and_then(|&d| hits.get(d as usize))
                .copied()
                .unwrap_or(2);
            f(i - base, h);
        }
    }
}

/// The points of word `w` of `rest_word` that `mask` has (returned), each tested with
/// `test(point)` and set in `hit` when true.
#[inline(always)]
fn by_type(
    mask: &[u64],
    w: usize,
    rest_word: u64,
    hit: &mut u64,
    test: impl Fn(usize) -> bool,
) -> u64 {
    let have = mask.get(w).copied().unwrap_or(0) & rest_word;
    for bit in bits_of(have) {
        if test(w * 64 + bit) {
            *hit |= 1 << bit;
        }
    }
    have
}

impl<C: Columns + ?Sized> Ctx<'_, C> {
    /// The points of `care` for which every element of `elems` holds. Each element is
    /// evaluated only over the points still left, so a clause after a selective one costs
    /// little (the columns are still fetched whole: the batch API has no subsets).
    fn conj(&mut self, elems: &[CExpr], care: &Bits) -> Bits {
        let mut acc = care.clone();
        for e in elems {
            if acc.none() {
                break;
            }
            acc = self.expr(e, &acc);
        }
        acc
    }

    /// The points of `care` for which `e` holds (never a point outside `care`).
    fn expr(&mut self, e: &CExpr, care: &Bits) -> Bits {
        match e {
            CExpr::Const(true) => care.clone(),
            CExpr::Const(false) => Bits::zeros(self.n),
            CExpr::Leaf { key, pred } => self.leaf(*key, pred, care),
            CExpr::And(v) => self.conj(v, care),
            CExpr::Or(v) => {
                let mut acc = Bits::zeros(self.n);
                for e in v {
                    // Only the points not matched yet.
                    let rest = care.and_not(&acc);
                    if rest.none() {
                        break;
                    }
                    acc.or(&self.expr(e, &rest));
                }
                acc
            }
        }
    }

    /// How many points have key `k` as a tag and as a field (`None`: the host did not say).
    fn count(&mut self, k: usize) -> Option<KeyCount> {
        let keys = self.keys;
        let batch = self.batch;
        let counts = self.counts.get_or_insert_with(|| {
            keys.chunks(MAX_COUNTED_KEYS)
                .flat_map(|chunk| {
                    let mut got = batch.key_counts(chunk);
                    got.truncate(chunk.len());
                    got
                })
                .collect()
        });
        counts.get(k).copied()
    }

    /// Fetches key `k`'s columns if not yet done in this batch.
    fn fetch(&mut self, k: usize) {
        if self.cols[k].is_some() {
            return;
        }
        let count = self.count(k);
        let key = self.keys[k].as_str();
        let tags = match count {
            Some(c) if c.tags == 0 => None,
            _ => Some(self.batch.tag_column(key)),
        };
        // Only when some point lacks the tag and some point has the field.
        let some_lack_tag = tags
            .as_ref()
            .is_none_or(|t| t.dict.iter().any(Option::is_none));
        let fields = (some_lack_tag && count.is_none_or(|c| c.fields > 0))
            .then(|| self.batch.field_column(key))
            .filter(|f| {
                f.floats.is_some()
                    || f.ints.is_some()
                    || f.uints.is_some()
                    || f.bools.is_some()
                    || f.strs.is_some()
            });
        let fallback = if key == "category" {
            Fallback::Category
        } else if self.injected == Some(key) {
            Fallback::Measurement
        } else {
            Fallback::Missing
        };
        if fallback == Fallback::Measurement && self.measurements.is_none() {
            self.measurements = Some(self.batch.measurements());
        }
        self.cols[k] = Some(KeyCol {
            tags,
            fields,
            fallback,
        });
    }

    /// The points of `care` for which condition `pred` on key `k` holds.
    fn leaf(&mut self, k: usize, pred: &Pred, care: &Bits) -> Bits {
        self.fetch(k);
        let n = self.n;
        let col = self.cols[k].as_ref().expect("fetched");
        // Once per distinct value: 1 = true, 0 = false, 2 = absent (look further).
        let per_entry = |dict: &[Option<String>]| -> Vec<u8> {
            dict.iter()
                .map(|e| match e {
                    Some(s) => pred.test(Some(V::Str(s.as_bytes()))) as u8,
                    None => 2,
                })
                .collect()
        };
        let mut out = Bits::zeros(n);
        // First the tags, 64 points at a time; `rest` marks the points without the tag.
        let rest = match &col.tags {
            None => care.clone(),
            Some(tags) => {
                let tag_hits = per_entry(&tags.dict);
                let mut rest = Bits::zeros(n);
                for (w, (word, rest_word)) in out.words.iter_mut().zip(&mut rest.words).enumerate()
                {
                    let care = care.words[w];
                    if care == 0 {
                        continue;
                    }
                    let (mut hit, mut absent) = (0u64, 0u64);
                    each_entry(&tags.index, &tag_hits, w * 64, n, |bit, h| {
                        hit |= ((h == 1) as u64) << bit;
                        absent |= ((h == 2) as u64) << bit;
                    });
                    *word = hit & care;
                    *rest_word = absent & care;
                }
                rest
            }
        };
        if rest.none() {
            return out;
        }
        // Then, for the points without the tag: the field, else the injected key.
        let absent = match col.fallback {
            Fallback::Missing => pred.test(None),
            Fallback::Category => pred.test(Some(V::Str(self.category.as_bytes()))),
            Fallback::Measurement => false, // per point, below
        };
        let measurement_hits = match (col.fallback, &self.measurements) {
            (Fallback::Measurement, Some(m)) => Some((per_entry(&m.dict), m)),
            _ => None,
        };
        // The points of word `w` in `absent_word` (no tag, no field): the injected key.
        let fall_back = |out: &mut Bits, w: usize, absent_word: u64| {
            if absent_word == 0 {
                return;
            }
            match &measurement_hits {
                Some((hits, m)) => {
                    let mut hit = 0u64;
                    each_entry(&m.index, hits, w * 64, n, |bit, h| {
                        hit |= ((h == 1) as u64) << bit;
                    });
                    out.words[w] |= hit & absent_word;
                }
                None if absent => out.words[w] |= absent_word,
                None => {}
            }
        };
        let Some(fields) = &col.fields else {
            // No point has the key as a field: the injected key or `absent` for all of them.
            for (w, &rest_word) in rest.words.iter().enumerate() {
                fall_back(&mut out, w, rest_word);
            }
            return out;
        };
        let str_hits = fields.strs.as_ref().map(|c| (per_entry(&c.dict), c));
        for (w, &rest_word) in rest.words.iter().enumerate() {
            if rest_word == 0 {
                continue;
            }
            let mut hit = 0u64;
            let mut seen = 0u64;
            if let Some(f) = &fields.floats {
                seen |= by_type(&f.mask, w, rest_word, &mut hit, |i| {
                    f.values.get(i).is_some_and(|v| pred.test_float(*v))
                });
            }
            if let Some(f) = &fields.ints {
                seen |= by_type(&f.mask, w, rest_word, &mut hit, |i| {
                    f.values.get(i).is_some_and(|v| pred.test(Some(V::Int(*v))))
                });
            }
            if let Some(f) = &fields.uints {
                seen |= by_type(&f.mask, w, rest_word, &mut hit, |i| {
                    f.values
                        .get(i)
                        .is_some_and(|v| pred.test(Some(V::Uint(*v))))
                });
            }
            if let Some(f) = &fields.bools {
                let trues = f.values.get(w).copied().unwrap_or(0);
                seen |= by_type(&f.mask, w, rest_word, &mut hit, |i| {
                    pred.test(Some(V::Bool(trues >> (i % 64) & 1 == 1)))
                });
            }
            if let Some((hits, c)) = &str_hits {
                let (mut h, mut is_str) = (0u64, 0u64);
                each_entry(&c.index, hits, w * 64, n, |bit, e| {
                    h |= ((e == 1) as u64) << bit;
                    is_str |= ((e != 2) as u64) << bit;
                });
                hit |= h & rest_word;
                seen |= is_str & rest_word;
            }
            out.words[w] |= hit;
            fall_back(&mut out, w, rest_word & !seen);
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
            assert_eq!(go_regex_to_rust(go).unwrap(), *rust, "{go}");
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

    /// The float shortcut of `test_value` answers as the general `test` does.
    #[test]
    fn float_shortcut_agrees_with_bin_eval() {
        let ops = [Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge];
        let lits = || {
            vec![
                Lit::Int(90),
                Lit::Int(-3),
                Lit::Int(i64::MAX),
                Lit::Float(90.0),
                Lit::Float(0.1 + 0.2),
                Lit::Float(-0.0),
                Lit::Float(f64::NAN),
                Lit::Float(f64::INFINITY),
                Lit::Str(b"90".to_vec()),
                Lit::Bool(true),
                Lit::Nil,
            ]
        };
        let values = [
            90.0,
            90.0 + 1e-10,
            90.0 - 1e-8,
            89.9,
            90.1,
            0.3,
            0.0,
            -0.0,
            -3.0,
            9.223372036854776e18,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for op in ops {
            for lit in lits() {
                let pred = Pred::Cmp(op, lit);
                for v in values {
                    let slow = pred.test(Some(V::Float(v)));
                    assert_eq!(pred.test_value(&Value::Float(v)), slow, "{pred:?} {v}");
                }
            }
        }
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
