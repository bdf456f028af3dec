//! SQLite side of [`crate::store::cluster`]. SQLite runs inside the node, so lease
//! times come from the clock of the node's own process.

/// The clock in unix milliseconds (SQLite runs in the node's process).
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

include!("../shared/cluster.rs");
