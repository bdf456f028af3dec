//! One network as the actor holds it: its live state, its upstream task and the
//! registered connection the actor drives itself (`link`), the clients attached to
//! it, and what the actor sends them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::irc::{Command, Message};
use crate::store::{Network, NetworkId, UserId};
use crate::upstream::{LinkStep, LiveLink, UpstreamCommand, UpstreamHandle};

use super::super::metrics::{ClientGauge, ConnGauge};
use super::super::routing::Router;
use super::super::state::NetState;
use super::super::watch::{self, Notice, Watchers};
use super::super::{ConnState, Counters, DownstreamId, Moving, NetworkChange, Outbound};
use super::client::PendingEcho;
use super::gap::{Fill, Rejoin};
use super::regain::Regain;

pub(super) struct Client {
    pub(super) id: DownstreamId,
    pub(super) tx: mpsc::Sender<Outbound>,
    /// Sent [`Outbound::Moving`] rather than a close when the user moves.
    pub(super) follows_moves: bool,
    /// Keeps member lists: gets member changes (see `Attach::members`).
    pub(super) members: bool,
    /// Counts the client in `ferry_downstream_clients` while it is attached.
    pub(super) _counted: ClientGauge,
}

/// Folded channel name → (name, channel key).
pub(super) type WantedChannels = HashMap<Vec<u8>, (Vec<u8>, Option<Vec<u8>>)>;

pub(super) struct Net {
    pub(super) config: Network,
    pub(super) state: NetState,
    pub(super) upstream: Option<UpstreamHandle>,
    /// The registered connection, read and written by the actor itself (handed over
    /// by the upstream task, handed back when it ends); `None` while the task dials,
    /// registers or waits to reconnect.
    pub(super) link: Option<Box<LiveLink>>,
    pub(super) clients: Vec<Client>,
    pub(super) router: Router,
    pub(super) echoes: VecDeque<PendingEcho>,
    /// Channels to be in (folded name → (name, key)); mirrors the store's
    /// `joined` buffers and survives disconnects.
    pub(super) wanted: WantedChannels,
    /// Set while our nick is not the configured one.
    pub(super) regain: Option<Regain>,
    /// The nick a client asked for, until the server confirms it.
    pub(super) requested_nick: Option<Vec<u8>>,
    /// We asked for our nick back; its refusal (433) is ours, not the clients'.
    pub(super) regain_pending: bool,
    /// Gap fills asked of the server (`CHATHISTORY BETWEEN`) and not yet answered.
    pub(super) fills: Vec<Fill>,
    /// Channels whose disconnect window is covered when they are rejoined.
    pub(super) rejoins: Vec<Rejoin>,
    /// Since when messages may be missing: set when a registered connection is
    /// lost (to when the actor last got a line from it, less `gap::READ_MARGIN`:
    /// a dead connection is noticed only at the ping timeout), or at the first
    /// registration after the actor's start to the network's newest stored line (a
    /// restart, a failover, a move); taken at the next registration, after which
    /// each wanted channel's window is covered with a gap fill or marker when it is
    /// rejoined (`rejoins`, `gap`). Every disconnect window of an upstream gets one.
    pub(super) down_since: Option<DateTime<Utc>>,
    /// When the actor last got a line from the current connection (or it
    /// registered). The link answers PINGs without handing them on, so the last
    /// frame read may be later: the window is then wider, never narrower.
    pub(super) last_read: Option<std::time::Instant>,
    /// The start of the last window covered that way: a planned move's own gap
    /// request (`Event::Gap`) inside it writes no second marker.
    pub(super) covered_from: Option<DateTime<Utc>>,
    /// Set at the actor's start: the first registration looks up the window an
    /// earlier session left (`down_since` from the newest stored line).
    pub(super) resumed: bool,
    /// Detached channels (folded name → what attaches them again): logged, not
    /// relayed (see `detach`).
    pub(super) detached: HashMap<Vec<u8>, super::detach::Detached>,
    /// The user's own away and Ferry's auto-away on this connection.
    pub(super) away: super::away::NetAway,
    /// The shared channel streams this connection is in (see `share`).
    pub(super) streams: super::share::NetStreams,
    /// This network's place in `ferry_upstreams` (see [`Net::conn_changed`]).
    conn_gauge: ConnGauge,
    /// The user and the node's IRC clients: state changes are announced to those
    /// with `soju.im/bouncer-networks-notify`, whichever network they are on.
    watch: (UserId, Arc<Watchers>),
    /// The state attributes last announced, so that a new attempt in the same
    /// state is not announced again.
    announced: Option<Vec<crate::irc::Tag>>,
}

