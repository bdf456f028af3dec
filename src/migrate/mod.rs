//! Migration: move users between nodes without tripping any network's limits.
//!
//! Two halves talk over the nodes' admin API (`/api/admin/migrate/…`):
//!
//! - **Node side** ([`handoff`], [`preflight`]): what a source or target node does
//!   for one user — reserve the target's connect slots (`reserve`), release on the
//!   source (flush, snapshot, QUIT, epoch compare-and-set to the target), adopt on the
//!   target (start with the reservation, register, rejoin, verify, mark the gap) —
//!   and the preflight a target runs on itself.
//! - **Driver** ([`run`], [`plan`]): what `ferry migrate` runs: plan (users → targets,
//!   batches, the ETA the limits impose), preflight every target, canary batch, then
//!   batches with a health check after each; automatic rollback of a failed batch and
//!   a pause for the operator. Every step is persisted in the store
//!   (`store::migrate`), so a killed CLI loses nothing and `resume` moves nobody twice.
//!
//! Invariant: a user is never connected twice and never left disconnected by a
//! migration's own fault. The source QUITs (and waits for the upstream to close)
//! before it hands ownership over with the epoch compare-and-set; the target starts
//! the user only once it owns it; a failed adopt is handed back the same way.

pub mod handoff;
pub mod plan;
pub mod preflight;

mod wire;

pub use wire::*;
pub mod run;
