//! Planning a migration: which user goes where, in which batch, how many slots each
//! target uses per network and source IP, and the least time the limits allow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::UserId;

/// A network's connect limits, per source IP (what `ferry limits set` configures).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NetLimits {
    pub sessions_per_ip: Option<u32>,
    pub connects_per_minute: Option<f64>,
    pub burst: u32,
    /// Connects a minute for the whole cluster (`--connects-per-minute-total`), one
    /// bucket of `burst` shared by every node and source IP.
    #[serde(default)]
    pub connects_per_minute_total: Option<f64>,
}

/// A user to move, with the network keys (hosts) of its enabled networks.
#[derive(Clone, Debug)]
pub struct PlanUser {
    pub id: UserId,
    pub name: String,
    pub networks: Vec<String>,
}

/// A node that may receive users.
#[derive(Clone, Debug)]
pub struct PlanTarget {
    pub id: String,
    /// Its egress addresses (at least one entry; `default` when unbound).
    pub source_ips: Vec<String>,
    /// Upstream sessions it can still take (fd budget minus what it holds).
    pub headroom: i64,
    /// Sessions it already holds per (network key, source IP).
    pub held: BTreeMap<(String, String), i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Planned {
    pub user_id: UserId,
    pub user_name: String,
    pub to: String,
    pub batch: i64,
}

/// What one target gets, per network key and source IP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotUse {
    pub target: String,
    pub network: String,
    pub source_ip: String,
    pub held: i64,
    pub planned: i64,
    pub limit: Option<u32>,
}

/// The least time one network's limits impose.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bound {
    pub network: String,
    pub users: i64,
    pub connects_per_minute_per_ip: Option<f64>,
    pub target_ips: usize,
    pub burst_total: u32,
    pub seconds: f64,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub users: Vec<Planned>,
    pub slots: Vec<SlotUse>,
    pub bounds: Vec<Bound>,
    /// The ETA: the slowest network's bound.
    pub eta_seconds: f64,
    /// Why the plan cannot run (empty: it fits).
    pub problems: Vec<String>,
}

/// Plans `users` over `targets`: each user to the target with the most headroom left
/// (ties by id), canary batch 0 first, then batches of `batch`.
pub fn plan(
    users: &[PlanUser],
    targets: &[PlanTarget],
    limits: &BTreeMap<String, NetLimits>,
    batch: usize,
    canary: usize,
) -> Plan {
    let mut problems = Vec::new();
    let mut free: Vec<i64> = targets.iter().map(|t| t.headroom).collect();
    let mut out = Vec::new();
    // Per (target index, key, ip) planned sessions; a user's source IP on a target is
    // chosen like the node does (by user id), so this matches what will happen.
    let mut use_: BTreeMap<(usize, String, String), i64> = BTreeMap::new();
    let batch = batch.max(1);
    for (i, u) in users.iter().enumerate() {
        let need = u.networks.len().max(1) as i64;
        let best = (0..targets.len())
            .filter(|&t| free[t] >= need)
            .max_by(|&a, &b| {
                free[a]
                    .cmp(&free[b])
                    .then(targets[b].id.cmp(&targets[a].id))
            });
        let Some(t) = best else {
            problems.push(format!(
                "no target has room for user {} ({need} sessions)",
                u.name
            ));
            continue;
        };
        free[t] -= need;
        let ips = &targets[t].source_ips;
        let ip = ips[u.id.unsigned_abs() as usize % ips.len().max(1)].clone();
        for k in &u.networks {
            *use_.entry((t, k.clone(), ip.clone())).or_default() += 1;
        }
        let b = if i < canary {
            0
        } else {
            1 + ((i - canary) / batch) as i64
        };
        out.push(Planned {
            user_id: u.id,
            user_name: u.name.clone(),
            to: targets[t].id.clone(),
            batch: b,
        });
    }
    let mut slots = Vec::new();
    for ((t, key, ip), planned) in &use_ {
        let tg = &targets[*t];
        let held = tg
            .held
            .get(&(key.clone(), ip.clone()))
            .copied()
            .unwrap_or(0);
        let limit = limits.get(key).and_then(|l| l.sessions_per_ip);
        if let Some(cap) = limit {
            if held + planned > i64::from(cap) {
                problems.push(format!(
                    "{}: {key} from {ip} would hold {} sessions, the network allows {cap} per IP",
                    tg.id,
                    held + planned
                ));
            }
        }
        slots.push(SlotUse {
            target: tg.id.clone(),
            network: key.clone(),
            source_ip: ip.clone(),
            held,
            planned: *planned,
            limit,
        });
    }
    let mut per_key: BTreeMap<&str, i64> = BTreeMap::new();
    for u in users {
        for k in &u.networks {
            *per_key.entry(k).or_default() += 1;
        }
    }
    let ips: usize = targets.iter().map(|t| t.source_ips.len().max(1)).sum();
    // Before the first move, each target's preflight probes every network from each of
    // its source IPs: a connect that takes a token like any other, so the burst the
    // moves get is smaller by one per IP.
    let bounds: Vec<Bound> = per_key
        .into_iter()
        .map(|(key, n)| bound_after(key, n, ips as i64, limits.get(key), ips))
        .collect();
    let eta_seconds = bounds.iter().map(|b| b.seconds).fold(0.0, f64::max);
    Plan {
        users: out,
        slots,
        bounds,
        eta_seconds,
        problems,
    }
}

