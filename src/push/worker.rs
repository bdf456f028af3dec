//! The push worker: one task per node, off the user actors.
//!
//! - **Never waits on the caller's side.** [`Pusher::notify`] is a `try_send` on
//!   a bounded queue; when it is full the notification is dropped and counted.
//! - **Coalesces** per (user, buffer) (`coalesce`), then fans a notification out
//!   to each of the user's subscriptions as one delivery each.
//! - **Deliveries** wait in a bounded backlog (full: dropped and counted) for one
//!   of `concurrency` slots; each runs as its own task, bounded in time by the
//!   HTTP client's connect and request timeouts, so a hanging endpoint holds one
//!   slot for at most `request_timeout` and never blocks the others.
//! - **Per endpoint** a GCRA rate limit (governor, on tokio's clock) defers a
//!   delivery to when the endpoint may take it again; that is not an attempt.
//! - **Retries** (429, 5xx, transport errors) wait in the same backlog with
//!   exponential backoff and jitter, never earlier than `Retry-After`, at most
//!   `max_attempts` tries.
//! - Every delivery ends as one [`Outcome`], reported on a bounded channel the
//!   caller drains: it deletes the subscription on [`Outcome::Gone`]. A full
//!   outcome channel loses the report (a gone endpoint then answers 410 again
//!   next time), never blocks the worker.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use rand::Rng as _;
use reqwest::Url;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::coalesce::{BufferKey, Coalescer, Offer};
use super::config::PushConfig;
use super::encrypt::MAX_PLAINTEXT;
use super::payload::Payload;
use super::send::{Attempt, Sender};
use super::stats::PushStats;
use super::subscription::{Format, Subscription};
use super::vapid::VapidKey;
use crate::store::UserId;

/// A line to push to one user's subscriptions.
#[derive(Clone, Debug)]
pub struct Notification {
    /// The buffer (coalescing key); `key.user` is whom the outcomes name.
    pub key: BufferKey,
    /// The user's subscriptions when the line arrived.
    pub subscriptions: Arc<[Subscription]>,
    /// `count` is set by the worker.
    pub payload: Payload,
    /// The line as an IRC message (no CRLF), for [`Format::Irc`] subscriptions;
    /// they get nothing when it is `None`.
    pub irc_line: Option<Arc<[u8]>>,
    /// The user's read markers: a notification held by the coalescer is dropped
    /// when, by the time it is due, the user has read past its line.
    pub read: Option<Arc<ReadMarkers>>,
}

/// The read markers the users of a node moved (`/api/read`, websocket `read`), by
/// (network, case-folded buffer): the newest id read.
#[derive(Debug, Default)]
pub struct ReadMarkers(std::sync::Mutex<std::collections::HashMap<(i64, Vec<u8>), i64>>);

impl ReadMarkers {
    /// The marker of `buffer` moved to `id` (never backwards).
    pub fn note(&self, network: i64, buffer: &[u8], id: i64) {
        let mut m = self.0.lock().unwrap();
        let at = m.entry((network, buffer.to_vec())).or_default();
        *at = (*at).max(id);
    }

    /// Whether the line `id` of `buffer` has been read.
    pub fn is_read(&self, network: i64, buffer: &[u8], id: i64) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(&(network, buffer.to_vec()))
            .is_some_and(|&r| r >= id)
    }
}

/// How one delivery (a notification to one subscription) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        user: UserId,
        endpoint: Url,
    },
    /// The push service answered 404 or 410: delete this subscription.
    Gone {
        user: UserId,
        endpoint: Url,
    },
    Failed {
        user: UserId,
        endpoint: Url,
        reason: FailReason,
    },
}

/// Why a delivery was given up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The push service refused it with this status (not 404/410/429/5xx).
    Refused(u16),
    /// 429, 5xx or transport errors `max_attempts` times.
    Attempts,
    /// The service asked to wait longer than `backoff_max`.
    RetryAfterTooLong,
    /// An `http:` endpoint while `allow_http` is off.
    Insecure,
    /// The payload does not fit a push.
    TooLarge,
}

