//! What the driver and the nodes exchange (JSON over the admin API).

use serde::{Deserialize, Serialize};

use crate::store::UserId;

/// `POST /api/admin/migrate/preflight`, sent to a target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PreflightRequest {
    /// The node the users come from: version, schema and config are compared to it.
    pub source_node: String,
    /// Sessions the plan puts on this target.
    pub planned_sessions: i64,
    /// Users the plan puts on this target.
    pub planned_users: i64,
    /// The IRC networks involved, by address.
    pub networks: Vec<NetworkProbe>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkProbe {
    /// `HOST:PORT`.
    pub addr: String,
    pub tls: bool,
    pub tls_insecure: bool,
    /// The network's limits key as the driver resolved it (the target's limiter resolves
    /// it the same way, so the probe is throttled like the users' connects); empty:
    /// the host's own.
    #[serde(default)]
    pub key: String,
}

/// One check of a preflight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreflightReport {
    pub node: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// `POST /api/admin/migrate/reserve/{user}`, sent to a target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReserveRequest {
    /// How long the reservation (and the hold on the user) lasts without an adopt.
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reserved {
    /// One entry per network: `network` → source IP chosen (or `default`).
    pub slots: Vec<(String, String)>,
    /// How long the reservation waited for slots and tokens.
    pub waited_ms: u64,
}

/// `POST /api/admin/migrate/release/{user}`, sent to the node that runs the user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The node that takes the user over.
    pub to: String,
    /// The QUIT message the network sees.
    pub quit_message: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Released {
    pub user_id: UserId,
    /// The user's live state as JSON, zstd-compressed, base64.
    pub snapshot: String,
    /// When the QUIT was sent (unix ms).
    pub quit_at_ms: i64,
    /// The epoch the target owns the user with.
    pub epoch: i64,
    /// How long before this answer the QUIT was sent (the source's monotonic clock),
    /// so the driver can time the downtime on its own clock.
    #[serde(default)]
    pub quit_ago_ms: Option<i64>,
}

/// `POST /api/admin/migrate/adopt/{user}`, sent to the new owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdoptRequest {
    pub snapshot: String,
    pub quit_at_ms: i64,
    /// How long to wait for registration and rejoin.
    pub deadline_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Adopted {
    /// QUIT on the source to registered and rejoined here: from the source's and the
    /// target's wall clocks, unless the driver timed it on its own clock (see
    /// `ready_ago_ms`).
    pub downtime_ms: i64,
    /// How long before this answer the user was registered and rejoined (the
    /// target's monotonic clock).
    #[serde(default)]
    pub ready_ago_ms: Option<i64>,
    /// Networks whose channels got a gap marker.
    pub gaps: Vec<String>,
}

/// `GET /api/admin/health`: a node's own figures, which the migration driver's health
/// watch reads after each batch (and `migrate status` for the rejections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Connects IRC servers refused as throttled or for lack of a slot on our address
    /// since the node started (`ferry_upstream_throttled_total` +
    /// `ferry_upstream_no_slot_total`).
    pub rejections: u64,
    /// Failed commit attempts of the store writer since the node started
    /// (`ferry_store_write_errors_total`).
    pub write_errors: u64,
    /// Memory the system can still give processes (`MemAvailable`), when known.
    pub mem_available: Option<u64>,
    /// The event loop's measured lag, in milliseconds.
    pub loop_lag_ms: i64,
    /// User actors running.
    pub users: u64,
    /// Messages queued for the store writer.
    pub write_queue: u64,
    /// Resident memory of the node's process, in bytes.
    pub rss_bytes: i64,
}
