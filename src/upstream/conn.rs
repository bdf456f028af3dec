//! One connection: dial, register, then relay lines both ways until it ends.
//!
//! Everything happens in one `select!` loop so that PINGs are answered, our
//! own keepalive runs and commands are read at every stage, registration
//! included.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::classify::Failure;
use super::dial::{self, Transport};
use super::flood::Bucket;
use super::register::{Progress, Registrar};
use super::{outgoing, End, Events, Stop, UpstreamCommand, UpstreamConfig, UpstreamEvent};
use super::{Registration, UpstreamStats};
use crate::irc::{Frame, Message};
use crate::lineio::{self, LineReader};

/// Without 376/422, registration ends this long after the last line that followed 001.
const QUIET_AFTER_WELCOME: Duration = Duration::from_secs(2);
/// How long we wait for the server to close after our QUIT.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Most lines kept waiting for flood control; older ones are dropped beyond it.
const MAX_QUEUE: usize = 1000;

struct Conn<'a> {
    stats: &'a Arc<UpstreamStats>,
    /// Reads lines from the server; writes go to the transport inside it.
    wire: LineReader<Box<dyn Transport>>,
    /// Bound on one write: a server that stops reading must not block us forever.
    write_timeout: Duration,
}

impl Conn<'_> {
    async fn write(&mut self, msg: &Message) -> Result<(), Failure> {
        let sent = lineio::write_line(self.wire.get_mut(), msg);
        match tokio::time::timeout(self.write_timeout, sent).await {
            Ok(Ok(())) => {
                UpstreamStats::bump(&self.stats.lines_out);
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::temporary(format!("write: {e}"))),
            Err(_) => Err(Failure::temporary(format!(
                "write stalled for {} s",
                self.write_timeout.as_secs()
            ))),
        }
    }
}

