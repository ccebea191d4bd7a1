//! A sinker condition plugin, written as the template for authors.
//!
//! Config: a comma-separated list of measurement names, e.g. `cpu,mem`.
//! A point matches when its measurement is one of them.
//!
//! Build: `cargo build --release --target wasm32-wasip2` in `plugins/`, then copy
//! `target/wasm32-wasip2/release/example_rust.wasm` into the daemon's `plugins_dir`.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "sinker", path: "../../wit" });

use dataway::sinker::host::{LogLevel, log};

thread_local! {
    /// Set by `init`; a plugin instance is single-threaded.
    static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let names: Vec<String> = config
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            return Err("config must list measurement names, e.g. \"cpu,mem\"".into());
        }
        log(LogLevel::Info, &format!("matching measurements {names:?}"));
        NAMES.with(|n| *n.borrow_mut() = names);
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        // Columns are dictionary-encoded: test each distinct measurement once,
        // then look the answer up per point.
        let column = points.measurements();
        let hit: Vec<bool> = NAMES.with(|n| {
            let names = n.borrow();
            column
                .dict
                .iter()
                .map(|m| m.as_ref().is_some_and(|m| names.contains(m)))
                .collect()
        });
        column.index.iter().map(|&i| hit[i as usize]).collect()
    }
}

export!(Plugin);
