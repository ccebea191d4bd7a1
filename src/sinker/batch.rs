//! The `batch` resource of the WIT contract: points the host lends to a plugin for one call.
//!
//! In: an `Arc` of the points being routed (no copy). Out: the columns a plugin asks for,
//! built on demand; string columns are dictionary-encoded so each distinct value crosses
//! into the guest once (a guest allocation per string is what dominates the call cost).

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::Resource;

use super::plugin::StoreState;
use super::plugin::bindings::dataway::sinker::types::{
    FieldValue as WitValue, Host, HostBatch, StringColumn,
};
use crate::category::Category;
use crate::point::{FieldValue, Point};

/// What a `batch` handle points at in a store's resource table.
pub struct PointBatch {
    pub category: Category,
    pub points: Arc<Vec<Point>>,
}

impl PointBatch {
    fn string_column<'a>(&'a self, value: impl Fn(&'a Point) -> Option<&'a str>) -> StringColumn {
        let mut dict: Vec<Option<String>> = Vec::new();
        let mut seen: HashMap<Option<&str>, u32> = HashMap::new();
        let index = self
            .points
            .iter()
            .map(|p| {
                let v = value(p);
                *seen.entry(v).or_insert_with(|| {
                    dict.push(v.map(String::from));
                    (dict.len() - 1) as u32
                })
            })
            .collect();
        StringColumn { dict, index }
    }
}

fn to_wit(v: &FieldValue) -> WitValue {
    match v {
        FieldValue::Float(f) => WitValue::Float(*f),
        FieldValue::Int(i) => WitValue::Int(*i),
        FieldValue::Uint(u) => WitValue::Uint(*u),
        FieldValue::Bool(b) => WitValue::Boolean(*b),
        FieldValue::Str(s) => WitValue::Str(s.clone()),
    }
}

fn distinct_keys<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
    }
    out
}

impl Host for StoreState {}

impl HostBatch for StoreState {
    fn len(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&b)?.points.len() as u32)
    }

    fn category(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<String> {
        Ok(self.table.get(&b)?.category.name().to_string())
    }

    fn measurements(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<StringColumn> {
        Ok(self
            .table
            .get(&b)?
            .string_column(|p| Some(p.measurement.as_str())))
    }

    fn times(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<i64>> {
        Ok(self.table.get(&b)?.points.iter().map(|p| p.time).collect())
    }

    fn tag_column(
        &mut self,
        b: Resource<PointBatch>,
        key: String,
    ) -> wasmtime::Result<StringColumn> {
        let batch = self.table.get(&b)?;
        Ok(batch.string_column(|p| {
            p.tags
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        }))
    }

    fn field_column(
        &mut self,
        b: Resource<PointBatch>,
        key: String,
    ) -> wasmtime::Result<Vec<Option<WitValue>>> {
        let batch = self.table.get(&b)?;
        Ok(batch
            .points
            .iter()
            .map(|p| {
                p.fields
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| to_wit(v))
            })
            .collect())
    }

    fn tag_keys(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<String>> {
        let batch = self.table.get(&b)?;
        Ok(distinct_keys(
            batch
                .points
                .iter()
                .flat_map(|p| p.tags.iter().map(|(k, _)| k.as_str())),
        ))
    }

    fn field_keys(&mut self, b: Resource<PointBatch>) -> wasmtime::Result<Vec<String>> {
        let batch = self.table.get(&b)?;
        Ok(distinct_keys(
            batch
                .points
                .iter()
                .flat_map(|p| p.fields.iter().map(|(k, _)| k.as_str())),
        ))
    }

    fn tags(
        &mut self,
        b: Resource<PointBatch>,
        index: u32,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        let batch = self.table.get(&b)?;
        Ok(batch
            .points
            .get(index as usize)
            .map(|p| p.tags.clone())
            .unwrap_or_default())
    }

    fn fields(
        &mut self,
        b: Resource<PointBatch>,
        index: u32,
    ) -> wasmtime::Result<Vec<(String, WitValue)>> {
        let batch = self.table.get(&b)?;
        Ok(batch
            .points
            .get(index as usize)
            .map(|p| {
                p.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), to_wit(v)))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn drop(&mut self, _b: Resource<PointBatch>) -> wasmtime::Result<()> {
        // The host owns every batch and removes it from the table after the call; a
        // guest never receives an owned handle, so there is nothing to drop here.
        Ok(())
    }
}
