//! Spill: a user of this node whose every network has waited for a session slot
//! longer than `spill_after` (30 s by default), while another active node has a free
//! slot for each of them, is moved there through the handoff — reserve on the target
//! first (its limiter's slot and connect token: a spill never exceeds the target's
//! limits), release here, adopt there; a failed adopt is handed back. One spill at a
//! time per source node, so spills are paced by the targets' limiters.
//!
//! Only a user with *nothing* connected spills: one with a network connected and
//! another waiting is skipped (and said so once), because moving it would disconnect
//! what is connected.
//!
//! Every node decides for its own users only, from its limiter's queue (who waits,
//! since when) and the placement snapshot of the store (who has room: `cluster::plan`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    handoff, AdminClient, AdoptRequest, Adopted, ReleaseRequest, Released, ReserveRequest, Reserved,
};
use crate::cluster::{self, Candidate, Snapshot};
use crate::services::Services;
use crate::store::{node_state, NodeRecord, UserId};

/// How long a spilled user may take to register and rejoin on its target.
const ADOPT_DEADLINE: Duration = Duration::from_secs(60);

/// A user of this node whose networks all wait for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub user: UserId,
    pub name: String,
    /// How long its longest-waiting network has waited.
    pub waited: Duration,
}

/// What the spill loop remembers between rounds.
#[derive(Default)]
pub struct Spiller {
    /// Users already told to be skipped because something of theirs is connected.
    skipped: HashSet<UserId>,
}

/// The users of this node with every enabled network waiting in the limiter, and
/// (separately) those with some waiting and some not, from the limiter's queue.
async fn waiting_users(s: &Services) -> anyhow::Result<(Vec<Waiter>, Vec<(UserId, String)>)> {
    let now = Instant::now();
    // The upstream's label is `user/network`; a migration's reservation is labelled
    // `migrate:…` and is not a user waiting here.
    let mut by_name: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    for w in s.limiter.waiters() {
        let Some((name, _)) = w.label.split_once('/') else {
            continue;
        };
        if name.contains(':') {
            continue;
        }
        let e = by_name.entry(name.to_owned()).or_insert((0, w.since));
        e.0 += 1;
        e.1 = e.1.min(w.since);
    }
    let mut all = Vec::new();
    let mut partly = Vec::new();
    for (name, (waiting, since)) in by_name {
        let Some(user) = s.store.user_by_name(&name).await? else {
            continue;
        };
        if s.users.get(user.id).is_none() || s.users.is_held(user.id) {
            continue;
        }
        let enabled = s
            .store
            .networks(user.id)
            .await?
            .iter()
            .filter(|n| n.enabled)
            .count();
        if waiting >= enabled {
            all.push(Waiter {
                user: user.id,
                name,
                waited: now.saturating_duration_since(since),
            });
        } else {
            partly.push((user.id, name));
        }
    }
    Ok((all, partly))
}

/// Whether `user` still has every enabled network waiting (checked again right
/// before its release, since a slot may have freed here meanwhile).
async fn still_waiting(s: &Services, user: UserId) -> bool {
    matches!(waiting_users(s).await, Ok((all, _)) if all.iter().any(|w| w.user == user))
}

