//! Planning a rebalance (`ferry migrate rebalance`): which users move from the fullest
//! active nodes to the emptiest, until the nodes are within a tolerance of each other
//! in users and in sessions per network, never to a node where one of the user's
//! networks has no free slot.
//!
//! The planner is a pure function of the cluster's snapshot ([`rebalance`]), so a dry
//! run and the run after it choose the same moves. It moves one user at a time, each
//! time the move that lowers the imbalance most (the sum of squared differences from
//! the mean, over users and over each network's sessions); among equal moves the user
//! whose move frees the most contended network slots on its node (sessions held over
//! the per-IP limit), then the smaller user id, then the smaller target id. A node
//! that gives users never receives any and the reverse, and nobody moves twice, so the
//! plan's moves can run in parallel batches like a drain's.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::plan::{bounds_for, NetLimits, Plan, PlanUser, Planned, SlotUse};
/// Defined with the cluster settings (`[cluster] auto_rebalance_tolerance` is one).
pub use crate::cluster::Tolerance;
use crate::store::UserId;

/// An active node in a rebalance: what it runs and what it can still take.
#[derive(Clone, Debug)]
pub struct RebalanceNode {
    pub id: String,
    /// Its egress addresses (at least one entry; `default` when unbound). A user's
    /// address is chosen by its id, as the node itself does.
    pub source_ips: Vec<String>,
    /// Upstream sessions it can still take (fd budget minus what it holds).
    pub headroom: i64,
    /// The users it runs, with the limits keys of their enabled networks.
    pub users: Vec<PlanUser>,
}

/// One node's load before and after the plan.
#[derive(Clone, Debug, Serialize)]
pub struct NodeBalance {
    pub node: String,
    pub users_before: i64,
    pub users_after: i64,
    /// Sessions per network (limits key): (before, after).
    pub sessions: BTreeMap<String, (i64, i64)>,
}

/// A rebalance plan: the moves (as a [`Plan`], shown and run like a drain's), where
/// each moving user comes from, and the balance before and after.
#[derive(Clone, Debug, Serialize)]
pub struct Rebalance {
    pub plan: Plan,
    /// The node each planned user leaves.
    pub from: BTreeMap<UserId, String>,
    pub nodes: Vec<NodeBalance>,
    pub tolerance: Tolerance,
    /// Whether the nodes are within the tolerance after the plan.
    pub balanced: bool,
    /// Why the plan stops short of the tolerance (empty when it does not).
    pub note: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Free,
    Gives,
    Takes,
}

/// The user's source address on node `n` (the node's rule: by user id).
fn ip_of(n: &RebalanceNode, user: UserId) -> &str {
    let ips = &n.source_ips;
    if ips.is_empty() {
        return "default";
    }
    &ips[user.unsigned_abs() as usize % ips.len()]
}

/// The working state of the planner.
struct Load<'a> {
    nodes: &'a [RebalanceNode],
    users: Vec<i64>,
    /// Sessions per (node, key).
    sessions: Vec<BTreeMap<&'a str, i64>>,
    /// Sessions per (node, key, source IP).
    held: Vec<BTreeMap<(&'a str, &'a str), i64>>,
    free: Vec<i64>,
    keys: BTreeSet<&'a str>,
}

impl<'a> Load<'a> {
    fn new(nodes: &'a [RebalanceNode]) -> Self {
        let mut l = Load {
            nodes,
            users: nodes.iter().map(|n| n.users.len() as i64).collect(),
            sessions: vec![BTreeMap::new(); nodes.len()],
            held: vec![BTreeMap::new(); nodes.len()],
            free: nodes.iter().map(|n| n.headroom).collect(),
            keys: BTreeSet::new(),
        };
        for (i, n) in nodes.iter().enumerate() {
            for u in &n.users {
                let ip = ip_of(n, u.id);
                for k in &u.networks {
                    l.keys.insert(k);
                    *l.sessions[i].entry(k).or_default() += 1;
                    *l.held[i].entry((k, ip)).or_default() += 1;
                }
            }
        }
        l
    }

    fn sessions(&self, i: usize, k: &str) -> i64 {
        self.sessions[i].get(k).copied().unwrap_or(0)
    }

