//! Dialling and registration: from an address to a [`Registered`] connection.
//!
//! PINGs are answered, our keepalive runs and commands are read at every stage:
//! lines the actor sends before registration ends are dropped (it rejoins and
//! resends once it sees `Registered`), a `Quit` sends QUIT and ends the attempt.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::classify::Failure;
use super::dial::{self, Transport};
use super::register::{Progress, Registrar};
use super::wire::{Inbound, Wire};
use super::{
    End, Events, Registration, Stop, UpstreamCommand, UpstreamConfig, UpstreamEvent, UpstreamStats,
};
use crate::irc::{Command, Frame, Message};

/// Without 376/422, registration ends this long after the last line that followed 001.
const QUIET_AFTER_WELCOME: Duration = Duration::from_secs(2);
/// How long we wait for the server to close after our QUIT.
pub(super) const QUIT_GRACE: Duration = Duration::from_secs(3);

/// A registered connection: what dialling and registration produce, and all the
/// steady state needs.
pub(super) struct Registered {
    /// The socket: its two halves, the bytes read after the line that ended
    /// registration and not yet parsed, and the keepalive as registration left it.
    pub(super) wire: Wire,
    /// What the server told us: the nick it accepted, acknowledged capabilities,
    /// ISUPPORT, server name and user modes, the SASL account.
    pub(super) registration: Box<Registration>,
    /// When registration ended.
    pub(super) at: Instant,
}

/// Dials and registers within `cfg.register_timeout`, telling the actor
/// (`Registering`) when the socket is up and registration starts.
///
/// # Errors
/// How the attempt ended instead: cancelled, quit, or failed (never registered).
pub(super) async fn connect(
    cfg: &UpstreamConfig,
    events: &Events,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    stats: &Arc<UpstreamStats>,
    attempt: u32,
) -> Result<Registered, End> {
    let deadline = Instant::now() + cfg.register_timeout;
    let transport = dial_until(cfg, cancel, commands, deadline).await?;
    events
        .emit(cancel, UpstreamEvent::Registering { attempt })
        .await
        .map_err(End::Stop)?;
    register(
        Wire::new(transport, cfg, stats),
        cfg,
        cancel,
        commands,
        deadline,
    )
    .await
}

fn failed(failure: Failure) -> End {
    End::Failed {
        failure,
        registered_for: None,
    }
}

async fn dial_until(
    cfg: &UpstreamConfig,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    deadline: Instant,
) -> Result<Box<dyn Transport>, End> {
    let network = cfg.network_id;
    // Boxed: a TLS handshake's future is large, and a task's future is as large as
    // its largest state for as long as the connection lives.
    let mut dialing = Box::pin(tokio::time::timeout_at(
        deadline,
        dial::dial_with(
            &cfg.addr,
            cfg.source_ip,
            cfg.tls,
            &cfg.tls_verify,
            cfg.sasl.as_ref(),
            cfg.tls_timeout,
            cfg.ident.as_ref(),
        ),
    ));
    let dialed = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(End::Stop(Stop::Cancelled)),
            r = &mut dialing => break r,
            cmd = commands.recv() => match cmd {
                Some(UpstreamCommand::Quit(_)) => return Err(End::Quit),
                Some(UpstreamCommand::Send(m)) => debug!(network, command = %m.command, "not connected: dropping line"),
                Some(UpstreamCommand::Park(reply)) => { let _ = reply.send(Err(super::NotParked::NotRegistered)); }
                Some(UpstreamCommand::LinkEnded(_)) => {}
                // The handle is gone; the task goes on until cancelled.
                None => break (&mut dialing).await,
            },
        }
    };
    match dialed {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(f)) => Err(failed(f)),
        Err(_) => Err(failed(Failure::temporary("timed out connecting"))),
    }
}

/// What woke registration up.
enum Step {
    Frame(Option<io::Result<Frame>>),
    Command(Option<UpstreamCommand>),
    Keepalive,
    /// The deadline, or a quiet server after 001.
    RegisterTimer,
    /// The server did not close within [`QUIT_GRACE`] of our QUIT.
    QuitGrace,
}

