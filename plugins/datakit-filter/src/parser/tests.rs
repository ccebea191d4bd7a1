//! The parser against what DataKit's parser accepts and builds (each expectation checked with
//! `dkfilter cases`; the differential test covers the rest at random).

use super::*;

fn one_elem(src: &str) -> Node {
    let f = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    assert_eq!(f.groups.len(), 1, "{src}");
    assert_eq!(f.groups[0].elems.len(), 1, "{src}");
    f.groups[0].elems[0].clone()
}

/// The right side of `{ k = <src> }`.
fn value(src: &str) -> Node {
    match one_elem(&format!("{{ k = {src} }}")) {
        Node::Binary(BinOp::Eq, _, r) => *r,
        e => panic!("{src}: {e:?}"),
    }
}

fn bin(op: BinOp, l: Node, r: Node) -> Node {
    Node::Binary(op, Box::new(l), Box::new(r))
}

fn key(k: &str) -> Node {
    Node::Ident(k.as_bytes().to_vec())
}

fn s(v: &str) -> Node {
    Node::Str(v.as_bytes().to_vec())
}

#[test]
fn numbers_as_go_reads_them() {
    let int = |i| Node::Num(Num::Int(i));
    let float = |f| Node::Num(Num::Float(f));
    let cases: &[(&str, Node)] = &[
        ("1", int(1)),
        ("-1", int(-1)),
        ("+7", int(7)),
        ("- 7", int(-7)),
        ("9223372036854775807", int(i64::MAX)),
        // The magnitude is read first: past int64 it is a float, then negated.
        ("9223372036854775808", float(9223372036854775808.0)),
        ("-9223372036854775808", float(-9223372036854775808.0)),
        ("0x1F", int(31)),
        ("0X1f", int(31)),
        ("-0x10", int(-16)),
        ("010", int(8)), // octal
        ("00", int(0)),
        ("09", float(9.0)), // not octal: a float
        ("08.5", float(8.5)),
        ("0e5", float(0.0)),
        ("1.5", float(1.5)),
        ("1.", float(1.0)),
        ("1.e5", float(100000.0)),
        ("1e3", float(1000.0)),
        ("2.5E-1", float(0.25)),
        ("1e-400", float(0.0)),
        ("inf", float(f64::INFINITY)),
        ("INF", float(f64::INFINITY)),
        ("-Inf", float(f64::NEG_INFINITY)),
        ("true", Node::Bool(true)),
        ("False", Node::Bool(false)),
        ("nil", Node::Nil),
        ("NULL", Node::Nil),
    ];
    for (src, want) in cases {
        assert_eq!(&value(src), want, "{src}");
    }
    assert!(matches!(value("NaN"), Node::Num(Num::Float(f)) if f.is_nan()));
    for bad in [
        "1e",
        "0x",
        "0x1.5",
        "0xffffffffffffffffff",
        "1e400",
        ".5",
        "1.5.5",
        "5m",
        "1_000",
        "12abc",
    ] {
        assert!(parse(&format!("{{ k = {bad} }}")).is_err(), "{bad} parsed");
    }
}