impl Net {
    /// A network not connected yet, to be in `wanted`.
    pub(super) fn new(
        config: Network,
        state: NetState,
        wanted: WantedChannels,
        counters: &Arc<Counters>,
        watch: (UserId, Arc<Watchers>),
    ) -> Net {
        Net {
            conn_gauge: ConnGauge::new(counters, &state.conn),
            state,
            upstream: None,
            link: None,
            clients: Vec::new(),
            router: Router::default(),
            echoes: VecDeque::new(),
            wanted,
            regain: None,
            requested_nick: None,
            regain_pending: false,
            fills: Vec::new(),
            rejoins: Vec::new(),
            down_since: None,
            last_read: None,
            covered_from: None,
            resumed: false,
            watch,
            announced: None,
            away: super::away::NetAway::default(),
            detached: HashMap::new(),
            streams: super::share::NetStreams::new(config.id, &config.addr),
            config,
        }
    }

    /// Queues a line on the connection (paced by flood control); dropped while not
    /// registered (the rejoin at registration sends what matters again).
    pub(super) fn send_upstream(&mut self, msg: Message) {
        match &mut self.link {
            Some(link) => link.send(msg),
            None => {
                debug!(network = %self.config.name, command = %msg.command, "not registered: dropping line")
            }
        }
    }

    /// The link's connection ended: hand it back to the upstream task, which reports
    /// the disconnect and reconnects.
    pub(super) fn link_ended(&mut self, ended: crate::upstream::LinkEnded) {
        self.link = None;
        if let Some(up) = &self.upstream {
            up.link_ended(ended);
        }
    }

