//! One connection as the upstream task runs it: connect (dial and register), tell
//! the user actor, then drive the [`Link`] — lines from the server to the actor,
//! the actor's commands to the link — until it ends.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::connect::connect;
use super::link::{Link, Timer};
use super::{End, Events, Stop, UpstreamCommand, UpstreamConfig, UpstreamEvent, UpstreamStats};
use crate::irc::Frame;
use crate::limits::Permit;

/// Runs one connection to its end.
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
    if let Err(stop) = events
        .emit(cancel, UpstreamEvent::Registered(registration))
        .await
    {
        return End::Stop(stop);
    }
    drive(link, events, cancel, commands, permit).await
}

/// What woke the connection up.
enum Step {
    Frame(Option<io::Result<Frame>>),
    Command(Option<UpstreamCommand>),
    Timer(Timer),
}

/// The steady state: frames first, then the actor's commands, then timers. A park
/// takes the connection's `permit` with the parts (and names its slot in the state).
pub(super) async fn drive(
    mut link: Link,
    events: &Events,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    permit: &mut Option<Permit>,
) -> End {
    let mut commands_open = true;
    loop {
        let listening = commands_open && !link.quitting();
        let step = tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Stop(Stop::Cancelled),
            step = poll_fn(|cx| {
                if let Poll::Ready(frame) = link.poll_read(cx) {
                    return Poll::Ready(Step::Frame(frame));
                }
                if listening {
                    if let Poll::Ready(cmd) = commands.poll_recv(cx) {
                        return Poll::Ready(Step::Command(cmd));
                    }
                }
                link.poll_timer(cx).map(Step::Timer)
            }) => step,
        };
        let done = match step {
            Step::Frame(frame) => {
                let read_at = std::time::Instant::now();
                // Bound first: a future in a `match` scrutinee would be kept (and
                // take room in this one) while the event is sent.
                let line = link.on_frame(frame).await;
                match line {
                    Ok(Some(msg)) => events
                        .emit(cancel, UpstreamEvent::Message(Box::new(msg), read_at))
                        .await
                        .map_err(End::Stop),
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                }
            }
            Step::Command(None) => {
                commands_open = false;
                Ok(())
            }
            Step::Command(Some(UpstreamCommand::Quit(reason))) => link.quit(*reason).await,
            Step::Command(Some(UpstreamCommand::Park(reply))) => match link.parkable() {
                // The barrier: nothing more is read; the task ends with no event.
                Ok(()) => {
                    let parked = link.park().map(|mut p| {
                        if let Some(held) = permit.take() {
                            p.state.limits_key = Some(held.key().to_owned());
                            p.state.source_ip = held.source();
                            p.permit = Some(held);
                        }
                        p
                    });
                    let done = parked.is_ok();
                    let _ = reply.send(parked);
                    if done {
                        return End::Parked;
                    }
                    return End::Stop(Stop::Cancelled);
                }
                Err(why) => {
                    let _ = reply.send(Err(why));
                    Ok(())
                }
            },
            Step::Command(Some(UpstreamCommand::Send(m))) => {
                link.send(*m);
                Ok(())
            }
            Step::Timer(timer) => link.on_timer(timer).await,
        };
        if let Err(end) = done {
            return end;
        }
    }
}
