//! Benchmark 6, migration: a placeholder until the migration tool exists.
//!
//! When `ferry migrate drain` lands, this drains a node of N users onto another node
//! (two `ferry serve` processes on one PostgreSQL, upstreams bound to 127.0.0.2 and
//! 127.0.0.3), and reports the drain time against the bound the per-network limits
//! impose (`restart::limit_bound`) and per-user downtime p50/p99 (last line before
//! the release → first line after the adopt, seen by an attached client).

use serde_json::json;

use super::{Section, Target};

pub fn run() -> Section {
    Section {
        name: "migration",
        json: json!({ "status": "not run: the migration tool does not exist yet" }),
        markdown: "Not run: `ferry migrate` does not exist yet. The slot is kept so the \
                   suite's shape stays stable; see `tools/ferry-bench/src/bench/migration.rs` \
                   for what it will measure.\n"
            .to_string(),
        targets: vec![Target {
            name: "migration within 10% of the limit-imposed bound, zero rejections".into(),
            target: "≤ 1.1 × bound".into(),
            measured: "not run (no migration tool yet)".into(),
            met: None,
        }],
    }
}
