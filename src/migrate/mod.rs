//! Migration: move users between nodes without tripping any network's limits.
//!
//! Two halves talk over the nodes' admin API (`/api/admin/migrate/…`):
//!
//! - **Node side** ([`handoff`], [`preflight`]): what a source or target node does
//!   for one user — reserve the target's connect slots (`reserve`), release on the
//!   source (flush, snapshot, QUIT, epoch compare-and-set to the target), adopt on the
//!   target (start with the reservation, register, rejoin, verify, mark the gap) —
//!   and the preflight a target runs on itself. `wire` is what the two halves send.
//! - **Driver**, what `ferry migrate` runs: [`plan`] (users → targets, batches, the ETA
//!   the limits impose; [`rebalance`] chooses the moves that even out the active
//!   nodes) and `prepare` (the plan from the store, the stored migration),
//!   then `execute` (preflight every target, canary batch, then batches), `moves` (one
//!   user through reserve, release, adopt; handed back on failure), `health` (the watch
//!   after each batch, on each node's typed `GET /api/admin/health`), `lock` (one driver per migration) and `figures` (what `status`
//!   and `/metrics` show). It reaches the nodes through [`AdminClient`], the same
//!   client the CLI's admin commands use. Every step is persisted in the store
//!   (`store::migrate`, states typed in `state`), so a killed CLI loses nothing and
//!   `resume` moves nobody twice.
//! - **Automatic rebalancing** ([`auto`], `[cluster] auto_rebalance`): the leader node's
//!   round plans like `ferry migrate rebalance` and runs the same driver.
//!
//! Invariant: a user is never connected twice and never left disconnected by a
//! migration's own fault. The source QUITs (and waits for the upstream to close)
//! before it hands ownership over with the epoch compare-and-set; the target starts
//! the user only once it owns it; a failed adopt is handed back the same way.

pub mod auto;
mod client;
mod execute;
mod figures;
pub mod handoff;
mod health;
mod lock;
pub mod metrics;
mod moves;
mod options;
pub mod plan;
pub mod preflight;
mod prepare;
pub mod rebalance;
pub mod spill;
mod state;
mod wire;

pub use client::{AdminClient, CallError, FORWARDED};
pub use execute::execute;
pub use figures::{figures, network_figures, throttle_rejections, Figures};
pub use options::{Options, Progress};
pub use prepare::{
    auto_parallel, create, create_rebalance, load_limits, make_plan, make_rebalance_plan,
    rollback_plan,
};
pub use state::{set_migration_state, set_move_state, MigrationKind, MigrationState, MoveState};
pub use wire::*;

/// The driver's clock for stored times: unix milliseconds.
fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
