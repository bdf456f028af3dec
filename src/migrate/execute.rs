//! Running a migration: preflight every target, then the batches (the canary first),
//! each followed by the health watch; a bad batch pauses the migration for the
//! operator. Every step is written to the store before and after it happens, so a
//! killed driver loses nothing and `resume` never moves a user twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use super::client::AdminClient;
use super::health;
use super::lock::Lock;
use super::prepare::{limits_key, load_limits};
use super::Signals;
use super::{
    moves, set_migration_state, set_move_state, Check, MigrationKind, MigrationState, MoveState,
    NetworkProbe, Options, PreflightReport, PreflightRequest, Progress,
};
use crate::store::migrate::{MigrationRecord, MigrationUser};
use crate::store::{node_state, NodeRecord, Store};

/// How long a driver's call to a node may take (an adopt waits for registration).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);

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
    if MigrationState::is_over(&m.state) {
        anyhow::bail!("migration {id} is {}", m.state);
    }
    let kind = MigrationKind::parse(&m.kind);
    let opts: Options = serde_json::from_str(&m.options).unwrap_or_default();
    let users = store.migration_users(id).await?;
    // A node whose token this key cannot derive (an older record, another key) gets
    // no client: moves to or from it fail as for an unreachable node.
    let mut clients: HashMap<String, AdminClient> = HashMap::new();
    for n in store.nodes().await? {
        match AdminClient::new(&n, store.secret_key(), CALL_TIMEOUT) {
            Ok(c) => {
                clients.insert(n.id.clone(), c);
            }
            Err(e) => {
                tracing::warn!(node = %n.id, error = %e, "cannot reach this node's admin API")
            }
        }
    }

    // Preflight every target that still has users to receive.
    set_migration_state(store, id, MigrationState::Preflight, "").await?;
    let targets = targets(store, &users).await?;
    let failed = preflight(&targets, &clients, report).await;
    if !failed.is_empty() {
        let note = format!("preflight failed: {}", failed.join("; "));
        set_migration_state(store, id, MigrationState::Aborted, &note).await?;
        report(Progress::Done {
            state: MigrationState::Aborted,
        });
        anyhow::bail!(note);
    }
    if kind == Some(MigrationKind::Drain) {
        store
            .set_node_state(&m.source_node, node_state::DRAINING)
            .await?;
    }
    set_migration_state(store, id, MigrationState::Running, "").await?;

    // The health watch judges what happens from here on; `status` reports rejections
    // since the first run's baseline.
    let baseline = baseline(store, id, &m, &targets).await?;
    let target_ids: Vec<String> = targets.keys().map(|s| (*s).to_owned()).collect();
    let batches: BTreeSet<i64> = users.iter().map(|u| u.batch).collect();
    for b in batches {
        lock.renew().await?;
        // The operator may have aborted meanwhile.
        let cur = store.migration(id).await?.context("migration vanished")?;
        if cur.state != MigrationState::Running.as_str() {
            return Ok(());
        }
        let Some((moved, failed, interrupted)) =
            run_batch_riding_blips(store, id, b, &clients, &opts, report).await?
        else {
            continue;
        };
        if interrupted > 0 {
            // Not the batch's fault: nothing can move while the store is away.
            let note = format!("batch {b}: the store was unreachable, {interrupted} move(s) interrupted (each user stays with whichever node owns it now; resume continues the same attempt: a user already released is adopted by its target, the others are moved then). Run `ferry migrate resume {id}` once it is back, or `rollback {id}` or `abort {id}`");
            set_migration_state(store, id, MigrationState::Paused, &note)
                .await
                .with_context(|| format!("migration {id} stopped in batch {b}: the store is unreachable; run `ferry migrate resume {id}` once it is back"))?;
            report(Progress::Paused { reason: note });
            return Ok(());
        }
        let ratio = failed as f64 / (moved + failed) as f64;
        let why = if b == 0 && failed > 0 {
            Some(format!("the canary batch had {failed} failure(s)"))
        } else if ratio > opts.max_failure_ratio {
            Some(format!(
                "batch {b}: failure ratio {ratio:.2} exceeds {}",
                opts.max_failure_ratio
            ))
        } else {
            health::degraded(store, &target_ids, &opts, &baseline).await?
        };
        if let Some(why) = why {
            let note = format!("{why}; failed users were rolled back to their source. Run `ferry migrate resume {id}`, `rollback {id}` or `abort {id}`");
            set_migration_state(store, id, MigrationState::Paused, &note).await?;
            report(Progress::Paused { reason: note });
            return Ok(());
        }
    }
    finish(store, id, &m, kind, report).await
}

