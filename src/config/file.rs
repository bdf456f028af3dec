//! The config file: one section struct per TOML table, and how a file and the flags
//! merge into a [`NodeConfig`].

use super::*;

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
    #[serde(default)]
    pub store: StoreSection,
}

/// `[store]`: how lines are stored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// A channel line several users of this node receive from the same server is one
    /// stored event, visible to each of them (default true); false: a row per user.
    pub share_channel_lines: Option<bool>,
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
        if let Some(v) = self.store.share_channel_lines {
            cfg.user.share_channel_lines = v;
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
