//! Parking a user: every plaintext upstream stops at one barrier and yields its
//! parts, with the live state the actor needs to carry on without the network; a
//! new actor resumes from them (see `upstream::park` for one connection).
//!
//! The barrier: the actor drives its registered connections itself (their
//! `upstream::LiveLink`s), so it parks each at once: every line the link had cut
//! was handled already, what it had read and not cut goes with the parts, what the
//! server sends later waits in the socket. It asks the upstream tasks of networks not
//! registered (dialling, registering, backing off) too, and until all have answered
//! it goes on handling what they report. Then it flushes the writer: each line read
//! before the barrier is stored and relayed by this actor, each line after it by the
//! resumed one, none twice. Upstreams that
//! cannot be parked (TLS, not registered) are QUIT as a restart does and listed in
//! [`UserPark::reconnect`]: the resumed actor connects them again through the
//! limiter.
//!
//! Attached clients get [`Outbound::Park`] after the last line relayed before the
//! barrier: an IRC client on plain TCP flushes, stops reading and hands back its
//! socket, the bytes it read and did not parse, its capabilities and its position
//! ([`ClientParked`]); a websocket or a TLS client is closed (a websocket resumes from
//! its own last id; a TLS client reconnects). The resumed actor attaches the parked
//! clients before it handles anything (`ParkedUser::attach`), so they miss nothing.
//!
//! Lines clients sent that this actor had not handled when it took the park (queued
//! behind it, or sent until each client saw [`Outbound::Park`]) are carried, in
//! order: a parked IRC client's go back in front of its unparsed bytes
//! ([`ClientPark::unread`]), so its resumed connection reads them first; the others'
//! (a websocket's `send`, a client closed at the barrier) in [`UserPark::pending`],
//! which the resumed actor handles once it has attached the parked clients.
//!
//! Rejoin windows (channels not yet rejoined after a reconnect, `NetPark::rejoins`)
//! are carried with the time they have left. Not carried: pending gap fills,
//! labelled replies in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::irc::ISupport;
use crate::store::{NetworkId, Seq, UserId};
use crate::upstream::{self, NotParked, ParkedUpstream, UpstreamCommand, UpstreamPark};

use super::super::state::Channel;
use super::super::{Attach, Attached, ConnState, DownstreamId, Event, Outbound, UserError};
use super::gap::{Rejoin, RejoinPark};
use super::regain::Regain;
use super::Actor;

/// When set (milliseconds), an actor waits this long after it took its park before
/// parking (tests: lines clients send at the barrier queue up behind the park).
pub const PARK_DELAY_ENV: &str = "FERRY_UPGRADE_PARK_DELAY_MS";

fn park_delay() -> Option<std::time::Duration> {
    let ms = std::env::var(PARK_DELAY_ENV).ok()?.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The current version of [`UserPark`]; a resume refuses any other.
pub const USER_PARK_VERSION: u32 = 1;

/// A parked user: its state (serialisable) and its sockets, carried beside it: the
/// upstream ones by network, the clients' in the order of [`UserPark::clients`].
#[derive(Default)]
pub struct ParkedUser {
    pub state: UserPark,
    pub sockets: HashMap<NetworkId, std::net::TcpStream>,
    pub client_sockets: Vec<std::net::TcpStream>,
    /// The limiter's permits of the parked upstreams, by network, while the parts stay
    /// in this process (see [`ParkedUpstream::permit`]): a resume here keeps them; a
    /// new process adopts the slots from [`UpstreamPark::limits_key`] instead.
    pub permits: HashMap<NetworkId, crate::limits::Permit>,
    /// Clients to attach when the resumed actor starts, before it handles anything
    /// (filled by whoever resumes the clients: `downstream::park`).
    pub attach: Vec<(Attach, oneshot::Sender<Result<Attached, UserError>>)>,
    /// The user's rows the resumer read for it, with many users' in one go
    /// (`Store::start_rows`): the resumed actor starts from them instead of reading
    /// its owner, networks, buffers and away settings itself. `None`: it reads them.
    pub rows: Option<crate::store::StartRows>,
}

impl std::fmt::Debug for ParkedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedUser")
            .field("state", &self.state)
            .field("sockets", &self.sockets)
            .field("client_sockets", &self.client_sockets)
            .field("permits", &self.permits)
            .field("attach", &self.attach.len())
            .field("rows", &self.rows.is_some())
            .finish()
    }
}