/// What one target still receives: the preflight it is asked to run.
struct TargetLoad<'a> {
    users: i64,
    sessions: i64,
    probes: BTreeSet<NetworkProbe>,
    /// The node the users come from (the preflight compares it with the target).
    from: &'a str,
}

/// The targets of the users not moved yet, with what each receives.
async fn targets<'a>(
    store: &Store,
    users: &'a [MigrationUser],
) -> anyhow::Result<BTreeMap<&'a str, TargetLoad<'a>>> {
    let limits = load_limits(store).await?;
    let mut per_target: BTreeMap<&str, TargetLoad<'_>> = BTreeMap::new();
    for u in users.iter().filter(|u| !is_final(&u.state)) {
        let e = per_target.entry(&u.to_node).or_insert(TargetLoad {
            users: 0,
            sessions: 0,
            probes: BTreeSet::new(),
            from: &u.from_node,
        });
        e.users += 1;
        for n in store.networks(u.user_id).await? {
            if n.enabled {
                e.sessions += 1;
                e.probes.insert(NetworkProbe {
                    addr: n.addr.clone(),
                    tls: n.tls,
                    tls_insecure: n.tls_verify == crate::store::TlsVerify::Insecure,
                    key: limits_key(&n.addr, &n.name, &limits),
                });
            }
        }
    }
    Ok(per_target)
}

/// Runs every target's preflight at once (each waits ~1.5 s per probe for an
/// `ERROR`) and reports each. Returns the failed checks, as text.
async fn preflight(
    targets: &BTreeMap<&str, TargetLoad<'_>>,
    clients: &HashMap<String, AdminClient>,
    report: &(dyn Fn(Progress) + Sync),
) -> Vec<String> {
    let reports = futures::future::join_all(targets.iter().map(|(target, t)| {
        let client = clients.get(*target).cloned();
        let req = PreflightRequest {
            source_node: t.from.to_owned(),
            planned_sessions: t.sessions,
            planned_users: t.users,
            networks: t.probes.iter().cloned().collect(),
        };
        async move {
            let r = match client {
                None => Err(anyhow::anyhow!("target node {target} is not registered")),
                Some(c) => c.post::<PreflightReport>("/migrate/preflight", &req).await,
            };
            r.unwrap_or_else(|e| PreflightReport {
                node: (*target).to_owned(),
                ok: false,
                checks: vec![Check {
                    name: "reachable".into(),
                    ok: false,
                    detail: format!("{e:#}"),
                }],
            })
        }
    }))
    .await;
    let mut failed = Vec::new();
    for rep in reports {
        if !rep.ok {
            for c in rep.checks.iter().filter(|c| !c.ok) {
                failed.push(format!("{}: {}: {}", rep.node, c.name, c.detail));
            }
        }
        report(Progress::Preflight { report: rep });
    }
    failed
}

/// The involved nodes' signals before the first batch, stored with the migration (a
/// resumed run keeps the first).
async fn baseline(
    store: &Store,
    id: i64,
    m: &MigrationRecord,
    targets: &BTreeMap<&str, TargetLoad<'_>>,
) -> anyhow::Result<BTreeMap<String, Signals>> {
    let involved: Vec<NodeRecord> = store
        .nodes()
        .await?
        .into_iter()
        // A rebalance's source is a list of nodes.
        .filter(|n| {
            m.source_node.split(',').any(|s| s == n.id) || targets.contains_key(n.id.as_str())
        })
        .collect();
    let baseline: BTreeMap<String, Signals> = health::signals(&involved, store.secret_key())
        .await
        .into_iter()
        .filter_map(|(id, s)| Some((id, s?)))
        .collect();
    let counts: BTreeMap<&String, u64> = baseline.iter().map(|(k, v)| (k, v.rejections)).collect();
    store
        .set_rejections_baseline(id, &serde_json::to_string(&counts)?)
        .await?;
    Ok(baseline)
}

