//! Moving one user through the nodes' admin API: reserve on the target, release on
//! the source, adopt on the target, each step recorded in the store first; a failed
//! move is handed back to its source. A move a killed driver left half done, or one
//! the store's absence interrupted (even after its release), is resumed as the same
//! attempt.

use std::collections::HashMap;

use anyhow::Context;

use super::client::{AdminClient, CallError};
use super::{
    handoff, now, set_move_state, AdoptRequest, Adopted, MoveState, Options, Progress,
    ReleaseRequest, Released, ReserveRequest, Reserved,
};
use crate::store::migrate::{MigrationUser, UserProgress};
use crate::store::Store;

/// How one user's move ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Moved,
    /// Failed and handed back (or not, when that failed too): a new attempt next time.
    Failed,
    /// The store was unreachable (for the driver, or for a node, which refused for
    /// riding out an outage or failed on its store) at any step, the release included:
    /// the move is not handed back (that needs the store too) and its row is left as
    /// it was, so `resume` continues the same attempt — a user its source already
    /// handed over is adopted by the target (no second release); one its source still
    /// owns (the release never reached its compare-and-set, which fences it) is
    /// reserved and released again. Either way the owner row says who runs it, and
    /// that node's reconcile runs it once its hold lapses.
    Interrupted,
}

/// Moves one user; on failure hands it back to its source.
pub(super) async fn move_one(
    store: &Store,
    id: i64,
    u: &MigrationUser,
    clients: &HashMap<String, AdminClient>,
    opts: &Options,
    report: &(dyn Fn(Progress) + Sync),
) -> Outcome {
    match try_move(store, id, u, clients, opts).await {
        Ok(a) => {
            let _ = store
                .update_migration_user(
                    id,
                    u.user_id,
                    &UserProgress {
                        state: MoveState::Moved.as_str(),
                        downtime_ms: Some(a.downtime_ms),
                        gaps: Some(&a.gaps.join(",")),
                        finished_at: Some(now()),
                        ..UserProgress::default()
                    },
                )
                .await;
            report(Progress::Moved {
                user: u.user_name.clone(),
                to: u.to_node.clone(),
                downtime_ms: a.downtime_ms,
            });
            Outcome::Moved
        }
        Err(e) if store_away(&e) => {
            report(Progress::Interrupted {
                user: u.user_name.clone(),
                error: format!("{e:#}"),
            });
            Outcome::Interrupted
        }
        Err(e) => {
            let error = format!("{e:#}");
            let back = hand_back(store, u, clients, opts).await;
            let rolled_back = back.is_ok();
            let error = match back {
                Ok(()) => error,
                Err(b) => format!("{error}; handing back failed: {b:#}"),
            };
            let _ = store
                .update_migration_user(
                    id,
                    u.user_id,
                    &UserProgress {
                        state: MoveState::Failed.as_str(),
                        error: &error,
                        finished_at: Some(now()),
                        ..UserProgress::default()
                    },
                )
                .await;
            report(Progress::Failed {
                user: u.user_name.clone(),
                error,
                rolled_back,
            });
            Outcome::Failed
        }
    }
}

/// Whether `e` comes from the store being unreachable: the driver's own store calls,
/// or a node that answered 503 (riding out an outage) or failed on its store (its
/// answer names the store's error, possibly under context).
fn store_away(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(s) = c.downcast_ref::<crate::store::StoreError>() {
            return !s.is_permanent();
        }
        if c.downcast_ref::<sqlx::Error>().is_some() {
            return true;
        }
        match c.downcast_ref::<CallError>() {
            Some(CallError::Refused {
                status, message, ..
            }) => {
                *status == 503
                    || message.contains("database error")
                    || message.contains("the store is unreachable")
            }
            _ => false,
        }
    })
}