/// `Pusher::notify` found the queue full; the notification was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the push queue is full; notification dropped")]
pub struct Dropped;

/// The handle to the node's push worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: mpsc::Sender<Notification>,
    stats: Arc<PushStats>,
    application_server_key: Arc<str>,
}

impl Pusher {
    /// Starts the worker. It runs until `shutdown` is cancelled (in-flight
    /// requests are abandoned) or every `Pusher` is dropped and its work done.
    /// Outcomes arrive on the returned receiver (capacity `config.queue`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(
        config: PushConfig,
        vapid: VapidKey,
        shutdown: CancellationToken,
    ) -> Result<(Pusher, mpsc::Receiver<Outcome>), reqwest::Error> {
        let stats = Arc::new(PushStats::default());
        let application_server_key: Arc<str> = vapid.application_server_key().into();
        let sender = Arc::new(Sender::new(&config, vapid)?);
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (outcome_tx, outcome_rx) = mpsc::channel(config.queue.max(1));
        let worker = Worker::new(config, sender, stats.clone(), outcome_tx);
        tokio::spawn(worker.run(rx, shutdown));
        let pusher = Pusher {
            tx,
            stats,
            application_server_key,
        };
        Ok((pusher, outcome_rx))
    }

    /// Queues a notification without waiting.
    ///
    /// # Errors
    /// [`Dropped`] when the queue is full (counted in `dropped`) or the worker
    /// has stopped.
    pub fn notify(&self, notification: Notification) -> Result<(), Dropped> {
        self.tx.try_send(notification).map_err(|_| {
            PushStats::bump(&self.stats.dropped);
            Dropped
        })
    }

    pub fn stats(&self) -> &Arc<PushStats> {
        &self.stats
    }

    /// The VAPID public key the worker signs with (`applicationServerKey`).
    pub fn application_server_key(&self) -> &str {
        &self.application_server_key
    }
}

/// One notification on its way to one subscription.
struct Delivery {
    user: UserId,
    subscription: Subscription,
    plaintext: Arc<[u8]>,
    /// Attempts made so far.
    attempts: u32,
}

/// A governor clock that reads tokio's clock (as the limiter's does), so the
/// deferrals it computes agree with `sleep_until`.
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

// `Reference` is how governor reads `Duration` instants.
const _: fn(&Duration, Duration) -> governor::nanos::Nanos =
    <Duration as Reference>::duration_since;

type EndpointLimiter =
    RateLimiter<String, HashMapStateStore<String>, TokioClock, NoOpMiddleware<Duration>>;

/// How often stale per-endpoint rate state is forgotten.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);

struct Worker {
    cfg: PushConfig,
    sender: Arc<Sender>,
    stats: Arc<PushStats>,
    outcomes: mpsc::Sender<Outcome>,
    coalescer: Coalescer<Notification>,
    limiter: EndpointLimiter,
    clock: TokioClock,
    last_sweep: Instant,
    /// Deliveries that may start now, oldest first.
    ready: VecDeque<Delivery>,
    /// Deliveries waiting for a retry time or the endpoint's rate limit.
    later: BTreeMap<(Instant, u64), Delivery>,
    later_seq: u64,
    inflight: JoinSet<(Delivery, Attempt)>,
}

