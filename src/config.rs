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

use crate::cluster::ClusterConfig;
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
    pub writer: WriterConfig,
    /// Lease, failover margin and loop interval (`--lease-seconds`).
    pub cluster: ClusterConfig,
}

impl NodeConfig {
    /// Defaults for a node whose store is `database`.
    pub fn new(database: String) -> NodeConfig {
        NodeConfig {
            node_id: "local".to_owned(),
            database,
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
            writer: WriterConfig::default(),
            cluster: ClusterConfig::default(),
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
            "v{} quit={:?} ping={:?}/{:?} register={:?} backoff={:?}..{:?} flood={}/{} writer={:?}/{:?} lease={:?}/{:?} login_delay={:?}",
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
        )
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
}

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
            backoff_min: up.backoff_min,
            backoff_max: up.backoff_max,
            flood_rate: up.flood_rate,
            flood_burst: up.flood_burst,
            membership_events_max_members: MEMBERSHIP_EVENTS_MAX_MEMBERS,
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
}

/// `[backlog]`: what is stored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogSection {
    /// Other people's JOIN, PART, QUIT and NICK are stored only in channels of at
    /// most this many members (always relayed live).
    pub membership_events_max_members: Option<usize>,
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
    /// Smallest reconnect delay, seconds.
    pub backoff_min_secs: Option<u64>,
    /// Largest reconnect delay, seconds.
    pub backoff_max_secs: Option<u64>,
    /// Outgoing lines per second per connection after the burst.
    pub messages_per_second: Option<f64>,
    /// Outgoing lines sent at once before pacing starts.
    pub message_burst: Option<u32>,
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
    pub fn apply(&self, cfg: &mut NodeConfig) {
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
        if let Some(v) = self.backlog.membership_events_max_members {
            cfg.user.membership_events_max_members = v;
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
        file.apply(&mut cfg);
        assert_eq!(cfg.http, "127.0.0.1:8080".parse().unwrap());
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
