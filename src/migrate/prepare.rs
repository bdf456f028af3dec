//! From the store to a plan ([`make_plan`]: who moves where, keyed by the limiter's
//! own rule), and from a plan to a stored migration ([`create`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::plan::{NetLimits, Plan, PlanTarget, PlanUser};
use super::rebalance::{Rebalance, RebalanceNode, Tolerance};
use super::{now, MigrationKind, MoveState, Options};
use crate::store::migrate::{MigrationUser, NewMigration};
use crate::store::{node_state, Store, UserId};

/// The network limits the plan honours (`ferry limits set`), by their key.
pub async fn load_limits(store: &Store) -> anyhow::Result<BTreeMap<String, NetLimits>> {
    Ok(store
        .network_limits()
        .await?
        .into_iter()
        .map(|l| {
            (
                l.key,
                NetLimits {
                    sessions_per_ip: Some(l.sessions_per_ip),
                    connects_per_minute: Some(l.connects_per_minute),
                    burst: l.burst,
                    connects_per_minute_total: l.connects_per_minute_total,
                },
            )
        })
        .collect())
}

/// The limits key of the network at `addr` that its user calls `name`: the same rule the
/// limiter applies to every connect ([`crate::limits::key`]), so the plan's bound and
/// the throttling a move meets agree.
pub(super) fn limits_key(addr: &str, name: &str, limits: &BTreeMap<String, NetLimits>) -> String {
    crate::limits::key::resolve(limits.keys().map(String::as_str), &host(addr), name)
}

fn host(addr: &str) -> String {
    crate::upstream::dial::host_of(addr).to_ascii_lowercase()
}

/// Plans moving `users` (all, when `None`: every user `source` owns) to `targets`
/// (all other live active nodes, when empty).
pub async fn make_plan(
    store: &Store,
    source: Option<&str>,
    users: Option<&[String]>,
    targets: &[String],
    opts: &Options,
) -> anyhow::Result<(Vec<(PlanUser, String)>, Vec<PlanTarget>, Plan)> {
    if let Some(s) = source {
        anyhow::ensure!(
            !targets.iter().any(|t| t == s),
            "cannot drain node {s:?} to itself: --to must name other nodes (or leave it out \
             to use every other live active node)"
        );
    }
    let nodes = store.nodes().await?;
    let live = store.live_active_nodes().await?;
    let owners = store.ownerships().await?;
    let limits = load_limits(store).await?;
    let mut chosen: Vec<(PlanUser, String)> = Vec::new();
    for o in &owners {
        let Some(owner) = &o.node_id else { continue };
        let wanted = match (source, users) {
            (_, Some(names)) => names.contains(&o.user_name),
            (Some(s), None) => owner == s,
            (None, None) => false,
        };
        if !wanted {
            continue;
        }
        let networks = store
            .networks(o.user_id)
            .await?
            .into_iter()
            .filter(|n| n.enabled)
            .map(|n| limits_key(&n.addr, &n.name, &limits))
            .collect();
        chosen.push((
            PlanUser {
                id: o.user_id,
                name: o.user_name.clone(),
                networks,
            },
            owner.clone(),
        ));
    }
    if let Some(names) = users {
        for n in names {
            anyhow::ensure!(
                chosen.iter().any(|(u, _)| &u.name == n),
                "no user {n:?} (or nobody runs it)"
            );
        }
    }
    let cands = crate::cluster::candidates(&nodes, &live, &owners);
    let mut plan_targets = Vec::new();
    for n in &nodes {
        let eligible = if targets.is_empty() {
            Some(n.id.as_str()) != source && live.contains(&n.id)
        } else {
            targets.contains(&n.id)
        };
        if !eligible {
            continue;
        }
        anyhow::ensure!(
            n.state == node_state::ACTIVE && live.contains(&n.id),
            "target {} is not a live active node ({})",
            n.id,
            n.state
        );
        let headroom = cands
            .iter()
            .find(|c| c.id == n.id)
            .map_or(0, |c| c.headroom);
        let mut ips = n.source_ips.clone();
        if ips.is_empty() {
            ips.push("default".to_owned());
        }
        // The sessions the target holds, keyed by the limiter's rule, which needs each
        // network's name as well as its host (a limit may be keyed by the name): from
        // the store, since the heartbeat counts sessions by address alone.
        let mut per_key: BTreeMap<String, i64> = BTreeMap::new();
        for (addr, name) in store.owned_networks(&n.id).await? {
            *per_key
                .entry(limits_key(&addr, &name, &limits))
                .or_default() += 1;
        }
        // Per-IP figures per network are not in the store; spread evenly, rounding up
        // (a slot that might be taken is not planned).
        let mut held = BTreeMap::new();
        for (key, count) in per_key {
            for ip in &ips {
                held.insert(
                    (key.clone(), ip.clone()),
                    (count + ips.len() as i64 - 1) / ips.len() as i64,
                );
            }
        }
        plan_targets.push(PlanTarget {
            id: n.id.clone(),
            source_ips: ips,
            headroom,
            held,
        });
    }
    for t in targets {
        anyhow::ensure!(plan_targets.iter().any(|p| &p.id == t), "no node {t:?}");
    }
    anyhow::ensure!(!plan_targets.is_empty(), "no target node to move users to");
    let only: Vec<PlanUser> = chosen.iter().map(|(u, _)| u.clone()).collect();
    let plan = super::plan::plan(&only, &plan_targets, &limits, opts.batch, opts.canary);
    Ok((chosen, plan_targets, plan))
}

