//! Node configuration: one typed struct per section, every field documented.
//!
//! Settings come from (lowest to highest priority) built-in defaults, the
//! config file (`--config FILE`, TOML, see `ferry.example.toml`) and flags or
//! environment variables. Errors name the setting that is wrong.
//!
//! This module holds settings only, as plain data. The parts read their own section
//! (`user::UserConfig::new` reads [`UserSettings`], `downstream` its
//! [`DownstreamConfig`]); nothing here knows how they use it, so `config` sits below
//! `user` and `downstream` in the import graph.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::cluster::ClusterConfig;
use crate::push::PushConfig;
use crate::secrets::KeySource;
use crate::store::WriterConfig;
use crate::upstream::UpstreamConfig;

/// Everything a node needs to run, after merging file and flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name in the cluster's node list.
    pub node_id: String,
    /// `sqlite://PATH` or `postgres://…`.
    pub database: String,
    /// HTTP listener: health, admin API (and the web client later).
    pub http: SocketAddr,
    /// Plain IRC listener for clients; `None` disables it.
    pub irc: Option<SocketAddr>,
    /// TLS IRC listener for clients; needs `tls_cert` and `tls_key`.
    pub irc_tls: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// URL clients should use for this node's HTTP (behind a proxy, say).
    pub advertise_http: Option<String>,
    /// `host:port` clients should use for this node's IRC listener.
    pub advertise_irc: Option<String>,
    pub heartbeat_interval: Duration,
    pub retention_interval: Duration,
    /// How often the node reloads network limits from the store and publishes its
    /// session counts (`ferry limits set` on another node takes effect within it).
    pub limits_interval: Duration,
    /// How user actors treat their IRC networks (`[upstream]`, `[backlog]`, `--source-ip`).
    pub user: UserSettings,
    pub downstream: DownstreamConfig,
    pub http_limits: HttpLimits,
    pub writer: WriterConfig,
    /// Lease, failover margin and loop interval (`--lease-seconds`).
    pub cluster: ClusterConfig,
    /// Whether the node sends Web Push notifications (`[push] enabled`).
    pub push_enabled: bool,
    /// How it sends them (`[push]`).
    pub push: PushConfig,
    /// Where the secret key is (`--secret-key-file`, `FERRY_SECRET_KEY`); a missing
    /// key file is created at start.
    pub secret_key: KeySource,
    /// Login budgets, password hashing pool, password and session rules (`[auth]`).
    pub auth: AuthSettings,
    /// What users may do to their own account (`[accounts]`).
    pub accounts: AccountSettings,
    /// The ident (RFC 1413) responder (`[ident]`); off unless `listen` is set.
    pub ident: IdentSettings,
}

impl NodeConfig {
    /// Defaults for a node whose store is `database`.
    pub fn new(database: String) -> NodeConfig {
        NodeConfig {
            node_id: "local".to_owned(),
            http: "127.0.0.1:8080".parse().expect("valid"),
            irc: Some("127.0.0.1:6667".parse().expect("valid")),
            irc_tls: None,
            tls_cert: None,
            tls_key: None,
            advertise_http: None,
            advertise_irc: None,
            heartbeat_interval: Duration::from_secs(5),
            retention_interval: Duration::from_secs(3600),
            limits_interval: Duration::from_secs(5),
            user: UserSettings::default(),
            downstream: DownstreamConfig::default(),
            http_limits: HttpLimits::default(),
            writer: WriterConfig::default(),
            cluster: ClusterConfig::default(),
            push_enabled: true,
            push: PushConfig::default(),
            secret_key: KeySource::resolve(None, default_key_file_for(&database)),
            database,
            auth: AuthSettings::default(),
            accounts: AccountSettings::default(),
            ident: IdentSettings::default(),
        }
    }

    /// The database URL without a password, for logs and errors.
    pub fn redacted_database(&self) -> String {
        redact_url(&self.database)
    }

    /// What nodes compare before users move between them: a hash of the effective
    /// config minus per-node addresses and identity, and the settings it covers.
    pub fn fingerprint(&self) -> Fingerprint {
        use sha2::{Digest, Sha256};
        let summary = self.fingerprint_summary();
        Fingerprint {
            hash: hex::encode(&Sha256::digest(summary.as_bytes())[..8]),
            summary,
        }
    }