async fn try_move(
    store: &Store,
    id: i64,
    u: &MigrationUser,
    clients: &HashMap<String, AdminClient>,
    opts: &Options,
) -> anyhow::Result<Adopted> {
    let src = clients
        .get(&u.from_node)
        .context("source node not registered")?;
    let dst = clients
        .get(&u.to_node)
        .context("target node not registered")?;
    let owner = store.owner(u.user_id).await?.context("the user is gone")?;
    let deadline_ms = opts.adopt_deadline_ms;
    // Resuming a user that was already handed over (the driver died mid-move):
    // finish the adopt instead of moving it again.
    if owner.node_id.as_deref() == Some(u.to_node.as_str()) {
        let snap = handoff::encode_snapshot(&crate::user::UserSnapshot {
            user_id: u.user_id,
            last_seq: 0,
            networks: Vec::new(),
        })?;
        return dst
            .post(
                &format!("/migrate/adopt/{}", u.user_id),
                &AdoptRequest {
                    snapshot: snap,
                    quit_at_ms: now(),
                    deadline_ms,
                },
            )
            .await;
    }
    anyhow::ensure!(
        owner.node_id.as_deref() == Some(u.from_node.as_str()),
        "the user is owned by {:?}, not {}",
        owner.node_id,
        u.from_node
    );
    store
        .update_migration_user(
            id,
            u.user_id,
            &UserProgress {
                state: MoveState::Pending.as_str(),
                // A move the previous driver started and did not finish (killed
                // mid-move) continues the same attempt; a failed one is retried anew.
                attempt: u.attempts == 0 || u.state == MoveState::Failed.as_str(),
                started_at: Some(now()),
                ..UserProgress::default()
            },
        )
        .await?;
    let _r: Reserved = dst
        .post(
            &format!("/migrate/reserve/{}", u.user_id),
            &ReserveRequest {
                ttl_ms: deadline_ms + 30_000,
            },
        )
        .await?;
    set_move_state(store, id, u.user_id, MoveState::Reserved).await?;
    set_move_state(store, id, u.user_id, MoveState::Moving).await?;
    let rel: Released = src
        .post(
            &format!("/migrate/release/{}", u.user_id),
            &ReleaseRequest {
                to: u.to_node.clone(),
                quit_message: opts.quit_message.clone(),
            },
        )
        .await?;
    let released = std::time::Instant::now();
    let mut a: Adopted = dst
        .post(
            &format!("/migrate/adopt/{}", u.user_id),
            &AdoptRequest {
                snapshot: rel.snapshot,
                quit_at_ms: rel.quit_at_ms,
                deadline_ms,
            },
        )
        .await?;
    // Downtime on this driver's monotonic clock, from how long before each answer the
    // QUIT and the ready happened: no two nodes' wall clocks are compared. (Each
    // answer's transit time shifts one end; on a LAN that is well under a
    // millisecond.)
    if let (Some(quit_ago), Some(ready_ago)) = (rel.quit_ago_ms, a.ready_ago_ms) {
        let between = released.elapsed().as_millis() as i64;
        a.downtime_ms = (between + quit_ago - ready_ago).max(0);
    }
    Ok(a)
}

/// Puts a user whose move failed back on its source: if the target owns it, the
/// target releases it (QUIT) to the source, which adopts it. Never both at once.
async fn hand_back(
    store: &Store,
    u: &MigrationUser,
    clients: &HashMap<String, AdminClient>,
    opts: &Options,
) -> anyhow::Result<()> {
    let owner = store.owner(u.user_id).await?.context("the user is gone")?;
    let src = clients
        .get(&u.from_node)
        .context("source node not registered")?;
    let snapshot = if owner.node_id.as_deref() == Some(u.to_node.as_str()) {
        let dst = clients
            .get(&u.to_node)
            .context("target node not registered")?;
        match dst
            .post::<Released>(
                &format!("/migrate/release/{}", u.user_id),
                &ReleaseRequest {
                    to: u.from_node.clone(),
                    quit_message: opts.quit_message.clone(),
                },
            )
            .await
        {
            Ok(r) => r.snapshot,
            Err(e) => {
                // The target is gone or refuses: take the user back by CAS; its
                // lease fencing stops the target's actor if it still runs one.
                let owner = store.owner(u.user_id).await?.context("the user is gone")?;
                if owner.node_id.as_deref() == Some(u.to_node.as_str()) {
                    store
                        .assign_user(u.user_id, Some(&u.from_node), owner.epoch)
                        .await?
                        .with_context(|| format!("taking the user back after: {e:#}"))?;
                }
                handoff::encode_snapshot(&crate::user::UserSnapshot {
                    user_id: u.user_id,
                    last_seq: 0,
                    networks: Vec::new(),
                })?
            }
        }
    } else {
        handoff::encode_snapshot(&crate::user::UserSnapshot {
            user_id: u.user_id,
            last_seq: 0,
            networks: Vec::new(),
        })?
    };
    let _: Adopted = src
        .post(
            &format!("/migrate/adopt/{}", u.user_id),
            &AdoptRequest {
                snapshot,
                quit_at_ms: now(),
                deadline_ms: opts.adopt_deadline_ms,
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn refused(status: u16, message: &str) -> anyhow::Error {
        anyhow::Error::new(CallError::Refused {
            node: "n2".into(),
            status,
            message: message.into(),
        })
    }

    #[test]
    fn the_store_away_interrupts_and_other_failures_fail() {
        let own = anyhow::Error::new(StoreError::Db(sqlx::Error::PoolTimedOut)).context("x");
        assert!(store_away(&own));
        assert!(store_away(&refused(
            503,
            "the store is unreachable, try again shortly"
        )));
        assert!(store_away(&refused(409, "database error: pool timed out")));
        // The release's or adopt's own context before the store's error.
        assert!(store_away(&refused(
            409,
            "loading the user's networks: database error: error communicating with database"
        )));
        assert!(!store_away(&refused(
            409,
            "not registered and rejoined within 60000 ms"
        )));
        assert!(!store_away(&anyhow::Error::new(StoreError::Conflict(
            "u1".into()
        ))));
        assert!(!store_away(&anyhow::anyhow!("target node not registered")));
    }
}
