//! One connection as the upstream task sees it: connect (dial and register), hand
//! the registered connection to its owner (the user actor) as a [`LiveLink`], then
//! wait for it back ([`UpstreamCommand::LinkEnded`]) to report how it ended.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::connect::connect;
use super::link::Link;
use super::live::LiveLink;
use super::{End, Events, Stop, UpstreamCommand, UpstreamConfig, UpstreamEvent, UpstreamStats};
use crate::limits::Permit;

/// Runs one connection to its end. The `permit` goes with the link while it is out,
/// and comes back with its end.
pub(super) async fn run(
    cfg: &UpstreamConfig,
    events: &Events,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    stats: &Arc<UpstreamStats>,
    attempt: u32,
    permit: &mut Option<Permit>,
) -> End {
    let started = Instant::now();
    info!(network = cfg.network_id, addr = %cfg.addr, attempt, tls = cfg.tls, source = ?cfg.source_ip, "upstream connecting");
    let registered = match connect(cfg, events, cancel, commands, stats, attempt).await {
        Ok(r) => r,
        Err(end) => return end,
    };
    let (link, registration) = Link::new(registered, cfg);
    stats
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    info!(
        network = cfg.network_id,
        addr = %cfg.addr,
        attempt,
        duration_ms = started.elapsed().as_millis() as u64,
        nick = %crate::irc::decode(&registration.nick),
        caps = registration.caps.len(),
        "upstream registered"
    );
    // The link first: the actor sends its rejoins on `Registered`.
    let link = Box::new(LiveLink::new(link, permit.take()));
    if let Err(stop) = events.emit(cancel, UpstreamEvent::Linked(link)).await {
        return End::Stop(stop);
    }
    if let Err(stop) = events
        .emit(cancel, UpstreamEvent::Registered(registration))
        .await
    {
        return End::Stop(stop);
    }
    held(cancel, commands, permit).await
}

/// While the owner drives the link: waits for its end (and the permit back).
pub(super) async fn held(
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    permit: &mut Option<Permit>,
) -> End {
    loop {
        let cmd = tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Stop(Stop::Cancelled),
            cmd = commands.recv() => cmd,
        };
        match cmd {
            Some(UpstreamCommand::LinkEnded(ended)) => {
                let super::LinkEnded { end, permit: p } = *ended;
                *permit = p;
                return end;
            }
            // The owner quit without the link (it was lost): done.
            Some(UpstreamCommand::Quit(_)) => return End::Quit,
            Some(UpstreamCommand::Send(m)) => {
                debug!(command = %m.command, "the link is out: dropping a line sent to the task");
            }
            Some(UpstreamCommand::Park(reply)) => super::not_registered(reply),
            // Nobody can hand the link back any more.
            None => return End::Stop(Stop::EventsClosed),
        }
    }
}