    /// The settings the fingerprint covers, as text (a preflight lists them when the
    /// fingerprints differ, so the operator sees what to compare).
    fn fingerprint_summary(&self) -> String {
        let u = &self.user;
        format!(
            "v{} quit={:?} ping={:?}/{:?} register={:?} backoff={:?}..{:?} flood={}/{} writer={:?}/{:?} lease={:?}/{:?} login_delay={:?} accounts={}/{:?}",
            env!("CARGO_PKG_VERSION"),
            u.quit_message,
            u.ping_interval,
            u.ping_timeout,
            u.register_timeout,
            u.backoff_min,
            u.backoff_max,
            u.flood_rate,
            u.flood_burst,
            self.writer.max_batch,
            self.writer.max_delay,
            self.cluster.lease,
            self.cluster.margin,
            self.downstream.login_failure_delay,
            // Users' changes run on the node that owns them: nodes that differ here
            // would treat the same user differently after a move.
            self.accounts.max_networks_per_user,
            self.accounts.allowed_servers,
        )
    }
}

/// The file of a SQLite database URL (`sqlite://PATH`, `sqlite:PATH` or a plain
/// path); `None` for PostgreSQL.
pub fn sqlite_path(database: &str) -> Option<&str> {
    database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .or((!database.contains("://")).then_some(database))
        .filter(|p| !p.is_empty())
}

/// The default key file for a database URL: beside the SQLite database's directory
/// (`ferry-data/ferry.db` → `ferry-data.key`), else `ferry-data.key` here.
fn default_key_file_for(database: &str) -> PathBuf {
    match sqlite_path(database).and_then(|p| Path::new(p).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => crate::secrets::default_key_file(dir),
        _ => PathBuf::from("ferry-data.key"),
    }
}

/// A node's config fingerprint ([`NodeConfig::fingerprint`]), published in the node
/// list and checked by a migration's preflight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hex of the first 8 bytes of the SHA-256 of `summary`.
    pub hash: String,
    /// The settings covered, as text.
    pub summary: String,
}

/// The settings every user actor of a node shares (`user::UserConfig` adds the
/// node-wide state that goes with them).
#[derive(Clone, Debug)]
pub struct UserSettings {
    /// Egress addresses to connect from; a user is spread over them by id.
    pub source_ips: Vec<IpAddr>,
    /// The QUIT message sent when Ferry disconnects a user on purpose.
    pub quit_message: String,
    /// Silence before Ferry PINGs the server.
    pub ping_interval: Duration,
    /// How long to wait for that PING's answer before reconnecting.
    pub ping_timeout: Duration,
    /// How long registration (CAP, SASL, NICK/USER to `001`) may take.
    pub register_timeout: Duration,
    /// How long a TLS handshake may take: TLS to a plaintext port fails after this
    /// with a reason, not after the registration timeout.
    pub tls_timeout: Duration,
    /// Smallest reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Outgoing lines per second per connection after the burst.
    pub flood_rate: f64,
    /// Outgoing lines sent at once before pacing starts.
    pub flood_burst: u32,
    /// Other people's JOIN, PART, QUIT and NICK are stored in a channel's backlog only
    /// while it has at most this many members (they are always relayed live).
    pub membership_events_max_members: usize,
    /// Channels one network connection may be in: a JOIN beyond it (one the server
    /// forced on us, too) is answered with a PART and a notice to the user.
    pub max_channels_per_network: usize,
    /// Buffers (channels and private conversations) one user may have over all
    /// networks: lines for a new buffer beyond it are relayed but not stored.
    pub max_buffers_per_user: usize,
    /// The away text Ferry sets upstream while none of a user's clients is attached
    /// (auto-away), unless the user set their own (`[upstream] away_message`).
    pub away_message: String,
    /// How long after the last client detaches the user goes away: a client that
    /// reconnects within it causes no AWAY at all (`[upstream] away_delay_secs`).
    pub away_delay: Duration,
}

/// Default of [`UserSettings::max_channels_per_network`].
pub const MAX_CHANNELS_PER_NETWORK: usize = 500;
/// Default of [`UserSettings::max_buffers_per_user`].
pub const MAX_BUFFERS_PER_USER: usize = 5000;

