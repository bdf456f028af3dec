//! Public value types of the store, and the row shapes both backends decode into.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::secrets::{SecretError, SecretKey};

/// Primary key of a user.
pub type UserId = i64;
/// Primary key of a network (one upstream IRC connection of one user).
pub type NetworkId = i64;
/// Per-user message sequence number; the public message id.
pub type Seq = i64;

/// A Ferry account.
// Not `Serialize`: chrono is built without its `serde` feature.
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    /// Login name, unique.
    pub name: String,
    /// Password hash (PHC string); never the password itself.
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: DateTime<Utc>,
    /// How much backlog this user keeps.
    pub retention: Retention,
}

/// Backlog retention limits of one user; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Messages older than this many days are deleted.
    pub max_age_days: Option<i64>,
    /// Only this many of the newest messages are kept.
    pub max_messages: Option<i64>,
}

/// How the upstream TLS certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TlsVerify {
    /// Verify against the web PKI roots.
    Verify,
    /// Accept any certificate.
    Insecure,
    /// Accept only the certificate whose DER SHA-256 is this lowercase hex string.
    Pin(String),
}

impl TlsVerify {
    /// The stored form: `verify`, `insecure` or `pin:<hex>`.
    pub fn to_db(&self) -> String {
        match self {
            TlsVerify::Verify => "verify".to_owned(),
            TlsVerify::Insecure => "insecure".to_owned(),
            TlsVerify::Pin(hex) => format!("pin:{hex}"),
        }
    }

    /// Parses the stored form; anything unknown falls back to the safe `Verify`.
    pub fn from_db(s: &str) -> TlsVerify {
        match s {
            "insecure" => TlsVerify::Insecure,
            _ => match s.strip_prefix("pin:") {
                Some(hex) => TlsVerify::Pin(hex.to_ascii_lowercase()),
                None => TlsVerify::Verify,
            },
        }
    }
}

/// SASL authentication to the upstream network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Sasl {
    Plain {
        username: String,
        #[serde(skip)]
        password: String,
    },
    External {
        cert_path: String,
    },
}

/// What is needed to create a network.
#[derive(Clone, Debug)]
pub struct NewNetwork {
    /// The user's name for this network, unique per user.
    pub name: String,
    /// `host:port` of the IRC server.
    pub addr: String,
    pub tls: bool,
    pub tls_verify: TlsVerify,
    pub nick: String,
    pub username: Option<String>,
    pub realname: Option<String>,
    pub sasl: Option<Sasl>,
    /// Local address to bind upstream connections to.
    pub source_ip: Option<String>,
    /// Channels to join: (name, casefolded key, channel key).
    pub channels: Vec<ChannelConfig>,
}

/// A configured channel: (name, casefolded key, channel key).
pub type ChannelConfig = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// A stored network.
#[derive(Clone, Debug, Serialize)]
pub struct Network {
    pub id: NetworkId,
    pub user_id: UserId,
    pub name: String,
    pub addr: String,
    pub tls: bool,
    pub tls_verify: TlsVerify,
    /// The last nick we had on this network.
    pub nick: String,
    pub username: Option<String>,
    pub realname: Option<String>,
    pub sasl: Option<Sasl>,
    pub source_ip: Option<String>,
    pub enabled: bool,
}

/// Whether a buffer is a channel or a private conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BufferKind {
    Channel,
    Query,
}

impl BufferKind {
    /// Channel if the name starts with one of `#&!+`, else query.
    pub fn of(name: &[u8]) -> BufferKind {
        match name.first() {
            Some(b'#' | b'&' | b'!' | b'+') => BufferKind::Channel,
            _ => BufferKind::Query,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BufferKind::Channel => "channel",
            BufferKind::Query => "query",
        }
    }

    pub(crate) fn from_db(s: &str) -> BufferKind {
        if s == "channel" {
            BufferKind::Channel
        } else {
            BufferKind::Query
        }
    }
}

