//! Table-driven tests of the filter semantics, over an in-memory batch.

use std::cell::RefCell;
use std::collections::HashMap;

use datakit_filter::{
    Columns, FieldColumn, KeyCount, MAX_COUNTED_KEYS, Masked, Program, StringColumn, Value,
    compile_config,
};

#[derive(Clone, Debug)]
struct Point {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Value)>,
}

fn pt(measurement: &str, tags: &[(&str, &str)], fields: &[(&str, Value)]) -> Point {
    Point {
        measurement: measurement.into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// An in-memory batch that records which columns the evaluator asks for.
struct MemBatch {
    category: String,
    points: Vec<Point>,
    calls: RefCell<Vec<String>>,
}

impl MemBatch {
    fn new(category: &str, points: Vec<Point>) -> MemBatch {
        MemBatch {
            category: category.into(),
            points,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

fn encode<'a>(values: impl Iterator<Item = Option<&'a str>>) -> StringColumn {
    let mut col = StringColumn::default();
    let mut seen: HashMap<Option<&str>, u32> = HashMap::new();
    for v in values {
        let next = col.dict.len() as u32;
        let i = *seen.entry(v).or_insert_with(|| {
            col.dict.push(v.map(str::to_string));
            next
        });
        col.index.push(i);
    }
    col
}

impl Columns for MemBatch {
    fn len(&self) -> usize {
        self.points.len()
    }

    fn category(&self) -> String {
        self.calls.borrow_mut().push("category".into());
        self.category.clone()
    }

    fn measurements(&self) -> StringColumn {
        self.calls.borrow_mut().push("measurements".into());
        encode(self.points.iter().map(|p| Some(p.measurement.as_str())))
    }

    fn tag_column(&self, key: &str) -> StringColumn {
        self.calls.borrow_mut().push(format!("tag:{key}"));
        encode(self.points.iter().map(|p| {
            p.tags
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }))
    }

    fn key_counts(&self, keys: &[String]) -> Vec<KeyCount> {
        assert!(keys.len() <= MAX_COUNTED_KEYS, "{} keys", keys.len());
        self.calls
            .borrow_mut()
            .push(format!("counts:{}", keys.join(",")));
        let count = |has: &dyn Fn(&Point) -> bool| self.points.iter().filter(|p| has(p)).count();
        keys.iter()
            .map(|key| KeyCount {
                tags: count(&|p| p.tags.iter().any(|(k, _)| k == key)) as u32,
                fields: count(&|p| p.fields.iter().any(|(k, _)| k == key)) as u32,
            })
            .collect()
    }

    fn field_column(&self, key: &str) -> FieldColumn {
        self.calls.borrow_mut().push(format!("field:{key}"));
        let values: Vec<Option<Value>> = self
            .points
            .iter()
            .map(|p| {
                p.fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            })
            .collect();
        FieldColumn::from_values(&values)
    }
}

fn program(cfg: &str) -> Program {
    compile_config(cfg).unwrap_or_else(|e| panic!("{cfg}: {e}"))
}

fn matches_one(cfg: &str, category: &str, p: &Point) -> bool {
    let out = program(cfg).eval(&MemBatch::new(category, vec![p.clone()]));
    assert_eq!(out.len(), 1);
    out[0]
}

/// The point most tables test against.
fn fixture() -> Point {
    use Value::*;
    pt(
        "cpu",
        &[
            ("host", "web-1"),
            ("region", "eu"),
            ("empty", ""),
            ("code", "500"),
            ("source", "tagsrc"),
            ("measurement", "tagmeas"),
            ("class", "tagclass"),
            ("city", "北京"),
        ],
        &[
            ("i", Int(10)),
            ("u", Uint(20)),
            ("f", Float(1.5)),
            ("fi", Float(10.0)),
            ("b", Bool(true)),
            ("s", Str("hello world".into())),
            ("neg", Int(-5)),
            ("big", Uint(u64::MAX)),
            ("host", Str("field-host".into())),
            ("fonly", Str("x".into())),
            ("nan", Float(f64::NAN)),
        ],
    )
}

fn run_table(category: &str, p: &Point, cases: &[(&str, bool)]) {
    let mut failures = Vec::new();
    for (cond, want) in cases {
        let cfg = if cond.starts_with(['{', '[', '#']) {
            cond.to_string()
        } else {
            format!("{{ {cond} }}")
        };
        let got = matches_one(&cfg, category, p);
        if got != *want {
            failures.push(format!("{cfg}: got {got}, want {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn equality() {
    run_table(
        "metric",
        &fixture(),
        &[
            // Tags are strings.
            ("host = 'web-1'", true),
            ("host = \"web-1\"", true),
            ("host = 'web-2'", false),
            ("host = 'WEB-1'", false),
            ("host = 'web-'", false),
            ("empty = ''", true),
            ("city = '北京'", true),
            ("city = '\\u5317\\u4eac'", true),
            ("code = '500'", true),
            ("code = 500", false),
            ("code = 500.0", false),
            ("code = true", false),
            // Int field.
            ("i = 10", true),
            ("i = 11", false),
            ("i = 10.0", true),
            ("i = 10.0000000001", true),
            ("i = 10.1", false),
            ("i = '10'", false),
            ("i = true", false),
            ("neg = -5", true),
            ("neg = 5", false),
            // Uint field.
            ("u = 20", true),
            ("u = 20.0", true),
            ("u = 21", false),
            ("big = 18446744073709551615", true),
            ("big = -1", false),
            // Float field: epsilon 1e-9.
            ("f = 1.5", true),
            ("f = 1.5000000001", true),
            ("f = 1.499999999999", true),
            ("f = 1.500001", false),
            ("f = 1", false),
            ("f = 2", false),
            ("fi = 10", true),
            ("f = '1.5'", false),
            ("nan = nan", false),
            // Bool field.
            ("b = true", true),
            ("b = TRUE", true),
            ("b = false", false),
            ("b = 'true'", false),
            ("b = 1", false),
            // String field.
            ("s = 'hello world'", true),
            ("s = 'hello'", false),
            ("fonly = 'x'", true),
            // A tag shadows a field of the same name.
            ("host = 'field-host'", false),
            // Missing key.
            ("missing = 'x'", false),
            ("missing = 0", false),
            ("missing = false", false),
            ("`host` = 'web-1'", true),
        ],
    );
}

#[test]
fn inequality() {
    run_table(
        "metric",
        &fixture(),
        &[
            ("host != 'web-2'", true),
            ("host != 'web-1'", false),
            ("empty != ''", false),
            ("code != 500", false), // type mismatch is false
            ("code != '501'", true),
            ("i != 11", true),
            ("i != 10", false),
            ("i != 10.0", false),
            ("i != 'x'", false),
            ("u != 1", true),
            ("f != 2.5", true),
            ("f != 1.5000000001", true), // `=` has an epsilon, `!=` none (DataKit)
            ("b != false", true),
            ("b != true", false),
            ("b != 0", false),
            ("s != 'x'", true),
            ("s != 'hello world'", false),
            ("missing != 'x'", true), // a missing key is nil: it differs from any value
            ("missing != 0", true),
        ],
    );
}

#[test]
fn ordering() {
    run_table(
        "metric",
        &fixture(),
        &[
            // Strings order bytewise.
            ("host > 'web-0'", true),
            ("host > 'web-1'", false),
            ("host >= 'web-1'", true),
            ("host < 'web-2'", true),
            ("host <= 'web-1'", true),
            ("host <= 'web-0'", false),
            ("host < 'web-1a'", true),
            ("s > 'Hello world'", true),
            ("s < 'Hello world'", false),
            ("empty < 'a'", true),
            ("code > 100", false), // tag string vs int: mismatch
            ("code > '100'", true),
            ("code > '1000'", true), // lexical
            // Ints.
            ("i > 5", true),
            ("i > 10", false),
            ("i >= 10", true),
            ("i < 10", false),
            ("i <= 10", true),
            ("i < 11", true),
            ("i > -100", true),
            ("i > 9.5", true),
            ("i < 10.5", true),
            ("i >= 10.0", true),
            ("i > '5'", false),
            ("neg < 0", true),
            ("neg > -6", true),
            ("neg >= -5", true),
            // Uints, compared exactly against int literals.
            ("u > 19", true),
            ("u < -1", false),
            ("u <= 20", true),
            ("big > 9223372036854775807", true),
            ("big < 0", false),
            // Floats.
            ("f > 1", true),
            ("f >= 1.5", true),
            ("f > 1.5", false),
            ("f < 1.5", false),
            ("f <= 1.4", false),
            ("f < 2", true),
            ("f > -inf", true),
            ("f < inf", true),
            ("nan > 0", false),
            ("nan < 0", false),
            ("nan >= 0", false),
            // Bools cannot be ordered.
            ("b > false", false),
            ("b >= true", false),
            ("b <= true", false),
            ("b < true", false),
            // Missing key.
            ("missing > 0", false),
            ("missing < 0", false),
            ("missing >= ''", false),
            ("missing <= 'z'", false),
        ],
    );
}

#[test]
fn nil() {
    run_table(
        "metric",
        &fixture(),
        &[
            ("missing = nil", true),
            ("missing = null", true),
            ("missing = NIL", true),
            ("host = nil", false),
            ("i = nil", false),
            ("empty = nil", false),
            ("missing != nil", false),
            ("host != nil", true),
            ("i != null", true),
            ("b != nil", true),
            ("host > nil", false),
            ("missing > nil", false),
            ("missing <= nil", false),
        ],
    );
}

#[test]
fn in_and_notin() {
    run_table(
        "metric",
        &fixture(),
        &[
            ("host in ['web-1', 'web-2']", true),
            ("host IN ['web-2', 'web-3']", false),
            ("host in []", false),
            ("host in ['WEB-1']", false),
            ("code in [500]", false),
            ("code in [500, '500']", true),
            ("i in [1, 10]", true),
            ("i in [10.0]", true),
            ("i in ['10']", false),
            ("u in [20]", true),
            ("f in [1.5, 2]", true),
            ("f in [1]", false),
            ("b in [true]", true),
            ("b in [false, 'true']", false),
            ("s in ['hello']", false),
            ("s in ['hello world']", true),
            ("missing in ['x']", false),
            ("missing in []", false),
            ("missing in [nil]", true),
            ("missing in ['x', null]", false), // DataKit looks at the first element only
            ("missing in [null, 'x']", true),
            ("host in [nil]", false),
            ("host in [nil, 'web-1']", true),
            ("host notin ['web-2']", true),
            ("host NOTIN ['web-1', 'web-2']", false),
            ("host not_in []", true),
            ("host NOT_IN ['web-1']", false),
            ("code notin [500]", true), // no element equals (type mismatch)
            ("code notin ['500']", false),
            ("i notin [10]", false),
            ("i notin [11, 12]", true),
            ("i notin [10.0]", false),
            ("b notin [false]", true),
            ("b notin [true]", false),
            ("missing notin ['x']", true), // a missing key is in no list
            ("missing notin []", true),
            ("missing notin [nil]", false),
            ("host notin [nil]", true),
        ],
    );
}

#[test]
fn regexes() {
    run_table(
        "metric",
        &fixture(),
        &[
            ("host match ['^web-']", true),
            ("host match ['web']", true), // unanchored
            ("host match ['^eb']", false),
            ("host match ['^db', '1$']", true),
            ("host match []", false),
            ("host MATCH ['(?i)^WEB']", true),
            ("host match ['^WEB']", false),
            ("code match ['^\\\\d+$']", true),
            ("code match ['^[0-9]{3}$']", true),
            ("city match ['^北']", true),
            ("city match ['^\\\\w+$']", false), // \w is ASCII, as in Go
            ("city match ['^\\\\pL+$']", true),
            ("empty match ['^$']", true),
            ("s match ['o w']", true),
            ("s match ['^hello$']", false),
            ("fonly match ['x']", true),
            ("i match ['1']", false), // non-string
            ("b match ['true']", false),
            ("missing match ['.*']", false),
            ("host notmatch ['^db-']", true),
            ("host notmatch ['^web-']", false),
            ("host NOTMATCH ['^db', '^web']", false), // none may match
            ("host notmatch ['^db', '^x']", true),
            ("host notmatch []", false), // an empty list is false, as in DataKit
            ("host match []", false),
            ("s notmatch ['^bye']", true),
            ("i notmatch ['x']", false),       // non-string
            ("missing notmatch ['x']", false), // a missing key makes it false
            ("host = re('^web')", true),
            ("host = re(\"-1$\")", true),
            ("host = re('^db')", false),
            ("host = RE('.')", true),
            ("host != re('^db')", true),
            ("host != re('^web')", false),
            ("s = re('world$')", true),
            ("i = re('1')", false),
            ("i != re('1')", false),
            ("missing = re('.*')", false),
            ("missing != re('x')", true),
        ],
    );
}

#[test]
fn logic_and_structure() {
    run_table(
        "metric",
        &fixture(),
        &[
            ("host = 'web-1' and i = 10", true),
            ("host = 'web-1' AND i = 11", false),
            ("host = 'web-1' && i = 10", true),
            ("host = 'x' or i = 10", true),
            ("host = 'x' OR i = 11", false),
            ("host = 'x' || i = 10", true),
            // and binds tighter than or.
            ("host = 'x' and i = 11 or b = true", true),
            ("b = true or host = 'x' and i = 11", true),
            ("host = 'x' and (i = 11 or b = true)", false),
            ("(b = true or host = 'x') and i = 11", false),
            ("((host = 'web-1'))", true),
            ("(host = 'x' || (i > 5 && b = true)) && s != 'y'", true),
            // Commas are AND.
            ("host = 'web-1', i = 10", true),
            ("host = 'web-1', i = 11", false),
            ("host = 'x' or i = 10, b = true", true),
            ("host = 'x' or i = 10, b = false", false),
            ("b = true, host = 'x' or i = 11", false),
            // Groups are ORed; an empty group matches every point.
            (r#"["{}"]"#, true),
            ("{};", true),
            ("{ host = 'x' }; { i = 10 }", true),
            ("{ host = 'x' }; { i = 11 }", false),
            ("{ host = 'x' };;{};", true),
            // Comments and layout.
            (
                "# which hosts\n{ host = 'web-1' # the first\n, i = 10 }",
                true,
            ),
            ("{\n  host = 'x'\n  # or = 'y'\n}", false),
            // Several filter strings in a JSON list, or an object.
            (r#"["{ host = 'x' }", "{ i = 10 }"]"#, true),
            (r#"["{ host = 'x' }", "{ i = 11 }"]"#, false),
            (
                r#"{"filters": ["{ host = 'x' }", "{ host = 'web-1' }"]}"#,
                true,
            ),
            (r#"{"filters": ["{ host = 'x' }"]}"#, false),
            // No filters at all: every point matches.
            ("[]", true),
            (r#"{"filters": []}"#, true),
            // An empty filter string ends DataKit's evaluation: nothing after it matches.
            (r#"["{ host = 'web-1' }", ""]"#, true),
            (r#"["", "{ host = 'web-1' }"]"#, false),
            (
                r##"["{ host = 'x' }", "# c", "{ host = 'web-1' }"]"##,
                false,
            ),
            (r#"["; { host = 'web-1' }"]"#, false),
            (r#"[""]"#, false),
            ("{ , }", true),
            ("{ host = 'web-1', }", true),
        ],
    );
}

/// What DataKit's grammar accepts beyond `key op value`, and what DataKit answers for it.
#[test]
fn literals_and_shapes_datakit_parses() {
    run_table(
        "metric",
        &fixture(),
        &[
            // A literal on the left compares the two literals.
            ("1 = 1", true),
            ("1 < 2", true),
            ("'a' = 'a'", true),
            ("'a' < 'b'", true),
            ("nil = nil", true),
            ("nil != nil", false),
            ("true = true", true),
            ("1 = 'a'", false),
            ("1 != nil", true),
            ("nil != 1", false), // DataKit: a type conflict, not "different"
            ("'a' = re('^a')", true),
            ("inf = inf", false), // float `=` is |a-b| <= 1e-9: NaN for two infinities
            ("nan != nan", true),
            // A key on the right, calls, dotted names, `*`, arithmetic: never true.
            ("host = host", false),
            ("host != web", false),
            ("host = f(x)", false),
            ("f(host) = 'web-1'", false),
            ("a.b = 1", false),
            ("* = 1", false),
            ("i = 5 + 5", false),
            ("host = 'web-1' and i = 5 + 5", false),
            // `and`/`or` with a bare operand: false as a whole, even an `or` whose other side holds.
            ("host or host = 'web-1'", false),
            ("host = 'web-1' and 1", false),
            // A ( … ) operand is evaluable: `(host)` is false, the `or` goes on.
            ("(host) or host = 'web-1'", true),
            ("host = 'web-1' or f(x)", false),
            // Keys and `*` in an `in` list are dropped.
            ("host in [web, 'web-1']", true),
            ("host in [*]", false),
            ("missing in [a, nil]", true), // `a` dropped: the list starts with nil
            ("missing notin [*]", true),
            // `<` with a regex parses, never true.
            ("host < re('.*')", false),
            ("missing < re('.*')", false),
            // The table: a top-level ( … ) evaluates here (DataKit: never).
            ("(host = 'web-1')", true),
            ("((host = 'web-1'))", true),
            // Back-quoted and identifier('…') keys.
            ("`host` = 'web-1'", true),
            ("identifier('host') = 'web-1'", true),
            ("IDENTIFIER(\"h\\x6fst\") = 'web-1'", true),
            // Numbers as Go reads them: 012 is octal 10.
            ("i = 012", true),
            ("i = 0xa", true),
        ],
    );
    let p = program(r#"["{ host = web }", "{ f(x) = 1 or host = 'a' }"]"#);
    assert_eq!(
        p.warnings(),
        [
            "condition `host = web` never matches: its right side is key 'web', not a value, as \
             in DataKit (quote it to compare with the string: 'web')",
            "condition `<a function call> = 1` never matches: its left side is a function call, \
             not a key, as in DataKit",
        ]
    );
}

#[test]
fn injected_keys_per_category() {
    let p = pt(
        "nginx",
        &[
            ("source", "tagsrc"),
            ("measurement", "tagmeas"),
            ("class", "tagclass"),
            ("service", "svc"),
        ],
        &[("source", Value::Str("fieldsrc".into()))],
    );
    let bare = pt("nginx", &[], &[]);
    let source = ["logging", "network", "keyevent", "rum"];
    let class = ["object", "custom_object"];
    let none = ["tracing", "security", "profiling"];
    let all = source
        .iter()
        .chain(&class)
        .chain(&["metric"])
        .chain(&none)
        .copied()
        .collect::<Vec<_>>();
    for cat in all {
        let (src, meas, cls) = (source.contains(&cat), cat == "metric", class.contains(&cat));
        // The point's own tags come first (DataKit's KVs.Get): the injected keys are not seen.
        let cases: Vec<(String, bool)> = vec![
            ("source = 'nginx'".into(), false),
            ("source = 'tagsrc'".into(), true),
            ("source in ['nginx']".into(), false),
            ("source match ['^tag']".into(), true),
            ("source notin ['nginx']".into(), true),
            ("measurement = 'nginx'".into(), false),
            ("measurement = 'tagmeas'".into(), true),
            ("class = 'nginx'".into(), false),
            ("class = 'tagclass'".into(), true),
            ("service = 'svc'".into(), true),
            (format!("category = '{cat}'"), true),
            ("category = 'x'".into(), false),
        ];
        for (c, want) in &cases {
            assert_eq!(
                matches_one(&format!("{{ {c} }}"), cat, &p),
                *want,
                "{cat}: {c}"
            );
        }
        // Without tags, the injected keys answer; other keys are missing.
        let cases: Vec<(String, bool)> = vec![
            ("source = 'nginx'".into(), src),
            ("measurement = 'nginx'".into(), meas),
            ("class = 'nginx'".into(), cls),
            ("source notin ['x']".into(), true),
            ("source = nil".into(), !src),
            (format!("category = '{cat}'"), true),
            ("category != nil".into(), true),
        ];
        for (c, want) in &cases {
            assert_eq!(
                matches_one(&format!("{{ {c} }}"), cat, &bare),
                *want,
                "{cat} bare: {c}"
            );
        }
    }
    // A tag named `category` wins over the injected one.
    let tagged = pt("nginx", &[("category", "mine")], &[]);
    assert!(matches_one("{ category = 'mine' }", "metric", &tagged));
    assert!(!matches_one("{ category = 'metric' }", "metric", &tagged));
}

/// A deterministic mix of points: tags present or not, keys as tags in some points and fields
/// in others, all value types.
fn mixed_points(n: usize) -> Vec<Point> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    (0..n)
        .map(|_| {
            let mut tags = Vec::new();
            let mut fields = Vec::new();
            let meas = ["cpu", "mem", "disk"][rnd(3) as usize].to_string();
            if rnd(5) > 0 {
                tags.push(("host".to_string(), format!("web-{}", rnd(4))));
            }
            match rnd(4) {
                0 => tags.push(("usage".to_string(), format!("{}", rnd(100)))),
                1 => fields.push(("usage".to_string(), Value::Float(rnd(1000) as f64 / 10.0))),
                2 => fields.push(("usage".to_string(), Value::Int(rnd(100) as i64))),
                _ => {}
            }
            if rnd(2) == 0 {
                fields.push(("ok".to_string(), Value::Bool(rnd(2) == 0)));
            }
            if rnd(3) == 0 {
                fields.push(("msg".to_string(), Value::Str(format!("error {}", rnd(10)))));
            }
            if rnd(4) == 0 {
                tags.push(("measurement".to_string(), "shadowed".to_string()));
            }
            Point {
                measurement: meas,
                tags,
                fields,
            }
        })
        .collect()
}

#[test]
fn batch_equals_point_by_point() {
    let points = mixed_points(777);
    let filters = [
        "{ measurement = 'cpu' and host in ['web-1', 'web-2'] and usage > 50 }",
        "{ host = nil or usage = nil }",
        "{ usage >= 50.5, ok = true }; { msg match ['error [0-4]'] }",
        "{ host notin ['web-0'] and (msg notmatch ['3$'] or usage < 10) }",
        "{ measurement != 'disk' && usage != '42' }",
        "{ usage in [10, 20.0, '30', nil] }",
        // True for a missing key: points without the field must fall back, whatever type
        // the field has in the others.
        "{ msg != 'error 3' }",
        "{ ok != true and usage != 42 }",
        "{};",
    ];
    for cat in ["metric", "logging", "tracing"] {
        for f in filters {
            let prog = program(f);
            let batch = prog.eval(&MemBatch::new(cat, points.clone()));
            assert_eq!(batch.len(), points.len());
            for (i, p) in points.iter().enumerate() {
                let alone = prog.eval(&MemBatch::new(cat, vec![p.clone()]));
                assert_eq!(batch[i], alone[0], "{cat} {f} point {i}: {p:?}");
            }
        }
    }
}

#[test]
fn columns_fetched_once_and_only_when_needed() {
    let points = vec![
        pt(
            "cpu",
            &[("host", "web-1")],
            &[("usage", Value::Float(95.0))],
        ),
        pt(
            "cpu",
            &[("host", "web-2")],
            &[("usage", Value::Float(50.0))],
        ),
        pt(
            "mem",
            &[("host", "web-1")],
            &[("usage", Value::Float(99.0))],
        ),
        pt(
            "cpu",
            &[("host", "web-9")],
            &[("usage", Value::Float(99.0))],
        ),
    ];
    let cases: &[(&str, &[&str], &[bool])] = &[
        (
            "{ measurement = 'cpu' and host in ['web-1','web-2'] and usage > 90 }",
            // No point has `measurement` as a tag or field, nor `usage` as a tag: those
            // columns are not fetched.
            &[
                "category",
                "counts:measurement,host,usage",
                "measurements",
                "tag:host",
                "field:usage",
            ],
            &[true, false, false, false],
        ),
        // The same key twice: fetched once. The tag is always there: no field column.
        (
            "{ host = 'web-1' or host = 'web-9' }; { host = 'web-2' }",
            &["category", "counts:host", "tag:host"],
            &[true, true, true, true],
        ),
        // Nothing left after the first condition: the second key is never fetched.
        (
            "{ host = 'db' and usage > 1 }",
            &["category", "counts:host,usage", "tag:host"],
            &[false, false, false, false],
        ),
        // Every point matched by the first group: the second is not evaluated.
        (
            "{ host match ['^web'] }; { usage > 1 }",
            &["category", "counts:host,usage", "tag:host"],
            &[true, true, true, true],
        ),
        // No filters: no columns at all.
        ("[]", &[], &[true, true, true, true]),
        // A key no point has: no column at all, every point has it missing.
        (
            "{ nothing = nil }",
            &["category", "counts:nothing"],
            &[true, true, true, true],
        ),
        // `usage` as a field everywhere: only its field column.
        (
            "{ usage < 60 or usage = 99 }",
            &["category", "counts:usage", "field:usage"],
            &[false, true, true, true],
        ),
    ];
    for (cfg, calls, want) in cases {
        let batch = MemBatch::new("metric", points.clone());
        assert_eq!(program(cfg).eval(&batch), *want, "{cfg}");
        assert_eq!(batch.calls(), *calls, "{cfg}");
    }
}

/// Key counts decide which columns are fetched: a tag some points lack and no point has as a
/// field costs no field column; a key that is a tag in some points and a field in others gets
/// both; more keys than one `key-counts` call takes are asked in several calls.
#[test]
fn key_counts_skip_columns_and_come_in_chunks() {
    let points = vec![
        pt("cpu", &[("t", "x")], &[("f", Value::Int(3))]),
        pt(
            "cpu",
            &[],
            &[("t", Value::Float(2.5)), ("f", Value::Bool(true))],
        ),
        pt("cpu", &[("u", "y")], &[("f", Value::Str("s".into()))]),
        pt("mem", &[], &[]),
    ];
    let cases: &[(&str, &[&str], &[bool])] = &[
        (
            "{ u = 'y' or u = nil }",
            &["category", "counts:u", "tag:u"],
            &[true, true, true, true],
        ),
        (
            "{ t = 'x' or t > 2 }",
            &["category", "counts:t", "tag:t", "field:t"],
            &[true, true, false, false],
        ),
        (
            "{ f = 3 or f = true or f = 's' }",
            &["category", "counts:f", "field:f"],
            &[true, true, true, false],
        ),
    ];
    for (cfg, calls, want) in cases {
        let batch = MemBatch::new("metric", points.clone());
        assert_eq!(program(cfg).eval(&batch), *want, "{cfg}");
        assert_eq!(batch.calls(), *calls, "{cfg}");
    }
    // 70 keys (k0 = 0 … k69 = 69, k68 matches): asked as 64 + 6 (MemBatch refuses more than
    // 64 at once), and the counts of the second call go to the right keys.
    let keys: Vec<String> = (0..70).map(|i| format!("k{i} = {i}")).collect();
    let cfg = format!("{{ {} }}", keys.join(" or "));
    let p = pt("cpu", &[], &[("k68", Value::Int(68))]);
    let batch = MemBatch::new("metric", vec![p.clone(), pt("cpu", &[], &[])]);
    assert_eq!(program(&cfg).eval(&batch), [true, false]);
    let calls = batch.calls();
    let counts: Vec<usize> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("counts:"))
        .map(|c| c.split(',').count())
        .collect();
    assert_eq!(counts, [64, 6], "{calls:?}");
    assert!(calls.contains(&"field:k68".to_string()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("tag:")), "{calls:?}");
}

/// A host that breaks its promises (short index, out-of-range entries) must not make the
/// evaluator panic: such points read as missing.
#[test]
fn malformed_columns_do_not_panic() {
    struct Bad;
    impl Columns for Bad {
        fn len(&self) -> usize {
            3
        }
        fn category(&self) -> String {
            "metric".into()
        }
        fn measurements(&self) -> StringColumn {
            StringColumn {
                dict: vec![Some("cpu".into())],
                index: vec![0, 7],
            }
        }
        fn tag_column(&self, _: &str) -> StringColumn {
            StringColumn::default()
        }
        fn key_counts(&self, _: &[String]) -> Vec<KeyCount> {
            vec![] // says nothing: every column is fetched
        }
        fn field_column(&self, _: &str) -> FieldColumn {
            // Masks and values too short or empty, an out-of-range string entry.
            FieldColumn {
                floats: Some(Masked {
                    mask: vec![!0],
                    values: vec![],
                }),
                ints: Some(Masked {
                    mask: vec![],
                    values: vec![1],
                }),
                uints: None,
                bools: Some(Masked {
                    mask: vec![!0],
                    values: vec![],
                }),
                strs: Some(StringColumn {
                    dict: vec![Some("x".into())],
                    index: vec![3],
                }),
            }
        }
    }
    let prog = program("{ measurement = 'cpu' }; { host = nil }");
    assert_eq!(prog.eval(&Bad), vec![true, true, true]);
    let prog = program("{ measurement = 'cpu' and host = 'x' }");
    assert_eq!(prog.eval(&Bad), vec![false, false, false]);
}

#[test]
fn empty_batch() {
    let batch = MemBatch::new("metric", vec![]);
    assert!(program("{ host = 'x' }").eval(&batch).is_empty());
}

/// Rough native throughput of the evaluator alone (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn throughput() {
    let points: Vec<Point> = (0..1024)
        .map(|i| {
            pt(
                ["cpu", "mem"][i % 2],
                &[("host", ["web-1", "web-2", "db-1"][i % 3])],
                &[("usage", Value::Float((i % 100) as f64))],
            )
        })
        .collect();
    let batch = MemBatch::new("metric", points);
    let prog = program("{ measurement = 'cpu' and host in ['web-1','web-2'] and usage > 90 }");
    let start = std::time::Instant::now();
    let rounds = 2000;
    let mut hits = 0;
    for _ in 0..rounds {
        hits += prog.eval(&batch).iter().filter(|x| **x).count();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.1} M points/s ({hits} hits)",
        (rounds * 1024) as f64 / secs / 1e6
    );
}
