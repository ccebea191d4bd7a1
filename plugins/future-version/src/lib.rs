//! Test fixture: a plugin built against `dataway:sinker@0.2.0`, which this daemon does not
//! speak. It must be refused at load with both versions named, not trap at its first call.

wit_bindgen::generate!({
    inline: "
        package dataway:sinker@0.2.0;
        interface host {
            log: func(message: string);
        }
        world sinker {
            import host;
            export init: func(config: string) -> result<_, string>;
            export matches: func(n: u32) -> list<bool>;
        }
    ",
});

struct Plugin;

impl Guest for Plugin {
    fn init(_config: String) -> Result<(), String> {
        dataway::sinker::host::log("hello from the future");
        Ok(())
    }

    fn matches(n: u32) -> Vec<bool> {
        vec![true; n as usize]
    }
}

export!(Plugin);
