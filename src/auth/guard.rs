//! The login guard: every password check (HTTP login, IRC `PASS`, SASL PLAIN, a
//! password change) goes through [`LoginGuard::admit`], then [`Attempt::verify`].
//!
//! **Budgets.** Failures are counted per source address (IPv6 by its /64) and per
//! account name (whether or not the account exists, so refusals tell nothing). Each
//! may have `free_failures`; after that every failure blocks the key for a delay
//! that starts at `failure_delay` and doubles up to `failure_delay_max`. Checks in
//! flight count against the free failures, so 50 concurrent guesses from one address
//! get at most `free_failures` argon2 runs. Records are forgotten `forget_after`
//! their last failure; each table keeps at most `max_records` (expired ones first,
//! then the oldest are dropped), so memory is bounded.
//!
//! **No lockout of the owner.** The account budget counts only failures, and an
//! attempt on a blocked account is still checked when it comes from an address in
//! good standing (fewer than [`GOOD_STANDING`] failures and checks in flight): the
//! owner logs in while an attacker, whose own address soon is blocked, keeps failing.
//! An attacker with many addresses gets [`GOOD_STANDING`] guesses per address per
//! `forget_after` on a blocked account; argon2 and the bounded hasher pace them too.
//!
//! **Logs.** A failed login is logged at WARN with target `ferry::login` and one fixed
//! message, the user name escaped (`{:?}`: quotes, `\n`, `\u{1b}`), so a name cannot
//! forge a line:
//! `login failed: door=irc-pass addr=192.0.2.7 user="alice"`. `docs/operations.md`
//! has the fail2ban filter.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::hasher::{Busy, Hasher};
use super::AuthSettings;

/// Failures plus checks in flight an address may have and still pass a blocked
/// account's budget.
pub const GOOD_STANDING: u32 = 2;

/// Which door a login came through (in logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    IrcPass,
    IrcSasl,
    /// The current password given to change it.
    PasswordChange,
    /// An invite link's token, checked or used to sign up (`invite`).
    Invite,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::IrcPass => "irc-pass",
            Door::IrcSasl => "irc-sasl",
            Door::PasswordChange => "password-change",
            Door::Invite => "invite",
        }
    }
}

/// Why an attempt was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Too many failures from this address or on this account: retry later.
    #[error("too many failed logins; retry in {} s", secs(*retry_after))]
    Throttled { retry_after: Duration },
    /// The password hashing pool is full.
    #[error("the server is busy checking passwords")]
    Busy,
}

fn secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl Refused {
    /// Whole seconds to wait, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refused::Throttled { retry_after } => secs(*retry_after),
            Refused::Busy => 1,
        }
    }
}

impl From<Busy> for Refused {
    fn from(_: Busy) -> Refused {
        Refused::Busy
    }
}

/// Node-wide login counters for `/metrics`.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Wrong passwords and unknown users.
    pub failed: AtomicU64,
    /// Attempts refused by a budget without a check.
    pub throttled: AtomicU64,
    /// Attempts refused because the hashing pool was full.
    pub busy: AtomicU64,
    pub succeeded: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    /// Checks admitted and not finished.
    pending: u32,
    last_failure: Instant,
    /// Blocked until then.
    until: Instant,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            pending: 0,
            last_failure: now,
            until: now,
        }
    }
}

/// Failure records by key, bounded.
struct Table<K> {
    map: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Table<K> {
        Table {
            map: HashMap::new(),
        }
    }

    /// A record with nothing in flight is dropped when it holds no failure, or its
    /// last failure is `forget_after` old and its block is over.
    fn expired(r: &Record, now: Instant, s: &AuthSettings) -> bool {
        r.pending == 0
            && (r.failures == 0 || (now >= r.until && now >= r.last_failure + s.forget_after))
    }

    /// The record of `key`, `None` when there is none (or it expired).
    fn get(&mut self, key: &K, now: Instant, s: &AuthSettings) -> Option<Record> {
        let r = *self.map.get(key)?;
        if Self::expired(&r, now, s) {
            self.map.remove(key);
            return None;
        }
        Some(r)
    }

