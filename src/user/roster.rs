//! Channel member lists, one per user and channel, and the network facts users of a
//! node share while they are identical.
//!
//! A member list is exactly what the server told *this* user's connection: its own
//! NAMES replies (each reply replaces the list) and the JOIN, PART, KICK, QUIT, NICK
//! and prefix MODE lines its connection received. It is never shared between users:
//! servers scope membership to the viewer (InspIRCd's auditorium mode `+u` shows a
//! non-operator only the operators and itself; delayed join `+D` hides members until
//! they speak; operator-only views), so one user's list can hold members another
//! user must not see. Sharing saved memory when thousands of users sit in the same
//! big channels; `docs/benchmarks.md` §1 has what the private lists cost.
//!
//! What *is* shared is what the server says alike to everyone on a network and
//! nothing hides per viewer: ISUPPORT and the acknowledged capabilities, interned per
//! network while they are byte-for-byte identical ([`Shared`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use crate::irc::ISupport;

/// A member, kept small: a user holds one per member of each of its channels, so at
/// 50 members a user a byte per member is 50 bytes a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Member {
    /// Prefix symbols, highest rank first (`@+`); no allocation while it has none.
    prefixes: Box<[u8]>,
    /// The nick as last seen, when it differs from its folded key; most nicks are
    /// already folded (lower case), and those cost no second allocation.
    nick: Option<Box<[u8]>>,
}

/// The nick to keep beside its folded key ([`Member::nick`]).
fn distinct(folded: &[u8], nick: &[u8]) -> Option<Box<[u8]>> {
    (folded != nick).then(|| nick.into())
}

/// The members of one channel as one user's connection sees them.
#[derive(Debug, Default)]
pub struct Roster {
    /// Folded nick → member.
    members: HashMap<Box<[u8]>, Member>,
}

impl Roster {
    pub fn insert(&mut self, folded: &[u8], nick: &[u8]) {
        self.members
            .entry(folded.into())
            .and_modify(|m| m.nick = distinct(folded, nick))
            .or_insert_with(|| Member {
                prefixes: Box::default(),
                nick: distinct(folded, nick),
            });
    }

    /// Empties the list (the first line of a NAMES reply replaces it).
    pub fn clear(&mut self) {
        self.members.clear();
    }

    pub fn insert_with_prefixes(&mut self, folded: &[u8], nick: &[u8], prefixes: &[u8]) {
        self.members.insert(
            folded.into(),
            Member {
                prefixes: prefixes.into(),
                nick: distinct(folded, nick),
            },
        );
    }

    /// Removes a member; true if the nick was here.
    pub fn depart(&mut self, folded: &[u8]) -> bool {
        self.members.remove(folded).is_some()
    }

    /// Renames a member; true if the old nick was here.
    pub fn rename(&mut self, old: &[u8], new_folded: &[u8], new_nick: &[u8]) -> bool {
        match self.members.remove(old) {
            Some(mut m) => {
                m.nick = distinct(new_folded, new_nick);
                self.members.insert(new_folded.into(), m);
                true
            }
            None => false,
        }
    }

    /// Adds or removes a prefix symbol, keeping `order` (PREFIX order, highest first).
    pub fn set_prefix(&mut self, folded: &[u8], symbol: u8, adding: bool, order: &[(u8, u8)]) {
        if let Some(m) = self.members.get_mut(folded) {
            let mut prefixes = std::mem::take(&mut m.prefixes).into_vec();
            prefixes.retain(|&s| s != symbol);
            if adding {
                prefixes.push(symbol);
                prefixes.sort_by_key(|s| order.iter().position(|(_, p)| p == s));
            }
            m.prefixes = prefixes.into_boxed_slice();
        }
    }

    pub fn contains(&self, folded: &[u8]) -> bool {
        self.members.contains_key(folded)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn prefixes(&self, folded: &[u8]) -> Option<Vec<u8>> {
        self.members.get(folded).map(|m| m.prefixes.to_vec())
    }

    /// (prefixes, nick) of every member, sorted by nick.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<_> = self
            .members
            .iter()
            .map(|(folded, m)| {
                let nick = m.nick.as_deref().unwrap_or(folded);
                (m.prefixes.to_vec(), nick.to_vec())
            })
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }
}

/// What the users of a node share per network (the network's server address, lower
/// case): the ISUPPORT and the acknowledged capabilities users' connections last
/// registered with, so that the thousands of users of one network hold one copy of
/// identical values (see [`Shared::share_isupport`]). Never member lists.
#[derive(Debug, Default)]
pub struct Shared {
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

impl Shared {
    /// `isupport`, or the identical copy another user of `network` already holds.
    pub fn share_isupport(&self, network: &Arc<str>, isupport: ISupport) -> Arc<ISupport> {
        self.isupport.share(network, isupport)
    }

    /// `caps`, or the identical set another user of `network` already holds.
    pub fn share_caps(&self, network: &Arc<str>, caps: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        self.caps.share(network, caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departures_and_renames_count_only_members() {
        let mut r = Roster::default();
        r.insert(b"bob", b"Bob");
        assert!(r.depart(b"bob"));
        assert!(
            !r.depart(b"bob"),
            "gone is gone: nobody else applies it here"
        );
        assert!(!r.depart(b"carol"));
        r.insert(b"x", b"X");
        assert!(r.rename(b"x", b"y", b"Y"));
        assert!(!r.rename(b"x", b"y", b"Y"));
        assert_eq!(r.snapshot(), vec![(vec![], b"Y".to_vec())]);
    }

    #[test]
    fn identical_isupport_is_shared_per_network() {
        let rosters = Shared::default();
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
        let mut r = Roster::default();
        let order = [(b'o', b'@'), (b'v', b'+')];
        r.insert(b"bob", b"bob");
        r.set_prefix(b"bob", b'+', true, &order);
        r.set_prefix(b"bob", b'@', true, &order);
        assert_eq!(r.prefixes(b"bob"), Some(b"@+".to_vec()));
        r.set_prefix(b"bob", b'@', false, &order);
        assert_eq!(r.prefixes(b"bob"), Some(b"+".to_vec()));
    }
}