/// Sent to every attached client at the barrier (see [`Outbound::Park`]).
#[derive(Debug)]
pub struct ParkClients {
    /// Where an IRC client hands back its parts.
    pub parked: mpsc::Sender<ClientParked>,
}

/// A parked IRC client: its state and its socket.
#[derive(Debug)]
pub struct ClientParked {
    /// The client's id with the parking actor: the lines it sent that the actor had
    /// not handled are put back in front of its `state.unread`.
    pub id: DownstreamId,
    pub state: ClientPark,
    pub socket: std::net::TcpStream,
}

/// The id lines carried in [`UserPark::pending`] are handled under: no client has it
/// (ids start at 1), so replies to them go nowhere and their echo reaches everyone.
const NO_CLIENT: DownstreamId = 0;

/// A line a client sent that the parking actor had not handled, and whose client
/// does not move with the user (a websocket, a TLS client, one too slow to park).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLine {
    pub network: NetworkId,
    /// The IRC line without CR LF, as the client sent it.
    #[serde(with = "crate::upgrade::bytes")]
    pub line: Vec<u8>,
}

/// What an attached IRC client carries across a park.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPark {
    pub network_id: NetworkId,
    pub network_name: String,
    pub client_name: String,
    /// The client's address (BouncerServ's password checks count against it).
    pub peer: std::net::IpAddr,
    /// Capabilities the client enabled, and whether it said `CAP LS 302`.
    pub caps: Vec<String>,
    pub cap_302: bool,
    /// The highest message id the client has been given: its position.
    pub written: Option<Seq>,
    /// Bytes read from the client and not yet cut into lines.
    #[serde(with = "crate::upgrade::bytes")]
    pub unread: Vec<u8>,
    /// Detached channels (folded names) as this client knows them.
    #[serde(with = "crate::upgrade::bytes::list")]
    pub detached: Vec<Vec<u8>>,
    /// The client was on TLS and its socket was switched to kernel TLS at the park
    /// (`crate::ktls`): it is read and written through `crate::ktls::Stream`.
    /// `unread` then ends with the plaintext rustls had decrypted and not yet given out.
    #[serde(default)]
    pub ktls: bool,
}

/// What a user's actor carries across a park.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserPark {
    pub version: u32,
    pub user_id: UserId,
    /// The ownership epoch the parked actor ran under (`None` from a Ferry before
    /// this field): resumed at the same epoch, [`UserPark::last_seq`] is where the
    /// new actor numbers from without asking the store.
    #[serde(default)]
    pub epoch: Option<i64>,
    /// The newest message id assigned (every line before the barrier is committed).
    pub last_seq: Seq,
    /// Networks whose connection was parked.
    pub networks: Vec<NetPark>,
    /// Networks whose connection could not be parked (TLS, not registered): QUIT,
    /// to be connected again.
    pub reconnect: Vec<NetworkId>,
    /// Parked IRC clients (their sockets in [`ParkedUser::client_sockets`]).
    #[serde(default)]
    pub clients: Vec<ClientPark>,
    /// Clients that were closed instead (websockets, TLS, too slow to answer).
    #[serde(default)]
    pub clients_closed: usize,
    /// Lines of clients that were closed, sent before they closed and not yet
    /// handled, in the order they were sent (see the module's doc).
    #[serde(default)]
    pub pending: Vec<PendingLine>,
}