    /// Whether `r` blocks a new attempt; `Some(wait)` when it does.
    fn blocks(r: &Record, now: Instant, s: &AuthSettings) -> Option<Duration> {
        if now < r.until {
            return Some(r.until - now);
        }
        let allowed = s.free_failures.saturating_sub(r.failures).max(1);
        (r.pending >= allowed).then_some(s.failure_delay)
    }

    fn entry(&mut self, key: &K, now: Instant, s: &AuthSettings) -> &mut Record {
        if !self.map.contains_key(key) && self.map.len() >= s.max_records {
            self.prune(now, s);
        }
        self.map
            .entry(key.clone())
            .or_insert_with(|| Record::new(now))
    }

    /// Drops expired records, then, if still full, the tenth with the oldest failures
    /// (records with checks in flight stay).
    fn prune(&mut self, now: Instant, s: &AuthSettings) {
        self.map.retain(|_, r| !Self::expired(r, now, s));
        if self.map.len() < s.max_records {
            return;
        }
        let mut times: Vec<Instant> = self.map.values().map(|r| r.last_failure).collect();
        let cut = times.len() / 10;
        times.select_nth_unstable(cut);
        let oldest = times[cut];
        self.map
            .retain(|_, r| r.pending > 0 || r.last_failure > oldest);
    }