impl Spiller {
    /// One round: counts the waiting users, and moves each one that waited longer
    /// than `after` to the node with room for all its networks, one at a time.
    /// Returns how many moved.
    ///
    /// # Errors
    /// Store errors; the next round tries again.
    pub async fn round(&mut self, s: &Services, after: Duration) -> anyhow::Result<usize> {
        let me = s.node.id.to_string();
        let (all, partly) = waiting_users(s).await?;
        s.metrics.spill.waiting_users.set(all.len() as i64);
        for (user, name) in &partly {
            if self.skipped.insert(*user) {
                info!(node = %me, user = %name,
                      "spill: skipped, some of the user's networks are connected and moving it would disconnect them");
            }
        }
        self.skipped.retain(|u| partly.iter().any(|(p, _)| p == u));
        let due: Vec<&Waiter> = all.iter().filter(|w| w.waited >= after).collect();
        if due.is_empty() {
            return Ok(0);
        }
        let snap = Snapshot::load(&s.store).await?;
        let caps = snap.caps();
        let mut cluster_demand = snap.cluster_demand();
        let mut others: Vec<Candidate> = snap
            .candidates()
            .into_iter()
            .filter(|c| c.id != me)
            .collect();
        let mut moved = 0;
        for w in due {
            if !s.lease.is_valid() || s.shutdown.is_cancelled() {
                break;
            }
            let need = snap.needs(&[w.user]).remove(0);
            let fits: Vec<Candidate> = others
                .iter()
                .filter(|c| cluster::fits(c, &need, &caps, &cluster_demand))
                .cloned()
                .collect();
            let Some(target) =
                cluster::plan(std::slice::from_ref(&need), &fits, &caps, &cluster_demand)
                    .pop()
                    .and_then(|(_, t)| t)
            else {
                continue;
            };
            let Some(rec) = snap.nodes.iter().find(|n| n.id == target) else {
                continue;
            };
            // The target's slots count as taken for the users after this one.
            if let Some(c) = others.iter_mut().find(|c| c.id == target) {
                c.headroom -= need.keys.len() as i64;
                for k in &need.keys {
                    *c.demand.entry(k.clone()).or_default() += 1;
                    *cluster_demand.entry(k.clone()).or_default() += 1;
                }
            }
            info!(node = %me, user = %w.name, to = %target, waited_ms = w.waited.as_millis() as u64,
                  networks = need.keys.len(),
                  "spill: the user waited for a session slot here; moving it to a node with room for all its networks");
            s.metrics.spill.started.inc();
            match spill_one(s, w.user, rec).await {
                Ok(a) => {
                    s.metrics.spill.completed.inc();
                    moved += 1;
                    info!(node = %me, user = %w.name, to = %target, downtime_ms = a.downtime_ms,
                          "spill: completed");
                }
                Err(e) => {
                    s.metrics.spill.failed.inc();
                    warn!(node = %me, user = %w.name, to = %target, error = %format!("{e:#}"),
                          "spill: failed");
                }
            }
        }
        Ok(moved)
    }
}

/// Moves `user` (every network waiting here) to `target`: reserve there, release
/// here, adopt there; a failed adopt hands the user back here.
async fn spill_one(s: &Services, user: UserId, target: &NodeRecord) -> anyhow::Result<Adopted> {
    anyhow::ensure!(
        target.state == node_state::ACTIVE,
        "target {} is {}",
        target.id,
        target.state
    );
    let me = s.node.id.to_string();
    let client = AdminClient::new(target, s.store.secret_key(), Duration::from_secs(120))?;
    let deadline_ms = ADOPT_DEADLINE.as_millis() as u64;
    let _: Reserved = client
        .post(
            &format!("/migrate/reserve/{user}"),
            &ReserveRequest {
                ttl_ms: deadline_ms + 30_000,
            },
        )
        .await
        .context("reserving on the target")?;
    // A slot may have freed here while the target reserved: then the user connects
    // here and stays (the target's reservation lapses with its hold). Between this
    // check and the release the limiter could still grant one of its connects; the
    // release then stops a connect before it registered, never a registered session.
    anyhow::ensure!(
        still_waiting(s, user).await,
        "a slot freed here meanwhile; the user stays"
    );
    let rel = handoff::release(s, user, &target.id, None).await?;
    let adopted = client
        .post::<Adopted>(
            &format!("/migrate/adopt/{user}"),
            &AdoptRequest {
                snapshot: rel.snapshot,
                quit_at_ms: rel.quit_at_ms,
                deadline_ms,
            },
        )
        .await;
    match adopted {
        Ok(a) => Ok(a),
        Err(e) => {
            hand_back(s, &client, user, &me).await.with_context(|| {
                format!("the target's adopt failed ({e:#}), and handing the user back failed")
            })?;
            Err(e.context("adopt on the target failed; handed back"))
        }
    }
}

/// Takes a user whose adopt failed back from the target: the target releases it to
/// this node (or, when it does not answer, the owner row is taken back by
/// compare-and-set; its fencing stops a stray actor). Reconcile then starts it here,
/// where it waits for a slot again.
async fn hand_back(
    s: &Services,
    client: &AdminClient,
    user: UserId,
    me: &str,
) -> anyhow::Result<()> {
    let owner = s.store.owner(user).await?.context("the user is gone")?;
    if owner.node_id.as_deref() != Some(client.node.as_str()) {
        return Ok(());
    }
    let released = client
        .post::<Released>(
            &format!("/migrate/release/{user}"),
            &ReleaseRequest {
                to: me.to_owned(),
                quit_message: None,
            },
        )
        .await;
    if released.is_err() {
        s.store
            .assign_user(user, Some(me), owner.epoch)
            .await?
            .context("taking the user back")?;
    }
    Ok(())
}