/// One parked network: what registration told us and what happened since.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetPark {
    pub network_id: NetworkId,
    #[serde(with = "crate::upgrade::bytes")]
    pub nick: Vec<u8>,
    pub caps: BTreeSet<String>,
    pub isupport: ISupport,
    #[serde(with = "crate::upgrade::bytes")]
    pub user_modes: Vec<u8>,
    #[serde(with = "crate::upgrade::bytes::opt")]
    pub userhost: Option<Vec<u8>>,
    #[serde(with = "crate::upgrade::bytes::opt_list")]
    pub motd: Option<Vec<Vec<u8>>>,
    #[serde(with = "crate::upgrade::bytes::opt")]
    pub away: Option<Vec<u8>>,
    /// Ferry's auto-away is set on this connection.
    pub auto_away: bool,
    pub channels: Vec<ChannelPark>,
    /// The connection itself (its socket is in [`ParkedUser::sockets`]).
    pub upstream: UpstreamPark,
    /// Channels not yet rejoined after a reconnect, whose disconnect window is covered
    /// when they are.
    #[serde(default)]
    pub rejoins: Vec<RejoinPark>,
}

/// One channel we are in, with its members as our connection was told them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelPark {
    #[serde(with = "crate::upgrade::bytes")]
    pub name: Vec<u8>,
    #[serde(with = "crate::upgrade::bytes::opt")]
    pub topic: Option<Vec<u8>>,
    #[serde(with = "crate::upgrade::bytes::opt_meta")]
    pub topic_meta: Option<(Vec<u8>, i64)>,
    /// (prefixes, nick) of every member.
    #[serde(with = "crate::upgrade::bytes::pairs")]
    pub members: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why parked parts could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum UserResumeError {
    #[error("parked user state version {0} is not {USER_PARK_VERSION}")]
    Version(u32),
    #[error("parked state is for user {0}, not {1}")]
    WrongUser(UserId, UserId),
}