    /// What is out of tolerance, as text (`None`: all within).
    fn out_of_tolerance(&self, tol: Tolerance) -> Option<String> {
        let n = self.nodes.len();
        if n < 2 {
            return None;
        }
        let spread = |v: &[i64]| -> (i64, f64) {
            let max = v.iter().copied().max().unwrap_or(0);
            let min = v.iter().copied().min().unwrap_or(0);
            (max - min, v.iter().sum::<i64>() as f64 / v.len() as f64)
        };
        let (d, mean) = spread(&self.users);
        if d > tol.allowance(mean) {
            return Some(format!(
                "users differ by {d} between nodes (tolerance {})",
                tol.allowance(mean)
            ));
        }
        for k in &self.keys {
            let v: Vec<i64> = (0..n).map(|i| self.sessions(i, k)).collect();
            let (d, mean) = spread(&v);
            if d > tol.allowance(mean) {
                return Some(format!(
                    "sessions on {k} differ by {d} between nodes (tolerance {})",
                    tol.allowance(mean)
                ));
            }
        }
        None
    }

    /// Whether node `j` has a free slot on every network of `u` and the headroom.
    fn fits(&self, j: usize, u: &PlanUser, limits: &BTreeMap<String, NetLimits>) -> bool {
        if self.free[j] < u.networks.len().max(1) as i64 {
            return false;
        }
        let ip = ip_of(&self.nodes[j], u.id);
        // A user with the same network twice needs two slots.
        let mut need: BTreeMap<&str, i64> = BTreeMap::new();
        for k in &u.networks {
            *need.entry(k).or_default() += 1;
        }
        need.into_iter().all(
            |(k, n)| match limits.get(k).and_then(|l| l.sessions_per_ip) {
                Some(cap) => self.held[j].get(&(k, ip)).copied().unwrap_or(0) + n <= i64::from(cap),
                None => true,
            },
        )
    }

    /// How much moving `u` from `i` to `j` changes the imbalance (negative: better).
    fn delta(&self, i: usize, j: usize, u: &PlanUser) -> i64 {
        let mut d = 2 * (self.users[j] - self.users[i] + 1);
        for k in &u.networks {
            d += 2 * (self.sessions(j, k) - self.sessions(i, k) + 1);
        }
        d
    }

    /// How contended the slots are that moving `u` off node `i` frees: per network,
    /// the share of the per-IP limit its address there holds (in thousandths).
    fn contention(&self, i: usize, u: &PlanUser, limits: &BTreeMap<String, NetLimits>) -> i64 {
        let ip = ip_of(&self.nodes[i], u.id);
        u.networks
            .iter()
            .filter_map(|k| {
                let cap = limits.get(k)?.sessions_per_ip.filter(|c| *c > 0)?;
                let held = self.held[i].get(&(k.as_str(), ip)).copied().unwrap_or(0);
                Some(held * 1000 / i64::from(cap))
            })
            .sum()
    }

    fn apply(&mut self, i: usize, j: usize, u: &'a PlanUser) {
        let (ipi, ipj) = (ip_of(&self.nodes[i], u.id), ip_of(&self.nodes[j], u.id));
        self.users[i] -= 1;
        self.users[j] += 1;
        let need = u.networks.len().max(1) as i64;
        self.free[i] += need;
        self.free[j] -= need;
        for k in &u.networks {
            *self.sessions[i].entry(k).or_default() -= 1;
            *self.sessions[j].entry(k).or_default() += 1;
            *self.held[i].entry((k, ipi)).or_default() -= 1;
            *self.held[j].entry((k, ipj)).or_default() += 1;
        }
    }
}