/// The writer moves a buffer's stored `last_message_at` forward only when it advances
/// by at least this many milliseconds (or the buffer is new, or had none): otherwise
/// every writer batch would rewrite every buffer it touches (on PostgreSQL a new row
/// version per buffer per batch, docs/benchmarks.md §9). So the stored value is at most
/// this much older than the buffer's newest line; readers that need it exact allow for
/// it (`Store::targets`) or read the newest line (`Store::buffers_exact`).
pub const LAST_MESSAGE_AT_STEP_MS: i64 = 60_000;

/// A channel or query of a network: the durable part of session state.
// Not `Serialize`: chrono is built without its `serde` feature.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub network_id: NetworkId,
    /// The name as last seen or configured.
    pub name: Vec<u8>,
    /// The casefolded name: what identifies the buffer.
    pub key: Vec<u8>,
    pub kind: BufferKind,
    /// Whether we should be in this channel (rejoined after a reconnect or move).
    pub joined: bool,
    pub chan_key: Option<Vec<u8>>,
    /// Seq of the last message the user has read here.
    pub read_marker: Seq,
    /// The time of the buffer's newest line, as stored in `buffers`: the writer only
    /// moves it forward by at least [`LAST_MESSAGE_AT_STEP_MS`], so the newest line may
    /// be up to that much newer. [`Store::buffers_exact`](crate::store::Store::buffers_exact)
    /// reads it exactly.
    pub last_message_at: Option<DateTime<Utc>>,
    /// A channel the user stays in and logs, but whose lines are not pushed to
    /// attached clients until it is attached again (soju's `/part detach`).
    pub detached: bool,
    /// What attaches a detached channel by itself.
    pub reattach_on: ReattachOn,
}

/// What attaches a detached channel by itself (soju's `-reattach-on`): any message
/// in it, a line that mentions the user (the default), or nothing.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReattachOn {
    Message,
    #[default]
    Highlight,
    None,
}

impl ReattachOn {
    pub fn as_str(self) -> &'static str {
        match self {
            ReattachOn::Message => "message",
            ReattachOn::Highlight => "highlight",
            ReattachOn::None => "none",
        }
    }

    /// The stored text, or a word a user typed; unknown text is `None`.
    pub fn parse(s: &str) -> Option<ReattachOn> {
        match s {
            "message" => Some(ReattachOn::Message),
            "highlight" => Some(ReattachOn::Highlight),
            "none" => Some(ReattachOn::None),
            _ => None,
        }
    }
}

/// A user's auto-away settings: whether Ferry marks them away upstream while no
/// client is attached, and with which text (`None`: the operator's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwaySettings {
    pub auto_away: bool,
    pub away_message: Option<String>,
}

impl Default for AwaySettings {
    fn default() -> Self {
        AwaySettings {
            auto_away: true,
            away_message: None,
        }
    }
}

/// A message to store, produced by the user actor.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub user_id: UserId,
    /// Assigned by the user actor, monotonic per user.
    pub seq: Seq,
    pub network_id: NetworkId,
    /// Buffer name as seen.
    pub buffer: Vec<u8>,
    /// Casefolded buffer name.
    pub buffer_key: Vec<u8>,
    pub time: DateTime<Utc>,
    pub sender: String,
    /// PRIVMSG NOTICE ACTION JOIN PART QUIT NICK KICK MODE TOPIC GAP
    pub command: String,
    /// The full line as received, without CRLF; may be invalid UTF-8.
    pub raw: Bytes,
    /// Display and search text.
    pub text: String,
    pub msgid: Option<String>,
    /// The ownership epoch of the actor that produced it (fencing token): the fenced
    /// writer drops the message unless the user's owner row still names this node with
    /// this epoch.
    pub epoch: i64,
    /// The shared stream this line belongs to, or `None` for a per-user row. Rows with
    /// the same (stream, seq) are one stored event; each adds its (network, buffer) to
    /// the event's audience. All rows of one event carry identical
    /// time/sender/command/raw/text/msgid (the first one stored wins).
    pub stream: Option<Arc<StreamKey>>,
}

/// A shared stream: the lines one node's connections to one server address receive in
/// one channel. Lines of a stream are stored once (`events`), visible to an audience.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct StreamKey {
    /// The node id.
    pub node: String,
    /// The server address as dialled, "host:port".
    pub server: String,
    /// The channel name casefolded by the server's CASEMAPPING.
    pub channel: Vec<u8>,
}

