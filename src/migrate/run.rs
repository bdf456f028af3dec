//! The driver: what `ferry migrate` runs against the nodes' admin API. Every step is
//! written to the store before and after it happens (see `store::migrate`), so a
//! killed driver loses nothing and `resume` never moves a user twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::plan::{NetLimits, Plan, PlanTarget, PlanUser};
use super::{
    AdoptRequest, Adopted, NetworkProbe, PreflightReport, PreflightRequest, ReleaseRequest,
    Released, ReserveRequest, Reserved,
};
use crate::store::migrate::{
    migration_state as ms, move_state, MigrationRecord, MigrationUser, NewMigration, UserProgress,
};
use crate::store::{node_state, NodeRecord, Store, UserId};

/// How a migration runs (stored with it as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub batch: usize,
    pub canary: usize,
    pub max_failure_ratio: f64,
    pub quit_message: Option<String>,
    /// How long a target may take to register and rejoin a user.
    pub adopt_deadline_ms: u64,
    /// Users moved at once within a batch (each still waits for its target's slot).
    pub parallel: usize,
    /// A target whose event loop lags more than this is degraded.
    pub max_loop_lag_ms: i64,
    /// A target whose system has less memory available than this is degraded.
    #[serde(default = "default_min_free_memory_mib")]
    pub min_free_memory_mib: u64,
}

fn default_min_free_memory_mib() -> u64 {
    256
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 50,
            canary: 5,
            max_failure_ratio: 0.1,
            quit_message: Some("Ferry is moving this session to another server".to_owned()),
            adopt_deadline_ms: 60_000,
            parallel: 8,
            max_loop_lag_ms: 1_000,
            min_free_memory_mib: default_min_free_memory_mib(),
        }
    }
}

/// What the driver tells whoever watches (the CLI's progress bar, tests).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Preflight {
        report: PreflightReport,
    },
    Batch {
        batch: i64,
        users: usize,
    },
    Moved {
        user: String,
        to: String,
        downtime_ms: i64,
    },
    Failed {
        user: String,
        error: String,
        rolled_back: bool,
    },
    BatchDone {
        batch: i64,
        moved: usize,
        failed: usize,
    },
    Paused {
        reason: String,
    },
    /// The driver waits before it can start (e.g. for a stopped driver's lock).
    Waiting {
        reason: String,
    },
    Done {
        state: String,
    },
}

/// A node's admin API.
#[derive(Clone)]
pub struct NodeClient {
    pub id: String,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl NodeClient {
    pub fn new(n: &NodeRecord) -> anyhow::Result<NodeClient> {
        Ok(NodeClient {
            id: n.id.clone(),
            url: n.admin_url.clone(),
            token: n.admin_token.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()?,
        })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(format!("{}/api/admin/migrate{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("node {} is unreachable", self.id))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("node {}: {msg}", self.id);
        }
        Ok(serde_json::from_str(&text)?)
    }
}

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
                },
            )
        })
        .collect())
}

