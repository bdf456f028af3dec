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
        irc_line: None,
        read: None,
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

// ---- end to end: a real InspIRCd, a node, the HTTP API and IRC clients ----

mod e2e {
    //! Ferry end to end with a real InspIRCd: pushes for private messages and
    //! mentions arrive once, decrypted and signed by the key the API serves; own,
    //! read and muted lines and lines while a client is active do not push; a
    //! 410 removes the subscription; a hanging push service does not slow the
    //! relay to an attached IRC client; `WEBPUSH REGISTER` from an IRC client; a
    //! detached channel pushes only the line that attaches it again.

    use std::time::Duration;

    use ferry::admin::NetworkSpec;
    use ferry::store::UserId;
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use crate::fixtures::client::TestClient;
    use crate::fixtures::ferry::{Backend, Ferry};
    use crate::fixtures::ircd::{InspOpts, Ircd};
    use crate::fixtures::push::{Answer, PushReceiver};

    on_both_backends!(
        pushes_what_matters_once_and_nothing_else,
        gone_subscription_is_removed,
        hanging_push_service_does_not_slow_the_relay,
        webpush_register_from_an_irc_client,
        a_detached_channel_pushes_only_what_attaches_it,
    );

    /// A user `alice` (password `secret`) on network `test`, in `#ferry`, connected.
    async fn alice(ferry: &Ferry, ircd: &Ircd) -> UserId {
        let id = ferry.add_user("alice", "secret").await;
        ferry
            .add_network(
                id,
                NetworkSpec {
                    name: "test".into(),
                    addr: ircd.addr(),
                    nick: "alice".into(),
                    channels: vec!["#ferry".into()],
                    ..NetworkSpec::default()
                },
            )
            .await;
        ferry.wait_connected(id, "test", 1).await;
        id
    }

    async fn on_network(ircd: &Ircd, nick: &str) -> TestClient {
        let mut c = TestClient::connect(&ircd.addr()).await;
        c.register(nick).await;
        c.join("#ferry").await;
        c
    }

    /// The user API with alice's bearer token.
    struct Api {
        base: String,
        token: String,
        http: reqwest::Client,
    }

