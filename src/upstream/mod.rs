//! Upstream: one connection from a user to one IRC network.
//!
//! An upstream task dials (TCP or TLS, from an optional source address),
//! registers (CAP 302, SASL, NICK/USER with fallback), then hands the registered
//! connection to the user actor as a [`LiveLink`] ([`UpstreamEvent::Linked`]) and
//! waits. The actor drives the link in its own loop (see `live`): it reads the
//! lines, answers PINGs, sends our own PINGs to detect a dead server, and writes its
//! lines paced by flood control — so a line crosses no task boundary on its way from
//! the socket to the actor. When the connection ends the actor hands the end back
//! ([`UpstreamHandle::link_ended`]) and the task reconnects with jittered
//! exponential backoff unless the failure is permanent (bad SASL password, ban):
//! then it reports that and stops.
//!
//! Before every dial the task waits in the node's [`Limiter`] (when it has one) for a
//! session slot and a connect token on one (network, source IP), binds the source IP
//! the limiter chose, holds the permit while the connection lives, and reports
//! "throttled" / "too many connections" rejections back to it. A connection resumed
//! from parked parts ([`resume`]) skips the wait: it keeps the permit it held, or its
//! slot is adopted ([`Limiter::adopt`]), and holds that permit the same way.
//!
//! The task owns no session state: channels, members and nick live in the
//! user actor, which rejoins channels when it sees `Registered`.
//!
//! One connection in files: `connect` dials, reports `Registering` once the socket
//! is up, and registers (with `register`'s state machine), yielding a `Registered`
//! connection; `link` is its steady
//! state as a struct (`Link`: poll for a frame or a timer, handle it; send, quit);
//! `live` is that link as its owner drives it (`LiveLink`, with the limiter's permit;
//! `Driven` for callers without a loop of their own); `conn` is the task's part of
//! one connection (connect, hand the link over, wait for it back); `wire` is the
//! socket both phases share (reading with PINGs answered, bounded writes, the
//! keepalive).

mod backoff;
mod classify;
mod conn;
mod connect;
pub(crate) mod dial;
mod flood;
mod link;
mod live;
mod outgoing;
mod park;
mod register;
#[cfg(test)]
mod tests;
mod tls;
mod wire;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::irc::{ISupport, Message};
use crate::limits::{Limiter, Permit, Target, Ticket};
use crate::store::{NetworkId, Sasl, TlsVerify};

pub use classify::{classify_text, Kind};
pub use live::{Driven, Line, LinkEnded, LinkStep, LiveLink, Seen};
pub use park::{NotParked, ParkedUpstream, ResumeError, UpstreamPark, PARK_VERSION};
pub(crate) use register::with_host;
pub use tls::fingerprint;

/// Everything needed to connect one user to one network.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub network_id: NetworkId,
    /// `host:port`.
    pub addr: String,
    pub tls: bool,
    pub tls_verify: TlsVerify,
    /// Local address to bind before connecting, so networks see our egress IP.
    pub source_ip: Option<IpAddr>,
    pub nick: String,
    pub username: String,
    pub realname: String,
    pub sasl: Option<Sasl>,
    /// Capabilities to request when offered (shared: the same list for every
    /// connection unless changed).
    pub wanted_caps: Arc<[String]>,
    /// Silence after which we send a PING.
    pub ping_interval: Duration,
    /// How long we wait for any data after our PING before declaring the server dead.
    pub ping_timeout: Duration,
    /// Deadline for the whole registration (connect to end of MOTD).
    pub register_timeout: Duration,
    /// How long the TLS handshake may take (within `register_timeout`): TLS to a
    /// plaintext port hangs, and should fail fast with a reason.
    pub tls_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Flood control: lines per second after `flood_burst` lines. With a limiter,
    /// the permit's rate (the network's configured one, or the node default) wins.
    pub flood_rate: f64,
    pub flood_burst: u32,
    /// The node's limiter: every dial waits there for a slot and a connect token.
    /// `None` dials at once from `source_ip` (tests and embedding).
    pub limiter: Option<Arc<Limiter>>,
    /// Permits reserved ahead for a migration's adopt, by network: a connect finds
    /// its slot and token already taken here instead of queueing (so a moved user
    /// never waits disconnected for a token).
    pub reserved: Option<ReservedPermits>,
    /// Source addresses the limiter may choose from; `source_ip` is preferred on a
    /// tie. Empty: only `source_ip` (or no binding).
    pub source_ips: Vec<IpAddr>,
    /// The user's name for this network (for the limiter's key rule).
    pub network_name: String,
    /// Who connects (`user/network`), for logs and the limiter's grant log.
    pub label: String,
    /// Counters to add to; a node passes one set for all its connections so
    /// `/metrics` shows node-wide totals. A fresh set when `None`.
    pub stats: Option<Arc<UpstreamStats>>,
    /// The node's ident table and this user's ident name, when the node answers
    /// ident queries (`[ident] listen`).
    pub ident: Option<crate::ident::IdentTag>,
}

