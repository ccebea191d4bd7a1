//! Lexer and parser: one DataKit filter string → [`Filter`] (its `{ … }` groups).
//!
//! It accepts exactly what DataKit's parser (`GuanceCloud/cliutils/filter`, `gram.y` + `lex.go`)
//! accepts, and builds the same tree, so that [`crate::eval`] can answer as DataKit does even for
//! conditions that can never be true there (`a = b`, `f(x) = 1`, `a.b = 1`, `a + 1 = 2`).
//!
//! ```text
//! filter  := [group] (';' [group])*            an empty first slot is kept (see Filter)
//! group   := '{' [elem] (',' [elem])* '}'      elem: an expr whose root is binary or '(…)'
//! expr    := operand (binop expr)*             by precedence, lowest first:
//!                                              or || < and && < = != < <= > >= < + - < * / % < ^
//! operand := number | '+' number | '-' number | string | true | false | nil | null | '*'
//!          | re '(' string ')' | '(' expr ')'
//!          | ref [('in' | 'notin' | 'not_in' | 'match' | 'notmatch') '[' list ']']
//!          | func ('.' func)*
//! ref     := ident ('.' ident)*                 a key when one ident, else never true
//! func    := ref '(' [arg] (',' [arg])* ')'     never true
//! ident   := word | `back-quoted` | identifier '(' string ')'
//! list    := [ [','] item (',' item)* ]         item: number, string, nil, bool, ref, '*'
//! ```
//!
//! Keywords are case-insensitive; DataKit's query keywords (`limit`, `by`, `as`, ...) are
//! reserved too. Words are ASCII (letters, digits, `_`); other keys need back-quotes or
//! `identifier('…')`. Strings are `'…'` / `"…"` with Go escapes; numbers are Go's (`010` is
//! octal, `09` a float, `inf`, `nan`; `.5` is not a number). `#` comments run to the end of the
//! line. Blanks are space, tab, CR and LF only.

use std::fmt;

/// A number literal, typed as DataKit types it (int64 or float64).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

/// A regex as written, with where it was written (for compile errors).
#[derive(Debug, Clone, PartialEq)]
pub struct RegexLit {
    /// The pattern's bytes (a `\xHH` escape can make them invalid UTF-8: then it is invalid).
    pub pattern: Vec<u8>,
    pub pos: Pos,
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Match,
    NotMatch,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::NotIn => "notin",
            BinOp::Match => "match",
            BinOp::NotMatch => "notmatch",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
        }
    }

    /// Binding power (higher binds tighter), as DataKit's `%left` / `%right` lines.
    fn power(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
            BinOp::In | BinOp::NotIn | BinOp::Match | BinOp::NotMatch => 7,
        }
    }
}

/// A node of the tree, as DataKit's parser builds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `'…'` / `"…"`, unescaped (bytes: `\xff` is allowed, as in Go).
    Str(Vec<u8>),
    Num(Num),
    Bool(bool),
    /// `nil` / `null`.
    Nil,
    /// A key: `host`, `` `a-b` ``, `identifier('a.b')` (bytes, as a `\x` escape allows).
    Ident(Vec<u8>),
    /// `re('…')`.
    Regex(RegexLit),
    Paren(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    /// The `[…]` after `in`/`notin` (literals and keys) or `match`/`notmatch` (regexes only).
    List(Vec<Node>),
    /// Parsed but never evaluates in DataKit: `a.b`, `f(x)`, `f(x).g(y)`, `*`. The text says
    /// which (for warnings).
    Opaque(&'static str),
}

/// One `{ … }`: its comma-separated elements, ANDed (none: matches every point).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub elems: Vec<Node>,
}

/// One filter string.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The string starts with an empty slot (`""`, `"# comment"`, `"; { … }"`). DataKit keeps
    /// it as a nil condition, which ends its evaluation: no group after it ever matches.
    pub leading_empty: bool,
    /// The `{ … }` groups, ORed.
    pub groups: Vec<Group>,
}

