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

mod file;
mod settings;

pub use file::*;
pub use settings::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../../ferry.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let mut cfg = NodeConfig::new("sqlite://x".into());
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.http, "127.0.0.1:8080".parse().unwrap());
        assert!(cfg.push_enabled);
        assert!(!cfg.push.allow_http);
    }

    #[test]
    fn sharing_channel_lines_is_on_unless_turned_off() {
        let mut cfg = NodeConfig::new("sqlite://x".into());
        assert!(cfg.user.share_channel_lines);
        let file: FileConfig = toml::from_str("[store]\nshare_channel_lines = false").unwrap();
        file.apply(&mut cfg).unwrap();
        assert!(!cfg.user.share_channel_lines);
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
