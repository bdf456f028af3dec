//! What every user actor of a node shares: the user section of the node's settings
//! ([`UserSettings`], read from `config`) and node-wide state the actors update or
//! draw from (member lists, counters, the limiter, permits reserved by a migration).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{roster, Counters};
use crate::config::UserSettings;
use crate::limits::Limiter;
use crate::store::UserId;
use crate::upstream::UpstreamConfig;

/// Settings every user actor of a node shares.
#[derive(Clone, Debug)]
pub struct UserConfig {
    /// Egress addresses to connect from; a user is spread over them by id.
    pub source_ips: Vec<IpAddr>,
    pub quit_message: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub register_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub flood_rate: f64,
    pub flood_burst: u32,
    /// Channel member lists shared by all users of the node (see `roster`).
    pub rosters: Arc<roster::Rosters>,
    /// Node-wide counters of every upstream connection, for `/metrics`.
    pub upstream_stats: Arc<crate::upstream::UpstreamStats>,
    /// Node-wide counters of the user actors, for `/metrics`.
    pub counters: Arc<Counters>,
    /// The node's limiter, which every upstream connect goes through; `None` in
    /// tests that drive actors without a node.
    pub limiter: Option<Arc<Limiter>>,
    /// Permits a migration reserved for users about to be adopted here.
    pub reserved: crate::upstream::ReservedPermits,
    /// Other people's JOIN, PART, QUIT and NICK are stored in a channel's backlog only
    /// while it has at most this many members (they are always relayed live).
    pub membership_events_max_members: usize,
}

impl UserConfig {
    /// The shared settings of a node's actors from its `settings`, with fresh
    /// node-wide state; every upstream connect goes through `limiter` when given.
    pub fn new(settings: &UserSettings, limiter: Option<Arc<Limiter>>) -> UserConfig {
        let s = settings;
        UserConfig {
            source_ips: s.source_ips.clone(),
            quit_message: s.quit_message.clone(),
            ping_interval: s.ping_interval,
            ping_timeout: s.ping_timeout,
            register_timeout: s.register_timeout,
            backoff_min: s.backoff_min,
            backoff_max: s.backoff_max,
            flood_rate: s.flood_rate,
            flood_burst: s.flood_burst,
            rosters: Arc::default(),
            upstream_stats: Arc::default(),
            counters: Arc::default(),
            limiter,
            reserved: Arc::default(),
            membership_events_max_members: s.membership_events_max_members,
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
