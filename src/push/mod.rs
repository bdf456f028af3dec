//! Notifications over standard Web Push: RFC 8030 delivery, RFC 8291 message
//! encryption (`aes128gcm`, RFC 8188), RFC 8292 VAPID.
//!
//! How a line becomes a push:
//!
//! ```text
//! user actor ── rules::decide(line, context, Suppress{read, muted, active}) → Reason
//!    │ Pusher::notify(Notification)        (never waits: a full queue drops and counts)
//!    ▼
//! worker (one task per node): coalesce (one push per user+buffer per window,
//!    │ the latest text and a count) → payload JSON (text cut to fit 4 KiB) →
//!    │ per subscription: per-endpoint rate limit → a delivery task under the
//!    │ global concurrency cap
//!    ▼
//! send: encrypt (RFC 8291) + VAPID header → POST endpoint → 2xx sent,
//!       404/410 gone (Outcome::Gone: the caller deletes the subscription),
//!       429/5xx/timeout retried with backoff honouring Retry-After, else failed
//! ```
//!
//! - `vapid` — the node's (cluster's) key pair and the `Authorization` header.
//! - `subscription` — a browser's or distributor's endpoint and keys, checked.
//! - `encrypt` — RFC 8291 on top of `web-push-native`; the 4 KiB record limit.
//! - `payload` — what the service worker receives (JSON), cut to fit.
//! - `format` — IRC formatting codes stripped before matching.
//! - `rules` — what is pushed: private messages, mentions of the current nick,
//!   keywords; never the user's own lines.
//! - `coalesce` — at most one push per (user, buffer) per window.
//! - `config`, `stats` — settings (`[push]`) and counters.
//! - `send` — one HTTP attempt and what its answer means.
//! - `worker` — `Pusher`: the queue, the cap, the rate limit, retries.
//! - `hub` — `PushHub`: the node's handle for actors, HTTP and IRC: the cached
//!   subscriptions, settings and mutes, active clients, read markers; removes
//!   subscriptions the push service says are gone.
//!
//! Nothing here logs message text, and subscription endpoints (capability URLs)
//! are logged by origin only.

mod coalesce;
mod config;
mod encrypt;
mod format;
mod hub;
mod payload;
mod rules;
mod send;
mod stats;
mod subscription;
mod vapid;
mod worker;

pub use coalesce::{BufferKey, Coalescer, Offer};
pub use config::PushConfig;
pub use encrypt::{encrypt, EncryptError, MAX_PLAINTEXT, MAX_RECORD};
pub use format::strip_formatting;
pub use hub::{ActiveGuard, Line, PushHub, SubscribeError};
pub use payload::{Payload, PayloadError};
pub use rules::{decide, mentions, Context, Incoming, Kind, Reason, Suppress};
pub use send::Attempt;
pub use stats::PushStats;
pub use subscription::{check_endpoint, Format, Subscription, SubscriptionError, SubscriptionKeys};
pub use vapid::{Contact, VapidError, VapidKey, MAX_JWT_VALIDITY};
pub use worker::{Dropped, FailReason, Notification, Outcome, Pusher, ReadMarkers};
