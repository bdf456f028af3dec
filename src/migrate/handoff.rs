//! The node side of moving one user: reserve on the target, release on the source,
//! adopt on the target (DESIGN.md §4).

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use chrono::Utc;
use tracing::{info, warn};

use super::{Adopted, Released, Reserved};
use crate::services::{ws_url, Control, Services};
use crate::store::{node_state, Network, UserId};
use crate::user::{ConnState, UserSnapshot};

/// Reserves one connect slot per enabled network of the user on this node, then
/// holds the user for `ttl` so reconcile does not start it before the adopt.
///
/// # Errors
/// Store errors.
pub async fn reserve(services: &Services, user: UserId, ttl: Duration) -> anyhow::Result<Reserved> {
    let started = Instant::now();
    let networks = services.store.networks(user).await?;
    let mut slots = Vec::new();
    for n in networks.iter().filter(|n| n.enabled) {
        slots.push(reserve_slot(services, user, n, ttl).await?);
    }
    let out = Reserved {
        slots,
        waited_ms: started.elapsed().as_millis() as u64,
    };
    services.users.hold(user, ttl).await;
    Ok(out)
}

/// Takes one slot and one connect token for `network` from this node's limiter
/// (waiting in its FIFO like any connect, but as a move: it goes even while this node
/// drains) and parks the permit where the adopting upstream finds it. The permit is
/// dropped (slot freed) if nobody adopts in `ttl`.
/// Returns the network's name and the source IP chosen (`default`: none).
async fn reserve_slot(
    services: &Services,
    user: UserId,
    network: &Network,
    ttl: Duration,
) -> anyhow::Result<(String, String)> {
    let uc = services.users.config();
    let pinned: Option<std::net::IpAddr> =
        network.source_ip.as_deref().and_then(|ip| ip.parse().ok());
    let preferred = pinned.or_else(|| uc.source_ip(user));
    let candidates = match pinned {
        Some(ip) => vec![ip],
        None => uc.source_ips.clone(),
    };
    let target = crate::limits::Target {
        addr: network.addr.clone(),
        network_name: network.name.clone(),
        label: format!("migrate:{user}/{}", network.name),
    };
    let permit = services
        .limiter
        .enqueue_for_move(&target)
        .acquire(preferred, &candidates)
        .await;
    let source = permit
        .source()
        .map_or_else(|| "default".to_owned(), |ip| ip.to_string());
    let stale = uc.reserved.lock().unwrap().insert(network.id, permit);
    drop(stale);
    let reserved = uc.reserved.clone();
    let id = network.id;
    tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        reserved.lock().unwrap().remove(&id);
    });
    Ok((network.name.clone(), source))
}

/// Releases a user this node runs to node `to`: holds it (so reconcile does not start
/// it again), stops the actor (its IRC clients told to follow the user, QUIT with
/// `quit` or else the node's own, upstream closed, backlog flushed), then hands
/// ownership over by compare-and-set on the epoch, and tells web sockets where the
/// session went.
///
/// # Errors
/// The user is not owned by this node, or the compare-and-set lost (then the user is
/// left to reconcile, which restarts it wherever it is owned).
pub async fn release(
    services: &Services,
    user: UserId,
    to: &str,
    quit: Option<String>,
) -> anyhow::Result<Released> {
    let me = &*services.node.id;
    let owner = services.store.owner(user).await?.context("no such user")?;
    anyhow::ensure!(
        owner.node_id.as_deref() == Some(me),
        "user {user} is not owned by node {} (owner: {:?})",
        me,
        owner.node_id
    );
    let nodes = services.store.nodes().await?;
    // A drain releases its users one by one: from the first, the slots they free
    // must not start this node's waiting users here (they are moved too). The
    // periodic sync (`server::limits_sync`) would see it later; this is exact.
    if nodes
        .iter()
        .any(|n| n.id == me && n.state == node_state::DRAINING)
    {
        services.limiter.set_draining(true);
    }
    let target = nodes
        .into_iter()
        .find(|n| n.id == to)
        .with_context(|| format!("no node {to:?}"))?;
    // A start in progress finishes first (and is stopped below); starts after this
    // see the hold and leave the user alone.
    services.users.hold(user, Duration::from_secs(60)).await;
    let quit_at = Utc::now();
    let quit_mono = std::time::Instant::now();
    // A release is always a move: with a QUIT message, the actor tells its IRC
    // clients to follow the user (`Outbound::Moving`) rather than closing them. A
    // caller without one of its own (a spill) moves with the node's.
    let quit = quit.unwrap_or_else(|| services.users.config().quit_message.clone());
    let snapshot = match services.users.stop(user, Some(quit)).await {
        Some(s) => s,
        // Not running (a previous attempt stopped it): the store has everything.
        None => UserSnapshot {
            user_id: user,
            last_seq: services.store.last_seq(user).await?,
            networks: Vec::new(),
        },
    };
    let epoch = services
        .store
        .assign_user(user, Some(to), owner.epoch)
        .await?;
    services.users.unhold(user);
    let epoch = epoch.context("ownership changed during the release")?;
    services
        .sockets
        .control(user, Control::Moved(ws_url(&target.http_addr)));
    info!(node = %me, user, to, epoch, "user released for migration");
    Ok(Released {
        user_id: user,
        snapshot: encode_snapshot(&snapshot)?,
        quit_at_ms: quit_at.timestamp_millis(),
        epoch,
        quit_ago_ms: Some(quit_mono.elapsed().as_millis() as i64),
    })
}