/// A message read back from the backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: Seq,
    pub network_id: NetworkId,
    pub buffer: Vec<u8>,
    pub time: DateTime<Utc>,
    pub sender: String,
    pub command: String,
    pub raw: Bytes,
    pub text: String,
    pub msgid: Option<String>,
}

/// A page of backlog.
///
/// `before`/`after` are exclusive seq bounds, `from`/`to` inclusive time bounds.
/// `newest_first = false` returns the first `limit` messages (after `after`), oldest
/// first; `newest_first = true` returns the `limit` newest (before `before`), newest first.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub user: UserId,
    pub network: Option<NetworkId>,
    pub buffer_key: Option<Vec<u8>>,
    pub before: Option<Seq>,
    pub after: Option<Seq>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
    pub newest_first: bool,
}

/// A full-text search; results come newest first.
#[derive(Clone, Debug, Default)]
pub struct SearchQuery {
    pub user: UserId,
    /// Free text; every word must occur. Query syntax is not interpreted.
    pub text: String,
    pub network: Option<NetworkId>,
    pub buffer_key: Option<Vec<u8>>,
    /// Case-insensitive exact nick.
    pub sender: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Exclusive seq bound, for paging.
    pub before: Option<Seq>,
    pub limit: i64,
}

/// A running Ferry node, as registered in the store.
// Not `Serialize`: chrono is built without its `serde` feature.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    pub id: String,
    /// Where admin commands reach this node.
    pub admin_url: String,
    pub admin_token: String,
    pub http_addr: String,
    pub irc_addr: String,
    pub version: String,
    pub state: String,
    pub started_at: DateTime<Utc>,
    /// Set by the store on register and heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Local addresses this node dials IRC networks from.
    pub source_ips: Vec<String>,
    /// The highest migration this node's binary knows.
    pub schema_version: i64,
    /// Hash of the effective config minus per-node addresses: nodes that should behave
    /// alike show the same value.
    pub config_fingerprint: String,
    /// RLIMIT_NOFILE after raising it to the hard limit.
    pub fd_limit: i64,
    /// Upstream sessions this node accepts (the limit minus a reserve).
    pub fd_budget: i64,
    /// Health and load, refreshed by every heartbeat.
    pub health: NodeHealth,
    /// Until when the node's lease runs, by the database's clock.
    pub lease_expires_at: DateTime<Utc>,
}

/// Node states: `active` takes users; `draining` keeps its users but takes no new
/// ones; `drained` holds no users; `dead` lost its lease and its users were adopted.
pub mod node_state {
    pub const ACTIVE: &str = "active";
    pub const DRAINING: &str = "draining";
    pub const DRAINED: &str = "drained";
    pub const DEAD: &str = "dead";
}

/// Load and health figures a node publishes with each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeHealth {
    /// User actors running.
    pub users: i64,
    /// Upstream connections (one per running user and enabled network).
    pub sessions: i64,
    /// Upstream connections per network address.
    pub sessions_per_network: std::collections::BTreeMap<String, i64>,
    /// Upstream connections per source IP (`default` when none is set).
    pub sessions_per_ip: std::collections::BTreeMap<String, i64>,
    /// How late the event loop's ticker fired last, in milliseconds.
    pub loop_lag_ms: i64,
    /// Resident memory, from `/proc/self/statm`.
    pub rss_bytes: i64,
    /// Per limits key: sessions holding a slot here and connects waiting in this
    /// node's limiter (what placement and spill weigh, `ferry node list` shows).
    pub key_load: std::collections::BTreeMap<String, KeyLoad>,
}

/// One limits key's load on one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyLoad {
    /// Sessions holding a slot (connected, connecting or reserved for a move).
    pub held: i64,
    /// Connects waiting in the limiter's queue for a slot or a token.
    pub waiting: i64,
}

/// Who runs a user: the owner row of `user_owners`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub user_id: UserId,
    pub user_name: String,
    /// `None`: nobody; the next failover round adopts the user.
    pub node_id: Option<String>,
    /// The fencing token; grows by one on every assignment.
    pub epoch: i64,
    pub updated_at: DateTime<Utc>,
}

