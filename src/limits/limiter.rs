//! The limiter's state and its waiting protocol. See the module docs in `mod.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::key;
use super::Kind;
use crate::store::{NetworkLimits, SessionCount, Store};

/// A governor clock that reads tokio's clock, so `tokio::time::pause()` drives it in
/// tests and it agrees with the `sleep`s the limiter waits with.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The node-wide settings of the limiter.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Outgoing lines per second per connection where no limit says otherwise.
    pub messages_per_second: f64,
    /// Outgoing lines sent at once before pacing starts, where no limit says otherwise.
    pub message_burst: u32,
    /// How long a (network, source IP) gets no connects after the server said we
    /// connect too fast. Servers' throttle windows are about a minute (solanum: 60 s)
    /// and retrying early extends their ban caches.
    pub throttle_backoff: Duration,
    /// How long a source IP counts as full for a network after the server said it has
    /// no slot for it.
    pub full_backoff: Duration,
    /// Other nodes' session counts older than this are ignored (their node is gone).
    pub remote_stale_after: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            // Issue 4: one message per two seconds after a small burst, as large
            // networks expect.
            // The upstream defaults (see `UpstreamConfig::new`).
            messages_per_second: 1.0,
            message_burst: 10,
            throttle_backoff: Duration::from_secs(60),
            full_backoff: Duration::from_secs(30),
            remote_stale_after: Duration::from_secs(30),
        }
    }
}

/// Who wants to connect where: what the key rule needs.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` of the server.
    pub addr: String,
    /// The user's name for the network.
    pub network_name: String,
    /// Who is connecting (`user/network`), for logs and the grant log.
    pub label: String,
}

/// One granted connect, for tests and pacing figures.
#[derive(Clone, Debug)]
pub struct Grant {
    pub at: Instant,
    pub source: Option<IpAddr>,
    pub label: String,
}

/// Counters over the limiter's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connects granted.
    pub granted: u64,
    /// Rejections the servers classified as "throttled / too fast".
    pub throttled: u64,
    /// Rejections the servers classified as "no slot on this address".
    pub too_many_connections: u64,
    /// Live connections adopted without a connect (resumed after a park or an
    /// in-place upgrade: [`Limiter::adopt`]).
    pub adopted: u64,
    /// Of those, the ones that took their (key, source IP) over its configured limit.
    pub adopted_over_limit: u64,
}

/// A key's live sessions on one source IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpCount {
    pub key: String,
    pub source: Option<IpAddr>,
    pub sessions: u32,
}

/// How many grants each key remembers for [`Limiter::grants`].
const GRANT_LOG: usize = 10_000;

#[derive(Default)]
struct IpState {
    sessions: u32,
    /// The connect-rate bucket; `None` when the key has no connect limit.
    gcra: Option<Gcra>,
    /// After "throttled": no connects from this IP until then.
    blocked_until: Option<Instant>,
    /// After "too many connections": this IP counts as full until then.
    full_until: Option<Instant>,
}

/// A ticket in a key's queue: its id, since when it waits and for whom.
struct Waiter {
    id: u64,
    since: Instant,
    label: String,
    /// A connect for a user moved to this node (a migration's reservation, a failed
    /// move handed back): it goes even while the node drains.
    for_move: bool,
}

/// A connect waiting in the limiter, as [`Limiter::waiters`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub key: String,
    /// Who waits (`user/network`, the upstream's label).
    pub label: String,
    /// Since when (tokio's clock).
    pub since: Instant,
}

struct KeyState {
    /// Tickets waiting, oldest first; only the front one may be granted (while the
    /// node drains, the oldest one for a move).
    queue: VecDeque<Waiter>,
    ips: BTreeMap<Option<IpAddr>, IpState>,
    /// Woken on every change that may let the front ticket through.
    notify: Arc<Notify>,
    grants: VecDeque<Grant>,
}

impl KeyState {
    fn new() -> KeyState {
        KeyState {
            queue: VecDeque::new(),
            ips: BTreeMap::new(),
            notify: Arc::new(Notify::new()),
            grants: VecDeque::new(),
        }
    }

    fn local_sessions(&self) -> u32 {
        self.ips.values().map(|s| s.sessions).sum()
    }

