//! Lexer and parser: one DataKit filter string → [`Filter`] (its `{ … }` groups).
//!
//! Grammar (keywords are case-insensitive, `#` comments run to the end of the line):
//!
//! ```text
//! filter  := (';' | group)*                      groups, optionally separated by ';'
//! group   := '{' [ or (',' or)* ] '}'            ',' is AND; '{}' matches every point
//! or      := and (('or' | '||') and)*
//! and     := primary (('and' | '&&') primary)*
//! primary := '(' or ')' | key op
//! key     := word | `back-quoted`
//! op      := ('=' | '!=') (value | 're' '(' string ')')
//!          | ('<' | '<=' | '>' | '>=') value
//!          | ('in' | 'notin' | 'not_in') '[' [value (',' value)* [',']] ']'
//!          | ('match' | 'notmatch') '[' [string (',' string)* [',']] ']'
//! value   := string | ['-' | '+'] number | 'true' | 'false' | 'nil' | 'null'
//! ```
//!
//! Strings are `'…'` or `"…"` with Go escapes (`\n \t \\ \' \" \xHH \ooo \uXXXX \UXXXXXXXX`,
//! ...). Numbers are decimal (`1`, `-2`, `1.5`, `.5`, `1e3`) or hex (`0x1f`); `inf` and `nan`
//! are floats. An integer too large for int64 becomes a float, as in DataKit.

use std::fmt;

/// A literal on the right of a comparison or in an `in` list.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `nil` / `null`: stands for "the key is missing".
    Nil,
}

/// `=`, `!=` and the orderings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A regex as written, with where it was written (for compile errors).
#[derive(Debug, Clone, PartialEq)]
pub struct RegexLit {
    pub pattern: String,
    pub pos: Pos,
}

/// What a condition does with the value of its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Cmp(CmpOp, Lit),
    /// `= re('…')` (`negated: false`) or `!= re('…')` (`negated: true`).
    Re {
        negated: bool,
        re: RegexLit,
    },
    In(Vec<Lit>),
    NotIn(Vec<Lit>),
    Match(Vec<RegexLit>),
    NotMatch(Vec<RegexLit>),
}

/// `key op …`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub key: String,
    pub op: Op,
}

/// A boolean expression over conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cond(Cond),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// One `{ … }`: its comma-separated elements, ANDed (empty: matches every point).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub elems: Vec<Expr>,
}

/// One filter string: its groups, ORed.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
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

/// Parses one filter string.
pub fn parse(src: &str) -> Result<Filter, ParseError> {
    let mut p = Parser {
        lx: Lexer { src, at: 0 },
        peeked: None,
        depth: 0,
    };
    let mut groups = Vec::new();
    loop {
        let t = p.peek()?;
        match t.tok {
            Tok::Semi => {
                p.bump();
            }
            Tok::LBrace => groups.push(p.group()?),
            Tok::Eof => break,
            _ => return Err(p.unexpected(&t, "expected '{' to start a filter group")),
        }
    }
    Ok(Filter { groups })
}