/// Permits a migration reserved on this node, by network (see `migrate::handoff`).
pub type ReservedPermits = Arc<std::sync::Mutex<std::collections::HashMap<NetworkId, Permit>>>;

fn take_reserved(cfg: &UpstreamConfig) -> Option<Permit> {
    cfg.reserved
        .as_ref()
        .and_then(|r| r.lock().unwrap().remove(&cfg.network_id))
}

/// The capabilities Ferry asks for when a server offers them.
pub const WANTED_CAPS: &[&str] = &[
    "server-time",
    "message-tags",
    "batch",
    "away-notify",
    "account-notify",
    "account-tag",
    "extended-join",
    "multi-prefix",
    "chghost",
    "setname",
    "invite-notify",
    "sasl",
    "labeled-response",
    "echo-message",
    "cap-notify",
    "draft/chathistory",
    "chathistory",
    // Gap fills get the window's JOIN/PART/QUIT/NICK as themselves; without it Ergo
    // replays them as PRIVMSGs from HistServ (see `user::actor::gap`).
    "draft/event-playback",
];

static DEFAULT_CAPS: std::sync::LazyLock<Arc<[String]>> =
    std::sync::LazyLock::new(|| WANTED_CAPS.iter().map(|c| c.to_string()).collect());

impl UpstreamConfig {
    /// Defaults for everything but where to connect and who to be.
    pub fn new(network_id: NetworkId, addr: &str, nick: &str) -> UpstreamConfig {
        UpstreamConfig {
            network_id,
            addr: addr.to_owned(),
            tls: false,
            tls_verify: TlsVerify::Verify,
            source_ip: None,
            nick: nick.to_owned(),
            username: nick.to_owned(),
            realname: nick.to_owned(),
            sasl: None,
            wanted_caps: DEFAULT_CAPS.clone(),
            ping_interval: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(30),
            register_timeout: Duration::from_secs(60),
            tls_timeout: dial::TLS_TIMEOUT,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            // A burst of 10 lines, then one line a second (issue 18, finding 4).
            // soju sends a burst of 10 then one line per 2 s, ZNC a burst of 4
            // then one line a second; ircds penalise sustained rates, not short
            // bursts (solanum and InspIRCd allow a burst of about 10 lines before
            // fake lag). A 10-line paste and a client's join sync (MODE, WHO per
            // channel, which also go ahead of queued chat: `link::jumps_chat`)
            // go out at once; a long paste settles to 1 line/s, which no large
            // network floods off. `[upstream]` and `ferry limits` change it.
            flood_rate: 1.0,
            flood_burst: 10,
            limiter: None,
            reserved: None,
            source_ips: Vec::new(),
            network_name: String::new(),
            label: String::new(),
            stats: None,
            ident: None,
        }
    }
}

