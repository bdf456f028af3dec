//! Channel member lists shared by every user of a node in the same channel.
//!
//! A hosted bouncer has many users in the same channels of the same network;
//! keeping one member list per user is what makes ZNC spend about a
//! megabyte per user when a thousand users share five big channels. Here a
//! node keeps one [`Roster`] per (network, channel), shared through an `Arc`
//! by every user actor whose connection is in that channel.
//!
//! Each user's connection sees the same membership events (JOIN, PART, QUIT,
//! NICK, prefix MODEs), shortly after one another, and every actor applies
//! them: the updates are idempotent (insert, remove, set a prefix), so the
//! list converges to what the server says. The first user to join fills the
//! list from NAMES; later joiners skip their NAMES reply, the list is
//! already current.
//!
//! Where a QUIT or NICK is *stored* depends on which channels the nick was in,
//! and another actor may already have applied the same QUIT. So a roster
//! remembers recent departures for a short while: "was in this channel" is
//! "is a member, or left in the last few seconds".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::irc::ISupport;

/// How long a departed nick still counts as "was here" for other users'
/// copies of the same event.
const DEPARTED_WINDOW: Duration = Duration::from_secs(30);
const DEPARTED_MAX: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// Prefix symbols, highest rank first (`@+`).
    pub prefixes: Vec<u8>,
    /// The nick as last seen.
    pub nick: Box<[u8]>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Folded nick → member.
    members: HashMap<Box<[u8]>, Member>,
    /// Recently departed folded nicks, oldest first.
    departed: VecDeque<(Box<[u8]>, Instant)>,
}

/// The members of one channel on one network.
#[derive(Debug, Default)]
pub struct Roster {
    inner: Mutex<Inner>,
}

impl Roster {
    pub fn insert(&self, folded: &[u8], nick: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .members
            .entry(folded.into())
            .and_modify(|m| m.nick = nick.into())
            .or_insert_with(|| Member {
                prefixes: Vec::new(),
                nick: nick.into(),
            });
    }

    /// Replaces the whole list (a NAMES reply from the first joiner).
    pub fn clear(&self) {
        self.inner.lock().unwrap().members.clear();
    }

    pub fn insert_with_prefixes(&self, folded: &[u8], nick: &[u8], prefixes: &[u8]) {
        self.inner.lock().unwrap().members.insert(
            folded.into(),
            Member {
                prefixes: prefixes.to_vec(),
                nick: nick.into(),
            },
        );
    }

    /// Removes a member; true if the nick was here (now, or until a moment ago).
    pub fn depart(&self, folded: &[u8]) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        prune(&mut inner, now);
        if inner.members.remove(folded).is_some() {
            inner.departed.push_back((folded.into(), now));
            if inner.departed.len() > DEPARTED_MAX {
                inner.departed.pop_front();
            }
            return true;
        }
        inner.departed.iter().any(|(n, _)| &n[..] == folded)
    }

    /// Renames a member; true if the old nick was here (or just left by this rename).
    pub fn rename(&self, old: &[u8], new_folded: &[u8], new_nick: &[u8]) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        prune(&mut inner, now);
        if let Some(mut m) = inner.members.remove(old) {
            m.nick = new_nick.into();
            inner.members.insert(new_folded.into(), m);
            inner.departed.push_back((old.into(), now));
            return true;
        }
        inner.departed.iter().any(|(n, _)| &n[..] == old)
    }

    /// Adds or removes a prefix symbol, keeping `order` (PREFIX order, highest first).
    pub fn set_prefix(&self, folded: &[u8], symbol: u8, adding: bool, order: &[(u8, u8)]) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(m) = inner.members.get_mut(folded) {
            m.prefixes.retain(|&s| s != symbol);
            if adding {
                m.prefixes.push(symbol);
                m.prefixes
                    .sort_by_key(|s| order.iter().position(|(_, p)| p == s));
            }
        }
    }

    pub fn contains(&self, folded: &[u8]) -> bool {
        self.inner.lock().unwrap().members.contains_key(folded)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn prefixes(&self, folded: &[u8]) -> Option<Vec<u8>> {
        self.inner
            .lock()
            .unwrap()
            .members
            .get(folded)
            .map(|m| m.prefixes.clone())
    }

    /// (prefixes, nick) of every member, sorted by nick.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let inner = self.inner.lock().unwrap();
        let mut out: Vec<_> = inner
            .members
            .values()
            .map(|m| (m.prefixes.clone(), m.nick.to_vec()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }
}

fn prune(inner: &mut Inner, now: Instant) {
    while inner
        .departed
        .front()
        .is_some_and(|(_, t)| now.duration_since(*t) > DEPARTED_WINDOW)
    {
        inner.departed.pop_front();
    }
}

/// Identifies a channel across users: the network's server address (lower
/// case) and the channel's folded name.
type Key = (Arc<str>, Vec<u8>);

/// The node-wide registry of rosters. Entries live as long as some user
/// holds the roster; dead entries are swept as the map grows.
///
/// It also keeps, per network, the ISUPPORT and the acknowledged capabilities
/// users' connections last registered with, so that the thousands of users of one
/// network hold one copy of identical values (see [`Rosters::share_isupport`]).
#[derive(Debug, Default)]
pub struct Rosters {
    map: Mutex<HashMap<Key, Weak<Roster>>>,
    isupport: Interned<ISupport>,
    caps: Interned<BTreeSet<String>>,
}

/// One shared value per network, held weakly: it lives as long as some user
/// holds it.
#[derive(Debug)]
struct Interned<T> {
    map: Mutex<HashMap<Arc<str>, Weak<T>>>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            map: Mutex::default(),
        }
    }
}

