//! The point model and its wire forms: InfluxDB line protocol, and DataKit's protobuf
//! (v2, module [`v2`]).
//!
//! In: request bodies from the ingest server (`parse`, `v2::decode`). Out: line protocol
//! bytes (`Point::encode_into`) or v2 bodies (`v2::encode_batches`) for the endpoints. A
//! point is owned (no borrow of the request body) because it outlives the request: it waits
//! in endpoint queues and, later, in sinker batches.

pub mod dict;
mod keys;
mod lineproto;
pub mod reader;
mod text;
pub mod v2;
mod view;

pub use keys::{KeyPlaces, Noting, Scalar, TagColumn};
pub use lineproto::{
    LineError, ParseErrors, ParseOptions, Precision, encode_points, parse, parse_text,
};
pub use text::{Content, Text};
pub use view::{LineView, ValueAt};

/// One observation: `measurement[,tag=v…] field=v[,field=v…] timestamp`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Measurement name (never empty).
    pub measurement: String,
    /// Tags in the order they were written; values are always strings.
    pub tags: Vec<(String, String)>,
    /// Fields in the order they were written (at least one).
    pub fields: Vec<(String, FieldValue)>,
    /// Timestamp in nanoseconds since the Unix epoch.
    pub time: i64,
}

/// A field's typed value, as line protocol spells it: `1.5`, `1i`, `1u`, `true`, `"s"`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    Uint(u64),
    Bool(bool),
    Str(String),
}

impl Point {
    /// Looks a tag up by key.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Looks a field up by key.
    pub fn field(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// About how much memory this point holds: its inline size plus each heap allocation
    /// rounded up as allocators do (16-byte classes, plus a header). Measured against RSS
    /// for a typical metric point this is within a few percent; a plain sum of string
    /// lengths underestimated by 1.7x. A 6-byte line such as `a v=1` costs ~200 bytes here,
    /// which is why memory is budgeted by this and not by body bytes.
    pub fn memory_size(&self) -> usize {
        fn alloc(n: usize) -> usize {
            if n == 0 { 0 } else { n.div_ceil(16) * 16 + 16 }
        }
        let tags: usize = self
            .tags
            .iter()
            .map(|(k, v)| alloc(k.len()) + alloc(v.len()))
            .sum();
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| {
                alloc(k.len())
                    + match v {
                        FieldValue::Str(s) => alloc(s.len()),
                        _ => 0,
                    }
            })
            .sum();
        std::mem::size_of::<Point>()
            + alloc(self.measurement.len())
            + alloc(std::mem::size_of_val(self.tags.as_slice()))
            + alloc(std::mem::size_of_val(self.fields.as_slice()))
            + tags
            + fields
    }
}
