//! `ferry migrate …`: drain a node, move users or rebalance the nodes, in batches, throttled by the
//! targets' limits, with preflight, canary, automatic rollback of a failed batch,
//! pause, resume, abort and rollback. The driver is `migrate::execute`; `progress`
//! shows it running, `status` shows plans and migrations.

mod progress;
mod status;

use std::collections::HashMap;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::admin::{open_store, Access};
use super::Cli;
use crate::migrate::rebalance::Tolerance;
use crate::migrate::{self, MigrationKind, MigrationState, MoveState, Options};
use crate::store::{node_state, Store};
use progress::{execute, say};
use status::{print_plan, print_rebalance, status};

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Move every user off NODE and mark it drained (it takes no new users).
    Drain(DrainArgs),
    /// Move chosen users to a node.
    Move(MoveArgs),
    /// Move users from the fullest active nodes to the emptiest until they are within
    /// a tolerance of each other, in users and in sessions per network.
    Rebalance(RebalanceArgs),
    /// Show one migration (or list them all).
    Status {
        /// The migration's number (default: list them all).
        id: Option<i64>,
    },
    /// Stop a migration where it is (moved users stay moved).
    Abort {
        /// The migration's number.
        id: i64,
    },
    /// Continue a paused or interrupted migration.
    Resume {
        /// The migration's number.
        id: i64,
    },
    /// Move every user a migration moved back where it came from (also throttled).
    Rollback {
        /// The migration whose moves are undone.
        id: i64,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
        /// Health limits for the way back (default: the migration's own).
        #[command(flatten)]
        health: HealthOpts,
    },
}

#[derive(Debug, Args)]
pub struct RunOpts {
    /// Users per batch (after the canary batch).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Users in the canary batch, which must fully succeed.
    #[arg(long, default_value_t = 5)]
    canary: usize,
    /// Pause (and roll the batch's failures back) when a batch fails more than this.
    #[arg(long, default_value_t = 0.1)]
    max_failure_ratio: f64,
    /// QUIT message the networks see (default: the node's).
    #[arg(long)]
    quit_message: Option<String>,
    /// Users moved at once within a batch (default: enough to keep up with the
    /// fastest connect rate the limits allow, at least 8, at most 64).
    #[arg(long)]
    parallel: Option<usize>,
    #[command(flatten)]
    health: HealthOpts,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Start without asking.
    #[arg(long)]
    yes: bool,
}

/// The health watch's limits (`docs/operations.md`).
#[derive(Debug, Args)]
pub struct HealthOpts {
    /// Pause when a target's event loop lags more than this (milliseconds; default
    /// 1000).
    #[arg(long)]
    max_loop_lag_ms: Option<i64>,
    /// Pause when a target's system has less memory available than this (MiB;
    /// default 256).
    #[arg(long)]
    min_free_memory_mib: Option<u64>,
}

impl HealthOpts {
    fn apply(&self, o: &mut Options) {
        if let Some(v) = self.max_loop_lag_ms {
            o.max_loop_lag_ms = v;
        }
        if let Some(v) = self.min_free_memory_mib {
            o.min_free_memory_mib = v;
        }
    }
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node to empty.
    node: String,
    /// Target nodes (comma-separated; default: every other live active node).
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    #[command(flatten)]
    opts: RunOpts,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The users to move.
    #[arg(required = true)]
    users: Vec<String>,
    /// The node they move to.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    opts: RunOpts,
}

#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// Move at most this many users.
    #[arg(long)]
    max_moves: Option<usize>,
    /// How far apart the nodes may stay, in users and in sessions per network: a
    /// count (`2`) or a percentage of the mean per node (`10%`); at least 1.
    #[arg(long, default_value = "10%")]
    tolerance: Tolerance,
    #[command(flatten)]
    opts: RunOpts,
}

impl RunOpts {
    fn options(&self) -> Options {
        let mut o = Options {
            batch: self.batch,
            canary: self.canary,
            max_failure_ratio: self.max_failure_ratio,
            parallel: self.parallel.unwrap_or(8),
            ..Options::default()
        };
        if self.quit_message.is_some() {
            o.quit_message = self.quit_message.clone();
        }
        self.health.apply(&mut o);
        o
    }
}

pub async fn run(cli: &Cli, cmd: &MigrateCommand) -> anyhow::Result<()> {
    let access = match cmd {
        MigrateCommand::Status { .. } => Access::Read,
        _ => Access::Write,
    };
    let store = open_store(cli, access).await?;
    match cmd {
        MigrateCommand::Drain(a) => {
            start(
                cli,
                &store,
                MigrationKind::Drain,
                Some(&a.node),
                None,
                &a.to,
                &a.opts,
            )
            .await
        }
        MigrateCommand::Move(a) => {
            start(
                cli,
                &store,
                MigrationKind::Move,
                None,
                Some(&a.users),
                std::slice::from_ref(&a.to),
                &a.opts,
            )
            .await
        }
        MigrateCommand::Rebalance(a) => rebalance(cli, &store, a).await,
        MigrateCommand::Status { id } => status(cli, &store, *id).await,
        MigrateCommand::Abort { id } => {
            let m = store
                .migration(*id)
                .await?
                .with_context(|| format!("no migration {id}"))?;
            anyhow::ensure!(
                !MigrationState::is_over(&m.state),
                "migration {id} is already {}",
                m.state
            );
            migrate::set_migration_state(
                &store,
                *id,
                MigrationState::Aborted,
                "aborted by the operator",
            )
            .await?;
            if m.kind == MigrationKind::Drain.as_str() {
                store
                    .set_node_state(&m.source_node, node_state::ACTIVE)
                    .await
                    .ok();
            }
            say(cli, &serde_json::json!({"id": id, "state": MigrationState::Aborted}), &format!(
                "migration {id} aborted; users already moved stay where they are (`ferry migrate rollback {id}` moves them back)"
            ));
            Ok(())
        }
        MigrateCommand::Resume { id } => {
            let m = store
                .migration(*id)
                .await?
                .with_context(|| format!("no migration {id}"))?;
            if m.state == MigrationState::Paused.as_str() {
                migrate::set_migration_state(&store, *id, MigrationState::Running, "").await?;
            }
            execute(cli, &store, *id, None).await
        }
        MigrateCommand::Rollback { id, yes, health } => {
            rollback(cli, &store, *id, *yes, health).await
        }
    }
}