    /// Sends QUIT (on the link, waiting for the server to close within its grace) and
    /// waits briefly for the upstream task to end (then cancels it).
    pub(super) async fn quit_upstream(&mut self, reason: &str) {
        let link = self.link.take();
        if let Some(up) = self.upstream.take() {
            let cancel = up.cancel.clone();
            let reason = Bytes::copy_from_slice(reason.as_bytes());
            let quit = async move {
                match link {
                    Some(link) => up.link_ended(link.quit(reason).await),
                    None => {
                        let _ = up
                            .commands
                            .send(UpstreamCommand::Quit(Box::new(reason)))
                            .await;
                    }
                }
                let _ = up.task.await;
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), quit)
                .await
                .is_err()
            {
                cancel.cancel();
            }
        }
        self.state.disconnected(ConnState::Stopped);
        self.conn_changed();
    }

    /// Moves the network in `ferry_upstreams` to its connection's state and tells
    /// the attached clients (`Outbound::Network`); called wherever `state.conn`
    /// changes.
    pub(super) fn conn_changed(&mut self) {
        self.conn_gauge.set(&self.state.conn);
        let attrs = watch::state_attrs(&self.state.conn);
        if self.announced.as_ref() != Some(&attrs) {
            self.announced = Some(attrs.clone());
            let (user, watchers) = &self.watch;
            watchers.send(*user, Notice::network(self.config.id, attrs));
        }
        if self.clients.is_empty() {
            return;
        }
        let connected = matches!(self.state.conn, ConnState::Connected);
        let change = Outbound::Network(Arc::new(NetworkChange {
            state: self.state.conn.clone(),
            nick: self.state.nick.clone(),
            motd: self.state.motd.clone().filter(|_| connected),
        }));
        // Like a reply: a client whose queue is full misses it and is dropped
        // by the next relay.
        for c in &self.clients {
            let _ = c.tx.try_send(change.clone());
        }
    }

    /// Joins every wanted channel again, keyed ones first (`JOIN #a,#b k1`).
    pub(super) fn rejoin(&mut self) {
        let mut wanted: Vec<_> = self.wanted.values().cloned().collect();
        wanted.sort_by_key(|(name, key)| (key.is_none(), name.clone()));
        for chunk in wanted.chunks(10) {
            let names: Vec<&[u8]> = chunk.iter().map(|(n, _)| &n[..]).collect();
            let keys: Vec<&[u8]> = chunk.iter().filter_map(|(_, k)| k.as_deref()).collect();
            let mut params = vec![Bytes::from(names.join(&b","[..]))];
            if !keys.is_empty() {
                params.push(Bytes::from(keys.join(&b","[..])));
            }
            self.send_upstream(Message::new(Command::Join, params));
        }
    }

    /// Sends a line to every attached client; a client whose queue is full is
    /// too slow and is dropped (its task sees the channel close).
    pub(super) fn relay(&mut self, out: &Outbound, counters: &Counters) {
        self.send_to(out, counters, |_| true);
    }

    /// Sends what the lines just applied changed in the live state (see
    /// `user::change`) to the clients that want it, after the lines' relay. Member
    /// changes go only to clients that keep member lists.
    pub(super) fn send_changes(&mut self, counters: &Counters) {
        let changes = self.state.take_changes();
        // Changes are made only while some client listens (one attaching turns it
        // on, see `Actor::attach`); the last one gone turns it off here.
        self.state.listening = !self.clients.is_empty();
        if self.clients.is_empty() {
            return;
        }
        for change in changes {
            let members = change.is_members();
            let out = Outbound::State(Arc::new(change));
            self.send_to(&out, counters, |c| c.members || !members);
        }
    }

    /// Sends `out` to the clients `to` picks, as [`Net::relay`] does.
    fn send_to(&mut self, out: &Outbound, counters: &Counters, to: impl Fn(&Client) -> bool) {
        let network = &self.config.name;
        self.clients
            .retain(|c| match to(c).then(|| c.tx.try_send(out.clone())) {
                None => true,
                Some(Ok(())) => {
                    counters.relayed.inc();
                    true
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) => {
                    warn!(%network, client = c.id, "client too slow; detaching it");
                    counters.slow_clients.inc();
                    false
                }
                Some(Err(mpsc::error::TrySendError::Closed(_))) => false,
            });
    }

    /// A line for one client only, if it is still attached.
    pub(super) fn reply(&self, client: DownstreamId, out: Outbound) {
        if let Some(c) = self.clients.iter().find(|c| c.id == client) {
            let _ = c.tx.try_send(out);
        }
    }

    /// A NOTICE from `ferry` to every client (connected, disconnected, …); not stored.
    pub(super) fn notify_clients(&mut self, text: &str, counters: &Counters) {
        let notice = self.notice(text.to_owned());
        self.relay(
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

    /// A NOTICE from `ferry` to our nick.
    pub(super) fn notice(&self, text: impl Into<Bytes>) -> Message {
        Message::new(
            Command::Notice,
            [Bytes::from(self.state.nick.clone()), text.into()],
        )
        .with_prefix(Bytes::from_static(b"ferry"))
    }

    /// Tells every client the actor is done with it.
    /// Tells the clients that follow moves that the user is moving (see
    /// [`Outbound::Moving`]); returns how many were told (each acknowledges on
    /// `saved` once its position is stored). The others stay for
    /// [`Net::close_clients`].
    pub(super) fn move_clients(&mut self, reason: &str, saved: &mpsc::Sender<()>) -> usize {
        let moving = Arc::new(Moving {
            reason: reason.to_owned(),
            // What the clients have: a detached channel is not among them.
            channels: self
                .state
                .channels
                .iter()
                .filter(|(folded, _)| !self.detached.contains_key(*folded))
                .map(|(_, c)| c.name.clone())
                .collect(),
            saved: saved.clone(),
        });
        let (follow, stay): (Vec<Client>, Vec<Client>) =
            self.clients.drain(..).partition(|c| c.follows_moves);
        self.clients = stay;
        follow
            .into_iter()
            .filter(|c| c.tx.try_send(Outbound::Moving(moving.clone())).is_ok())
            .count()
    }

    pub(super) fn close_clients(&mut self, reason: &str) {
        for c in self.clients.drain(..) {
            let _ = c.tx.try_send(Outbound::Close {
                reason: reason.to_owned(),
            });
        }
    }
}

/// Polls the links of every network for their next step, starting after the one
/// that was ready last (`turn`), so a busy network does not starve the others.
/// Registers the wakers of all of them when none is ready. Cancel-safe.
pub(super) fn poll_links(
    nets: &mut HashMap<NetworkId, Box<Net>>,
    turn: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<(NetworkId, LinkStep)> {
    let start = *turn;
    let mut poll = |i: usize, net: &mut Box<Net>| {
        let link = net.link.as_mut()?;
        match link.poll_step(cx) {
            Poll::Ready(step) => Some((i, net.config.id, step)),
            Poll::Pending => None,
        }
    };
    let ready = nets
        .values_mut()
        .enumerate()
        .skip(start)
        .find_map(|(i, net)| poll(i, net))
        .or_else(|| {
            nets.values_mut()
                .enumerate()
                .take(start)
                .find_map(|(i, net)| poll(i, net))
        });
    match ready {
        Some((i, id, step)) => {
            *turn = i + 1;
            Poll::Ready((id, step))
        }
        None => Poll::Pending,
    }
}