    fn finish(&mut self, key: &K, failed: bool, now: Instant, s: &AuthSettings) -> bool {
        let Some(r) = self.map.get_mut(key) else {
            return false;
        };
        r.pending = r.pending.saturating_sub(1);
        if !failed {
            if r.pending == 0 && r.failures == 0 {
                self.map.remove(key);
            }
            return false;
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
        if r.failures >= s.free_failures {
            let doublings = (r.failures - s.free_failures).min(30);
            let delay = s
                .failure_delay
                .saturating_mul(1 << doublings)
                .min(s.failure_delay_max);
            r.until = now + delay;
            return true;
        }
        false
    }

    fn reset(&mut self, key: &K) {
        if let Some(r) = self.map.get_mut(key) {
            if r.pending <= 1 {
                self.map.remove(key);
            } else {
                *r = Record {
                    pending: r.pending - 1,
                    ..Record::new(r.last_failure)
                };
            }
        }
    }
}

/// The address key: IPv4 as is, IPv6 by its /64 (one host usually holds a whole /64).
fn addr_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The account key: the name as given, at most 64 characters (longer names exist
/// for nobody, so they share a record).
fn account_key(name: &str) -> String {
    name.chars().take(64).collect::<String>().to_lowercase()
}

/// The login guard of one node (see the module doc).
pub struct LoginGuard {
    settings: AuthSettings,
    addrs: Mutex<Table<IpAddr>>,
    accounts: Mutex<Table<String>>,
    /// The bounded argon2 pool (also for hashing new passwords).
    pub hasher: Hasher,
    pub stats: GuardStats,
}

/// An admitted login attempt; [`Attempt::verify`] checks the password and records the
/// outcome. Dropping it unchecked (a store error) records nothing.
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    door: Door,
    addr: IpAddr,
    account: String,
    done: bool,
}

/// An argon2 hash of a random password nobody knows: checked for unknown users, so
/// they cost the same time as a wrong password.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0l2JbVGUpHDH6d1eIGZ0gBIcbdBXnYGeD0wk7jVO9Ic";

impl LoginGuard {
    /// A guard whose hasher has `permits` permits.
    pub fn new(settings: AuthSettings, permits: usize) -> LoginGuard {
        LoginGuard {
            hasher: Hasher::new(permits, settings.hash_queue),
            settings,
            addrs: Mutex::new(Table::new()),
            accounts: Mutex::new(Table::new()),
            stats: GuardStats::default(),
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Admits an attempt on `account` from `addr`, or refuses it without a check.
    ///
    /// # Errors
    /// [`Refused::Throttled`] when the address is blocked, or the account is and the
    /// address is not in good standing.
    pub fn admit(&self, door: Door, addr: IpAddr, account: &str) -> Result<Attempt<'_>, Refused> {
        let s = &self.settings;
        let now = Instant::now();
        let akey = addr_key(addr);
        let ukey = account_key(account);
        let mut addrs = self.addrs.lock().unwrap();
        let mut accounts = self.accounts.lock().unwrap();
        let a = addrs.get(&akey, now, s);
        let u = accounts.get(&ukey, now, s);
        let refuse = |wait: Duration| {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            Err(Refused::Throttled { retry_after: wait })
        };
        if let Some(wait) = a.as_ref().and_then(|r| Table::<IpAddr>::blocks(r, now, s)) {
            return refuse(wait);
        }
        let good_standing = a.map_or(true, |r| r.failures + r.pending < GOOD_STANDING);
        if let Some(wait) = u.as_ref().and_then(|r| Table::<String>::blocks(r, now, s)) {
            if !good_standing {
                return refuse(wait);
            }
        }
        addrs.entry(&akey, now, s).pending += 1;
        accounts.entry(&ukey, now, s).pending += 1;
        Ok(Attempt {
            guard: self,
            door,
            addr,
            account: account.to_owned(),
            done: false,
        })
    }

    fn finish(&self, addr: IpAddr, account: &str, failed: bool) -> bool {
        let s = &self.settings;
        let now = Instant::now();
        let akey = addr_key(addr);
        let ukey = account_key(account);
        let blocked = self.addrs.lock().unwrap().finish(&akey, failed, now, s);
        let mut accounts = self.accounts.lock().unwrap();
        if failed {
            accounts.finish(&ukey, true, now, s);
        } else {
            accounts.reset(&ukey);
        }
        blocked
    }

    /// Records a failure that needed no password check (a malformed SASL exchange):
    /// it counts against the address like a wrong password.
    pub fn failed_without_check(&self, door: Door, addr: IpAddr) {
        let s = &self.settings;
        let now = Instant::now();
        let mut addrs = self.addrs.lock().unwrap();
        let r = addrs.entry(&addr_key(addr), now, s);
        r.pending += 1;
        addrs.finish(&addr_key(addr), true, now, s);
        drop(addrs);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        log_failure(door, addr, "");
    }
}

/// The one failed-login line (see the module doc for its format).
fn log_failure(door: Door, addr: IpAddr, account: &str) {
    warn!(
        target: "ferry::login",
        "login failed: door={} addr={} user={:?}",
        door.name(),
        addr,
        account
    );
}

impl Attempt<'_> {
    /// Checks `password` against `hash` (the dummy hash when the account does not
    /// exist: `None`) on the bounded pool, and records the outcome.
    ///
    /// # Errors
    /// [`Refused::Busy`] when the hashing pool is full (nothing is recorded).
    pub async fn verify(mut self, hash: Option<String>, password: &str) -> Result<bool, Refused> {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let guard = self.guard;
        let ok = match guard.hasher.verify(hash, password.to_owned()).await {
            Ok(ok) => ok && exists,
            Err(Busy) => {
                guard.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Busy);
            }
        };
        self.done = true;
        let blocked = guard.finish(self.addr, &self.account, !ok);
        if ok {
            guard.stats.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            guard.stats.failed.fetch_add(1, Ordering::Relaxed);
            log_failure(self.door, self.addr, &self.account);
            if blocked {
                info!(target: "ferry::login", addr = %self.addr, "address blocked after repeated login failures");
            }
        }
        Ok(ok)
    }
}