/// The limits key of the network at `addr` that its user calls `name`: the same rule the
/// limiter applies to every connect ([`crate::limits::key`]), so the plan's bound and
/// the throttling a move meets agree.
fn limits_key(addr: &str, name: &str, limits: &BTreeMap<String, NetLimits>) -> String {
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
        let mut held = BTreeMap::new();
        // Per-IP figures per network are not in the heartbeat; spread evenly.
        for (net, count) in &n.health.sessions_per_network {
            for ip in &ips {
                held.insert(
                    (limits_key(net, "", &limits), ip.clone()),
                    count / ips.len() as i64,
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

/// Persists a plan as a new migration (state `planned`). Returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    store: &Store,
    kind: &str,
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
            state: move_state::PENDING.to_owned(),
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
                kind,
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

fn now() -> i64 {
    Utc::now().timestamp_millis()
}

/// Holds a migration's lock while the driver runs it.
pub struct Lock {
    store: Store,
    id: i64,
    holder: String,
    /// Renews the lock every third of its TTL while the driver runs, so a long batch
    /// never loses it; a killed driver stops renewing and the lock lapses.
    keeper: tokio::task::JoinHandle<()>,
}

const LOCK_TTL_MS: i64 = 30_000;

impl Lock {
    pub async fn take(
        store: &Store,
        id: i64,
        report: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<Lock> {
        let holder = format!(
            "{}:{}:{:x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut t = now();
        while !store
            .lock_migration(id, &holder, t, t + LOCK_TTL_MS)
            .await?
        {
            let Some(m) = store.migration(id).await? else {
                anyhow::bail!("migration {id} vanished");
            };
            let other = m.lock_holder.unwrap_or_default();
            let left_ms = (m.lock_expires - now()).max(0);
            // A driver on this machine whose process is gone (a killed CLI) cannot
            // renew: wait for its lock to lapse rather than fail. The wait is also the
            // settling time for the node calls it had in flight.
            anyhow::ensure!(
                holder_exited(&other),
                "migration {id} is being run by another ferry migrate ({other}); if that \
                 one was stopped, its lock lapses in {} s",
                left_ms / 1000 + 1
            );
            report(Progress::Waiting {
                reason: format!(
                    "the previous driver ({other}) has exited; its lock lapses in {} s",
                    left_ms / 1000 + 1
                ),
            });
            tokio::time::sleep(Duration::from_millis(left_ms as u64 + 100)).await;
            t = now();
        }
        let keeper = {
            let (store, holder) = (store.clone(), holder.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(LOCK_TTL_MS as u64 / 3));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let t = now();
                    if !matches!(
                        store.lock_migration(id, &holder, t, t + LOCK_TTL_MS).await,
                        Ok(true)
                    ) {
                        return;
                    }
                }
            })
        };
        Ok(Lock {
            store: store.clone(),
            id,
            holder,
            keeper,
        })
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let t = now();
        anyhow::ensure!(
            self.store
                .lock_migration(self.id, &self.holder, t, t + LOCK_TTL_MS)
                .await?,
            "lost the lock of migration {}",
            self.id
        );
        Ok(())
    }

    pub async fn release(self) {
        self.keeper.abort();
        let _ = self.store.unlock_migration(self.id, &self.holder).await;
    }
}

/// Whether a lock holder (`host:pid:nonce`) is a process of this machine that has
/// exited. A holder on another machine is never judged (its lock lapses instead).
fn holder_exited(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    host == Some(hostname().as_str())
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

/// Runs (or resumes) migration `id` to its end or a pause. `report` sees each step.
///
/// # Errors
/// Store errors, a lock held by someone else, or a failed preflight (then nothing
/// moved and the migration is `aborted`).
pub async fn execute(
    store: &Store,
    id: i64,
    report: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<MigrationRecord> {
    let lock = Lock::take(store, id, report).await?;
    let r = execute_locked(store, id, &lock, report).await;
    lock.release().await;
    r?;
    store.migration(id).await?.context("migration vanished")
}

async fn execute_locked(
    store: &Store,
    id: i64,
    lock: &Lock,
    report: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<()> {
    let m = store
        .migration(id)
        .await?
        .with_context(|| format!("no migration {id}"))?;
    if matches!(
        m.state.as_str(),
        ms::COMPLETED | ms::ABORTED | ms::ROLLED_BACK
    ) {
        anyhow::bail!("migration {id} is {}", m.state);
    }
    let opts: Options = serde_json::from_str(&m.options).unwrap_or_default();
    let users = store.migration_users(id).await?;
    let nodes = store.nodes().await?;
    let clients: HashMap<String, NodeClient> = nodes
        .iter()
        .map(|n| Ok((n.id.clone(), NodeClient::new(n)?)))
        .collect::<anyhow::Result<_>>()?;

    // Preflight every target that still has users to receive.
    store
        .set_migration_state(id, ms::PREFLIGHT, "", now())
        .await?;
    let limits = load_limits(store).await?;
    let mut per_target: BTreeMap<&str, (i64, i64, BTreeSet<NetworkProbe>, &str)> = BTreeMap::new();
    for u in users.iter().filter(|u| !is_final(&u.state)) {
        let e = per_target
            .entry(&u.to_node)
            .or_insert((0, 0, BTreeSet::new(), &u.from_node));
        e.0 += 1;
        for n in store.networks(u.user_id).await? {
            if n.enabled {
                e.1 += 1;
                e.2.insert(NetworkProbe {
                    addr: n.addr.clone(),
                    tls: n.tls,
                    tls_insecure: n.tls_verify == crate::store::TlsVerify::Insecure,
                    key: limits_key(&n.addr, &n.name, &limits),
                });
            }
        }
    }
    // Targets run their preflights at once (each waits ~1.5 s per probe for an ERROR).
    let reports = futures::future::join_all(per_target.iter().map(
        |(target, (nusers, nsessions, probes, from))| {
            let client = clients.get(*target).cloned();
            let req = PreflightRequest {
                source_node: (*from).to_owned(),
                planned_sessions: *nsessions,
                planned_users: *nusers,
                networks: probes.iter().cloned().collect(),
            };
            async move {
                let r = match client {
                    None => Err(anyhow::anyhow!("target node {target} is not registered")),
                    Some(c) => c.post::<PreflightReport>("/preflight", &req).await,
                };
                r.unwrap_or_else(|e| PreflightReport {
                    node: (*target).to_owned(),
                    ok: false,
                    checks: vec![super::Check {
                        name: "reachable".into(),
                        ok: false,
                        detail: format!("{e:#}"),
                    }],
                })
            }
        },
    ))
    .await;
    let mut failed_pf = Vec::new();
    for rep in reports {
        if !rep.ok {
            for c in rep.checks.iter().filter(|c| !c.ok) {
                failed_pf.push(format!("{}: {}: {}", rep.node, c.name, c.detail));
            }
        }
        report(Progress::Preflight { report: rep });
    }
    if !failed_pf.is_empty() {
        let note = format!("preflight failed: {}", failed_pf.join("; "));
        store
            .set_migration_state(id, ms::ABORTED, &note, now())
            .await?;
        report(Progress::Done {
            state: ms::ABORTED.into(),
        });
        anyhow::bail!(note);
    }
    if m.kind == "drain" {
        store
            .set_node_state(&m.source_node, node_state::DRAINING)
            .await?;
    }
    store
        .set_migration_state(id, ms::RUNNING, "", now())
        .await?;

    // The health watch judges what happens from here on; `status` reports rejections
    // since the first run's baseline.
    let baseline: BTreeMap<String, Signals> = {
        let involved: Vec<NodeRecord> = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.id == m.source_node || per_target.contains_key(n.id.as_str()))
            .collect();
        signals(&involved)
            .await
            .into_iter()
            .filter_map(|(id, s)| Some((id, s?)))
            .collect()
    };
    let counts: BTreeMap<&String, u64> = baseline.iter().map(|(k, v)| (k, v.rejections)).collect();
    store
        .set_rejections_baseline(id, &serde_json::to_string(&counts)?)
        .await?;
    let batches: BTreeSet<i64> = users.iter().map(|u| u.batch).collect();
    for b in batches {
        lock.renew().await?;
        // The operator may have aborted meanwhile.
        let cur = store.migration(id).await?.context("migration vanished")?;
        if cur.state != ms::RUNNING {
            return Ok(());
        }
        let todo: Vec<MigrationUser> = store
            .migration_users(id)
            .await?
            .into_iter()
            .filter(|u| u.batch == b && !is_final(&u.state))
            .collect();
        if todo.is_empty() {
            continue;
        }
        report(Progress::Batch {
            batch: b,
            users: todo.len(),
        });
        let results: Vec<bool> = futures::stream::iter(todo.iter())
            .map(|u| move_one(store, id, u, &clients, &opts, report))
            .buffer_unordered(opts.parallel.max(1))
            .collect()
            .await;
        let failed = results.iter().filter(|ok| !**ok).count();
        let moved = results.len() - failed;
        report(Progress::BatchDone {
            batch: b,
            moved,
            failed,
        });
        let ratio = failed as f64 / results.len() as f64;
        let mut why = None;
        if b == 0 && failed > 0 {
            why = Some(format!("the canary batch had {failed} failure(s)"));
        } else if ratio > opts.max_failure_ratio {
            why = Some(format!(
                "batch {b}: failure ratio {ratio:.2} exceeds {}",
                opts.max_failure_ratio
            ));
        } else if let Some(bad) = degraded(
            store,
            &per_target
                .keys()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
            &opts,
            &baseline,
        )
        .await?
        {
            why = Some(bad);
        }
        if let Some(why) = why {
            let note = format!("{why}; failed users were rolled back to their source. Run `ferry migrate resume {id}`, `rollback {id}` or `abort {id}`");
            store
                .set_migration_state(id, ms::PAUSED, &note, now())
                .await?;
            report(Progress::Paused { reason: note });
            return Ok(());
        }
    }
    if m.kind == "drain" {
        store
            .set_node_state(&m.source_node, node_state::DRAINED)
            .await?;
    }
    if m.kind == "rollback" {
        if let Some(p) = m.parent {
            for u in store.migration_users(id).await? {
                if u.state == move_state::MOVED {
                    store
                        .update_migration_user(
                            p,
                            u.user_id,
                            &UserProgress {
                                state: move_state::ROLLED_BACK,
                                ..UserProgress::default()
                            },
                        )
                        .await?;
                }
            }
            store
                .set_node_state(
                    &m.targets.first().cloned().unwrap_or_default(),
                    node_state::ACTIVE,
                )
                .await
                .ok();
            store
                .set_migration_state(
                    p,
                    ms::ROLLED_BACK,
                    &format!("rolled back by migration {id}"),
                    now(),
                )
                .await?;
        }
    }
    store
        .set_migration_state(id, ms::COMPLETED, "", now())
        .await?;
    report(Progress::Done {
        state: ms::COMPLETED.into(),
    });
    Ok(())
}

fn is_final(state: &str) -> bool {
    state == move_state::MOVED
}

/// A target is degraded when it stopped heartbeating, its event loop lags, its system
/// runs short of memory, or since `baseline` (taken before the first batch) the IRC
/// servers rejected its connects or its store writes failed.
async fn degraded(
    store: &Store,
    targets: &[String],
    opts: &Options,
    baseline: &BTreeMap<String, Signals>,
) -> anyhow::Result<Option<String>> {
    let live = store.live_active_nodes().await?;
    let nodes: Vec<NodeRecord> = store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| targets.contains(&n.id))
        .collect();
    for n in &nodes {
        if !live.contains(&n.id) {
            return Ok(Some(format!("target {} is not live ({})", n.id, n.state)));
        }
        if n.health.loop_lag_ms > opts.max_loop_lag_ms {
            return Ok(Some(format!(
                "target {} event loop lags {} ms",
                n.id, n.health.loop_lag_ms
            )));
        }
    }
    let now_signals = signals(&nodes).await;
    for (id, s) in &now_signals {
        let Some(s) = s else {
            return Ok(Some(format!("target {id} does not answer /metrics")));
        };
        let before = baseline.get(id).copied().unwrap_or_default();
        let rejected = s.rejections.saturating_sub(before.rejections);
        if rejected > 0 {
            return Ok(Some(format!(
                "target {id} met {rejected} throttle rejection(s) from IRC servers during \
                 this migration"
            )));
        }
        let errors = s.write_errors.saturating_sub(before.write_errors);
        if errors > 0 {
            return Ok(Some(format!(
                "target {id} had {errors} store write error(s) during this migration"
            )));
        }
        if let Some(avail) = s.mem_available {
            if avail < opts.min_free_memory_mib * 1024 * 1024 {
                return Ok(Some(format!(
                    "target {id} has {} MiB of memory available (less than {} MiB)",
                    avail / (1024 * 1024),
                    opts.min_free_memory_mib
                )));
            }
        }
    }
    Ok(None)
}

/// Moves one user; on failure hands it back to its source. Returns whether it moved.
async fn move_one(
    store: &Store,
    id: i64,
    u: &MigrationUser,
    clients: &HashMap<String, NodeClient>,
    opts: &Options,
    report: &(dyn Fn(Progress) + Sync),
) -> bool {
    match try_move(store, id, u, clients, opts).await {
        Ok(a) => {
            let _ = store
                .update_migration_user(
                    id,
                    u.user_id,
                    &UserProgress {
                        state: move_state::MOVED,
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
            true
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
                        state: move_state::FAILED,
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
            false
        }
    }
}

async fn try_move(
    store: &Store,
    id: i64,
    u: &MigrationUser,
    clients: &HashMap<String, NodeClient>,
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
        let snap = super::handoff::encode_snapshot(&crate::user::UserSnapshot {
            user_id: u.user_id,
            last_seq: 0,
            networks: Vec::new(),
        })?;
        return dst
            .post(
                &format!("/adopt/{}", u.user_id),
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
                state: move_state::PENDING,
                // A move the previous driver started and did not finish (killed
                // mid-move) continues the same attempt; a failed one is retried anew.
                attempt: u.attempts == 0 || u.state == move_state::FAILED,
                started_at: Some(now()),
                ..UserProgress::default()
            },
        )
        .await?;
    let _r: Reserved = dst
        .post(
            &format!("/reserve/{}", u.user_id),
            &ReserveRequest {
                ttl_ms: deadline_ms + 30_000,
            },
        )
        .await?;
    store
        .update_migration_user(
            id,
            u.user_id,
            &UserProgress {
                state: move_state::RESERVED,
                ..UserProgress::default()
            },
        )
        .await?;
    store
        .update_migration_user(
            id,
            u.user_id,
            &UserProgress {
                state: move_state::MOVING,
                ..UserProgress::default()
            },
        )
        .await?;
    let rel: Released = src
        .post(
            &format!("/release/{}", u.user_id),
            &ReleaseRequest {
                to: u.to_node.clone(),
                quit_message: opts.quit_message.clone(),
            },
        )
        .await?;
    let released = std::time::Instant::now();
    let mut a: Adopted = dst
        .post(
            &format!("/adopt/{}", u.user_id),
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
    clients: &HashMap<String, NodeClient>,
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
                &format!("/release/{}", u.user_id),
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
                super::handoff::encode_snapshot(&crate::user::UserSnapshot {
                    user_id: u.user_id,
                    last_seq: 0,
                    networks: Vec::new(),
                })?
            }
        }
    } else {
        super::handoff::encode_snapshot(&crate::user::UserSnapshot {
            user_id: u.user_id,
            last_seq: 0,
            networks: Vec::new(),
        })?
    };
    let _: Adopted = src
        .post(
            &format!("/adopt/{}", u.user_id),
            &AdoptRequest {
                snapshot,
                quit_at_ms: now(),
                deadline_ms: opts.adopt_deadline_ms,
            },
        )
        .await?;
    Ok(())
}

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
        match u.state.as_str() {
            move_state::MOVED => {
                f.moved += 1;
                d.extend(u.downtime_ms);
            }
            move_state::FAILED => {
                f.failed += 1;
                if !u.error.contains("handing back failed") {
                    f.failed_back_on_source += 1;
                }
            }
            move_state::ROLLED_BACK => f.rolled_back += 1,
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

/// What the health watch reads off a node's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    /// `ferry_upstream_throttled_total` + `ferry_upstream_no_slot_total`, since the
    /// node started.
    pub rejections: u64,
    /// `ferry_store_write_errors_total`, since the node started.
    pub write_errors: u64,
    /// `ferry_memory_available_bytes`.
    pub mem_available: Option<u64>,
}

/// Each node's [`Signals`]; `None` when it does not answer.
pub async fn signals(nodes: &[NodeRecord]) -> BTreeMap<String, Option<Signals>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let asks = nodes.iter().map(|n| {
        let http = http.clone();
        async move {
            let text = async {
                http.get(format!("{}/metrics", n.admin_url.trim_end_matches('/')))
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            }
            .await
            .ok();
            let v = text.map(|t| {
                let sum = |names: &[&str]| {
                    t.lines()
                        .filter(|l| names.iter().any(|n| metric_name(l) == *n))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>()
                };
                Signals {
                    rejections: sum(&[
                        "ferry_upstream_throttled_total",
                        "ferry_upstream_no_slot_total",
                    ]) as u64,
                    write_errors: sum(&["ferry_store_write_errors_total"]) as u64,
                    mem_available: t
                        .lines()
                        .any(|l| metric_name(l) == "ferry_memory_available_bytes")
                        .then(|| sum(&["ferry_memory_available_bytes"]) as u64),
                }
            });
            (n.id.clone(), v)
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// The metric name of a sample line (`name{labels} value` or `name value`).
fn metric_name(line: &str) -> &str {
    if line.starts_with('#') {
        return "";
    }
    line.split(['{', ' ']).next().unwrap_or("")
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
    signals(nodes)
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