impl Worker {
    fn new(
        cfg: PushConfig,
        sender: Arc<Sender>,
        stats: Arc<PushStats>,
        outcomes: mpsc::Sender<Outcome>,
    ) -> Worker {
        let per_minute = NonZeroU32::new(cfg.endpoint_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.endpoint_burst).unwrap_or(NonZeroU32::MIN);
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let limiter = RateLimiter::new(
            Quota::per_minute(per_minute).allow_burst(burst),
            HashMapStateStore::default(),
            clock.clone(),
        );
        Worker {
            coalescer: Coalescer::new(cfg.coalesce_window, cfg.coalesce_buffers),
            cfg,
            sender,
            stats,
            outcomes,
            limiter,
            clock,
            last_sweep: Instant::now(),
            ready: VecDeque::new(),
            later: BTreeMap::new(),
            later_seq: 0,
            inflight: JoinSet::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Notification>, shutdown: CancellationToken) {
        let mut open = true;
        loop {
            self.start_ready();
            if !open && self.idle() {
                break;
            }
            let deadline = [
                self.coalescer.next_deadline(),
                self.later.keys().next().map(|k| k.0),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                () = shutdown.cancelled() => break,
                n = rx.recv(), if open => match n {
                    Some(n) => self.accept(n),
                    None => open = false,
                },
                Some(done) = self.inflight.join_next(), if !self.inflight.is_empty() => match done {
                    Ok((delivery, attempt)) => self.finish(delivery, attempt),
                    Err(e) => warn!(error = %e, "push delivery task failed"),
                },
                () = sleep_until_opt(deadline), if deadline.is_some() => self.tick(),
            }
        }
        debug!(
            inflight = self.inflight.len(),
            waiting = self.ready.len() + self.later.len(),
            "push worker stopped"
        );
    }

    fn idle(&self) -> bool {
        self.coalescer.is_empty()
            && self.ready.is_empty()
            && self.later.is_empty()
            && self.inflight.is_empty()
    }

    /// A notification from a user actor.
    fn accept(&mut self, n: Notification) {
        let now = Instant::now();
        self.collect_due(now);
        match self.coalescer.offer(n.key.clone(), n, now) {
            Offer::Now(n, count) => self.fan_out(n, count),
            Offer::Held => PushStats::bump(&self.stats.coalesced),
            Offer::Full(n) => {
                debug!(user = n.key.user, "push coalescing table full; dropped");
                PushStats::bump(&self.stats.dropped);
            }
        }
    }

    /// Timers: coalescing windows that ended, deliveries whose wait is over.
    fn tick(&mut self) {
        let now = Instant::now();
        self.collect_due(now);
        while let Some(entry) = self.later.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn collect_due(&mut self, now: Instant) {
        for (n, count) in self.coalescer.due(now) {
            // Read while it was held: nothing to tell.
            let read = n
                .read
                .as_ref()
                .is_some_and(|r| r.is_read(n.key.network, &n.key.buffer, n.payload.id));
            if read {
                debug!(user = n.key.user, "held push dropped: read meanwhile");
                PushStats::bump(&self.stats.read_meanwhile);
                continue;
            }
            self.fan_out(n, count);
        }
    }

    /// One delivery per subscription, sharing the payload's JSON.
    fn fan_out(&mut self, mut n: Notification, count: u32) {
        n.payload.count = count;
        let user = n.key.user;
        let plaintext: Arc<[u8]> = match n.payload.to_json() {
            Ok(json) => json.into(),
            Err(e) => {
                warn!(user, error = %e, "push payload does not fit; not sent");
                for sub in n.subscriptions.iter() {
                    self.fail(user, sub.endpoint.clone(), FailReason::TooLarge);
                }
                return;
            }
        };
        for subscription in n.subscriptions.iter() {
            let plaintext = match subscription.format {
                Format::Json => plaintext.clone(),
                Format::Irc => match &n.irc_line {
                    Some(line) if line.len() <= MAX_PLAINTEXT => line.clone(),
                    Some(_) => {
                        self.fail(user, subscription.endpoint.clone(), FailReason::TooLarge);
                        continue;
                    }
                    None => continue,
                },
            };
            let delivery = Delivery {
                user,
                subscription: subscription.clone(),
                plaintext,
                attempts: 0,
            };
            if self.waiting() >= self.cfg.backlog {
                PushStats::bump(&self.stats.dropped);
                continue;
            }
            self.ready.push_back(delivery);
        }
    }

    fn waiting(&self) -> usize {
        self.ready.len() + self.later.len()
    }

    /// Starts deliveries while slots are free; one whose endpoint is over its
    /// rate waits until the endpoint may take it.
    fn start_ready(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= LIMITER_SWEEP {
            self.limiter.retain_recent();
            self.last_sweep = now;
        }
        while self.inflight.len() < self.cfg.concurrency.max(1) {
            let Some(delivery) = self.ready.pop_front() else {
                break;
            };
            if let Err(not_until) = self
                .limiter
                .check_key(&delivery.subscription.endpoint.to_string())
            {
                let wait = not_until.wait_time_from(self.clock.now());
                self.defer(now + wait, delivery);
                continue;
            }
            let sender = self.sender.clone();
            self.inflight.spawn(async move {
                let mut delivery = delivery;
                delivery.attempts += 1;
                let attempt = sender
                    .send(&delivery.subscription, &delivery.plaintext)
                    .await;
                (delivery, attempt)
            });
        }
    }

    fn defer(&mut self, at: Instant, delivery: Delivery) {
        self.later_seq += 1;
        self.later.insert((at, self.later_seq), delivery);
    }

    /// What an attempt's answer means for its delivery.
    fn finish(&mut self, delivery: Delivery, attempt: Attempt) {
        let user = delivery.user;
        let origin = delivery.subscription.origin();
        let endpoint = || delivery.subscription.endpoint.clone();
        match attempt {
            Attempt::Sent => {
                PushStats::bump(&self.stats.sent);
                debug!(user, %origin, attempts = delivery.attempts, "push sent");
                self.report(Outcome::Sent {
                    user,
                    endpoint: endpoint(),
                });
            }
            Attempt::Gone => {
                PushStats::bump(&self.stats.removed);
                info!(user, %origin, "push subscription gone; removing it");
                self.report(Outcome::Gone {
                    user,
                    endpoint: endpoint(),
                });
            }
            Attempt::Refused(code) => {
                info!(user, %origin, status = code, "push refused");
                self.fail(user, endpoint(), FailReason::Refused(code));
            }
            Attempt::Insecure => {
                info!(user, %origin, "push endpoint not allowed (http: while allow_http is off)");
                self.fail(user, endpoint(), FailReason::Insecure);
            }
            Attempt::TooLarge => self.fail(user, endpoint(), FailReason::TooLarge),
            Attempt::Retry { after } => {
                if delivery.attempts >= self.cfg.max_attempts {
                    info!(user, %origin, attempts = delivery.attempts, "push failed; giving up");
                    self.fail(user, endpoint(), FailReason::Attempts);
                    return;
                }
                if after.is_some_and(|a| a > self.cfg.backoff_max) {
                    info!(user, %origin, "push service asked to retry too late; giving up");
                    self.fail(user, endpoint(), FailReason::RetryAfterTooLong);
                    return;
                }
                let delay = backoff(&self.cfg, delivery.attempts).max(after.unwrap_or_default());
                debug!(user, %origin, attempts = delivery.attempts, delay_ms = delay.as_millis() as u64, "push retry");
                PushStats::bump(&self.stats.retried);
                self.defer(Instant::now() + delay, delivery);
            }
        }
    }

    fn fail(&mut self, user: UserId, endpoint: Url, reason: FailReason) {
        PushStats::bump(&self.stats.failed);
        self.report(Outcome::Failed {
            user,
            endpoint,
            reason,
        });
    }

    fn report(&self, outcome: Outcome) {
        if self.outcomes.try_send(outcome).is_err() {
            debug!("push outcome channel full or closed; outcome not reported");
        }
    }
}

/// `backoff_min · 2^(attempts−1)`, at most `backoff_max`, plus up to a quarter
/// of jitter (still at most `backoff_max`).
fn backoff(cfg: &PushConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = cfg
        .backoff_min
        .saturating_mul(1 << exp)
        .min(cfg.backoff_max);
    let jitter = base.mul_f64(rand::thread_rng().gen_range(0.0..0.25));
    (base + jitter).min(cfg.backoff_max)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_below_the_cap() {
        let cfg = PushConfig {
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..PushConfig::default()
        };
        for (attempts, base) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60), (40, 60)] {
            let d = backoff(&cfg, attempts);
            let base = Duration::from_secs(base);
            assert!(
                d >= base && d <= (base + base / 4).min(cfg.backoff_max),
                "{attempts}: {d:?}"
            );
        }
    }
}
