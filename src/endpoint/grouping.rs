//! DataKit's server-side sinker routing (`enable_sinker` + `global_customer_keys`): the
//! points of a batch are grouped by their values of the routing keys, and each group is
//! sent in bodies of its own carrying an `X-Global-Tags` header, by which the Dataway
//! server routes them.
//!
//! In: a category and its points (from the router, once per batch, before the batch is
//! queued, where DataKit groups in `Dataway.Write`). Out: the points reordered so that each
//! group is contiguous, and one [`Group`] per run with its header; the endpoints encode
//! each run into bodies of its own ([`bodies`]) and the header travels with the body
//! through retries and the fail-cache.
//!
//! The header value is DataKit's (`internal/io/dataway/ptgroup.go`), built per point:
//! - the point's keys with a string value (tags, and string fields) that are a routing key
//!   (`global_customer_keys` or `global_tag_keys`), as `key=value`: fields first, then tags
//!   (DataKit's line-protocol parser orders a point's keys so: fields, then tags sorted by
//!   key; its fields come in random order, here they are sorted too, so that equal values
//!   always make equal groups);
//! - then the keys DataKit adds for routing, if they are routing keys: `category=<name>`
//!   always; `source=<measurement>` for logging, network, keyevent and rum;
//!   `measurement=<measurement>` for metric; `class=<measurement>` for object and
//!   custom_object; nothing more for tracing, security and profiling;
//! - joined with `,`, nothing escaped (`v1`), or each key and value URL-encoded like Go's
//!   `url.QueryEscape` in the `X-Global-Tags-V2` header (`v2`).
//!
//! A missing key is left out; an empty value is kept (`key=`); a key listed twice (a point
//! tag `category` and the added one) appears twice, as in DataKit. Points with none of the
//! keys form the group with the empty value, sent with an empty header as DataKit does.

use std::collections::HashMap;
use std::ops::Range;

use reqwest::header::{HeaderName, HeaderValue};

use super::Body;
use crate::category::Category;
use crate::config::{DatawayConfig, SinkerHeaderVersion};
use crate::point::{FieldValue, Point};

/// DataKit's `X-Global-Tags`.
pub const HEADER_V1: &str = "x-global-tags";
/// DataKit's `X-Global-Tags-V2` (`sinker_header_version = "v2"`).
pub const HEADER_V2: &str = "x-global-tags-v2";

/// Groups points by their routing keys' values. Exists only when the routing is on.
#[derive(Debug, Clone)]
pub struct Grouper {
    /// `global_customer_keys` then `global_tag_keys`: a key is a routing key if it is in
    /// either list (DataKit looks in both; the value is the point's either way).
    keys: Vec<String>,
    version: SinkerHeaderVersion,
}

/// A run of points sharing one header value.
#[derive(Debug, Clone)]
pub struct Group {
    /// The run's place in the batch's points.
    pub points: Range<usize>,
    /// The header the run's bodies carry.
    pub header: (HeaderName, HeaderValue),
}

/// Points grouped by [`Grouper::group`].
#[derive(Debug)]
pub struct Grouped {
    /// Every point that can be sent, each group contiguous, in the order groups first
    /// appear; within a group, in the order written.
    pub points: Vec<Point>,
    pub groups: Vec<Group>,
    /// Points whose header value a header cannot carry (a control character in a `v1`
    /// value): DataKit's request fails and the body is dropped; here they are dropped and
    /// counted before they are queued. The first offending value, for the log.
    pub invalid: Option<(usize, String)>,
}

