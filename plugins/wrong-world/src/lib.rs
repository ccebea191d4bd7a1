//! Test fixture: a well-formed component of another world; the daemon must refuse it.

wit_bindgen::generate!({ world: "other", path: "wit" });

struct Plugin;

impl Guest for Plugin {
    fn hello() -> u32 {
        42
    }
}

export!(Plugin);