    /// The ticket that may be granted next: the front one, or while the node drains
    /// the oldest connect for a move (the others wait, in order, behind the drain).
    fn next(&self, draining: bool) -> Option<u64> {
        self.queue
            .iter()
            .find(|w| !draining || w.for_move)
            .map(|w| w.id)
    }
}

struct State {
    limits: HashMap<String, NetworkLimits>,
    keys: HashMap<String, KeyState>,
    /// Sessions other nodes reported per key.
    remote: HashMap<String, u32>,
    next_ticket: u64,
    stats: Stats,
    /// This node drains: it starts no new upstream connects but those for moves.
    draining: bool,
}

/// The node-wide limiter, keyed by (network key, source IP). Cheap to share (`Arc`).
pub struct Limiter {
    defaults: Defaults,
    clock: TokioClock,
    state: Mutex<State>,
    /// Where the cluster-wide connect budgets (`connects_per_minute_total`) are
    /// taken from; without it they are not enforced (a limiter on its own, tests).
    budget: std::sync::OnceLock<Store>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// What the front ticket may do now.
enum Decision {
    Granted(Option<IpAddr>),
    /// Wait for a change, or until this instant if given.
    Wait(Option<Instant>),
}

fn quota(l: &NetworkLimits) -> Option<Quota> {
    if l.connects_per_minute.is_nan()
        || l.connects_per_minute <= 0.0
        || !l.connects_per_minute.is_finite()
    {
        return None;
    }
    let period = Duration::from_secs_f64(60.0 / l.connects_per_minute);
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(l.burst.max(1))?))
}

