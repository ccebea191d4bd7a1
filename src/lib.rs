//! dataway: an agent daemon that ships observability points (line protocol) to Dataway
//! servers.
//!
//! The data path, top to bottom:
//! [`ingest`] (HTTP server) → [`point`] (line protocol) → [`dataway`] (router) →
//! [`endpoint`] (per-endpoint queue and workers, body building) → [`httpcli`] (send with
//! retry), with [`metrics`] counting along the way and [`config`] describing it all.
//! [`daemon`] wires them together for the binary and for tests.

pub mod category;
pub mod config;
pub mod daemon;
pub mod dataway;
pub mod endpoint;
pub mod failcache;
pub mod httpcli;
pub mod ingest;
pub mod metrics;
pub mod point;
pub mod sinker;
pub mod wal;

pub use category::Category;
pub use dataway::{Dataway, WriteError};
pub use point::{FieldValue, Point};