impl Actor {
    /// Parks every registered plaintext upstream at one barrier (see the module's
    /// doc), QUITs the others, closes the clients and flushes. The actor ends after.
    pub(super) async fn park(&mut self) -> ParkedUser {
        if let Some(delay) = park_delay() {
            tokio::time::sleep(delay).await;
        }
        let mut waiting: Vec<(
            NetworkId,
            oneshot::Receiver<Result<ParkedUpstream, NotParked>>,
        )> = Vec::new();
        let mut answers: HashMap<NetworkId, Result<ParkedUpstream, NotParked>> = HashMap::new();
        for net in self.nets.values_mut() {
            let Some(up) = &net.upstream else { continue };
            // A registered connection is the actor's own: it parks here, at once.
            // Every line it had cut was handled already (the actor handles each
            // as it reads it); what it had read and not cut goes with the parts.
            if let Some(link) = net.link.take() {
                let answer = match link.park() {
                    Ok(parked) => {
                        up.link_parked();
                        Ok(parked)
                    }
                    Err((why, link)) => {
                        net.link = link.map(Box::new);
                        Err(why)
                    }
                };
                answers.insert(net.config.id, answer);
                continue;
            }
            // Not registered: its task answers (it has nothing to carry).
            let (tx, rx) = oneshot::channel();
            // `send`, not `try_send`: the park must not be lost to a full queue, and
            // the task drains its queue while it runs.
            if up.commands.send(UpstreamCommand::Park(tx)).await.is_ok() {
                waiting.push((net.config.id, rx));
            }
        }
        let all = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(id, rx)| async move { (id, rx.await.unwrap_or(Err(NotParked::Gone))) }),
        );
        tokio::pin!(all);
        // Lines clients send from here on are carried, not handled (see the module's
        // doc): their network's connection is stopping.
        let mut unhandled: Vec<(NetworkId, DownstreamId, Bytes)> = Vec::new();
        // Until every upstream has answered, keep handling what they report.
        loop {
            tokio::select! {
                biased;
                done = &mut all => {
                    answers.extend(done);
                    break;
                }
                Some((network, event)) = self.up_rx.recv() => self.upstream_event(network, event).await,
                Some(event) = self.events.recv() => keep_line(&mut unhandled, event),
            }
        }
        let mut state = UserPark {
            version: USER_PARK_VERSION,
            user_id: self.id,
            epoch: Some(self.owner.fence.epoch),
            ..UserPark::default()
        };
        let (parked_clients, told) = self.park_clients(&mut unhandled).await;
        // Every client that answered has stopped sending: what it sent is queued.
        while let Ok(event) = self.events.try_recv() {
            keep_line(&mut unhandled, event);
        }
        state.clients_closed = told - parked_clients.len();
        let carried = unhandled.len();
        let (clients, client_sockets, pending) = carry_lines(parked_clients, unhandled);
        if carried > 0 {
            info!(user = %self.name, lines = carried, of_closed_clients = pending.len(),
                "parking: carrying client lines not yet handled");
        }
        state.clients = clients;
        state.pending = pending;
        let mut sockets = HashMap::new();
        let mut permits = HashMap::new();
        for net in self.nets.values_mut() {
            match answers.remove(&net.config.id) {
                Some(Ok(parked)) => {
                    // The task has ended by itself; the handle goes.
                    net.upstream = None;
                    let s = &net.state;
                    let channels = s
                        .channels
                        .values()
                        .map(|c| ChannelPark {
                            name: c.name.clone(),
                            topic: c.topic.clone(),
                            topic_meta: c.topic_meta.clone(),
                            members: c.roster.snapshot(),
                        })
                        .collect();
                    state.networks.push(NetPark {
                        network_id: net.config.id,
                        nick: s.nick.clone(),
                        caps: (*s.caps).clone(),
                        isupport: (*s.isupport).clone(),
                        user_modes: s.user_modes.clone(),
                        userhost: s.userhost.clone(),
                        motd: s
                            .motd
                            .as_ref()
                            .map(|m| m.iter().map(|l| l.to_vec()).collect()),
                        away: s.away.clone(),
                        auto_away: net.away.auto,
                        channels,
                        upstream: parked.state,
                        rejoins: net.rejoins.iter().map(|r| r.park()).collect(),
                    });
                    sockets.insert(net.config.id, parked.socket);
                    if let Some(p) = parked.permit {
                        permits.insert(net.config.id, p);
                    }
                }
                Some(Err(why)) => {
                    info!(user = %self.name, network = %net.config.name, %why, "not parked: reconnecting after the handoff");
                    net.quit_upstream(&self.config.quit_message).await;
                    state.reconnect.push(net.config.id);
                }
                None => {}
            }
        }
        if let Err(e) = self.writer.flush().await {
            warn!(user = %self.name, error = %e, "parking: flushing the backlog failed");
        }
        state.last_seq = self.recorder.last_seq;
        // An upgrade parks thousands: the barrier logs the summary.
        debug!(user = %self.name, parked = state.networks.len(), reconnect = state.reconnect.len(),
            clients = state.clients.len(), clients_closed = state.clients_closed, "user parked");
        ParkedUser {
            state,
            sockets,
            client_sockets,
            permits,
            attach: Vec::new(),
            rows: None,
        }
    }

    /// Tells every attached client to park (after every line relayed before the
    /// barrier) and collects the parts of those that can, within
    /// [`super::CLIENTS_SAVE_WAIT`], keeping the lines clients send meanwhile in
    /// `unhandled` (a client blocked on a full queue could not answer otherwise).
    /// Returns them and how many clients there were.
    async fn park_clients(
        &mut self,
        unhandled: &mut Vec<(NetworkId, DownstreamId, Bytes)>,
    ) -> (Vec<ClientParked>, usize) {
        let (tx, mut rx) = mpsc::channel(64);
        let park = Outbound::Park(Arc::new(ParkClients { parked: tx }));
        let mut told = 0;
        for net in self.nets.values_mut() {
            for c in net.clients.drain(..) {
                told += 1;
                // A client whose queue is full is too slow: dropped, it closes.
                let _ = c.tx.try_send(park.clone());
            }
        }
        drop(park);
        let mut clients = Vec::new();
        let deadline = tokio::time::sleep(super::CLIENTS_SAVE_WAIT);
        tokio::pin!(deadline);
        // Ends when every client has answered or dropped its copy of the request.
        loop {
            tokio::select! {
                biased;
                p = rx.recv() => match p {
                    Some(p) => clients.push(p),
                    None => break,
                },
                Some(event) = self.events.recv() => keep_line(unhandled, event),
                () = &mut deadline => {
                    warn!(user = %self.name, "parking: some clients did not answer in time; they are closed");
                    break;
                }
            }
        }
        self.client_detached();
        (clients, told)
    }

    /// Handles the lines carried in [`UserPark::pending`] (after the parked clients
    /// are attached), as lines of a client that is gone.
    pub(super) async fn handle_pending(&mut self, pending: Vec<PendingLine>) {
        for p in pending {
            match crate::irc::Message::parse(Bytes::from(p.line)) {
                Ok(msg) => self.client_line(p.network, NO_CLIENT, msg).await,
                Err(e) => {
                    warn!(user = %self.name, error = %e, "a carried client line does not parse")
                }
            }
        }
    }

    /// Attaches clients taken over with a parked user (see [`ParkedUser::attach`]).
    pub(super) fn attach_resumed(
        &mut self,
        attach: Vec<(Attach, oneshot::Sender<Result<Attached, UserError>>)>,
    ) {
        for (a, reply) in attach {
            let attached = self.attach(a);
            if attached.is_ok() {
                self.client_attached();
            }
            let _ = reply.send(attached);
        }
    }

    /// Takes over a parked network (called by `start` instead of connecting it): its
    /// state as it was at the barrier, its upstream task on the parked socket, holding
    /// the connection's `permit` when it stayed in this process (else its slot is
    /// adopted by `upstream::resume`).
    pub(super) fn resume_network(
        &mut self,
        park: NetPark,
        socket: std::net::TcpStream,
        permit: Option<crate::limits::Permit>,
    ) -> bool {
        let Some(mut net) = self.nets.remove(&park.network_id) else {
            return false;
        };
        let registration = upstream::Registration {
            nick: park.nick,
            isupport: park.isupport,
            caps: park.caps,
            server_name: Vec::new(),
            user_modes: park.user_modes,
            userhost: park.userhost,
            motd: park
                .motd
                .map(|m| m.into_iter().map(bytes::Bytes::from).collect()),
            account: None,
        };
        net.state.registered(&registration);
        net.state.away = park.away;
        net.away.auto = park.auto_away;
        for c in park.channels {
            let folded = net.state.fold(&c.name);
            let roster = net.state.roster_of(&folded, &c.members);
            net.state.channels.insert(
                folded,
                Channel {
                    name: c.name,
                    topic: c.topic,
                    topic_meta: c.topic_meta,
                    roster,
                    names_in_progress: false,
                },
            );
        }
        let caps = &net.state.caps;
        net.router.reset(
            ["labeled-response", "batch", "message-tags"]
                .iter()
                .all(|c| caps.contains(*c)),
        );
        net.regain = (!net.state.is_me(net.config.nick.as_bytes())).then(Regain::new);
        net.rejoins = park
            .rejoins
            .into_iter()
            .map(|r| {
                let key = net.state.fold(&r.chan);
                Rejoin::resume(r, key)
            })
            .collect();
        net.last_read = Some(std::time::Instant::now());
        // Nothing was missed: the connection never went away.
        net.resumed = false;
        let cfg = self.upstream_config(&net);
        let parked = ParkedUpstream {
            state: park.upstream,
            socket,
            permit,
        };
        let ok = match upstream::resume(cfg, parked, self.up_tx.clone(), self.cancel.child_token())
        {
            Ok((handle, link)) => {
                net.upstream = Some(handle);
                net.link = Some(Box::new(link));
                net.state.conn = ConnState::Connected;
                true
            }
            Err(e) => {
                warn!(user = %self.name, network = %net.config.name, error = %e, "could not resume the parked connection: reconnecting");
                net.state.disconnected(ConnState::Stopped);
                self.start_upstream(&mut net);
                false
            }
        };
        net.conn_changed();
        self.nets.insert(park.network_id, net);
        ok
    }
}