/// Plans a rebalance of the live active nodes ([`super::rebalance::rebalance`]): every
/// user they run, with its networks keyed by the limiter's rule, and each node's
/// addresses and headroom, as [`make_plan`] reads them.
pub async fn make_rebalance_plan(
    store: &Store,
    tolerance: Tolerance,
    max_moves: Option<usize>,
    opts: &Options,
) -> anyhow::Result<Rebalance> {
    let nodes = store.nodes().await?;
    let live = store.live_active_nodes().await?;
    let owners = store.ownerships().await?;
    let limits = load_limits(store).await?;
    let cands = crate::cluster::candidates(&nodes, &live, &owners);
    let mut active: Vec<RebalanceNode> = nodes
        .iter()
        .filter(|n| n.state == node_state::ACTIVE && live.contains(&n.id))
        .map(|n| {
            let mut ips = n.source_ips.clone();
            if ips.is_empty() {
                ips.push("default".to_owned());
            }
            RebalanceNode {
                id: n.id.clone(),
                source_ips: ips,
                headroom: cands
                    .iter()
                    .find(|c| c.id == n.id)
                    .map_or(0, |c| c.headroom),
                users: Vec::new(),
            }
        })
        .collect();
    active.sort_by(|a, b| a.id.cmp(&b.id));
    for o in &owners {
        let Some(n) = o
            .node_id
            .as_ref()
            .and_then(|id| active.iter_mut().find(|n| &n.id == id))
        else {
            continue;
        };
        let networks = store
            .networks(o.user_id)
            .await?
            .into_iter()
            .filter(|n| n.enabled)
            .map(|n| limits_key(&n.addr, &n.name, &limits))
            .collect();
        n.users.push(PlanUser {
            id: o.user_id,
            name: o.user_name.clone(),
            networks,
        });
    }
    for n in &mut active {
        n.users.sort_by_key(|u| u.id);
    }
    Ok(super::rebalance::rebalance(
        &active,
        &limits,
        tolerance,
        max_moves,
        opts.batch,
        opts.canary,
    ))
}

