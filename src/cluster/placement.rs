//! Placement: which node runs which user. [`plan`] puts each user on the node that can
//! connect *all* of its networks soonest — free session slots per limits key on the
//! node's source IPs (after the cluster's `sessions_total` cap), then how long its
//! queue for those keys is, then file-descriptor headroom and memory. Every node
//! computes the same plan from the same [`Snapshot`] of the store and claims only its
//! own share; [`owner_of`] says where a user runs, for routing its clients.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use chrono::Utc;

use crate::limits::key;
use crate::store::{
    node_state, NetworkLimits, NodeRecord, Ownership, PlacedNetwork, Store, StoreError, UserId,
};

/// A node that may take users in a placement round, with its free capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Upstream sessions it can still take (fd budget minus what it holds).
    pub headroom: i64,
    /// Source IPs it dials from (an unbound node counts as one address).
    pub source_ips: i64,
    /// Per limits key: sessions it already serves or owes (held and waiting, or its
    /// users' enabled networks under the key, whichever is more).
    pub demand: BTreeMap<String, i64>,
    /// Resident memory: the last tie-break, after fd headroom.
    pub rss_bytes: i64,
}

/// The limits placement weighs for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCaps {
    /// `sessions_per_ip`.
    pub per_ip: Option<i64>,
    /// `sessions_total` across the cluster.
    pub total: Option<i64>,
}

/// What one user needs: the limits key of each of its enabled networks (a key
/// appears once per network under it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub user: UserId,
    pub keys: Vec<String>,
}

/// Free slots for `key` on node `c` given the cluster's demand for it; `i64::MAX`
/// when nothing caps it. Negative: that many connects are queued beyond capacity.
fn free_on(c: &Candidate, key: &str, caps: Option<&KeyCaps>, cluster: i64) -> i64 {
    let held = c.demand.get(key).copied().unwrap_or(0);
    let caps = caps.copied().unwrap_or_default();
    let local = caps
        .per_ip
        .map_or(i64::MAX, |p| p.saturating_mul(c.source_ips.max(1)) - held);
    let total = caps.total.map_or(i64::MAX, |t| t - cluster);
    local.min(total)
}

/// How node `c` would serve `need`: (connects that would wait beyond free slots,
/// fewest free slots left among its keys). Smaller wait first, then more room.
fn score(
    c: &Candidate,
    need: &Need,
    caps: &HashMap<String, KeyCaps>,
    cluster: &HashMap<String, i64>,
) -> (i64, i64) {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for k in &need.keys {
        *count.entry(k).or_default() += 1;
    }
    let mut wait = 0i64;
    let mut room = i64::MAX;
    for (k, n) in count {
        let free = free_on(c, k, caps.get(k), cluster.get(k).copied().unwrap_or(0));
        wait = wait.max(n.saturating_sub(free).max(0));
        room = room.min(free.saturating_sub(n));
    }
    (wait, room)
}

/// Whether node `c` has a free slot for every network of `need` (networks under one
/// key counted together) and fd headroom for them: a spill target.
pub fn fits(
    c: &Candidate,
    need: &Need,
    caps: &HashMap<String, KeyCaps>,
    cluster: &HashMap<String, i64>,
) -> bool {
    c.headroom >= (need.keys.len() as i64).max(1) && score(c, need, caps, cluster).0 == 0
}

