//! Automatic rebalancing (`[cluster] auto_rebalance`, off by default): a round, run by
//! every node's `server::rebalance` loop each `auto_rebalance_interval`, in which at
//! most one node acts.
//!
//! Who acts: the **leader**, the live active node with the lowest id in the store's
//! node table, and only when nothing else is going on — its lease held (no store
//! outage), no node draining, no node whose heartbeat is late (a partition or a
//! failover under way), no user waiting for adoption, and no other migration
//! unfinished (an operator's drain, move or rebalance, even paused: the migration's
//! own lock is per migration, so the round checks the store's migrations). Then it
//! plans exactly as `ferry migrate rebalance` does ([`super::make_rebalance_plan`],
//! the same tolerance default) and, when the nodes are outside the tolerance, stores
//! the moves (at most `auto_rebalance_max_moves`) as a migration of kind `rebalance`
//! whose options name the node (`Options::automatic`), and runs it with the same
//! driver as the CLI ([`super::execute`]): preflight, canary, batches, health watch,
//! the targets' limits and the cluster's connect budgets, `ferry migrate status`,
//! `abort`, `rollback`.
//!
//! Two drivers never run side by side: right after creating its migration the leader
//! looks again, and stands down (aborts its own, which moved nobody) if another
//! unfinished migration exists — two leaders for a moment (a node with a lower id
//! joining) leave the older migration; while it runs, a watcher aborts it as soon as
//! another one (an operator's) appears, so the driver stops before its next batch. A
//! migration a previous leader left unfinished (its node stopped; its lock lapsed) is
//! resumed by the next leader, moving nobody twice. A round whose migration did not
//! complete (paused by the health watch — it is then aborted, users already moved
//! stay — aborted by an operator, a failed preflight) makes the loop wait longer
//! before the next ([`AutoRebalancer::wait`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    auto_parallel, create_rebalance, execute, make_rebalance_plan, now, set_migration_state,
    MigrationState, MoveState, Options, Progress,
};
use crate::cluster::AutoRebalance;
use crate::services::Services;
use crate::store::migrate::MigrationRecord;
use crate::store::{node_state, Store};

/// What one round decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Another node leads (the live active node with the lowest id), or none does.
    NotLeader { leader: Option<String> },
    /// This node leads but did not act, and why.
    Skipped(String),
    /// The active nodes are within the tolerance.
    Balanced,
    /// Outside the tolerance, but no move fits the targets' limits.
    NothingFits(String),
    /// A rebalance migration ran (or was resumed) to this state, moving `moved` users.
    Ran {
        id: i64,
        state: String,
        moved: usize,
        planned: usize,
        resumed: bool,
    },
    /// The node shut down while its migration ran: the lock lapses and the next
    /// leader resumes it.
    Interrupted { id: i64 },
}

/// What the loop keeps between rounds: failures in a row (the back-off) and the last
/// decision logged (a decision repeated round after round is logged once).
#[derive(Default)]
pub struct AutoRebalancer {
    failures: u32,
    last: Option<Decision>,
}

impl AutoRebalancer {
    /// How long to wait before the next round: the interval, doubled for each failed
    /// round in a row, at most 16 times it.
    pub fn wait(&self, cfg: &AutoRebalance) -> Duration {
        cfg.interval * (1u32 << self.failures.min(4))
    }

    /// One round (see the module docs). `stop` ends a running migration's driver at
    /// shutdown.
    ///
    /// # Errors
    /// Store errors before anything was decided; the next round tries again.
    pub async fn round(
        &mut self,
        s: &Services,
        cfg: &AutoRebalance,
        stop: &CancellationToken,
    ) -> anyhow::Result<Decision> {
        let d = self.decide(s, cfg, stop).await;
        let m = &s.metrics.auto_rebalance;
        match &d {
            Ok(Decision::NotLeader { .. } | Decision::Skipped(_)) | Err(_) => m.skipped.inc(),
            Ok(_) => m.rounds.inc(),
        };
        if let Ok(Decision::Ran { state, moved, .. }) = &d {
            m.migrations.inc();
            m.moves.inc_by(*moved as u64);
            if state == MigrationState::Completed.as_str() {
                self.failures = 0;
            } else {
                m.failed.inc();
                self.failures += 1;
            }
        }
        if let Ok(d) = &d {
            self.log(s, cfg, d);
        }
        d
    }