#[test]
fn strings_as_go_reads_them() {
    let cases: &[(&str, &[u8])] = &[
        ("'abc'", b"abc"),
        ("\"abc\"", b"abc"),
        ("''", b""),
        (r#"'a\'b'"#, b"a'b"),
        (r#""a\"b""#, b"a\"b"),
        (r#"'say "hi"'"#, b"say \"hi\""),
        (r"'a\nb\tc\\d\re'", b"a\nb\tc\\d\re"),
        (r"'\a\b\f\v'", b"\x07\x08\x0c\x0b"),
        ("'北京'", "北京".as_bytes()),
        ("'# no comment'", b"# no comment"),
        ("'\u{fffd}'", "\u{fffd}".as_bytes()),
        // After a numeric escape DataKit's lexer skips one character unread; the string is
        // still unescaped as a whole.
        (r"'\x41\n'", b"A\n"),
        (r"'\101bc'", b"Abc"),
        (r"'\u00e9x'", "éx".as_bytes()),
        (r"'\U0001F600x'", "😀x".as_bytes()),
        // \x and octal are bytes, as in Go (not UTF-8 here).
        (r"'\xffz'", b"\xffz"),
    ];
    for (src, want) in cases {
        assert_eq!(value(src), Node::Str(want.to_vec()), "{src}");
    }
    for bad in [
        r"'\x41'",    // the closing quote is skipped: unterminated
        r"'\1'",      // three octal digits
        r"'\400'",    // above 255
        r"'\ud800x'", // a surrogate
        r"'\U00110000x'",
        r#"'\"'"#, // \" only in "…"
        r#""\'""#,
        r"'\`'",
        r"'\q'",
        "'a\nb'",
        "'abc",
    ] {
        assert!(parse(&format!("{{ k = {bad} }}")).is_err(), "{bad} parsed");
    }
}

#[test]
fn accepted_shapes() {
    // What DataKit's grammar accepts, and the tree it builds.
    let cases: Vec<(&str, Node)> = vec![
        ("{ a = 'x' }", bin(BinOp::Eq, key("a"), s("x"))),
        (
            "{ `a-b.c` = 1 }",
            bin(BinOp::Eq, key("a-b.c"), Node::Num(Num::Int(1))),
        ),
        (
            "{ `城市` = 1 }",
            bin(BinOp::Eq, key("城市"), Node::Num(Num::Int(1))),
        ),
        (
            "{ identifier('a.b') = 1 }",
            bin(BinOp::Eq, key("a.b"), Node::Num(Num::Int(1))),
        ),
        (
            "{ IDENTIFIER(\"in\") = 1 }",
            bin(BinOp::Eq, key("in"), Node::Num(Num::Int(1))),
        ),
        // Literals on the left, a key on the right.
        (
            "{ 1 = 1 }",
            bin(BinOp::Eq, Node::Num(Num::Int(1)), Node::Num(Num::Int(1))),
        ),
        ("{ nil = nil }", bin(BinOp::Eq, Node::Nil, Node::Nil)),
        ("{ 'a' = 'a' }", bin(BinOp::Eq, s("a"), s("a"))),
        ("{ a = b }", bin(BinOp::Eq, key("a"), key("b"))),
        (
            "{ a = infinity }",
            bin(BinOp::Eq, key("a"), key("infinity")),
        ),
        ("{ a = `x` }", bin(BinOp::Eq, key("a"), key("x"))),
        // Regexes, also back-quoted; `<` with a regex parses (never true).
        (
            "{ a = re(`x.*`) }",
            bin(
                BinOp::Eq,
                key("a"),
                Node::Regex(RegexLit {
                    pattern: b"x.*".to_vec(),
                    pos: Pos { line: 1, col: 10 },
                }),
            ),
        ),
        (
            "{ a < re('x') }",
            bin(
                BinOp::Lt,
                key("a"),
                Node::Regex(RegexLit {
                    pattern: b"x".to_vec(),
                    pos: Pos { line: 1, col: 10 },
                }),
            ),
        ),
        // Lists: keys, `*` and dotted names kept (evaluation drops them), a leading comma.
        (
            "{ a in [, 1, b, *, x.y, nil, -2.5, 'z'] }",
            bin(
                BinOp::In,
                key("a"),
                Node::List(vec![
                    Node::Num(Num::Int(1)),
                    key("b"),
                    Node::Opaque("*"),
                    Node::Opaque("a dotted name"),
                    Node::Nil,
                    Node::Num(Num::Float(-2.5)),
                    s("z"),
                ]),
            ),
        ),
        (
            "{ a NOT_IN [] }",
            bin(BinOp::NotIn, key("a"), Node::List(vec![])),
        ),
        // Precedence: and over or, comparisons over and, arithmetic over comparisons.
        (
            "{ a = 1 or b = 1 and c = 1 }",
            bin(
                BinOp::Or,
                bin(BinOp::Eq, key("a"), Node::Num(Num::Int(1))),
                bin(
                    BinOp::And,
                    bin(BinOp::Eq, key("b"), Node::Num(Num::Int(1))),
                    bin(BinOp::Eq, key("c"), Node::Num(Num::Int(1))),
                ),
            ),
        ),
        (
            "{ a = 1 - 1 }",
            bin(
                BinOp::Eq,
                key("a"),
                bin(BinOp::Sub, Node::Num(Num::Int(1)), Node::Num(Num::Int(1))),
            ),
        ),
        (
            "{ a + b in [1] }",
            bin(
                BinOp::Add,
                key("a"),
                bin(
                    BinOp::In,
                    key("b"),
                    Node::List(vec![Node::Num(Num::Int(1))]),
                ),
            ),
        ),
        // Shapes that never evaluate but parse.
        (
            "{ a.b = 1 }",
            bin(
                BinOp::Eq,
                Node::Opaque("a dotted name"),
                Node::Num(Num::Int(1)),
            ),
        ),
        (
            "{ f(x, [1], y = [2], , a = 1 = 2).g.h(z) = 1 }",
            bin(
                BinOp::Eq,
                Node::Opaque("a function call"),
                Node::Num(Num::Int(1)),
            ),
        ),
        (
            "{ * = * }",
            bin(BinOp::Eq, Node::Opaque("*"), Node::Opaque("*")),
        ),
        ("{ (a) }", Node::Paren(Box::new(key("a")))),
        (
            "{ (a) + 1 }",
            bin(
                BinOp::Add,
                Node::Paren(Box::new(key("a"))),
                Node::Num(Num::Int(1)),
            ),
        ),
    ];
    for (src, want) in cases {
        assert_eq!(one_elem(src), want, "{src}");
    }
}

#[test]
fn groups_and_statements() {
    let groups = |src: &str| {
        let f = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        (
            f.leading_empty,
            f.groups.iter().map(|g| g.elems.len()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(groups("{ a = 1 }; { b = 1, c = 1 }"), (false, vec![1, 2]));
    assert_eq!(groups("{ a = 1 };;{ b = 1 };"), (false, vec![1, 1]));
    assert_eq!(groups("{ a = 1, }"), (false, vec![1]));
    assert_eq!(groups("{ ,, a = 1 }"), (false, vec![1]));
    assert_eq!(groups("{ , }"), (false, vec![0]));
    assert_eq!(groups("{}"), (false, vec![0]));
    assert_eq!(
        groups("# c\n{ a = 1 # t\n , b = 1 } # end"),
        (false, vec![2])
    );
    // An empty first slot: DataKit's nil condition.
    assert_eq!(groups(""), (true, vec![]));
    assert_eq!(groups("# only a comment"), (true, vec![]));
    assert_eq!(groups("; { a = 1 }"), (true, vec![1]));
}

#[test]
fn rejected_as_datakit_rejects() {
    let cases: &[(&str, &str)] = &[
        (
            "{ a = 1 } { b = 1 }",
            "line 1 col 11: expected ';' between groups (or the end of the filter), found '{'",
        ),
        (
            "a = 1",
            "line 1 col 1: expected '{' to start a filter group, found 'a'",
        ),
        (
            "{ a }",
            "line 1 col 3: expected a condition (key op value), found key 'a'",
        ),
        (
            "{ 1 in [1] }",
            "line 1 col 3: expected a condition (key op value), found number 1",
        ),
        (
            "{ 城市 = 1 }",
            "line 1 col 3: unexpected character '城': bare names are ASCII; back-quote other names (`名`)",
        ),
        (
            "{ limit = 1 }",
            "line 1 col 3: expected a value or a key, found keyword 'limit'",
        ),
        (
            "{ a = limit }",
            "line 1 col 7: expected value after '=', found keyword 'limit'",
        ),
        (
            "{ a = 1 \u{a0}}",
            "line 1 col 9: unexpected character '\\u{a0}'",
        ),
        (
            "{ a in [1,] }",
            "line 1 col 11: expected a value in the list, found ']'",
        ),
        (
            "{ a in [(1)] }",
            "line 1 col 9: expected a value in the list, found '('",
        ),
        (
            "{ a match [1] }",
            "line 1 col 12: expected a quoted regex in the list, found number 1",
        ),
        (
            "{ a match [`x`] }",
            "line 1 col 12: expected a quoted regex in the list, found key 'x'",
        ),
        ("{ a = 1 / 0 }", "line 1 col 9: division or modulo by zero"),
        (
            "{ a = -b }",
            "line 1 col 8: expected a number after '-', found 'b'",
        ),
        (
            "{ f(x)(y) = 1 }",
            "line 1 col 3: expected a condition (key op value), found a function call",
        ),
        (
            "{ f(x).y = 1 }",
            "line 1 col 10: expected '(' of a function call, found '='",
        ),
        (
            "{ identifier(`a`) = 1 }",
            "line 1 col 14: expected a quoted name in identifier(…), found `a`",
        ),
        (
            "{ `\u{fffd}` = 1 }",
            "line 1 col 3: U+FFFD in a back-quoted name",
        ),
        (
            "{ a : b }",
            "line 1 col 3: expected a condition (key op value), found key 'a'",
        ),
        (
            "{ a = re('x', 'y') }",
            "line 1 col 13: expected ')' to close re(…), found ','",
        ),
        (
            "{ re = 1 }",
            "line 1 col 6: expected '(' after 're', found '='",
        ),
        (
            "{ a ! 1 }",
            "line 1 col 5: unexpected '!' (did you mean '!='?)",
        ),
        (
            "{ a = 1 & b = 1 }",
            "line 1 col 9: unexpected '&' (did you mean '&&'?)",
        ),
        (
            "{ a = 1",
            "line 1 col 8: expected '}' to close the group, found end of input",
        ),
        (
            "{ (a = 1 }",
            "line 1 col 10: expected ')' to close the '(' at line 1 col 3, found '}'",
        ),
        (
            "{ a = 1 }\n{ b = }",
            "line 2 col 1: expected ';' between groups (or the end of the filter), found '{'",
        ),
        (
            "{ a = 1 };\n{ b = }",
            "line 2 col 7: expected value after '=', found '}'",
        ),
    ];
    let mut failures = Vec::new();
    for (src, want) in cases {
        match parse(src) {
            Ok(f) => failures.push(format!("{src:?} parsed: {f:?}")),
            Err(e) if e.to_string() != *want => {
                failures.push(format!("{src:?}\n  got  {e}\n  want {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let deep = format!("{{ {}a = 1{} }}", "(".repeat(120), ")".repeat(120));
    assert!(
        parse(&deep)
            .unwrap_err()
            .msg
            .contains("nested more than 100 deep")
    );
    let ok = format!("{{ {}a = 1{} }}", "(".repeat(40), ")".repeat(40));
    assert!(parse(&ok).is_ok());
}