/// 1-based line and column (in characters) in the filter string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    fn at(src: &str, offset: usize) -> Pos {
        let before = &src[..offset.min(src.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Pos {
            line: line as u32,
            col: col as u32,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} col {}", self.line, self.col)
    }
}

/// A syntax error: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub pos: Pos,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.msg)
    }
}

impl std::error::Error for ParseError {}

/// How deep parentheses, calls and operator chains may nest (parsing recurses on them).
const MAX_DEPTH: usize = 100;

/// Parses one filter string.
pub fn parse(src: &str) -> Result<Filter, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        at: 0,
        depth: 0,
    };
    let mut filter = Filter {
        leading_empty: false,
        groups: Vec::new(),
    };
    let mut first = true;
    loop {
        let slot_empty = if p.peek() == &Tok::LBrace {
            let g = p.group()?;
            filter.groups.push(g);
            false
        } else {
            true
        };
        if first {
            filter.leading_empty = slot_empty;
            first = false;
        }
        match p.peek() {
            Tok::Semi => p.bump(),
            Tok::Eof => return Ok(filter),
            _ if slot_empty => return Err(p.unexpected("expected '{' to start a filter group")),
            _ => {
                return Err(p.unexpected("expected ';' between groups (or the end of the filter)"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer: DataKit's `lex.go` token by token.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Dot,
    /// `:` / `::`: tokens of DataKit's query language, never valid in a filter.
    Colon,
    Op(BinOp),
    /// A bare word that is not a keyword.
    Word(String),
    /// A keyword (lower-cased).
    Kw(&'static str),
    /// A number as written (`inf` and `nan` included).
    Num(String),
    /// A quoted string, unescaped.
    Str(Vec<u8>),
    /// A back-quoted string, as is.
    Raw(String),
    Eof,
}

/// DataKit's keywords. `inf`/`nan` are numbers; the rest cannot be keys.
const KEYWORDS: &[&str] = &[
    "and",
    "as",
    "asc",
    "auto",
    "by",
    "desc",
    "match",
    "notmatch",
    "false",
    "filter",
    "identifier",
    "in",
    "notin",
    "not_in",
    "limit",
    "link",
    "nil",
    "null",
    "offset",
    "with",
    "or",
    "order",
    "re",
    "int",
    "float",
    "slimit",
    "soffset",
    "true",
    "tz",
];

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset of the token's first character.
    at: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::Semi => "';'".into(),
        Tok::Dot => "'.'".into(),
        Tok::Colon => "':'".into(),
        Tok::Op(op) => format!("'{}'", op.as_str()),
        Tok::Word(w) => format!("'{w}'"),
        Tok::Kw(k) => format!("keyword '{k}'"),
        Tok::Raw(k) => format!("`{k}`"),
        Tok::Str(s) => format!("string {:?}", String::from_utf8_lossy(s)),
        Tok::Num(n) => format!("number {n}"),
        Tok::Eof => "end of input".into(),
    }
}

fn is_alpha(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_alnum(c: char) -> bool {
    is_alpha(c) || c.is_ascii_digit()
}

fn err_at(src: &str, at: usize, msg: impl Into<String>) -> ParseError {
    ParseError {
        pos: Pos::at(src, at),
        msg: msg.into(),
    }
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = src[i..].chars().next().expect("in bounds");
        let next = b.get(i + 1).copied();
        let (tok, len) = match c {
            ' ' | '\t' | '\n' | '\r' => (None, 1),
            // To the end of the line (CR or LF), which is left for the blank rule.
            '#' => (
                None,
                b[i..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .unwrap_or(b.len() - i),
            ),
            '{' => (Some(Tok::LBrace), 1),
            '}' => (Some(Tok::RBrace), 1),
            '(' => (Some(Tok::LParen), 1),
            ')' => (Some(Tok::RParen), 1),
            '[' => (Some(Tok::LBracket), 1),
            ']' => (Some(Tok::RBracket), 1),
            ',' => (Some(Tok::Comma), 1),
            ';' => (Some(Tok::Semi), 1),
            // Before the number rule, as in DataKit: `.5` is a dot and a number.
            '.' => (Some(Tok::Dot), 1),
            ':' if next == Some(b':') => (Some(Tok::Colon), 2),
            ':' => (Some(Tok::Colon), 1),
            '*' => (Some(Tok::Op(BinOp::Mul)), 1),
            '/' => (Some(Tok::Op(BinOp::Div)), 1),
            '%' => (Some(Tok::Op(BinOp::Mod)), 1),
            '+' => (Some(Tok::Op(BinOp::Add)), 1),
            '-' => (Some(Tok::Op(BinOp::Sub)), 1),
            '^' => (Some(Tok::Op(BinOp::Pow)), 1),
            '=' => (Some(Tok::Op(BinOp::Eq)), 1),
            '!' if next == Some(b'=') => (Some(Tok::Op(BinOp::Ne)), 2),
            '!' => return Err(err_at(src, start, "unexpected '!' (did you mean '!='?)")),
            '<' if next == Some(b'=') => (Some(Tok::Op(BinOp::Le)), 2),
            '<' => (Some(Tok::Op(BinOp::Lt)), 1),
            '>' if next == Some(b'=') => (Some(Tok::Op(BinOp::Ge)), 2),
            '>' => (Some(Tok::Op(BinOp::Gt)), 1),
            '&' if next == Some(b'&') => (Some(Tok::Op(BinOp::And)), 2),
            '&' => return Err(err_at(src, start, "unexpected '&' (did you mean '&&'?)")),
            '|' if next == Some(b'|') => (Some(Tok::Op(BinOp::Or)), 2),
            '|' => return Err(err_at(src, start, "unexpected '|' (did you mean '||'?)")),
            '0'..='9' => {
                let end = scan_number(src, i)?;
                (Some(Tok::Num(src[i..end].to_string())), end - i)
            }
            '\'' | '"' => {
                let (end, s) = scan_string(src, i)?;
                (Some(Tok::Str(s)), end - i)
            }
            '`' => {
                let body = &src[i + 1..];
                let Some(close) = body.find('`') else {
                    return Err(err_at(src, start, "unterminated back-quoted name"));
                };
                // Go's lexer reads U+FFFD as an invalid rune: an error inside back-quotes.
                if body[..close].contains('\u{FFFD}') {
                    return Err(err_at(src, start, "U+FFFD in a back-quoted name"));
                }
                (Some(Tok::Raw(body[..close].to_string())), close + 2)
            }
            c if is_alpha(c) => {
                let len = src[i..].find(|c: char| !is_alnum(c)).unwrap_or(b.len() - i);
                let w = &src[i..i + len];
                let lower = w.to_ascii_lowercase();
                let tok = if lower == "inf" || lower == "nan" {
                    Tok::Num(w.to_string())
                } else if lower == "and" {
                    Tok::Op(BinOp::And)
                } else if lower == "or" {
                    Tok::Op(BinOp::Or)
                } else if let Some(k) = KEYWORDS.iter().find(|k| **k == lower) {
                    Tok::Kw(k)
                } else {
                    Tok::Word(w.to_string())
                };
                (Some(tok), len)
            }
            c if !c.is_ascii() && is_word_like(c) => {
                return Err(err_at(
                    src,
                    start,
                    format!(
                        "unexpected character {c:?}: bare names are ASCII; back-quote other names (`名`)"
                    ),
                ));
            }
            c => return Err(err_at(src, start, format!("unexpected character {c:?}"))),
        };
        if let Some(tok) = tok {
            out.push(Token { tok, at: start });
        }
        i += len;
    }
    out.push(Token {
        tok: Tok::Eof,
        at: b.len(),
    });
    Ok(out)
}

fn is_word_like(c: char) -> bool {
    c.is_alphanumeric()
}

/// Scans a number from `i` (a digit) as DataKit's `scanNumber` does; returns its end. What
/// DataKit would then read as a duration (`5m`) or a bad one (`12abc`, `1_000`) is an error.
fn scan_number(src: &str, i: usize) -> Result<usize, ParseError> {
    let b = src.as_bytes();
    let mut j = i;
    let run = |j: &mut usize, hex: bool| {
        while *j < b.len() && (b[*j].is_ascii_digit() || (hex && b[*j].is_ascii_hexdigit())) {
            *j += 1;
        }
    };
    let mut hex = false;
    if b[j] == b'0' {
        j += 1;
        if matches!(b.get(j), Some(b'x' | b'X')) {
            j += 1;
            hex = true;
        }
    }
    run(&mut j, hex);
    if b.get(j) == Some(&b'.') {
        j += 1;
        run(&mut j, hex);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        run(&mut j, false);
    }
    if b.get(j).is_some_and(|&c| is_alnum(c as char)) {
        let end = src[j..]
            .find(|c: char| !is_alnum(c))
            .map_or(b.len(), |e| j + e);
        return Err(err_at(
            src,
            i,
            format!(
                "invalid number {:?} (durations and digit separators are not values)",
                &src[i..end]
            ),
        ));
    }
    Ok(j)
}

/// Scans a quoted string at `i` as DataKit's lexer does, then unescapes it as DataKit's
/// `strutil.Unquote` does; returns its end and its bytes.
///
/// DataKit's lexer finds the closing quote with a quirk kept here: after a numeric escape
/// (`\101`, `\x41`, `\u0041`, `\U00000041`) it skips one more character unread. So in
/// `'\x41'` the closing quote is skipped (an error, unless a later quote closes a string that
/// then fails to unescape), while `'\x41\n'` is `A` and a newline.
fn scan_string(src: &str, i: usize) -> Result<(usize, Vec<u8>), ParseError> {
    let quote = src.as_bytes()[i] as char;
    let mut chars = src[i + 1..].char_indices().map(|(o, c)| (i + 1 + o, c));
    let unterminated = || err_at(src, i, "unterminated string");
    let end = loop {
        let Some((at, c)) = chars.next() else {
            return Err(unterminated());
        };
        match c {
            '\n' => return Err(err_at(src, i, "unterminated string (newline in string)")),
            c if c == quote => break at + 1,
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    return Err(unterminated());
                };
                let (n, base, max) = match e {
                    'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\' => continue,
                    e if e == quote => continue,
                    '0'..='7' => (3, 8, 255),
                    'x' | 'X' => (2, 16, 255),
                    'u' => (4, 16, 0x10FFFF),
                    'U' => (8, 16, 0x10FFFF),
                    e => {
                        return Err(err_at(src, at, format!("unknown escape sequence '\\{e}'")));
                    }
                };
                let mut digit = if base == 8 {
                    Some(e)
                } else {
                    chars.next().map(|(_, c)| c)
                };
                let mut v: u32 = 0;
                for _ in 0..n {
                    match digit.and_then(|d| d.to_digit(base)) {
                        Some(d) => v = v.saturating_mul(base).saturating_add(d),
                        None => {
                            return Err(err_at(
                                src,
                                at,
                                format!("escape sequence '\\{e}' needs {n} base-{base} digits"),
                            ));
                        }
                    }
                    // The last read is the character after the digits: skipped (see above).
                    digit = chars.next().map(|(_, c)| c);
                }
                if v > max || (0xD800..0xE000).contains(&v) {
                    return Err(err_at(
                        src,
                        at,
                        "escape sequence is an invalid Unicode code point",
                    ));
                }
            }
            _ => {}
        }
    };
    let bytes = unquote(&src[i + 1..end - 1], quote)
        .map_err(|why| err_at(src, i, format!("invalid string: {why}")))?;
    Ok((end, bytes))
}

/// Go's `strutil.Unquote` on the text between the quotes.
fn unquote(s: &str, quote: char) -> Result<Vec<u8>, String> {
    if s.contains('\n') {
        return Err("a newline inside the string".into());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.chars().peekable();
    let hex = |it: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = it
                .next()
                .and_then(|c| c.to_digit(16))
                .ok_or("bad hex escape")?;
            v = v << 4 | d;
        }
        Ok(v)
    };
    while let Some(c) = it.next() {
        if c == quote {
            return Err(format!("unescaped {quote} inside the string"));
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = it.next().ok_or("a lone '\\' at the end")?;
        let simple = match e {
            'a' => Some(7),
            'b' => Some(8),
            'f' => Some(12),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            e if e == quote => Some(e as u8),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        match e {
            'x' => out.push(hex(&mut it, 2)? as u8),
            'u' | 'U' => {
                let v = hex(&mut it, if e == 'u' { 4 } else { 8 })?;
                let c = char::from_u32(v).ok_or("escape is not a Unicode code point")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let mut v = e as u32 - '0' as u32;
                for _ in 0..2 {
                    let d = it
                        .next()
                        .and_then(|c| c.to_digit(8))
                        .ok_or("bad octal escape")?;
                    v = v << 3 | d;
                }
                if v > 255 {
                    return Err("octal escape above \\377".into());
                }
                out.push(v as u8);
            }
            e => return Err(format!("unknown escape sequence '\\{e}'")),
        }
    }
    Ok(out)
}

/// DataKit's number value: Go's `strconv.ParseInt(text, 0, 64)` (so `010` is octal and
/// `0x1f` hex), else `strconv.ParseFloat` (so `09`, `1e3`, `9223372036854775808` are floats,
/// `1e400` and `0x` are errors).
fn number_value(text: &str) -> Result<Num, String> {
    let lower = text.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if lower.len() > 1 && lower.starts_with('0') {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else {
        lower.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Ok(Num::Int(i));
    }
    if lower.starts_with("0x") {
        // Go's ParseFloat wants a 'p' exponent in a hex float, which the lexer never reads.
        return Err(format!(
            "invalid number {text} (hex floats need a 'p' exponent)"
        ));
    }
    match lower.parse::<f64>() {
        Ok(f) if f.is_infinite() && lower != "inf" => Err(format!("number {text} out of range")),
        Ok(f) => Ok(Num::Float(f)),
        Err(_) => Err(format!("invalid number {text}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.at + n).min(self.toks.len() - 1)].tok
    }

    fn bump(&mut self) {
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
    }

    fn here(&self) -> usize {
        self.toks[self.at].at
    }

    fn err(&self, msg: impl Into<String>) -> ParseError {
        err_at(self.src, self.here(), msg)
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        self.err(format!("{expected}, found {}", describe(self.peek())))
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<(), ParseError> {
        if *self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        if self.depth == MAX_DEPTH {
            return Err(self.err(format!("expression nested more than {MAX_DEPTH} deep")));
        }
        self.depth += 1;
        Ok(())
    }

    /// `{ [elem] (, [elem])* }`.
    fn group(&mut self) -> Result<Group, ParseError> {
        self.expect(Tok::LBrace, "expected '{'")?;
        let mut elems = Vec::new();
        let mut want_elem = true;
        loop {
            match self.peek() {
                Tok::RBrace => {
                    self.bump();
                    return Ok(Group { elems });
                }
                Tok::Comma => {
                    self.bump();
                    want_elem = true;
                }
                Tok::Eof => return Err(self.unexpected("expected '}' to close the group")),
                _ if want_elem => {
                    let at = self.here();
                    let e = self.expr(0)?;
                    if !matches!(e, Node::Binary(..) | Node::Paren(_)) {
                        return Err(err_at(
                            self.src,
                            at,
                            format!(
                                "expected a condition (key op value), found {}",
                                node_kind(&e)
                            ),
                        ));
                    }
                    elems.push(e);
                    want_elem = false;
                }
                _ => {
                    return Err(
                        self.unexpected("expected ',', 'and', 'or' or '}' after a condition")
                    );
                }
            }
        }
    }

    /// An expression whose operators bind at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<Node, ParseError> {
        self.enter()?;
        let mut lhs = self.operand()?;
        while let Tok::Op(op) = *self.peek() {
            let p = op.power();
            if p < min {
                break;
            }
            let op_at = self.here();
            self.bump();
            if !self.at_operand() {
                return Err(self.unexpected(&format!("expected value after '{}'", op.as_str())));
            }
            // Left-associative except `^`.
            let rhs = self.expr(if op == BinOp::Pow { p } else { p + 1 })?;
            let zero = match rhs {
                Node::Num(Num::Int(i)) => i == 0,
                Node::Num(Num::Float(f)) => f == 0.0,
                _ => false,
            };
            if matches!(op, BinOp::Div | BinOp::Mod) && zero {
                return Err(err_at(self.src, op_at, "division or modulo by zero"));
            }
            lhs = Node::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    /// Whether the cursor is at something that can start an operand.
    fn at_operand(&self) -> bool {
        matches!(
            self.peek(),
            Tok::Num(_)
                | Tok::Str(_)
                | Tok::Raw(_)
                | Tok::Word(_)
                | Tok::LParen
                | Tok::Op(BinOp::Add | BinOp::Sub | BinOp::Mul)
                | Tok::Kw("true" | "false" | "nil" | "null" | "re" | "identifier")
        )
    }

    fn operand(&mut self) -> Result<Node, ParseError> {
        let tok = self.peek().clone();
        let node = match tok {
            Tok::Num(_) => return self.number(false),
            Tok::Op(op @ (BinOp::Add | BinOp::Sub)) => {
                self.bump();
                if !matches!(self.peek(), Tok::Num(_)) {
                    return Err(
                        self.unexpected(&format!("expected a number after '{}'", op.as_str()))
                    );
                }
                return self.number(op == BinOp::Sub);
            }
            Tok::Op(BinOp::Mul) => Node::Opaque("*"),
            Tok::Str(s) => Node::Str(s),
            Tok::Kw("true") => Node::Bool(true),
            Tok::Kw("false") => Node::Bool(false),
            Tok::Kw("nil" | "null") => Node::Nil,
            Tok::Kw("re") => return self.regex(),
            Tok::LParen => {
                self.bump();
                let open = self.here();
                let e = self.expr(0)?;
                if *self.peek() != Tok::RParen {
                    let open = Pos::at(self.src, open.saturating_sub(1));
                    return Err(
                        self.unexpected(&format!("expected ')' to close the '(' at {open}"))
                    );
                }
                self.bump();
                return Ok(Node::Paren(Box::new(e)));
            }
            Tok::Word(_) | Tok::Raw(_) | Tok::Kw("identifier") => return self.reference(),
            _ => return Err(self.unexpected("expected a value or a key")),
        };
        self.bump();
        Ok(node)
    }

    /// The number at the cursor, negated when `neg`.
    fn number(&mut self, neg: bool) -> Result<Node, ParseError> {
        let Tok::Num(text) = self.peek().clone() else {
            unreachable!("number() at a number");
        };
        let n = number_value(&text).map_err(|e| self.err(e))?;
        self.bump();
        Ok(Node::Num(match (n, neg) {
            (Num::Int(i), true) => Num::Int(i.wrapping_neg()),
            (Num::Float(f), true) => Num::Float(-f),
            (n, false) => n,
        }))
    }

    /// `re ( 'regex' )` or `` re ( `regex` ) ``.
    fn regex(&mut self) -> Result<Node, ParseError> {
        self.bump();
        self.expect(Tok::LParen, "expected '(' after 're'")?;
        let at = self.here();
        let pattern = match self.peek().clone() {
            Tok::Str(s) => s,
            Tok::Raw(s) => s.into_bytes(),
            _ => return Err(self.unexpected("expected a quoted regex in re(…)")),
        };
        self.bump();
        self.expect(Tok::RParen, "expected ')' to close re(…)")?;
        Ok(Node::Regex(RegexLit {
            pattern,
            pos: Pos::at(self.src, at),
        }))
    }

    /// `word`, `` `quoted` `` or `identifier('…')`; `None` when the cursor is at none.
    fn ident(&mut self) -> Result<Option<Vec<u8>>, ParseError> {
        let name = match self.peek().clone() {
            Tok::Word(w) | Tok::Raw(w) => w.into_bytes(),
            Tok::Kw("identifier") => {
                self.bump();
                self.expect(Tok::LParen, "expected '(' after 'identifier'")?;
                let Tok::Str(s) = self.peek().clone() else {
                    return Err(self.unexpected("expected a quoted name in identifier(…)"));
                };
                self.bump();
                if *self.peek() != Tok::RParen {
                    return Err(self.unexpected("expected ')' to close identifier(…)"));
                }
                s
            }
            _ => return Ok(None),
        };
        self.bump();
        Ok(Some(name))
    }

    /// `ident (. ident)*` at an identifier (`at` says which caller checked that): the first
    /// name, and whether more followed (DataKit parses dotted names but never matches them).
    fn dotted_name(&mut self, at: &str) -> Result<(Vec<u8>, bool), ParseError> {
        let first = self.ident()?.expect(at);
        let mut dotted = false;
        while *self.peek() == Tok::Dot {
            self.bump();
            if self.ident()?.is_none() {
                return Err(self.unexpected("expected a name after '.'"));
            }
            dotted = true;
        }
        Ok((first, dotted))
    }

    /// `ident (. ident)*`, then a call chain, or `in`/`match` and a list.
    fn reference(&mut self) -> Result<Node, ParseError> {
        let (first, dotted) = self.dotted_name("reference() at an identifier")?;
        if *self.peek() == Tok::LParen {
            self.call_args()?;
            // A cascade: f(x).g(y).h(z)
            while *self.peek() == Tok::Dot {
                self.bump();
                if self.ident()?.is_none() {
                    return Err(self.unexpected("expected a function name after '.'"));
                }
                while *self.peek() == Tok::Dot {
                    self.bump();
                    if self.ident()?.is_none() {
                        return Err(self.unexpected("expected a name after '.'"));
                    }
                }
                if *self.peek() != Tok::LParen {
                    return Err(self.unexpected("expected '(' of a function call"));
                }
                self.call_args()?;
            }
            return Ok(Node::Opaque("a function call"));
        }
        let col = if dotted {
            Node::Opaque("a dotted name")
        } else {
            Node::Ident(first)
        };
        let op = match self.peek() {
            Tok::Kw("in") => BinOp::In,
            Tok::Kw("notin" | "not_in") => BinOp::NotIn,
            Tok::Kw("match") => BinOp::Match,
            Tok::Kw("notmatch") => BinOp::NotMatch,
            _ => return Ok(col),
        };
        self.bump();
        let list = self.list(op)?;
        Ok(Node::Binary(op, Box::new(col), Box::new(Node::List(list))))
    }

    /// `( [arg] (, [arg])* )` of a function call; the arguments are checked, not kept.
    fn call_args(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        self.bump(); // (
        let mut want_arg = true;
        loop {
            match self.peek() {
                Tok::RParen => {
                    self.bump();
                    self.depth -= 1;
                    return Ok(());
                }
                Tok::Comma => {
                    self.bump();
                    want_arg = true;
                }
                Tok::LBracket if want_arg => {
                    self.list(BinOp::In)?;
                    want_arg = false;
                }
                _ if want_arg => {
                    // `name = [list]` (a named list argument), else an expression.
                    let named_list = matches!(self.peek(), Tok::Word(_) | Tok::Raw(_))
                        && *self.peek_at(1) == Tok::Op(BinOp::Eq)
                        && *self.peek_at(2) == Tok::LBracket;
                    if named_list {
                        self.bump();
                        self.bump();
                        self.list(BinOp::In)?;
                    } else {
                        self.expr(0)?;
                    }
                    want_arg = false;
                }
                _ => return Err(self.unexpected("expected ',' or ')' in the call")),
            }
        }
    }

    /// `[ [,] item (, item)* ]` after `op`. For `match`/`notmatch` the items must be
    /// strings (they become regexes).
    fn list(&mut self, op: BinOp) -> Result<Vec<Node>, ParseError> {
        self.expect(
            Tok::LBracket,
            &format!("expected '[' after '{}'", op.as_str()),
        )?;
        let mut items = Vec::new();
        if *self.peek() == Tok::RBracket {
            self.bump();
            return Ok(items);
        }
        if *self.peek() == Tok::Comma {
            self.bump(); // DataKit's grammar allows one leading comma: [, 'a']
        }
        loop {
            let at = self.here();
            let item = match self.peek().clone() {
                Tok::Num(_) => self.number(false)?,
                Tok::Op(o @ (BinOp::Add | BinOp::Sub)) => {
                    self.bump();
                    if !matches!(self.peek(), Tok::Num(_)) {
                        return Err(
                            self.unexpected(&format!("expected a number after '{}'", o.as_str()))
                        );
                    }
                    self.number(o == BinOp::Sub)?
                }
                Tok::Str(s) => {
                    self.bump();
                    Node::Str(s)
                }
                Tok::Kw("true") => {
                    self.bump();
                    Node::Bool(true)
                }
                Tok::Kw("false") => {
                    self.bump();
                    Node::Bool(false)
                }
                Tok::Kw("nil" | "null") => {
                    self.bump();
                    Node::Nil
                }
                Tok::Op(BinOp::Mul) => {
                    self.bump();
                    Node::Opaque("*")
                }
                Tok::Word(_) | Tok::Raw(_) | Tok::Kw("identifier") => {
                    let (first, dotted) = self.dotted_name("at an identifier")?;
                    if dotted {
                        Node::Opaque("a dotted name")
                    } else {
                        Node::Ident(first)
                    }
                }
                _ => return Err(self.unexpected("expected a value in the list")),
            };
            let item = match (op, item) {
                (BinOp::Match | BinOp::NotMatch, Node::Str(pattern)) => Node::Regex(RegexLit {
                    pattern,
                    pos: Pos::at(self.src, at),
                }),
                (BinOp::Match | BinOp::NotMatch, other) => {
                    return Err(err_at(
                        self.src,
                        at,
                        format!(
                            "expected a quoted regex in the list, found {}",
                            node_kind(&other)
                        ),
                    ));
                }
                (_, item) => item,
            };
            items.push(item);
            match self.peek() {
                Tok::Comma => self.bump(),
                Tok::RBracket => {
                    self.bump();
                    return Ok(items);
                }
                _ => return Err(self.unexpected("expected ',' or ']' in the list")),
            }
        }
    }
}

/// What a node is, for messages.
pub fn node_kind(n: &Node) -> String {
    match n {
        Node::Str(s) => format!("string {:?}", String::from_utf8_lossy(s)),
        Node::Num(Num::Int(i)) => format!("number {i}"),
        Node::Num(Num::Float(f)) => format!("number {f}"),
        Node::Bool(b) => format!("{b}"),
        Node::Nil => "nil".into(),
        Node::Ident(k) => format!("key '{}'", String::from_utf8_lossy(k)),
        Node::Regex(_) => "re(…)".into(),
        Node::Paren(_) => "a parenthesised expression".into(),
        Node::Binary(op, ..) => format!("a '{}' expression", op.as_str()),
        Node::List(_) => "a list".into(),
        Node::Opaque(what) => (*what).into(),
    }
}

#[cfg(test)]
mod tests;
