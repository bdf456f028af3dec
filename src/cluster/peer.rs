//! Peers: what nodes tell each other when the store is away, and the two rules built
//! on it (see `docs/ARCHITECTURE.md`, "Riding out the store").
//!
//! - [`StoreContact`]: when this node last completed a round-trip to the store (the
//!   heartbeat marks it); its age is what a peer is told.
//! - [`PeerStatus`]: a node's answer to `GET /api/admin/peer` — how long since it
//!   reached the store, and whether it has fenced (holds no session and no lease).
//! - [`on_loss`]: the rule a node whose lease lapsed applies to its peers' answers:
//!   a peer that reaches the store means *this* node is the one cut off (fence); peers
//!   that all answer and all lost the store too mean nobody can adopt (keep).
//! - [`adoption`]: the rule an adopter applies to a lapsed node before it declares
//!   it dead: the node's own word that it fenced, or unreachable for longer than its
//!   lease plus a margin.
//!
//! Pure policy: the HTTP calls are in `server::partition`, the endpoint in
//! `http::admin`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When this node last reached the store, as a monotonic instant. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreContact(Arc<ContactInner>);

#[derive(Debug)]
struct ContactInner {
    base: Instant,
    /// Microseconds after `base` of the last completed round-trip; 0: never.
    last_us: AtomicU64,
}

impl StoreContact {
    pub fn new() -> StoreContact {
        StoreContact(Arc::new(ContactInner {
            base: Instant::now(),
            last_us: AtomicU64::new(0),
        }))
    }

    /// A round-trip that was sent at `sent` completed.
    pub fn reached(&self, sent: Instant) {
        let us = u64::try_from(sent.saturating_duration_since(self.0.base).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.last_us.fetch_max(us, Ordering::AcqRel);
    }

    /// How long since the last completed round-trip was sent; `None`: never.
    pub fn age(&self) -> Option<Duration> {
        match self.0.last_us.load(Ordering::Acquire) {
            0 => None,
            us => Some(
                Instant::now().saturating_duration_since(self.0.base + Duration::from_micros(us)),
            ),
        }
    }
}

impl Default for StoreContact {
    fn default() -> Self {
        StoreContact::new()
    }
}

/// A node's answer to a peer (`GET /api/admin/peer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Who answers.
    pub node: String,
    /// Milliseconds since its last completed store round-trip; `None`: never.
    pub store_age_ms: Option<u64>,
    /// It holds no lease and runs no session: it dropped everything (or never had
    /// anything), and it starts nothing until it registers again.
    pub fenced: bool,
    /// How many user sessions it keeps running.
    pub users: u64,
}

impl PeerStatus {
    /// Whether the peer reached the store recently enough to adopt users: within
    /// half a lease (a node renews every third of one).
    pub fn reaches_store(&self, lease: Duration) -> bool {
        self.store_age_ms
            .is_some_and(|ms| Duration::from_millis(ms) < lease / 2)
    }
}

/// What a node whose lease lapsed learnt of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerView {
    /// It answered and reaches the store: it can adopt our users.
    ReachesStore,
    /// It answered and lost the store too.
    StoreLost,
    /// It did not answer in time.
    Unreachable,
}

/// What a node does when its lease lapsed because the store did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossVerdict {
    /// Nobody can adopt our users: keep every session (writes wait for the store).
    Keep,
    /// A peer that reaches the store can adopt them: drop every session now.
    Fence,
    /// Nobody reaches the store, but a peer did not answer (it may reach the store
    /// and adopt us after our lease plus its margin): keep for now, ask again, and
    /// fence before that margin could run out.
    KeepForNow,
}

/// The rule of a node whose lease lapsed, from what its live peers said.
///
/// - any peer reaches the store: this node is the one cut off → [`LossVerdict::Fence`];
/// - no peers, or every peer answered without the store: the store is down for
///   everyone, and adopting is a compare-and-set in the store, so nobody can take our
///   users → [`LossVerdict::Keep`];
/// - otherwise a silent peer might be an adopter → [`LossVerdict::KeepForNow`].
pub fn on_loss(peers: &[PeerView]) -> LossVerdict {
    if peers.contains(&PeerView::ReachesStore) {
        LossVerdict::Fence
    } else if peers.contains(&PeerView::Unreachable) {
        LossVerdict::KeepForNow
    } else {
        LossVerdict::Keep
    }
}

/// What an adopter learnt when it asked a node whose lease lapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered that it fenced.
    Fenced,
    /// It answered and keeps its sessions (it renews once it reaches the store).
    Kept,
    /// It did not answer; `for_` is how long this adopter has failed to reach it,
    /// from its first failed call.
    Unreachable { for_: Duration },
}

/// Whether an adopter may declare a lapsed node dead and adopt its users.
///
/// `wait` is the node's lease plus the configured margin
/// ([`super::ClusterConfig::peer_margin`]): a node cut off from everything keeps its
/// sessions at most that long (it fences before; see [`on_loss`]), so after it nobody
/// is connected twice.
pub fn adoption(probe: Probe, wait: Duration) -> bool {
    match probe {
        Probe::Fenced => true,
        Probe::Kept => false,
        Probe::Unreachable { for_ } => for_ > wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerView::*;

    #[test]
    fn the_node_cut_off_fences_and_a_store_down_for_all_keeps() {
        // Alone: nobody can adopt.
        assert_eq!(on_loss(&[]), LossVerdict::Keep);
        // The store is down for everyone.
        assert_eq!(on_loss(&[StoreLost, StoreLost]), LossVerdict::Keep);
        // A peer reaches the store: we are the one cut off.
        assert_eq!(on_loss(&[StoreLost, ReachesStore]), LossVerdict::Fence);
        assert_eq!(on_loss(&[Unreachable, ReachesStore]), LossVerdict::Fence);
        // A silent peer might be an adopter.
        assert_eq!(on_loss(&[StoreLost, Unreachable]), LossVerdict::KeepForNow);
        assert_eq!(on_loss(&[Unreachable]), LossVerdict::KeepForNow);
    }

    #[test]
    fn adoption_waits_for_the_fenced_word_or_the_margin() {
        let wait = Duration::from_secs(11);
        assert!(adoption(Probe::Fenced, wait));
        assert!(!adoption(Probe::Kept, wait));
        assert!(!adoption(
            Probe::Unreachable {
                for_: Duration::from_secs(10)
            },
            wait
        ));
        assert!(!adoption(Probe::Unreachable { for_: wait }, wait));
        assert!(adoption(
            Probe::Unreachable {
                for_: Duration::from_secs(12)
            },
            wait
        ));
    }

    #[test]
    fn a_peer_reaches_the_store_within_half_a_lease() {
        let lease = Duration::from_secs(10);
        let status = |age: Option<u64>| PeerStatus {
            node: "n".into(),
            store_age_ms: age,
            fenced: false,
            users: 0,
        };
        assert!(status(Some(1_000)).reaches_store(lease));
        assert!(!status(Some(5_000)).reaches_store(lease));
        assert!(!status(None).reaches_store(lease));
    }

    #[test]
    fn store_contact_ages() {
        let c = StoreContact::new();
        assert_eq!(c.age(), None);
        c.reached(Instant::now());
        assert!(c.age().unwrap() < Duration::from_secs(5));
        // An older round-trip completing late does not move it back.
        c.reached(Instant::now() - Duration::from_secs(60));
        assert!(c.age().unwrap() < Duration::from_secs(5));
    }
}