/// Places `users` (in order) on `nodes`: each on the node that can connect all of its
/// networks soonest — no connect waiting beyond the node's free slots first, then the
/// shortest wait, then the most slots left, the most fd headroom, the least memory,
/// the smaller id — skipping nodes without fd headroom. Each placement counts against
/// the node for the users after it. Deterministic, so every node computes the same
/// plan from the same snapshot and claims only its own share; users left unplaced
/// (every node full) are returned with no node. `cluster` is each key's demand over
/// every live node (what `sessions_total` weighs).
pub fn plan(
    users: &[Need],
    nodes: &[Candidate],
    caps: &HashMap<String, KeyCaps>,
    cluster: &HashMap<String, i64>,
) -> Vec<(UserId, Option<String>)> {
    let mut nodes: Vec<Candidate> = nodes.to_vec();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut cluster = cluster.clone();
    users
        .iter()
        .map(|need| {
            let best = nodes
                .iter_mut()
                .filter(|n| n.headroom > 0)
                .map(|n| (score(n, need, caps, &cluster), n))
                .min_by(|(a, x), (b, y)| {
                    a.0.cmp(&b.0)
                        .then(b.1.cmp(&a.1))
                        .then(y.headroom.cmp(&x.headroom))
                        .then(x.rss_bytes.cmp(&y.rss_bytes))
                        .then(x.id.cmp(&y.id))
                });
            match best {
                Some((_, n)) => {
                    n.headroom -= (need.keys.len() as i64).max(1);
                    for k in &need.keys {
                        *n.demand.entry(k.clone()).or_default() += 1;
                        *cluster.entry(k.clone()).or_default() += 1;
                    }
                    (need.user, Some(n.id.clone()))
                }
                None => (need.user, None),
            }
        })
        .collect()
}

/// The live, active nodes and their fd headroom alone, from the node list and owner
/// rows (what a drain's plan weighs per target; placement uses [`Snapshot`]).
pub fn candidates(nodes: &[NodeRecord], live: &[String], owners: &[Ownership]) -> Vec<Candidate> {
    let snap = Snapshot {
        nodes: nodes.to_vec(),
        live: live.to_vec(),
        owners: owners.to_vec(),
        limits: Vec::new(),
        networks: Vec::new(),
    };
    snap.candidates()
}

/// What placement reads from the store, once per round: nodes, owners, limits and
/// every enabled network with its user's owner.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub nodes: Vec<NodeRecord>,
    /// Active nodes with a live lease (by the database's clock): who may take users.
    pub live: Vec<String>,
    pub owners: Vec<Ownership>,
    pub limits: Vec<NetworkLimits>,
    pub networks: Vec<PlacedNetwork>,
}