/// Plans a rebalance of `nodes` (the live active nodes): at most `max_moves` moves,
/// canary batch 0 first, then batches of `batch`.
pub fn rebalance(
    nodes: &[RebalanceNode],
    limits: &BTreeMap<String, NetLimits>,
    tolerance: Tolerance,
    max_moves: Option<usize>,
    batch: usize,
    canary: usize,
) -> Rebalance {
    let mut load = Load::new(nodes);
    let before = load.sessions.clone();
    let mut role = vec![Role::Free; nodes.len()];
    let mut moved: BTreeSet<UserId> = BTreeSet::new();
    let mut moves: Vec<(usize, usize, &PlanUser)> = Vec::new();
    let max_moves = max_moves.unwrap_or(usize::MAX);
    let mut note = String::new();
    while let Some(why) = load.out_of_tolerance(tolerance) {
        if moves.len() >= max_moves {
            note = format!("{why} after {} moves (--max-moves)", moves.len());
            break;
        }
        // (delta, more contention first, user id, target id) → (source, target, user).
        type Key<'k> = (i64, Reverse<i64>, UserId, &'k str);
        let mut best: Option<(Key<'_>, usize, usize, &PlanUser)> = None;
        for (i, src) in nodes.iter().enumerate() {
            if role[i] == Role::Takes {
                continue;
            }
            for u in src.users.iter().filter(|u| !moved.contains(&u.id)) {
                let contention = load.contention(i, u, limits);
                for (j, dst) in nodes.iter().enumerate() {
                    if j == i || role[j] == Role::Gives {
                        continue;
                    }
                    let d = load.delta(i, j, u);
                    if d >= 0 || !load.fits(j, u, limits) {
                        continue;
                    }
                    let key = (d, Reverse(contention), u.id, dst.id.as_str());
                    let better = match &best {
                        None => true,
                        Some((b, ..)) => key < *b,
                    };
                    if better {
                        best = Some((key, i, j, u));
                    }
                }
            }
        }
        let Some((_, i, j, u)) = best else {
            note = format!("{why}: no further move fits the targets' limits");
            break;
        };
        load.apply(i, j, u);
        role[i] = Role::Gives;
        role[j] = Role::Takes;
        moved.insert(u.id);
        moves.push((i, j, u));
    }
    let balanced = load.out_of_tolerance(tolerance).is_none();

    let batch = batch.max(1);
    let users: Vec<Planned> = moves
        .iter()
        .enumerate()
        .map(|(n, (_, j, u))| Planned {
            user_id: u.id,
            user_name: u.name.clone(),
            to: nodes[*j].id.clone(),
            batch: if n < canary {
                0
            } else {
                1 + ((n - canary) / batch) as i64
            },
        })
        .collect();
    let from = moves
        .iter()
        .map(|(i, _, u)| (u.id, nodes[*i].id.clone()))
        .collect();
    // What each target gets per network and address, next to what it held before.
    let mut planned: BTreeMap<(usize, &str, &str), i64> = BTreeMap::new();
    for (_, j, u) in &moves {
        let ip = ip_of(&nodes[*j], u.id);
        for k in &u.networks {
            *planned.entry((*j, k, ip)).or_default() += 1;
        }
    }
    let original = Load::new(nodes);
    let slots = planned
        .into_iter()
        .map(|((j, k, ip), n)| SlotUse {
            target: nodes[j].id.clone(),
            network: k.to_owned(),
            source_ip: ip.to_owned(),
            held: original.held[j].get(&(k, ip)).copied().unwrap_or(0),
            planned: n,
            limit: limits.get(k).and_then(|l| l.sessions_per_ip),
        })
        .collect();
    let moving: Vec<PlanUser> = moves.iter().map(|(_, _, u)| (*u).clone()).collect();
    let target_ips: usize = (0..nodes.len())
        .filter(|j| role[*j] == Role::Takes)
        .map(|j| nodes[j].source_ips.len().max(1))
        .sum();
    let (bounds, eta_seconds) = bounds_for(&moving, target_ips, limits);
    let balance = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeBalance {
            node: n.id.clone(),
            users_before: n.users.len() as i64,
            users_after: load.users[i],
            sessions: load
                .keys
                .iter()
                .map(|k| {
                    let b = before[i].get(k).copied().unwrap_or(0);
                    ((*k).to_owned(), (b, load.sessions(i, k)))
                })
                .collect(),
        })
        .collect();
    Rebalance {
        plan: Plan {
            users,
            slots,
            bounds,
            eta_seconds,
            problems: Vec::new(),
        },
        from,
        nodes: balance,
        tolerance,
        balanced,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: UserId, nets: &[&str]) -> PlanUser {
        PlanUser {
            id,
            name: format!("u{id}"),
            networks: nets.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn node(id: &str, ip: &str, users: Vec<PlanUser>) -> RebalanceNode {
        RebalanceNode {
            id: id.into(),
            source_ips: vec![ip.into()],
            headroom: 1000,
            users,
        }
    }

    fn limits(key: &str, per_ip: u32) -> BTreeMap<String, NetLimits> {
        let mut l = BTreeMap::new();
        l.insert(
            key.to_owned(),
            NetLimits {
                sessions_per_ip: Some(per_ip),
                connects_per_minute: Some(60.0),
                burst: 1,
                connects_per_minute_total: None,
            },
        );
        l
    }

    fn moved_to(r: &Rebalance, node: &str) -> Vec<UserId> {
        r.plan
            .users
            .iter()
            .filter(|p| p.to == node)
            .map(|p| p.user_id)
            .collect()
    }

    #[test]
    fn fills_an_empty_node_to_within_the_tolerance() {
        let all: Vec<PlanUser> = (1..=8).map(|i| user(i, &["irc.a"])).collect();
        let nodes = [node("n1", "ip1", all), node("n2", "ip2", vec![])];
        let r = rebalance(
            &nodes,
            &limits("irc.a", 50),
            Tolerance::Count(1),
            None,
            2,
            1,
        );
        assert_eq!(r.plan.users.len(), 4, "{:?}", r.plan.users);
        assert!(r.balanced && r.note.is_empty(), "{}", r.note);
        assert!(r.from.values().all(|n| n == "n1"));
        assert_eq!(
            r.plan.users.iter().map(|u| u.batch).collect::<Vec<_>>(),
            [0, 1, 1, 2]
        );
        assert_eq!(r.nodes[1].users_after, 4);
        assert_eq!(r.nodes[1].sessions["irc.a"], (0, 4));
        // 4 connects after 1 preflight probe, burst 1 on one address, 1 a second.
        assert!(
            (r.plan.eta_seconds - 4.0).abs() < 1e-9,
            "{}",
            r.plan.eta_seconds
        );
        // A wider tolerance needs fewer moves; a balanced cluster none.
        let r3 = rebalance(
            &nodes,
            &limits("irc.a", 50),
            Tolerance::Count(4),
            None,
            2,
            1,
        );
        assert_eq!(r3.plan.users.len(), 2);
        let even = [
            node("n1", "ip1", (1..=4).map(|i| user(i, &["irc.a"])).collect()),
            node("n2", "ip2", (5..=8).map(|i| user(i, &["irc.a"])).collect()),
        ];
        let none = rebalance(&even, &BTreeMap::new(), Tolerance::Count(1), None, 2, 1);
        assert!(none.plan.users.is_empty() && none.balanced);
    }

    #[test]
    fn never_moves_a_user_where_a_network_has_no_free_slot() {
        // n2 may hold 2 sessions on irc.b from its one address, and already holds 1:
        // only one user of irc.b can go there; users of irc.a alone fill the rest.
        let mut n1 = Vec::new();
        for i in 1..=4 {
            n1.push(user(i, &["irc.a", "irc.b"]));
        }
        for i in 5..=10 {
            n1.push(user(i, &["irc.a"]));
        }
        let nodes = [
            node("n1", "ip1", n1),
            node("n2", "ip2", vec![user(11, &["irc.b"])]),
        ];
        let mut l = limits("irc.a", 50);
        l.extend(limits("irc.b", 2));
        let r = rebalance(&nodes, &l, Tolerance::Count(1), None, 10, 0);
        let to_n2 = moved_to(&r, "n2");
        let with_b = to_n2.iter().filter(|id| **id <= 4).count();
        assert_eq!(with_b, 1, "{to_n2:?}");
        let b_slots: i64 = r
            .plan
            .slots
            .iter()
            .filter(|s| s.network == "irc.b")
            .map(|s| s.held + s.planned)
            .sum();
        assert!(b_slots <= 2, "{:?}", r.plan.slots);
        // The user of both networks goes first (it evens out both), the smallest id.
        assert_eq!(r.plan.users[0].user_id, 1);
        // Headroom counts too: a target with room for 2 sessions takes 2 users of one
        // network, then stops.
        let mut tight = nodes.clone();
        tight[1].headroom = 2;
        let r = rebalance(&tight, &l, Tolerance::Count(1), None, 10, 0);
        let sessions: usize = r
            .plan
            .users
            .iter()
            .map(|p| {
                tight[0]
                    .users
                    .iter()
                    .find(|u| u.id == p.user_id)
                    .unwrap()
                    .networks
                    .len()
            })
            .sum();
        assert!(sessions <= 2, "{:?}", r.plan.users);
        assert!(
            !r.balanced && r.note.contains("no further move fits"),
            "{}",
            r.note
        );
    }

    #[test]
    fn max_moves_caps_the_plan_and_says_so() {
        let all: Vec<PlanUser> = (1..=20).map(|i| user(i, &["irc.a"])).collect();
        let nodes = [
            node("n1", "ip1", all),
            node("n2", "ip2", vec![]),
            node("n3", "ip3", vec![]),
        ];
        let r = rebalance(
            &nodes,
            &BTreeMap::new(),
            Tolerance::Count(1),
            Some(5),
            50,
            2,
        );
        assert_eq!(r.plan.users.len(), 5);
        assert!(!r.balanced && r.note.contains("--max-moves"), "{}", r.note);
        // Both empty nodes get users, alternately (each move goes where it helps most).
        assert_eq!(moved_to(&r, "n2").len(), 3);
        assert_eq!(moved_to(&r, "n3").len(), 2);
        let full = rebalance(&nodes, &BTreeMap::new(), Tolerance::Count(1), None, 50, 2);
        assert_eq!(full.plan.users.len(), 13, "20 → 7/7/6");
        assert!(full.balanced);
    }

    #[test]
    fn balances_sessions_per_network_not_only_users() {
        // Users 1–4 are on irc.a, 5–8 on irc.b: moving the four smallest ids would
        // even out users and leave every irc.b session on n1.
        let users: Vec<PlanUser> = (1..=8)
            .map(|i| user(i, &[if i <= 4 { "irc.a" } else { "irc.b" }]))
            .collect();
        let nodes = [node("n1", "ip1", users), node("n2", "ip2", vec![])];
        let r = rebalance(&nodes, &BTreeMap::new(), Tolerance::Count(1), None, 50, 0);
        assert!(r.balanced, "{} {:?}", r.note, r.nodes);
        assert_eq!(moved_to(&r, "n2"), [1, 5, 2, 6]);
        assert_eq!(r.nodes[1].sessions["irc.a"], (0, 2));
        assert_eq!(r.nodes[1].sessions["irc.b"], (0, 2));
        // Three nodes: nobody moves twice and no node both gives and takes.
        let mut three = nodes.to_vec();
        three.push(node("n3", "ip3", vec![user(9, &["irc.a"])]));
        let r = rebalance(&three, &BTreeMap::new(), Tolerance::Count(1), None, 50, 0);
        assert!(r.balanced, "{} {:?}", r.note, r.nodes);
        let ids: BTreeSet<_> = r.plan.users.iter().map(|u| u.user_id).collect();
        assert_eq!(ids.len(), r.plan.users.len());
        for p in &r.plan.users {
            assert!(!r.from.values().any(|f| *f == p.to));
        }
    }

    #[test]
    fn prefers_users_on_contended_slots_and_is_deterministic() {
        // n1 dials from two addresses, by user id: odd ids (1, 3, 5, 7, 9) from ip1b,
        // which holds 5 of irc.a's 5 slots per address, even ids (2, 4) from ip1a,
        // which holds 2. Every move evens the nodes out as much as any other, so the
        // users on the full address go first, the smallest id first.
        let n1 = RebalanceNode {
            id: "n1".into(),
            source_ips: vec!["ip1a".into(), "ip1b".into()],
            headroom: 100,
            users: (1..=9)
                .filter(|i| *i % 2 == 1 || *i <= 4)
                .map(|i| user(i, &["irc.a"]))
                .collect(),
        };
        let nodes = [n1, node("n2", "ip2", vec![])];
        let l = limits("irc.a", 5);
        let r = rebalance(&nodes, &l, Tolerance::Count(1), None, 50, 0);
        // 7 users → 4 and 3; ip1b: 5/5, then 4/5, then 3/5, each fuller than ip1a.
        assert_eq!(
            r.plan.users.iter().map(|u| u.user_id).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        let again = rebalance(&nodes, &l, Tolerance::Count(1), None, 50, 0);
        assert_eq!(
            serde_json::to_string(&r.plan.users).unwrap(),
            serde_json::to_string(&again.plan.users).unwrap()
        );
    }
}