async fn start(
    cli: &Cli,
    store: &Store,
    kind: MigrationKind,
    source: Option<&str>,
    users: Option<&[String]>,
    targets: &[String],
    ro: &RunOpts,
) -> anyhow::Result<()> {
    let mut opts = ro.options();
    if let Some(s) = source {
        let nodes = store.nodes().await?;
        anyhow::ensure!(nodes.iter().any(|n| n.id == s), "no node {s:?}");
    }
    let (chosen, _targets, plan) = migrate::make_plan(store, source, users, targets, &opts).await?;
    if ro.parallel.is_none() {
        opts.parallel = migrate::auto_parallel(&plan);
    }
    print_plan(cli, &plan);
    if !plan.problems.is_empty() {
        anyhow::bail!("the plan does not fit: {}", plan.problems.join("; "));
    }
    if ro.dry_run {
        return Ok(());
    }
    if !ro.yes {
        anyhow::bail!(
            "this moves {} users; run again with --yes to start",
            plan.users.len()
        );
    }
    let from: HashMap<_, _> = chosen.iter().map(|(u, n)| (u.id, n.clone())).collect();
    let src = source
        .map(str::to_owned)
        .or_else(|| chosen.first().map(|(_, n)| n.clone()))
        .unwrap_or_default();
    let tg: Vec<String> = if targets.is_empty() {
        let mut t: Vec<String> = plan.users.iter().map(|u| u.to.clone()).collect();
        t.sort();
        t.dedup();
        t
    } else {
        targets.to_vec()
    };
    let id = migrate::create(store, kind, &src, &tg, &from, &plan, &opts, None).await?;
    if !cli.json {
        println!(
            "migration {id} created ({} users); `ferry migrate status {id}` shows it from anywhere",
            plan.users.len()
        );
    }
    execute(cli, store, id, Some(plan.eta_seconds)).await
}

async fn rebalance(cli: &Cli, store: &Store, a: &RebalanceArgs) -> anyhow::Result<()> {
    let ro = &a.opts;
    let mut opts = ro.options();
    let r = migrate::make_rebalance_plan(store, a.tolerance, a.max_moves, &opts).await?;
    if ro.parallel.is_none() {
        opts.parallel = migrate::auto_parallel(&r.plan);
    }
    print_rebalance(cli, &r);
    if r.plan.users.is_empty() {
        if !cli.json {
            if r.balanced {
                println!(
                    "nothing to do: the active nodes are within the tolerance ({})",
                    r.tolerance
                );
            } else {
                println!("nothing to do: {}", r.note);
            }
        }
        return Ok(());
    }
    if ro.dry_run {
        return Ok(());
    }
    if !ro.yes {
        anyhow::bail!(
            "this moves {} users; run again with --yes to start",
            r.plan.users.len()
        );
    }
    let id = migrate::create_rebalance(store, &r, &opts).await?;
    if !cli.json {
        println!(
            "migration {id} created ({} users); `ferry migrate status {id}` shows it from anywhere",
            r.plan.users.len()
        );
    }
    execute(cli, store, id, Some(r.plan.eta_seconds)).await
}

async fn rollback(
    cli: &Cli,
    store: &Store,
    id: i64,
    yes: bool,
    health: &HealthOpts,
) -> anyhow::Result<()> {
    let m = store
        .migration(id)
        .await?
        .with_context(|| format!("no migration {id}"))?;
    let users = store.migration_users(id).await?;
    let moved: Vec<_> = users
        .iter()
        .filter(|u| u.state == MoveState::Moved.as_str())
        .collect();
    anyhow::ensure!(!moved.is_empty(), "migration {id} moved nobody");
    let mut opts: Options = serde_json::from_str(&m.options).unwrap_or_default();
    health.apply(&mut opts);
    let moved_users: Vec<_> = moved.iter().map(|u| (*u).clone()).collect();
    // The way back is planned and shown like the way there: who goes where, the
    // bound the limits impose, the ETA.
    let plan = migrate::rollback_plan(store, &moved_users, opts.batch).await?;
    print_plan(cli, &plan);
    if !yes {
        anyhow::bail!(
            "this moves {} users back; run again with --yes",
            moved.len()
        );
    }
    if m.kind == MigrationKind::Drain.as_str() {
        // The source takes users again.
        store
            .set_node_state(&m.source_node, node_state::ACTIVE)
            .await?;
    }
    let from: HashMap<_, _> = moved
        .iter()
        .map(|u| (u.user_id, u.to_node.clone()))
        .collect();
    // Back to every node the users came from (one for a drain, several for a
    // rebalance).
    let mut back_to: Vec<String> = moved.iter().map(|u| u.from_node.clone()).collect();
    back_to.sort();
    back_to.dedup();
    let new = migrate::create(
        store,
        MigrationKind::Rollback,
        &m.targets.join(","),
        &back_to,
        &from,
        &plan,
        &opts,
        Some(id),
    )
    .await?;
    if !cli.json {
        println!("rollback of migration {id} is migration {new}");
    }
    execute(cli, store, new, Some(plan.eta_seconds)).await
}