/// What the server told us during registration.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The nick the server accepted (may be a fallback).
    pub nick: Vec<u8>,
    pub isupport: ISupport,
    /// Capabilities the server acknowledged.
    pub caps: BTreeSet<String>,
    /// `004` parameters: server name and version, for relaying to clients.
    pub server_name: Vec<u8>,
    /// Our user modes as the server set them during registration (`221` or a
    /// `MODE` on our nick), without `+`. Not `004`'s list of *available* modes.
    pub user_modes: Vec<u8>,
    /// Our `user@host` as the server sees it, from the `001` text when it ends
    /// with `nick!user@host` (InspIRCd and ngircd do), or a `396`.
    pub userhost: Option<Vec<u8>>,
    /// The server's message of the day (`372` texts); `None` when it had none (`422`).
    pub motd: Option<Vec<Bytes>>,
    /// True when SASL succeeded; the account name if the server said it (900).
    pub account: Option<Vec<u8>>,
}

/// Why a connection ended, and whether we try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reconnecting after this delay.
    After(Duration),
    /// A permanent failure (bad password, ban, SASL required): the task stops.
    Never,
}

/// Sent by an upstream task to its user actor, in order.
///
/// Payloads are boxed: every user actor's event queue allocates its first block of
/// slots up front, so the size of this type is paid per user even when idle.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// Dialling; `attempt` counts from 1 since the last successful registration.
    Connecting { attempt: u32 },
    /// The socket is up (TCP, and TLS when configured) and registration has
    /// begun: CAP negotiation, SASL, NICK/USER, until `001` and the MOTD.
    Registering { attempt: u32 },
    /// The registered connection, for the actor to drive (see `live`); sent just
    /// before `Registered`, so lines the actor sends on `Registered` (its rejoins)
    /// go out on it. Its lines never come through this queue.
    Linked(Box<LiveLink>),
    /// Registration finished (after end of MOTD or its absence).
    Registered(Box<Registration>),
    /// The connection is gone; `reason` is for people (logs, clients).
    Disconnected { reason: String, retry: Retry },
}

/// Sent by the user actor to its upstream task. The line is boxed for the same
/// reason as [`UpstreamEvent`]'s payloads.
#[derive(Debug)]
pub enum UpstreamCommand {
    /// Send a line while the task holds the connection (registering): dropped — the
    /// actor sends on its [`LiveLink`] once registered.
    Send(Box<Message>),
    /// Send `QUIT :reason`, wait briefly for the server to close, and stop for good.
    /// (Boxed: three variants of one pointer each keep the queue's items small.)
    Quit(Box<Bytes>),
    /// Stop at the barrier and hand the connection's parts back (see `park`); the
    /// task then ends without an event. Refused (and the connection kept) for TLS or
    /// a connection not registered. (A registered connection is parked by its
    /// owner: [`LiveLink::park`].)
    Park(tokio::sync::oneshot::Sender<Result<ParkedUpstream, NotParked>>),
    /// The link handed over has ended (or was parked, or quit): report it and
    /// reconnect, or end.
    LinkEnded(Box<LinkEnded>),
}

/// Refuses a park asked of a connection that is not registered.
fn not_registered(reply: tokio::sync::oneshot::Sender<Result<ParkedUpstream, NotParked>>) {
    let _ = reply.send(Err(NotParked::NotRegistered));
}

/// The actor's handle on an upstream task. Dropping it does not stop the
/// task: cancel its token or send `Quit`.
pub struct UpstreamHandle {
    pub network_id: NetworkId,
    pub commands: mpsc::Sender<UpstreamCommand>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    /// Counters for metrics and tests.
    pub stats: Arc<UpstreamStats>,
}