/// Runs registration on a fresh socket (see [`Registrar`]).
async fn register(
    mut wire: Wire,
    cfg: &UpstreamConfig,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    deadline: Instant,
) -> Result<Registered, End> {
    let network = cfg.network_id;
    let (registrar, opening) = Registrar::start(
        &cfg.nick,
        &cfg.username,
        &cfg.realname,
        &cfg.wanted_caps,
        cfg.sasl.clone(),
    );
    // Boxed: what it collects (offered caps, ISUPPORT) goes to the actor in the
    // `Registration`, and the task's future should not keep room for it.
    let mut registrar = Box::new(registrar);
    for m in &opening {
        wire.write(m).await.map_err(failed)?;
    }
    // Set once 001 arrived: a server that goes quiet then has finished.
    let mut quiet: Option<Instant> = None;
    // Set once we sent QUIT: from then on we only wait for the server to close.
    let mut quit_at: Option<Instant> = None;
    let mut commands_open = true;
    loop {
        let register_at = quiet.map_or(deadline, |q| q.min(deadline));
        let listening = commands_open && quit_at.is_none();
        let step = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(End::Stop(Stop::Cancelled)),
            step = poll_fn(|cx| {
                if let Poll::Ready(frame) = wire.poll_frame(cx) {
                    return Poll::Ready(Step::Frame(frame));
                }
                if listening {
                    if let Poll::Ready(cmd) = commands.poll_recv(cx) {
                        return Poll::Ready(Step::Command(cmd));
                    }
                }
                wire.keepalive.poll(cx).map(|()| Step::Keepalive)
            }) => step,
            _ = sleep_until(register_at) => Step::RegisterTimer,
            _ = sleep_until(quit_at.unwrap_or(deadline)), if quit_at.is_some() => Step::QuitGrace,
        };
        match step {
            Step::Frame(frame) => {
                let msg = match wire.inbound(frame).await.map_err(failed)? {
                    Inbound::Message(msg) => msg,
                    Inbound::Handled => continue,
                    Inbound::Closed(_) if quit_at.is_some() => return Err(End::Quit),
                    Inbound::Closed(f) => return Err(failed(f)),
                };
                if quit_at.is_some() {
                    continue;
                }
                if registrar.welcomed() {
                    quiet = Some(Instant::now() + QUIET_AFTER_WELCOME);
                }
                let mut out = Vec::new();
                let progress = registrar.handle(&msg, &mut out);
                for m in &out {
                    wire.write(m).await.map_err(failed)?;
                }
                match progress {
                    Progress::Continue => {
                        if registrar.welcomed() && quiet.is_none() {
                            quiet = Some(Instant::now() + QUIET_AFTER_WELCOME);
                        }
                    }
                    Progress::Failed(f) => return Err(failed(f)),
                    Progress::Done(registration) => {
                        return Ok(Registered {
                            wire,
                            registration,
                            at: Instant::now(),
                        })
                    }
                }
            }
            Step::Command(None) => commands_open = false,
            Step::Command(Some(UpstreamCommand::Quit(reason))) => {
                if wire.write(&quit(*reason)).await.is_err() {
                    return Err(End::Quit);
                }
                quit_at = Some(Instant::now() + QUIT_GRACE);
            }
            Step::Command(Some(UpstreamCommand::Send(m))) => {
                debug!(network, command = %m.command, "not registered yet: dropping line");
            }
            Step::Command(Some(UpstreamCommand::Park(reply))) => {
                let _ = reply.send(Err(super::NotParked::NotRegistered));
            }
            Step::Command(Some(UpstreamCommand::LinkEnded(_))) => {}
            Step::Keepalive => wire.keepalive_fired().await.map_err(failed)?,
            Step::RegisterTimer if quit_at.is_some() => return Err(End::Quit),
            Step::RegisterTimer => {
                // Welcomed but no MOTD numerics: the server has gone quiet.
                if registrar.welcomed() && Instant::now() < deadline {
                    return Ok(Registered {
                        wire,
                        registration: Box::new(registrar.finish()),
                        at: Instant::now(),
                    });
                }
                return Err(failed(Failure::temporary(format!(
                    "registration did not finish within {} s",
                    cfg.register_timeout.as_secs_f32()
                ))));
            }
            Step::QuitGrace => return Err(End::Quit),
        }
    }
}

/// `QUIT :reason`
pub(super) fn quit(reason: Bytes) -> Message {
    Message::new(Command::Quit, [reason])
}
