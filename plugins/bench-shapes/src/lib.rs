//! Benchmark fixture for `benches/sinker.rs`: one hand-written rule,
//! `measurement == "cpu" && tag host in {"web-1", "web-2"} && field usage (float) > 90`,
//! evaluated through each shape of the `batch` API so the bench can compare them.
//!
//! Config (one word) picks the shape:
//! - `empty`: `vec![false; len]` without reading anything: the cost of the call itself;
//! - `columnar`: `measurements()`, `tag-column("host")`, `field-column("usage")`; the
//!   string columns are dictionary-encoded, so the predicate runs once per distinct value
//!   and is then looked up per point;
//! - `per-point`: `measurements()` once (the only way to read a measurement), then
//!   `tags(i)` and, if the host matched, `fields(i)`, point by point, as `&&` short-circuits:
//!   one host call per candidate point;
//! - `per-point-full`: `tags(i)` and `fields(i)` for every point, as an evaluator that
//!   builds each point before looking at it would.

use std::cell::Cell;

wit_bindgen::generate!({ world: "sinker", path: "../../wit" });

use dataway::sinker::types::FieldValue;

#[derive(Clone, Copy)]
enum Shape {
    Empty,
    Columnar,
    PerPoint,
    PerPointFull,
}

thread_local! {
    /// Set by `init`; a plugin instance is single-threaded.
    static SHAPE: Cell<Shape> = const { Cell::new(Shape::Empty) };
}

fn is_cpu(m: Option<&str>) -> bool {
    m == Some("cpu")
}

fn is_web12(h: &str) -> bool {
    h == "web-1" || h == "web-2"
}

/// The field clause: a float above 90 (the rule names a float field).
fn is_hot(v: Option<&FieldValue>) -> bool {
    matches!(v, Some(FieldValue::Float(f)) if *f > 90.0)
}

fn columnar(points: &Batch, n: usize) -> Vec<bool> {
    let m = points.measurements();
    let m_ok: Vec<bool> = m.dict.iter().map(|v| is_cpu(v.as_deref())).collect();
    if !m_ok.contains(&true) {
        return vec![false; n];
    }
    let h = points.tag_column("host");
    let h_ok: Vec<bool> = h
        .dict
        .iter()
        .map(|v| v.as_deref().is_some_and(is_web12))
        .collect();
    if !h_ok.contains(&true) {
        return vec![false; n];
    }
    let usage = points.field_column("usage");
    (0..n)
        .map(|i| {
            m_ok[m.index[i] as usize] && h_ok[h.index[i] as usize] && is_hot(usage[i].as_ref())
        })
        .collect()
}

fn host_ok(tags: &[(String, String)]) -> bool {
    tags.iter().any(|(k, v)| k == "host" && is_web12(v))
}

fn usage_hot(fields: &[(String, FieldValue)]) -> bool {
    is_hot(fields.iter().find(|(k, _)| k == "usage").map(|(_, v)| v))
}

fn per_point(points: &Batch, n: usize, full: bool) -> Vec<bool> {
    let m = points.measurements();
    (0..n)
        .map(|i| {
            let cpu = is_cpu(m.dict[m.index[i] as usize].as_deref());
            if full {
                let (tags, fields) = (points.tags(i as u32), points.fields(i as u32));
                return cpu && host_ok(&tags) && usage_hot(&fields);
            }
            cpu && host_ok(&points.tags(i as u32)) && usage_hot(&points.fields(i as u32))
        })
        .collect()
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let shape = match config.trim() {
            "empty" => Shape::Empty,
            "columnar" => Shape::Columnar,
            "per-point" => Shape::PerPoint,
            "per-point-full" => Shape::PerPointFull,
            other => {
                return Err(format!(
                    "unknown shape `{other}`: use empty, columnar, per-point or per-point-full"
                ));
            }
        };
        SHAPE.with(|s| s.set(shape));
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        let n = points.len() as usize;
        match SHAPE.with(Cell::get) {
            Shape::Empty => vec![false; n],
            Shape::Columnar => columnar(points, n),
            Shape::PerPoint => per_point(points, n, false),
            Shape::PerPointFull => per_point(points, n, true),
        }
    }
}

export!(Plugin);
