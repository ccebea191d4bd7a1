//! Reading `/metrics`: the HTTP fetch and a parser of the Prometheus text exposition
//! (format 0.0.4) into flat samples.
//!
//! The parser is ours, not a crate's: the text format is a few lines of grammar, the crates
//! that parse it pull in regex and chrono for it, and the monitor needs only names, labels
//! and values. It never panics on input: a line it cannot read is an error naming the line.

use std::fmt;
use std::time::Duration;

/// One sample: `name{labels} value`. Histogram and summary series are samples too
/// (`x_bucket{le=..}`, `x_sum`, `x_count`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order the exposition gives them.
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A line of the exposition that is not a sample, a comment or blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a Prometheus text exposition: line {}: {}",
            self.line, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Every sample of a text exposition; comments (`# HELP`, `# TYPE`, ...) and blank lines
/// are skipped, a trailing timestamp is ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        out.push(sample);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// `name[{labels}] value [timestamp]`.
fn parse_line(line: &str) -> Result<Sample, String> {
    let end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..end];
    if !name.starts_with(is_name_start) {
        return Err(format!("expected a metric name at `{}`", excerpt(line)));
    }
    let mut rest = line[end..].trim_start();
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (l, after) = parse_labels(body)?;
        labels = l;
        rest = after.trim_start();
    }
    let mut words = rest.split_ascii_whitespace();
    let value = words
        .next()
        .ok_or_else(|| format!("no value after `{name}`"))?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    if let Some(ts) = words.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("`{ts}` is not a timestamp"));
    }
    if let Some(extra) = words.next() {
        return Err(format!("unexpected `{extra}` after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

type Labels = Vec<(String, String)>;

/// The labels after `{`, up to and including `}`; returns them and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let key = &s[..end];
        if key.is_empty() || !key.starts_with(is_name_start) {
            return Err(format!("expected a label name at `{}`", excerpt(s)));
        }
        s = s[end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label `{key}`"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label `{key}`"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of label `{key}`")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value of label `{key}`")),
            }
        };
        labels.push((key.to_string(), value));
        s = s[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label `{key}`"));
        }
    }
}

/// A sample value: a float, `NaN`, `+Inf`, `-Inf` (Go's spellings, which Rust's parser
/// also takes in other cases).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The start of `s`, for an error message (the rest of a line can be long).
fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Why a scrape failed, as the monitor shows it after "cannot reach URL: ".
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    // reqwest's own message ("error sending request for url (...)") repeats the URL the
    // monitor already shows; the innermost cause ("Connection refused") is the news.
    let mut why = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut source = e.source();
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    if let Some(root) = innermost
        && !why.contains(&root)
    {
        why = format!("{why}: {root}");
    }
    why
}

/// Fetches `url` (the daemon's `/metrics`) and parses it; the error is the text to show
/// after "cannot reach URL: ".
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<Sample>, String> {
    let response = client.get(url).send().await.map_err(|e| describe(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let text = response.text().await.map_err(|e| describe(&e))?;
    parse(&text).map_err(|e| e.to_string())
}

/// A client for scrapes: each gives up after `timeout`, so a hung daemon shows as an
/// error within a refresh or two instead of freezing the view.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .expect("a client without TLS settings builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        let mut s = parse(line).unwrap();
        assert_eq!(s.len(), 1, "{s:?}");
        s.remove(0)
    }

    #[test]
    fn reads_names_labels_and_values() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\n\
                    x_total{category=\"metric\",status=\"OK\"} 42\n\
                    \n\
                    up 1\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("category"), Some("metric"));
        assert_eq!(s[0].label("status"), Some("OK"));
        assert_eq!(s[0].label("nope"), None);
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].name, "up");
        assert!(s[1].labels.is_empty());
    }

    #[test]
    fn reads_escapes_spaces_trailing_commas_and_timestamps() {
        let s = one(r#"m { a = "q\"uo\\te\nx" , b="}{,=" , } 1.5e3 1700000000000"#);
        assert_eq!(
            s.labels,
            vec![
                ("a".to_string(), "q\"uo\\te\nx".to_string()),
                ("b".to_string(), "}{,=".to_string())
            ]
        );
        assert_eq!(s.value, 1500.0);
        assert_eq!(one("m{} 2").value, 2.0);
    }

    #[test]
    fn reads_special_values() {
        assert_eq!(one("m +Inf").value, f64::INFINITY);
        assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
        assert!(one("m NaN").value.is_nan());
        assert_eq!(one("m{le=\"+Inf\"} -0.25").value, -0.25);
    }

    #[test]
    fn names_the_line_it_cannot_read() {
        for (text, needle) in [
            ("ok 1\n<html>", "expected a metric name"),
            ("ok 1\nm", "no value"),
            ("ok 1\nm abc", "not a number"),
            ("ok 1\nm{a=\"x} 1", "unterminated"),
            ("ok 1\nm{a=x} 1", "quoted value"),
            ("ok 1\nm{a=\"x\" b=\"y\"} 1", "expected `,` or `}`"),
            ("ok 1\nm{=\"x\"} 1", "label name"),
            ("ok 1\nm 1 later", "not a timestamp"),
            ("ok 1\nm 1 2 3", "unexpected `3`"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        // Cut points inside multi-byte characters and escapes included.
        let text = "é{ü=\"\\ä\"} 1\nm{a=\"\\\nm{\u{0}} 1\n{}\n\"\n";
        for end in 0..=text.len() {
            if text.is_char_boundary(end) {
                let _ = parse(&text[..end]);
            }
        }
    }
}