    fn log(&mut self, s: &Services, cfg: &AutoRebalance, d: &Decision) {
        let node = &*s.node.id;
        let repeated = self.last.as_ref() == Some(d);
        self.last = Some(d.clone());
        match d {
            Decision::NotLeader { leader } if !repeated => {
                info!(node = %node, leader = leader.as_deref().unwrap_or("none"),
                      "automatic rebalance: another node leads; this one only watches");
            }
            Decision::Skipped(why) if !repeated => {
                info!(node = %node, why = %why, "automatic rebalance: not acting this round");
            }
            Decision::Balanced if !repeated => {
                info!(node = %node, tolerance = %cfg.tolerance,
                      "automatic rebalance: the active nodes are within the tolerance");
            }
            Decision::NothingFits(why) if !repeated => {
                info!(node = %node, why = %why,
                      "automatic rebalance: outside the tolerance, but no move fits the limits");
            }
            Decision::Ran {
                id,
                state,
                moved,
                planned,
                resumed,
            } => {
                if state == MigrationState::Completed.as_str() {
                    info!(node = %node, migration = id, moved, planned, resumed,
                          "automatic rebalance: migration completed");
                } else {
                    warn!(node = %node, migration = id, state = %state, moved, planned, resumed,
                          next_round_in_s = self.wait(cfg).as_secs(),
                          "automatic rebalance: migration did not complete; backing off");
                }
            }
            Decision::Interrupted { id } => {
                info!(node = %node, migration = id,
                      "automatic rebalance: stopped by shutdown; the next leader resumes the migration");
            }
            _ => {}
        }
    }

    async fn decide(
        &mut self,
        s: &Services,
        cfg: &AutoRebalance,
        stop: &CancellationToken,
    ) -> anyhow::Result<Decision> {
        let me = &*s.node.id;
        let store = &s.store;
        if !s.lease.is_valid() {
            return Ok(Decision::Skipped(
                "this node's lease is not held (the store is unreachable)".into(),
            ));
        }
        let leader = store.live_active_nodes().await?.into_iter().next();
        if leader.as_deref() != Some(me) {
            return Ok(Decision::NotLeader { leader });
        }
        if let Some(why) = unsettled(store).await? {
            return Ok(Decision::Skipped(why));
        }
        let pending = unfinished(store).await?;
        if let Some(m) = pending.first() {
            let lapsed = m.lock_holder.is_none() || m.lock_expires < now();
            if automatic(m).is_some() && lapsed && m.state != MigrationState::Paused.as_str() {
                // A previous leader's round its node left unfinished: finish it.
                info!(node = %me, migration = m.id, by = %automatic(m).unwrap_or_default(),
                      "automatic rebalance: resuming the migration a previous leader left unfinished");
                return self.run(s, m.id, true, stop).await;
            }
            return Ok(Decision::Skipped(format!(
                "migration {} ({}) is {}: the automatic rebalance waits until it is over",
                m.id, m.kind, m.state
            )));
        }

        let mut opts = Options {
            canary: 1,
            batch: 5,
            automatic: Some(me.to_owned()),
            ..Options::default()
        };
        let r = make_rebalance_plan(store, cfg.tolerance, Some(cfg.max_moves), &opts).await?;
        if r.plan.users.is_empty() {
            return Ok(if r.balanced {
                Decision::Balanced
            } else {
                Decision::NothingFits(r.note)
            });
        }
        opts.parallel = auto_parallel(&r.plan);
        let id = create_rebalance(store, &r, &opts).await?;
        // Someone may have started a migration since we looked: the older one goes on.
        if let Some(o) = unfinished(store).await?.into_iter().find(|m| m.id != id) {
            let why = format!(
                "migration {} ({}) started at the same time; this automatic round stands down",
                o.id, o.kind
            );
            set_migration_state(store, id, MigrationState::Aborted, &why).await?;
            return Ok(Decision::Skipped(why));
        }
        let balance: Vec<String> = r
            .nodes
            .iter()
            .map(|n| format!("{} {}→{}", n.node, n.users_before, n.users_after))
            .collect();
        info!(node = %me, migration = id, users = r.plan.users.len(), tolerance = %r.tolerance,
              nodes = %balance.join(", "), eta_s = r.plan.eta_seconds.ceil() as u64,
              note = %r.note,
              "automatic rebalance: the nodes are outside the tolerance; moving users");
        self.run(s, id, false, stop).await
    }