/// How often a batch whose moves the store's absence interrupted is run again at once
/// (when the store answers by then) before the migration pauses.
const STORE_BLIP_RETRIES: usize = 2;

/// [`run_batch`], run again for the moves a store *blip* interrupted (a pool that timed
/// out under load, a connection reset): when the store answers a second later, the
/// interrupted moves continue as the same attempt, exactly as `resume` would continue
/// them, instead of pausing the migration for an operator. A store still away after
/// that pauses it as before. Returns the batch's totals over the runs.
async fn run_batch_riding_blips(
    store: &Store,
    id: i64,
    b: i64,
    clients: &HashMap<String, AdminClient>,
    opts: &Options,
    report: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Option<(usize, usize, usize)>> {
    let Some((mut moved, mut failed, mut interrupted)) =
        run_batch(store, id, b, clients, opts, report).await?
    else {
        return Ok(None);
    };
    for _ in 0..STORE_BLIP_RETRIES {
        if interrupted == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if store.migration(id).await.is_err() {
            break;
        }
        tracing::warn!(
            migration = id,
            batch = b,
            interrupted,
            "migration: the store answers again; continuing the interrupted moves"
        );
        let Some((m, f, i)) = run_batch(store, id, b, clients, opts, report).await? else {
            interrupted = 0;
            break;
        };
        moved += m;
        failed += f;
        interrupted = i;
    }
    Ok(Some((moved, failed, interrupted)))
}

/// Moves batch `b`'s users not moved yet, `opts.parallel` at a time. Returns how many
/// moved, failed and were interrupted (the store away), `None` when the batch had
/// nobody left.
async fn run_batch(
    store: &Store,
    id: i64,
    b: i64,
    clients: &HashMap<String, AdminClient>,
    opts: &Options,
    report: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Option<(usize, usize, usize)>> {
    let todo: Vec<MigrationUser> = store
        .migration_users(id)
        .await?
        .into_iter()
        .filter(|u| u.batch == b && !is_final(&u.state))
        .collect();
    if todo.is_empty() {
        return Ok(None);
    }
    report(Progress::Batch {
        batch: b,
        users: todo.len(),
    });
    let results: Vec<moves::Outcome> = futures::stream::iter(todo.iter())
        .map(|u| moves::move_one(store, id, u, clients, opts, report))
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    let count = |o| results.iter().filter(|r| **r == o).count();
    let (moved, failed) = (count(moves::Outcome::Moved), count(moves::Outcome::Failed));
    let interrupted = count(moves::Outcome::Interrupted);
    report(Progress::BatchDone {
        batch: b,
        moved,
        failed,
    });
    Ok(Some((moved, failed, interrupted)))
}

/// The last batch is done: a drained node is marked so, a rollback marks its parent's
/// users rolled back, and the migration completes.
async fn finish(
    store: &Store,
    id: i64,
    m: &MigrationRecord,
    kind: Option<MigrationKind>,
    report: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<()> {
    if kind == Some(MigrationKind::Drain) {
        store
            .set_node_state(&m.source_node, node_state::DRAINED)
            .await?;
    }
    if kind == Some(MigrationKind::Rollback) {
        if let Some(p) = m.parent {
            for u in store.migration_users(id).await? {
                if is_final(&u.state) {
                    set_move_state(store, p, u.user_id, MoveState::RolledBack).await?;
                }
            }
            store
                .set_node_state(
                    &m.targets.first().cloned().unwrap_or_default(),
                    node_state::ACTIVE,
                )
                .await
                .ok();
            set_migration_state(
                store,
                p,
                MigrationState::RolledBack,
                &format!("rolled back by migration {id}"),
            )
            .await?;
        }
    }
    set_migration_state(store, id, MigrationState::Completed, "").await?;
    report(Progress::Done {
        state: MigrationState::Completed,
    });
    Ok(())
}

/// A user already moved is never moved again.
fn is_final(state: &str) -> bool {
    state == MoveState::Moved.as_str()
}