impl Limiter {
    pub fn new(defaults: Defaults) -> Arc<Limiter> {
        Arc::new(Limiter {
            defaults,
            clock: TokioClock {
                origin: Instant::now(),
            },
            state: Mutex::new(State {
                limits: HashMap::new(),
                keys: HashMap::new(),
                remote: HashMap::new(),
                next_ticket: 1,
                stats: Stats::default(),
                draining: false,
            }),
            budget: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters (every update is
        // a single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// Takes the cluster-wide connect budgets of keys with `connects_per_minute_total`
    /// from `store` from now on (set once, at start).
    pub fn set_budget_store(&self, store: Store) {
        let _ = self.budget.set(store);
    }

    /// For ticket `id` of `key`: the key's cluster-wide rate and burst when the ticket
    /// is at the front and a source among `candidates` has a free slot — the moment
    /// to take a token of the cluster's budget (before the slot is granted, so a
    /// token is never spent by a connect that then waits for a slot).
    fn budget_due(&self, key: &str, id: u64, candidates: &[Option<IpAddr>]) -> Option<(f64, u32)> {
        self.budget.get()?;
        let now = Instant::now();
        let st = self.lock();
        let l = st.limits.get(key)?;
        let rate = l.connects_per_minute_total.filter(|r| *r > 0.0)?;
        let ks = st.keys.get(key)?;
        if ks.next(st.draining) != Some(id) {
            return None;
        }
        let remote = st.remote.get(key).copied().unwrap_or(0);
        if l.sessions_total
            .is_some_and(|t| ks.local_sessions() + remote >= t)
        {
            return None;
        }
        let room = candidates.iter().any(|src| {
            ks.ips.get(src).map_or(true, |s| {
                s.blocked_until.map_or(true, |t| t <= now)
                    && s.full_until.map_or(true, |t| t <= now)
                    && s.sessions < l.sessions_per_ip
            })
        });
        room.then_some((rate, l.burst))
    }

    /// Whether `key` has a cluster-wide connect rate that this limiter enforces.
    fn has_budget(&self, key: &str) -> bool {
        self.budget.get().is_some()
            && self
                .lock()
                .limits
                .get(key)
                .and_then(|l| l.connects_per_minute_total)
                .is_some_and(|r| r > 0.0)
    }

    /// Pauses (`true`) or resumes the connects of this node's users: while the node
    /// drains, only connects for moves ([`Limiter::enqueue_for_move`]) are granted;
    /// the others keep their place and wait, so a user still waiting for a slot is
    /// moved away before it ever connects here.
    pub fn set_draining(&self, draining: bool) {
        let mut st = self.lock();
        if st.draining == draining {
            return;
        }
        st.draining = draining;
        for ks in st.keys.values() {
            ks.notify.notify_waiters();
        }
        let waiting: usize = st.keys.values().map(|k| k.queue.len()).sum();
        if draining {
            info!(
                waiting,
                "limiter: the node drains; only connects for moves start"
            );
        } else {
            info!(
                waiting,
                "limiter: the node no longer drains; connects resume"
            );
        }
    }

    /// Whether connects are paused for a drain (see [`Limiter::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// The key a network falls under with the current configuration.
    pub fn key_for(&self, addr: &str, network_name: &str) -> String {
        let st = self.lock();
        key::resolve(
            st.limits.keys().map(String::as_str),
            &key::host_of(addr),
            network_name,
        )
    }

    /// The configured limits, by key.
    pub fn limits(&self) -> Vec<NetworkLimits> {
        let mut v: Vec<_> = self.lock().limits.values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Replaces the configuration (a reload from the store). Keys whose connect rate
    /// changed get fresh buckets (a full burst); waiters re-check at once.
    pub fn set_limits(&self, limits: Vec<NetworkLimits>) {
        let mut st = self.lock();
        let new: HashMap<String, NetworkLimits> = limits
            .into_iter()
            .map(|mut l| {
                l.key = l.key.to_lowercase();
                (l.key.clone(), l)
            })
            .collect();
        let mut changed = Vec::new();
        for (k, ks) in st.keys.iter() {
            let old_q = st.limits.get(k).and_then(quota);
            let new_q = new.get(k).and_then(quota);
            if old_q != new_q {
                changed.push((k.clone(), new_q));
            }
            ks.notify.notify_waiters();
        }
        for (k, q) in changed {
            if let Some(ks) = st.keys.get_mut(&k) {
                for ip in ks.ips.values_mut() {
                    ip.gcra = q.map(|q| Gcra::direct_with_clock(q, self.clock.clone()));
                }
            }
            info!(key = %k, "limiter: connect rate changed");
        }
        if st.limits != new {
            debug!(keys = new.len(), "limiter: limits reloaded");
        }
        st.limits = new;
    }

    /// Records the session counts in the store (every node's), keeping other nodes'
    /// fresh ones for `sessions_total`.
    pub fn set_remote_counts(&self, node_id: &str, counts: &[SessionCount], now: DateTime<Utc>) {
        let stale = chrono::Duration::from_std(self.defaults.remote_stale_after)
            .unwrap_or(chrono::Duration::MAX);
        let mut remote: HashMap<String, u32> = HashMap::new();
        for c in counts {
            if c.node_id != node_id && now - c.updated_at <= stale {
                *remote.entry(c.key.clone()).or_default() += c.sessions;
            }
        }
        let mut st = self.lock();
        st.remote = remote;
        for ks in st.keys.values() {
            ks.notify.notify_waiters();
        }
    }

    /// This node's live sessions per (key, source IP), without zeros.
    pub fn local_counts(&self) -> Vec<IpCount> {
        let st = self.lock();
        let mut out = Vec::new();
        for (k, ks) in &st.keys {
            for (ip, s) in &ks.ips {
                if s.sessions > 0 {
                    out.push(IpCount {
                        key: k.clone(),
                        source: *ip,
                        sessions: s.sessions,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.key, a.source).cmp(&(&b.key, b.source)));
        out
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// The connects granted under `key`, oldest first (the last 10,000).
    pub fn grants(&self, key: &str) -> Vec<Grant> {
        self.lock()
            .keys
            .get(key)
            .map(|k| k.grants.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many tickets wait under `key`.
    pub fn waiting(&self, key: &str) -> usize {
        self.lock().keys.get(key).map_or(0, |k| k.queue.len())
    }

    /// Per key, the sessions holding a slot on this node and the connects waiting in
    /// its queue (keys with neither are left out): the load a node publishes for
    /// placement.
    pub fn key_load(&self) -> BTreeMap<String, (u32, u32)> {
        let st = self.lock();
        st.keys
            .iter()
            .map(|(k, ks)| (k.clone(), (ks.local_sessions(), ks.queue.len() as u32)))
            .filter(|(_, (held, waiting))| *held > 0 || *waiting > 0)
            .collect()
    }

    /// Every connect waiting in a queue, with its key and since when.
    pub fn waiters(&self) -> Vec<Waiting> {
        let st = self.lock();
        let mut out: Vec<Waiting> = st
            .keys
            .iter()
            .flat_map(|(k, ks)| {
                ks.queue.iter().map(move |w| Waiting {
                    key: k.clone(),
                    label: w.label.clone(),
                    since: w.since,
                })
            })
            .collect();
        out.sort_by(|a, b| a.since.cmp(&b.since).then(a.label.cmp(&b.label)));
        out
    }

    /// The outgoing message rate and burst for connections under `key`.
    pub fn flood(&self, key: &str) -> (f64, u32) {
        let st = self.lock();
        flood_of(&self.defaults, st.limits.get(key))
    }

    /// Takes a place in the queue of the target's key at once (so callers that
    /// enqueue in order are served in order), to be waited on with
    /// [`Ticket::acquire`]. Dropping the ticket leaves the queue.
    pub fn enqueue(self: &Arc<Self>, target: &Target) -> Ticket {
        self.enqueue_as(target, false)
    }

    /// Like [`Limiter::enqueue`], for a connect of a user being moved to this node:
    /// it is granted even while the node drains (see [`Limiter::set_draining`]).
    pub fn enqueue_for_move(self: &Arc<Self>, target: &Target) -> Ticket {
        self.enqueue_as(target, true)
    }

    fn enqueue_as(self: &Arc<Self>, target: &Target, for_move: bool) -> Ticket {
        let mut st = self.lock();
        let key = key::resolve(
            st.limits.keys().map(String::as_str),
            &key::host_of(&target.addr),
            &target.network_name,
        );
        let id = st.next_ticket;
        st.next_ticket += 1;
        st.keys
            .entry(key.clone())
            .or_insert_with(KeyState::new)
            .queue
            .push_back(Waiter {
                id,
                since: Instant::now(),
                label: target.label.clone(),
                for_move,
            });
        Ticket {
            limiter: self.clone(),
            key,
            id,
            label: target.label.clone(),
            queued: true,
        }
    }

    /// Waits for a session slot and a connect token (see [`Ticket::acquire`]).
    pub async fn acquire(
        self: &Arc<Self>,
        target: &Target,
        preferred: Option<IpAddr>,
        candidates: &[IpAddr],
    ) -> Permit {
        self.enqueue(target).acquire(preferred, candidates).await
    }

    /// Decides for ticket `id` of `key`; grants (and dequeues it) when it is at the
    /// front and a source IP has a slot and a token.
    fn decide(
        &self,
        key: &str,
        id: u64,
        label: &str,
        preferred: Option<IpAddr>,
        candidates: &[Option<IpAddr>],
    ) -> Decision {
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let limits = st.limits.get(key).cloned();
        let remote = st.remote.get(key).copied().unwrap_or(0);
        let draining = st.draining;
        let ks = st.keys.entry(key.to_owned()).or_insert_with(KeyState::new);
        if ks.next(draining) != Some(id) {
            return Decision::Wait(None);
        }
        if let Some(total) = limits.as_ref().and_then(|l| l.sessions_total) {
            if ks.local_sessions() + remote >= total {
                return Decision::Wait(None);
            }
        }
        let q = limits.as_ref().and_then(quota);
        let per_ip = limits.as_ref().map(|l| l.sessions_per_ip);
        let mut wake: Option<Instant> = None;
        let mut soonest = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        // Eligible sources, most free slots first, the preferred one first on a tie.
        let mut eligible: Vec<(u32, bool, Option<IpAddr>)> = Vec::new();
        for src in candidates {
            let s = ks.ips.entry(*src).or_insert_with(|| IpState {
                gcra: q.map(|q| Gcra::direct_with_clock(q, self.clock.clone())),
                ..IpState::default()
            });
            if let Some(t) = s.blocked_until.filter(|t| *t > now) {
                soonest(t);
                continue;
            }
            if let Some(t) = s.full_until.filter(|t| *t > now) {
                soonest(t);
                continue;
            }
            let free = match per_ip {
                Some(cap) => cap.saturating_sub(s.sessions),
                None => u32::MAX - s.sessions,
            };
            if free > 0 {
                eligible.push((free, *src == preferred, *src));
            }
        }
        eligible.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        for (_, _, src) in eligible {
            let s = ks.ips.get_mut(&src).expect("inserted above");
            if let Some(g) = &s.gcra {
                if let Err(nu) = g.check() {
                    soonest(now + nu.wait_time_from(self.clock.now()));
                    continue;
                }
            }
            s.sessions += 1;
            ks.queue.retain(|w| w.id != id);
            if ks.grants.len() >= GRANT_LOG {
                ks.grants.pop_front();
            }
            ks.grants.push_back(Grant {
                at: now,
                source: src,
                label: label.to_owned(),
            });
            ks.notify.notify_waiters();
            st.stats.granted += 1;
            return Decision::Granted(src);
        }
        Decision::Wait(wake)
    }

    /// Counts a connection that is already up as a session on (`key`, `source`) and
    /// returns its [`Permit`]: a connection resumed after a park or an in-place upgrade
    /// (`upstream::resume`). No queue, no connect token, no token of the cluster's
    /// connect budget — the connection exists, so nothing is dialled — and no check
    /// against the limits: when the count goes over `sessions_per_ip` (or the node's
    /// view of `sessions_total`) that is the truth, logged and counted
    /// ([`Stats::adopted_over_limit`]), and connects under the key wait until it falls
    /// below again. Dropping the permit frees the slot as for any other.
    ///
    /// `key` is the one the connection's permit counted under ([`Permit::key`]; a
    /// changed key rule does not move a live session, as for any connection), or
    /// [`Limiter::key_for`] when that is not known; `label` is for logs.
    pub fn adopt(self: &Arc<Self>, key: &str, source: Option<IpAddr>, label: &str) -> Permit {
        let key = key.to_owned();
        let (per_ip, sessions, over_total) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let limits = st.limits.get(&key).cloned();
            let remote = st.remote.get(&key).copied().unwrap_or(0);
            let q = limits.as_ref().and_then(quota);
            let ks = st.keys.entry(key.clone()).or_insert_with(KeyState::new);
            // A bucket like the one a connect would have created, so later connects
            // from this address are paced.
            let s = ks.ips.entry(source).or_insert_with(|| IpState {
                gcra: q.map(|q| Gcra::direct_with_clock(q, self.clock.clone())),
                ..IpState::default()
            });
            s.sessions += 1;
            let sessions = s.sessions;
            let local = ks.local_sessions();
            ks.notify.notify_waiters();
            let per_ip = limits.as_ref().map(|l| l.sessions_per_ip);
            let over_total = limits
                .as_ref()
                .and_then(|l| l.sessions_total)
                .filter(|t| local + remote > *t);
            st.stats.adopted += 1;
            let over = per_ip.is_some_and(|cap| sessions > cap) || over_total.is_some();
            if over {
                st.stats.adopted_over_limit += 1;
            }
            (per_ip, sessions, over_total)
        };
        if let Some(cap) = per_ip.filter(|cap| sessions > *cap) {
            warn!(key, source = ?source, label, sessions, sessions_per_ip = cap,
                  "limiter: a live connection taken over puts this address over its session limit; connects wait until it falls below");
        } else if let Some(total) = over_total {
            warn!(key, source = ?source, label, sessions_total = total,
                  "limiter: a live connection taken over puts this network over the cluster's session cap; connects wait until it falls below");
        } else {
            debug!(key, source = ?source, label, sessions, "limiter: live connection adopted");
        }
        let (rate, burst) = self.flood(&key);
        Permit {
            limiter: self.clone(),
            key,
            source,
            messages_per_second: rate,
            message_burst: burst,
        }
    }

    fn leave_queue(&self, key: &str, id: u64) {
        let mut st = self.lock();
        if let Some(ks) = st.keys.get_mut(key) {
            ks.queue.retain(|t| t.id != id);
            ks.notify.notify_waiters();
        }
    }

    fn release(&self, key: &str, src: Option<IpAddr>) {
        let mut st = self.lock();
        if let Some(ks) = st.keys.get_mut(key) {
            if let Some(s) = ks.ips.get_mut(&src) {
                s.sessions = s.sessions.saturating_sub(1);
            }
            ks.notify.notify_waiters();
        }
    }

    fn feedback(&self, key: &str, src: Option<IpAddr>, kind: Kind) {
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(ks) = st.keys.get_mut(key) else {
            return;
        };
        let s = ks.ips.entry(src).or_default();
        match kind {
            Kind::Throttled => {
                st.stats.throttled += 1;
                s.blocked_until = Some(now + self.defaults.throttle_backoff);
                warn!(key, source = ?src, backoff_ms = self.defaults.throttle_backoff.as_millis() as u64,
                      "limiter: the server throttled us; no connects from this address to this network for a while");
            }
            Kind::TooManyConnections => {
                st.stats.too_many_connections += 1;
                s.full_until = Some(now + self.defaults.full_backoff);
                warn!(key, source = ?src, backoff_ms = self.defaults.full_backoff.as_millis() as u64,
                      "limiter: the server has no slot for this address; trying others");
            }
            Kind::Temporary | Kind::Permanent => {}
        }
        ks.notify.notify_waiters();
    }
}

fn flood_of(d: &Defaults, l: Option<&NetworkLimits>) -> (f64, u32) {
    (
        l.and_then(|l| l.messages_per_second)
            .filter(|r| *r > 0.0)
            .unwrap_or(d.messages_per_second),
        l.and_then(|l| l.message_burst)
            .filter(|b| *b > 0)
            .unwrap_or(d.message_burst),
    )
}

/// A place in a key's queue.
pub struct Ticket {
    limiter: Arc<Limiter>,
    key: String,
    id: u64,
    label: String,
    queued: bool,
}

impl Ticket {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until this ticket is at the front of its key's queue and a source IP
    /// among `candidates` (none: an unbound connection) has a free slot and a connect
    /// token; takes the slot on the IP with most free slots (`preferred` on a tie).
    /// Cancel by dropping the future: the ticket leaves the queue.
    pub async fn acquire(mut self, preferred: Option<IpAddr>, candidates: &[IpAddr]) -> Permit {
        let sources: Vec<Option<IpAddr>> = if candidates.is_empty() {
            vec![preferred]
        } else {
            candidates.iter().copied().map(Some).collect()
        };
        let notify = {
            let mut st = self.limiter.lock();
            st.keys
                .entry(self.key.clone())
                .or_insert_with(KeyState::new)
                .notify
                .clone()
        };
        // A token of the cluster's connect budget, taken once this ticket is next.
        let mut budget_taken = false;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before deciding, so a change in between is not missed.
            notified.as_mut().enable();
            if !budget_taken {
                if let Some((rate, burst)) = self.limiter.budget_due(&self.key, self.id, &sources) {
                    let store = self.limiter.budget.get().expect("checked by budget_due");
                    match store.take_connect_token(&self.key, rate, burst).await {
                        Ok(None) => budget_taken = true,
                        Ok(Some(wait)) => {
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Err(e) => {
                            warn!(key = %self.key, error = %e,
                                  "limiter: the cluster's connect budget cannot be read; waiting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                } else if self.limiter.has_budget(&self.key) {
                    // Not next, or no slot: wait for a change (or recheck soon, since
                    // the limits may have changed meanwhile).
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            match self
                .limiter
                .decide(&self.key, self.id, &self.label, preferred, &sources)
            {
                Decision::Granted(source) => {
                    self.queued = false;
                    let (rate, burst) = self.limiter.flood(&self.key);
                    return Permit {
                        limiter: self.limiter.clone(),
                        key: std::mem::take(&mut self.key),
                        source,
                        messages_per_second: rate,
                        message_burst: burst,
                    };
                }
                Decision::Wait(None) => notified.await,
                Decision::Wait(Some(at)) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued {
            self.limiter.leave_queue(&self.key, self.id);
        }
    }
}

/// A session slot on one (key, source IP), held while the connection lives.
pub struct Permit {
    limiter: Arc<Limiter>,
    key: String,
    source: Option<IpAddr>,
    /// Flood control for this connection, from the key's limits or the defaults.
    pub messages_per_second: f64,
    pub message_burst: u32,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key)
            .field("source", &self.source)
            .finish()
    }
}

impl Permit {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The source address to bind (`None`: do not bind).
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// Tells the limiter how the server answered, so "throttled" holds back the
    /// whole (key, source IP) and "too many connections" marks the IP full.
    pub fn report(&self, kind: Kind) {
        self.limiter.feedback(&self.key, self.source, kind);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(&self.key, self.source);
    }
}

// Make `Reference` used (its methods are how governor reads our clock).
const _: fn(&Duration, Duration) -> governor::nanos::Nanos =
    <Duration as Reference>::duration_since;