/// Default of [`UserSettings::membership_events_max_members`]. In a channel of hundreds,
/// joins and quits are most of the traffic, stored once per user who is in it (a
/// netsplit in a 1,000-member channel is 1,000 rows for each of them), and nobody
/// reads them back; ZNC keeps none of them in its buffers, clients that show them
/// fold them away. Small channels keep them: there they are conversation.
pub const MEMBERSHIP_EVENTS_MAX_MEMBERS: usize = 100;

impl Default for UserSettings {
    fn default() -> Self {
        let up = UpstreamConfig::new(0, "", "");
        UserSettings {
            source_ips: Vec::new(),
            quit_message: "Ferry bouncer".to_owned(),
            ping_interval: up.ping_interval,
            ping_timeout: up.ping_timeout,
            register_timeout: up.register_timeout,
            tls_timeout: up.tls_timeout,
            backoff_min: up.backoff_min,
            backoff_max: up.backoff_max,
            flood_rate: up.flood_rate,
            flood_burst: up.flood_burst,
            membership_events_max_members: MEMBERSHIP_EVENTS_MAX_MEMBERS,
            max_channels_per_network: MAX_CHANNELS_PER_NETWORK,
            max_buffers_per_user: MAX_BUFFERS_PER_USER,
            away_message: "Auto away (Ferry: no client attached)".to_owned(),
            away_delay: Duration::from_secs(10),
        }
    }
}

/// What users may do to their own account through the user API (and every later
/// door): the operator's bounds on self-service. Admin changes are not bound by them.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    /// Networks one user may have; adding one more is refused (`too_many_networks`).
    pub max_networks_per_user: usize,
    /// Servers users may add, each `host:port`, `host:*`, `*.domain:port` or
    /// `*.domain:*` (host compared without case); empty: any server.
    pub allowed_servers: Vec<String>,
    /// Whether invite links (`ferry user invite`) may create accounts; off by default.
    pub invites: bool,
}

impl AccountSettings {
    /// Whether users may add a network on `host:port` (always, with no allow list).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed_servers.is_empty()
            || self
                .allowed_servers
                .iter()
                .filter_map(|p| ServerPattern::parse(p).ok())
                .any(|p| p.matches(host, port))
    }
}

/// One entry of `[accounts] allowed_servers`: `host:port`, `host:*`, `*.domain:port`
/// or `*.domain:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPattern {
    /// Lowercase host, or `.domain` for `*.domain` (any host under it).
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl ServerPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// Says what form is expected.
    pub fn parse(s: &str) -> anyhow::Result<ServerPattern> {
        let bad = || anyhow::anyhow!("expected host:port, host:*, *.domain:port or *.domain:*");
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        };
        let host = match host.strip_prefix("*.") {
            Some(domain) => format!(".{domain}"),
            None => host.to_owned(),
        };
        if host.is_empty() || host == "." || host.contains(['*', ' ', '/']) {
            return Err(bad());
        }
        Ok(ServerPattern {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `host:port` falls under the pattern.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let host_ok = if self.host.starts_with('.') {
            host.ends_with(&self.host)
        } else {
            host == self.host
        };
        host_ok && self.port.map_or(true, |p| p == port)
    }
}

/// Default of [`AccountSettings::max_networks_per_user`].
pub const MAX_NETWORKS_PER_USER: usize = 20;

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings {
            max_networks_per_user: MAX_NETWORKS_PER_USER,
            allowed_servers: Vec::new(),
            invites: false,
        }
    }
}

/// `[ident]`: the ident (RFC 1413) responder, which tells IRC networks which Ferry
/// user an upstream connection belongs to (`ident::ident_name`). Off by default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentSettings {
    /// Where to answer, e.g. `0.0.0.0:113` (port 113 needs privileges: see
    /// docs/operations.md for a high port with a redirect); absent: no responder.
    pub listen: Option<SocketAddr>,
    /// Seconds a client has to send its query and read the answer.
    pub timeout_secs: u64,
    /// Ident connections open at once; further ones are closed unanswered.
    pub max_connections: usize,
}

impl Default for IdentSettings {
    fn default() -> Self {
        IdentSettings {
            listen: None,
            timeout_secs: 10,
            max_connections: 64,
        }
    }
}

