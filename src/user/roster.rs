//! Channel member lists, one per user and channel, and the network facts users of a
//! node share while they are identical.
//!
//! A member list is exactly what the server told *this* user's connection: its own
//! NAMES replies (each reply replaces the list) and the JOIN, PART, KICK, QUIT, NICK
//! and prefix MODE lines its connection received. Its *content* is never taken from
//! another user: servers scope membership to the viewer (InspIRCd's auditorium mode
//! `+u` shows a non-operator only the operators and itself; delayed join `+D` hides
//! members until they speak; operator-only views), so one user's list can hold
//! members another user must not see.
//!
//! Its *storage* is shared, because thousands of users of a node sitting in the same
//! big channels mostly hold identical lists (`docs/benchmarks.md` §1: 0.6× ZNC's
//! memory with a private copy each, against the 0.05× that sharing allows). A list
//! is an immutable value behind an `Arc`, hash-consed per channel:
//! - a change to a list nobody else holds is made in place;
//! - a change to a list others hold makes a new list, and remembers on the old one
//!   which change led where ([`Inner::next`]): the next holder of the old list to
//!   make the *same* change (the same member put, removed or renamed — a pure
//!   function of the old content) takes the new list instead of copying, however
//!   far behind the others its actor is ([`Next`]);
//! - a list made anew (a NAMES reply's end, a copy) is looked up among its
//!   channel's lists ([`Slot`]) by a hash of its content kept up to date with
//!   each change, and equal content (checked member by member) is shared.
//!
//! So two users hold one list only while its content is exactly what each one's own
//! lines made of it; a line one of them did not get moves that one to a list of its
//! own.
//!
//! What is shared outright is what the server says alike to everyone on a network and
//! nothing hides per viewer: ISUPPORT and the acknowledged capabilities, interned per
//! network while they are byte-for-byte identical ([`Shared`]).

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use crate::irc::ISupport;

/// A member, kept small: a list holds one per member, so at 1,000 members a byte per
/// member is a kilobyte per list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
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

/// One member's part of a list's content hash. The hasher's keys are fixed, so
/// equal content hashes alike in every actor.
fn member_hash(folded: &[u8], m: &Member) -> u64 {
    let mut h = DefaultHasher::new();
    folded.hash(&mut h);
    m.hash(&mut h);
    h.finish()
}

/// A change to a list, as the resulting member: what it does depends on nothing but
/// the list it is applied to, so the same change to the same list gives the same
/// list, whoever makes it.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Put(Box<[u8]>, Member),
    Remove(Box<[u8]>),
    Rename(Box<[u8]>, Box<[u8]>, Member),
}

/// A list's content.
#[derive(Debug, Default)]
struct Inner {
    /// Folded nick → member.
    members: HashMap<Box<[u8]>, Member>,
    /// The wrapping sum of [`member_hash`] over the members: order-free, so a change
    /// updates it in O(1).
    hash: u64,
    /// The last change made to this list while others held it, and the list it
    /// led to.
    next: Mutex<Option<(Op, Next)>>,
    /// The list this one was made from by such a change, while it lives: to count
    /// how long a chain of [`Next::Made`] links is ([`made_behind`]).
    parent: Weak<Inner>,
}

/// The most lists a chain of [`Next::Made`] links keeps alive. A user whose list
/// stops changing while the others' go on (its connection does not see the joins
/// and parts they see: an auditorium's guest) would otherwise keep every later
/// list of the channel; past this, changes are linked weakly and the chain grows no
/// longer. A join storm's actors drift apart by hundreds of lines: within this
/// many, a lagging actor copies nothing.
const MADE_CHAIN: usize = 256;

/// How many made lists stand alive behind `list`, counting up to [`MADE_CHAIN`].
fn made_behind(list: &Inner) -> usize {
    let mut n = 0;
    let mut at = list.parent.upgrade();
    while let Some(parent) = at {
        n += 1;
        if n >= MADE_CHAIN {
            break;
        }
        at = parent.parent.upgrade();
    }
    n
}

