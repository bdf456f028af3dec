//! The user task: the loop that owns one user's networks, clients and ids.
//!
//! One task reads everything that concerns the user — requests and client lines
//! ([`Event`]), the lines of its networks' registered connections (each a
//! `upstream::LiveLink` the actor polls itself: a line from the socket is handled
//! here, one hop from an attached client), what the upstream tasks report while
//! they dial and register ([`UpstreamEvent`]), one timer for what is due later —
//! and hands each to the file that knows it:
//!
//! - `net`: one network as the actor holds it (state, upstream task, link, clients);
//! - `client`: lines from attached clients;
//! - `record`: lines from the server — state, storage (the one record builder),
//!   relay;
//! - `regain`: taking our configured nick back;
//! - `gap`: covering a disconnect window with history or markers;
//! - `away`: auto-away while no client is attached;
//! - `detach`: detached channels (logged, not relayed).

mod away;
mod bounds;
mod client;
mod detach;
mod fill;
mod gap;
mod net;
mod park;
mod record;
mod regain;
mod share;

pub use detach::DetachError;
pub use park::{
    ChannelPark, ClientPark, ClientParked, NetPark, ParkClients, ParkedUser, PendingLine, UserPark,
    UserResumeError, USER_PARK_VERSION,
};
pub use record::{display_text, stored_kind};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::irc;
use crate::store::{Network, NetworkId, Store, UserId, Writer};
use crate::upstream::{self, Retry, UpstreamEvent};

use super::metrics::ClientGauge;
use super::state::NetState;
use super::{
    Attach, Attached, ConnState, DownstreamId, Event, NetworkSnapshot, NetworkStatus, UserConfig,
    UserError, UserSnapshot, MOVING,
};
use net::{Client, Net};

/// How long a move waits for the user's IRC clients to save their backlog positions.
const CLIENTS_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
use record::Recorder;
use regain::Regain;

pub(super) struct Actor {
    pub id: UserId,
    pub name: Arc<str>,
    pub store: Store,
    pub writer: Writer,
    pub config: Arc<UserConfig>,
    pub events: mpsc::Receiver<Event>,
    pub up_tx: mpsc::Sender<(NetworkId, UpstreamEvent)>,
    pub up_rx: mpsc::Receiver<(NetworkId, UpstreamEvent)>,
    pub cancel: CancellationToken,
    /// The fence every write carries and the node's lease (see `cluster`).
    owner: super::Owned,
    /// Message ids: the newest assigned, and the records they go with.
    recorder: Recorder,
    next_client: DownstreamId,
    /// Boxed: a map with one entry still allocates several slots.
    nets: HashMap<NetworkId, Box<Net>>,
    /// The user's buffers, counted against `max_buffers_per_user`.
    bounds: bounds::Bounds,
    /// Whether the user is there (a client attached) or away (see `away`).
    away: away::AutoAway,
    /// Parked parts to resume from at start, instead of connecting those networks.
    parked: Option<ParkedUser>,
    /// Where the next poll of the links starts (see `net::poll_links`).
    link_turn: usize,
}