/// Adopts a user this node now owns: starts it (using the reservation), waits until
/// every enabled network is registered and its channels rejoined, then writes a gap
/// marker for the disconnect window. On any failure the caller hands the user back.
///
/// # Errors
/// Not owned here, the start failed, or the deadline passed.
pub async fn adopt(
    services: &Services,
    user: UserId,
    snapshot: &str,
    quit_at_ms: i64,
    deadline: Duration,
) -> anyhow::Result<Adopted> {
    let snap = decode_snapshot(snapshot)?;
    anyhow::ensure!(snap.user_id == user, "the snapshot is of another user");
    let rec = services.store.user(user).await?.context("no such user")?;
    // A user handed back to a draining node (its move failed) connects all the
    // same: its networks' slots are reserved as a move's, which the drain lets
    // through, before the start uses them.
    if services.limiter.is_draining() {
        info!(node = %services.node.id, user, "adopting on a draining node (a move handed back): its connects go as a move's");
        let ttl = deadline + Duration::from_secs(30);
        let reserving = async {
            for n in services
                .store
                .networks(user)
                .await?
                .iter()
                .filter(|n| n.enabled)
            {
                let held = services
                    .users
                    .config()
                    .reserved
                    .lock()
                    .unwrap()
                    .contains_key(&n.id);
                if !held {
                    reserve_slot(services, user, n, ttl).await?;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(deadline, reserving)
            .await
            .map_err(|_| anyhow::anyhow!("no connect slot within {} ms", deadline.as_millis()))??;
    }
    // The reservation's hold ends here: the start below is the one it was for.
    services.users.unhold(user);
    let started = Instant::now();
    let handle = services.users.start(user, &rec.name).await?;
    let want: HashMap<i64, usize> = snap
        .networks
        .iter()
        .map(|n| (n.network_id, n.channels.len()))
        .collect();
    let limit = started + deadline;
    loop {
        let status = handle.status().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let ready = status.iter().all(|s| {
            let joined_enough = s.channels.len() >= want.get(&s.network_id).copied().unwrap_or(0);
            matches!(s.state, ConnState::Connected) && joined_enough
        });
        if ready {
            break;
        }
        if Instant::now() >= limit {
            let detail: Vec<String> = status
                .iter()
                .map(|s| format!("{}: {:?} in {} channels", s.name, s.state, s.channels.len()))
                .collect();
            anyhow::bail!(
                "not registered and rejoined within {} ms ({})",
                deadline.as_millis(),
                detail.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let now = Utc::now();
    let ready_mono = std::time::Instant::now();
    let downtime_ms = (now.timestamp_millis() - quit_at_ms).max(0);
    let from = chrono::DateTime::from_timestamp_millis(quit_at_ms).unwrap_or(now);
    let text = format!(
        "[gap] Ferry moved this session between nodes: messages from {} to {} ({} ms) may be missing",
        from.format("%H:%M:%S%.3f"),
        now.format("%H:%M:%S%.3f"),
        downtime_ms
    );
    let gaps = handle
        .gap_marker(text, from, now)
        .await
        .unwrap_or_else(|e| {
            warn!(node = %services.node.id, user, error = %e, "gap marker not written");
            Vec::new()
        });
    info!(node = %services.node.id, user, downtime_ms, "user adopted");
    services
        .metrics
        .migration_downtime
        .observe(downtime_ms as f64 / 1000.0);
    Ok(Adopted {
        downtime_ms,
        ready_ago_ms: Some(ready_mono.elapsed().as_millis() as i64),
        gaps,
    })
}

/// JSON, zstd level 3, base64.
pub fn encode_snapshot(s: &UserSnapshot) -> anyhow::Result<String> {
    let json = serde_json::to_vec(s)?;
    let z = zstd::encode_all(&json[..], 3)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(z))
}

pub fn decode_snapshot(s: &str) -> anyhow::Result<UserSnapshot> {
    let z = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("snapshot is not base64")?;
    let mut json = Vec::new();
    zstd::Decoder::new(&z[..])?
        .take(16 << 20)
        .read_to_end(&mut json)
        .context("snapshot is not zstd")?;
    Ok(serde_json::from_slice(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::NetworkSnapshot;

    #[test]
    fn snapshot_roundtrip() {
        let s = UserSnapshot {
            user_id: 7,
            last_seq: 42,
            networks: vec![NetworkSnapshot {
                network_id: 3,
                nick: b"al\xffice".to_vec(),
                away: Some(b"gone".to_vec()),
                channels: vec![(b"#a".to_vec(), Some(b"key".to_vec()))],
            }],
        };
        let enc = encode_snapshot(&s).unwrap();
        let back = decode_snapshot(&enc).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&s).unwrap()
        );
        assert!(decode_snapshot("!!").is_err());
    }
}
