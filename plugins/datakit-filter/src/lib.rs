//! `datakit-filter`: a sinker condition that evaluates DataKit filter strings, so the sinker
//! rules of a DataKit configuration work here unchanged:
//!
//! ```text
//! { measurement = 'cpu' and host in ['web-1', 'web-2'] }; { source = 'nginx', status >= 500 }
//! ```
//!
//! Config (the string `init` gets), one of:
//! - a JSON array of filter strings: `["{ a = 1 }", "{ b = 2 }"]` (what a TOML array becomes);
//! - a JSON object `{"filters": [...]}` (what a TOML table becomes);
//! - otherwise the string itself is one filter string.
//!
//! A point matches when any group of any filter string matches; an empty list of filters
//! matches every point. The language is [`parser`]'s, the semantics [`eval`]'s.
//!
//! Build: `cargo build --release --target wasm32-wasip2` in `plugins/` gives
//! `target/wasm32-wasip2/release/datakit_filter.wasm`. `cargo test -p datakit-filter` tests the
//! engine natively.

pub mod eval;
pub mod parser;

#[cfg(target_arch = "wasm32")]
mod guest;

pub use eval::{
    Columns, FieldColumn, KeyCount, MAX_COUNTED_KEYS, Masked, Program, StringColumn, Value,
};

/// An example config, for error messages.
const EXAMPLE: &str = r#"["{ measurement = 'cpu' and host in ['web-1', 'web-2'] }"]"#;

/// Reads the config string into the filter strings it lists.
pub fn filter_strings(config: &str) -> Result<Vec<String>, String> {
    let trimmed = config.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "datakit-filter needs filters, e.g. config = {EXAMPLE} \
             (a sinker without a plugin already matches every point)"
        ));
    }
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed).map_err(|e| {
            format!("config looks like a JSON array but is not a list of filter strings: {e}")
        });
    }
    if trimmed.starts_with('{') {
        // Either {"filters": [...]} or a filter string: a filter string is never valid JSON.
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(trimmed) {
            if let Some(k) = map.keys().find(|k| *k != "filters") {
                return Err(format!(
                    "unknown config key {k:?}: the config object takes only \"filters\""
                ));
            }
            let Some(list) = map.get("filters") else {
                return Err(format!(
                    "the config object needs a \"filters\" list, e.g. {{\"filters\": {EXAMPLE}}}"
                ));
            };
            return serde_json::from_value::<Vec<String>>(list.clone())
                .map_err(|e| format!("\"filters\" must be a list of filter strings: {e}"));
        }
    }
    Ok(vec![config.to_string()])
}

/// Reads and compiles a config. Errors name the filter, quote it and give the position.
pub fn compile_config(config: &str) -> Result<Program, String> {
    let strings = filter_strings(config)?;
    let one = strings.len() == 1;
    let name = |i: usize| {
        if one {
            format!("filter {:?}", strings[i])
        } else {
            format!("filter #{} of {} {:?}", i + 1, strings.len(), strings[i])
        }
    };
    let mut filters = Vec::with_capacity(strings.len());
    for (i, s) in strings.iter().enumerate() {
        let f = parser::parse(s).map_err(|e| {
            let mut msg = format!("{}: {e}", name(i));
            // A config object with a JSON mistake falls through to here as a filter string.
            if one
                && s.trim_start().starts_with("{\"")
                && let Err(je) = serde_json::from_str::<serde_json::Value>(s)
            {
                msg.push_str(&format!(" (nor is the config valid JSON: {je})"));
            }
            msg
        })?;
        filters.push(f);
    }
    Program::compile(&filters).map_err(|(i, e)| format!("{}: {e}", name(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_forms() {
        let ok: &[(&str, &[&str])] = &[
            (r#"["{ a = 1 }", "{ b = 2 }"]"#, &["{ a = 1 }", "{ b = 2 }"]),
            (r#"  [ "{ a = 1 }" ] "#, &["{ a = 1 }"]),
            ("[]", &[]),
            (r#"{"filters": ["{ a = 1 }"]}"#, &["{ a = 1 }"]),
            (r#"{"filters": []}"#, &[]),
            ("{ a = 1 }", &["{ a = 1 }"]),
            ("{ a = 1 }; { b = 2 }", &["{ a = 1 }; { b = 2 }"]),
            ("# c\n{ a = 1 }", &["# c\n{ a = 1 }"]),
        ];
        for (cfg, want) in ok {
            let got = filter_strings(cfg).unwrap_or_else(|e| panic!("{cfg}: {e}"));
            assert_eq!(got, *want, "{cfg}");
        }
    }

    #[test]
    fn config_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "datakit-filter needs filters, e.g. config = "),
            ("  \n", "datakit-filter needs filters"),
            ("{}", "the config object needs a \"filters\" list"),
            (
                "[1, 2]",
                "config looks like a JSON array but is not a list of filter strings",
            ),
            ("[\"{ a = 1 }\"", "config looks like a JSON array"),
            (
                r#"{"filter": ["{ a = 1 }"]}"#,
                "unknown config key \"filter\"",
            ),
            (
                r#"{"filters": "{ a = 1 }"}"#,
                "\"filters\" must be a list of filter strings",
            ),
            (
                r#"{"filters": ["{ a = 1 }",]}"#,
                "filter \"{\\\"filters\\\": [\\\"{ a = 1 }\\\",]}\": line 1 col 2: expected a condition (key op value), found string \"filters\" (nor is the config valid JSON: ",
            ),
            (
                "{ measurement = }",
                "filter \"{ measurement = }\": line 1 col 17: expected value after '=', found '}'",
            ),
            (
                r#"["{ a = 1 }", "{ b = }"]"#,
                "filter #2 of 2 \"{ b = }\": line 1 col 7: expected value after '=', found '}'",
            ),
            (
                "{ a match ['x', '(y'] }",
                "filter \"{ a match ['x', '(y'] }\": line 1 col 17: invalid regex \"(y\": unclosed group",
            ),
            (
                r#"["{ a = 1 }", "{ b = re('[z') }"]"#,
                "filter #2 of 2 \"{ b = re('[z') }\": line 1 col 10: invalid regex \"[z\": unclosed character class",
            ),
        ];
        for (cfg, want) in cases {
            match compile_config(cfg) {
                Ok(p) => panic!("{cfg:?} compiled: {p:?}"),
                Err(e) => assert!(e.starts_with(want), "{cfg:?}:\n got  {e}\n want {want}…"),
            }
        }
    }

    #[test]
    fn summaries() {
        let cases: &[(&str, &str)] = &[
            ("[]", "no filters: every point matches"),
            ("{ a = 1 }", "1 filter, 1 group, 1 condition on 1 key"),
            (
                r#"["{ a = 1 and b = 2 }; { a > 3 }", "{ c in [1] }"]"#,
                "2 filters, 3 groups, 4 conditions on 3 keys",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(compile_config(cfg).unwrap().summary(), *want, "{cfg}");
        }
    }
}