/// Limits of the HTTP listener against slow or greedy clients.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// A client that has not sent a request's headers by then is disconnected. The
    /// timer also runs while a kept-alive connection waits for its next request, so
    /// it is the idle keep-alive timeout too (hyper starts it when it waits for a
    /// request head). Upgraded connections (websockets) are not affected.
    pub header_timeout: Duration,
    /// Open HTTP connections in all; further ones are answered `503` and closed.
    pub max_connections: usize,
    /// Open HTTP connections from one IP address; further ones likewise.
    pub max_connections_per_ip: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

/// Settings of the IRC listener.
#[derive(Clone, Debug)]
pub struct DownstreamConfig {
    /// Our server name, the prefix of every line Ferry itself sends (`ferry`).
    pub server_name: String,
    /// How long to wait before answering a failed login: slows down guessing.
    pub login_failure_delay: Duration,
    /// Capacity of the channel from the user actor to one client.
    pub outbound_queue: usize,
    /// A connection that has not logged in by then is closed.
    pub registration_timeout: Duration,
    /// A write to the client socket that takes longer closes the connection.
    pub write_timeout: Duration,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            server_name: "ferry".into(),
            login_failure_delay: Duration::from_secs(2),
            outbound_queue: 1024,
            registration_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Hides the password of a URL like `postgres://user:secret@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The database URL for the global `--database`/`--data-dir` options: the
/// given URL, or SQLite in the data directory.
pub fn database_url(database: Option<&str>, data_dir: &Path) -> String {
    match database {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => format!("sqlite://{}", data_dir.join("ferry.db").display()),
    }
}

/// The config file. Every field is optional; flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub backlog: BacklogSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub push: PushSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub accounts: AccountsSection,
    /// `[ident]`, taken as a whole when present.
    pub ident: Option<IdentSettings>,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub outage: OutageSection,
}

/// `[cluster]`: how nodes treat each other when the store is away, and whether they
/// rebalance by themselves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Seconds beyond its lease that a lapsed node which never said it fenced must
    /// have been unreachable before another node adopts its users (default 5).
    pub peer_margin_secs: Option<u64>,
    /// Rebalance by itself (default false; see [`crate::cluster::AutoRebalance`]).
    pub auto_rebalance: Option<bool>,
    /// Seconds between the automatic rebalance's looks at the nodes (default 300).
    pub auto_rebalance_interval_secs: Option<u64>,
    /// Users one automatic round moves at most (default 10).
    pub auto_rebalance_max_moves: Option<usize>,
    /// How far apart nodes may stay: `"2"` or `"10%"` (default `"10%"`).
    pub auto_rebalance_tolerance: Option<String>,
}

/// `[outage]`: what a node holds for the store while the store is unreachable
/// (see [`crate::store::OutageConfig`] and docs/operations.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSection {
    /// Lines held in memory before they spill to the file [default: 100000].
    pub memory_lines: Option<usize>,
    /// Most bytes of the spill file; beyond it the oldest lines become gap markers;
    /// 0: no spill file [default: 268435456, 256 MiB].
    pub spill_bytes: Option<u64>,
    /// The spill file [default: `outage-<node id>.spill` in the data directory].
    pub spill_path: Option<PathBuf>,
}

/// `[accounts]`: what users may change themselves (see [`AccountSettings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSection {
    /// Networks one user may have (default 20).
    pub max_networks_per_user: Option<usize>,
    /// Servers users may add (`host:port`, `host:*`, `*.domain:port`); empty or
    /// absent: any.
    pub allowed_servers: Option<Vec<String>>,
    /// Whether `ferry user invite` may hand out sign-up links (default false).
    pub invites: Option<bool>,
}

/// `[push]`: Web Push notifications.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    /// Send notifications at all (default true).
    pub enabled: Option<bool>,
    /// Who runs this server, for push services (`mailto:` or `https:`); some
    /// services (Apple's) refuse pushes without it.
    pub contact: Option<String>,
    /// Accept `http:` push endpoints (tests, distributors on loopback or a LAN).
    pub allow_http: Option<bool>,
    /// Notifications waiting for the worker; more are dropped and counted.
    pub queue: Option<usize>,
    /// Requests to push services in flight at once, for the node.
    pub concurrency: Option<usize>,
    /// Pushes per minute to one endpoint (after a burst).
    pub endpoint_per_minute: Option<u32>,
    /// At most one push per buffer per this many seconds (0: every line).
    pub coalesce_secs: Option<u64>,
    /// Seconds a push service may take to answer.
    pub request_timeout_secs: Option<u64>,
}