/// Where a change led ([`Inner::next`]).
#[derive(Debug)]
enum Next {
    /// A list the change made: held strongly, so a user whose actor is lines behind
    /// the others (a join storm's actors drift apart by hundreds) still finds each
    /// step made and copies nothing. A made list is newer than the one that holds it,
    /// so these links never form a cycle; the chain goes as the users move on, and
    /// is at most [`MADE_CHAIN`] long.
    Made(Arc<Inner>),
    /// An equal list that existed already (it may be older than this one — a JOIN
    /// then a PART returns to an earlier content — and a strong link would make a
    /// cycle), or a made list past [`MADE_CHAIN`]: held weakly.
    Weak(Weak<Inner>),
}

impl Next {
    fn get(&self) -> Option<Arc<Inner>> {
        match self {
            Next::Made(list) => Some(list.clone()),
            Next::Weak(list) => list.upgrade(),
        }
    }
}

impl Clone for Inner {
    fn clone(&self) -> Inner {
        Inner {
            members: self.members.clone(),
            hash: self.hash,
            next: Mutex::default(),
            parent: Weak::new(),
        }
    }
}

impl Inner {
    fn put(&mut self, folded: Box<[u8]>, m: Member) {
        self.hash = self.hash.wrapping_add(member_hash(&folded, &m));
        if let Some(old) = self.members.get(&folded) {
            self.hash = self.hash.wrapping_sub(member_hash(&folded, old));
        }
        self.members.insert(folded, m);
    }

    fn remove(&mut self, folded: &[u8]) {
        if let Some((k, old)) = self.members.remove_entry(folded) {
            self.hash = self.hash.wrapping_sub(member_hash(&k, &old));
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(folded, m) => self.put(folded.clone(), m.clone()),
            Op::Remove(folded) => self.remove(folded),
            Op::Rename(old, new, m) => {
                self.remove(old);
                self.put(new.clone(), m.clone());
            }
        }
    }

    fn same_content(&self, other: &Inner) -> bool {
        self.hash == other.hash && self.members == other.members
    }
}

/// The lists of one channel (of one network) by content hash, for sharing equal
/// content: every list made anew is found here by any later equal one, whenever
/// it was made (a window of recent lists missed some during a join storm, and the
/// users who missed held copies from then on).
#[derive(Debug, Default)]
pub struct Slot {
    lists: Mutex<HashMap<u64, Weak<Inner>>>,
}

impl Slot {
    /// A list equal to `list` that is already shared, or `list`, which is from now on
    /// (unless another content holds its hash: then it is not shared, which is
    /// always correct).
    fn intern(&self, list: Arc<Inner>) -> Arc<Inner> {
        let mut lists = self.lists.lock().unwrap();
        match lists.get(&list.hash).and_then(Weak::upgrade) {
            Some(other) if Arc::ptr_eq(&other, &list) || other.same_content(&list) => other,
            Some(_) => list,
            None => {
                lists.insert(list.hash, Arc::downgrade(&list));
                // Lists changed in place or dropped leave dead entries: sweep them
                // now and then.
                if lists.len() > 64 && lists.len().is_power_of_two() {
                    lists.retain(|_, w| w.strong_count() > 0);
                }
                list
            }
        }
    }
}

/// The members of one channel as one user's connection sees them.
#[derive(Debug)]
pub struct Roster {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    /// A NAMES reply is coming in: its members go in place, and the list is shared
    /// only once it is whole ([`Roster::end_names`]).
    building: bool,
}

impl Default for Roster {
    /// A list of its own (tests, and nothing to share with).
    fn default() -> Roster {
        Roster {
            inner: Arc::default(),
            slot: Arc::default(),
            building: false,
        }
    }
}