/// Counters of one upstream task, over all its connections (a node shares one set
/// between all its upstream tasks, registered in `services::metrics`).
#[derive(Clone, Debug)]
pub struct UpstreamStats {
    /// Lines read from the server (parsable or not, not counting overlong ones).
    pub lines_in: Counter,
    /// Lines written to the server.
    pub lines_out: Counter,
    /// Lines read in one task and handled in another. 0 by design: the user actor
    /// reads its links itself (one hop from the socket to a client); a test holds it.
    pub lines_handed_over: Counter,
    /// Lines that were not IRC messages, skipped.
    pub parse_errors: Counter,
    /// Lines longer than the codec's limit, skipped.
    pub overlong: Counter,
    /// Dials after the first one.
    pub reconnects: Counter,
    /// Connections the server ended as "throttled / too fast".
    pub throttled: Counter,
    /// Connections the server refused for lack of a slot on our address.
    pub too_many_connections: Counter,
    /// Seconds from dialling to registered (after the limiter's wait).
    pub connect_seconds: Histogram,
}

impl Default for UpstreamStats {
    fn default() -> UpstreamStats {
        UpstreamStats {
            lines_in: Counter::default(),
            lines_out: Counter::default(),
            lines_handed_over: Counter::default(),
            parse_errors: Counter::default(),
            overlong: Counter::default(),
            reconnects: Counter::default(),
            throttled: Counter::default(),
            too_many_connections: Counter::default(),
            // 10 ms to about 80 s.
            connect_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }
    }
}

impl UpstreamStats {
    fn bump(counter: &Counter) {
        counter.inc();
    }

    /// A counter's current value.
    pub fn get(counter: &Counter) -> u64 {
        counter.get()
    }
}

/// Starts an upstream task. Events go to `events` tagged with the network id.
/// The task ends when `cancel` fires (closing the socket without QUIT), after
/// a `Quit` command, or after a permanent failure.
pub fn spawn(
    cfg: UpstreamConfig,
    events: mpsc::Sender<(NetworkId, UpstreamEvent)>,
    cancel: CancellationToken,
) -> UpstreamHandle {
    let (commands, commands_rx) = mpsc::channel(256);
    let stats = cfg.stats.clone().unwrap_or_default();
    let network_id = cfg.network_id;
    // The first ticket is taken now, not when the task first runs, so upstreams
    // started in order (a restart, most recently active first) queue in that order.
    let has_reserved = cfg
        .reserved
        .as_ref()
        .is_some_and(|r| r.lock().unwrap().contains_key(&cfg.network_id));
    let ticket = if has_reserved {
        None
    } else {
        cfg.limiter.as_ref().map(|l| l.enqueue(&target(&cfg)))
    };
    let task = tokio::spawn(run(
        cfg,
        ticket,
        Events {
            tx: events,
            network_id,
        },
        cancel.clone(),
        commands_rx,
        stats.clone(),
        false,
    ));
    UpstreamHandle {
        network_id,
        commands,
        cancel,
        task,
        stats,
    }
}

