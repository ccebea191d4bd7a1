//! Benchmark fixture. The rule `measurement == "cpu" && host in {web-1, web-2} && usage > 90`
//! written by hand, reading the batch one of two ways, so the bench can compare them:
//!
//! - `columnar`: one host call per column (`measurements`, `tag-column`, `field-column`);
//!   strings dictionary-encoded;
//! - `per-point`: one `tags(i)` and `fields(i)` call per point;
//! - `empty`: reads nothing and matches nothing (the cost of the call itself).

use std::cell::Cell;

wit_bindgen::generate!({ world: "sinker", path: "../../wit" });

use dataway::sinker::types::FieldValue;

#[derive(Clone, Copy)]
enum Shape {
    Empty,
    Columnar,
    PerPoint,
}

thread_local! {
    static SHAPE: Cell<Shape> = const { Cell::new(Shape::Empty) };
}

fn hot(v: Option<&FieldValue>) -> bool {
    match v {
        Some(FieldValue::Float(f)) => *f > 90.0,
        Some(FieldValue::Int(i)) => *i > 90,
        Some(FieldValue::Uint(u)) => *u > 90,
        _ => false,
    }
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let shape = match config.as_str() {
            "empty" => Shape::Empty,
            "columnar" => Shape::Columnar,
            "per-point" => Shape::PerPoint,
            other => return Err(format!("unknown shape `{other}`")),
        };
        SHAPE.with(|s| s.set(shape));
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        let n = points.len() as usize;
        match SHAPE.with(Cell::get) {
            Shape::Empty => vec![false; n],
            Shape::Columnar => {
                let m = points.measurements();
                let m_ok: Vec<bool> = m.dict.iter().map(|v| v.as_deref() == Some("cpu")).collect();
                let h = points.tag_column("host");
                let h_ok: Vec<bool> = h
                    .dict
                    .iter()
                    .map(|v| matches!(v.as_deref(), Some("web-1" | "web-2")))
                    .collect();
                let usage = points.field_column("usage");
                (0..n)
                    .map(|i| {
                        m_ok[m.index[i] as usize]
                            && h_ok[h.index[i] as usize]
                            && hot(usage[i].as_ref())
                    })
                    .collect()
            }
            Shape::PerPoint => {
                let m = points.measurements();
                (0..n)
                    .map(|i| {
                        if m.dict[m.index[i] as usize].as_deref() != Some("cpu") {
                            return false;
                        }
                        let tags = points.tags(i as u32);
                        let host_ok = tags
                            .iter()
                            .any(|(k, v)| k == "host" && (v == "web-1" || v == "web-2"));
                        host_ok && {
                            let fields = points.fields(i as u32);
                            hot(fields.iter().find(|(k, _)| k == "usage").map(|(_, v)| v))
                        }
                    })
                    .collect()
            }
        }
    }
}

export!(Plugin);
