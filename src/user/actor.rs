//! The user task: the loop that owns one user's networks, clients and ids.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::irc::{self, ctcp, split, Message};
use crate::store::{Network, NetworkId, NewMessage, Seq, Store, UserId, Writer};
use crate::upstream::{self, Retry, UpstreamCommand, UpstreamEvent, UpstreamHandle};

use super::routing::Router;
use super::state::NetState;
use super::{
    Attach, Attached, ConnState, Counters, DownstreamId, Event, NetworkSnapshot, NetworkStatus,
    Outbound, UserConfig, UserError, UserSnapshot,
};

struct Client {
    id: DownstreamId,
    tx: mpsc::Sender<Outbound>,
}

/// A message a client sent that the server will echo back (echo-message).
struct PendingEcho {
    client: DownstreamId,
    line: Bytes,
}

/// Folded channel name → (name, channel key).
type WantedChannels = HashMap<Vec<u8>, (Vec<u8>, Option<Vec<u8>>)>;

/// Taking the configured nick back after the server gave us a fallback.
struct Regain {
    next: tokio::time::Instant,
    backoff: std::time::Duration,
}

impl Regain {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(30);
    const MAX: std::time::Duration = std::time::Duration::from_secs(600);

    fn new() -> Regain {
        Regain {
            next: tokio::time::Instant::now() + Regain::FIRST,
            backoff: Regain::FIRST,
        }
    }
}

struct Net {
    config: Network,
    state: NetState,
    upstream: Option<UpstreamHandle>,
    clients: Vec<Client>,
    router: Router,
    echoes: VecDeque<PendingEcho>,
    /// Channels to be in (folded name → (name, key)); mirrors the store's
    /// `joined` buffers and survives disconnects.
    wanted: WantedChannels,
    /// Set while our nick is not the configured one.
    regain: Option<Regain>,
    /// The nick a client asked for, until the server confirms it.
    requested_nick: Option<Vec<u8>>,
    /// We asked for our nick back; its refusal (433) is ours, not the clients'.
    regain_pending: bool,
    /// Gap fills asked of the server (`CHATHISTORY BETWEEN`) and not yet answered.
    fills: Vec<Fill>,
}