/// Starts an upstream task on a parked connection (see `park`): no dial, no
/// registration, no event — the connection is registered already, and the actor
/// knows it. The link is the caller's to drive at once; when it ends and is handed
/// back, the task reconnects as [`spawn`]'s does.
///
/// # Errors
/// The parked state is of another version, or the socket cannot be used.
pub fn resume(
    cfg: UpstreamConfig,
    parked: ParkedUpstream,
    events: mpsc::Sender<(NetworkId, UpstreamEvent)>,
    cancel: CancellationToken,
) -> Result<(UpstreamHandle, LiveLink), ResumeError> {
    let ParkedUpstream {
        state,
        socket,
        permit,
    } = parked;
    if state.version != PARK_VERSION {
        return Err(ResumeError::Version(state.version));
    }
    socket.set_nonblocking(true)?;
    // The connection's session slot: the permit it held when it stays in this
    // process, else the slot adopted on this node's limiter (no wait: it is up).
    let permit = permit.or_else(|| {
        let limiter = cfg.limiter.as_ref()?;
        let (key, source) = slot_of(&cfg, &state, &socket, limiter);
        Some(limiter.adopt(&key, source, &cfg.label))
    });
    let socket = crate::ident::track(cfg.ident.as_ref(), tokio::net::TcpStream::from_std(socket)?);
    let transport: Box<dyn dial::Transport> = if state.ktls {
        // Nothing drained into the stream: what rustls held is in `unread`.
        Box::new(dial::KtlsTransport::new(socket, None))
    } else {
        Box::new(socket)
    };
    let (commands, commands_rx) = mpsc::channel(256);
    let stats = cfg.stats.clone().unwrap_or_default();
    let network_id = cfg.network_id;
    // Flood control from the permit, as for a dialled connection.
    let link = match &permit {
        Some(p) => {
            let mut c = cfg.clone();
            c.flood_rate = p.messages_per_second;
            c.flood_burst = p.message_burst;
            link::Link::resume(state, transport, &c, &stats)
        }
        None => link::Link::resume(state, transport, &cfg, &stats),
    };
    info!(network = network_id, addr = %cfg.addr, key = permit.as_ref().map(|p| p.key()),
          source = ?permit.as_ref().and_then(Permit::source), "upstream resumed from parked parts");
    let task = tokio::spawn(run(
        cfg,
        None,
        Events {
            tx: events,
            network_id,
        },
        cancel.clone(),
        commands_rx,
        stats.clone(),
        true,
    ));
    let handle = UpstreamHandle {
        network_id,
        commands,
        cancel,
        task,
        stats,
    };
    Ok((handle, LiveLink::new(link, permit)))
}

/// The limiter's (key, source address) a parked connection counts under: as carried,
/// or — parked by a node without a limiter, or by a Ferry that did not carry it —
/// worked out as a connect would have: the key of the network's address and name, and
/// the socket's local address when it is one the limiter could have chosen (else the
/// preferred one, which is what an unbound connect counts under).
fn slot_of(
    cfg: &UpstreamConfig,
    state: &UpstreamPark,
    socket: &std::net::TcpStream,
    limiter: &Limiter,
) -> (String, Option<IpAddr>) {
    if let Some(key) = &state.limits_key {
        return (key.clone(), state.source_ip);
    }
    let key = limiter.key_for(&cfg.addr, &cfg.network_name);
    let local = socket.local_addr().ok().map(|a| a.ip());
    let source = if cfg.source_ips.is_empty() {
        cfg.source_ip
    } else {
        local
            .filter(|ip| cfg.source_ips.contains(ip))
            .or(cfg.source_ip)
    };
    (key, source)
}

/// Why the task must stop sending events.
#[derive(Debug)]
enum Stop {
    Cancelled,
    EventsClosed,
}

/// The sending side of the event channel, tagging each event.
struct Events {
    tx: mpsc::Sender<(NetworkId, UpstreamEvent)>,
    network_id: NetworkId,
}

impl Events {
    /// Sends one event, waiting for room unless cancelled.
    async fn emit(&self, cancel: &CancellationToken, ev: UpstreamEvent) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Stop::Cancelled),
            r = self.tx.send((self.network_id, ev)) => r.map_err(|_| Stop::EventsClosed),
        }
    }

    /// The last event, best effort: never waits.
    fn last(&self, reason: &str) {
        let _ = self.tx.try_send((
            self.network_id,
            UpstreamEvent::Disconnected {
                reason: reason.to_owned(),
                retry: Retry::Never,
            },
        ));
    }
}

/// How one connection ended.
#[derive(Debug)]
enum End {
    Stop(Stop),
    /// A `Quit` command was carried out.
    Quit,
    /// Parked: the parts went to whoever asked; nothing more is said.
    Parked,
    Failed {
        failure: classify::Failure,
        /// How long the connection had been registered, if it got that far.
        registered_for: Option<Duration>,
    },
}

fn target(cfg: &UpstreamConfig) -> Target {
    Target {
        addr: cfg.addr.clone(),
        network_name: cfg.network_name.clone(),
        label: cfg.label.clone(),
    }
}