/// The bounds and the ETA of moving `users` to targets with `ips` source addresses in
/// all: the rule [`plan`] applies (each target's preflight probes every network from
/// each of its addresses first), for plans made elsewhere (`migrate rebalance`).
pub fn bounds_for(
    users: &[PlanUser],
    ips: usize,
    limits: &BTreeMap<String, NetLimits>,
) -> (Vec<Bound>, f64) {
    let mut per_key: BTreeMap<&str, i64> = BTreeMap::new();
    for u in users {
        for k in &u.networks {
            *per_key.entry(k).or_default() += 1;
        }
    }
    let ips = ips.max(1);
    let bounds: Vec<Bound> = per_key
        .into_iter()
        .map(|(key, n)| bound_after(key, n, ips as i64, limits.get(key), ips))
        .collect();
    let eta = bounds.iter().map(|b| b.seconds).fold(0.0, f64::max);
    (bounds, eta)
}

/// `n` connects to `key` spread over `ips` source addresses, each allowed `cpm`
/// connects a minute after a burst: the GCRA admits `burst` at once, then one every
/// `60/cpm` s per address.
pub fn bound(key: &str, n: i64, l: Option<&NetLimits>, ips: usize) -> Bound {
    bound_after(key, n, 0, l, ips)
}

/// [`bound`] for `n` users whose connects come after `probes` other connects to the
/// same key (a migration's preflight probes), which spend the burst first.
pub fn bound_after(key: &str, n: i64, probes: i64, l: Option<&NetLimits>, ips: usize) -> Bound {
    let cpm = l.and_then(|l| l.connects_per_minute).filter(|r| *r > 0.0);
    let burst = l.map_or(0, |l| l.burst.max(1)) * ips as u32;
    let total = l
        .and_then(|l| l.connects_per_minute_total)
        .filter(|r| *r > 0.0);
    let (seconds, text) = match cpm {
        None if total.is_some() => (0.0, format!("network {key}: {n} users")),
        None => (0.0, format!("{key}: no connect limit; {n} users")),
        Some(r) => {
            let after_burst = (n + probes - i64::from(burst)).max(0) as f64;
            let s = after_burst * 60.0 / (r * ips as f64);
            (
                s,
                format!(
                    "network {key} allows {r} connects a minute per source IP (burst {}); \
                     {ips} target IPs; {n} users on {key}{}: at least {}",
                    l.map_or(0, |l| l.burst.max(1)),
                    if probes > 0 {
                        format!(" after {probes} preflight probe connects")
                    } else {
                        String::new()
                    },
                    human_duration(s)
                ),
            )
        }
    };
    // The cluster's budget is one bucket for every node and IP: it bounds the move
    // when it is slower than the per-IP rates together.
    let (seconds, text) = match total {
        Some(r) => {
            let after_burst = (n + probes - i64::from(l.map_or(1, |l| l.burst.max(1)))).max(0);
            let s = after_burst as f64 * 60.0 / r;
            let text = format!(
                "{text}; the cluster allows {r} connects a minute to {key} in all: at least {}",
                human_duration(s)
            );
            (seconds.max(s), text)
        }
        None => (seconds, text),
    };
    Bound {
        network: key.to_owned(),
        users: n,
        connects_per_minute_per_ip: cpm,
        target_ips: ips,
        burst_total: burst,
        seconds,
        text,
    }
}