/// The most lines one gap fill asks for; a full answer may be truncated, so it also
/// gets a gap marker.
const FILL_LIMIT: usize = 1000;
/// How long the server may take to answer a gap fill before a marker is written.
const FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One channel's gap fill in flight.
struct Fill {
    chan: Vec<u8>,
    key: Vec<u8>,
    /// The gap marker's text, written if the server cannot fill.
    text: String,
    /// The server's batch reference, once it opened the `chathistory` batch.
    batch: Option<String>,
    lines: Vec<Message>,
    deadline: tokio::time::Instant,
}

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
    last_seq: Seq,
    next_client: DownstreamId,
    /// Boxed: a map with one entry still allocates several slots.
    nets: HashMap<NetworkId, Box<Net>>,
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
            config,
            events,
            up_tx,
            up_rx,
            cancel,
            owner,
            last_seq: 0,
            next_client: 1,
            nets: HashMap::new(),
        }
    }

    /// Loads the user's durable state and connects its networks.
    async fn start(&mut self) -> anyhow::Result<()> {
        self.last_seq = self.store.last_seq(self.id).await?;
        for network in self.store.networks(self.id).await? {
            self.add_network(network).await?;
        }
        Ok(())
    }

    async fn add_network(&mut self, network: Network) -> anyhow::Result<()> {
        let buffers = self.store.buffers(network.id).await?;
        let network_key: Arc<str> = Arc::from(network.addr.to_ascii_lowercase());
        let mut state = NetState::new(
            network.nick.as_bytes(),
            self.config.rosters.clone(),
            network_key,
        );
        state.conn = ConnState::Stopped;
        let mut net = Net {
            state,
            upstream: None,
            clients: Vec::new(),
            router: Router::default(),
            echoes: VecDeque::new(),
            wanted: buffers
                .into_iter()
                .filter(|b| b.joined)
                .map(|b| (b.key, (b.name, b.chan_key)))
                .collect(),
            regain: None,
            requested_nick: None,
            regain_pending: false,
            fills: Vec::new(),
            config: network,
        };
        if net.config.enabled {
            self.start_upstream(&mut net);
        }
        self.nets.insert(net.config.id, Box::new(net));
        Ok(())
    }

    fn start_upstream(&self, net: &mut Net) {
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
        net.state.conn = ConnState::Connecting { attempt: 1 };
        net.upstream = Some(upstream::spawn(
            cfg,
            self.up_tx.clone(),
            self.cancel.child_token(),
        ));
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
                    self.expire_fills().await;
                }
                event = self.events.recv() => match event {
                    Some(Event::Stop { quit_message, reply }) => {
                        let snapshot = Box::pin(self.stop(quit_message)).await;
                        let _ = reply.send(snapshot);
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                Some((network, event)) = self.up_rx.recv() => self.upstream_event(network, event).await,
            }
        }
        // Cancelled or every handle dropped: close connections without
        // waiting (the node is going away or lost the user).
        for net in self.nets.values_mut() {
            close_clients(net, "Ferry is shutting down");
            if let Some(up) = net.upstream.take() {
                up.cancel.cancel();
            }
        }
        let _ = self.writer.flush().await;
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Attach(attach, reply) => {
                let _ = reply.send(self.attach(*attach));
            }
            Event::Detach { network, id } => {
                if let Some(net) = self.nets.get_mut(&network) {
                    net.clients.retain(|c| c.id != id);
                    net.router.forget(id);
                }
            }
            Event::FromClient { network, id, msg } => self.client_line(network, id, *msg).await,
            Event::AddNetwork(network, reply) => {
                let result = Box::pin(self.add_network(*network)).await;
                let _ = reply.send(result);
            }
            Event::RemoveNetwork(network, reply) => {
                if let Some(mut net) = self.nets.remove(&network) {
                    close_clients(&mut net, "the network was removed");
                    Box::pin(quit_upstream(&mut net, &self.config.quit_message)).await;
                }
                let _ = reply.send(());
            }
            Event::Status(reply) => {
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
                let _ = reply.send(out);
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
            Event::Stop { .. } => unreachable!("handled in run"),
        }
    }

    fn attach(&mut self, attach: Attach) -> Result<Attached, UserError> {
        let net = self
            .nets
            .get_mut(&attach.network)
            .ok_or(UserError::NoSuchNetwork)?;
        let id = self.next_client;
        self.next_client += 1;
        net.clients.push(Client { id, tx: attach.tx });
        debug!(user = %self.name, network = %net.config.name, client = %attach.client_name, "client attached");
        Ok(Attached {
            id,
            view: net.state.view(net.config.id, &net.config.name),
            last_seq: self.last_seq,
            fence: self.owner.fence.clone(),
        })
    }

    async fn client_line(&mut self, network: NetworkId, id: DownstreamId, msg: Message) {
        if !self.may_act() {
            return;
        }
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        match msg.command.as_str() {
            "PRIVMSG" | "NOTICE" => {
                let (Some(target), Some(text)) = (msg.param(0), msg.param(1)) else {
                    return;
                };
                let nick_len = net.state.nick.len();
                let linelen = net.state.isupport.linelen;
                let mut pieces = Vec::new();
                for target in target.split(|&b| b == b',').filter(|t| !t.is_empty()) {
                    // Keep CTCP framing intact: split only the inside of an ACTION.
                    let parts = match ctcp::action(text) {
                        Some(action) => {
                            split::split_text(&msg.command, target, action, nick_len + 9, linelen)
                                .into_iter()
                                .map(|p| [&b"\x01ACTION "[..], &p, b"\x01"].concat())
                                .collect()
                        }
                        None => split::split_text(&msg.command, target, text, nick_len, linelen),
                    };
                    for part in parts {
                        pieces.push(Message::new(
                            msg.command.clone(),
                            [Bytes::copy_from_slice(target), Bytes::from(part)],
                        ));
                    }
                }
                for piece in pieces {
                    self.send_own_message(network, id, piece).await;
                }
            }
            "QUIT" => {}
            command => {
                let net = self.nets.get_mut(&network).expect("checked above");
                if command == "JOIN" {
                    remember_join(net, &msg);
                } else if command == "NICK" {
                    net.requested_nick = msg.param(0).map(<[u8]>::to_vec);
                } else if command == "PART" {
                    for chan in msg.param(0).unwrap_or_default().split(|&b| b == b',') {
                        net.wanted.remove(&net.state.fold(chan));
                    }
                }
                net.router.sent(id, command, msg.params.len());
                send_upstream(net, msg);
            }
        }
    }

    /// Sends one of our own messages upstream and, unless the server will
    /// echo it, stores and relays it ourselves.
    async fn send_own_message(&mut self, network: NetworkId, client: DownstreamId, msg: Message) {
        let net = self.nets.get_mut(&network).expect("caller checked");
        if !matches!(net.state.conn, ConnState::Connected) {
            let notice = Message::new(
                "NOTICE",
                [
                    Bytes::from(net.state.nick.clone()),
                    Bytes::from_static(b"Not connected to the network: message not sent"),
                ],
            )
            .with_prefix(Bytes::from_static(b"ferry"));
            if let Some(c) = net.clients.iter().find(|c| c.id == client) {
                let _ = c.tx.try_send(Outbound::Reply(notice));
            }
            return;
        }
        if net.state.caps.contains("echo-message") {
            net.echoes.push_back(PendingEcho {
                client,
                line: echo_key(&msg),
            });
            send_upstream(net, msg);
            return;
        }
        send_upstream(net, msg.clone());
        let own = msg.with_prefix(Bytes::from(net.state.nick.clone()));
        self.record_and_relay(network, own, Some(client)).await;
    }

    /// False (and the actor ends) once the node's lease is gone: nothing more may be
    /// written or relayed for this user from here.
    fn may_act(&self) -> bool {
        if self.owner.lease.is_valid() {
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

    async fn upstream_event(&mut self, network: NetworkId, event: UpstreamEvent) {
        if !self.may_act() {
            return;
        }
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        match event {
            UpstreamEvent::Connecting { attempt } => {
                net.state.conn = ConnState::Connecting { attempt };
            }
            UpstreamEvent::Registered(reg) => {
                info!(user = %self.name, network = %net.config.name, nick = %irc::decode(&reg.nick), "registered");
                net.state.registered(&reg);
                net.router.clear();
                net.echoes.clear();
                // A fallback nick (433/432) is not what the user wants: try
                // to take the configured one back later.
                net.regain = (!net.state.is_me(net.config.nick.as_bytes())).then(Regain::new);
                rejoin(net);
                let notice = format!(
                    "Connected to {} as {}",
                    net.config.name,
                    irc::decode(&reg.nick)
                );
                notify_clients(net, &notice, &self.config.counters);
            }
            UpstreamEvent::Disconnected { reason, retry } => {
                let retrying = matches!(retry, Retry::After(_));
                warn!(user = %self.name, network = %net.config.name, %reason, retrying, "disconnected");
                net.state.disconnected(ConnState::Disconnected {
                    reason: reason.clone(),
                    retrying,
                });
                let notice = match retry {
                    Retry::After(d) => format!("Disconnected from {}: {reason}; reconnecting in {}s", net.config.name, d.as_secs()),
                    Retry::Never => format!("Disconnected from {}: {reason}; not reconnecting (fix the network settings)", net.config.name),
                };
                notify_clients(net, &notice, &self.config.counters);
                if !retrying {
                    net.upstream = None;
                }
            }
            UpstreamEvent::Message(msg) => self.upstream_message(network, *msg).await,
        }
    }

    async fn upstream_message(&mut self, network: NetworkId, msg: Message) {
        if self.fill_line(network, &msg).await {
            return;
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        // The refusal of our own attempt to regain the nick concerns no client.
        if net.regain_pending && matches!(msg.command.as_str(), "432" | "433" | "437") {
            net.regain_pending = false;
            return;
        }
        // Replies to one client's query go to that client only.
        if msg.command.len() == 3 && msg.command.bytes().all(|b| b.is_ascii_digit()) {
            if let Some(client) = net.router.route(&msg.command) {
                net.state.apply(&msg);
                if let Some(c) = net.clients.iter().find(|c| c.id == client) {
                    let _ = c.tx.try_send(Outbound::Reply(msg));
                }
                return;
            }
        }
        let mut echo_of = None;
        if matches!(msg.command.as_str(), "PRIVMSG" | "NOTICE")
            && msg.source_nick().is_some_and(|n| net.state.is_me(n))
        {
            let key = echo_key(&msg);
            if let Some(i) = net.echoes.iter().position(|e| e.line == key) {
                echo_of = net.echoes.remove(i).map(|e| e.client);
            }
        }
        self.record_and_relay(network, msg, echo_of).await;
    }

    /// Applies a line to the live state, stores it in the buffers it
    /// concerns, and relays it to the network's clients.
    async fn record_and_relay(
        &mut self,
        network: NetworkId,
        msg: Message,
        echo_of: Option<DownstreamId>,
    ) {
        if !self.may_act() {
            return;
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        let effect = net.state.apply(&msg);
        if let Some((name, joined)) = &effect.own_membership {
            let key = net.state.fold(name);
            let chan_key = net.wanted.get(&key).and_then(|(_, k)| k.clone());
            if *joined {
                net.wanted
                    .insert(key.clone(), (name.clone(), chan_key.clone()));
            } else {
                net.wanted.remove(&key);
            }
            match self
                .store
                .set_channel_fenced(
                    &self.owner.fence,
                    network,
                    name,
                    &key,
                    *joined,
                    chan_key.as_deref(),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => return self.lost_ownership("channel membership"),
                Err(e) => {
                    warn!(user = %self.name, error = %e, "could not save channel membership")
                }
            }
        }
        if let Some(nick) = &effect.own_nick {
            let nick = irc::decode(nick).into_owned();
            let net = self.nets.get_mut(&network).expect("caller checked");
            let asked = net
                .requested_nick
                .take()
                .is_some_and(|r| net.state.is_me(&r));
            let regained = net.state.is_me(net.config.nick.as_bytes());
            if regained {
                net.regain = None;
            }
            // Persist what the user chose; a server-forced change is not a choice.
            if asked && !regained {
                net.config.nick = nick.clone();
                net.regain = None;
                if let Ok(false) = self
                    .store
                    .set_network_nick_fenced(&self.owner.fence, network, &nick)
                    .await
                {
                    return self.lost_ownership("network nick");
                }
            }
        }
        // The holder of our wanted nick left or renamed: try at once.
        if matches!(msg.command.as_str(), "QUIT" | "NICK") {
            let net = self.nets.get_mut(&network).expect("caller checked");
            let wanted = net.config.nick.clone();
            if net.regain.is_some()
                && msg
                    .source_nick()
                    .is_some_and(|n| net.state.isupport.casemapping.eq(n, wanted.as_bytes()))
            {
                net.regain_pending = true;
                send_upstream(net, Message::new("NICK", [Bytes::from(wanted)]));
            }
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        let time = msg
            .tag("time")
            .and_then(irc::time::parse)
            .unwrap_or_else(Utc::now);
        let mut seq = None;
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut records: Vec<NewMessage> = Vec::new();
        if let Some(kind) = stored_kind(&msg) {
            let mut buffers = effect.buffers;
            if matches!(kind, "JOIN" | "PART" | "QUIT" | "NICK")
                && effect.own_membership.is_none()
                && effect.own_nick.is_none()
            {
                let max = self.config.membership_events_max_members;
                buffers.retain(|b| net.state.member_count(b) <= max);
            }
            if !buffers.is_empty() {
                let raw = msg.to_bytes();
                let mut text = display_text(&msg, kind);
                let mut sender = irc::decode(msg.source_nick().unwrap_or_default()).into_owned();
                let mut msgid = msg.tag("msgid").map(str::to_owned);
                let n = buffers.len();
                records.reserve_exact(n);
                stored.reserve_exact(n);
                for (i, buffer) in buffers.into_iter().enumerate() {
                    // The last copy takes the strings, the others clone them.
                    let last = i + 1 == n;
                    let take = |s: &mut String| if last { std::mem::take(s) } else { s.clone() };
                    self.last_seq += 1;
                    seq.get_or_insert(self.last_seq);
                    stored.push(buffer.clone());
                    records.push(NewMessage {
                        user_id: self.id,
                        seq: self.last_seq,
                        network_id: network,
                        buffer_key: net.state.fold(&buffer),
                        buffer,
                        time: truncate_ms(time),
                        sender: take(&mut sender),
                        command: kind.to_owned(),
                        raw: raw.clone(),
                        text: take(&mut text),
                        msgid: if last { msgid.take() } else { msgid.clone() },
                        epoch: self.owner.fence.epoch,
                    });
                }
            }
        }
        // Relay first: clients never wait for the store. The records follow at once,
        // before this actor reads another line, so anything a client has seen is
        // queued ahead of any flush the client can cause (replay, CHATHISTORY).
        let msg = Arc::new(msg);
        relay(
            net,
            &Outbound::Relay {
                msg,
                seq,
                time,
                echo_of,
                buffers: stored.into(),
            },
            &self.config.counters,
        );
        if !records.is_empty() {
            let n = records.len() as u64;
            self.config.counters.stored.fetch_add(n, Ordering::Relaxed);
            if self.writer.write_all(records).await.is_err() {
                warn!(user = %self.name, "backlog writer is gone; message not stored");
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
                let fills = net
                    .fills
                    .iter()
                    .filter(|f| f.batch.is_none())
                    .map(|f| f.deadline);
                regain.into_iter().chain(fills)
            })
            .min()
    }

    /// Asks for the configured nick again where the server gave us a fallback,
    /// with backoff (30 s doubling to 10 min), so we never hammer the server.
    fn regain_nicks(&mut self) {
        let now = tokio::time::Instant::now();
        for net in self.nets.values_mut() {
            if !matches!(net.state.conn, ConnState::Connected) {
                continue;
            }
            let Some(r) = net.regain.as_mut() else {
                continue;
            };
            if now < r.next {
                continue;
            }
            r.backoff = (r.backoff * 2).min(Regain::MAX);
            r.next = now + r.backoff;
            let wanted = Bytes::from(net.config.nick.clone());
            net.regain_pending = true;
            send_upstream(net, Message::new("NICK", [wanted]));
        }
    }

    async fn gap_marker(
        &mut self,
        text: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<String> {
        if !self.may_act() {
            return Vec::new();
        }
        let mut marked = Vec::new();
        let ids: Vec<NetworkId> = self.nets.keys().copied().collect();
        for id in ids {
            let net = self.nets.get_mut(&id).expect("listed");
            let chans: Vec<Vec<u8>> = net.wanted.values().map(|(n, _)| n.clone()).collect();
            if chans.is_empty() {
                continue;
            }
            let history = net.state.caps.contains("draft/chathistory")
                || net.state.caps.contains("chathistory");
            if history {
                let stamp = |t: DateTime<Utc>| {
                    Bytes::from(format!("timestamp={}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")))
                };
                for chan in chans {
                    send_upstream(
                        net,
                        Message::new(
                            "CHATHISTORY",
                            [
                                Bytes::from_static(b"BETWEEN"),
                                Bytes::from(chan.clone()),
                                stamp(from),
                                stamp(to),
                                Bytes::from(FILL_LIMIT.to_string()),
                            ],
                        ),
                    );
                    net.fills.push(Fill {
                        key: net.state.fold(&chan),
                        chan,
                        text: text.to_owned(),
                        batch: None,
                        lines: Vec::new(),
                        deadline: tokio::time::Instant::now() + FILL_WAIT,
                    });
                }
                marked.push(format!("{}:chathistory", net.config.name));
            } else {
                for chan in chans {
                    self.write_gap(id, chan, text).await;
                }
                marked.push(self.nets[&id].config.name.clone());
            }
        }
        marked
    }

    /// Stores and relays one gap marker in `chan`.
    async fn write_gap(&mut self, id: NetworkId, chan: Vec<u8>, text: &str) {
        let now = Utc::now();
        let Some(net) = self.nets.get_mut(&id) else {
            return;
        };
        let mut raw = b":*ferry*!ferry@ferry NOTICE ".to_vec();
        raw.extend_from_slice(&chan);
        raw.extend_from_slice(b" :");
        raw.extend_from_slice(text.as_bytes());
        let raw = Bytes::from(raw);
        let Ok(msg) = Message::parse(raw.clone()) else {
            return;
        };
        self.last_seq += 1;
        let seq = self.last_seq;
        let record = NewMessage {
            user_id: self.id,
            seq,
            network_id: id,
            buffer: chan.clone(),
            buffer_key: net.state.fold(&chan),
            time: truncate_ms(now),
            sender: "*ferry*".to_owned(),
            command: "GAP".to_owned(),
            raw,
            text: text.to_owned(),
            msgid: None,
            epoch: self.owner.fence.epoch,
        };
        if self.writer.write(record).await.is_err() {
            warn!(user = %self.name, "backlog writer is gone; gap marker not stored");
        }
        relay(
            net,
            &Outbound::Relay {
                msg: Arc::new(msg),
                seq: Some(seq),
                time: now,
                echo_of: None,
                buffers: vec![chan].into(),
            },
            &self.config.counters,
        );
    }

    /// Takes a line that belongs to a gap fill: the `chathistory` batch's start, its
    /// lines, its end, or the server's `FAIL CHATHISTORY`. Returns whether it did.
    async fn fill_line(&mut self, network: NetworkId, msg: &Message) -> bool {
        let Some(net) = self.nets.get_mut(&network) else {
            return false;
        };
        if net.fills.is_empty() {
            return false;
        }
        let p = |i: usize| msg.params.get(i).map(|b| &b[..]).unwrap_or_default();
        if msg.command == "BATCH" {
            let r = p(0);
            if let Some(r) = r.strip_prefix(b"+") {
                if p(1) == b"chathistory" {
                    let key = net.state.fold(p(2));
                    if let Some(f) = net
                        .fills
                        .iter_mut()
                        .find(|f| f.batch.is_none() && f.key == key)
                    {
                        f.batch = Some(String::from_utf8_lossy(r).into_owned());
                        return true;
                    }
                }
                return false;
            }
            if let Some(r) = r.strip_prefix(b"-") {
                let r = String::from_utf8_lossy(r);
                if let Some(i) = net
                    .fills
                    .iter()
                    .position(|f| f.batch.as_deref() == Some(&*r))
                {
                    let f = net.fills.remove(i);
                    Box::pin(self.finish_fill(network, f)).await;
                    return true;
                }
            }
            return false;
        }
        if let Some(b) = msg.tag("batch") {
            if let Some(f) = net.fills.iter_mut().find(|f| f.batch.as_deref() == Some(b)) {
                f.lines.push(msg.clone());
                return true;
            }
            return false;
        }
        if msg.command == "FAIL" && p(0).eq_ignore_ascii_case(b"CHATHISTORY") {
            let keys: Vec<Vec<u8>> = msg.params.iter().map(|x| net.state.fold(x)).collect();
            let i = net
                .fills
                .iter()
                .position(|f| f.batch.is_none() && keys.contains(&f.key))
                .or_else(|| net.fills.iter().position(|f| f.batch.is_none()));
            if let Some(i) = i {
                let f = net.fills.remove(i);
                let why =
                    String::from_utf8_lossy(msg.params.last().map(|b| &b[..]).unwrap_or_default())
                        .into_owned();
                warn!(user = %self.name, chan = %irc::decode(&f.chan), %why, "gap fill refused");
                Box::pin(self.write_gap(network, f.chan, &f.text)).await;
                return true;
            }
        }
        false
    }

    /// Stores a gap fill's messages the backlog does not have yet (by msgid); a
    /// possibly truncated answer also gets a marker.
    async fn finish_fill(&mut self, network: NetworkId, f: Fill) {
        let ids: Vec<String> = f
            .lines
            .iter()
            .filter_map(|m| m.tag("msgid").map(str::to_owned))
            .collect();
        let known = self
            .store
            .msgids_known(self.id, network, &ids)
            .await
            .unwrap_or_default();
        let mut stored = 0usize;
        for msg in &f.lines {
            if msg
                .tag("msgid")
                .is_some_and(|id| known.iter().any(|k| k == id))
            {
                continue;
            }
            let Some(kind) = stored_kind(msg) else {
                continue;
            };
            if !matches!(kind, "PRIVMSG" | "NOTICE" | "ACTION") {
                continue;
            }
            let time = msg
                .tag("time")
                .and_then(irc::time::parse)
                .unwrap_or_else(Utc::now);
            let Some(net) = self.nets.get_mut(&network) else {
                return;
            };
            self.last_seq += 1;
            let seq = self.last_seq;
            let record = NewMessage {
                user_id: self.id,
                seq,
                network_id: network,
                buffer: f.chan.clone(),
                buffer_key: f.key.clone(),
                time: truncate_ms(time),
                sender: irc::decode(msg.source_nick().unwrap_or_default()).into_owned(),
                command: kind.to_owned(),
                raw: msg.to_bytes(),
                text: display_text(msg, kind),
                msgid: msg.tag("msgid").map(str::to_owned),
                epoch: self.owner.fence.epoch,
            };
            if self.writer.write(record).await.is_err() {
                warn!(user = %self.name, "backlog writer is gone; gap fill not stored");
                break;
            }
            stored += 1;
            relay(
                net,
                &Outbound::Relay {
                    msg: Arc::new(msg.clone()),
                    seq: Some(seq),
                    time,
                    echo_of: None,
                    buffers: vec![f.chan.clone()].into(),
                },
                &self.config.counters,
            );
        }
        info!(user = %self.name, chan = %irc::decode(&f.chan), got = f.lines.len(), stored, "gap filled from CHATHISTORY");
        if f.lines.len() >= FILL_LIMIT {
            self.write_gap(network, f.chan, &f.text).await;
        }
    }

    /// Fills the server did not answer in time get a marker.
    async fn expire_fills(&mut self) {
        let now = tokio::time::Instant::now();
        let mut late = Vec::new();
        for (id, net) in &mut self.nets {
            let (old, keep): (Vec<Fill>, Vec<Fill>) = net
                .fills
                .drain(..)
                .partition(|f| f.deadline <= now && f.batch.is_none());
            net.fills = keep;
            late.extend(old.into_iter().map(|f| (*id, f)));
        }
        for (id, f) in late {
            Box::pin(self.write_gap(id, f.chan, &f.text)).await;
        }
    }

    async fn stop(&mut self, quit_message: Option<String>) -> UserSnapshot {
        let quit = quit_message.unwrap_or_else(|| self.config.quit_message.clone());
        let mut networks = Vec::new();
        for net in self.nets.values_mut() {
            close_clients(net, "your session is moving");
            quit_upstream(net, &quit).await;
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
            last_seq: self.last_seq,
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

fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Which kind of line a person would want back, as stored.
pub fn stored_kind(msg: &Message) -> Option<&'static str> {
    Some(match msg.command.as_str() {
        "PRIVMSG" => match msg.param(1) {
            Some(text) if ctcp::action(text).is_some() => "ACTION",
            Some(text) if ctcp::parse(text).is_some() => return None,
            _ => "PRIVMSG",
        },
        "NOTICE" => match msg.param(1) {
            Some(text) if ctcp::parse(text).is_some() => return None,
            _ => "NOTICE",
        },
        "JOIN" => "JOIN",
        "PART" => "PART",
        "QUIT" => "QUIT",
        "NICK" => "NICK",
        "KICK" => "KICK",
        "MODE" => "MODE",
        "TOPIC" => "TOPIC",
        _ => return None,
    })
}

/// The text form of a stored line, for display and search.
pub fn display_text(msg: &Message, kind: &str) -> String {
    let p = |i| msg.param_str(i).map(|s| s.into_owned()).unwrap_or_default();
    match kind {
        "PRIVMSG" | "NOTICE" => p(1),
        "ACTION" => msg
            .param(1)
            .and_then(ctcp::action)
            .map(|a| irc::decode(a).into_owned())
            .unwrap_or_default(),
        "PART" | "QUIT" => p(if kind == "PART" { 1 } else { 0 }),
        "KICK" => format!("{} {}", p(1), p(2)).trim_end().to_owned(),
        "NICK" => p(0),
        "TOPIC" => p(1),
        "MODE" => msg.params[1..]
            .iter()
            .map(|b| irc::decode(b).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What identifies an echoed message: command, target and text.
fn echo_key(msg: &Message) -> Bytes {
    let mut m = Message::new(msg.command.clone(), msg.params.iter().cloned());
    m.tags.clear();
    m.to_bytes()
}

fn remember_join(net: &mut Net, msg: &Message) {
    let chans = msg.param(0).unwrap_or_default();
    let mut keys = msg.param(1).unwrap_or_default().split(|&b| b == b',');
    for chan in chans.split(|&b| b == b',').filter(|c| !c.is_empty()) {
        let key = keys.next().filter(|k| !k.is_empty()).map(<[u8]>::to_vec);
        net.wanted
            .insert(net.state.fold(chan), (chan.to_vec(), key));
    }
}

/// Joins every wanted channel again, keyed ones first (`JOIN #a,#b k1`).
fn rejoin(net: &mut Net) {
    let mut wanted: Vec<_> = net.wanted.values().cloned().collect();
    wanted.sort_by_key(|(name, key)| (key.is_none(), name.clone()));
    for chunk in wanted.chunks(10) {
        let names: Vec<&[u8]> = chunk.iter().map(|(n, _)| &n[..]).collect();
        let keys: Vec<&[u8]> = chunk.iter().filter_map(|(_, k)| k.as_deref()).collect();
        let mut params = vec![Bytes::from(names.join(&b","[..]))];
        if !keys.is_empty() {
            params.push(Bytes::from(keys.join(&b","[..])));
        }
        send_upstream(net, Message::new("JOIN", params));
    }
}

fn send_upstream(net: &mut Net, msg: Message) {
    if let Some(up) = &net.upstream {
        if up
            .commands
            .try_send(UpstreamCommand::Send(Box::new(msg)))
            .is_err()
        {
            warn!(network = %net.config.name, "upstream queue full; command dropped");
        }
    }
}

async fn quit_upstream(net: &mut Net, reason: &str) {
    if let Some(up) = net.upstream.take() {
        let _ = up
            .commands
            .send(UpstreamCommand::Quit(Bytes::copy_from_slice(
                reason.as_bytes(),
            )))
            .await;
        let cancel = up.cancel.clone();
        if tokio::time::timeout(std::time::Duration::from_secs(5), up.task)
            .await
            .is_err()
        {
            cancel.cancel();
        }
    }
    net.state.disconnected(ConnState::Stopped);
}

/// Sends a line to every attached client; a client whose queue is full is
/// too slow and is dropped (its task sees the channel close).
fn relay(net: &mut Net, out: &Outbound, counters: &Counters) {
    net.clients.retain(|c| match c.tx.try_send(out.clone()) {
        Ok(()) => {
            counters.relayed.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!(network = %net.config.name, client = c.id, "client too slow; detaching it");
            counters.slow_clients.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

fn notify_clients(net: &mut Net, text: &str, counters: &Counters) {
    let notice = Message::new(
        "NOTICE",
        [
            Bytes::from(net.state.nick.clone()),
            Bytes::from(text.to_owned()),
        ],
    )
    .with_prefix(Bytes::from_static(b"ferry"));
    relay(
        net,
        &Outbound::Relay {
            msg: Arc::new(notice),
            seq: None,
            time: Utc::now(),
            echo_of: None,
            buffers: Arc::from([]),
        },
        counters,
    );
}

fn close_clients(net: &mut Net, reason: &str) {
    for c in net.clients.drain(..) {
        let _ = c.tx.try_send(Outbound::Close {
            reason: reason.to_owned(),
        });
    }
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