    /// Runs (or resumes) migration `id` with the migration driver, standing down for
    /// any other migration that starts meanwhile.
    async fn run(
        &mut self,
        s: &Services,
        id: i64,
        resumed: bool,
        stop: &CancellationToken,
    ) -> anyhow::Result<Decision> {
        let store = &s.store;
        let me = s.node.id.clone();
        let watcher = tokio::spawn(stand_down_for_others(store.clone(), id));
        let report = move |p: Progress| match p {
            Progress::Moved {
                user,
                to,
                downtime_ms,
            } => info!(node = %me, migration = id, user = %user, to = %to, downtime_ms,
                       "automatic rebalance: moved"),
            Progress::Failed {
                user,
                error,
                rolled_back,
            } => warn!(node = %me, migration = id, user = %user, error = %error, rolled_back,
                       "automatic rebalance: a move failed"),
            Progress::Paused { reason } => {
                warn!(node = %me, migration = id, reason = %reason, "automatic rebalance: paused")
            }
            _ => {}
        };
        // `execute`'s future is not `Send` (the closure of its batch stream), so it
        // cannot be spawned with the loop: it is driven on a blocking thread of the
        // same runtime instead, until it ends or the node shuts down.
        let handle = tokio::runtime::Handle::current();
        let (driver_store, stop) = (store.clone(), stop.clone());
        let ran = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                tokio::select! {
                    r = execute(&driver_store, id, &report) => Some(r),
                    () = stop.cancelled() => None,
                }
            })
        })
        .await;
        watcher.abort();
        let ran = ran.map_err(|e| anyhow::anyhow!("the migration driver's thread failed: {e}"))?;
        let Some(ran) = ran else {
            return Ok(Decision::Interrupted { id });
        };
        if let Err(e) = &ran {
            warn!(node = %s.node.id, migration = id, error = %format!("{e:#}"),
                  "automatic rebalance: the migration stopped with an error");
        }
        let Some(m) = store.migration(id).await? else {
            anyhow::bail!("migration {id} vanished");
        };
        let mut state = m.state.clone();
        let unlocked = m.lock_holder.is_none() || m.lock_expires < now();
        if !MigrationState::is_over(&state) && unlocked {
            // Nobody is there to resume it: give it up (users already moved stay, and
            // `ferry migrate rollback` can move them back); the next round plans anew.
            let note = format!("automatic rebalance stopped: {}", m.note);
            set_migration_state(store, id, MigrationState::Aborted, &note).await?;
            state = MigrationState::Aborted.as_str().to_owned();
        }
        let users = store.migration_users(id).await?;
        let moved = users
            .iter()
            .filter(|u| u.state == MoveState::Moved.as_str())
            .count();
        Ok(Decision::Ran {
            id,
            state,
            moved,
            planned: users.len(),
            resumed,
        })
    }
}

/// The node whose automatic rebalance started `m` (`None`: an operator's).
fn automatic(m: &MigrationRecord) -> Option<String> {
    serde_json::from_str::<Options>(&m.options)
        .ok()
        .and_then(|o| o.automatic)
}

/// Migrations not over yet (planned, preflight, running, paused), newest first.
async fn unfinished(store: &Store) -> anyhow::Result<Vec<MigrationRecord>> {
    Ok(store
        .migrations()
        .await?
        .into_iter()
        .filter(|m| !MigrationState::is_over(&m.state))
        .collect())
}

/// Why the cluster is not settled enough to rebalance: a node draining, a node whose
/// heartbeat is late (a partition, a crash, a failover under way), users waiting for
/// adoption. `None`: settled.
async fn unsettled(store: &Store) -> anyhow::Result<Option<String>> {
    if let Some(n) = store
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.state == node_state::DRAINING)
    {
        return Ok(Some(format!("node {} is draining", n.id)));
    }
    if let Some(n) = store.suspect_nodes().await?.into_iter().next() {
        return Ok(Some(format!(
            "node {}'s heartbeat is late (a partition or a failover may be under way)",
            n.id
        )));
    }
    if store.adoption_pending().await? {
        return Ok(Some(
            "users are waiting for adoption (a failover is under way)".into(),
        ));
    }
    Ok(None)
}

/// While automatic migration `id` runs: as soon as another migration that is not
/// automatic is unfinished (an operator started one), `id` is aborted, so its driver
/// stops before its next batch. Checked every second, and again while `id` is not
/// over (the driver sets `running` after its preflight).
async fn stand_down_for_others(store: Store, id: i64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(all) = unfinished(&store).await else {
            continue;
        };
        if !all.iter().any(|m| m.id == id) {
            return;
        }
        if let Some(o) = all.iter().find(|m| m.id != id && automatic(m).is_none()) {
            let why = format!(
                "automatic rebalance stood down for migration {} ({}); users already moved stay",
                o.id, o.kind
            );
            info!(migration = id, other = o.id, "{why}");
            let _ = set_migration_state(&store, id, MigrationState::Aborted, &why).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_after_failed_rounds() {
        let cfg = AutoRebalance {
            interval: Duration::from_secs(10),
            ..AutoRebalance::default()
        };
        let mut a = AutoRebalancer::default();
        assert_eq!(a.wait(&cfg), Duration::from_secs(10));
        a.failures = 1;
        assert_eq!(a.wait(&cfg), Duration::from_secs(20));
        a.failures = 9;
        assert_eq!(a.wait(&cfg), Duration::from_secs(160), "at most 16 times");
    }

    #[test]
    fn knows_automatic_migrations_by_their_options() {
        let mut m = MigrationRecord {
            id: 1,
            kind: "rebalance".into(),
            source_node: "n1".into(),
            targets: vec!["n2".into()],
            options: serde_json::to_string(&Options::default()).unwrap(),
            state: "running".into(),
            note: String::new(),
            lock_holder: None,
            lock_expires: 0,
            parent: None,
            started_at: None,
            finished_at: None,
            created_at: 0,
            updated_at: 0,
            rejections_baseline: String::new(),
        };
        assert_eq!(automatic(&m), None);
        // An operator's options (older versions had no such field) parse alike.
        assert!(!m.options.contains("automatic"));
        m.options = serde_json::to_string(&Options {
            automatic: Some("n1".into()),
            ..Options::default()
        })
        .unwrap();
        assert_eq!(automatic(&m).as_deref(), Some("n1"));
    }
}
