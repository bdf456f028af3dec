//! What every user actor of a node shares: the user section of the node's settings
//! ([`UserSettings`], read from `config`) and node-wide state the actors update or
//! draw from (ISUPPORT and caps interned per network, counters, the limiter, permits reserved by a migration).

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use super::{roster, Counters};
use crate::config::UserSettings;
use crate::limits::Limiter;
use crate::store::UserId;
use crate::upstream::UpstreamConfig;

/// Settings every user actor of a node shares: its [`UserSettings`] (which it derefs
/// to, so an actor reads `config.quit_message`) and node-wide state.
#[derive(Clone, Debug)]
pub struct UserConfig {
    pub settings: UserSettings,
    /// Per-network facts shared by all users of the node while identical (ISUPPORT,
    /// caps; never member lists: see `roster`).
    pub shared: Arc<roster::Shared>,
    /// Node-wide counters of every upstream connection, for `/metrics`.
    pub upstream_stats: Arc<crate::upstream::UpstreamStats>,
    /// Node-wide counters of the user actors, for `/metrics`.
    pub counters: Arc<Counters>,
    /// The node's limiter, which every upstream connect goes through; `None` in
    /// tests that drive actors without a node.
    pub limiter: Option<Arc<Limiter>>,
    /// Permits a migration reserved for users about to be adopted here.
    pub reserved: crate::upstream::ReservedPermits,
    /// The node's Web Push service; `None` when push is off (and in tests that
    /// drive actors without a node).
    pub push: Option<Arc<crate::push::PushHub>>,
    /// The node's ident table (`[ident] listen`): upstream sockets are recorded there
    /// under their user's ident name; `None` when the node answers no ident queries.
    pub idents: Option<crate::ident::Idents>,
    /// The node's IRC clients by user, for notices beyond their own network
    /// (`soju.im/bouncer-networks-notify`, `draft/read-marker`).
    pub watchers: Arc<super::Watchers>,
    /// The node's shared channel streams and its id clock (see `streams`); `None`
    /// when the node does not share channel lines (`[store] share_channel_lines =
    /// false`, and tests that drive actors without a node): each user's lines are
    /// then its own, with dense ids.
    pub streams: Option<Arc<super::Streams>>,
}

impl UserConfig {
    /// The shared settings of a node's actors from its `settings`, with fresh
    /// node-wide state; every upstream connect goes through `limiter` when given.
    pub fn new(settings: &UserSettings, limiter: Option<Arc<Limiter>>) -> UserConfig {
        UserConfig {
            settings: settings.clone(),
            shared: Arc::default(),
            upstream_stats: Arc::default(),
            counters: Arc::default(),
            limiter,
            reserved: Arc::default(),
            push: None,
            idents: None,
            watchers: Arc::default(),
            streams: None,
        }
    }

    /// The source IP a user's networks connect from unless one pins its own.
    pub(crate) fn source_ip(&self, user: UserId) -> Option<IpAddr> {
        if self.source_ips.is_empty() {
            return None;
        }
        Some(self.source_ips[user.unsigned_abs() as usize % self.source_ips.len()])
    }

    pub(super) fn apply_upstream_defaults(&self, cfg: &mut UpstreamConfig) {
        cfg.ping_interval = self.ping_interval;
        cfg.ping_timeout = self.ping_timeout;
        cfg.register_timeout = self.register_timeout;
        cfg.tls_timeout = self.tls_timeout;
        cfg.backoff_min = self.backoff_min;
        cfg.backoff_max = self.backoff_max;
        cfg.flood_rate = self.flood_rate;
        cfg.flood_burst = self.flood_burst;
        cfg.limiter = self.limiter.clone();
        cfg.reserved = Some(self.reserved.clone());
    }
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig::new(&UserSettings::default(), None)
    }
}

impl Deref for UserConfig {
    type Target = UserSettings;

    fn deref(&self) -> &UserSettings {
        &self.settings
    }
}