/// `[auth]`: logins, passwords and sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Password hashes run at once (each takes about 19 MiB); default
    /// `min(cores × 2, available memory / 64 MiB)`.
    pub hash_permits: Option<usize>,
    /// Password checks that may wait for the pool before logins are refused.
    pub hash_queue: Option<usize>,
    /// Failed logins an address or an account may have before delays start.
    pub free_failures: Option<u32>,
    /// The first delay after those, seconds; it doubles with each further failure.
    pub failure_delay_secs: Option<u64>,
    /// The longest delay, seconds.
    pub failure_delay_max_secs: Option<u64>,
    /// Shortest password accepted for new users and password changes.
    pub min_password_len: Option<usize>,
    /// A login session ends this many days after login, however often it is used.
    pub session_lifetime_days: Option<u64>,
}

/// `[backlog]`: what is stored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogSection {
    /// Other people's JOIN, PART, QUIT and NICK are stored only in channels of at
    /// most this many members (always relayed live).
    pub membership_events_max_members: Option<usize>,
    /// Channels one network connection may be in (default 500).
    pub max_channels_per_network: Option<usize>,
    /// Buffers one user may have over all networks (default 5000).
    pub max_buffers_per_user: Option<usize>,
}

/// `[http]`: limits of the HTTP listener (see [`HttpLimits`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Seconds a client may take to send a request's headers, and to start its next
    /// request on a kept-alive connection.
    pub header_timeout_secs: Option<u64>,
    /// Open HTTP connections (websockets included) in all.
    pub max_connections: Option<usize>,
    /// Open HTTP connections from one address.
    pub max_connections_per_ip: Option<usize>,
}

/// `[serve]`: listeners and identity of the node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// HTTP listen address, e.g. `127.0.0.1:8080`.
    pub http: Option<SocketAddr>,
    /// IRC listen address, e.g. `127.0.0.1:6667`.
    pub irc: Option<SocketAddr>,
    /// IRC-over-TLS listen address, e.g. `0.0.0.0:6697`.
    pub irc_tls: Option<SocketAddr>,
    /// PEM certificate chain for `irc_tls`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `irc_tls`.
    pub tls_key: Option<PathBuf>,
    pub node_id: Option<String>,
    pub advertise_http: Option<String>,
    pub advertise_irc: Option<String>,
    /// Egress addresses for upstream connections.
    #[serde(default)]
    pub source_ips: Vec<IpAddr>,
    /// Delay before answering a failed client login, in milliseconds.
    pub login_failure_delay_ms: Option<u64>,
    /// Seconds a user with every network waiting for a session slot waits before it
    /// moves to a node with room (default 30).
    pub spill_after_secs: Option<u64>,
}

/// `[upstream]`: how Ferry treats IRC servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The QUIT message sent when Ferry disconnects a user on purpose.
    pub quit_message: Option<String>,
    /// Seconds of silence before Ferry PINGs the server.
    pub ping_interval_secs: Option<u64>,
    /// Seconds to wait for an answer to that PING before reconnecting.
    pub ping_timeout_secs: Option<u64>,
    /// Seconds a TLS handshake may take (default 15).
    pub tls_timeout_secs: Option<u64>,
    /// Smallest reconnect delay, seconds.
    pub backoff_min_secs: Option<u64>,
    /// Largest reconnect delay, seconds.
    pub backoff_max_secs: Option<u64>,
    /// Outgoing lines per second per connection after the burst.
    pub messages_per_second: Option<f64>,
    /// Outgoing lines sent at once before pacing starts.
    pub message_burst: Option<u32>,
    /// The away text set upstream while none of a user's clients is attached (a user
    /// may set their own, or turn auto-away off).
    pub away_message: Option<String>,
    /// Seconds after the last client detaches before the user is marked away
    /// (default 10): a quick reconnect sends no AWAY.
    pub away_delay_secs: Option<u64>,
}

