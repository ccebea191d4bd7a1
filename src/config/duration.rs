//! Durations in the config (`30s`, `500ms`, `1m`, `12h`), read with humantime and refused
//! with an example of how to write one: serde's own message ("invalid value") does not say.

use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer, de};

const EXPECTED: &str = "a duration like `30s`, `500ms` or `1m`";

/// Parses a duration; the error shows the value and how to write one.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write {EXPECTED}"))
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        parse(s).map_err(E::custom)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(Visitor)
}

pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*v))
}

/// For `Option<Duration>` keys with `#[serde(default)]`: absent is `None`.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}