impl Attempt<'_> {
    /// Records the outcome of a check that needed no password hash (an invite
    /// token): a failure counts against the address and the account like a wrong
    /// password, a success clears the account's failures.
    pub fn record(mut self, ok: bool) {
        let guard = self.guard;
        self.done = true;
        let blocked = guard.finish(self.addr, &self.account, !ok);
        if ok {
            guard.stats.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            guard.stats.failed.fetch_add(1, Ordering::Relaxed);
            log_failure(self.door, self.addr, &self.account);
            if blocked {
                info!(target: "ferry::login", addr = %self.addr, "address blocked after repeated login failures");
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            let s = &self.guard.settings;
            let now = Instant::now();
            self.guard
                .addrs
                .lock()
                .unwrap()
                .finish(&addr_key(self.addr), false, now, s);
            self.guard
                .accounts
                .lock()
                .unwrap()
                .finish(&account_key(&self.account), false, now, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(
            AuthSettings {
                free_failures: 3,
                failure_delay: Duration::from_secs(1),
                failure_delay_max: Duration::from_secs(8),
                max_records: 100,
                ..AuthSettings::default()
            },
            2,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn fail(g: &LoginGuard, addr: &str, user: &str) -> Result<bool, Refused> {
        let a = g.admit(Door::IrcPass, ip(addr), user)?;
        a.verify(Some(crate::auth::hash_password("right")), "wrong")
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn address_budget_blocks_with_doubling_delays() {
        let g = guard();
        for _ in 0..3 {
            assert_eq!(fail(&g, "192.0.2.1", "alice").await, Ok(false));
        }
        let Err(Refused::Throttled { retry_after }) = fail(&g, "192.0.2.1", "bob").await else {
            panic!("blocked")
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(fail(&g, "192.0.2.1", "bob").await, Ok(false));
        let Err(Refused::Throttled { retry_after }) = fail(&g, "192.0.2.1", "bob").await else {
            panic!("blocked")
        };
        assert_eq!(retry_after, Duration::from_secs(2), "doubled");
        // Another address is not affected.
        assert_eq!(fail(&g, "192.0.2.2", "carol").await, Ok(false));
        // An IPv6 /64 is one address.
        for i in 0..3 {
            let _ = fail(&g, &format!("2001:db8::{i}"), "dave").await;
        }
        assert!(fail(&g, "2001:db8::99", "erin").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_attempts_count_against_the_free_failures() {
        let g = guard();
        let held: Vec<_> = (0..3)
            .map(|_| g.admit(Door::Http, ip("192.0.2.1"), "x").unwrap())
            .collect();
        assert!(g.admit(Door::Http, ip("192.0.2.1"), "x").is_err());
        drop(held);
        assert!(
            g.admit(Door::Http, ip("192.0.2.1"), "x").is_ok(),
            "unchecked attempts record nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_owner_passes_a_blocked_account_from_a_good_address() {
        let g = guard();
        let hash = crate::auth::hash_password("right");
        // Attackers from several addresses block alice's account.
        for i in 0..6 {
            let _ = fail(&g, &format!("198.51.100.{i}"), "alice").await;
        }
        // An address with failures of its own is refused on alice's account ...
        let _ = fail(&g, "203.0.113.9", "zed").await;
        let _ = fail(&g, "203.0.113.9", "zed").await;
        assert!(matches!(
            g.admit(Door::Http, ip("203.0.113.9"), "ALICE"),
            Err(Refused::Throttled { .. })
        ));
        // ... while the owner's address in good standing gets in with the password.
        let a = g.admit(Door::Http, ip("192.0.2.50"), "alice").unwrap();
        assert_eq!(a.verify(Some(hash), "right").await, Ok(true));
        assert_eq!(g.stats.succeeded.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_and_the_tables_stay_bounded() {
        let g = guard();
        for i in 0..250u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.failed_without_check(Door::IrcSasl, addr);
        }
        assert!(g.addrs.lock().unwrap().map.len() <= 100);
        tokio::time::advance(Duration::from_secs(3601)).await;
        g.failed_without_check(Door::IrcSasl, ip("192.0.2.1"));
        let now = Instant::now();
        let mut t = g.addrs.lock().unwrap();
        t.prune(now, &g.settings);
        assert_eq!(t.map.len(), 1, "expired records are dropped");
    }
}