/// Waits for the limiter's permit (none without a limiter). Lines sent meanwhile
/// are dropped; `Quit` and cancellation end the wait (and leave the queue).
async fn admit(
    cfg: &UpstreamConfig,
    ticket: Option<Ticket>,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
) -> Result<Option<Permit>, End> {
    let Some(limiter) = &cfg.limiter else {
        return Ok(None);
    };
    if let Some(p) = take_reserved(cfg) {
        tracing::debug!(network = cfg.network_id, source = ?p.source(), "limiter: using the migration's reserved permit");
        return Ok(Some(p));
    }
    let ticket = ticket.unwrap_or_else(|| limiter.enqueue(&target(cfg)));
    let key = ticket.key().to_owned();
    let waited = tokio::time::Instant::now();
    let acquiring = ticket.acquire(cfg.source_ip, &cfg.source_ips);
    tokio::pin!(acquiring);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(End::Stop(Stop::Cancelled)),
            permit = &mut acquiring => {
                tracing::debug!(network = cfg.network_id, key, source = ?permit.source(),
                    wait_ms = waited.elapsed().as_millis() as u64, "limiter: connect granted");
                return Ok(Some(permit));
            }
            cmd = commands.recv(), if open => match cmd {
                Some(UpstreamCommand::Quit(_)) => return Err(End::Quit),
                Some(UpstreamCommand::Send(m)) => {
                    tracing::debug!(command = %m.command, "waiting for the limiter: dropping line");
                }
                Some(UpstreamCommand::Park(reply)) => not_registered(reply),
                // No link is out: nothing to take back.
                Some(UpstreamCommand::LinkEnded(_)) => {}
                None => open = false,
            },
        }
    }
}

