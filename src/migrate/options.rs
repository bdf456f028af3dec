//! What a migration is told (its [`Options`], stored with it as JSON) and what the
//! driver tells whoever watches ([`Progress`]: the CLI's progress bar, tests).

use serde::{Deserialize, Serialize};

use super::{MigrationState, PreflightReport};

/// How a migration runs (stored with it as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub batch: usize,
    pub canary: usize,
    pub max_failure_ratio: f64,
    pub quit_message: Option<String>,
    /// How long a target may take to register and rejoin a user.
    pub adopt_deadline_ms: u64,
    /// Users moved at once within a batch (each still waits for its target's slot).
    pub parallel: usize,
    /// A target whose event loop lags more than this is degraded.
    pub max_loop_lag_ms: i64,
    /// A target whose system has less memory available than this is degraded.
    #[serde(default = "default_min_free_memory_mib")]
    pub min_free_memory_mib: u64,
    /// The node whose automatic rebalance started the migration (`[cluster]
    /// auto_rebalance`); `None`: an operator's `ferry migrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<String>,
}

fn default_min_free_memory_mib() -> u64 {
    256
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 50,
            canary: 5,
            max_failure_ratio: 0.1,
            quit_message: Some("Ferry is moving this session to another server".to_owned()),
            adopt_deadline_ms: 60_000,
            parallel: 8,
            max_loop_lag_ms: 1_000,
            min_free_memory_mib: default_min_free_memory_mib(),
            automatic: None,
        }
    }
}

/// What the driver tells whoever watches (the CLI's progress bar, tests).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Preflight {
        report: PreflightReport,
    },
    Batch {
        batch: i64,
        users: usize,
    },
    Moved {
        user: String,
        to: String,
        downtime_ms: i64,
    },
    Failed {
        user: String,
        error: String,
        rolled_back: bool,
    },
    /// The store was unreachable during the user's move (before or after its
    /// release): nothing is handed back, and `resume` continues it as the same attempt
    /// (see `moves::Outcome::Interrupted`).
    Interrupted {
        user: String,
        error: String,
    },
    BatchDone {
        batch: i64,
        moved: usize,
        failed: usize,
    },
    Paused {
        reason: String,
    },
    /// The driver waits before it can start (e.g. for a stopped driver's lock).
    Waiting {
        reason: String,
    },
    Done {
        state: MigrationState,
    },
}