impl Snapshot {
    /// Reads a snapshot.
    ///
    /// # Errors
    /// Store errors.
    pub async fn load(store: &Store) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            nodes: store.nodes().await?,
            live: store.live_active_nodes().await?,
            owners: store.ownerships().await?,
            limits: store.network_limits().await?,
            networks: store.placed_networks().await?,
        })
    }

    /// The limits key of a network, by the limiter's own rule.
    pub fn key_of(&self, addr: &str, name: &str) -> String {
        key::resolve(
            self.limits.iter().map(|l| l.key.as_str()),
            &key::host_of(addr),
            name,
        )
    }

    /// The caps per configured key.
    pub fn caps(&self) -> HashMap<String, KeyCaps> {
        self.limits
            .iter()
            .map(|l| {
                let caps = KeyCaps {
                    per_ip: Some(i64::from(l.sessions_per_ip)),
                    total: l.sessions_total.map(i64::from),
                };
                (l.key.clone(), caps)
            })
            .collect()
    }

    /// What each of `users` needs, in that order.
    pub fn needs(&self, users: &[UserId]) -> Vec<Need> {
        let mut by_user: HashMap<UserId, Vec<String>> = HashMap::new();
        for n in &self.networks {
            by_user
                .entry(n.user_id)
                .or_default()
                .push(self.key_of(&n.addr, &n.name));
        }
        users
            .iter()
            .map(|u| Need {
                user: *u,
                keys: by_user.remove(u).unwrap_or_default(),
            })
            .collect()
    }

    /// Every node's demand per key: the larger of what it published (held and
    /// waiting) and its owned users' enabled networks.
    fn demand(&self) -> HashMap<&str, BTreeMap<String, i64>> {
        let mut owned: HashMap<&str, BTreeMap<String, i64>> = HashMap::new();
        for n in &self.networks {
            if let Some(node) = n.node_id.as_deref() {
                *owned
                    .entry(node)
                    .or_default()
                    .entry(self.key_of(&n.addr, &n.name))
                    .or_default() += 1;
            }
        }
        for rec in &self.nodes {
            let d = owned.entry(rec.id.as_str()).or_default();
            for (k, l) in &rec.health.key_load {
                let v = d.entry(k.clone()).or_default();
                *v = (*v).max(l.held + l.waiting);
            }
        }
        owned
    }

    /// Nodes that still hold sessions: not dead, lease not over (by this clock).
    fn is_live(rec: &NodeRecord) -> bool {
        rec.state != node_state::DEAD && rec.lease_expires_at > Utc::now()
    }

    /// Each key's demand over every live node.
    pub fn cluster_demand(&self) -> HashMap<String, i64> {
        let demand = self.demand();
        let mut out: HashMap<String, i64> = HashMap::new();
        for rec in self.nodes.iter().filter(|r| Self::is_live(r)) {
            for (k, v) in demand.get(rec.id.as_str()).into_iter().flatten() {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    /// Node `rec` as a placement candidate (whatever its state).
    pub fn candidate(&self, rec: &NodeRecord) -> Candidate {
        let owned = self
            .owners
            .iter()
            .filter(|o| o.node_id.as_deref() == Some(rec.id.as_str()))
            .count() as i64;
        let held = rec.health.sessions.max(owned);
        Candidate {
            id: rec.id.clone(),
            headroom: rec.fd_budget - held,
            source_ips: (rec.source_ips.len() as i64).max(1),
            demand: self.demand().remove(rec.id.as_str()).unwrap_or_default(),
            rss_bytes: rec.health.rss_bytes,
        }
    }

    /// The live, active nodes as candidates.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.nodes
            .iter()
            .filter(|n| n.state == node_state::ACTIVE && self.live.contains(&n.id))
            .map(|n| self.candidate(n))
            .collect()
    }

    /// Places `users` over the live active nodes (see [`plan`]).
    pub fn plan(&self, users: &[UserId]) -> Vec<(UserId, Option<String>)> {
        plan(
            &self.needs(users),
            &self.candidates(),
            &self.caps(),
            &self.cluster_demand(),
        )
    }

    /// Free session slots per configured key on node `rec` (negative: connects
    /// queued beyond its slots), after the cluster's `sessions_total` cap.
    pub fn free_slots(&self, rec: &NodeRecord) -> BTreeMap<String, i64> {
        let c = self.candidate(rec);
        let caps = self.caps();
        let cluster = self.cluster_demand();
        caps.iter()
            .map(|(k, cap)| {
                let free = free_on(&c, k, Some(cap), cluster.get(k).copied().unwrap_or(0));
                (k.clone(), free)
            })
            .collect()
    }

    /// Whether node `rec` has a free slot for every network `need` has (counting
    /// networks under one key together).
    pub fn has_room_for(&self, rec: &NodeRecord, need: &Need) -> bool {
        fits(
            &self.candidate(rec),
            need,
            &self.caps(),
            &self.cluster_demand(),
        )
    }
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
            source_ips: 1,
            ..Candidate::default()
        }
    }

    fn need(user: UserId, keys: &[&str]) -> Need {
        Need {
            user,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn none() -> HashMap<String, i64> {
        HashMap::new()
    }

    #[test]
    fn plan_spreads_by_headroom() {
        let users: Vec<Need> = (1..=5).map(|u| need(u, &[])).collect();
        let p = plan(
            &users,
            &[c("a", 2), c("b", 4), c("full", 0)],
            &HashMap::new(),
            &none(),
        );
        let on = |n: &str| p.iter().filter(|(_, t)| t.as_deref() == Some(n)).count();
        assert_eq!(on("b"), 3, "{p:?}");
        assert_eq!(on("a"), 2, "{p:?}");
        assert_eq!(on("full"), 0);
        // Ties go to the smaller id, so every node computes the same plan.
        assert_eq!(
            plan(
                &[need(7, &[])],
                &[c("y", 1), c("x", 1)],
                &HashMap::new(),
                &none()
            ),
            vec![(7, Some("x".into()))]
        );
        // Nobody has room: unplaced.
        assert_eq!(
            plan(&[need(7, &[])], &[c("x", 0)], &HashMap::new(), &none()),
            vec![(7, None)]
        );
    }

    fn caps(per_ip: i64, total: Option<i64>) -> HashMap<String, KeyCaps> {
        HashMap::from([(
            "net".to_owned(),
            KeyCaps {
                per_ip: Some(per_ip),
                total,
            },
        )])
    }

    #[test]
    fn plan_goes_where_the_networks_have_slots() {
        // n1 holds 15 sessions of a network that allows 15 per IP; n2 and n3 hold
        // none but n1 has far more fd headroom: the users still go to n2 and n3.
        let mut n1 = c("n1", 10_000);
        n1.demand.insert("net".into(), 15);
        let nodes = [n1, c("n2", 100), c("n3", 100)];
        let cluster = HashMap::from([("net".to_owned(), 15)]);
        let users: Vec<Need> = (1..=30).map(|u| need(u, &["net"])).collect();
        let p = plan(&users, &nodes, &caps(15, None), &cluster);
        let on = |n: &str| p.iter().filter(|(_, t)| t.as_deref() == Some(n)).count();
        assert_eq!((on("n1"), on("n2"), on("n3")), (0, 15, 15), "{p:?}");
        // A 31st user waits somewhere: on the node with the shortest queue, spread.
        let users: Vec<Need> = (1..=33).map(|u| need(u, &["net"])).collect();
        let p = plan(&users, &nodes, &caps(15, None), &cluster);
        let on = |n: &str| p.iter().filter(|(_, t)| t.as_deref() == Some(n)).count();
        assert_eq!((on("n1"), on("n2"), on("n3")), (1, 16, 16), "{p:?}");
    }

    #[test]
    fn plan_needs_room_for_every_network_and_counts_source_ips() {
        // n1 has room for "a" only, n2 for both: a user on a and b goes to n2 even
        // though n1 has more room for a.
        let mut n1 = c("n1", 100);
        n1.demand.insert("b".into(), 4);
        let mut n2 = c("n2", 100);
        n2.demand.insert("a".into(), 3);
        let caps: HashMap<String, KeyCaps> = ["a", "b"]
            .into_iter()
            .map(|k| {
                let cap = KeyCaps {
                    per_ip: Some(4),
                    total: None,
                };
                (k.to_owned(), cap)
            })
            .collect();
        let p = plan(&[need(1, &["a", "b"])], &[n1, n2], &caps, &none());
        assert_eq!(p, vec![(1, Some("n2".into()))]);
        // Two source IPs double a node's slots.
        let mut two = c("two", 100);
        two.source_ips = 2;
        two.demand.insert("net".into(), 3);
        let mut one = c("one", 100);
        one.demand.insert("net".into(), 2);
        let p = plan(&[need(1, &["net"])], &[one, two], &caps_net(2), &none());
        assert_eq!(
            p,
            vec![(1, Some("two".into()))],
            "1 free on two, none on one"
        );
    }

    fn caps_net(per_ip: i64) -> HashMap<String, KeyCaps> {
        caps(per_ip, None)
    }

    #[test]
    fn plan_respects_the_cluster_total() {
        // 10 per IP on each node, but only 12 sessions in all: once the cluster holds
        // 12, every node is equally full and fd headroom decides.
        let mut n1 = c("n1", 100);
        n1.demand.insert("net".into(), 6);
        let mut n2 = c("n2", 50);
        n2.demand.insert("net".into(), 6);
        let cluster = HashMap::from([("net".to_owned(), 12)]);
        let p = plan(
            &[need(1, &["net"])],
            &[n1, n2],
            &caps(10, Some(12)),
            &cluster,
        );
        assert_eq!(p, vec![(1, Some("n1".into()))]);
    }
}