/// Keeps a client's line that arrives while parking (other events are dropped, as
/// when the actor ends: their senders see it gone).
fn keep_line(unhandled: &mut Vec<(NetworkId, DownstreamId, Bytes)>, event: Event) {
    if let Event::FromClient { network, id, msg } = event {
        unhandled.push((network, id, msg.to_bytes()));
    }
}

/// Gives each parked client back the lines it sent that were not handled, in front of
/// its unparsed bytes; the other clients' lines become [`UserPark::pending`].
fn carry_lines(
    parked: Vec<ClientParked>,
    unhandled: Vec<(NetworkId, DownstreamId, Bytes)>,
) -> (Vec<ClientPark>, Vec<std::net::TcpStream>, Vec<PendingLine>) {
    let mut ahead: HashMap<DownstreamId, Vec<u8>> = HashMap::new();
    let mut pending = Vec::new();
    for (network, id, line) in unhandled {
        if parked.iter().any(|p| p.id == id) {
            let bytes = ahead.entry(id).or_default();
            bytes.extend_from_slice(&line);
            bytes.extend_from_slice(b"\r\n");
        } else {
            pending.push(PendingLine {
                network,
                line: line.to_vec(),
            });
        }
    }
    let (mut clients, mut sockets) = (Vec::new(), Vec::new());
    for p in parked {
        let mut state = p.state;
        if let Some(mut bytes) = ahead.remove(&p.id) {
            bytes.extend_from_slice(&state.unread);
            state.unread = bytes;
        }
        clients.push(state);
        sockets.push(p.socket);
    }
    (clients, sockets, pending)
}