    impl Api {
        async fn login(ferry: &Ferry) -> Api {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let base = ferry.http_url();
            let r: Value = http
                .post(format!("{base}/api/login"))
                .json(&json!({"username": "alice", "password": "secret"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            Api {
                base,
                token: r["token"].as_str().expect("a token").to_owned(),
                http,
            }
        }

        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let mut req = self
                .http
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }

        /// Subscribes `receiver` as a browser would: the served key, then POST.
        async fn subscribe(&self, receiver: &PushReceiver) -> (StatusCode, Value) {
            let sub = receiver.subscription();
            let (p256dh, auth) = sub.keys.to_base64();
            self.call(
                reqwest::Method::POST,
                "/api/push/subscriptions",
                Some(
                    json!({"endpoint": receiver.endpoint, "keys": {"p256dh": p256dh, "auth": auth},
                    "expirationTime": null}),
                ),
            )
            .await
        }

        async fn vapid(&self) -> String {
            let (status, body) = self
                .call(reqwest::Method::GET, "/api/push/vapid", None)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["public_key"].as_str().unwrap().to_owned()
        }
    }

    /// A websocket session of the web protocol.
    struct Ws(
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    );

    impl Ws {
        async fn connect(ferry: &Ferry, token: &str) -> Ws {
            let url = format!(
                "{}/ws?token={token}",
                ferry.http_url().replacen("http", "ws", 1)
            );
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut ws = Ws(ws);
            ws.send(json!({"type": "resume", "last_id": null})).await;
            ws
        }

        async fn send(&mut self, v: Value) {
            use futures::SinkExt as _;
            self.0
                .send(tokio_tungstenite::tungstenite::Message::Text(
                    v.to_string().into(),
                ))
                .await
                .unwrap();
        }

        async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
            use futures::StreamExt as _;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let m = tokio::time::timeout_at(deadline, self.0.next())
                    .await
                    .unwrap_or_else(|_| panic!("no {what} in time"))
                    .expect("socket open")
                    .expect("no websocket error");
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let ev: Value = serde_json::from_str(&t).unwrap();
                    if pred(&ev) {
                        return ev;
                    }
                }
            }
        }
    }

    async fn metric(ferry: &Ferry, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", ferry.http_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    async fn pushes_what_matters_once_and_nothing_else(backend: Backend) {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start(backend).await;
        let id = alice(&ferry, &ircd).await;
        let api = Api::login(&ferry).await;
        let key = api.vapid().await;
        assert_eq!(key.len(), 87, "an uncompressed P-256 point, base64url");
        let mut receiver = PushReceiver::start(&key).await;

        // Checked input: https only (this node allows http for the receiver),
        // keys must be keys.
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/api/push/subscriptions",
                Some(json!({"endpoint": "ftp://x.example/a", "keys": {"p256dh": "AAAA", "auth": "AAAA"}})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("endpoint"));
        let (status, body) = api.subscribe(&receiver).await;
        assert_eq!(
            (status, &body["created"]),
            (StatusCode::CREATED, &json!(true))
        );
        let (status, _) = api.subscribe(&receiver).await;
        assert_eq!(status, StatusCode::OK, "registering again renews");

        let mut bob = on_network(&ircd, "bob").await;
        let mut carol = on_network(&ircd, "carol").await;

        // A private message, non-ASCII intact.
        let text = "ça va ? 日本語 🦀 \"quoted\"";
        bob.send(format!("PRIVMSG alice :{text}")).await;
        let got = receiver.next().await;
        assert_eq!(got.payload["network"], "test");
        assert_eq!(got.payload["buffer"], "bob");
        assert_eq!(got.payload["sender"], "bob");
        assert_eq!(got.payload["text"], text);
        assert_eq!(got.payload["reason"], "private");
        assert_eq!(got.payload["count"], 1);
        assert!(got.payload["id"].as_i64().unwrap() > 0);
        let aud = got.claims["aud"].as_str().unwrap();
        assert_eq!(aud, format!("http://{}", receiver.addr));

        // A mention in a channel, case-folded and word-bounded.
        bob.send("PRIVMSG #ferry :malice is not a mention").await;
        bob.send("PRIVMSG #ferry :\x02ALICE\x02: über-wichtig")
            .await;
        let got = receiver.next().await;
        assert_eq!(
            (
                &got.payload["buffer"],
                &got.payload["reason"],
                &got.payload["text"]
            ),
            (
                &json!("#ferry"),
                &json!("mention"),
                &json!("ALICE: über-wichtig")
            )
        );

        // Alice's own line does not push, even naming herself.
        let mut c = ferry.client("alice", "test", "secret", &[]).await;
        c.send("PRIVMSG #ferry :alice was here").await;
        bob.expect("alice's own line", |l| {
            l.is("PRIVMSG") && l.nick() == "alice"
        })
        .await;

        // A muted buffer does not push.
        let (status, body) = api
            .call(
                reqwest::Method::PUT,
                "/api/push/mute",
                Some(json!({"network": "test", "buffer": "#FERRY", "muted": true})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["buffer"], "#ferry");
        let (_, settings) = api
            .call(reqwest::Method::GET, "/api/push/settings", None)
            .await;
        assert_eq!(
            settings["muted"],
            json!([{"network": "test", "buffer": "#ferry"}])
        );
        bob.send("PRIVMSG #ferry :alice: muted").await;
        c.expect("the muted line", |l| l.last_str() == "alice: muted")
            .await;
        let (status, _) = api
            .call(
                reqwest::Method::PUT,
                "/api/push/mute",
                Some(json!({"network": "test", "buffer": "#ferry", "muted": false})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);

        // A line read before its push went out does not push: dave's first line
        // pushes at once, his second is held by coalescing, and alice reads it
        // (her marker is past it) before the window ends.
        let mut dave = on_network(&ircd, "dave").await;
        dave.send("PRIVMSG alice :first from dave").await;
        let got = receiver.next().await;
        assert_eq!(got.payload["text"], "first from dave");
        dave.send("PRIVMSG alice :already read").await;
        c.expect("the read line", |l| l.last_str() == "already read")
            .await;
        // Its id, once the writer has stored it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let last = loop {
            let (_, history) = api
                .call(
                    reqwest::Method::GET,
                    "/api/history?network=test&buffer=dave&limit=1",
                    None,
                )
                .await;
            let last = history["messages"]
                .as_array()
                .and_then(|m| m.last())
                .cloned();
            if let Some(last) = last.filter(|l| l["text"] == "already read") {
                break last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not stored: {history}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/api/read",
                Some(json!({"network": "test", "buffer": "dave", "id": last["id"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stats = ferry
            .services()
            .push
            .as_ref()
            .unwrap()
            .pusher()
            .stats()
            .clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stats
            .read_meanwhile
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the held push was neither dropped nor sent"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // While a web client is focused: nothing is pushed.
        let mut ws = Ws::connect(&ferry, &api.token).await;
        ws.until("synced", |e| e["type"] == "synced").await;
        ws.send(json!({"type": "focus", "focused": true, "id": 7}))
            .await;
        ws.until("ok", |e| e["type"] == "ok" && e["re"] == 7).await;
        carol.send("PRIVMSG alice :while focused").await;
        ws.until("the focused line", |e| e["text"] == "while focused")
            .await;
        ws.send(json!({"type": "focus", "focused": false, "id": 8}))
            .await;
        ws.until("ok", |e| e["type"] == "ok" && e["re"] == 8).await;
        // The web client leaves (it counts as an attached client below).
        drop(ws);

        // While a client is active: with "IRC clients count", the attached one.
        let (status, body) = api
            .call(
                reqwest::Method::PUT,
                "/api/push/settings",
                Some(json!({"keywords": ["Fähre"], "irc_is_active": true})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["keywords"], json!(["Fähre"]));
        carol.send("PRIVMSG alice :while active").await;
        c.expect("the active line", |l| l.last_str() == "while active")
            .await;
        // Detached, the same setting lets pushes through: a keyword now.
        c.send("QUIT").await;
        let _ = c.expect_closed().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            carol.send("PRIVMSG #ferry :ping").await;
            // The detach reaches the node after the QUIT; wait until no client is
            // attached (the push hub's count follows the connection task).
            let status = ferry
                .services()
                .users
                .get(id)
                .unwrap()
                .status()
                .await
                .unwrap();
            if status.iter().all(|s| s.clients == 0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "client still attached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        carol.send("PRIVMSG #ferry :die FÄHRE fährt").await;
        let got = receiver.next().await;
        assert_eq!(
            (
                &got.payload["sender"],
                &got.payload["reason"],
                &got.payload["text"]
            ),
            (
                &json!("carol"),
                &json!("keyword"),
                &json!("die FÄHRE fährt")
            )
        );
        // Nothing else was pushed: exactly four so far.
        // (The counter moves when Ferry reads the answer, just after the receiver
        // reported the request.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while metric(&ferry, "ferry_push_sent_total").await < 4.0 {
            assert!(tokio::time::Instant::now() < deadline, "sent count");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metric(&ferry, "ferry_push_sent_total").await, 4.0);
        assert!(receiver.try_next().is_none(), "an unexpected push");
        assert_eq!(metric(&ferry, "ferry_push_subscriptions").await, 1.0);

        // Unsubscribed: nothing more.
        let (status, _) = api
            .call(
                reqwest::Method::DELETE,
                "/api/push/subscriptions",
                Some(json!({"endpoint": receiver.endpoint})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api
            .call(
                reqwest::Method::DELETE,
                "/api/push/subscriptions",
                Some(json!({"endpoint": receiver.endpoint})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(metric(&ferry, "ferry_push_subscriptions").await, 0.0);
    }

    /// A mention in a detached channel that does not attach it is not pushed; one
    /// that attaches it (`reattach_on` highlight) is, as in an attached channel.
    async fn a_detached_channel_pushes_only_what_attaches_it(backend: Backend) {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start(backend).await;
        alice(&ferry, &ircd).await;
        let api = Api::login(&ferry).await;
        let mut receiver = PushReceiver::start(&api.vapid().await).await;
        let (status, body) = api.subscribe(&receiver).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let mut bob = on_network(&ircd, "bob").await;

        let (status, body) = api
            .call(
                reqwest::Method::PATCH,
                "/api/networks/test/channels/%23ferry",
                Some(json!({"detached": true, "reattach_on": "none"})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        // Held: a mention that does not attach the channel. The private message after
        // it is the next push.
        bob.send("PRIVMSG #ferry :alice: held, not pushed").await;
        bob.send("PRIVMSG alice :after the held one").await;
        let got = receiver.next().await;
        assert_eq!(
            (&got.payload["reason"], &got.payload["text"]),
            (&json!("private"), &json!("after the held one")),
            "a held line was pushed: {}",
            got.payload
        );

        // Attached by a highlight: pushed as usual.
        let (status, body) = api
            .call(
                reqwest::Method::PATCH,
                "/api/networks/test/channels/%23ferry",
                Some(json!({"reattach_on": "highlight"})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        bob.send("PRIVMSG #ferry :alice: this one wakes you").await;
        let got = receiver.next().await;
        assert_eq!(
            (
                &got.payload["buffer"],
                &got.payload["reason"],
                &got.payload["text"]
            ),
            (
                &json!("#ferry"),
                &json!("mention"),
                &json!("alice: this one wakes you")
            )
        );
    }

    async fn gone_subscription_is_removed(backend: Backend) {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start(backend).await;
        let id = alice(&ferry, &ircd).await;
        let api = Api::login(&ferry).await;
        let mut receiver = PushReceiver::start(&api.vapid().await).await;
        receiver.answer_always(Answer::Status(410, None));
        api.subscribe(&receiver).await;
        let mut bob = on_network(&ircd, "bob").await;
        bob.send("PRIVMSG alice :are you there?").await;
        assert_eq!(receiver.next().await.answer, Answer::Status(410, None));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !ferry
            .store()
            .push_subscriptions(id)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gone subscription was not removed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metric(&ferry, "ferry_push_gone_total").await, 1.0);
        // Nothing is sent to it any more.
        bob.send("PRIVMSG alice :still there?").await;
        let mut c = ferry.client("alice", "test", "secret", &[]).await;
        bob.send("PRIVMSG alice :sync").await;
        c.expect("sync", |l| l.last_str() == "sync").await;
        assert!(receiver.try_next().is_none());
    }

    async fn hanging_push_service_does_not_slow_the_relay(backend: Backend) {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start(backend).await;
        alice(&ferry, &ircd).await;
        let api = Api::login(&ferry).await;
        let mut receiver = PushReceiver::start(&api.vapid().await).await;
        receiver.answer_always(Answer::Hang);
        api.subscribe(&receiver).await;
        let mut c = ferry.client("alice", "test", "secret", &[]).await;
        let mut bob = on_network(&ircd, "bob").await;
        let started = tokio::time::Instant::now();
        for i in 0..5 {
            bob.send(format!("PRIVMSG alice :hang {i}")).await;
            bob.send(format!("PRIVMSG #ferry :alice: hang {i}")).await;
        }
        for i in 0..5 {
            let want = format!("hang {i}");
            c.expect(&want, |l| l.is("PRIVMSG") && l.last_str() == want)
                .await;
        }
        // The push service holds requests for up to the request timeout (15 s);
        // the relay did not wait for it.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "relay took {took:?}");
        let first = receiver.next().await;
        assert_eq!(first.answer, Answer::Hang);
    }

    async fn webpush_register_from_an_irc_client(backend: Backend) {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start(backend).await;
        let id = alice(&ferry, &ircd).await;
        let mut c = ferry
            .client(
                "alice",
                "test",
                "secret",
                &["soju.im/webpush", "message-tags"],
            )
            .await;
        let isupport = c
            .expect("VAPID in ISUPPORT", |l| {
                l.is("005") && l.raw_str().contains("VAPID=")
            })
            .await;
        let key = isupport
            .raw_str()
            .split(' ')
            .find_map(|t| t.strip_prefix("VAPID="))
            .unwrap()
            .to_owned();
        let mut receiver = PushReceiver::start(&key).await;
        let sub = receiver.subscription();
        let (p256dh, auth) = sub.keys.to_base64();

        // Bad input: a clear FAIL, nothing stored.
        c.send(format!(
            "WEBPUSH REGISTER {} p256dh=AAAA;auth={auth}",
            receiver.endpoint
        ))
        .await;
        let fail = c
            .expect("FAIL WEBPUSH", |l| {
                l.is("FAIL") && l.param_str(0) == "WEBPUSH"
            })
            .await;
        assert_eq!(fail.param_str(1), "INVALID_PARAMS", "{}", fail.raw_str());
        assert!(ferry
            .store()
            .push_subscriptions(id)
            .await
            .unwrap()
            .is_empty());

        c.send(format!(
            "WEBPUSH REGISTER {} p256dh={p256dh};auth={auth}",
            receiver.endpoint
        ))
        .await;
        let ok = c.expect("WEBPUSH REGISTER", |l| l.is("WEBPUSH")).await;
        assert_eq!(ok.param_str(0), "REGISTER");
        assert_eq!(ok.param_str(1), receiver.endpoint);

        // The IRC client is attached, but attached IRC clients do not hold pushes
        // back unless the user says so.
        let mut bob = on_network(&ircd, "bob").await;
        bob.send("PRIVMSG alice :hello goguma ✓").await;
        let got = receiver.next().await;
        // soju.im/webpush: the payload is the IRC message itself.
        let line = got.payload.as_str().expect("an IRC line").to_owned();
        assert!(
            line.contains(" PRIVMSG alice :hello goguma ✓") && line.contains(":bob!"),
            "{line}"
        );

        c.send(format!("WEBPUSH UNREGISTER {}", receiver.endpoint))
            .await;
        c.expect("WEBPUSH UNREGISTER", |l| {
            l.is("WEBPUSH") && l.param_str(0) == "UNREGISTER"
        })
        .await;
        assert!(ferry
            .store()
            .push_subscriptions(id)
            .await
            .unwrap()
            .is_empty());
    }
}