impl Roster {
    /// Makes `op` (a change that changes something): in place while nobody else
    /// holds the list, else by the change's earlier result or a new list.
    fn change(&mut self, op: Op) {
        if Arc::strong_count(&self.inner) == 1 {
            // Ours alone: `make_mut` moves it away from anything that remembers it
            // weakly (an older list's `next`, the slot) rather than change what they
            // would hand out.
            Arc::make_mut(&mut self.inner).apply(&op);
            if !self.building {
                self.inner = self.slot.intern(self.inner.clone());
            }
            return;
        }
        let old = self.inner.clone();
        let mut next = old.next.lock().unwrap();
        if let Some((done, led)) = next.as_ref() {
            if *done == op {
                if let Some(list) = led.get() {
                    self.inner = list;
                    return;
                }
            }
        }
        let mut made = (*old).clone();
        made.apply(&op);
        made.parent = Arc::downgrade(&old);
        let made = Arc::new(made);
        let new = self.slot.intern(made.clone());
        let led = if Arc::ptr_eq(&new, &made) && made_behind(&made) < MADE_CHAIN {
            Next::Made(made)
        } else {
            Next::Weak(Arc::downgrade(&new))
        };
        *next = Some((op, led));
        self.inner = new;
    }

    pub fn insert(&mut self, folded: &[u8], nick: &[u8]) {
        let m = Member {
            prefixes: self
                .inner
                .members
                .get(folded)
                .map(|m| m.prefixes.clone())
                .unwrap_or_default(),
            nick: distinct(folded, nick),
        };
        self.insert_member(folded, m);
    }

    fn insert_member(&mut self, folded: &[u8], m: Member) {
        if self.inner.members.get(folded) != Some(&m) {
            self.change(Op::Put(folded.into(), m));
        }
    }

    /// A NAMES reply begins: it replaces the list.
    pub fn begin_names(&mut self) {
        self.inner = Arc::default();
        self.building = true;
    }

    /// The NAMES reply is whole: the list is shared with equal ones from now on.
    pub fn end_names(&mut self) {
        self.building = false;
        self.inner = self.slot.intern(self.inner.clone());
    }

    pub fn insert_with_prefixes(&mut self, folded: &[u8], nick: &[u8], prefixes: &[u8]) {
        let m = Member {
            prefixes: prefixes.into(),
            nick: distinct(folded, nick),
        };
        self.insert_member(folded, m);
    }

    /// Removes a member; true if the nick was here.
    pub fn depart(&mut self, folded: &[u8]) -> bool {
        let here = self.inner.members.contains_key(folded);
        if here {
            self.change(Op::Remove(folded.into()));
        }
        here
    }

    /// Renames a member; true if the old nick was here.
    pub fn rename(&mut self, old: &[u8], new_folded: &[u8], new_nick: &[u8]) -> bool {
        let Some(m) = self.inner.members.get(old) else {
            return false;
        };
        let m = Member {
            prefixes: m.prefixes.clone(),
            nick: distinct(new_folded, new_nick),
        };
        self.change(Op::Rename(old.into(), new_folded.into(), m));
        true
    }

    /// Adds or removes a prefix symbol, keeping `order` (PREFIX order, highest first).
    pub fn set_prefix(&mut self, folded: &[u8], symbol: u8, adding: bool, order: &[(u8, u8)]) {
        let Some(m) = self.inner.members.get(folded) else {
            return;
        };
        let mut prefixes = m.prefixes.to_vec();
        prefixes.retain(|&s| s != symbol);
        if adding {
            prefixes.push(symbol);
            prefixes.sort_by_key(|s| order.iter().position(|(_, p)| p == s));
        }
        let m = Member {
            prefixes: prefixes.into_boxed_slice(),
            nick: m.nick.clone(),
        };
        self.insert_member(folded, m);
    }