// ---------------------------------------------------------------------------------------------
// Lexer

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
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Minus,
    Plus,
    /// A bare word: a key or a keyword.
    Word(String),
    /// A back-quoted key.
    Quoted(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A number as written (without sign).
    Num(String),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset of the token's first character.
    at: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.tok {
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::Semi => "';'".into(),
            Tok::Eq => "'='".into(),
            Tok::Ne => "'!='".into(),
            Tok::Lt => "'<'".into(),
            Tok::Le => "'<='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Ge => "'>='".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::OrOr => "'||'".into(),
            Tok::Minus => "'-'".into(),
            Tok::Plus => "'+'".into(),
            Tok::Word(w) => format!("'{w}'"),
            Tok::Quoted(k) => format!("`{k}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Eof => "end of input".into(),
        }
    }

    /// The bare word, lower-cased, when the token is one (for keyword checks).
    fn keyword(&self) -> Option<String> {
        match &self.tok {
            Tok::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    at: usize,
}

fn is_word_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_word_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.at..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn err(&self, at: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            pos: Pos::at(self.src, at),
            msg: msg.into(),
        }
    }

    /// Skips blanks and `#` comments.
    fn skip_trivia(&mut self) {
        while let Some(c) = self.peek_char() {
            if c.is_whitespace() {
                self.at += c.len_utf8();
            } else if c == '#' {
                let end = self
                    .rest()
                    .find('\n')
                    .map_or(self.src.len(), |i| self.at + i);
                self.at = end;
            } else {
                break;
            }
        }
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia();
        let start = self.at;
        let Some(c) = self.peek_char() else {
            return Ok(Token {
                tok: Tok::Eof,
                at: start,
            });
        };
        let two = |l: &mut Lexer<'a>, tok: Tok| {
            l.at += 2;
            Ok(tok)
        };
        let one = |l: &mut Lexer<'a>, tok: Tok| {
            l.at += 1;
            Ok(tok)
        };
        let next2 = self.peek_char2();
        let tok = match c {
            '{' => one(self, Tok::LBrace),
            '}' => one(self, Tok::RBrace),
            '(' => one(self, Tok::LParen),
            ')' => one(self, Tok::RParen),
            '[' => one(self, Tok::LBracket),
            ']' => one(self, Tok::RBracket),
            ',' => one(self, Tok::Comma),
            ';' => one(self, Tok::Semi),
            '=' => one(self, Tok::Eq),
            '-' => one(self, Tok::Minus),
            '+' => one(self, Tok::Plus),
            '!' if next2 == Some('=') => two(self, Tok::Ne),
            '!' => Err(self.err(start, "unexpected '!' (did you mean '!='?)")),
            '<' if next2 == Some('=') => two(self, Tok::Le),
            '<' => one(self, Tok::Lt),
            '>' if next2 == Some('=') => two(self, Tok::Ge),
            '>' => one(self, Tok::Gt),
            '&' if next2 == Some('&') => two(self, Tok::AndAnd),
            '&' => Err(self.err(start, "unexpected '&' (did you mean '&&'?)")),
            '|' if next2 == Some('|') => two(self, Tok::OrOr),
            '|' => Err(self.err(start, "unexpected '|' (did you mean '||'?)")),
            '\'' | '"' => self.string(c).map(Tok::Str),
            '`' => self.backquoted().map(Tok::Quoted),
            '0'..='9' => self.number().map(Tok::Num),
            '.' if next2.is_some_and(|d| d.is_ascii_digit()) => self.number().map(Tok::Num),
            c if is_word_start(c) => {
                let len = self
                    .rest()
                    .find(|c: char| !is_word_char(c))
                    .unwrap_or(self.rest().len());
                let w = self.rest()[..len].to_string();
                self.at += len;
                Ok(Tok::Word(w))
            }
            c => Err(self.err(start, format!("unexpected character {c:?}"))),
        }?;
        Ok(Token { tok, at: start })
    }

    fn backquoted(&mut self) -> Result<String, ParseError> {
        let start = self.at;
        let body = &self.rest()[1..];
        match body.find('`') {
            Some(end) => {
                self.at += 1 + end + 1;
                Ok(body[..end].to_string())
            }
            None => Err(self.err(start, "unterminated back-quoted key")),
        }
    }

    /// Scans a number (no sign): decimal int/float with optional exponent, or hex int.
    fn number(&mut self) -> Result<String, ParseError> {
        let start = self.at;
        let bytes = self.src.as_bytes();
        let mut i = self.at;
        let digits = |i: &mut usize, hex: bool| {
            let s = *i;
            while *i < bytes.len()
                && (bytes[*i].is_ascii_digit() || (hex && bytes[*i].is_ascii_hexdigit()))
            {
                *i += 1;
            }
            *i > s
        };
        if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
            i += 2;
            if !digits(&mut i, true) {
                return Err(self.err(start, "invalid hex number: no digits after '0x'"));
            }
        } else {
            digits(&mut i, false);
            if bytes.get(i) == Some(&b'.') {
                i += 1;
                digits(&mut i, false);
            }
            if matches!(bytes.get(i), Some(b'e' | b'E')) {
                i += 1;
                if matches!(bytes.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                if !digits(&mut i, false) {
                    return Err(self.err(start, "invalid number: no digits in exponent"));
                }
            }
        }
        if self.src[i..].chars().next().is_some_and(is_word_char) {
            let end = self.src[i..]
                .find(|c: char| !is_word_char(c) && c != '.')
                .map_or(self.src.len(), |e| i + e);
            return Err(self.err(start, format!("invalid number {:?}", &self.src[start..end])));
        }
        self.at = i;
        Ok(self.src[start..i].to_string())
    }

    /// Scans a `'…'` or `"…"` string with Go escapes.
    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.at;
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.err(start, "unterminated string"));
            };
            let here = self.at;
            self.at += c.len_utf8();
            match c {
                '\n' => return Err(self.err(start, "unterminated string (newline in string)")),
                c if c == quote => break,
                '\\' => self.escape(here, &mut out)?,
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(out).map_err(|_| {
            self.err(
                start,
                "string is not valid UTF-8 (check its \\x or octal escapes)",
            )
        })
    }

    /// Handles the escape after a `\` at byte offset `at`, appending its bytes to `out`.
    fn escape(&mut self, at: usize, out: &mut Vec<u8>) -> Result<(), ParseError> {
        let Some(c) = self.peek_char() else {
            return Err(self.err(at, "unterminated escape sequence"));
        };
        self.at += c.len_utf8();
        let simple = match c {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '\'' => Some(b'\''),
            '"' => Some(b'"'),
            '`' => Some(b'`'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (n, radix, is_char) = match c {
            '0'..='7' => {
                self.at -= 1; // the digit is part of the value
                (3, 8, false)
            }
            'x' | 'X' => (2, 16, false),
            'u' => (4, 16, true),
            'U' => (8, 16, true),
            c => return Err(self.err(at, format!("unknown escape sequence '\\{c}'"))),
        };
        let digits = self.rest().get(..n).unwrap_or("");
        let value = match u32::from_str_radix(digits, radix) {
            Ok(v) if digits.len() == n && digits.chars().all(|c| c.is_digit(radix)) => v,
            _ => {
                return Err(self.err(
                    at,
                    format!("escape sequence '\\{c}' needs {n} base-{radix} digits"),
                ));
            }
        };
        self.at += n;
        if is_char {
            let ch = char::from_u32(value)
                .ok_or_else(|| self.err(at, "escape sequence is an invalid Unicode code point"))?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        } else {
            let b = u8::try_from(value)
                .map_err(|_| self.err(at, "octal escape sequence is larger than 255"))?;
            out.push(b);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    lx: Lexer<'a>,
    peeked: Option<Token>,
    /// Open parentheses around the cursor.
    depth: usize,
}

/// How deep parentheses may nest (parsing and evaluation recurse on them).
const MAX_DEPTH: usize = 100;

/// Words that cannot be bare keys (back-quote a key of that name).
const RESERVED: &[&str] = &[
    "and", "or", "in", "notin", "not_in", "match", "notmatch", "true", "false", "nil", "null", "re",
];

impl Parser<'_> {
    fn peek(&mut self) -> Result<Token, ParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lx.next()?);
        }
        Ok(self.peeked.clone().expect("peeked above"))
    }

    fn bump(&mut self) -> Token {
        self.peeked.take().expect("bump after peek")
    }

    fn unexpected(&self, t: &Token, expected: &str) -> ParseError {
        self.lx
            .err(t.at, format!("{expected}, found {}", t.describe()))
    }

    fn hint(&self, t: &Token, expected: &str, hint: &str) -> ParseError {
        let msg = format!("{expected}, found {} ({hint})", t.describe());
        self.lx.err(t.at, msg)
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<Token, ParseError> {
        let t = self.peek()?;
        if t.tok == tok {
            Ok(self.bump())
        } else {
            Err(self.unexpected(&t, expected))
        }
    }

    fn is_keyword(t: &Token, words: &[&str]) -> bool {
        t.keyword().is_some_and(|k| words.contains(&k.as_str()))
    }

    fn group(&mut self) -> Result<Group, ParseError> {
        self.expect(Tok::LBrace, "expected '{'")?;
        let mut elems = Vec::new();
        if self.peek()?.tok == Tok::RBrace {
            self.bump();
            return Ok(Group { elems });
        }
        loop {
            elems.push(self.or()?);
            let t = self.peek()?;
            match t.tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBrace => {
                    self.bump();
                    return Ok(Group { elems });
                }
                Tok::Eof => return Err(self.unexpected(&t, "expected '}' to close the group")),
                _ => {
                    return Err(
                        self.unexpected(&t, "expected ',', 'and', 'or' or '}' after a condition")
                    );
                }
            }
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.joined(Tok::OrOr, "or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        self.joined(Tok::AndAnd, "and", Self::primary, Expr::And)
    }

    /// `term (op term)*` where `op` is the symbol `tok` or the keyword `word`; one term
    /// stands alone, several become `make(terms)`.
    fn joined(
        &mut self,
        tok: Tok,
        word: &str,
        term: fn(&mut Self) -> Result<Expr, ParseError>,
        make: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, ParseError> {
        let mut terms = vec![term(self)?];
        loop {
            let t = self.peek()?;
            if t.tok == tok || Self::is_keyword(&t, &[word]) {
                self.bump();
                terms.push(term(self)?);
            } else {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            make(terms)
        })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let t = self.peek()?;
        if t.tok == Tok::LParen {
            if self.depth == MAX_DEPTH {
                return Err(self.lx.err(
                    t.at,
                    format!("parentheses nested more than {MAX_DEPTH} deep"),
                ));
            }
            self.bump();
            self.depth += 1;
            let e = self.or()?;
            self.depth -= 1;
            let close = self.peek()?;
            if close.tok != Tok::RParen {
                let open = Pos::at(self.lx.src, t.at);
                return Err(
                    self.unexpected(&close, &format!("expected ')' to close the '(' at {open}"))
                );
            }
            self.bump();
            return Ok(e);
        }
        self.cond().map(Expr::Cond)
    }

    fn cond(&mut self) -> Result<Cond, ParseError> {
        let t = self.peek()?;
        let key = match &t.tok {
            Tok::Quoted(k) => k.clone(),
            Tok::Word(w) if Self::is_keyword(&t, RESERVED) => {
                return Err(self.lx.err(
                    t.at,
                    format!(
                        "expected a key, found keyword '{w}' (back-quote a key of that name: `{w}`)"
                    ),
                ));
            }
            Tok::Word(w) => w.clone(),
            _ => return Err(self.unexpected(&t, "expected a key")),
        };
        self.bump();
        let t = self.peek()?;
        let cmp = match t.tok {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        let op = if let Some(cmp) = cmp {
            self.bump();
            let v = self.peek()?;
            if matches!(cmp, CmpOp::Eq | CmpOp::Ne) && Self::is_keyword(&v, &["re"]) {
                self.bump();
                let re = self.re_call()?;
                Op::Re {
                    negated: cmp == CmpOp::Ne,
                    re,
                }
            } else {
                Op::Cmp(
                    cmp,
                    self.value(&format!("expected value after '{}'", cmp.as_str()))?,
                )
            }
        } else {
            match t.keyword().as_deref() {
                Some("in") => {
                    self.bump();
                    Op::In(self.list("in")?)
                }
                Some(w @ ("notin" | "not_in")) => {
                    self.bump();
                    Op::NotIn(self.list(w)?)
                }
                Some("match") => {
                    self.bump();
                    Op::Match(self.regex_list("match")?)
                }
                Some("notmatch") => {
                    self.bump();
                    Op::NotMatch(self.regex_list("notmatch")?)
                }
                _ => {
                    return Err(self.unexpected(
                        &t,
                        &format!(
                            "expected an operator (=, !=, <, <=, >, >=, in, notin, match, notmatch) after key '{key}'"
                        ),
                    ));
                }
            }
        };
        Ok(Cond { key, op })
    }

    /// `( 'regex' )` after `re`.
    fn re_call(&mut self) -> Result<RegexLit, ParseError> {
        self.expect(Tok::LParen, "expected '(' after 're'")?;
        let t = self.peek()?;
        let Tok::Str(pattern) = t.tok.clone() else {
            return Err(self.unexpected(&t, "expected a quoted regex in re(…)"));
        };
        self.bump();
        self.expect(Tok::RParen, "expected ')' to close re(…)")?;
        Ok(RegexLit {
            pattern,
            pos: Pos::at(self.lx.src, t.at),
        })
    }

    fn value(&mut self, expected: &str) -> Result<Lit, ParseError> {
        let t = self.peek()?;
        let lit = match &t.tok {
            Tok::Str(s) => Lit::Str(s.clone()),
            Tok::Num(_) => return self.number(false),
            Tok::Minus | Tok::Plus => {
                self.bump();
                let n = self.peek()?;
                let is_num = matches!(n.tok, Tok::Num(_))
                    || Self::is_keyword(&n, &["inf", "nan", "infinity"]);
                if !is_num {
                    return Err(self.unexpected(
                        &n,
                        &format!(
                            "expected a number after '{}'",
                            t.describe().trim_matches('\'')
                        ),
                    ));
                }
                return self.number(t.tok == Tok::Minus);
            }
            Tok::Word(_) => match t.keyword().as_deref() {
                Some("true") => Lit::Bool(true),
                Some("false") => Lit::Bool(false),
                Some("nil" | "null") => Lit::Nil,
                Some("inf" | "infinity" | "nan") => return self.number(false),
                Some("re") => {
                    return Err(self.hint(&t, expected, "re(…) only goes after '=' or '!='"));
                }
                _ => return Err(self.hint(&t, expected, "quote strings")),
            },
            _ => return Err(self.unexpected(&t, expected)),
        };
        self.bump();
        Ok(lit)
    }

    /// The number token (or `inf`/`nan` word) at the cursor, negated when `neg`.
    fn number(&mut self, neg: bool) -> Result<Lit, ParseError> {
        let t = self.bump();
        let sign = if neg { "-" } else { "" };
        let text = match &t.tok {
            Tok::Num(n) => n.clone(),
            Tok::Word(w) => {
                let f = if w.eq_ignore_ascii_case("nan") {
                    f64::NAN
                } else {
                    f64::INFINITY
                };
                return Ok(Lit::Float(if neg { -f } else { f }));
            }
            _ => unreachable!("number() called on a number token"),
        };
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            return i64::from_str_radix(&format!("{sign}{hex}"), 16)
                .map(Lit::Int)
                .map_err(|_| {
                    self.lx
                        .err(t.at, format!("hex number {text} overflows int64"))
                });
        }
        let full = format!("{sign}{text}");
        if !text.contains(['.', 'e', 'E'])
            && let Ok(i) = full.parse::<i64>()
        {
            return Ok(Lit::Int(i));
        }
        full.parse::<f64>()
            .map(Lit::Float)
            .map_err(|_| self.lx.err(t.at, format!("invalid number {text}")))
    }

    fn list(&mut self, op: &str) -> Result<Vec<Lit>, ParseError> {
        self.bracketed(op, |p| p.value("expected a value in the list"))
    }

    fn regex_list(&mut self, op: &str) -> Result<Vec<RegexLit>, ParseError> {
        self.bracketed(op, |p| {
            let t = p.peek()?;
            let Tok::Str(s) = &t.tok else {
                return Err(p.unexpected(&t, "expected a quoted regex in the list"));
            };
            let lit = RegexLit {
                pattern: s.clone(),
                pos: Pos::at(p.lx.src, t.at),
            };
            p.bump();
            Ok(lit)
        })
    }

    /// `[item, item, ...]` after the operator `op` (empty and trailing-comma lists allowed).
    fn bracketed<T>(
        &mut self,
        op: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        self.expect(Tok::LBracket, &format!("expected '[' after '{op}'"))?;
        let mut items = Vec::new();
        loop {
            if self.peek()?.tok == Tok::RBracket {
                self.bump();
                return Ok(items);
            }
            items.push(item(self)?);
            let t = self.peek()?;
            match t.tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {}
                _ => return Err(self.unexpected(&t, "expected ',' or ']' in the list")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(key: &str, op: Op) -> Expr {
        Expr::Cond(Cond {
            key: key.into(),
            op,
        })
    }

    fn one_group(src: &str) -> Vec<Expr> {
        let f = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(f.groups.len(), 1, "{src}");
        f.groups.into_iter().next().unwrap().elems
    }

    fn single(src: &str) -> Expr {
        let mut e = one_group(src);
        assert_eq!(e.len(), 1, "{src}");
        e.pop().unwrap()
    }

    fn value(src: &str) -> Lit {
        match single(&format!("{{ k = {src} }}")) {
            Expr::Cond(Cond {
                op: Op::Cmp(CmpOp::Eq, l),
                ..
            }) => l,
            e => panic!("{src}: {e:?}"),
        }
    }

    #[test]
    fn literals() {
        let cases: &[(&str, Lit)] = &[
            ("1", Lit::Int(1)),
            ("-1", Lit::Int(-1)),
            ("+7", Lit::Int(7)),
            ("0", Lit::Int(0)),
            ("9223372036854775807", Lit::Int(i64::MAX)),
            ("-9223372036854775808", Lit::Int(i64::MIN)),
            ("9223372036854775808", Lit::Float(9223372036854775808.0)),
            ("0x1F", Lit::Int(31)),
            ("-0x10", Lit::Int(-16)),
            ("1.5", Lit::Float(1.5)),
            ("-1.5", Lit::Float(-1.5)),
            (".5", Lit::Float(0.5)),
            ("1.", Lit::Float(1.0)),
            ("1e3", Lit::Float(1000.0)),
            ("2.5E-1", Lit::Float(0.25)),
            ("inf", Lit::Float(f64::INFINITY)),
            ("-Inf", Lit::Float(f64::NEG_INFINITY)),
            ("true", Lit::Bool(true)),
            ("TRUE", Lit::Bool(true)),
            ("False", Lit::Bool(false)),
            ("nil", Lit::Nil),
            ("NULL", Lit::Nil),
            ("'abc'", Lit::Str("abc".into())),
            ("\"abc\"", Lit::Str("abc".into())),
            ("''", Lit::Str(String::new())),
            (r#"'a\'b'"#, Lit::Str("a'b".into())),
            (r#""a\"b""#, Lit::Str("a\"b".into())),
            (r#"'say "hi"'"#, Lit::Str("say \"hi\"".into())),
            (r#""it's""#, Lit::Str("it's".into())),
            (r"'a\nb\tc\\d\re'", Lit::Str("a\nb\tc\\d\re".into())),
            (r"'\a\b\f\v'", Lit::Str("\x07\x08\x0c\x0b".into())),
            (r"'\u00e9\U0001F600'", Lit::Str("é😀".into())),
            (r"'\x41\101'", Lit::Str("AA".into())),
            (r"'\xe4\xbd\xa0'", Lit::Str("你".into())),
            ("'北京'", Lit::Str("北京".into())),
            ("'# not a comment'", Lit::Str("# not a comment".into())),
        ];
        for (src, want) in cases {
            assert_eq!(&value(src), want, "{src}");
        }
        match value("nan") {
            Lit::Float(f) => assert!(f.is_nan()),
            l => panic!("{l:?}"),
        }
    }

    #[test]
    fn operators_and_keywords() {
        let s = |v: &str| Lit::Str(v.into());
        let re = |p: &str, col: u32| RegexLit {
            pattern: p.into(),
            pos: Pos { line: 1, col },
        };
        let cases: Vec<(&str, Expr)> = vec![
            ("{ a = 'x' }", cond("a", Op::Cmp(CmpOp::Eq, s("x")))),
            ("{ a != 'x' }", cond("a", Op::Cmp(CmpOp::Ne, s("x")))),
            ("{ a < 1 }", cond("a", Op::Cmp(CmpOp::Lt, Lit::Int(1)))),
            ("{ a <= 1 }", cond("a", Op::Cmp(CmpOp::Le, Lit::Int(1)))),
            ("{ a > 1 }", cond("a", Op::Cmp(CmpOp::Gt, Lit::Int(1)))),
            ("{ a >= 1 }", cond("a", Op::Cmp(CmpOp::Ge, Lit::Int(1)))),
            ("{a>=-1}", cond("a", Op::Cmp(CmpOp::Ge, Lit::Int(-1)))),
            (
                "{ a in ['x', 1, 2.5, true, nil] }",
                cond(
                    "a",
                    Op::In(vec![
                        s("x"),
                        Lit::Int(1),
                        Lit::Float(2.5),
                        Lit::Bool(true),
                        Lit::Nil,
                    ]),
                ),
            ),
            ("{ a IN ['x',] }", cond("a", Op::In(vec![s("x")]))),
            ("{ a in [] }", cond("a", Op::In(vec![]))),
            ("{ a notin ['x'] }", cond("a", Op::NotIn(vec![s("x")]))),
            ("{ a NOTIN ['x'] }", cond("a", Op::NotIn(vec![s("x")]))),
            ("{ a not_in ['x'] }", cond("a", Op::NotIn(vec![s("x")]))),
            ("{ a Not_In ['x'] }", cond("a", Op::NotIn(vec![s("x")]))),
            (
                "{ a match ['^x', 'y$'] }",
                cond("a", Op::Match(vec![re("^x", 12), re("y$", 18)])),
            ),
            ("{ a MATCH ['x'] }", cond("a", Op::Match(vec![re("x", 12)]))),
            (
                "{ a notmatch ['x'] }",
                cond("a", Op::NotMatch(vec![re("x", 15)])),
            ),
            (
                "{ a NotMatch [\"x\"] }",
                cond("a", Op::NotMatch(vec![re("x", 15)])),
            ),
            (
                "{ a = re('x.*') }",
                cond(
                    "a",
                    Op::Re {
                        negated: false,
                        re: re("x.*", 10),
                    },
                ),
            ),
            (
                "{ a != RE(\"x\") }",
                cond(
                    "a",
                    Op::Re {
                        negated: true,
                        re: re("x", 11),
                    },
                ),
            ),
            (
                "{ `a-b.c` = 1 }",
                cond("a-b.c", Op::Cmp(CmpOp::Eq, Lit::Int(1))),
            ),
            ("{ `in` = 1 }", cond("in", Op::Cmp(CmpOp::Eq, Lit::Int(1)))),
            (
                "{ 城市 = 1 }",
                cond("城市", Op::Cmp(CmpOp::Eq, Lit::Int(1))),
            ),
            ("{ _x1 = 1 }", cond("_x1", Op::Cmp(CmpOp::Eq, Lit::Int(1)))),
            // Non-reserved keywords of DataKit's query language are plain keys here.
            (
                "{ limit = 1 }",
                cond("limit", Op::Cmp(CmpOp::Eq, Lit::Int(1))),
            ),
        ];
        for (src, want) in cases {
            assert_eq!(single(src), want, "{src}");
        }
    }

    #[test]
    fn precedence_and_structure() {
        let c = |k: &str| cond(k, Op::Cmp(CmpOp::Eq, Lit::Int(1)));
        // and binds tighter than or.
        assert_eq!(
            single("{ a = 1 or b = 1 and c = 1 }"),
            Expr::Or(vec![c("a"), Expr::And(vec![c("b"), c("c")])])
        );
        assert_eq!(
            single("{ a = 1 && b = 1 || c = 1 }"),
            Expr::Or(vec![Expr::And(vec![c("a"), c("b")]), c("c")])
        );
        assert_eq!(
            single("{ (a = 1 OR b = 1) AND c = 1 }"),
            Expr::And(vec![Expr::Or(vec![c("a"), c("b")]), c("c")])
        );
        assert_eq!(single("{ ((a = 1)) }"), c("a"));
        // Commas separate ANDed elements.
        assert_eq!(
            one_group("{ a = 1, b = 1 or c = 1 }"),
            vec![c("a"), Expr::Or(vec![c("b"), c("c")])]
        );
        // Groups, separators, comments.
        let f = parse(";;{ a = 1 };; { b = 1 } { c = 1 };").unwrap();
        assert_eq!(f.groups.len(), 3);
        let f = parse("{};{}").unwrap();
        assert_eq!(f.groups, vec![Group { elems: vec![] }; 2]);
        let f = parse("# header\n{ a = 1 # trailing\n , b = 1 } # end").unwrap();
        assert_eq!(f.groups[0].elems, vec![c("a"), c("b")]);
        assert_eq!(parse("").unwrap().groups.len(), 0);
        assert_eq!(parse("  # only a comment").unwrap().groups.len(), 0);
    }

    #[test]
    fn errors_have_positions() {
        let cases: &[(&str, &str)] = &[
            (
                "{ measurement = }",
                "line 1 col 17: expected value after '=', found '}'",
            ),
            (
                "a = 1",
                "line 1 col 1: expected '{' to start a filter group, found 'a'",
            ),
            (
                "{ a = 1",
                "line 1 col 8: expected '}' to close the group, found end of input",
            ),
            (
                "{ a = 1 } x",
                "line 1 col 11: expected '{' to start a filter group, found 'x'",
            ),
            (
                "{ a = 1 b = 2 }",
                "line 1 col 9: expected ',', 'and', 'or' or '}' after a condition, found 'b'",
            ),
            (
                "{ a 1 }",
                "line 1 col 5: expected an operator (=, !=, <, <=, >, >=, in, notin, match, notmatch) after key 'a', found number 1",
            ),
            ("{ = 1 }", "line 1 col 3: expected a key, found '='"),
            (
                "{ and = 1 }",
                "line 1 col 3: expected a key, found keyword 'and' (back-quote a key of that name: `and`)",
            ),
            ("{ a = 1, }", "line 1 col 10: expected a key, found '}'"),
            ("{ a = 'x }", "line 1 col 7: unterminated string"),
            (
                "{ a = 'x\n' }",
                "line 1 col 7: unterminated string (newline in string)",
            ),
            (
                "{ a = 'x\\q' }",
                "line 1 col 9: unknown escape sequence '\\q'",
            ),
            (
                "{ a = '\\u12' }",
                "line 1 col 8: escape sequence '\\u' needs 4 base-16 digits",
            ),
            (
                "{ a = '\\xff' }",
                "line 1 col 7: string is not valid UTF-8 (check its \\x or octal escapes)",
            ),
            (
                "{ a = x }",
                "line 1 col 7: expected value after '=', found 'x' (quote strings)",
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
                "{ a = 1 | b = 1 }",
                "line 1 col 9: unexpected '|' (did you mean '||'?)",
            ),
            ("{ a = 12abc }", "line 1 col 7: invalid number \"12abc\""),
            (
                "{ a = 1e }",
                "line 1 col 7: invalid number: no digits in exponent",
            ),
            (
                "{ a = 0x }",
                "line 1 col 7: invalid hex number: no digits after '0x'",
            ),
            (
                "{ a = 0xffffffffffffffffff }",
                "line 1 col 7: hex number 0xffffffffffffffffff overflows int64",
            ),
            (
                "{ a = - 'x' }",
                "line 1 col 9: expected a number after '-', found string \"x\"",
            ),
            (
                "{ a in 'x' }",
                "line 1 col 8: expected '[' after 'in', found string \"x\"",
            ),
            (
                "{ a in ['x' 'y'] }",
                "line 1 col 13: expected ',' or ']' in the list, found string \"y\"",
            ),
            (
                "{ a in ['x', }",
                "line 1 col 14: expected a value in the list, found '}'",
            ),
            (
                "{ a match [1] }",
                "line 1 col 12: expected a quoted regex in the list, found number 1",
            ),
            (
                "{ a notmatch 'x' }",
                "line 1 col 14: expected '[' after 'notmatch', found string \"x\"",
            ),
            (
                "{ a = re 'x' }",
                "line 1 col 10: expected '(' after 're', found string \"x\"",
            ),
            (
                "{ a = re(x) }",
                "line 1 col 10: expected a quoted regex in re(…), found 'x'",
            ),
            (
                "{ a = re('x' }",
                "line 1 col 14: expected ')' to close re(…), found '}'",
            ),
            (
                "{ a < re('x') }",
                "line 1 col 7: expected value after '<', found 're' (re(…) only goes after '=' or '!=')",
            ),
            (
                "{ (a = 1 }",
                "line 1 col 10: expected ')' to close the '(' at line 1 col 3, found '}'",
            ),
            ("{ `a = 1 }", "line 1 col 3: unterminated back-quoted key"),
            ("{ a = 1 } $", "line 1 col 11: unexpected character '$'"),
            (
                "{ a = 1 }\n{ b = }",
                "line 2 col 7: expected value after '=', found '}'",
            ),
            (
                "# c\n  { x = 'é' and\n    y = }",
                "line 3 col 9: expected value after '=', found '}'",
            ),
        ];
        let deep = format!("{{ {}a = 1{} }}", "(".repeat(101), ")".repeat(101));
        assert_eq!(
            parse(&deep).unwrap_err().to_string(),
            "line 1 col 103: parentheses nested more than 100 deep"
        );
        let ok = format!("{{ {}a = 1{} }}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&ok).is_ok());
        for (src, want) in cases {
            match parse(src) {
                Ok(f) => panic!("{src:?} parsed: {f:?}"),
                Err(e) => assert_eq!(&e.to_string(), want, "{src:?}"),
            }
        }
    }
}
