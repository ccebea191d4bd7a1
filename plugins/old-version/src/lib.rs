//! Test fixture: a plugin built against `dataway:sinker@0.1.0` (`wit/sinker.wit` here is that
//! version's contract, kept verbatim), which a daemon speaking a later 0.1.x must still load and
//! run unchanged. It calls every function of 0.1.0.
//!
//! Config: measurement names, comma-separated. A point matches when its measurement is one of
//! them, it has a `host` tag and its `usage` field is a float above 90. Each call logs what the
//! other functions of the batch returned, so a test sees they all answered.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "sinker", path: "wit" });

use dataway::sinker::host::{LogLevel, log};
use dataway::sinker::types::FieldValue;

thread_local! {
    static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let names: Vec<String> = config.split(',').map(|s| s.trim().to_string()).collect();
        NAMES.with(|n| *n.borrow_mut() = names);
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        let n = points.len() as usize;
        let m = points.measurements();
        let host = points.tag_column("host");
        let usage = points.field_column("usage");
        log(
            LogLevel::Info,
            &format!(
                "{} {n} points, times {:?}, tag keys {:?}, field keys {:?}, first {:?} {:?}",
                points.category(),
                points.times(),
                points.tag_keys(),
                points.field_keys(),
                points.tags(0),
                points
                    .fields(0)
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>(),
            ),
        );
        NAMES.with(|names| {
            let names = names.borrow();
            (0..n)
                .map(|i| {
                    let measurement = m.dict[m.index[i] as usize].as_ref();
                    measurement.is_some_and(|m| names.contains(m))
                        && host.dict[host.index[i] as usize].is_some()
                        && matches!(usage[i], Some(FieldValue::Float(f)) if f > 90.0)
                })
                .collect()
        })
    }
}

export!(Plugin);
