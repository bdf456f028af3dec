//! The settings each part reads (users, accounts, ident, HTTP limits, downstream), with
//! their defaults and bounds.

use super::*;

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
    /// A channel line several users of the node receive from the same server is
    /// stored once, visible to each of them (`[store] share_channel_lines`, default
    /// on). Off: every user's lines are its own rows with dense ids, as before.
    pub share_channel_lines: bool,
    /// How long after one connection received a channel line without a `msgid`
    /// another user's connection may still match it ([`crate::user::streams::WINDOW`]).
    /// Not in the config file: tests on a loaded machine widen it, so that which lines
    /// are shared does not hang on how far one actor lags another.
    pub share_window: Duration,
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
            share_channel_lines: true,
            share_window: crate::user::streams::WINDOW,
        }
    }
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

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
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