pub fn human_duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} minutes {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, ips: &[&str], headroom: i64) -> PlanTarget {
        PlanTarget {
            id: id.into(),
            source_ips: ips.iter().map(|s| (*s).to_owned()).collect(),
            headroom,
            held: BTreeMap::new(),
        }
    }

    #[test]
    fn parallelism_follows_the_fastest_rate() {
        let plan_with = |cpm: f64, ips: usize, burst: u32| Plan {
            users: Vec::new(),
            slots: Vec::new(),
            bounds: vec![bound(
                "irc.a",
                200,
                Some(&NetLimits {
                    sessions_per_ip: None,
                    connects_per_minute: Some(cpm),
                    burst,
                    connects_per_minute_total: None,
                }),
                ips,
            )],
            eta_seconds: 0.0,
            problems: Vec::new(),
        };
        // 120/min on 2 IPs: 4/s, 10 in flight + 4 burst.
        assert_eq!(crate::migrate::auto_parallel(&plan_with(120.0, 2, 2)), 14);
        assert_eq!(crate::migrate::auto_parallel(&plan_with(10.0, 1, 1)), 8);
        assert_eq!(crate::migrate::auto_parallel(&plan_with(6000.0, 3, 10)), 64);
    }

    #[test]
    fn the_issue_example_bound() {
        let l = NetLimits {
            sessions_per_ip: None,
            connects_per_minute: Some(10.0),
            burst: 1,
            connects_per_minute_total: None,
        };
        let b = bound("x", 1200, Some(&l), 3);
        // 1,197 after the burst, 30 a minute: ~40 minutes.
        assert!((b.seconds - 1197.0 * 2.0).abs() < 1e-6, "{}", b.seconds);
        assert!(b.text.contains("at least 39 minutes"), "{}", b.text);
        // A cluster-wide rate slower than the IPs together bounds the move: 1,199
        // after its burst of 1 at 20 a minute is ~60 minutes.
        let b = bound(
            "x",
            1200,
            Some(&NetLimits {
                connects_per_minute_total: Some(20.0),
                ..l.clone()
            }),
            3,
        );
        assert!((b.seconds - 1199.0 * 3.0).abs() < 1e-6, "{}", b.seconds);
        assert!(
            b.text
                .contains("the cluster allows 20 connects a minute to x in all"),
            "{}",
            b.text
        );
        // A faster one does not.
        let b = bound(
            "x",
            1200,
            Some(&NetLimits {
                connects_per_minute_total: Some(600.0),
                ..l
            }),
            3,
        );
        assert!((b.seconds - 1197.0 * 2.0).abs() < 1e-6, "{}", b.seconds);
    }

    #[test]
    fn spreads_by_headroom_batches_after_the_canary_and_refuses_what_does_not_fit() {
        let users: Vec<PlanUser> = (1..=7)
            .map(|i| PlanUser {
                id: i,
                name: format!("u{i}"),
                networks: vec!["irc.a".into()],
            })
            .collect();
        let mut limits = BTreeMap::new();
        limits.insert(
            "irc.a".to_owned(),
            NetLimits {
                sessions_per_ip: Some(3),
                connects_per_minute: Some(60.0),
                burst: 1,
                connects_per_minute_total: None,
            },
        );
        let p = plan(
            &users,
            &[t("n2", &["ip2"], 100), t("n3", &["ip3"], 100)],
            &limits,
            3,
            2,
        );
        assert_eq!(
            p.users.iter().map(|u| u.batch).collect::<Vec<_>>(),
            [0, 0, 1, 1, 1, 2, 2]
        );
        let to_n2 = p.users.iter().filter(|u| u.to == "n2").count();
        assert!((3..=4).contains(&to_n2));
        // 4 on one IP with a cap of 3: refused.
        assert!(
            p.problems.iter().any(|m| m.contains("allows 3 per IP")),
            "{:?}",
            p.problems
        );
        let ok = plan(
            &users[..6],
            &[t("n2", &["ip2"], 100), t("n3", &["ip3"], 100)],
            &limits,
            3,
            2,
        );
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
        // 6 users after 2 preflight probes, burst 1 on each of 2 IPs, 60/min each:
        // (6+2-2)/2 s.
        assert!((ok.eta_seconds - 3.0).abs() < 1e-6, "{}", ok.eta_seconds);
        let full = plan(&users, &[t("n2", &["ip2"], 2)], &BTreeMap::new(), 3, 2);
        assert_eq!(full.users.len(), 2);
        assert!(full
            .problems
            .iter()
            .any(|m| m.contains("no target has room")));
    }
}