impl FileConfig {
    /// Reads a config file.
    ///
    /// # Errors
    /// Names the file and the offending setting.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Applies the file's settings on top of `cfg`.
    ///
    /// # Errors
    /// Names a setting whose value is not valid.
    pub fn apply(&self, cfg: &mut NodeConfig) -> anyhow::Result<()> {
        self.apply_push(cfg)?;
        let o = &self.outage;
        if let Some(v) = o.memory_lines {
            anyhow::ensure!(v > 0, "[outage] memory_lines must be at least 1");
            cfg.writer.outage.memory_lines = v;
        }
        if let Some(v) = o.spill_bytes {
            cfg.writer.outage.spill_bytes = v;
        }
        if let Some(v) = &o.spill_path {
            cfg.writer.outage.spill_path = Some(v.clone());
        }
        let s = &self.serve;
        if let Some(v) = s.http {
            cfg.http = v;
        }
        if let Some(v) = s.irc {
            cfg.irc = Some(v);
        }
        if let Some(v) = s.irc_tls {
            cfg.irc_tls = Some(v);
        }
        cfg.tls_cert = s.tls_cert.clone().or(cfg.tls_cert.take());
        cfg.tls_key = s.tls_key.clone().or(cfg.tls_key.take());
        if let Some(v) = &s.node_id {
            cfg.node_id = v.clone();
        }
        cfg.advertise_http = s.advertise_http.clone().or(cfg.advertise_http.take());
        cfg.advertise_irc = s.advertise_irc.clone().or(cfg.advertise_irc.take());
        if !s.source_ips.is_empty() {
            cfg.user.source_ips = s.source_ips.clone();
        }
        if let Some(ms) = s.login_failure_delay_ms {
            cfg.downstream.login_failure_delay = Duration::from_millis(ms);
        }
        if let Some(v) = &self.ident {
            cfg.ident = v.clone();
        }
        if let Some(v) = self.accounts.invites {
            cfg.accounts.invites = v;
        }
        self.apply_cluster(cfg)?;
        if let Some(v) = s.spill_after_secs {
            anyhow::ensure!(v >= 1, "[serve] spill_after_secs must be at least 1");
            cfg.cluster.spill_after = Duration::from_secs(v);
        }
        if let Some(v) = self.accounts.max_networks_per_user {
            cfg.accounts.max_networks_per_user = v;
        }
        if let Some(v) = &self.accounts.allowed_servers {
            for pattern in v {
                ServerPattern::parse(pattern)
                    .with_context(|| format!("[accounts] allowed_servers: {pattern:?}"))?;
            }
            cfg.accounts.allowed_servers = v.clone();
        }
        if let Some(v) = self.backlog.membership_events_max_members {
            cfg.user.membership_events_max_members = v;
        }
        if let Some(v) = self.backlog.max_channels_per_network {
            cfg.user.max_channels_per_network = v;
        }
        if let Some(v) = self.backlog.max_buffers_per_user {
            cfg.user.max_buffers_per_user = v;
        }
        let h = &self.http;
        if let Some(v) = h.header_timeout_secs {
            cfg.http_limits.header_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = h.max_connections {
            cfg.http_limits.max_connections = v.max(1);
        }
        if let Some(v) = h.max_connections_per_ip {
            cfg.http_limits.max_connections_per_ip = v.max(1);
        }
        let u = &self.upstream;
        let secs = Duration::from_secs;
        if let Some(v) = &u.quit_message {
            cfg.user.quit_message = v.clone();
        }
        if let Some(v) = u.ping_interval_secs {
            cfg.user.ping_interval = secs(v);
        }
        if let Some(v) = u.ping_timeout_secs {
            cfg.user.ping_timeout = secs(v);
        }
        if let Some(v) = u.tls_timeout_secs {
            cfg.user.tls_timeout = secs(v);
        }
        if let Some(v) = u.backoff_min_secs {
            cfg.user.backoff_min = secs(v);
        }
        if let Some(v) = u.backoff_max_secs {
            cfg.user.backoff_max = secs(v);
        }
        if let Some(v) = u.messages_per_second {
            cfg.user.flood_rate = v;
        }
        if let Some(v) = u.message_burst {
            cfg.user.flood_burst = v;
        }
        if let Some(v) = &u.away_message {
            cfg.user.away_message = v.clone();
        }
        if let Some(v) = u.away_delay_secs {
            cfg.user.away_delay = secs(v);
        }
        let a = &self.auth;
        if let Some(v) = a.hash_permits {
            cfg.auth.hash_permits = Some(v.max(1));
        }
        if let Some(v) = a.hash_queue {
            cfg.auth.hash_queue = v;
        }
        if let Some(v) = a.free_failures {
            cfg.auth.free_failures = v;
        }
        if let Some(v) = a.failure_delay_secs {
            cfg.auth.failure_delay = secs(v);
        }
        if let Some(v) = a.failure_delay_max_secs {
            cfg.auth.failure_delay_max = secs(v);
        }
        if let Some(v) = a.min_password_len {
            cfg.auth.min_password_len = v;
        }
        if let Some(v) = a.session_lifetime_days {
            cfg.auth.session_lifetime = secs(v.saturating_mul(86_400));
        }
        Ok(())
    }

    fn apply_cluster(&self, cfg: &mut NodeConfig) -> anyhow::Result<()> {
        let c = &self.cluster;
        if let Some(v) = c.peer_margin_secs {
            cfg.cluster.peer_margin = Duration::from_secs(v);
        }
        let auto = &mut cfg.cluster.auto_rebalance;
        if let Some(v) = c.auto_rebalance {
            auto.enabled = v;
        }
        if let Some(v) = c.auto_rebalance_interval_secs {
            anyhow::ensure!(
                v >= 1,
                "[cluster] auto_rebalance_interval_secs must be at least 1"
            );
            auto.interval = Duration::from_secs(v);
        }
        if let Some(v) = c.auto_rebalance_max_moves {
            anyhow::ensure!(
                v >= 1,
                "[cluster] auto_rebalance_max_moves must be at least 1"
            );
            auto.max_moves = v;
        }
        if let Some(v) = &c.auto_rebalance_tolerance {
            auto.tolerance = v
                .parse()
                .map_err(|e: String| anyhow::anyhow!("[cluster] auto_rebalance_tolerance: {e}"))?;
        }
        Ok(())
    }

    fn apply_push(&self, cfg: &mut NodeConfig) -> anyhow::Result<()> {
        let p = &self.push;
        let push = &mut cfg.push;
        if let Some(v) = p.enabled {
            cfg.push_enabled = v;
        }
        if let Some(v) = &p.contact {
            push.contact = Some(
                v.parse()
                    .with_context(|| format!("[push] contact {v:?}: use mailto: or https:"))?,
            );
        }
        if let Some(v) = p.allow_http {
            push.allow_http = v;
        }
        if let Some(v) = p.queue {
            anyhow::ensure!(v > 0, "[push] queue must be at least 1");
            push.queue = v;
        }
        if let Some(v) = p.concurrency {
            anyhow::ensure!(v > 0, "[push] concurrency must be at least 1");
            push.concurrency = v;
        }
        if let Some(v) = p.endpoint_per_minute {
            anyhow::ensure!(v > 0, "[push] endpoint_per_minute must be at least 1");
            push.endpoint_per_minute = v;
        }
        if let Some(v) = p.coalesce_secs {
            push.coalesce_window = Duration::from_secs(v);
        }
        if let Some(v) = p.request_timeout_secs {
            anyhow::ensure!(v > 0, "[push] request_timeout_secs must be at least 1");
            push.request_timeout = Duration::from_secs(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../ferry.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let mut cfg = NodeConfig::new("sqlite://x".into());
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.http, "127.0.0.1:8080".parse().unwrap());
        assert!(cfg.push_enabled);
        assert!(!cfg.push.allow_http);
    }

    #[test]
    fn outage_settings_are_read_and_checked() {
        let mut cfg = NodeConfig::new("sqlite://x".into());
        assert_eq!(cfg.writer.outage, crate::store::OutageConfig::default());
        let file: FileConfig = toml::from_str(
            "[outage]\nmemory_lines = 10\nspill_bytes = 0\nspill_path = \"/tmp/x.spill\"",
        )
        .unwrap();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.writer.outage.memory_lines, 10);
        assert_eq!(cfg.writer.outage.spill_bytes, 0);
        assert_eq!(
            cfg.writer.outage.spill_path.as_deref(),
            Some(Path::new("/tmp/x.spill"))
        );
        let zero: FileConfig = toml::from_str("[outage]\nmemory_lines = 0").unwrap();
        let e = zero.apply(&mut cfg).unwrap_err().to_string();
        assert!(e.contains("[outage] memory_lines"), "{e}");
    }

    #[test]
    fn push_settings_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            "[push]\nenabled = false\nallow_http = true\ncoalesce_secs = 0\ncontact = \"mailto:ops@example.org\"",
        )
        .unwrap();
        let mut cfg = NodeConfig::new("sqlite://x".into());
        file.apply(&mut cfg).unwrap();
        assert!(!cfg.push_enabled);
        assert!(cfg.push.allow_http);
        assert_eq!(cfg.push.coalesce_window, Duration::ZERO);
        assert!(cfg.push.contact.is_some());

