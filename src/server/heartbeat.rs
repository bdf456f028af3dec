//! Registration, the heartbeat that renews the lease, and the watchdog that acts the
//! moment the lease runs out unrenewed (see `docs/ARCHITECTURE.md`, "Leases"): when
//! the renewals failed for lack of a store, `partition` decides between riding the
//! outage out (sessions kept, writes buffered) and fencing; a lease that lapsed while
//! the store answered (the node stood still: a pause, a frozen VM) drops every
//! session, and so does being declared dead.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tracing::{error, info, warn};

use super::partition::{self, OnStoreLoss};
use super::Ctx;
use crate::migrate::{AdminClient, CallError};
use crate::store::{node_state, NodeRecord};

/// Refuses to start as a node id that a running node holds: its lease is live and
/// its admin API answers. Registering would take its record over and fence its
/// users from under it. A live lease whose node does not answer is a node that
/// just crashed (a restart under the same id): that one is taken over.
///
/// # Errors
/// The id is in use, or the store cannot be read.
pub(super) async fn check_id_free(ctx: &Ctx) -> anyhow::Result<()> {
    let s = &ctx.services;
    let id = &*s.node.id;
    if !s.store.node_is_live(id).await? {
        return Ok(());
    }
    let Some(old) = s.store.nodes().await?.into_iter().find(|n| n.id == id) else {
        return Ok(());
    };
    let client = AdminClient::new(&old, s.store.secret_key(), Duration::from_secs(3))?;
    match client
        .call::<serde_json::Value>(reqwest::Method::GET, "/limits", None::<&()>)
        .await
    {
        Err(CallError::Unreachable { .. }) => {
            warn!(node = %id, admin = %old.admin_url,
                  "this node id has a live lease but its node does not answer (crashed?); taking it over");
            Ok(())
        }
        _ => anyhow::bail!(
            "node id {id:?} is in use by a running node (admin API {}, heartbeat {:.1}s ago); \
             give this node its own --node-id, or stop that one first",
            old.admin_url,
            (Utc::now() - old.heartbeat_at).num_milliseconds() as f64 / 1000.0
        ),
    }
}

/// Registers (or re-registers) this node as `active`, with a fresh lease.
///
/// # Errors
/// Store errors.
pub(super) async fn register(ctx: &Ctx) -> anyhow::Result<()> {
    let s = &ctx.services;
    let now = Utc::now();
    let schema_version = s.store.schema_version().await?;
    let advertised = s
        .node
        .advertised
        .clone()
        .context("the node is not bound yet")?;
    s.store
        .register_node(
            &NodeRecord {
                id: s.node.id.to_string(),
                admin_url: ctx.admin_url.clone(),
                admin_token: s.node.admin_token.stored.clone(),
                http_addr: advertised.http,
                irc_addr: advertised.irc,
                version: crate::upgrade::version(),
                state: node_state::ACTIVE.to_owned(),
                started_at: now,
                heartbeat_at: now,
                source_ips: ctx
                    .config
                    .user
                    .source_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                schema_version,
                config_fingerprint: s.node.fingerprint.hash.clone(),
                fd_limit: s.node.fd.limit as i64,
                fd_budget: s.node.fd.sessions() as i64,
                health: s.health(),
                lease_expires_at: now,
            },
            ctx.config.cluster.lease,
        )
        .await?;
    Ok(())
}

/// The lease is gone: drop every actor at once (no QUIT, no writes).
pub(super) fn lose_lease(ctx: &Ctx, why: &str) {
    let s = &ctx.services;
    s.lease.revoke();
    let dropped = s.users.drop_all();
    if s.lease.is_sole() {
        // Still held (see `Lease::sole`): the writer stores what they had queued, and
        // reconcile starts them again.
        error!(node = %s.node.id, users = dropped, reason = why, "dropped every session; they start again");
    } else {
        error!(node = %s.node.id, users = dropped, reason = why, "lease lost: dropped every session without writing");
    }
}

/// The lease ran out unrenewed. When the store did not answer the renewals, the
/// node rides the outage out or fences itself, as [`partition::on_store_loss`]
/// decides; when it did answer (the node stood still past its lease), every session
/// is dropped.
async fn lease_lapsed(ctx: &Ctx, why: &str) {
    let s = &ctx.services;
    if !s.lease.lapsed() {
        return;
    }
    if !s.lease.store_reachable() {
        match partition::on_store_loss(ctx).await {
            OnStoreLoss::Keep => {
                s.lease.ride_out();
                if s.lease.riding_out() {
                    warn!(node = %s.node.id, users = s.users.count(),
                        "the store is unreachable and the lease lapsed: riding the outage out (sessions kept, live lines relayed, writes held)");
                }
            }
            OnStoreLoss::Fence => {
                lose_lease(ctx, "cut off from the store while its peers reach it")
            }
        }
        return;
    }
    if s.users.count() > 0 {
        lose_lease(ctx, why);
    }
}

/// Heartbeat loop: renews the lease every lease/3.
pub(super) async fn heartbeat(ctx: Ctx) {
    let s = &ctx.services;
    let cfg = ctx.config.cluster.clone();
    let every = cfg.heartbeat_interval().min(ctx.config.heartbeat_interval);
    // A renewal that hangs (a store behind a dead route) counts as failed after this,
    // so a lease never lapses before a failed renewal was seen.
    let patience = every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Woken after a pause, or renewals kept failing: the lease is gone, and with it
        // the right to write for any user. Decide before anything else.
        if s.lease.lapsed() {
            lease_lapsed(&ctx, "the lease lapsed before it could be renewed").await;
        }
        let sent = Instant::now();
        let health = s.health();
        let riding = s.lease.riding_out();
        let renewed = tokio::time::timeout(
            patience,
            s.store.heartbeat_node(&s.node.id, &health, cfg.lease),
        )
        .await;
        match renewed {
            Ok(Ok(true)) => {
                s.lease.renew(sent, cfg.lease);
                partition::after_heartbeat(&ctx, sent).await;
                if riding {
                    info!(node = %s.node.id, users = s.users.count(),
                        "the store answers again: lease renewed, sessions kept; writing the held lines back");
                }
            }
            Ok(Ok(false)) => {
                // Declared dead (or removed) while away: its users were adopted. Start
                // over as a fresh node; reconcile runs whatever is assigned to it.
                warn!(node = %s.node.id, "this node was declared dead or removed; registering again");
                lose_lease(&ctx, "the node was declared dead");
                match register(&ctx).await {
                    Ok(()) => s.lease.renew(sent, cfg.lease),
                    Err(e) => error!(node = %s.node.id, error = %e, "registering again failed"),
                }
            }
            Ok(Err(e)) => {
                s.lease.set_store_reachable(false);
                warn!(node = %s.node.id, error = %e, "heartbeat failed");
            }
            Err(_) => {
                s.lease.set_store_reachable(false);
                warn!(node = %s.node.id, waited_ms = patience.as_millis() as u64, "heartbeat: the store did not answer in time");
            }
        }
    }
}

/// Watchdog: acts the moment the local lease runs out unrenewed (see
/// [`lease_lapsed`]).
pub(super) async fn watchdog(ctx: Ctx) {
    let s = &ctx.services;
    loop {
        let now = Instant::now();
        let wake = s
            .lease
            .valid_until()
            .filter(|t| *t > now)
            .unwrap_or_else(|| now + Duration::from_millis(200));
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        if s.lease.lapsed() {
            lease_lapsed(&ctx, "the lease ran out").await;
        }
    }
}