/// A summary of the users a node owns: how many, and the sums of their epochs and
/// ids. Equal summaries almost surely mean equal sets (a swap with equal sums is
/// caught by the next full comparison).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnedFingerprint {
    pub count: i64,
    pub epochs: i64,
    pub users: i64,
}

/// What a user actor's writes carry: only the owner named here, at this epoch, may
/// write for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub user: UserId,
    pub node: std::sync::Arc<str>,
    pub epoch: i64,
}

// ---- conversions and rows shared by both backends ----

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(crate) fn now_ms() -> i64 {
    to_ms(Utc::now())
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: i64,
    name: String,
    password_hash: String,
    is_admin: bool,
    created_at: i64,
    retention_max_age_days: Option<i64>,
    retention_max_messages: Option<i64>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            name: r.name,
            password_hash: r.password_hash,
            is_admin: r.is_admin,
            created_at: from_ms(r.created_at),
            retention: Retention {
                max_age_days: r.retention_max_age_days,
                max_messages: r.retention_max_messages,
            },
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct NetworkRow {
    pub(crate) id: i64,
    user_id: i64,
    name: String,
    addr: String,
    tls: bool,
    tls_verify: String,
    nick: String,
    username: Option<String>,
    realname: Option<String>,
    sasl_mechanism: Option<String>,
    sasl_username: Option<String>,
    sasl_password: Option<String>,
    sasl_cert: Option<String>,
    source_ip: Option<String>,
    enabled: bool,
    pub(crate) sasl_sealed: Option<String>,
}

impl NetworkRow {
    /// The network, its SASL password opened with `key`. A password not yet sealed
    /// (a store from before migration 0009 that no node has sealed yet) is taken as
    /// it is.
    ///
    /// # Errors
    /// [`StoreError::Secret`] when a sealed password cannot be opened (no key, or
    /// another key): never a network with a wrong password.
    pub(crate) fn into_network(
        self,
        key: Option<&SecretKey>,
    ) -> Result<Network, super::StoreError> {
        let r = self;
        let sasl = match r.sasl_mechanism.as_deref() {
            Some("PLAIN") => {
                let password = match (r.sasl_sealed, r.sasl_password) {
                    (Some(sealed), _) => {
                        let what = sasl_place(r.id);
                        let key = key.ok_or_else(|| {
                            super::StoreError::Secret(SecretError::NoKey { what: what.clone() })
                        })?;
                        key.open(&sealed, &what)?
                    }
                    (None, plain) => plain.unwrap_or_default(),
                };
                Some(Sasl::Plain {
                    username: r.sasl_username.unwrap_or_default(),
                    password,
                })
            }
            Some("EXTERNAL") => Some(Sasl::External {
                cert_path: r.sasl_cert.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Network {
            id: r.id,
            user_id: r.user_id,
            name: r.name,
            addr: r.addr,
            tls: r.tls,
            tls_verify: TlsVerify::from_db(&r.tls_verify),
            nick: r.nick,
            username: r.username,
            realname: r.realname,
            sasl,
            source_ip: r.source_ip,
            enabled: r.enabled,
        })
    }
}

/// The associated data a network's sealed SASL password is bound to.
pub(crate) fn sasl_place(network: i64) -> String {
    format!("network:{network}:sasl_password")
}

/// The SASL columns: (mechanism, username, password, cert).
pub(crate) type SaslColumns = (
    Option<&'static str>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(crate) fn sasl_columns(s: &Option<Sasl>) -> SaslColumns {
    match s {
        None => (None, None, None, None),
        Some(Sasl::Plain { username, password }) => (
            Some("PLAIN"),
            Some(username.clone()),
            Some(password.clone()),
            None,
        ),
        Some(Sasl::External { cert_path }) => {
            (Some("EXTERNAL"), None, None, Some(cert_path.clone()))
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct BufferRow {
    network_id: i64,
    name: Vec<u8>,
    key: Vec<u8>,
    kind: String,
    joined: bool,
    chan_key: Option<Vec<u8>>,
    read_marker: i64,
    last_message_at: Option<i64>,
    detached: bool,
    reattach_on: String,
}

impl From<BufferRow> for Buffer {
    fn from(r: BufferRow) -> Buffer {
        Buffer {
            network_id: r.network_id,
            name: r.name,
            key: r.key,
            kind: BufferKind::from_db(&r.kind),
            joined: r.joined,
            chan_key: r.chan_key,
            read_marker: r.read_marker,
            last_message_at: r.last_message_at.map(from_ms),
            detached: r.detached,
            reattach_on: ReattachOn::parse(&r.reattach_on).unwrap_or_default(),
        }
    }
}

/// A buffer with the times of its newest per-user row and newest shared event
/// (`Store::buffers_exact`).
#[derive(sqlx::FromRow)]
pub(crate) struct BufferNewestRow {
    #[sqlx(flatten)]
    buffer: BufferRow,
    newest_row: Option<i64>,
    newest_event: Option<i64>,
}

impl From<BufferNewestRow> for Buffer {
    fn from(r: BufferNewestRow) -> Buffer {
        let mut b = r.buffer;
        b.last_message_at = [b.last_message_at, r.newest_row, r.newest_event]
            .into_iter()
            .flatten()
            .max();
        b.into()
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    seq: i64,
    network_id: i64,
    buffer: Vec<u8>,
    time: i64,
    sender: String,
    command: String,
    raw: Vec<u8>,
    text: String,
    msgid: Option<String>,
}

impl From<MessageRow> for StoredMessage {
    fn from(r: MessageRow) -> StoredMessage {
        StoredMessage {
            seq: r.seq,
            network_id: r.network_id,
            buffer: r.buffer,
            time: from_ms(r.time),
            sender: r.sender,
            command: r.command,
            raw: Bytes::from(r.raw),
            text: r.text,
            msgid: r.msgid,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct NodeRow {
    id: String,
    admin_url: String,
    admin_token: String,
    http_addr: String,
    irc_addr: String,
    version: String,
    state: String,
    started_at: i64,
    heartbeat_at: i64,
    source_ips: String,
    schema_version: i64,
    config_fingerprint: String,
    fd_limit: i64,
    fd_budget: i64,
    users: i64,
    sessions: i64,
    sessions_per_network: String,
    sessions_per_ip: String,
    loop_lag_ms: i64,
    rss_bytes: i64,
    lease_expires_at: i64,
    key_load: String,
}

impl From<NodeRow> for NodeRecord {
    fn from(r: NodeRow) -> NodeRecord {
        NodeRecord {
            id: r.id,
            admin_url: r.admin_url,
            admin_token: r.admin_token,
            http_addr: r.http_addr,
            irc_addr: r.irc_addr,
            version: r.version,
            state: r.state,
            started_at: from_ms(r.started_at),
            heartbeat_at: from_ms(r.heartbeat_at),
            source_ips: r
                .source_ips
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            schema_version: r.schema_version,
            config_fingerprint: r.config_fingerprint,
            fd_limit: r.fd_limit,
            fd_budget: r.fd_budget,
            health: NodeHealth {
                users: r.users,
                sessions: r.sessions,
                sessions_per_network: serde_json::from_str(&r.sessions_per_network)
                    .unwrap_or_default(),
                sessions_per_ip: serde_json::from_str(&r.sessions_per_ip).unwrap_or_default(),
                loop_lag_ms: r.loop_lag_ms,
                rss_bytes: r.rss_bytes,
                key_load: serde_json::from_str(&r.key_load).unwrap_or_default(),
            },
            lease_expires_at: from_ms(r.lease_expires_at),
        }
    }
}

/// Columns selected for a [`StoredMessage`], given `messages m`, `buffers b`, `bodies bo`.
/// (The network is the buffer's: SQLite's `messages` has no `network_id` since
/// migration 0016.)
pub(crate) const MESSAGE_COLUMNS: &str = "m.seq, b.network_id, b.name AS buffer, m.time, \
     m.sender, m.command, bo.raw, bo.text, m.msgid";
