//! dataway: an agent daemon that ships observability points (line protocol) to Dataway
//! servers.
//!
//! The data path, top to bottom:
//! [`ingest`] (HTTP server) → [`point`] (line protocol) → [`dataway`] (router) →
//! [`endpoint`] (per-endpoint queue and workers, body building) → [`httpcli`] (send with
//! retry), with [`metrics`] counting along the way and [`config`] describing it all.
//! [`daemon`] wires them together for the binary and for tests. [`monitor`] is a client
//! of a running daemon's `/metrics` (`dataway monitor`), apart from the rest.

pub mod category;
pub mod config;
pub mod daemon;
pub mod dataway;
pub mod endpoint;
pub mod endpoint_url;
pub mod failcache;
pub mod httpcli;
pub mod ingest;
pub mod instance;
pub mod metrics;
pub mod monitor;
pub mod point;
pub mod sinker;
pub mod wal;

pub use category::Category;
pub use dataway::{Dataway, WriteError};
pub use point::{FieldValue, Point};

#[cfg(test)]
mod readme {
    /// The README's embedding snippet is an excerpt of `examples/embed.rs`, which `cargo
    /// test` compiles: so the snippet compiles too (it once called `Dataway::start` with
    /// three arguments of four).
    #[test]
    fn the_embedding_snippet_is_part_of_the_compiled_example() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Embedding\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an Embedding section");
        let snippet: Vec<&str> = section
            .split("```rust\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the Embedding section has a rust snippet")
            .lines()
            .map(str::trim)
            .collect();
        assert!(snippet.len() >= 3, "{snippet:?}");
        let example: Vec<&str> = include_str!("../examples/embed.rs")
            .lines()
            .map(str::trim)
            .collect();
        assert!(
            example.windows(snippet.len()).any(|w| w == snippet),
            "README's Embedding snippet is not a verbatim excerpt of examples/embed.rs:\n{}",
            snippet.join("\n")
        );
    }
}
