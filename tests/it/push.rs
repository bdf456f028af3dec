//! The push worker against a Web Push receiver in the test process
//! (`fixtures::push`), which checks VAPID and decrypts each push as a push
//! service and browser would: text arrives intact, gone subscriptions are
//! reported, 429/5xx are retried as the service asks and no more than allowed,
//! a hanging endpoint blocks neither other deliveries nor the caller, payloads
//! fit the 4 KiB limit, bursts coalesce, endpoints are rate-limited and must be
//! https unless allowed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use ferry::push::{
    BufferKey, FailReason, Notification, Outcome, Payload, PushConfig, Pusher, Reason,
    Subscription, VapidKey,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fixtures::push::{Answer, PushReceiver};

fn config() -> PushConfig {
    PushConfig {
        allow_http: true,
        contact: Some("mailto:ops@ferry.test".parse().unwrap()),
        coalesce_window: Duration::ZERO,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        ..PushConfig::default()
    }
}

/// A worker and the outcome channel; stopped when the test ends.
struct Harness {
    pusher: Pusher,
    outcomes: mpsc::Receiver<Outcome>,
    _stop: tokio_util::sync::DropGuard,
}

fn start(cfg: PushConfig, vapid: &VapidKey) -> Harness {
    let shutdown = CancellationToken::new();
    let (pusher, outcomes) = Pusher::spawn(cfg, vapid.clone(), shutdown.clone()).unwrap();
    Harness {
        pusher,
        outcomes,
        _stop: shutdown.drop_guard(),
    }
}

impl Harness {
    async fn outcome(&mut self) -> Outcome {
        tokio::time::timeout(Duration::from_secs(60), self.outcomes.recv())
            .await
            .expect("an outcome within 60 s")
            .expect("worker running")
    }