/// The plan of rolling back `moved` (users a migration moved): each back to the node
/// it came from, in batches of `batch`, with the bound the limits impose on the way
/// back (the same rule as a forward plan, preflight probes included).
pub async fn rollback_plan(
    store: &Store,
    moved: &[MigrationUser],
    batch: usize,
) -> anyhow::Result<Plan> {
    let limits = load_limits(store).await?;
    let nodes = store.nodes().await?;
    let mut per_key: BTreeMap<String, i64> = BTreeMap::new();
    let mut targets: Vec<&str> = Vec::new();
    for u in moved {
        if !targets.contains(&u.from_node.as_str()) {
            targets.push(&u.from_node);
        }
        for n in store.networks(u.user_id).await? {
            if n.enabled {
                *per_key
                    .entry(limits_key(&n.addr, &n.name, &limits))
                    .or_default() += 1;
            }
        }
    }
    let ips: usize = targets
        .iter()
        .map(|t| {
            nodes
                .iter()
                .find(|n| n.id == *t)
                .map_or(1, |n| n.source_ips.len().max(1))
        })
        .sum::<usize>()
        .max(1);
    let bounds: Vec<super::plan::Bound> = per_key
        .iter()
        .map(|(key, n)| super::plan::bound_after(key, *n, ips as i64, limits.get(key), ips))
        .collect();
    Ok(Plan {
        users: moved
            .iter()
            .enumerate()
            .map(|(i, u)| super::plan::Planned {
                user_id: u.user_id,
                user_name: u.user_name.clone(),
                to: u.from_node.clone(),
                batch: 1 + (i / batch.max(1)) as i64,
            })
            .collect(),
        slots: Vec::new(),
        eta_seconds: bounds.iter().map(|b| b.seconds).fold(0.0, f64::max),
        bounds,
        problems: Vec::new(),
    })
}

/// Users to move at once so the drain keeps up with the fastest connect rate the
/// limits allow: each move holds a user for about a registration (~1–2 s) after its
/// token, so rate × 2.5 s plus the bursts are in flight; at least 8, at most 64.
pub fn auto_parallel(plan: &Plan) -> usize {
    let need = plan
        .bounds
        .iter()
        .filter_map(|b| {
            let per_sec = b.connects_per_minute_per_ip? * b.target_ips as f64 / 60.0;
            Some((per_sec * 2.5).ceil() as usize + b.burst_total as usize)
        })
        .max()
        .unwrap_or(8);
    need.clamp(8, 64)
}

/// Stores rebalance plan `r` as a `rebalance` migration: its sources (the nodes the
/// planned users leave), its targets and each user's source. Returns its id. The CLI's
/// `migrate rebalance` and the automatic rebalance both start theirs here.
pub async fn create_rebalance(
    store: &Store,
    r: &super::rebalance::Rebalance,
    opts: &Options,
) -> anyhow::Result<i64> {
    let from: HashMap<UserId, String> = r.from.iter().map(|(u, n)| (*u, n.clone())).collect();
    let sources: BTreeSet<&str> = r.from.values().map(String::as_str).collect();
    let targets: BTreeSet<String> = r.plan.users.iter().map(|u| u.to.clone()).collect();
    let targets: Vec<String> = targets.into_iter().collect();
    let sources: Vec<&str> = sources.into_iter().collect();
    create(
        store,
        MigrationKind::Rebalance,
        &sources.join(","),
        &targets,
        &from,
        &r.plan,
        opts,
        None,
    )
    .await
}

/// Persists a plan as a new migration (state `planned`). Returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    store: &Store,
    kind: MigrationKind,
    source: &str,
    targets: &[String],
    from: &HashMap<UserId, String>,
    plan: &Plan,
    opts: &Options,
    parent: Option<i64>,
) -> anyhow::Result<i64> {
    let users: Vec<MigrationUser> = plan
        .users
        .iter()
        .map(|p| MigrationUser {
            migration_id: 0,
            user_id: p.user_id,
            user_name: p.user_name.clone(),
            from_node: from.get(&p.user_id).cloned().unwrap_or_default(),
            to_node: p.to.clone(),
            batch: p.batch,
            state: MoveState::Pending.as_str().to_owned(),
            downtime_ms: None,
            error: String::new(),
            attempts: 0,
            gaps: String::new(),
            started_at: None,
            finished_at: None,
        })
        .collect();
    let options = serde_json::to_string(opts)?;
    Ok(store
        .create_migration(
            &NewMigration {
                kind: kind.as_str(),
                source_node: source,
                targets,
                options: &options,
                parent,
                now: now(),
            },
            &users,
        )
        .await?)
}
