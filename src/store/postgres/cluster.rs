//! PostgreSQL side of [`crate::store::cluster`]. Lease times come from the database's
//! clock (`now()`), so the nodes' clocks do not matter.

/// The database's clock in unix milliseconds.
const NOW: &str = "(extract(epoch from now()) * 1000)::bigint";

include!("../shared/cluster.rs");