/// The task: connect, hand the connection over and wait for its end, back off,
/// repeat. `resumed`: the first connection is a parked one, already handed over.
async fn run(
    cfg: UpstreamConfig,
    mut ticket: Option<Ticket>,
    events: Events,
    cancel: CancellationToken,
    mut commands: mpsc::Receiver<UpstreamCommand>,
    stats: Arc<UpstreamStats>,
    mut resumed: bool,
) {
    let network = cfg.network_id;
    let mut backoff = backoff::Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut attempt = 0u32;
    let mut dials = 0u64;
    loop {
        attempt += 1;
        dials += 1;
        if dials > 1 {
            UpstreamStats::bump(&stats.reconnects);
        }
        // A resumed connection is registered already: no event, no limiter wait (its
        // slot was adopted, or its permit kept, by `resume`, and went with the link).
        let resumed_link = std::mem::take(&mut resumed);
        let (resumed_link, mut permit) = match resumed_link {
            true => (true, None),
            false => {
                if let Err(stop) = events
                    .emit(&cancel, UpstreamEvent::Connecting { attempt })
                    .await
                {
                    return finish(&events, stop);
                }
                match admit(&cfg, ticket.take(), &cancel, &mut commands).await {
                    Ok(p) => (false, p),
                    Err(End::Stop(stop)) => return finish(&events, stop),
                    Err(_) => {
                        events.last("quit");
                        return;
                    }
                }
            }
        };
        // This connection's settings: the limiter decides the source address and
        // the flood rate.
        // (Boxed: the task's future keeps room for it while the connection lives.)
        let conn_cfg;
        let this = match &permit {
            Some(p) => {
                let mut c = Box::new(cfg.clone());
                c.source_ip = p.source();
                c.flood_rate = p.messages_per_second;
                c.flood_burst = p.message_burst;
                conn_cfg = c;
                &*conn_cfg
            }
            None => &cfg,
        };
        let started = tokio::time::Instant::now();
        let end = match resumed_link {
            true => conn::held(&cancel, &mut commands, &mut permit).await,
            false => {
                conn::run(
                    this,
                    &events,
                    &cancel,
                    &mut commands,
                    &stats,
                    attempt,
                    &mut permit,
                )
                .await
            }
        };
        // The slot is free again once the connection is gone.
        if let (Some(p), End::Failed { failure, .. }) = (&permit, &end) {
            p.report(failure.kind);
        }
        drop(permit);
        let duration_ms = started.elapsed().as_millis() as u64;
        let (failure, registered_for) = match end {
            End::Stop(stop) => return finish(&events, stop),
            End::Parked => {
                info!(network, addr = %cfg.addr, "upstream parked");
                return;
            }
            End::Quit => {
                info!(network, addr = %cfg.addr, duration_ms, "upstream quit");
                events.last("quit");
                return;
            }
            End::Failed {
                failure,
                registered_for,
            } => (failure, registered_for),
        };
        if let Some(lasted) = registered_for {
            attempt = 0;
            if lasted >= backoff::STABLE_AFTER {
                backoff.reset();
            }
        }
        match failure.kind {
            Kind::Throttled => UpstreamStats::bump(&stats.throttled),
            Kind::TooManyConnections => UpstreamStats::bump(&stats.too_many_connections),
            Kind::Temporary | Kind::Permanent => {}
        }
        // With a limiter, "throttled" and "too many connections" hold back the
        // source address for everyone (and other addresses are tried), so this
        // user's own delay stays the ordinary one.
        let limited = cfg.limiter.is_some();
        let retry = match failure.kind {
            Kind::Permanent => Retry::Never,
            Kind::Temporary => Retry::After(backoff.next()),
            Kind::Throttled | Kind::TooManyConnections if limited => Retry::After(backoff.next()),
            Kind::Throttled => Retry::After(backoff.throttled()),
            Kind::TooManyConnections => Retry::After(backoff.too_many_connections()),
        };
        let retry_ms = match &retry {
            Retry::After(d) => Some(d.as_millis() as u64),
            Retry::Never => None,
        };
        warn!(
            network,
            addr = %cfg.addr,
            attempt,
            duration_ms,
            kind = ?failure.kind,
            retry_ms,
            reason = %failure.reason,
            "upstream disconnected"
        );
        let ev = UpstreamEvent::Disconnected {
            reason: failure.reason,
            retry: retry.clone(),
        };
        if let Err(stop) = events.emit(&cancel, ev).await {
            return finish(&events, stop);
        }
        let Retry::After(delay) = retry else {
            return;
        };
        if let Err(end) = wait(delay, &cancel, &mut commands).await {
            match end {
                End::Stop(stop) => return finish(&events, stop),
                _ => {
                    events.last("quit");
                    return;
                }
            }
        }
    }
}

/// Sleeps between connections. Lines sent meanwhile are dropped (the actor
/// knows we are disconnected); `Quit` ends the task.
async fn wait(
    delay: Duration,
    cancel: &CancellationToken,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
) -> Result<(), End> {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(End::Stop(Stop::Cancelled)),
            _ = &mut sleep => return Ok(()),
            cmd = commands.recv(), if open => match cmd {
                Some(UpstreamCommand::Quit(_)) => return Err(End::Quit),
                Some(UpstreamCommand::Send(m)) => {
                    tracing::debug!(command = %m.command, "upstream disconnected: dropping line");
                }
                Some(UpstreamCommand::Park(reply)) => not_registered(reply),
                // No link is out: nothing to take back.
                Some(UpstreamCommand::LinkEnded(_)) => {}
                None => open = false,
            },
        }
    }
}

fn finish(events: &Events, stop: Stop) {
    match stop {
        Stop::Cancelled => {
            info!(network = events.network_id, "upstream cancelled");
            events.last("cancelled");
        }
        Stop::EventsClosed => {
            info!(
                network = events.network_id,
                "upstream: the user actor is gone, stopping"
            );
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every queue allocates its first 32 slots up front, per user: keep them small.
    #[test]
    fn queue_items_stay_small() {
        assert!(std::mem::size_of::<(NetworkId, UpstreamEvent)>() <= 64);
        assert!(std::mem::size_of::<UpstreamCommand>() <= 32);
    }
}
