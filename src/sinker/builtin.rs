//! The DataKit filter built into the binary: the `datakit-filter` component
//! (`plugins/datakit-filter`), compiled for `wasm32-wasip2` by `build.rs`
//! (`build/embed.rs`) and embedded here, so a DataKit config's `filters` works without a
//! plugin file.
//!
//! In: a sinker's plugin file name. Out: the embedded component when that name is
//! [`DATAKIT_FILTER`] (used only when `plugins_dir` has no file of that name: a file there
//! overrides it, see [`super::reload`]). The bytes go through the same
//! [`super::Runtime::load`] as any plugin: same sandbox, limits, metrics, quarantine and
//! compile cache.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The plugin file name the built-in filter answers to.
pub const DATAKIT_FILTER: &str = "datakit_filter.wasm";

/// The component's bytes.
pub static DATAKIT_FILTER_WASM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/datakit_filter.wasm"));

/// The built-in component for a sinker's `plugin` file name, if there is one.
pub fn for_name(file: &str) -> Option<&'static [u8]> {
    (file == DATAKIT_FILTER).then_some(DATAKIT_FILTER_WASM)
}

/// Hex SHA-256 of the built-in filter: its version label in
/// `dataway_sinker_plugin_info{sha256}`, as for a file.
pub fn sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| hex::encode(Sha256::digest(DATAKIT_FILTER_WASM)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_filter_is_a_component() {
        // A component's preamble: magic, then version 0x0d with layer 1 (a core module has
        // version 1, layer 0).
        assert!(DATAKIT_FILTER_WASM.starts_with(b"\0asm\x0d\0\x01\0"));
        assert!(for_name("datakit_filter.wasm").is_some());
        assert!(for_name("other.wasm").is_none());
        assert_eq!(sha256().len(), 64);
    }
}