/// Checks parked state before a resume.
pub(super) fn check(state: &UserPark, user: UserId) -> Result<(), UserResumeError> {
    if state.version != USER_PARK_VERSION {
        return Err(UserResumeError::Version(state.version));
    }
    if state.user_id != user {
        return Err(UserResumeError::WrongUser(state.user_id, user));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(id: DownstreamId, unread: &[u8]) -> (ClientParked, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let state = ClientPark {
            network_id: 1,
            network_name: "n".into(),
            client_name: "c".into(),
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            caps: Vec::new(),
            cap_302: false,
            written: None,
            unread: unread.to_vec(),
            detached: Vec::new(),
            ktls: false,
        };
        (ClientParked { id, state, socket }, l)
    }

    /// A parked client's unhandled lines go back in front of its unparsed bytes, in
    /// the order it sent them; a closed client's become `pending`, in order too.
    #[test]
    fn unhandled_lines_go_back_to_their_client_or_to_pending() {
        let (a, _la) = parked(3, b"PRIVMSG #c :par");
        let (b, _lb) = parked(5, b"");
        let line = |s: &str| Bytes::from(s.to_owned());
        let unhandled = vec![
            (1, 3, line("PRIVMSG #c :one")),
            (1, 9, line("PRIVMSG #c :from a websocket")),
            (1, 3, line("@label=x PRIVMSG #c :two")),
            (2, 9, line("PRIVMSG #d :again")),
        ];
        let (clients, sockets, pending) = carry_lines(vec![a, b], unhandled);
        assert_eq!(sockets.len(), 2);
        assert_eq!(
            String::from_utf8(clients[0].unread.clone()).unwrap(),
            "PRIVMSG #c :one\r\n@label=x PRIVMSG #c :two\r\nPRIVMSG #c :par"
        );
        assert!(clients[1].unread.is_empty());
        assert_eq!(
            pending,
            vec![
                PendingLine {
                    network: 1,
                    line: b"PRIVMSG #c :from a websocket".to_vec()
                },
                PendingLine {
                    network: 2,
                    line: b"PRIVMSG #d :again".to_vec()
                },
            ]
        );
    }
}