    pub fn contains(&self, folded: &[u8]) -> bool {
        self.inner.members.contains_key(folded)
    }

    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.members.is_empty()
    }

    pub fn prefixes(&self, folded: &[u8]) -> Option<Vec<u8>> {
        self.inner.members.get(folded).map(|m| m.prefixes.to_vec())
    }

    /// Whether `other` holds the very same list (not only an equal one).
    #[cfg(test)]
    pub fn shares_with(&self, other: &Roster) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// (prefixes, nick) of every member, sorted by nick.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<_> = self
            .inner
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
/// identical values (see [`Shared::share_isupport`]), and the channels' [`Slot`]s,
/// through which member lists of equal content are shared (see the module's doc).
#[derive(Debug, Default)]
pub struct Shared {
    isupport: Interned<ISupport>,
    caps: Interned<BTreeSet<String>>,
    /// (network, folded channel) → its slot, held weakly: it lives as long as some
    /// user's list of the channel.
    slots: Mutex<HashMap<ChannelKey, Weak<Slot>>>,
}

/// (network, folded channel).
type ChannelKey = (Arc<str>, Box<[u8]>);

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

    /// An empty member list of `channel` (folded) on `network`, shared with other
    /// users' lists of the channel whenever their content is equal.
    pub fn roster(&self, network: &Arc<str>, channel: &[u8]) -> Roster {
        let mut slots = self.slots.lock().unwrap();
        let key = (network.clone(), Box::<[u8]>::from(channel));
        let slot = match slots.get(&key).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                let slot = Arc::new(Slot::default());
                if slots.insert(key, Arc::downgrade(&slot)).is_none()
                    && slots.len() > 64
                    && slots.len().is_power_of_two()
                {
                    slots.retain(|_, w| w.strong_count() > 0);
                }
                slot
            }
        };
        Roster {
            inner: Arc::default(),
            slot,
            building: false,
        }
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

    /// A list of `members` (folded = nick) of `#c`, as a NAMES reply makes it.
    fn names(shared: &Shared, members: &[&str]) -> Roster {
        let mut r = shared.roster(&Arc::from("irc.test:6667"), b"#c");
        r.begin_names();
        for m in members {
            r.insert(m.as_bytes(), m.as_bytes());
        }
        r.end_names();
        r
    }

    fn nicks(r: &Roster) -> Vec<String> {
        r.snapshot()
            .into_iter()
            .map(|(p, n)| String::from_utf8([p, n].concat()).unwrap())
            .collect()
    }

    #[test]
    fn equal_lists_are_one_list_and_the_same_change_keeps_them_one() {
        let shared = Shared::default();
        let mut a = names(&shared, &["alice", "bob"]);
        let mut b = names(&shared, &["bob", "alice"]);
        assert!(a.shares_with(&b), "equal NAMES replies make one list");
        let other_channel = {
            let mut r = shared.roster(&Arc::from("irc.test:6667"), b"#d");
            r.insert(b"alice", b"alice");
            r.insert(b"bob", b"bob");
            r
        };
        assert!(!a.shares_with(&other_channel), "only lists of one channel");

        // The same lines: still one list, and no copy for the second user.
        a.insert(b"carol", b"Carol");
        assert!(!a.shares_with(&b));
        b.insert(b"carol", b"Carol");
        assert!(a.shares_with(&b));
        let order = [(b'o', b'@'), (b'v', b'+')];
        a.set_prefix(b"bob", b'@', true, &order);
        b.set_prefix(b"bob", b'@', true, &order);
        assert!(a.rename(b"carol", b"dave", b"dave"));
        assert!(b.rename(b"carol", b"dave", b"dave"));
        assert!(a.shares_with(&b));
        assert_eq!(nicks(&a), ["alice", "@bob", "dave"]);

        // A line only one of them got (an auditorium's view): two lists, each the
        // user's own.
        assert!(a.depart(b"dave"));
        assert_eq!(nicks(&a), ["alice", "@bob"]);
        assert_eq!(nicks(&b), ["alice", "@bob", "dave"]);
        assert!(!a.shares_with(&b));
        // Equal again (b got the departure later): one list again.
        assert!(b.depart(b"dave"));
        assert!(a.shares_with(&b));
        assert!(!a.depart(b"dave"), "a member gone is gone for each");
    }

    #[test]
    fn an_equal_list_is_found_however_many_lists_came_since() {
        let shared = Shared::default();
        let first = names(&shared, &["alice", "bob"]);
        // A join storm: many other lists of the channel made after it, and changed.
        let mut others: Vec<Roster> = (0..50)
            .map(|i| names(&shared, &["alice", &format!("u{i}")]))
            .collect();
        for r in &mut others {
            r.insert(b"zed", b"zed");
        }
        let late = names(&shared, &["bob", "alice"]);
        assert!(late.shares_with(&first));
        // A list that became equal by a change finds it too.
        let mut other = names(&shared, &["alice"]);
        other.insert(b"bob", b"bob");
        assert!(other.shares_with(&first));
    }

    #[test]
    fn lists_go_when_their_holders_do_even_when_content_comes_back() {
        let shared = Shared::default();
        let mut a = names(&shared, &["alice"]);
        let mut b = names(&shared, &["alice"]);
        let mut straggler = names(&shared, &["alice"]);
        let first = Arc::downgrade(&a.inner);
        // A JOIN then a PART: the content comes back to the first list's, which the
        // straggler still holds.
        a.insert(b"bob", b"bob");
        b.insert(b"bob", b"bob");
        let second = Arc::downgrade(&a.inner);
        assert!(a.depart(b"bob"));
        assert!(b.depart(b"bob"));
        assert!(a.shares_with(&straggler) && b.shares_with(&straggler));
        // Nobody holds the second list, yet the straggler finds the step made.
        straggler.insert(b"bob", b"bob");
        assert_eq!(straggler.inner.as_ref() as *const Inner, second.as_ptr());
        assert!(straggler.depart(b"bob"));
        assert!(straggler.shares_with(&a));
        drop((a, b, straggler));
        for w in [first, second] {
            assert_eq!(w.strong_count(), 0, "a list outlived its holders");
        }
    }

    #[test]
    fn a_list_left_behind_keeps_a_bounded_chain_alive() {
        let shared = Shared::default();
        let mut op = names(&shared, &["op", "guest"]);
        // The guest's connection sees none of what follows: its list stays.
        let guest = names(&shared, &["op", "guest"]);
        assert!(op.shares_with(&guest));
        let mut made = Vec::new();
        for i in 0..MADE_CHAIN * 2 {
            op.insert(format!("u{i}").as_bytes(), format!("u{i}").as_bytes());
            made.push(Arc::downgrade(&op.inner));
        }
        let alive = made.iter().filter(|w| w.strong_count() > 0).count();
        assert!(
            alive <= MADE_CHAIN + 1,
            "{alive} of the operator's lists alive behind the guest's"
        );
        assert_eq!(guest.len(), 2);
        assert_eq!(op.len(), 2 + MADE_CHAIN * 2);
    }

    #[test]
    fn a_list_changed_in_place_is_not_what_an_older_change_hands_out() {
        let shared = Shared::default();
        let mut a = names(&shared, &["alice"]);
        let mut b = names(&shared, &["alice"]);
        // a makes a change from the list both hold, then a second one alone.
        a.insert(b"bob", b"bob");
        a.insert(b"carol", b"carol");
        assert_eq!(nicks(&a), ["alice", "bob", "carol"]);
        // b makes the first change: it gets what that change makes, not a's list
        // as it is now.
        b.insert(b"bob", b"bob");
        assert_eq!(nicks(&b), ["alice", "bob"]);
        assert_eq!(nicks(&a), ["alice", "bob", "carol"]);
        b.insert(b"carol", b"carol");
        assert!(a.shares_with(&b));
        // A new NAMES reply replaces one user's list only.
        let mut c = names(&shared, &["alice", "bob", "carol"]);
        assert!(c.shares_with(&a));
        c.begin_names();
        c.insert(b"zed", b"zed");
        c.end_names();
        assert_eq!(nicks(&c), ["zed"]);
        assert_eq!(nicks(&a), ["alice", "bob", "carol"]);
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
