//! The user actor: one tokio task per user, the only owner of its session state.
//!
//! Upstream tasks, downstream connections and admin requests talk to it
//! through [`UserHandle`] (a bounded channel of [`Event`]s; requests that need
//! an answer carry a `oneshot`). Invariant: only the user task changes the
//! user's session state (nick, channels, members, attached clients, message
//! ids). It assigns every stored message its per-user sequence number (the
//! public message id), hands it to the store's group-commit writer, and fans
//! it out to the attached clients.

mod actor;
pub mod change;
mod clock;
mod config;
mod metrics;
pub mod registry;
pub mod resume;
pub mod roster;
mod routing;
mod starts;
mod state;
pub mod streams;
pub mod watch;

pub use actor::{
    display_text, stored_kind, ChannelPark, ClientPark, ClientParked, DetachError, NetPark,
    ParkClients, ParkedUser, PendingLine, UserPark, UserResumeError, USER_PARK_VERSION,
};
pub use change::{GapMarker, MemberChange, StateChange};
pub use clock::SeqClock;
pub use config::UserConfig;
pub use metrics::{Counters, StateLabel};
pub use registry::Users;
pub use streams::{Handing, Stream, Streams};
pub use watch::{Notice, Watchers};

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::irc::{ISupport, Message};
use tokio_util::sync::CancellationToken;

use crate::cluster::Lease;
use crate::store::{Fence, Network, NetworkId, Seq, Store, UserId, Writer};

/// Identifies one attached client within its user actor.
pub type DownstreamId = u64;

/// How the upstream connection of a network is doing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnState {
    /// Waiting for the limiter or dialling (TCP, then TLS); `last_error` says why
    /// the previous attempt failed.
    Connecting {
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    /// Connected (TCP and TLS up), registering: CAP, SASL, NICK/USER, before
    /// `001` and the MOTD. `last_error` as for `Connecting`.
    Registering {
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    Connected,
    /// The connection failed or ended: `reason`, and when the next attempt is due
    /// while `retrying` (backing off).
    Disconnected {
        reason: String,
        retrying: bool,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339")]
        retry_at: Option<DateTime<Utc>>,
    },
    Stopped,
}

/// A time as RFC 3339 text with milliseconds (`2026-01-02T03:04:05.678Z`).
fn rfc3339<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => s.serialize_none(),
    }
}

impl ConnState {
    /// The stage in words (`connecting`, `registering`, `connected`, `backing
    /// off`, …) and the
    /// details people need: the last error, when the next attempt is due.
    pub fn describe(&self) -> String {
        match self {
            ConnState::Connecting {
                attempt,
                last_error: None,
            } => format!("connecting (attempt {attempt})"),
            ConnState::Connecting {
                attempt,
                last_error: Some(e),
            } => format!("connecting (attempt {attempt}; last error: {e})"),
            ConnState::Registering {
                attempt,
                last_error: None,
            } => format!("registering (attempt {attempt})"),
            ConnState::Registering {
                attempt,
                last_error: Some(e),
            } => format!("registering (attempt {attempt}; last error: {e})"),
            ConnState::Connected => "connected".to_owned(),
            ConnState::Disconnected {
                reason,
                retrying: true,
                retry_at,
            } => match retry_at {
                Some(at) => format!(
                    "backing off ({reason}); next attempt at {}",
                    at.format("%H:%M:%S UTC")
                ),
                None => format!("backing off ({reason})"),
            },
            ConnState::Disconnected {
                reason,
                retrying: false,
                ..
            } => format!("disconnected ({reason}); not retrying"),
            ConnState::Stopped => "stopped".to_owned(),
        }
    }
}

