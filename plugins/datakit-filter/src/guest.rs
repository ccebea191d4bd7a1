//! The wit-bindgen glue: the `sinker` world's exports over [`crate::Program`].

use std::cell::RefCell;

use crate::eval::{Columns, FieldColumn, KeyCount, Masked, Program, StringColumn};

wit_bindgen::generate!({ world: "sinker", path: "../../wit" });

use dataway::sinker::host::{LogLevel, log};
use dataway::sinker::types::StringColumn as WitColumn;

thread_local! {
    /// Set by `init`; a plugin instance is single-threaded.
    static PROGRAM: RefCell<Option<Program>> = const { RefCell::new(None) };
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let program = crate::compile_config(&config)?;
        log(
            LogLevel::Info,
            &format!("datakit-filter: {}", program.summary()),
        );
        for w in program.warnings() {
            log(LogLevel::Warn, &format!("datakit-filter: {w}"));
        }
        PROGRAM.with(|p| *p.borrow_mut() = Some(program));
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        PROGRAM.with(|p| match &*p.borrow() {
            Some(program) => program.eval(&WitBatch(points)),
            None => vec![false; points.len() as usize],
        })
    }
}

/// The host's batch as the evaluator's column source.
struct WitBatch<'a>(&'a Batch);

fn column(c: WitColumn) -> StringColumn {
    StringColumn {
        dict: c.dict,
        index: c.index,
    }
}

impl Columns for WitBatch<'_> {
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    fn category(&self) -> String {
        self.0.category()
    }

    fn measurements(&self) -> StringColumn {
        column(self.0.measurements())
    }

    fn tag_column(&self, key: &str) -> StringColumn {
        column(self.0.tag_column(key))
    }

    fn key_counts(&self, keys: &[String]) -> Vec<KeyCount> {
        self.0
            .key_counts(keys)
            .into_iter()
            .map(|c| KeyCount {
                tags: c.tags,
                fields: c.fields,
            })
            .collect()
    }

    fn field_column(&self, key: &str) -> FieldColumn {
        // Moves only: the lists arrive as vectors of the evaluator's own element types.
        let c = self.0.typed_field_column(key);
        FieldColumn {
            floats: c.floats.map(|f| Masked {
                mask: f.mask,
                values: f.values,
            }),
            ints: c.ints.map(|f| Masked {
                mask: f.mask,
                values: f.values,
            }),
            uints: c.uints.map(|f| Masked {
                mask: f.mask,
                values: f.values,
            }),
            bools: c.bools.map(|f| Masked {
                mask: f.mask,
                values: f.trues,
            }),
            strs: c.strs.map(column),
        }
    }
}

export!(Plugin);