impl Grouper {
    /// The grouper `[dataway]` asks for: `None` unless `enable_sinker` is on and some
    /// routing key is given (DataKit's `sinkEnabled`).
    pub fn from_config(d: &DatawayConfig) -> Option<Grouper> {
        if !d.enable_sinker || (d.global_customer_keys.is_empty() && d.global_tag_keys.is_empty()) {
            return None;
        }
        let mut keys: Vec<String> = Vec::new();
        for k in d.global_customer_keys.iter().chain(&d.global_tag_keys) {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        Some(Grouper {
            keys,
            version: d.sinker_header_version,
        })
    }

    /// The header name the groups are labelled with.
    pub fn header_name(&self) -> HeaderName {
        HeaderName::from_static(match self.version {
            SinkerHeaderVersion::V1 => HEADER_V1,
            SinkerHeaderVersion::V2 => HEADER_V2,
        })
    }

    fn routes(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// The header value of one point (see the module doc).
    pub fn header_value(&self, category: Category, p: &Point) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut fields: Vec<(&str, &str)> = p
            .fields
            .iter()
            .filter_map(|(k, v)| match v {
                FieldValue::Str(s) if self.routes(k) => Some((k.as_str(), s.as_str())),
                _ => None,
            })
            .collect();
        fields.sort_by_key(|&(k, _)| k);
        pairs.extend(fields);
        let mut tags: Vec<(&str, &str)> = p
            .tags
            .iter()
            .filter(|(k, _)| self.routes(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tags.sort_by_key(|&(k, _)| k);
        pairs.extend(tags);
        for (k, v) in added_keys(category, &p.measurement) {
            if self.routes(k) {
                pairs.push((k, v));
            }
        }
        let mut out = String::new();
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match self.version {
                SinkerHeaderVersion::V1 => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(v);
                }
                SinkerHeaderVersion::V2 => {
                    query_escape(k, &mut out);
                    out.push('=');
                    query_escape(v, &mut out);
                }
            }
        }
        out
    }

    /// Groups `points` by header value (see [`Grouped`]).
    pub fn group(&self, category: Category, points: Vec<Point>) -> Grouped {
        let name = self.header_name();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut runs: Vec<(HeaderValue, Vec<Point>)> = Vec::new();
        let mut invalid: Option<(usize, String)> = None;
        for p in points {
            let value = self.header_value(category, &p);
            if let Some(&i) = index.get(&value) {
                runs[i].1.push(p);
                continue;
            }
            match HeaderValue::from_bytes(value.as_bytes()) {
                Ok(hv) => {
                    index.insert(value, runs.len());
                    runs.push((hv, vec![p]));
                }
                Err(_) => {
                    let (n, _) = invalid.get_or_insert((0, value));
                    *n += 1;
                }
            }
        }
        let mut groups = Vec::with_capacity(runs.len());
        let mut all = Vec::with_capacity(runs.iter().map(|r| r.1.len()).sum());
        for (value, pts) in runs {
            let start = all.len();
            all.extend(pts);
            groups.push(Group {
                points: start..all.len(),
                header: (name.clone(), value),
            });
        }
        Grouped {
            points: all,
            groups,
            invalid,
        }
    }
}

/// The keys DataKit adds to a point for routing (`setExtraKVs`), by category.
fn added_keys(category: Category, measurement: &str) -> Vec<(&'static str, &str)> {
    let mut out = vec![("category", category.name())];
    match category {
        Category::Logging | Category::Network | Category::KeyEvent | Category::Rum => {
            out.push(("source", measurement));
        }
        Category::Metric => out.push(("measurement", measurement)),
        Category::Object | Category::CustomObject => out.push(("class", measurement)),
        Category::Tracing | Category::Security | Category::Profiling => {}
    }
    out
}

/// Go's `url.QueryEscape`: everything but ASCII letters, digits and `-_.~` as `%XX`
/// (upper-case hex), a space as `+`. (The `form_urlencoded` crate differs on `*` and `~`.)
fn query_escape(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

/// Encodes a batch into bodies: with no groups, `build` over all the points; else `build`
/// over each group's run, each body labelled with its group's header.
pub fn bodies(
    points: &[Point],
    groups: &[Group],
    build: impl Fn(&[Point]) -> Vec<Body>,
) -> Vec<Body> {
    if groups.is_empty() {
        return build(points);
    }
    let mut out = Vec::new();
    for g in groups {
        let mut these = build(&points[g.points.clone()]);
        for b in &mut these {
            b.headers.push(g.header.clone());
        }
        out.extend(these);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouper(customer: &[&str], global: &[&str], version: SinkerHeaderVersion) -> Grouper {
        let d = DatawayConfig {
            enable_sinker: true,
            global_customer_keys: customer.iter().map(|s| s.to_string()).collect(),
            global_tag_keys: global.iter().map(|s| s.to_string()).collect(),
            sinker_header_version: version,
            ..DatawayConfig::default()
        };
        Grouper::from_config(&d).expect("routing on")
    }

    /// A point as DataKit's tests build it: `f1=false` and these tags.
    fn pt(tags: &[(&str, &str)]) -> Point {
        Point {
            measurement: "some".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: vec![("f1".into(), FieldValue::Bool(false))],
            time: 0,
        }
    }

    /// Group value -> number of points, as DataKit's tests look at `groupedPts`.
    fn groups(g: &Grouper, c: Category, pts: Vec<Point>) -> HashMap<String, usize> {
        let out = g.group(c, pts);
        assert!(out.invalid.is_none());
        out.groups
            .iter()
            .map(|gr| (gr.header.1.to_str().unwrap().to_string(), gr.points.len()))
            .collect()
    }

    #[test]
    fn off_without_enable_sinker_or_without_keys() {
        let mut d = DatawayConfig {
            global_customer_keys: vec!["app".into()],
            ..DatawayConfig::default()
        };
        assert!(Grouper::from_config(&d).is_none());
        d.enable_sinker = true;
        assert!(Grouper::from_config(&d).is_some());
        d.global_customer_keys.clear();
        assert!(Grouper::from_config(&d).is_none());
        d.global_tag_keys = vec!["host".into()];
        assert!(Grouper::from_config(&d).is_some());
    }

    // The cases of DataKit's `TestGroupPoint` (internal/io/dataway/ptgroup_test.go).

    #[test]
    fn datakit_duplicate_keys() {
        let g = grouper(&["category"], &[], SinkerHeaderVersion::V1);
        let got = groups(&g, Category::Security, vec![pt(&[("category", "system")])]);
        assert_eq!(got.get("category=system,category=security"), Some(&1));
    }

    #[test]
    fn datakit_customer_keys() {
        let keys = [
            "class", "tag2", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8",
        ];
        let g = grouper(&keys, &[], SinkerHeaderVersion::V1);
        let mut first: Vec<(&str, &str)> = ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"]
            .iter()
            .map(|k| (*k, "v1"))
            .collect();
        first.push(("tag1", "new-value"));
        let pts = vec![
            pt(&first),
            pt(&[("t1", "v1")]),
            pt(&[("t1", "v1"), ("tag2", "new-value")]),
            pt(&[("message", "ns1"), ("tag2", "new-value")]),
            pt(&[]),
        ];
        let got = groups(&g, Category::Object, pts);
        for k in [
            "t1=v1,t2=v1,t3=v1,t4=v1,t5=v1,t6=v1,t7=v1,t8=v1,class=some",
            "t1=v1,class=some",
            "t1=v1,tag2=new-value,class=some",
            "tag2=new-value,class=some",
            "class=some",
        ] {
            assert_eq!(got.get(k), Some(&1), "{k} in {got:?}");
        }
    }

    #[test]
    fn datakit_basic_global_tags() {
        let g = grouper(
            &["namespace", "app"],
            &["tag1", "tag2"],
            SinkerHeaderVersion::V1,
        );
        let pts = vec![
            pt(&[("t1", "v1"), ("tag1", "new-value")]),
            pt(&[("t1", "v1")]),
            pt(&[("t1", "v1"), ("tag2", "new-value")]),
            pt(&[]),
        ];
        let got = groups(&g, Category::Metric, pts);
        assert_eq!(got.get("tag1=new-value"), Some(&1));
        assert_eq!(got.get("tag2=new-value"), Some(&1));
        assert_eq!(got.get(""), Some(&2));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn datakit_no_global_tags() {
        let g = grouper(&["namespace", "app"], &[], SinkerHeaderVersion::V1);
        let pts = vec![
            pt(&[("t1", "v1"), ("tag1", "new-value")]),
            pt(&[("t2", "v4")]),
            pt(&[("t1", "v1"), ("tag2", "new-value")]),
            pt(&[("namespace", "ns1"), ("tag2", "new-value")]),
            pt(&[]),
        ];
        let got = groups(&g, Category::Logging, pts);
        assert_eq!(got.get("namespace=ns1"), Some(&1));
        assert_eq!(got.get(""), Some(&4));
    }

    #[test]
    fn datakit_no_global_tags_on_object() {
        let g = grouper(&["class"], &[], SinkerHeaderVersion::V1);
        let pts = vec![pt(&[("t1", "v1")]), pt(&[("namespace", "ns1")]), pt(&[])];
        let got = groups(&g, Category::Object, pts);
        assert_eq!(got.get("class=some"), Some(&3));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn string_fields_route_other_fields_do_not_and_fields_come_before_tags() {
        let g = grouper(&["app", "n", "zone"], &[], SinkerHeaderVersion::V1);
        let p = Point {
            measurement: "m".into(),
            tags: vec![("zone".into(), "z1".into()), ("app".into(), "".into())],
            fields: vec![
                ("n".into(), FieldValue::Int(3)),
                ("app".into(), FieldValue::Str("a b".into())),
            ],
            time: 0,
        };
        // The empty tag value is kept; the int field is not a value DataKit groups by.
        assert_eq!(
            g.header_value(Category::Tracing, &p),
            "app=a b,app=,zone=z1"
        );
    }

    #[test]
    fn added_keys_by_category() {
        let g = grouper(
            &["source", "measurement", "class"],
            &[],
            SinkerHeaderVersion::V1,
        );
        let p = pt(&[]);
        let cases = [
            (Category::Logging, "source=some"),
            (Category::Network, "source=some"),
            (Category::KeyEvent, "source=some"),
            (Category::Rum, "source=some"),
            (Category::Metric, "measurement=some"),
            (Category::Object, "class=some"),
            (Category::CustomObject, "class=some"),
            (Category::Tracing, ""),
            (Category::Security, ""),
            (Category::Profiling, ""),
        ];
        for (c, want) in cases {
            assert_eq!(g.header_value(c, &p), want, "{c}");
        }
    }

    #[test]
    fn v2_escapes_like_go_query_escape() {
        let g = grouper(&["env", "k y"], &[], SinkerHeaderVersion::V2);
        let p = pt(&[("env", "prod,cn=1 *~é"), ("k y", "-_.")]);
        assert_eq!(g.header_name(), HEADER_V2);
        // Go: url.QueryEscape("prod,cn=1 *~é") == "prod%2Ccn%3D1+%2A~%C3%A9"
        assert_eq!(
            g.header_value(Category::Tracing, &p),
            "env=prod%2Ccn%3D1+%2A~%C3%A9,k+y=-_."
        );
    }

    #[test]
    fn groups_are_contiguous_in_first_appearance_order_and_keep_point_order() {
        let g = grouper(&["app"], &[], SinkerHeaderVersion::V1);
        let pts: Vec<Point> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, app)| {
                let mut p = pt(&[("app", app)]);
                p.time = i as i64;
                p
            })
            .collect();
        let out = g.group(Category::Tracing, pts);
        let times: Vec<i64> = out.points.iter().map(|p| p.time).collect();
        assert_eq!(times, vec![0, 2, 5, 1, 4, 3]);
        let runs: Vec<(String, Range<usize>)> = out
            .groups
            .iter()
            .map(|g| (g.header.1.to_str().unwrap().to_string(), g.points.clone()))
            .collect();
        assert_eq!(
            runs,
            vec![
                ("app=a".to_string(), 0..3),
                ("app=b".to_string(), 3..5),
                ("app=c".to_string(), 5..6)
            ]
        );
    }

    #[test]
    fn a_value_a_header_cannot_carry_is_dropped_and_reported() {
        let g = grouper(&["app"], &[], SinkerHeaderVersion::V1);
        let out = g.group(
            Category::Tracing,
            vec![pt(&[("app", "a\u{1}b")]), pt(&[("app", "ok")])],
        );
        assert_eq!(out.points.len(), 1);
        assert_eq!(out.invalid, Some((1, "app=a\u{1}b".to_string())));
        // v2 escapes it instead.
        let g = grouper(&["app"], &[], SinkerHeaderVersion::V2);
        let out = g.group(Category::Tracing, vec![pt(&[("app", "a\u{1}b")])]);
        assert!(out.invalid.is_none());
        assert_eq!(out.groups[0].header.1, "app=a%01b");
    }
}