        let bad: FileConfig = toml::from_str("[push]\ncontact = \"ops@example.org\"").unwrap();
        let err = bad
            .apply(&mut NodeConfig::new("sqlite://x".into()))
            .unwrap_err();
        assert!(format!("{err:#}").contains("[push] contact"), "{err:#}");
    }

    #[test]
    fn ident_and_invites_are_off_unless_set() {
        let mut cfg = NodeConfig::new("sqlite://x".into());
        let file: FileConfig = toml::from_str("").unwrap();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.ident.listen, None);
        assert!(!cfg.accounts.invites);
        let file: FileConfig = toml::from_str(
            "[accounts]\ninvites = true\n[ident]\nlisten = \"127.0.0.1:11300\"\ntimeout_secs = 3",
        )
        .unwrap();
        file.apply(&mut cfg).unwrap();
        assert!(cfg.accounts.invites);
        assert_eq!(cfg.ident.listen, Some("127.0.0.1:11300".parse().unwrap()));
        assert_eq!(cfg.ident.timeout_secs, 3);
        assert_eq!(cfg.ident.max_connections, 64, "the rest keeps its default");
        let err = toml::from_str::<FileConfig>("[ident]\nport = 113").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn account_settings_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            "[accounts]\nmax_networks_per_user = 3\nallowed_servers = [\"irc.libera.chat:6697\", \"*.oftc.net:*\"]",
        )
        .unwrap();
        let mut cfg = NodeConfig::new("sqlite://x".into());
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.accounts.max_networks_per_user, 3);
        assert!(cfg.accounts.allows("IRC.libera.chat", 6697));
        assert!(cfg.accounts.allows("irc.oftc.net", 6667));
        assert!(!cfg.accounts.allows("oftc.net", 6667));
        assert!(!cfg.accounts.allows("irc.libera.chat", 6667));
        for bad in ["irc.libera.chat", "*:6667", "host:0", "a*b.net:1"] {
            let file: FileConfig =
                toml::from_str(&format!("[accounts]\nallowed_servers = [{bad:?}]")).unwrap();
            let err = file
                .apply(&mut NodeConfig::new("sqlite://x".into()))
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("[accounts] allowed_servers"),
                "{bad}: {err:#}"
            );
        }
    }

    #[test]
    fn auto_rebalance_is_off_unless_set_and_checked() {
        use crate::cluster::{AutoRebalance, Tolerance};
        let mut cfg = NodeConfig::new("sqlite://x".into());
        let file: FileConfig = toml::from_str("").unwrap();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.cluster.auto_rebalance, AutoRebalance::default());
        assert!(!cfg.cluster.auto_rebalance.enabled);
        let file: FileConfig = toml::from_str(
            "[cluster]\nauto_rebalance = true\nauto_rebalance_interval_secs = 60\n\
             auto_rebalance_max_moves = 4\nauto_rebalance_tolerance = \"2\"",
        )
        .unwrap();
        file.apply(&mut cfg).unwrap();
        assert_eq!(
            cfg.cluster.auto_rebalance,
            AutoRebalance {
                enabled: true,
                interval: Duration::from_secs(60),
                max_moves: 4,
                tolerance: Tolerance::Count(2),
            }
        );
        for bad in [
            "auto_rebalance_tolerance = \"ten\"",
            "auto_rebalance_interval_secs = 0",
            "auto_rebalance_max_moves = 0",
        ] {
            let file: FileConfig = toml::from_str(&format!("[cluster]\n{bad}")).unwrap();
            let err = file.apply(&mut cfg).unwrap_err();
            assert!(
                err.to_string().contains("[cluster] auto_rebalance"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_settings_are_named() {
        let err = toml::from_str::<FileConfig>("[serve]\nhttps = \"x\"").unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }
}