    fn stat(&self, pick: fn(&ferry::push::PushStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        pick(self.pusher.stats()).load(Ordering::Relaxed)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

fn notification(user: i64, buffer: &str, text: &str, subs: &[Subscription]) -> Notification {
    Notification {
        key: BufferKey {
            user,
            network: 7,
            buffer: buffer.to_lowercase().into_bytes(),
        },
        subscriptions: Arc::from(subs.to_vec()),
        payload: Payload {
            network: "libera".into(),
            buffer: buffer.into(),
            sender: "bob".into(),
            text: text.into(),
            id: 1042,
            time: now(),
            reason: Reason::Mention,
            count: 1,
            truncated: false,
        },
    }
}

#[tokio::test]
async fn push_non_ascii_text_arrives_intact_and_signed() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    let mut h = start(config(), &vapid);
    let sub = receiver.subscription();

    let text = "alice: ça va ? 日本語 🦀 \"quoted\" \\ \u{202e}rtl \x02bold\x02";
    let n = notification(1, "#Ferry", text, std::slice::from_ref(&sub));
    let time = ferry::irc::time::format(n.payload.time);
    h.pusher.notify(n).unwrap();

    let got = receiver.next().await;
    assert_eq!(
        got.payload,
        serde_json::json!({"network": "libera", "buffer": "#Ferry", "sender": "bob",
            "text": text, "id": 1042, "time": time, "reason": "mention", "count": 1})
    );
    assert_eq!(got.claims["sub"], "mailto:ops@ferry.test");
    assert_eq!(got.headers["urgency"], "high");
    assert_eq!(
        h.outcome().await,
        Outcome::Sent {
            user: 1,
            endpoint: sub.endpoint.clone()
        }
    );
    assert_eq!(h.stat(|s| &s.sent), 1);
    assert!(receiver.try_next().is_none(), "one push, once");
}

#[tokio::test]
async fn push_gone_subscription_is_reported_for_removal() {
    let vapid = VapidKey::generate();
    let mut h = start(config(), &vapid);
    for code in [410, 404] {
        let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
        receiver.answer_always(Answer::Status(code, None));
        let sub = receiver.subscription();
        h.pusher
            .notify(notification(3, "bob", "hi", std::slice::from_ref(&sub)))
            .unwrap();
        assert_eq!(receiver.next().await.answer, Answer::Status(code, None));
        assert_eq!(
            h.outcome().await,
            Outcome::Gone {
                user: 3,
                endpoint: sub.endpoint.clone()
            }
        );
    }
    assert_eq!(h.stat(|s| &s.removed), 2);
    assert_eq!(
        h.stat(|s| &s.retried),
        0,
        "a gone subscription is not retried"
    );
}

#[tokio::test]
async fn push_429_and_500_are_retried_honouring_retry_after() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    receiver.script([Answer::Status(429, Some(1)), Answer::Status(500, None)]);
    let mut h = start(config(), &vapid);
    let sub = receiver.subscription();
    h.pusher
        .notify(notification(
            1,
            "#a",
            "retry me",
            std::slice::from_ref(&sub),
        ))
        .unwrap();

    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    assert_eq!(first.answer, Answer::Status(429, Some(1)));
    assert_eq!(second.answer, Answer::Status(500, None));
    assert_eq!(third.answer, Answer::Created);
    assert!(
        second.at - first.at >= Duration::from_secs(1),
        "Retry-After: 1 honoured ({:?})",
        second.at - first.at
    );
    assert_eq!(third.payload["text"], "retry me");
    assert_eq!(
        h.outcome().await,
        Outcome::Sent {
            user: 1,
            endpoint: sub.endpoint.clone()
        }
    );
    assert_eq!(
        (
            h.stat(|s| &s.retried),
            h.stat(|s| &s.sent),
            h.stat(|s| &s.failed)
        ),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn push_retries_are_bounded() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    receiver.answer_always(Answer::Status(503, None));
    let mut h = start(
        PushConfig {
            max_attempts: 3,
            ..config()
        },
        &vapid,
    );
    let sub = receiver.subscription();
    h.pusher
        .notify(notification(1, "#a", "x", std::slice::from_ref(&sub)))
        .unwrap();
    assert_eq!(
        h.outcome().await,
        Outcome::Failed {
            user: 1,
            endpoint: sub.endpoint.clone(),
            reason: FailReason::Attempts
        }
    );
    for _ in 0..3 {
        assert_eq!(
            receiver.try_next().unwrap().answer,
            Answer::Status(503, None)
        );
    }
    assert!(receiver.try_next().is_none(), "exactly three attempts");
    assert_eq!(h.stat(|s| &s.failed), 1);

    // A Retry-After beyond backoff_max ends the delivery instead of waiting.
    receiver.script([Answer::Status(429, Some(3600))]);
    h.pusher
        .notify(notification(1, "#b", "x", std::slice::from_ref(&sub)))
        .unwrap();
    assert!(matches!(
        h.outcome().await,
        Outcome::Failed {
            reason: FailReason::RetryAfterTooLong,
            ..
        }
    ));
    assert_eq!(
        receiver.next().await.answer,
        Answer::Status(429, Some(3600))
    );
}

#[tokio::test]
async fn push_hanging_endpoint_blocks_neither_other_deliveries_nor_the_caller() {
    let vapid = VapidKey::generate();
    let mut hanging = PushReceiver::start(&vapid.application_server_key()).await;
    hanging.answer_always(Answer::Hang);
    let mut healthy = PushReceiver::start(&vapid.application_server_key()).await;
    let mut h = start(
        PushConfig {
            concurrency: 2,
            max_attempts: 1,
            request_timeout: Duration::from_secs(3),
            ..config()
        },
        &vapid,
    );
    let stuck = hanging.subscription();
    let fine = healthy.subscription();

    h.pusher
        .notify(notification(
            1,
            "#a",
            "to the void",
            std::slice::from_ref(&stuck),
        ))
        .unwrap();
    hanging.next().await; // the request is in, and will never be answered
    h.pusher
        .notify(notification(
            2,
            "#b",
            "to a phone",
            std::slice::from_ref(&fine),
        ))
        .unwrap();
    assert_eq!(healthy.next().await.payload["text"], "to a phone");
    // Delivered while the other request still hangs: its outcome comes first.
    assert_eq!(
        h.outcome().await,
        Outcome::Sent {
            user: 2,
            endpoint: fine.endpoint.clone()
        }
    );
    // The hanging request is cut at request_timeout, freeing its slot.
    assert_eq!(
        h.outcome().await,
        Outcome::Failed {
            user: 1,
            endpoint: stuck.endpoint.clone(),
            reason: FailReason::Attempts
        }
    );

    // The caller never waits: with one slot held by a hanging endpoint and
    // small queues, notify returns at once and what does not fit is dropped
    // and counted. Every notification ends as a drop or one outcome.
    let mut h = start(
        PushConfig {
            concurrency: 1,
            queue: 2,
            backlog: 2,
            max_attempts: 1,
            request_timeout: Duration::from_secs(1),
            ..config()
        },
        &vapid,
    );
    let total = 50;
    let mut refused = 0;
    for i in 0..total {
        let n = notification(1, &format!("#c{i}"), "x", std::slice::from_ref(&stuck));
        if h.pusher.notify(n).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full queue refuses");
    assert!(h.stat(|s| &s.dropped) >= refused);
    let mut outcomes = 0;
    while outcomes + h.stat(|s| &s.dropped) < total {
        let o = h.outcome().await;
        assert!(
            matches!(
                o,
                Outcome::Failed {
                    reason: FailReason::Attempts,
                    ..
                }
            ),
            "{o:?}"
        );
        outcomes += 1;
    }
    assert!(outcomes >= 1);
    assert_eq!(h.stat(|s| &s.failed), outcomes);
}

#[tokio::test]
async fn push_payload_fits_the_4096_byte_limit() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    let mut h = start(config(), &vapid);
    let sub = receiver.subscription();
    let text = "日本語🦀é\"a ".repeat(1000);
    h.pusher
        .notify(notification(1, "#long", &text, std::slice::from_ref(&sub)))
        .unwrap();
    let got = receiver.next().await;
    assert!(got.body_len <= 4096);
    // No character here costs more than 4 bytes of JSON, so at most 3 are unused.
    assert!(
        got.body_len > 4096 - 4,
        "filled to the limit ({})",
        got.body_len
    );
    let cut = got.payload["text"].as_str().unwrap();
    assert!(text.starts_with(cut) && cut.len() < text.len());
    assert_eq!(got.payload["truncated"], true);
    assert!(matches!(h.outcome().await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn push_coalesces_a_burst_per_buffer() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    let window = Duration::from_secs(2);
    let mut h = start(
        PushConfig {
            coalesce_window: window,
            ..config()
        },
        &vapid,
    );
    let sub = receiver.subscription();
    let subs = std::slice::from_ref(&sub);
    for i in 1..=5 {
        h.pusher
            .notify(notification(1, "#a", &format!("line {i}"), subs))
            .unwrap();
    }
    h.pusher
        .notify(notification(1, "#b", "other buffer", subs))
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..3 {
        let r = receiver.next().await;
        got.push((
            r.at,
            r.payload["buffer"].clone(),
            r.payload["text"].clone(),
            r.payload["count"].clone(),
        ));
    }
    let texts: Vec<_> = got
        .iter()
        .map(|g| {
            (
                g.1.as_str().unwrap(),
                g.2.as_str().unwrap(),
                g.3.as_u64().unwrap(),
            )
        })
        .collect();
    assert!(texts.contains(&("#a", "line 1", 1)), "{texts:?}");
    assert!(texts.contains(&("#b", "other buffer", 1)), "{texts:?}");
    assert_eq!(
        texts[2],
        ("#a", "line 5", 4),
        "the latest line, standing for four"
    );
    let first_a = got.iter().find(|g| g.2 == "line 1").unwrap().0;
    assert!(
        got[2].0 - first_a >= window - Duration::from_millis(50),
        "one push per window"
    );
    for _ in 0..3 {
        assert!(matches!(h.outcome().await, Outcome::Sent { .. }));
    }
    assert_eq!(h.stat(|s| &s.coalesced), 4);
    assert_eq!(h.stat(|s| &s.sent), 3);
    assert!(receiver.try_next().is_none());
}

#[tokio::test]
async fn push_rate_limit_per_endpoint_defers_instead_of_dropping() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    let mut other = PushReceiver::start(&vapid.application_server_key()).await;
    let h = start(
        PushConfig {
            endpoint_per_minute: 30,
            endpoint_burst: 1,
            ..config()
        },
        &vapid,
    );
    let sub = receiver.subscription();
    h.pusher
        .notify(notification(1, "#a", "one", std::slice::from_ref(&sub)))
        .unwrap();
    h.pusher
        .notify(notification(1, "#b", "two", std::slice::from_ref(&sub)))
        .unwrap();
    // Another endpoint is not held back by the first one's limit.
    h.pusher
        .notify(notification(1, "#c", "elsewhere", &[other.subscription()]))
        .unwrap();
    let first = receiver.next().await;
    assert_eq!(other.next().await.payload["text"], "elsewhere");
    let second = receiver.next().await;
    assert_eq!(
        (
            first.payload["text"].as_str(),
            second.payload["text"].as_str()
        ),
        (Some("one"), Some("two"))
    );
    // 30 per minute after a burst of 1: the second waits about 2 s.
    assert!(
        second.at - first.at >= Duration::from_secs(1),
        "{:?}",
        second.at - first.at
    );
    assert_eq!(h.stat(|s| &s.dropped), 0);
}

#[tokio::test]
async fn push_requires_https_unless_allowed() {
    let vapid = VapidKey::generate();
    let mut receiver = PushReceiver::start(&vapid.application_server_key()).await;
    let mut h = start(
        PushConfig {
            allow_http: false,
            ..config()
        },
        &vapid,
    );
    // Stored while http was allowed; the worker checks again before sending.
    let sub = receiver.subscription();
    h.pusher
        .notify(notification(1, "#a", "x", std::slice::from_ref(&sub)))
        .unwrap();
    assert_eq!(
        h.outcome().await,
        Outcome::Failed {
            user: 1,
            endpoint: sub.endpoint.clone(),
            reason: FailReason::Insecure
        }
    );
    assert!(receiver.try_next().is_none(), "nothing was sent");
}
