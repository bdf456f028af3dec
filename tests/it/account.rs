//! Users managing their own account over the user API (`account` module,
//! `http/account.rs`), against a real InspIRCd on SQLite and PostgreSQL: networks
//! added, changed, disconnected and removed as the IRC server sees it, channels
//! joined and parted, isolation between users, refusals with their codes, password
//! change; and in a cluster, a change made through a node that does not run the user.

use std::time::Duration;

use ferry::store::Sasl;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    a_user_adds_changes_and_removes_a_network,
    account_changes_are_refused_with_clear_codes,
    a_password_change_ends_the_other_sessions,
);

/// The user API as one logged-in user (bearer token).
struct Me {
    base: String,
    token: String,
    http: reqwest::Client,
}

struct Resp {
    status: StatusCode,
    body: Value,
    text: String,
}

impl Resp {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an API error: {} {}", self.status, self.text))
    }
}

impl Me {
    async fn login(base: &str, user: &str, password: &str) -> Me {
        Me::login_from(base, user, password, "127.0.0.1").await
    }

    /// Logged in with requests from `ip` (any 127.0.0.0/8 address).
    async fn login_from(base: &str, user: &str, password: &str, ip: &str) -> Me {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let r: Value = http
            .post(format!("{base}/api/login"))
            .json(&json!({ "username": user, "password": password }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Me {
            base: base.to_owned(),
            token: r["token"].as_str().expect("logged in").to_owned(),
            http,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

/// A client on the IRC server itself, in `chan`.
async fn watcher(ircd: &Ircd, nick: &str, chan: &str) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register(nick).await;
    w.join(chan).await;
    w
}

async fn expect_from(w: &mut TestClient, nick: &str, command: &str) {
    w.expect(&format!("{command} from {nick}"), |l| {
        l.is(command) && l.nick() == nick
    })
    .await;
}

/// The channels the store keeps as joined for the user's network.
async fn stored_channels(ferry: &Ferry, user: i64, network: &str) -> Vec<String> {
    let net = ferry
        .store()
        .network_by_name(user, network)
        .await
        .unwrap()
        .expect("network stored");
    let mut out: Vec<String> = ferry
        .store()
        .buffers(net.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.joined)
        .map(|b| String::from_utf8(b.name).unwrap())
        .collect();
    out.sort();
    out
}

async fn a_user_adds_changes_and_removes_a_network(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let me = Me::login(&ferry.http_url(), "alice", "secret").await;
    let mut w = watcher(&ircd, "watcher", "#one").await;

    // Added: the server sees the connection join the channel it was given.
    let r = me
        .post(
            "/api/networks",
            json!({
                "name": "test", "addr": ircd.addr(), "nick": "alice",
                "realname": "Alice A.", "channels": [{"name": "#one"}],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["name"], "test");
    assert_eq!(r.body["enabled"], true);
    expect_from(&mut w, "alice", "JOIN").await;
    ferry.wait_connected(alice, "test", 1).await;
    let r = me.get("/api/networks").await;
    assert_eq!(r.body[0]["state"], "connected", "{}", r.text);

    // Channels: joined and parted on the server, and kept so in the store.
    let mut w2 = watcher(&ircd, "watcher2", "#two").await;
    let r = me
        .post("/api/networks/test/channels", json!({ "name": "#two" }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["result"], "sent");
    expect_from(&mut w2, "alice", "JOIN").await;
    let r = me.delete("/api/networks/test/channels/%23one").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    expect_from(&mut w, "alice", "PART").await;
    w2.roundtrip().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stored_channels(&ferry, alice, "test").await != ["#two"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channels not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = me.get("/api/networks/test").await;
    assert_eq!(
        r.body["channels"],
        json!([{"name": "#two", "has_key": false}])
    );
    assert_eq!(r.body["realname"], "Alice A.");

    // A nick alone is asked of the server, without reconnecting.
    let r = me
        .patch("/api/networks/test", json!({ "nick": "alicia" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    w2.expect("NICK alice -> alicia", |l| {
        l.is("NICK") && l.nick() == "alice" && l.param_str(0) == "alicia"
    })
    .await;

    // Disconnect: QUIT, and it stays disconnected; a channel joined meanwhile is saved.
    let r = me
        .patch("/api/networks/test", json!({ "enabled": false }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["enabled"], false);
    expect_from(&mut w2, "alicia", "QUIT").await;
    let r = me.get("/api/networks").await;
    assert_eq!(r.body[0]["state"], "stopped", "{}", r.text);
    let r = me
        .post(
            "/api/networks/test/channels",
            json!({ "name": "#one", "key": "" }),
        )
        .await;
    assert_eq!(r.body["result"], "saved", "{}", r.text);
    assert_eq!(
        stored_channels(&ferry, alice, "test").await,
        ["#one", "#two"]
    );

    // SASL is stored sealed and read back; null removes it.
    let r = me
        .patch(
            "/api/networks/test",
            json!({ "sasl": {"account": "alicia", "password": "s3cr:et"} }),
        )
        .await;
    assert_eq!(r.body["sasl_account"], "alicia", "{}", r.text);
    assert!(!r.text.contains("s3cr:et"), "the password never comes back");
    let stored = ferry
        .store()
        .network_by_name(alice, "test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.sasl,
        Some(Sasl::Plain {
            username: "alicia".into(),
            password: "s3cr:et".into()
        })
    );
    let r = me
        .patch("/api/networks/test", json!({ "sasl": null }))
        .await;
    assert_eq!(r.body["sasl_account"], Value::Null, "{}", r.text);

    // Connect again: both stored channels are joined.
    let r = me
        .patch("/api/networks/test", json!({ "enabled": true }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    expect_from(&mut w, "alicia", "JOIN").await;
    expect_from(&mut w2, "alicia", "JOIN").await;

    // Removed: the connection quits and the network is gone.
    let r = me.delete("/api/networks/test").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    expect_from(&mut w, "alicia", "QUIT").await;
    assert!(ferry
        .store()
        .network_by_name(alice, "test")
        .await
        .unwrap()
        .is_none());
    let r = me.get("/api/networks").await;
    assert_eq!(r.body, json!([]));
}

async fn account_changes_are_refused_with_clear_codes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ferry = Ferry::start_on(db, |c| {
        c.accounts.max_networks_per_user = 2;
        c.accounts.allowed_servers = vec!["127.0.0.1:*".into(), "*.example.org:6697".into()];
    })
    .await;
    ferry.add_user("alice", "secret").await;
    ferry.add_user("bob", "secret").await;
    let alice = Me::login(&ferry.http_url(), "alice", "secret").await;
    let bob = Me::login(&ferry.http_url(), "bob", "secret").await;
    // Port 9 (discard) on loopback: allowed, and nothing answers there.
    let net = |name: &str| json!({ "name": name, "addr": "127.0.0.1:9", "nick": "a" });

    let r = alice.post("/api/networks", net("one")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Another user's network is not there for bob.
    for r in [
        bob.get("/api/networks/one").await,
        bob.patch("/api/networks/one", json!({ "nick": "x" })).await,
        bob.delete("/api/networks/one").await,
        bob.post("/api/networks/one/channels", json!({ "name": "#x" }))
            .await,
    ] {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert_eq!(r.code(), "not_found");
    }
    assert!(ferry
        .store()
        .network_by_name(
            ferry
                .store()
                .user_by_name("alice")
                .await
                .unwrap()
                .unwrap()
                .id,
            "one"
        )
        .await
        .unwrap()
        .is_some());

    // Bad input: 400 naming what is wrong.
    for (body, says) in [
        (
            json!({ "name": "a/b", "addr": "127.0.0.1:9", "nick": "a" }),
            "name: \\\"a/b\\\": use letters",
        ),
        (
            json!({ "name": "x", "addr": "127.0.0.1", "nick": "a" }),
            "addr: \\\"127.0.0.1\\\": expected HOST:PORT",
        ),
        (
            json!({ "name": "x", "addr": "127.0.0.1:9", "nick": "a b" }),
            "nick: \\\"a b\\\" is not valid",
        ),
        (
            json!({ "name": "x", "addr": "127.0.0.1:9", "nick": "a", "channels": [{"name": "nochan"}] }),
            "channel",
        ),
        (
            json!({ "name": "x", "addr": "127.0.0.1:9", "nick": "a", "tls_verify": "pin:zz" }),
            "tls_verify: \\\"pin:zz\\\": use verify",
        ),
        (
            json!({ "name": "x", "addr": "127.0.0.1:9", "nick": "a", "source_ip": "127.0.0.9" }),
            "source_ip",
        ),
        (json!({ "name": "x" }), "addr"),
    ] {
        let r = alice.post("/api/networks", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), "bad_request");
        assert!(r.text.contains(says), "{body}: {}", r.text);
        // Named as the API names the field, never as a CLI flag.
        assert!(!r.text.contains("--"), "{body}: {}", r.text);
    }
    let r = alice
        .post("/api/networks/one/channels", json!({ "name": "#a,#b" }))
        .await;
    assert_eq!(r.code(), "bad_request", "{}", r.text);
    let r = alice
        .patch("/api/networks/one", json!({ "nick": "a\r\nQUIT" }))
        .await;
    assert_eq!(r.code(), "bad_request", "{}", r.text);

    // The allow list, on create and on a changed address.
    let r = alice
        .post(
            "/api/networks",
            json!({ "name": "evil", "addr": "irc.evil.test:6697", "nick": "a" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "server_not_allowed");
    let r = alice
        .patch(
            "/api/networks/one",
            json!({ "addr": "irc.example.org:6667" }),
        )
        .await;
    assert_eq!(r.code(), "server_not_allowed", "{}", r.text);

    // A duplicate name, then the per-user cap.
    let r = alice.post("/api/networks", net("one")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "conflict");
    let r = alice
        .post(
            "/api/networks",
            json!({ "name": "two", "addr": "irc.example.org:6697", "nick": "a", "enabled": true }),
        )
        .await;
    assert_eq!(
        r.code(),
        "bad_request",
        "unknown fields are refused: {}",
        r.text
    );
    let r = alice
        .post(
            "/api/networks",
            json!({ "name": "two", "addr": "irc.example.org:6697", "nick": "a" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = alice.post("/api/networks", net("three")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "too_many_networks");

    // No session; a cookie from another site's page.
    let anon = reqwest::Client::new();
    let r = anon
        .post(format!("{}/api/networks", ferry.http_url()))
        .json(&net("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anon
        .delete(format!("{}/api/networks/one", ferry.http_url()))
        .header("cookie", format!("ferry_session={}", alice.token))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_origin");
    // The same cookie from the server's own page works.
    let r = anon
        .delete(format!("{}/api/networks/two", ferry.http_url()))
        .header("cookie", format!("ferry_session={}", alice.token))
        .header("origin", ferry.http_url())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn a_password_change_ends_the_other_sessions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ferry = Ferry::start_on(db, |c| c.auth.min_password_len = 8).await;
    ferry.add_user("alice", "old password").await;
    let here = Me::login(&ferry.http_url(), "alice", "old password").await;
    let other = Me::login(&ferry.http_url(), "alice", "old password").await;

    let r = here
        .post(
            "/api/me/password",
            json!({ "current": "wrong password", "new": "new password" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "invalid_credentials");
    let r = here
        .post(
            "/api/me/password",
            json!({ "current": "old password", "new": "short" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.code(), "bad_request");

    // The other session's websocket is closed by the change.
    let url = format!(
        "{}/ws?token={}",
        ferry.http_url().replacen("http", "ws", 1),
        other.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({ "type": "resume", "last_id": null })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("hello in time")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            if t.contains("\"hello\"") {
                break;
            }
        }
    }

    let r = here
        .post(
            "/api/me/password",
            json!({ "current": "old password", "new": "new password" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the socket closes in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break None,
        }
    };
    if let Some(frame) = closed {
        assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    }
    assert_eq!(other.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(here.get("/api/me").await.status, StatusCode::OK);

    let http = reqwest::Client::new();
    let login = |password: &'static str| {
        http.post(format!("{}/api/login", ferry.http_url()))
            .json(&json!({ "username": "alice", "password": password }))
            .send()
    };
    assert_eq!(login("old password").await.unwrap().status(), 401);
    assert_eq!(login("new password").await.unwrap().status(), 200);
}

/// In a cluster, changes made through a node that does not run the user reach the
/// owner's running session at once (the request is passed on to the owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_changes_through_a_non_owner_reach_the_owner() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let lease = |c: &mut ferry::config::NodeConfig| {
        c.cluster = ferry::cluster::ClusterConfig::with_lease(Duration::from_secs(6));
    };
    let a = Ferry::start_on(db.clone(), lease).await;
    let b = Ferry::start_on(db.clone(), lease).await;
    let alice = a.add_user("alice", "secret").await;
    assert!(b.services().users.get(alice).is_none(), "a runs alice");
    let mut w = watcher(&ircd, "watcher", "#cl").await;

    // Logged in and changing things on b.
    let me = Me::login(&b.http_url(), "alice", "secret").await;
    let r = me
        .post(
            "/api/networks",
            json!({ "name": "test", "addr": ircd.addr(), "nick": "alice", "channels": [{"name": "#cl"}] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    expect_from(&mut w, "alice", "JOIN").await;
    a.wait_connected(alice, "test", 1).await;
    assert!(
        b.services().users.get(alice).is_none(),
        "still only a runs alice"
    );

    let mut w2 = watcher(&ircd, "watcher2", "#cl2").await;
    let r = me
        .post("/api/networks/test/channels", json!({ "name": "#cl2" }))
        .await;
    assert_eq!(r.body["result"], "sent", "{}", r.text);
    expect_from(&mut w2, "alice", "JOIN").await;

    // An error from the owner comes back as the owner gave it.
    let r = me
        .post("/api/networks/test/channels", json!({ "name": "bad" }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.code(), "bad_request");

    // Password checks passed on to the owner count against the person's address, not
    // against b's: failures from one address do not lock out another's change.
    let attacker = Me::login_from(&b.http_url(), "alice", "secret", "127.0.0.5").await;
    let wrong = json!({ "current": "not it", "new": "whatever else" });
    let mut throttled = false;
    for _ in 0..20 {
        let r = attacker.post("/api/me/password", wrong.clone()).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.code(), "rate_limited");
            throttled = true;
            break;
        }
        assert_eq!(r.code(), "invalid_credentials", "{}", r.text);
    }
    assert!(throttled, "failed password checks are throttled");
    let r = me
        .post(
            "/api/me/password",
            json!({ "current": "secret", "new": "a new secret" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        attacker.get("/api/me").await.status,
        StatusCode::UNAUTHORIZED
    );

    // A client cannot make b act itself by claiming the call was passed on.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/networks/test", b.http_url()))
        .bearer_auth(&me.token)
        .header("x-ferry-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expect_from(&mut w, "alice", "QUIT").await;
    let status = a
        .services()
        .users
        .get(alice)
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(
        status.is_empty(),
        "the owner's session dropped it: {status:?}"
    );
}

/// The node that runs the user does not answer: the change is refused with the
/// reason (503 `owner_unreachable`) and nothing is changed.
#[tokio::test]
async fn an_account_change_for_an_unreachable_owner_changes_nothing() {
    use ferry::store::{node_state, NodeHealth, NodeRecord};
    let db = TestDb::new(Backend::Postgres).await;
    let a = Ferry::start_on(db, |_| {}).await;
    let store = a.store().clone();
    // "ghost" holds a live lease, but nothing listens at its address.
    let now = chrono::Utc::now();
    let lease = Duration::from_secs(3600);
    let ghost = NodeRecord {
        id: "ghost".into(),
        admin_url: "http://127.0.0.1:1".into(),
        admin_token: "none".into(),
        http_addr: "http://127.0.0.1:1".into(),
        irc_addr: "127.0.0.1:1".into(),
        version: "test".into(),
        state: node_state::ACTIVE.into(),
        started_at: now,
        heartbeat_at: now,
        source_ips: Vec::new(),
        schema_version: store.schema_version().await.unwrap(),
        config_fingerprint: String::new(),
        fd_limit: 65536,
        fd_budget: 60000,
        health: NodeHealth::default(),
        lease_expires_at: now,
    };
    store.register_node(&ghost, lease).await.unwrap();
    store
        .heartbeat_node("ghost", &NodeHealth::default(), lease)
        .await
        .unwrap();
    let u = ferry::admin::create_user(
        &store,
        &crate::fixtures::ferry::test_guard(),
        "q9",
        "secret",
        false,
    )
    .await
    .unwrap();
    assert!(store
        .assign_user(u.id, Some("ghost"), 0)
        .await
        .unwrap()
        .is_some());

    let me = Me::login(&a.http_url(), "q9", "secret").await;
    let r = me
        .post(
            "/api/networks",
            json!({ "name": "test", "addr": "127.0.0.1:6667", "nick": "q9" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "owner_unreachable");
    assert!(
        r.text.contains("ghost") && r.text.contains("nothing was changed"),
        "{}",
        r.text
    );
    assert!(store.networks(u.id).await.unwrap().is_empty());
    let r = me
        .post(
            "/api/me/password",
            json!({ "current": "secret", "new": "another secret" }),
        )
        .await;
    assert_eq!(r.code(), "owner_unreachable", "{}", r.text);
    let still = store.user(u.id).await.unwrap().unwrap();
    assert!(ferry::auth::verify_password(&still.password_hash, "secret"));
}