/// Runs one connection to its end.
pub(super) async fn run(
    cfg: &UpstreamConfig,
    events: &Events,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    stats: &Arc<UpstreamStats>,
    attempt: u32,
) -> End {
    let network = cfg.network_id;
    let started = Instant::now();
    let register_deadline = started + cfg.register_timeout;
    let failed = |failure: Failure, registered_at: Option<Instant>| End::Failed {
        failure,
        registered_for: registered_at.map(|t| t.elapsed()),
    };

    info!(network, addr = %cfg.addr, attempt, tls = cfg.tls, source = ?cfg.source_ip, "upstream connecting");
    // Boxed: a TLS handshake's future is large, and a task's future is as large as
    // its largest state for as long as the connection lives.
    let mut dialing = Box::pin(dial::dial(
        &cfg.addr,
        cfg.source_ip,
        cfg.tls,
        &cfg.tls_verify,
        cfg.sasl.as_ref(),
    ));
    let transport = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Stop(Stop::Cancelled),
            r = tokio::time::timeout_at(register_deadline, &mut dialing) => match r {
                Ok(Ok(t)) => break t,
                Ok(Err(f)) => return failed(f, None),
                Err(_) => return failed(Failure::temporary("timed out connecting"), None),
            },
            cmd = commands.recv() => match cmd {
                Some(UpstreamCommand::Quit(_)) => return End::Quit,
                Some(UpstreamCommand::Send(m)) => debug!(network, command = %m.command, "not connected: dropping line"),
                // The handle is gone; the task goes on until cancelled.
                None => {
                    match tokio::time::timeout_at(register_deadline, &mut dialing).await {
                        Ok(Ok(t)) => break t,
                        Ok(Err(f)) => return failed(f, None),
                        Err(_) => return failed(Failure::temporary("timed out connecting"), None),
                    }
                }
            },
        }
    };
    drop(dialing);

    let mut conn = Conn {
        stats,
        wire: LineReader::new(transport),
        write_timeout: cfg.ping_timeout.max(Duration::from_secs(5)),
    };
    let (registrar, opening) = Registrar::start(
        &cfg.nick,
        &cfg.username,
        &cfg.realname,
        &cfg.wanted_caps,
        cfg.sasl.clone(),
    );
    // `Some` while registering. Dropped once registered: what it collected
    // (offered caps, ISUPPORT) went to the actor in the `Registration`.
    let mut registrar = Some(Box::new(registrar));
    for m in &opening {
        if let Err(f) = conn.write(m).await {
            return failed(f, None);
        }
    }

    let mut tags_allowed = false;
    let mut registered_at: Option<Instant> = None;
    let mut last_rx = Instant::now();
    let mut quiet_deadline: Option<Instant> = None;
    let mut ping_sent: Option<Instant> = None;
    let mut ping_seq = 0u64;
    let mut ping_token = Bytes::new();
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut bucket = Bucket::new(cfg.flood_burst, cfg.flood_rate, Instant::now());
    let mut quit_deadline: Option<Instant> = None;
    let mut commands_open = true;
    // An ERROR line tells why the server is about to close.
    let mut server_error: Option<Failure> = None;
    let far = || Instant::now() + Duration::from_secs(86400 * 365);
    // The keepalive timer is re-armed lazily: data from the server only moves its
    // deadline later, so it stays where it is and, when it fires early, is set to the
    // real deadline then. Re-arming it for every line would cost a timer-wheel insert
    // and removal per line.
    let keepalive = sleep_until(last_rx + cfg.ping_interval);
    tokio::pin!(keepalive);

    loop {
        let registering = registrar.is_some();
        let register_at = if registering {
            quiet_deadline.map_or(register_deadline, |q| q.min(register_deadline))
        } else {
            far()
        };
        let flood_at = if !registering && !queue.is_empty() {
            Some(bucket.ready_at(Instant::now()))
        } else {
            None
        };

        tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Stop(Stop::Cancelled),
            frame = conn.wire.next_frame() => {
                let line = match frame {
                    None => {
                        if quit_deadline.is_some() {
                            return End::Quit;
                        }
                        let f = server_error.take().unwrap_or_else(|| Failure::temporary("connection closed by the server"));
                        return failed(f, registered_at);
                    }
                    Some(Err(e)) => {
                        if quit_deadline.is_some() {
                            return End::Quit;
                        }
                        let f = server_error.take().unwrap_or_else(|| Failure::temporary(format!("read: {e}")));
                        return failed(f, registered_at);
                    }
                    Some(Ok(Frame::Overlong { len })) => {
                        UpstreamStats::bump(&stats.overlong);
                        debug!(network, len, "upstream sent an overlong line, skipped");
                        last_rx = Instant::now();
                        if ping_sent.take().is_some() {
                            keepalive.as_mut().reset(last_rx + cfg.ping_interval);
                        }
                        continue;
                    }
                    Some(Ok(Frame::Line(line))) => line,
                };
                UpstreamStats::bump(&stats.lines_in);
                last_rx = Instant::now();
                if ping_sent.take().is_some() {
                    // Answered: next PING after a quiet `ping_interval` (which may be
                    // sooner than the PING's timeout).
                    keepalive.as_mut().reset(last_rx + cfg.ping_interval);
                }
                let msg = match Message::parse(line.clone()) {
                    Ok(m) => m,
                    Err(e) => {
                        UpstreamStats::bump(&stats.parse_errors);
                        debug!(network, error = %e, line = %crate::irc::decode(&line), "unparsable line from upstream, skipped");
                        continue;
                    }
                };
                match msg.command.as_str() {
                    "PING" => {
                        let pong = Message { tags: vec![], prefix: None, command: "PONG".into(), params: msg.params.clone() };
                        if let Err(f) = conn.write(&pong).await {
                            return failed(f, registered_at);
                        }
                        continue;
                    }
                    // Answers to our keepalive are ours alone.
                    "PONG" if !ping_token.is_empty() && msg.params.last() == Some(&ping_token) => continue,
                    "ERROR" => {
                        let text = msg.params.last().map(|p| &p[..]).unwrap_or_default();
                        server_error = Some(Failure::from_text(text));
                    }
                    _ => {}
                }
                if let Some(r) = registrar.as_mut() {
                    if r.welcomed() {
                        quiet_deadline = Some(Instant::now() + QUIET_AFTER_WELCOME);
                    }
                    let mut out = Vec::new();
                    let progress = r.handle(&msg, &mut out);
                    let welcomed = r.welcomed();
                    for m in &out {
                        if let Err(f) = conn.write(m).await {
                            return failed(f, None);
                        }
                    }
                    match progress {
                        Progress::Continue => {
                            if welcomed && quiet_deadline.is_none() {
                                quiet_deadline = Some(Instant::now() + QUIET_AFTER_WELCOME);
                            }
                        }
                        Progress::Failed(f) => return failed(f, None),
                        Progress::Done(reg) => {
                            registrar = None;
                            registered_at = Some(Instant::now());
                            tags_allowed = reg.caps.contains("message-tags");
                            if let Err(stop) = registered(events, cancel, cfg, attempt, started, reg).await {
                                return End::Stop(stop);
                            }
                        }
                    }
                    continue;
                }
                if let Err(stop) = events.emit(cancel, UpstreamEvent::Message(Box::new(msg))).await {
                    return End::Stop(stop);
                }
            }
            cmd = commands.recv(), if commands_open && quit_deadline.is_none() => match cmd {
                None => commands_open = false,
                Some(UpstreamCommand::Quit(reason)) => {
                    if !queue.is_empty() {
                        debug!(network, dropped = queue.len(), "quitting: dropping queued lines");
                        queue.clear();
                    }
                    let quit = Message::new("QUIT", [reason]);
                    if conn.write(&quit).await.is_err() {
                        return End::Quit;
                    }
                    quit_deadline = Some(Instant::now() + QUIT_GRACE);
                }
                Some(UpstreamCommand::Send(m)) => {
                    if registering {
                        debug!(network, command = %m.command, "not registered yet: dropping line");
                        continue;
                    }
                    match outgoing::fit(*m, tags_allowed) {
                        Some(m) => {
                            if queue.len() >= MAX_QUEUE {
                                queue.pop_front();
                                debug!(network, "flood queue full: dropped the oldest line");
                            }
                            queue.push_back(m);
                        }
                        None => debug!(network, "line cannot be made to fit 512 bytes, dropped"),
                    }
                }
            },
            _ = sleep_until(flood_at.unwrap_or_else(far)), if flood_at.is_some() => {
                if bucket.try_take(Instant::now()) {
                    if let Some(m) = queue.pop_front() {
                        if queue.is_empty() {
                            // Idle connections keep no queue memory.
                            queue = VecDeque::new();
                        }
                        if let Err(f) = conn.write(&m).await {
                            return failed(f, registered_at);
                        }
                    }
                }
            }
            () = &mut keepalive => {
                let due = match ping_sent {
                    Some(t) => t + cfg.ping_timeout,
                    None => last_rx + cfg.ping_interval,
                };
                if Instant::now() < due {
                    keepalive.as_mut().reset(due);
                    continue;
                }
                if ping_sent.is_some() {
                    let f = Failure::temporary(format!(
                        "no data from the server for {} s after our PING",
                        cfg.ping_timeout.as_secs_f32()
                    ));
                    return failed(f, registered_at);
                }
                ping_seq += 1;
                ping_token = Bytes::from(format!("ferry-{ping_seq}"));
                if let Err(f) = conn.write(&Message::new("PING", [ping_token.clone()])).await {
                    return failed(f, registered_at);
                }
                let now = Instant::now();
                ping_sent = Some(now);
                keepalive.as_mut().reset(now + cfg.ping_timeout);
            }
            _ = sleep_until(register_at), if registering => {
                let welcomed = registrar.as_ref().is_some_and(|r| r.welcomed());
                if let Some(mut r) = registrar.take().filter(|_| welcomed && Instant::now() < register_deadline) {
                    // Welcomed but no MOTD numerics: the server has gone quiet.
                    let reg = Box::new(r.finish());
                    registered_at = Some(Instant::now());
                    tags_allowed = reg.caps.contains("message-tags");
                    if let Err(stop) = registered(events, cancel, cfg, attempt, started, reg).await {
                        return End::Stop(stop);
                    }
                } else {
                    let f = Failure::temporary(format!(
                        "registration did not finish within {} s",
                        cfg.register_timeout.as_secs_f32()
                    ));
                    return failed(f, None);
                }
            }
            _ = sleep_until(quit_deadline.unwrap_or_else(far)), if quit_deadline.is_some() => {
                return End::Quit;
            }
        }
    }
}

async fn registered(
    events: &Events,
    cancel: &CancellationToken,
    cfg: &UpstreamConfig,
    attempt: u32,
    started: Instant,
    reg: Box<Registration>,
) -> Result<(), Stop> {
    info!(
        network = cfg.network_id,
        addr = %cfg.addr,
        attempt,
        duration_ms = started.elapsed().as_millis() as u64,
        nick = %crate::irc::decode(&reg.nick),
        caps = reg.caps.len(),
        "upstream registered"
    );
    events.emit(cancel, UpstreamEvent::Registered(reg)).await
}
