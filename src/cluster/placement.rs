//! Placement: which node runs which user. [`plan`] spreads users over the nodes with
//! headroom (every node computes the same plan from the same snapshot and claims only
//! its own share); [`owner_of`] says where a user runs, for routing its clients.

use std::collections::HashMap;

use anyhow::Context;

use crate::store::{node_state, NodeRecord, Ownership, Store, UserId};

/// A node that may take users in a placement round, with its free capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Upstream sessions it can still take (fd budget minus what it holds).
    pub headroom: i64,
}

/// Places `users` (in order) on `nodes`: each on the node with the most headroom left
/// (ties: the smaller id), skipping full nodes. Deterministic, so every node computes
/// the same plan from the same snapshot and claims only its own share; users left
/// unplaced (every node full) are returned with no node.
pub fn plan(users: &[UserId], nodes: &[Candidate]) -> Vec<(UserId, Option<String>)> {
    let mut free: Vec<(i64, &str)> = nodes.iter().map(|n| (n.headroom, &n.id[..])).collect();
    users
        .iter()
        .map(|&u| {
            let best = free
                .iter_mut()
                .filter(|(h, _)| *h > 0)
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
            match best {
                Some((h, id)) => {
                    *h -= 1;
                    (u, Some((*id).to_owned()))
                }
                None => (u, None),
            }
        })
        .collect()
}

/// The live, active nodes and their headroom, from the node list and owner rows.
pub fn candidates(nodes: &[NodeRecord], live: &[String], owners: &[Ownership]) -> Vec<Candidate> {
    let mut owned: HashMap<&str, i64> = HashMap::new();
    for o in owners {
        if let Some(n) = &o.node_id {
            *owned.entry(n).or_default() += 1;
        }
    }
    nodes
        .iter()
        .filter(|n| n.state == node_state::ACTIVE && live.contains(&n.id))
        .map(|n| {
            let held = n
                .health
                .sessions
                .max(owned.get(&n.id[..]).copied().unwrap_or(0));
            Candidate {
                id: n.id.clone(),
                headroom: n.fd_budget - held,
            }
        })
        .collect()
}

/// The owner row of user `id` (called `name` in the error).
///
/// # Errors
/// Store errors, or there is no such user.
pub async fn ownership(store: &Store, id: UserId, name: &str) -> anyhow::Result<Ownership> {
    store
        .owner(id)
        .await?
        .with_context(|| format!("no user {name:?}"))
}

/// Where a user runs, for routing clients ([`owner_of`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// This node runs the user.
    pub local: bool,
    /// The owning node, `None` while nobody owns the user (failover pending).
    pub node_id: Option<String>,
    /// The owner's advertised HTTP base URL.
    pub http_url: Option<String>,
    /// The owner's advertised IRC `HOST:PORT`.
    pub irc_addr: Option<String>,
}

/// The addresses a node gives out for itself (`--advertise-http`, `--advertise-irc`,
/// else what it listens on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// HTTP base URL.
    pub http: String,
    /// IRC `HOST:PORT`; empty when the node has no IRC listener.
    pub irc: String,
}

/// Where user `id` runs: node `here` (whose addresses are `advertised`, unknown when
/// it has no listeners), another node (with the addresses it registered), or nowhere
/// yet.
///
/// # Errors
/// Store errors, or there is no such user.
pub async fn owner_of(
    store: &Store,
    here: &str,
    advertised: Option<&Advertised>,
    id: UserId,
) -> anyhow::Result<Owner> {
    let owner = store
        .owner(id)
        .await?
        .with_context(|| format!("no user {id}"))?;
    let Some(node_id) = owner.node_id else {
        return Ok(Owner {
            local: false,
            node_id: None,
            http_url: None,
            irc_addr: None,
        });
    };
    if node_id == here {
        return Ok(Owner {
            local: true,
            http_url: advertised.map(|a| a.http.clone()),
            irc_addr: advertised.map(|a| a.irc.clone()),
            node_id: Some(node_id),
        });
    }
    let rec = store.nodes().await?.into_iter().find(|n| n.id == node_id);
    Ok(Owner {
        local: false,
        http_url: rec.as_ref().map(|n| n.http_addr.clone()),
        irc_addr: rec.map(|n| n.irc_addr).filter(|a| !a.is_empty()),
        node_id: Some(node_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, headroom: i64) -> Candidate {
        Candidate {
            id: id.into(),
            headroom,
        }
    }

    #[test]
    fn plan_spreads_by_headroom() {
        let p = plan(&[1, 2, 3, 4, 5], &[c("a", 2), c("b", 4), c("full", 0)]);
        let on = |n: &str| p.iter().filter(|(_, t)| t.as_deref() == Some(n)).count();
        assert_eq!(on("b"), 3, "{p:?}");
        assert_eq!(on("a"), 2, "{p:?}");
        assert_eq!(on("full"), 0);
        // Ties go to the smaller id, so every node computes the same plan.
        assert_eq!(
            plan(&[7], &[c("y", 1), c("x", 1)]),
            vec![(7, Some("x".into()))]
        );
        // Nobody has room: unplaced.
        assert_eq!(plan(&[7], &[c("x", 0)]), vec![(7, None)]);
    }
}