/// One joined channel as a client sees it on attach.
#[derive(Clone, Debug)]
pub struct ChannelView {
    pub name: Vec<u8>,
    pub topic: Option<Vec<u8>>,
    /// Who set the topic and when (`333`), if known.
    pub topic_meta: Option<(Vec<u8>, i64)>,
    /// Members with their prefix symbols, highest first (`@+`), e.g. `(b"@", b"alice")`.
    pub members: Vec<(Vec<u8>, Vec<u8>)>,
    /// The user detached the channel: it is logged but its lines are not relayed,
    /// and IRC clients are not told they are in it (see [`ChannelChange`]).
    pub detached: bool,
}

/// A channel was detached or attached again: IRC clients get a `PART` for it, or
/// its `JOIN`, topic and names and the lines stored since it was detached;
/// websockets a `channel` event.
#[derive(Clone, Debug)]
pub struct ChannelChange {
    pub channel: ChannelView,
    pub reattach_on: crate::store::ReattachOn,
    /// Our `nick!user@host` (or nick) for the `PART`/`JOIN` line.
    pub own_prefix: Vec<u8>,
    /// Attached again: replay the channel's lines after this id (when it was
    /// detached; `None` after a restart: the client's own position holds).
    pub since: Option<Seq>,
    /// The newest id assigned when it was attached again: the replay goes up to
    /// here (later lines of the channel are relayed). The line that attached it (a
    /// highlight) has this id and is relayed right after the change: a client drops
    /// it when the replay had it already.
    pub until: Seq,
}

/// What a downstream needs to present a network to a client on attach.
#[derive(Clone, Debug)]
pub struct NetworkView {
    pub network_id: NetworkId,
    pub network_name: String,
    pub state: ConnState,
    /// Our current nick upstream (or the configured one while disconnected).
    pub nick: Vec<u8>,
    /// The upstream's ISUPPORT (defaults while never connected).
    pub isupport: ISupport,
    /// Capabilities the upstream acknowledged.
    pub upstream_caps: BTreeSet<String>,
    /// Our user modes (without `+`), as the server reports them.
    pub user_modes: Vec<u8>,
    /// Our `user@host` upstream, when known: burst JOINs carry `nick!user@host`.
    pub userhost: Option<Vec<u8>>,
    /// The network's MOTD (`372` texts), passed on in the burst; `None`: `422`.
    pub motd: Option<Arc<[bytes::Bytes]>>,
    pub away: Option<Vec<u8>>,
    pub channels: Vec<ChannelView>,
}

/// A client asking to attach to one of the user's networks.
pub struct Attach {
    pub network: NetworkId,
    /// The client's name for per-client backlog positions (`laptop` in
    /// `alice@laptop/test`), or `default`.
    pub client_name: String,
    /// Where the actor sends this client's lines. Bounded: a client that lets
    /// it fill up is detached as too slow.
    pub tx: mpsc::Sender<Outbound>,
    /// An IRC client, which follows a move on its own socket (it gets
    /// [`Outbound::Moving`]); a websocket reconnects to the new owner by itself.
    pub follows_moves: bool,
    /// The client keeps member lists: it gets the member changes among the
    /// [`Outbound::State`] events (websockets); IRC clients read the lines instead.
    pub members: bool,
}

/// The answer to [`Attach`].
pub struct Attached {
    pub id: DownstreamId,
    pub view: NetworkView,
    /// The newest message id assigned so far: backlog up to here is replayed
    /// from the store, anything newer arrives live through `tx`.
    pub last_seq: Seq,
    /// The actor's ownership fence: the client's position is saved with it.
    pub fence: Fence,
}

