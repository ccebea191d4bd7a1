//! Data categories: the kinds of points a Dataway server accepts, each with its own write path.
//!
//! The table is DataKit's (`protocol.md`): a category has a name (used as the `category`
//! metric label), a one- or two-letter alias used in configs (`M`, `L`, `CO`, …) and a write
//! path `/v1/write/<name>`.

use std::fmt;
use std::str::FromStr;

/// One category of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Metric,
    Network,
    KeyEvent,
    Object,
    CustomObject,
    Logging,
    Tracing,
    Rum,
    Security,
    Profiling,
}

impl Category {
    /// Every category, in DataKit's table order.
    pub const ALL: [Category; 10] = [
        Category::Metric,
        Category::Network,
        Category::KeyEvent,
        Category::Object,
        Category::CustomObject,
        Category::Logging,
        Category::Tracing,
        Category::Rum,
        Category::Security,
        Category::Profiling,
    ];

    /// The name: the `category` metric label and the last segment of the write path.
    pub const fn name(self) -> &'static str {
        match self {
            Category::Metric => "metric",
            Category::Network => "network",
            Category::KeyEvent => "keyevent",
            Category::Object => "object",
            Category::CustomObject => "custom_object",
            Category::Logging => "logging",
            Category::Tracing => "tracing",
            Category::Rum => "rum",
            Category::Security => "security",
            Category::Profiling => "profiling",
        }
    }

    /// The short alias DataKit configs use (`M`, `CO`, …).
    pub const fn alias(self) -> &'static str {
        match self {
            Category::Metric => "M",
            Category::Network => "N",
            Category::KeyEvent => "E",
            Category::Object => "O",
            Category::CustomObject => "CO",
            Category::Logging => "L",
            Category::Tracing => "T",
            Category::Rum => "R",
            Category::Security => "S",
            Category::Profiling => "P",
        }
    }

    /// The Dataway write path, e.g. `/v1/write/metric`.
    pub const fn write_path(self) -> &'static str {
        match self {
            Category::Metric => "/v1/write/metric",
            Category::Network => "/v1/write/network",
            Category::KeyEvent => "/v1/write/keyevent",
            Category::Object => "/v1/write/object",
            Category::CustomObject => "/v1/write/custom_object",
            Category::Logging => "/v1/write/logging",
            Category::Tracing => "/v1/write/tracing",
            Category::Rum => "/v1/write/rum",
            Category::Security => "/v1/write/security",
            Category::Profiling => "/v1/write/profiling",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a string that names no category.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown category `{0}`: use a name (metric, network, keyevent, object, custom_object, \
     logging, tracing, rum, security, profiling) or an alias (M, N, E, O, CO, L, T, R, S, P)"
)]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    /// Accepts the name, the alias, the deprecated `metrics`, or a full write path
    /// (`/v1/write/metric`). Names and aliases are matched exactly, as DataKit does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.strip_prefix("/v1/write/").unwrap_or(s);
        if key == "metrics" {
            return Ok(Category::Metric);
        }
        Category::ALL
            .into_iter()
            .find(|c| c.name() == key || c.alias() == key)
            .ok_or_else(|| UnknownCategory(s.to_string()))
    }
}

impl serde::Serialize for Category {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Category {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_paths_follow_datakit_table() {
        let table = [
            ("metric", "M", "/v1/write/metric"),
            ("network", "N", "/v1/write/network"),
            ("keyevent", "E", "/v1/write/keyevent"),
            ("object", "O", "/v1/write/object"),
            ("custom_object", "CO", "/v1/write/custom_object"),
            ("logging", "L", "/v1/write/logging"),
            ("tracing", "T", "/v1/write/tracing"),
            ("rum", "R", "/v1/write/rum"),
            ("security", "S", "/v1/write/security"),
            ("profiling", "P", "/v1/write/profiling"),
        ];
        // zip stops at the shorter: a category missing from either list would go unchecked.
        assert_eq!(Category::ALL.len(), table.len());
        for (c, (name, alias, path)) in Category::ALL.into_iter().zip(table) {
            assert_eq!(c.name(), name);
            assert_eq!(c.alias(), alias);
            assert_eq!(c.write_path(), path);
            assert_eq!(name.parse::<Category>().unwrap(), c);
            assert_eq!(alias.parse::<Category>().unwrap(), c);
            assert_eq!(path.parse::<Category>().unwrap(), c);
        }
        assert_eq!("metrics".parse::<Category>().unwrap(), Category::Metric);
    }

    #[test]
    fn unknown_category_says_what_is_accepted() {
        let err = "metricz".parse::<Category>().unwrap_err().to_string();
        assert!(err.contains("`metricz`") && err.contains("custom_object") && err.contains("CO"));
        assert!(
            "m".parse::<Category>().is_err(),
            "aliases are case-sensitive"
        );
    }
}
