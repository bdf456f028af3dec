//! The limiter: every upstream connect of this node waits here for a session slot
//! and a connect token on one (network key, source IP), so Ferry never trips a
//! network's per-address limits — not on first connect, reconnect, node restart,
//! failover or migration.
//!
//! - **Key**: a network is identified by the host of its address (or a configured
//!   parent domain, or the user's name for it); see [`key`].
//! - **Slots**: `sessions_per_ip` connections per (key, source IP); a [`Permit`] holds
//!   one while the connection lives and frees it on drop. With several source IPs a
//!   connect takes the one with most free slots, so sessions spread.
//! - **Tokens**: `connects_per_minute` with `burst`, a GCRA bucket (governor) per
//!   (key, source IP).
//! - **Fairness**: each key has a FIFO queue of [`Ticket`]s; only the front ticket can
//!   be granted, so nobody starves and a restart's order (recently active users
//!   first) is the connect order.
//! - **Drain**: while the node drains ([`Limiter::set_draining`]) only connects for
//!   users moved here (reservations, hand-backs) are granted; the others wait in
//!   place until the drain moves their users away (or ends).
//! - **Cluster cap**: `sessions_total` counts this node's sessions plus what the other
//!   nodes last reported to the store (see `server::limits_sync`).
//! - **Feedback**: "throttled" from a server blocks the whole (key, source IP) for
//!   [`Defaults::throttle_backoff`]; "too many connections" marks the IP full for
//!   [`Defaults::full_backoff`] so connects go to another IP meanwhile.
//! - **Adoption**: a connection already up (resumed after a park or an in-place
//!   upgrade) is counted with [`Limiter::adopt`]: no queue, no token, even over the
//!   limit (logged); its permit frees the slot like any other.
//! - **Flood control**: each permit carries the key's outgoing message rate (or the
//!   node's default, one line per two seconds after a burst of five).
//!
//! Keys without configured limits have no slot or rate caps but still get feedback
//! and flood control.

mod failure;
pub mod key;
mod limiter;
mod spec;
#[cfg(test)]
mod tests;

pub use failure::Kind;
pub use limiter::{Defaults, Grant, IpCount, Limiter, Permit, Stats, Target, Ticket, Waiting};
pub use spec::{LimitsSpec, LimitsView};
