//! The figures of a migration, for `ferry migrate status` and `/metrics`: users by
//! state, downtime percentiles, per network (limits key), and the throttle rejections
//! the involved nodes met during it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::prepare::{limits_key, load_limits};
use super::{health, now, MoveState};
use crate::store::migrate::{MigrationRecord, MigrationUser};
use crate::store::{NodeRecord, Store};

/// Figures of one migration (for `status` and `/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub users: usize,
    pub pending: usize,
    pub moved: usize,
    pub failed: usize,
    /// Of `failed`: handed back to their source (connected there, once).
    pub failed_back_on_source: usize,
    pub rolled_back: usize,
    pub downtime_p50_ms: Option<i64>,
    pub downtime_p99_ms: Option<i64>,
    pub downtime_max_ms: Option<i64>,
    pub elapsed_ms: Option<i64>,
}

pub fn figures(m: &MigrationRecord, users: &[MigrationUser]) -> Figures {
    let mut f = Figures {
        users: users.len(),
        ..Figures::default()
    };
    let mut d: Vec<i64> = Vec::new();
    for u in users {
        match MoveState::parse(&u.state) {
            Some(MoveState::Moved) => {
                f.moved += 1;
                d.extend(u.downtime_ms);
            }
            Some(MoveState::Failed) => {
                f.failed += 1;
                if !u.error.contains("handing back failed") {
                    f.failed_back_on_source += 1;
                }
            }
            Some(MoveState::RolledBack) => f.rolled_back += 1,
            _ => f.pending += 1,
        }
    }
    d.sort_unstable();
    let pct = |p: f64| -> Option<i64> {
        if d.is_empty() {
            return None;
        }
        let i = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
        Some(d[i])
    };
    f.downtime_p50_ms = pct(0.50);
    f.downtime_p99_ms = pct(0.99);
    f.downtime_max_ms = d.last().copied();
    f.elapsed_ms = m.started_at.map(|s| m.finished_at.unwrap_or_else(now) - s);
    f
}

/// [`figures`] per network (the limits key of each network host the users have).
pub async fn network_figures(
    store: &Store,
    m: &MigrationRecord,
    users: &[MigrationUser],
) -> anyhow::Result<BTreeMap<String, Figures>> {
    let limits = load_limits(store).await?;
    let mut by: BTreeMap<String, Vec<MigrationUser>> = BTreeMap::new();
    for u in users {
        let mut keys = BTreeSet::new();
        for n in store.networks(u.user_id).await? {
            if n.enabled {
                keys.insert(limits_key(&n.addr, &n.name, &limits));
            }
        }
        for k in keys {
            by.entry(k).or_default().push(u.clone());
        }
    }
    Ok(by.into_iter().map(|(k, us)| (k, figures(m, &us))).collect())
}

/// Throttle rejections (`ferry_upstream_throttled_total` + `ferry_upstream_no_slot_total`
/// from each node's `/metrics`) during migration `m`: since its stored baseline, or
/// since the node started when there is none (the migration has not run, or the node
/// was not involved then). `None` when the node does not answer.
pub async fn throttle_rejections(
    m: &MigrationRecord,
    nodes: &[NodeRecord],
) -> BTreeMap<String, Option<u64>> {
    let baseline: BTreeMap<String, u64> =
        serde_json::from_str(&m.rejections_baseline).unwrap_or_default();
    health::signals(nodes)
        .await
        .into_iter()
        .map(|(id, s)| {
            // A node restarted since counts from zero again: its counter is then below
            // the baseline, and all of it is from this migration.
            let v = s.map(|s| match baseline.get(&id) {
                Some(&b) if s.rejections >= b => s.rejections - b,
                _ => s.rejections,
            });
            (id, v)
        })
        .collect()
}
