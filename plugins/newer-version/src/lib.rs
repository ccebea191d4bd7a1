//! Test fixture: a plugin built against `dataway:sinker@0.1.9`, a later version of the daemon's
//! series (semver-compatible), that calls a function this daemon does not have. It must be
//! refused at load, saying it was built against a newer version, not trap at its first call.

wit_bindgen::generate!({
    inline: "
        package dataway:sinker@0.1.9;
        interface types {
            resource batch {
                len: func() -> u32;
                /// Added in 0.1.9 (imagined): no daemon has it.
                shiny-new: func() -> u32;
            }
        }
        world sinker {
            use types.{batch};
            export init: func(config: string) -> result<_, string>;
            export matches: func(points: borrow<batch>) -> list<bool>;
        }
    ",
});

struct Plugin;

impl Guest for Plugin {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn matches(points: &Batch) -> Vec<bool> {
        vec![points.shiny_new() > 0; points.len() as usize]
    }
}

export!(Plugin);