impl Actor {
    // Each argument is a distinct part of the actor's world; a builder would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: UserId,
        name: Arc<str>,
        store: Store,
        writer: Writer,
        config: Arc<UserConfig>,
        events: mpsc::Receiver<Event>,
        cancel: CancellationToken,
        owner: super::Owned,
    ) -> Actor {
        let (up_tx, up_rx) = mpsc::channel(1024);
        Actor {
            id,
            name,
            store,
            writer,
            events,
            up_tx,
            up_rx,
            cancel,
            recorder: Recorder::new(
                id,
                owner.fence.epoch,
                config.streams.as_ref().map(|s| s.clock().clone()),
            ),
            owner,
            next_client: 1,
            nets: HashMap::new(),
            bounds: bounds::Bounds::default(),
            away: away::AutoAway::new(config.away_delay),
            config,
            parked: None,
            link_turn: 0,
        }
    }

    /// Starts from a parked user's parts (see `park`) instead of connecting.
    ///
    /// # Errors
    /// The parts are of another version or user.
    pub(super) fn resume_from(&mut self, parked: ParkedUser) -> Result<(), UserResumeError> {
        park::check(&parked.state, self.id)?;
        self.parked = Some(parked);
        Ok(())
    }

    /// Loads the user's durable state and connects its networks (from parked parts:
    /// takes their connections over instead, and what the resumer read for it).
    async fn start(&mut self) -> anyhow::Result<()> {
        let mut parked = self.parked.take();
        let mut rows = parked.as_mut().and_then(|p| p.rows.take());
        // A user parked at the epoch it resumes at: nobody else wrote its lines or
        // reserved its ids meanwhile (both need another epoch), so the parked actor's
        // newest id is where this one numbers from; else the store says.
        let parked_seq = parked
            .as_ref()
            .filter(|p| p.state.epoch == Some(self.owner.fence.epoch))
            .map(|p| p.state.last_seq);
        // Ids from here on are above everything the user has (and the node's clock
        // is raised to it): a restart, an adoption, a move or an upgrade's resume.
        let base = match parked_seq {
            Some(seq) => seq,
            None => self.store.seq_base(self.id).await?,
        };
        self.recorder.observe(base);
        match rows.as_mut().map(|r| r.away.clone()) {
            Some(away) => self.away.settings = away,
            None => match self.store.away_settings(self.id).await {
                Ok(s) => self.away.settings = s,
                Err(e) => warn!(user = %self.name, error = %e, "could not read the away settings"),
            },
        }
        if let Some(push) = &self.config.push {
            push.reload(self.id).await;
        }
        if let Some(p) = &parked {
            self.recorder.observe(p.state.last_seq);
        }
        let networks = match rows.as_mut() {
            Some(r) => std::mem::take(&mut r.networks),
            None => self.store.networks(self.id).await?,
        };
        for network in networks {
            let id = network.id;
            let is_parked = parked.as_ref().is_some_and(|p| p.sockets.contains_key(&id));
            let buffers = rows
                .as_mut()
                .map(|r| r.buffers.remove(&id).unwrap_or_default());
            self.add_network_as(network, buffers, !is_parked).await?;
            // A session may have run before this actor (a restart, a failover, a
            // move): its window is looked up at the first registration, off the
            // start path (see `resumed_since`).
            if let Some(net) = self.nets.get_mut(&id) {
                net.resumed = true;
            }
        }
        if let Some(p) = parked.as_mut() {
            for net in std::mem::take(&mut p.state.networks) {
                if let Some(socket) = p.sockets.remove(&net.network_id) {
                    let permit = p.permits.remove(&net.network_id);
                    self.resume_network(net, socket, permit);
                }
            }
            self.attach_resumed(std::mem::take(&mut p.attach));
            let pending = std::mem::take(&mut p.state.pending);
            self.handle_pending(pending).await;
        }
        Ok(())
    }

    async fn add_network(&mut self, network: Network) -> anyhow::Result<()> {
        self.add_network_as(network, None, true).await
    }

    /// Adds a network with its `buffers` (read here when `None`); connects it when
    /// enabled and `connect` (not when its parked connection is to be resumed).
    async fn add_network_as(
        &mut self,
        network: Network,
        buffers: Option<Vec<crate::store::Buffer>>,
        connect: bool,
    ) -> anyhow::Result<()> {
        let buffers = match buffers {
            Some(b) => b,
            None => self.store.buffers(network.id).await?,
        };
        self.bounds
            .add_network(network.id, buffers.iter().map(|b| b.key.clone()).collect());
        let network_key: Arc<str> = Arc::from(network.addr.to_ascii_lowercase());
        let mut state = NetState::new(
            network.nick.as_bytes(),
            self.config.shared.clone(),
            network_key,
        );
        state.conn = ConnState::Stopped;
        let buffers_detached = buffers
            .iter()
            .filter(|b| b.joined && b.detached)
            .map(|b| {
                let d = detach::Detached {
                    reattach_on: b.reattach_on,
                    since: None,
                };
                (b.key.clone(), d)
            })
            .collect();
        let wanted = buffers
            .into_iter()
            .filter(|b| b.joined)
            .map(|b| (b.key, (b.name, b.chan_key)))
            .collect();
        let watch = (self.id, self.config.watchers.clone());
        let mut net = Net::new(network, state, wanted, &self.config.counters, watch);
        net.detached = buffers_detached;
        if net.config.enabled && connect {
            self.start_upstream(&mut net);
        }
        self.nets.insert(net.config.id, Box::new(net));
        Ok(())
    }

    fn start_upstream(&self, net: &mut Net) {
        let cfg = self.upstream_config(net);
        net.state.conn = ConnState::Connecting {
            attempt: 1,
            last_error: None,
        };
        net.conn_changed();
        net.upstream = Some(upstream::spawn(
            cfg,
            self.up_tx.clone(),
            self.cancel.child_token(),
        ));
    }

    /// How this user connects to a network.
    fn upstream_config(&self, net: &Net) -> upstream::UpstreamConfig {
        let n = &net.config;
        let mut cfg = upstream::UpstreamConfig::new(n.id, &n.addr, &n.nick);
        cfg.tls = n.tls;
        cfg.tls_verify = n.tls_verify.clone();
        cfg.username = n.username.clone().unwrap_or_else(|| self.name.to_string());
        cfg.realname = n.realname.clone().unwrap_or_else(|| n.nick.clone());
        cfg.sasl = n.sasl.clone();
        let pinned: Option<std::net::IpAddr> =
            n.source_ip.as_deref().and_then(|ip| ip.parse().ok());
        cfg.source_ip = pinned.or_else(|| self.config.source_ip(self.id));
        // A network pinned to one address uses only it; otherwise the limiter may
        // pick any of the node's addresses (this user's own one on a tie).
        cfg.source_ips = match pinned {
            Some(ip) => vec![ip],
            None => self.config.source_ips.clone(),
        };
        cfg.network_name = n.name.clone();
        cfg.label = format!("{}/{}", self.name, n.name);
        self.config.apply_upstream_defaults(&mut cfg);
        cfg.stats = Some(self.config.upstream_stats.clone());
        cfg.ident = self
            .config
            .idents
            .as_ref()
            .map(|idents| crate::ident::IdentTag {
                idents: idents.clone(),
                name: crate::ident::ident_name(&self.name).into(),
            });
        cfg
    }

    pub(super) async fn run(mut self, ready: oneshot::Sender<anyhow::Result<()>>) {
        // Cold paths are boxed where they are awaited (start, stop, network
        // changes, gap fills): a task's future is as large as its largest state,
        // for as long as the user runs.
        let started = Box::pin(self.start()).await;
        let failed = started.is_err();
        let _ = ready.send(started);
        if failed {
            return;
        }
        // One timer, armed only while something is due (a nick to take back, a gap
        // fill waiting for its answer): an idle user never wakes up.
        let timer = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        // One waiter for the whole loop: a fresh `cancelled()` per event would lock the
        // token's waiter list twice for every line.
        let cancelled = self.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            let due = self.next_due();
            if due != armed {
                if let Some(at) = due {
                    timer.as_mut().reset(at);
                }
                armed = due;
            }
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.regain_nicks();
                    self.away_timer();
                    self.expire_fills().await;
                }
                event = self.events.recv() => match event {
                    Some(Event::Park(reply)) => {
                        let parked = Box::pin(self.park()).await;
                        let _ = reply.send(parked);
                        return;
                    }
                    Some(Event::Stop { quit_message, reply }) => {
                        let snapshot = Box::pin(self.stop(quit_message)).await;
                        let _ = reply.send(snapshot);
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                Some((network, event)) = self.up_rx.recv() => self.upstream_event(network, event).await,
                // The sockets themselves. Not polled while a branch above is handled —
                // a write to the store writer that waits for room stops reading them
                // (TCP back-pressure), with nothing dropped.
                (network, step) = std::future::poll_fn(|cx| net::poll_links(&mut self.nets, &mut self.link_turn, cx)) => {
                    self.link_step(network, step).await;
                }
            }
        }
        // Cancelled or every handle dropped: close connections without
        // waiting (the node is going away or lost the user).
        for net in self.nets.values_mut() {
            net.close_clients("Ferry is shutting down");
            net.link = None;
            if let Some(up) = net.upstream.take() {
                up.cancel.cancel();
            }
        }
        let _ = self.writer.flush().await;
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Attach(attach, reply) => {
                let attached = self.attach(*attach);
                if attached.is_ok() {
                    self.client_attached();
                }
                let _ = reply.send(attached);
            }
            Event::Detach { network, id } => {
                if let Some(net) = self.nets.get_mut(&network) {
                    net.clients.retain(|c| c.id != id);
                    net.router.forget(id);
                }
                self.client_detached();
            }
            Event::AwaySettings(settings) => self.away_settings_changed(*settings),
            Event::ChannelAttach(change) => {
                let super::ChannelAttach {
                    network,
                    channel,
                    detached,
                    reattach_on,
                    reply,
                } = *change;
                let done = self
                    .set_detached(network, &channel, detached, reattach_on)
                    .await;
                let _ = reply.send(done);
            }
            Event::FromClient { network, id, msg } => {
                self.client_line(network, id, *msg).await;
                self.send_changes(network);
            }
            Event::AddNetwork(network, reply) => {
                let result = Box::pin(self.add_network(*network)).await;
                let _ = reply.send(result);
            }
            Event::RemoveNetwork(network, reply) => {
                self.bounds.remove_network(network);
                if let Some(mut net) = self.nets.remove(&network) {
                    net.close_clients("the network was removed");
                    Box::pin(net.quit_upstream(&self.config.quit_message)).await;
                }
                self.client_detached();
                let _ = reply.send(());
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Flush(reply) => {
                let _ = reply.send(self.writer.flush().await.is_ok());
            }
            Event::Gap(gap) => {
                let super::Gap {
                    text,
                    from,
                    to,
                    reply,
                } = *gap;
                let _ = reply.send(Box::pin(self.gap_marker(&text, from, to)).await);
            }
            Event::Stop { .. } | Event::Park(_) => unreachable!("handled in run"),
        }
    }

    fn attach(&mut self, attach: Attach) -> Result<Attached, UserError> {
        let net = self
            .nets
            .get_mut(&attach.network)
            .ok_or(UserError::NoSuchNetwork)?;
        let id = self.next_client;
        self.next_client += 1;
        net.clients.push(Client {
            id,
            tx: attach.tx,
            follows_moves: attach.follows_moves,
            members: attach.members,
            _counted: ClientGauge::new(&self.config.counters),
        });
        // From now on the state's changes are made and sent (see `user::change`).
        net.state.listening = true;
        debug!(user = %self.name, network = %net.config.name, client = %attach.client_name, "client attached");
        let mut view = net.state.view(net.config.id, &net.config.name);
        for ch in &mut view.channels {
            ch.detached = net.detached.contains_key(&net.state.fold(&ch.name));
        }
        Ok(Attached {
            id,
            view,
            last_seq: self.recorder.last_seq,
            fence: self.owner.fence.clone(),
        })
    }

    fn status(&self) -> Vec<NetworkStatus> {
        let mut out: Vec<NetworkStatus> = self
            .nets
            .values()
            .map(|n| NetworkStatus {
                network_id: n.config.id,
                name: n.config.name.clone(),
                state: n.state.conn.clone(),
                nick: irc::decode(&n.state.nick).into_owned(),
                channels: n
                    .state
                    .channels
                    .values()
                    .map(|c| irc::decode(&c.name).into_owned())
                    .collect(),
                clients: n.clients.len(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// False (and the actor ends) once the node's lease is gone: nothing more may be
    /// written or relayed for this user from here. Riding out a store outage the
    /// actor goes on (its writes are held by the writer, see `store::outage`).
    fn may_act(&self) -> bool {
        if self.owner.lease.may_relay() {
            return true;
        }
        if !self.cancel.is_cancelled() {
            warn!(user = %self.name, "lease not held: dropping the session without writing");
            self.cancel.cancel();
        }
        false
    }

    /// Records that a fenced write was refused: another node owns the user now.
    fn lost_ownership(&self, what: &str) {
        warn!(user = %self.name, epoch = self.owner.fence.epoch, what, "ownership lost: write refused, dropping the session");
        self.cancel.cancel();
    }

    /// Handles one step of a network's link: a line from the server (handled here,
    /// in the task that read it), a PING answered, a timer; hands the link back to
    /// its upstream task when its connection ends.
    async fn link_step(&mut self, network: NetworkId, step: upstream::LinkStep) {
        let Some(link) = self.nets.get_mut(&network).and_then(|n| n.link.as_mut()) else {
            return;
        };
        // Bound first: a future in a `match` scrutinee would be kept while the line
        // is handled.
        let handled = link.handle(step).await;
        match handled {
            Ok(None) => {}
            Ok(Some(line)) => {
                if line.read_in != tokio::task::try_id() {
                    self.config.upstream_stats.lines_handed_over.inc();
                }
                if !self.may_act() {
                    return;
                }
                if let Some(net) = self.nets.get_mut(&network) {
                    net.last_read = Some(line.read_at);
                }
                self.upstream_message(network, line.msg, line.read_at).await;
                self.send_changes(network);
            }
            Err(ended) => {
                if let Some(net) = self.nets.get_mut(&network) {
                    net.link_ended(ended);
                }
            }
        }
    }

    /// Handles what an upstream task reports, then sends what it changed in the
    /// live state to the network's clients (after the relays it made).
    async fn upstream_event(&mut self, network: NetworkId, event: UpstreamEvent) {
        self.apply_upstream_event(network, event).await;
        self.send_changes(network);
    }

    /// Sends the state changes of `network`'s lines applied so far (see
    /// `user::change`).
    fn send_changes(&mut self, network: NetworkId) {
        if let Some(net) = self.nets.get_mut(&network) {
            net.send_changes(&self.config.counters);
        }
    }

    async fn apply_upstream_event(&mut self, network: NetworkId, event: UpstreamEvent) {
        if !self.may_act() {
            return;
        }
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        match event {
            UpstreamEvent::Linked(link) => {
                // From here on the actor reads and writes the connection itself.
                net.link = Some(link);
            }
            UpstreamEvent::Connecting { attempt } => {
                let last_error = match &net.state.conn {
                    ConnState::Disconnected { reason, .. } => Some(reason.clone()),
                    _ => None,
                };
                net.state.conn = ConnState::Connecting {
                    attempt,
                    last_error,
                };
                net.conn_changed();
            }
            UpstreamEvent::Registering { attempt } => {
                let last_error = match &mut net.state.conn {
                    ConnState::Connecting { last_error, .. } => last_error.take(),
                    _ => None,
                };
                net.state.conn = ConnState::Registering {
                    attempt,
                    last_error,
                };
                net.conn_changed();
            }
            UpstreamEvent::Registered(reg) => {
                info!(user = %self.name, network = %net.config.name, nick = %irc::decode(&reg.nick), "registered");
                net.last_read = Some(std::time::Instant::now());
                net.state.registered(&reg);
                let caps = &net.state.caps;
                net.router.reset(
                    ["labeled-response", "batch", "message-tags"]
                        .iter()
                        .all(|c| caps.contains(*c)),
                );
                net.echoes.clear();
                // A fallback nick (433/432) is not what the user wants: try
                // to take the configured one back later.
                net.regain = (!net.state.is_me(net.config.nick.as_bytes())).then(Regain::new);
                net.rejoin();
                let notice = format!(
                    "Connected to {} as {}",
                    net.config.name,
                    irc::decode(&reg.nick)
                );
                net.notify_clients(&notice, &self.config.counters);
                // After the notice: a websocket shows the MOTD below it.
                net.conn_changed();
                self.away_registered(network);
                let Some(net) = self.nets.get_mut(&network) else {
                    return;
                };
                if std::mem::take(&mut net.resumed) && net.down_since.is_none() {
                    let since = self.resumed_since(network).await;
                    let Some(net) = self.nets.get_mut(&network) else {
                        return;
                    };
                    net.down_since = since;
                }
                let Some(net) = self.nets.get_mut(&network) else {
                    return;
                };
                if let Some(from) = net.down_since.take() {
                    net.covered_from = Some(from);
                    // Covered per channel at its rejoin: what is said before our
                    // JOIN reaches no live stream, and the server answers a history
                    // request for a channel only once we are back in it.
                    self.await_rejoins(network, from);
                }
            }
            UpstreamEvent::Disconnected { reason, retry } => {
                let retrying = matches!(retry, Retry::After(_));
                net.away.auto = false;
                net.away.quiet_replies = 0;
                warn!(user = %self.name, network = %net.config.name, %reason, retrying, "disconnected");
                // Windows of channels not rejoined yet start the next one.
                if let Some(from) = net.rejoins.drain(..).map(|r| r.from).min() {
                    net.down_since = Some(net.down_since.map_or(from, |d| d.min(from)));
                }
                if matches!(net.state.conn, ConnState::Connected) {
                    // From the last line read, not from now: a dead connection is
                    // noticed only at the ping timeout, and what was said meanwhile
                    // is missing too. A fill skips what is already stored, so a
                    // window that starts early costs nothing.
                    let quiet = net
                        .last_read
                        .and_then(|t| chrono::Duration::from_std(t.elapsed()).ok())
                        .unwrap_or_default();
                    let since = chrono::Utc::now() - quiet - gap::READ_MARGIN;
                    net.down_since = Some(net.down_since.map_or(since, |d| d.min(since)));
                }
                let retry_at = match retry {
                    Retry::After(d) => chrono::Duration::from_std(d)
                        .ok()
                        .map(|d| chrono::Utc::now() + d),
                    Retry::Never => None,
                };
                // The connection is gone: its cursors in the channel streams too (it
                // starts over at each stream's end when it is back).
                net.streams.leave_all();
                net.state.disconnected(ConnState::Disconnected {
                    reason: reason.clone(),
                    retrying,
                    retry_at,
                });
                net.conn_changed();
                let notice = match retry {
                    Retry::After(d) => format!("Disconnected from {}: {reason}; reconnecting in {}s", net.config.name, d.as_secs()),
                    Retry::Never => format!("Disconnected from {}: {reason}; not reconnecting (fix the network settings)", net.config.name),
                };
                net.notify_clients(&notice, &self.config.counters);
                net.link = None;
                if !retrying {
                    net.upstream = None;
                }
            }
        }
    }

    /// Since when a network's messages may be missing when this actor took over
    /// from an earlier session: its newest stored line, if it has one.
    async fn resumed_since(&self, network: NetworkId) -> Option<chrono::DateTime<chrono::Utc>> {
        if self.owner.lease.riding_out() {
            // The store is away: asking it would stall this actor until its connect
            // timeout. The actor has run all along, so nothing came before it.
            return None;
        }
        let query = crate::store::HistoryQuery {
            user: self.id,
            network: Some(network),
            limit: 1,
            newest_first: true,
            ..Default::default()
        };
        match self.store.history(&query).await {
            Ok(newest) => newest.first().map(|m| m.time),
            Err(e) => {
                warn!(user = %self.name, error = %e, "could not read the newest line: no gap marker");
                None
            }
        }
    }

    /// When the timer must next fire: the earliest nick regain on a connected network
    /// or gap-fill deadline, if any.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.nets
            .values()
            .flat_map(|net| {
                let regain = net
                    .regain
                    .as_ref()
                    .filter(|_| matches!(net.state.conn, ConnState::Connected))
                    .map(|r| r.next);
                regain
                    .into_iter()
                    .chain(net.fills.iter().filter_map(|f| f.due()))
                    .chain(net.rejoins.iter().map(|r| r.due()))
            })
            .chain(self.away.due)
            .min()
    }

    async fn stop(&mut self, quit_message: Option<String>) -> UserSnapshot {
        // A migration passes its own QUIT message: the session moves to another
        // node. Otherwise the node is stopping (a restart or shutdown) or another
        // node took the user over; either way the client should reconnect.
        let moving = quit_message.is_some();
        let close = if moving {
            MOVING
        } else {
            "Ferry is restarting or shutting down; reconnect to continue"
        };
        // Moving: the clients follow the user (see `Outbound::Moving`) once they have
        // saved their backlog positions, which must happen while this node still owns
        // the user; wait for that (bounded) before anything else.
        if moving {
            let (saved, mut acks) = mpsc::channel(64);
            let told: usize = self
                .nets
                .values_mut()
                .map(|net| net.move_clients(close, &saved))
                .sum();
            drop(saved);
            let wait = async {
                for _ in 0..told {
                    if acks.recv().await.is_none() {
                        break;
                    }
                }
            };
            if tokio::time::timeout(CLIENTS_SAVE_WAIT, wait).await.is_err() {
                warn!(user = %self.name, clients = told, "clients did not save their positions in time before the move");
            }
        }
        let quit = quit_message.unwrap_or_else(|| self.config.quit_message.clone());
        let mut networks = Vec::new();
        for net in self.nets.values_mut() {
            net.close_clients(close);
            net.quit_upstream(&quit).await;
            networks.push(NetworkSnapshot {
                network_id: net.config.id,
                nick: net.state.nick.clone(),
                away: net.state.away.clone(),
                channels: net.wanted.values().cloned().collect(),
            });
        }
        let _ = self.writer.flush().await;
        UserSnapshot {
            user_id: self.id,
            last_seq: self.recorder.last_seq,
            networks,
        }
    }
}

/// Starts the actor loop; resolves once the user's networks are loaded.
pub(super) async fn start(actor: Actor) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(actor.run(ready_tx));
    ready_rx.await??;
    Ok(task)
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The actor's queue allocates its first 32 slots up front, per user.
    #[test]
    fn events_stay_small() {
        assert!(std::mem::size_of::<Event>() <= 40);
    }
}