/// Lines from the actor to one attached client.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A line to relay. `seq` is its message id when it was stored; `time` is
    /// its server time (or receive time). `echo_of` names the client that
    /// sent it, which only sees it again if it negotiated `echo-message`.
    Relay {
        msg: Arc<Message>,
        seq: Option<Seq>,
        time: DateTime<Utc>,
        echo_of: Option<DownstreamId>,
        /// The buffers the line was stored in, in id order: the `i`-th has
        /// id `seq + i`. Empty when it was not stored. (A QUIT or NICK is
        /// stored once per channel the person shared with us.)
        buffers: Arc<[Vec<u8>]>,
    },
    /// A line for this client only (a reply to its own query), sent as is.
    Reply(Message),
    /// The network's live state changed (see [`StateChange`]): sent after the
    /// relay of the line that changed it.
    State(Arc<StateChange>),
    /// A channel was detached or attached again (see [`ChannelChange`]).
    Channel(Arc<ChannelChange>),
    /// The network's connection changed (see [`NetworkChange`]). Websockets show
    /// it; IRC clients ignore it (they get the actor's NOTICEs).
    Network(Arc<NetworkChange>),
    /// The actor is done with this client: send `ERROR :reason` and close.
    Close { reason: String },
    /// The user is moving to another node (a migration's release). An IRC client
    /// saves its backlog position (the ownership fence still holds), acknowledges on
    /// `saved`, and follows the user to its new owner on the same socket (see
    /// `downstream::proxy`); a websocket is told where it moved, as for `Close`.
    Moving(Arc<Moving>),
    /// The user is parked (see `actor::park`): an IRC client on plain TCP flushes,
    /// stops reading and hands its parts back on `parked`; others close.
    Park(Arc<ParkClients>),
}

/// The `ERROR` a client gets when its user moves to another node and it does not
/// follow on the same socket (a websocket, or a client proxied from another Ferry
/// node, which follows by itself when it reads exactly this).
pub const MOVING: &str = "your session is moving to another Ferry node; reconnect to continue";

/// What a client needs to follow its user to the new owner without the client
/// noticing: the channels it is in (their JOINs in the new owner's burst are
/// dropped), and where to say its position is saved.
#[derive(Debug)]
pub struct Moving {
    pub reason: String,
    /// Joined channels of the client's network, as the network spells them.
    pub channels: Vec<Vec<u8>>,
    pub saved: tokio::sync::mpsc::Sender<()>,
}

/// A network's connection as it just changed: every change of stage (connecting,
/// registering, connected, disconnected, stopped) reaches the attached clients.
#[derive(Clone, Debug)]
pub struct NetworkChange {
    pub state: ConnState,
    /// Our nick upstream now (the configured one while not connected).
    pub nick: Vec<u8>,
    /// With `Connected`: the MOTD of the registration that just finished (`372`
    /// texts), if the server had one.
    pub motd: Option<Arc<[bytes::Bytes]>>,
}

/// Messages to a user actor.
///
/// Large payloads are boxed: every actor's queue allocates its first block of slots
/// up front, so the size of this type is paid per user even when idle.
pub enum Event {
    Attach(Box<Attach>, oneshot::Sender<Result<Attached, UserError>>),
    Detach {
        network: NetworkId,
        id: DownstreamId,
    },
    /// A line from an attached client, to act on or forward upstream.
    FromClient {
        network: NetworkId,
        id: DownstreamId,
        msg: Box<Message>,
    },
    /// Start a network that was just added to the store.
    AddNetwork(Box<Network>, oneshot::Sender<anyhow::Result<()>>),
    /// Disconnect (QUIT) and forget a network that is being removed.
    RemoveNetwork(NetworkId, oneshot::Sender<()>),
    /// The live state of every network, for `network list` and the API.
    Status(oneshot::Sender<Vec<NetworkStatus>>),
    /// Resolves once every message stored so far is committed.
    Flush(oneshot::Sender<bool>),
    /// Cover a disconnect window with history or gap markers (see [`Gap`]).
    Gap(Box<Gap>),
    /// Detach or attach a channel, or set what attaches it (see [`ChannelAttach`]).
    ChannelAttach(Box<ChannelAttach>),
    /// The user changed their auto-away settings (stored already).
    AwaySettings(Box<crate::store::AwaySettings>),
    /// Release the session: QUIT upstream, close clients, flush the backlog,
    /// and return what another node needs to take over. The actor ends.
    Stop {
        quit_message: Option<String>,
        reply: oneshot::Sender<UserSnapshot>,
    },
    /// Park the session at one barrier (see `actor::park`): plaintext upstreams
    /// stop reading and yield their parts, the others QUIT; clients closed; the
    /// backlog flushed. The actor ends.
    Park(oneshot::Sender<ParkedUser>),
}

