//! Registration, the heartbeat that renews the lease, and the watchdog that drops
//! every session the moment the lease runs out unrenewed (see `docs/ARCHITECTURE.md`,
//! "Leases").

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tracing::{error, warn};

use super::{partition, Ctx};
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
                version: env!("CARGO_PKG_VERSION").to_owned(),
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
    error!(node = %s.node.id, users = dropped, reason = why, "lease lost: dropped every session without writing");
}

/// Heartbeat loop: renews the lease every lease/3.
pub(super) async fn heartbeat(ctx: Ctx) {
    let s = &ctx.services;
    let cfg = ctx.config.cluster.clone();
    let every = cfg.heartbeat_interval().min(ctx.config.heartbeat_interval);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Woken after a pause, or renewals kept failing: the lease is gone, and with it
        // the right to act for any user. Drop everything before anything else.
        if !s.lease.is_valid() && s.users.count() > 0 {
            lease_ran_out(&ctx, "the lease lapsed before it could be renewed").await;
        }
        let sent = Instant::now();
        let health = s.health();
        match s.store.heartbeat_node(&s.node.id, &health, cfg.lease).await {
            Ok(true) => {
                s.lease.renew(sent, cfg.lease);
                partition::after_heartbeat(&ctx, sent).await;
            }
            Ok(false) => {
                // Declared dead (or removed) while away: its users were adopted. Start
                // over as a fresh node; reconcile runs whatever is assigned to it.
                warn!(node = %s.node.id, "this node was declared dead or removed; registering again");
                lose_lease(&ctx, "the node was declared dead");
                match register(&ctx).await {
                    Ok(()) => s.lease.renew(sent, cfg.lease),
                    Err(e) => error!(node = %s.node.id, error = %e, "registering again failed"),
                }
            }
            Err(e) => warn!(node = %s.node.id, error = %e, "heartbeat failed"),
        }
    }
}

/// Watchdog: drops every actor the moment the local lease runs out unrenewed.
pub(super) async fn watchdog(ctx: Ctx) {
    let s = &ctx.services;
    loop {
        let wake = s
            .lease
            .valid_until()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        if !s.lease.is_valid() && s.users.count() > 0 {
            lease_ran_out(&ctx, "the lease ran out").await;
        }
    }
}

/// The lease ran out unrenewed: asks the peers ([`partition::on_store_loss`]), then
/// drops every session. Until the store-away mode keeps sessions, a lapsed lease
/// always fences; the peers' verdict is logged, and a node that fenced says so to
/// the peers that ask.
async fn lease_ran_out(ctx: &Ctx, why: &str) {
    let s = &ctx.services;
    let verdict = partition::on_store_loss(ctx).await;
    if !s.lease.is_valid() && s.users.count() > 0 {
        lose_lease(ctx, &format!("{why} (peers: {verdict:?})"));
    }
}