impl<T: PartialEq> Interned<T> {
    /// The network's shared value if it equals `value`, else `value`, shared from
    /// now on.
    fn share(&self, network: &Arc<str>, value: T) -> Arc<T> {
        let mut map = self.map.lock().unwrap();
        if let Some(shared) = map.get(network).and_then(Weak::upgrade) {
            if *shared == value {
                return shared;
            }
        }
        let shared = Arc::new(value);
        if map
            .insert(network.clone(), Arc::downgrade(&shared))
            .is_none()
            && map.len() > 64
            && map.len().is_power_of_two()
        {
            map.retain(|_, w| w.strong_count() > 0);
        }
        shared
    }
}

impl Rosters {
    /// The shared roster of a channel, and whether this caller created it
    /// (and so must fill it from its NAMES reply).
    pub fn acquire(&self, network: &Arc<str>, folded_channel: &[u8]) -> (Arc<Roster>, bool) {
        let mut map = self.map.lock().unwrap();
        let key = (network.clone(), folded_channel.to_vec());
        if let Some(r) = map.get(&key).and_then(Weak::upgrade) {
            return (r, false);
        }
        let roster = Arc::new(Roster::default());
        map.insert(key, Arc::downgrade(&roster));
        if map.len() > 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        (roster, true)
    }

    /// `isupport`, or the identical copy another user of `network` already holds.
    pub fn share_isupport(&self, network: &Arc<str>, isupport: ISupport) -> Arc<ISupport> {
        self.isupport.share(network, isupport)
    }

    /// `caps`, or the identical set another user of `network` already holds.
    pub fn share_caps(&self, network: &Arc<str>, caps: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        self.caps.share(network, caps)
    }

    /// Live rosters, for metrics and tests.
    pub fn live(&self) -> usize {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_in_the_same_channel_share_one_roster() {
        let rosters = Rosters::default();
        let net: Arc<str> = Arc::from("irc.example:6667");
        let (a, first_a) = rosters.acquire(&net, b"#c");
        let (b, first_b) = rosters.acquire(&net, b"#c");
        assert!(first_a && !first_b);
        assert!(Arc::ptr_eq(&a, &b));
        let (other, first) = rosters.acquire(&Arc::from("other:6667"), b"#c");
        assert!(first && !Arc::ptr_eq(&a, &other));
        drop((a, b));
        let (_, first_again) = rosters.acquire(&net, b"#c");
        assert!(first_again, "a roster nobody holds is gone");
    }

    #[test]
    fn a_departure_counts_for_every_copy_of_the_event() {
        let r = Roster::default();
        r.insert(b"bob", b"Bob");
        // Two users' actors apply the same QUIT: both see bob was here.
        assert!(r.depart(b"bob"));
        assert!(r.depart(b"bob"));
        assert!(!r.depart(b"carol"));
        r.insert(b"x", b"X");
        assert!(r.rename(b"x", b"y", b"Y"));
        assert!(r.rename(b"x", b"y", b"Y"));
        assert_eq!(r.snapshot(), vec![(vec![], b"Y".to_vec())]);
    }

    #[test]
    fn identical_isupport_is_shared_per_network() {
        let rosters = Rosters::default();
        let net: Arc<str> = Arc::from("irc.example:6667");
        let mut is = ISupport::default();
        is.apply([&b"NETWORK=Example"[..]]);
        let a = rosters.share_isupport(&net, is.clone());
        let b = rosters.share_isupport(&net, is.clone());
        assert!(Arc::ptr_eq(&a, &b));
        let other = rosters.share_isupport(&Arc::from("other:6667"), is.clone());
        assert!(!Arc::ptr_eq(&a, &other));
        let mut changed = is.clone();
        changed.apply([&b"NICKLEN=30"[..]]);
        let c = rosters.share_isupport(&net, changed);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*a, is, "holders of the old value keep it");
        let caps = BTreeSet::from(["server-time".to_owned()]);
        let x = rosters.share_caps(&net, caps.clone());
        assert!(Arc::ptr_eq(&x, &rosters.share_caps(&net, caps)));
    }

    #[test]
    fn prefixes_keep_rank_order() {
        let r = Roster::default();
        let order = [(b'o', b'@'), (b'v', b'+')];
        r.insert(b"bob", b"bob");
        r.set_prefix(b"bob", b'+', true, &order);
        r.set_prefix(b"bob", b'@', true, &order);
        assert_eq!(r.prefixes(b"bob"), Some(b"@+".to_vec()));
        r.set_prefix(b"bob", b'@', false, &order);
        assert_eq!(r.prefixes(b"bob"), Some(b"+".to_vec()));
    }
}