/// Cover the disconnect window `from..to` in every joined channel of every
/// network: where the server acknowledged `draft/chathistory` (or `chathistory`)
/// and `batch`, ask it (`CHATHISTORY BETWEEN`) and store what it returns that the
/// backlog lacks (by msgid, else by time and bytes; see `actor::gap`); elsewhere, or where the server fails or stays silent, write a gap marker (kind
/// `GAP`, a NOTICE from `*ferry*` saying `text`) and relay it to attached clients.
/// Answers with the networks: `name` (marked) or `name:chathistory` (asked).
pub struct Gap {
    pub text: String,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub reply: oneshot::Sender<Vec<String>>,
}

/// Detach (`detached: Some(true)`) or attach a channel, and/or set what attaches it by
/// itself; stored and told to the network's clients by the actor.
pub struct ChannelAttach {
    pub network: NetworkId,
    pub channel: Vec<u8>,
    pub detached: Option<bool>,
    pub reattach_on: Option<crate::store::ReattachOn>,
    pub reply: oneshot::Sender<Result<(), DetachError>>,
}

/// One network's live state, as admin commands and the API show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NetworkStatus {
    pub network_id: NetworkId,
    pub name: String,
    #[serde(flatten)]
    pub state: ConnState,
    pub nick: String,
    pub channels: Vec<String>,
    pub clients: usize,
}

/// What a released session hands to the node that adopts it. Everything in
/// it is also durable in the store; the snapshot saves a round of queries
/// and records live details (nick, away) as they were at release.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UserSnapshot {
    pub user_id: UserId,
    pub last_seq: Seq,
    pub networks: Vec<NetworkSnapshot>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NetworkSnapshot {
    pub network_id: NetworkId,
    pub nick: Vec<u8>,
    pub away: Option<Vec<u8>>,
    /// Channels to rejoin, with their keys.
    pub channels: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Starts a user's actor: loads its networks from the store and connects
/// them. Returns once loading is done (or failed).
///
/// # Errors
/// Fails when the store cannot be read.
pub async fn spawn(
    id: UserId,
    name: &str,
    store: Store,
    writer: Writer,
    config: Arc<UserConfig>,
    cancel: CancellationToken,
    owner: Owned,
) -> anyhow::Result<(UserHandle, tokio::task::JoinHandle<()>)> {
    spawn_from(id, name, store, writer, config, cancel, owner, None).await
}

/// [`spawn`], resuming the networks in `parked` from their parked connections.
///
/// # Errors
/// As [`spawn`], or the parked parts are of another version or user.
#[allow(clippy::too_many_arguments)]
pub async fn spawn_from(
    id: UserId,
    name: &str,
    store: Store,
    writer: Writer,
    config: Arc<UserConfig>,
    cancel: CancellationToken,
    owner: Owned,
    parked: Option<ParkedUser>,
) -> anyhow::Result<(UserHandle, tokio::task::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(1024);
    let name: Arc<str> = Arc::from(name);
    let mut actor = actor::Actor::new(id, name.clone(), store, writer, config, rx, cancel, owner);
    if let Some(p) = parked {
        actor.resume_from(p)?;
    }
    let task = actor::start(actor).await?;
    Ok((UserHandle { id, name, tx }, task))
}

/// What an actor needs to act as the user's owner: the fence every write carries and
/// the node's lease, checked before every write and relay.
#[derive(Clone, Debug)]
pub struct Owned {
    pub fence: Fence,
    pub lease: Lease,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the user's session is not running on this node")]
    Gone,
    #[error("no such network")]
    NoSuchNetwork,
}

/// A cheap, clonable handle on a running user actor.
#[derive(Clone)]
pub struct UserHandle {
    pub id: UserId,
    pub name: Arc<str>,
    tx: mpsc::Sender<Event>,
}

impl UserHandle {
    /// Whether the actor has ended (stopped, dropped, or it lost ownership).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// A handle on whatever reads `tx`: the actor's own constructor, and
    /// tests playing the actor.
    pub fn for_test(id: UserId, name: &str, tx: mpsc::Sender<Event>) -> UserHandle {
        UserHandle {
            id,
            name: name.into(),
            tx,
        }
    }

    pub async fn attach(&self, attach: Attach) -> Result<Attached, UserError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Attach(Box::new(attach), reply))
            .await
            .map_err(|_| UserError::Gone)?;
        rx.await.map_err(|_| UserError::Gone)?
    }

    /// Tells the actor a client went away. Never blocks for long: a gone
    /// actor has nothing to detach from.
    pub async fn detach(&self, network: NetworkId, id: DownstreamId) {
        let _ = self.tx.send(Event::Detach { network, id }).await;
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Event,
    ) -> Result<T, UserError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| UserError::Gone)?;
        rx.await.map_err(|_| UserError::Gone)
    }

    pub async fn add_network(&self, network: Network) -> Result<anyhow::Result<()>, UserError> {
        self.request(|r| Event::AddNetwork(Box::new(network), r))
            .await
    }

    pub async fn remove_network(&self, network: NetworkId) -> Result<(), UserError> {
        self.request(|r| Event::RemoveNetwork(network, r)).await
    }

    pub async fn status(&self) -> Result<Vec<NetworkStatus>, UserError> {
        self.request(Event::Status).await
    }

    pub async fn flush(&self) -> Result<bool, UserError> {
        self.request(Event::Flush).await
    }

    /// Writes a gap marker into every joined channel (see [`Gap`]).
    pub async fn gap_marker(
        &self,
        text: String,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, UserError> {
        self.request(|reply| {
            Event::Gap(Box::new(Gap {
                text,
                from,
                to,
                reply,
            }))
        })
        .await
    }

    /// Detaches or attaches a channel and/or sets what attaches it by itself.
    pub async fn set_detached(
        &self,
        network: NetworkId,
        channel: &[u8],
        detached: Option<bool>,
        reattach_on: Option<crate::store::ReattachOn>,
    ) -> Result<Result<(), DetachError>, UserError> {
        self.request(|reply| {
            Event::ChannelAttach(Box::new(ChannelAttach {
                network,
                channel: channel.to_vec(),
                detached,
                reattach_on,
                reply,
            }))
        })
        .await
    }

    /// Hands the actor the user's new auto-away settings (already stored).
    pub async fn set_away_settings(
        &self,
        settings: crate::store::AwaySettings,
    ) -> Result<(), UserError> {
        self.tx
            .send(Event::AwaySettings(Box::new(settings)))
            .await
            .map_err(|_| UserError::Gone)
    }

    /// Parks the session (see [`Event::Park`]); the actor ends.
    pub async fn park(&self) -> Result<ParkedUser, UserError> {
        self.request(Event::Park).await
    }

    pub async fn stop(&self, quit_message: Option<String>) -> Result<UserSnapshot, UserError> {
        self.request(|reply| Event::Stop {
            quit_message,
            reply,
        })
        .await
    }

    pub async fn from_client(
        &self,
        network: NetworkId,
        id: DownstreamId,
        msg: Message,
    ) -> Result<(), UserError> {
        self.tx
            .send(Event::FromClient {
                network,
                id,
                msg: Box::new(msg),
            })
            .await
            .map_err(|_| UserError::Gone)
    }
}
