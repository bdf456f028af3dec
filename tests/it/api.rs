//! The HTTP JSON API, end to end over real HTTP against an in-process node, on
//! SQLite and on PostgreSQL: sessions, rate limiting, history paging, search,
//! read markers, isolation between users, admin access, OpenAPI, metrics.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use ferry::admin::NetworkSpec;
use ferry::store::{NetworkId, NewMessage, UserId};
use reqwest::header::{HeaderMap, AUTHORIZATION, COOKIE, RETRY_AFTER, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::ferry::{Backend, Ferry};

on_both_backends!(
    login_logout_cookie_and_bearer,
    failed_logins_are_indistinguishable,
    login_is_rate_limited,
    unauthenticated_requests_get_401,
    history_pages_by_id_both_ways,
    search_filters_pages_and_marks,
    read_marker_unread_and_highlights,
    users_cannot_see_each_other,
    admin_endpoints_need_an_admin,
    openapi_metrics_and_readyz,
);

/// A plain HTTP client on a node, with responses as (status, headers, JSON).
struct Api {
    base: String,
    http: reqwest::Client,
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Api {
    fn new(ferry: &Ferry) -> Api {
        Api::from(ferry, "127.0.0.1")
    }

    /// A client whose requests come from `local_ip` (any 127.0.0.0/8 address).
    fn from(ferry: &Ferry, local_ip: &str) -> Api {
        Api {
            base: ferry.http_url(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .local_address(local_ip.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            Auth::Cookie(t) => req.header(COOKIE, format!("other=1; ferry_session={t}")),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    async fn get(&self, path: &str, auth: Auth<'_>) -> Resp {
        self.send(reqwest::Method::GET, path, auth, None).await
    }

    async fn post(&self, path: &str, auth: Auth<'_>, body: Value) -> Resp {
        self.send(reqwest::Method::POST, path, auth, Some(body))
            .await
    }

    async fn login(&self, user: &str, password: &str) -> Resp {
        self.post(
            "/api/login",
            Auth::None,
            json!({ "username": user, "password": password }),
        )
        .await
    }

    /// Logs in and returns the bearer token.
    async fn token(&self, user: &str, password: &str) -> String {
        let r = self.login(user, password).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    }
}

fn error_code(r: &Resp) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an API error: {} {}", r.status, r.text))
}

async fn add_network(ferry: &Ferry, user: UserId, name: &str, nick: &str) -> NetworkId {
    let spec = NetworkSpec {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        nick: nick.into(),
        ..NetworkSpec::default()
    };
    // Only in the store: the running actor does not dial it, so it shows as stopped.
    ferry
        .store()
        .create_network(user, &spec.to_new_network().unwrap())
        .await
        .unwrap()
        .id
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

/// A backlog line at `t0 + seq minutes`.
fn line(
    user: UserId,
    seq: i64,
    network: NetworkId,
    buffer: &str,
    sender: &str,
    command: &str,
    text: &str,
) -> NewMessage {
    let raw = match command {
        "ACTION" => format!(":{sender}!u@h PRIVMSG {buffer} :\x01ACTION {text}\x01"),
        "JOIN" => format!(":{sender}!u@h JOIN {buffer}"),
        c => format!(":{sender}!u@h {c} {buffer} :{text}"),
    };
    NewMessage {
        user_id: user,
        seq,
        network_id: network,
        buffer: buffer.as_bytes().to_vec(),
        buffer_key: buffer.to_ascii_lowercase().into_bytes(),
        time: t0() + chrono::Duration::minutes(seq),
        sender: sender.into(),
        command: command.into(),
        raw: Bytes::from(raw),
        text: text.into(),
        msgid: None,
        epoch: 0,
        stream: None,
    }
}

fn ids(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

async fn login_logout_cookie_and_bearer(backend: Backend) {
    let mut ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let api = Api::new(&ferry);

    let r = api.login("alice", "secret").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(r.body["user"]["name"], "alice");
    assert_eq!(r.body["user"]["admin"], false);
    let cookie = r.headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("ferry_session={token};")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }

    for auth in [Auth::Bearer(&token), Auth::Cookie(&token)] {
        let me = api.get("/api/me", auth).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
        assert_eq!(me.body["name"], "alice");
    }

    // Only a hash of the token is stored, and sessions survive a restart.
    let stored = ferry
        .store()
        .session(&sha256(&token))
        .await
        .unwrap()
        .expect("session stored");
    assert!(stored.expires_at > Utc::now() + chrono::Duration::days(29));
    ferry.restart().await;
    let api = Api::new(&ferry);
    assert_eq!(
        api.get("/api/me", Auth::Bearer(&token)).await.status,
        StatusCode::OK
    );

    // Logging out with the cookie revokes the session for bearer use too.
    let out = api
        .post("/api/logout", Auth::Cookie(&token), json!({}))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    assert!(out
        .headers
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let me = api.get("/api/me", Auth::Bearer(&token)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&me), "unauthorized");
    assert!(ferry
        .store()
        .session(&sha256(&token))
        .await
        .unwrap()
        .is_none());

    // A second session, ended with the bearer token.
    let token2 = api.token("alice", "secret").await;
    assert_ne!(token, token2);
    assert_eq!(
        api.post("/api/logout", Auth::Bearer(&token2), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/api/me", Auth::Cookie(&token2)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

fn sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

async fn failed_logins_are_indistinguishable(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let api = Api::new(&ferry);
    // Warm up the dummy hash, so the first unknown-user attempt is not the slow one.
    api.login("nobody", "x").await;

    let t = std::time::Instant::now();
    let wrong = api.login("alice", "wrong").await;
    let wrong_time = t.elapsed();
    let t = std::time::Instant::now();
    let unknown = api.login("mallory", "wrong").await;
    let unknown_time = t.elapsed();

    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(unknown.text, wrong.text);
    assert_eq!(error_code(&wrong), "invalid_credentials");
    assert!(wrong.headers.get(SET_COOKIE).is_none());
    // Both ran an argon2 verification: neither is an order of magnitude faster.
    assert!(
        unknown_time * 5 > wrong_time,
        "unknown {unknown_time:?} vs wrong {wrong_time:?}"
    );
    assert!(
        wrong_time * 5 > unknown_time,
        "unknown {unknown_time:?} vs wrong {wrong_time:?}"
    );

    let bad = api
        .post("/api/login", Auth::None, json!({ "user": "alice" }))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad), "bad_request");
}

async fn login_is_rate_limited(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    ferry.add_user("bob", "secret").await;
    let api = Api::new(&ferry);

    // An address has five free failures (`[auth] free_failures`), then waits.
    for _ in 0..5 {
        assert_eq!(
            api.login("alice", "wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = api.login("alice", "secret").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert_eq!(error_code(&limited), "rate_limited");
    let retry: u64 = limited
        .headers
        .get(RETRY_AFTER)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(limited.body.get("token").is_none());

    // Another address still gets in, as alice too (the account budget counts only
    // failures; `auth::a_locked_out_owner_still_gets_in` has more).
    let other = Api::from(&ferry, "127.0.0.2");
    other.token("bob", "secret").await;
    other.token("alice", "secret").await;
}

async fn unauthenticated_requests_get_401(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    let api = Api::new(&ferry);
    let gets = [
        "/api/me",
        "/api/networks",
        "/api/buffers",
        "/api/history?network=n&buffer=%23c",
        "/api/search?q=x",
        "/api/admin/users",
    ];
    for path in gets {
        for auth in [
            Auth::None,
            Auth::Bearer("not-a-token"),
            Auth::Cookie("deadbeef"),
        ] {
            let r = api.get(path, auth).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text);
            assert_eq!(error_code(&r), "unauthorized");
        }
    }
    for path in ["/api/read", "/api/logout"] {
        let r = api
            .post(
                path,
                Auth::None,
                json!({ "network": "n", "buffer": "#c", "id": 1 }),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text);
    }
}

async fn history_pages_by_id_both_ways(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let net = add_network(&ferry, alice, "net", "alice").await;
    let mut batch: Vec<NewMessage> = (1..=20)
        .map(|seq| {
            line(
                alice,
                seq,
                net,
                "#chan",
                "bob",
                "PRIVMSG",
                &format!("line {seq}"),
            )
        })
        .collect();
    batch.push(line(alice, 21, net, "bob", "bob", "PRIVMSG", "private"));
    batch.push(line(alice, 22, net, "bob", "bob", "PRIVMSG", "private 2"));
    // Not UTF-8: comes back decoded as Latin-1.
    let mut latin1 = line(alice, 23, net, "#chan", "bob", "PRIVMSG", "café");
    latin1.raw = Bytes::from_static(b":bob!u@h PRIVMSG #chan :caf\xe9");
    batch.push(latin1);
    ferry.store().insert_messages(&batch).await.unwrap();

    let api = Api::new(&ferry);
    let token = api.token("alice", "secret").await;
    let auth = Auth::Bearer(&token);
    let page = |q: &str| format!("/api/history?network=net&buffer=%23chan&{q}");

    // Newest first page, returned oldest first.
    let r = api.get(&page("limit=10"), auth).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        ids(&r.body["messages"]),
        vec![12, 13, 14, 15, 16, 17, 18, 19, 20, 23]
    );
    assert_eq!(r.body["more"], true);
    let last = &r.body["messages"][9];
    assert_eq!(last["raw"], ":bob!u@h PRIVMSG #chan :café");
    assert_eq!(last["text"], "café");
    assert_eq!(last["time"], "2024-01-01T00:23:00.000Z");
    assert_eq!(last["network"], "net");
    assert_eq!(last["buffer"], "#chan");
    assert_eq!(last["sender"], "bob");
    assert_eq!(last["kind"], "PRIVMSG");

    // Backwards.
    let r = api.get(&page("before=12&limit=8"), auth).await;
    assert_eq!(ids(&r.body["messages"]), vec![4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(r.body["more"], true);
    let r = api.get(&page("before=4&limit=7"), auth).await;
    assert_eq!(ids(&r.body["messages"]), vec![1, 2, 3]);
    assert_eq!(r.body["more"], false);

    // Forwards.
    let r = api.get(&page("after=0&limit=5"), auth).await;
    assert_eq!(ids(&r.body["messages"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(r.body["more"], true);
    let r = api.get(&page("after=18&limit=5"), auth).await;
    assert_eq!(ids(&r.body["messages"]), vec![19, 20, 23]);
    assert_eq!(r.body["more"], false);

    // Between, and the buffer name is case-insensitive.
    let r = api
        .get(
            "/api/history?network=net&buffer=%23CHAN&after=5&before=10",
            auth,
        )
        .await;
    assert_eq!(ids(&r.body["messages"]), vec![6, 7, 8, 9]);
    let r = api.get("/api/history?network=net&buffer=Bob", auth).await;
    assert_eq!(ids(&r.body["messages"]), vec![21, 22]);

    // Bad parameters are named; unknown names are 404.
    for (q, param) in [
        ("network=net&buffer=%23chan&limit=0", "limit"),
        ("network=net&buffer=%23chan&limit=abc", "limit"),
        ("network=net&buffer=%23chan&before=-1", "before"),
        ("network=net&buffer=%23chan&after=x", "after"),
        ("network=net", "buffer"),
        ("buffer=%23chan", "network"),
    ] {
        let r = api.get(&format!("/api/history?{q}"), auth).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(error_code(&r), "bad_request");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("`{param}`")), "{q}: {msg}");
    }
    for q in ["network=nope&buffer=%23chan", "network=net&buffer=%23nope"] {
        let r = api.get(&format!("/api/history?{q}"), auth).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{q}");
        assert_eq!(error_code(&r), "not_found");
    }
}

async fn search_filters_pages_and_marks(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let net = add_network(&ferry, alice, "net", "alice").await;
    let other = add_network(&ferry, alice, "other", "alice").await;
    let batch = vec![
        line(
            alice,
            1,
            net,
            "#chan",
            "bob",
            "PRIVMSG",
            "the quick brown fox",
        ),
        line(alice, 2, net, "#chan", "carol", "PRIVMSG", "a lazy dog"),
        line(
            alice,
            3,
            net,
            "#chan",
            "carol",
            "PRIVMSG",
            "Fox & <hound> are FOXES? fox!",
        ),
        line(alice, 4, net, "#rust", "bob", "PRIVMSG", "fox in rust"),
        line(
            alice,
            5,
            other,
            "#chan",
            "bob",
            "NOTICE",
            "fox on another network",
        ),
    ];
    ferry.store().insert_messages(&batch).await.unwrap();
    let api = Api::new(&ferry);
    let token = api.token("alice", "secret").await;
    let auth = Auth::Bearer(&token);

    let r = api.get("/api/search?q=fox", auth).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ids(&r.body["results"]), vec![5, 4, 3, 1]);
    assert_eq!(r.body["next_before"], Value::Null);
    assert_eq!(
        r.body["results"][2]["highlight"],
        "<mark>Fox</mark> &amp; &lt;hound&gt; are FOXES? <mark>fox</mark>!"
    );
    assert_eq!(
        r.body["results"][2]["text"],
        "Fox & <hound> are FOXES? fox!"
    );
    assert_eq!(r.body["results"][0]["network"], "other");

    let q = |s: &str| format!("/api/search?q=fox&{s}");
    assert_eq!(
        ids(&api.get(&q("network=net"), auth).await.body["results"]),
        vec![4, 3, 1]
    );
    assert_eq!(
        ids(&api.get(&q("network=net&buffer=%23CHAN"), auth).await.body["results"]),
        vec![3, 1]
    );
    assert_eq!(
        ids(&api.get(&q("sender=BOB"), auth).await.body["results"]),
        vec![5, 4, 1]
    );
    assert_eq!(
        ids(&api
            .get(
                &q("from=2024-01-01T00:02:00Z&to=2024-01-01T00:04:00.000Z"),
                auth
            )
            .await
            .body["results"]),
        vec![4, 3]
    );
    let from_ms = (t0() + chrono::Duration::minutes(4)).timestamp_millis();
    assert_eq!(
        ids(&api.get(&q(&format!("from={from_ms}")), auth).await.body["results"]),
        vec![5, 4]
    );
    // Every word must match.
    assert_eq!(
        ids(&api.get("/api/search?q=quick+fox", auth).await.body["results"]),
        vec![1]
    );
    assert_eq!(
        api.get("/api/search?q=quick+fox", auth).await.body["results"][0]["highlight"],
        "the <mark>quick</mark> brown <mark>fox</mark>"
    );

    // Paging with next_before.
    let p1 = api.get(&q("limit=2"), auth).await;
    assert_eq!(ids(&p1.body["results"]), vec![5, 4]);
    assert_eq!(p1.body["next_before"], 4);
    let p2 = api.get(&q("limit=2&before=4"), auth).await;
    assert_eq!(ids(&p2.body["results"]), vec![3, 1]);
    assert_eq!(p2.body["next_before"], Value::Null);

    for (path, param) in [
        ("/api/search", "q"),
        ("/api/search?q=%3F%3F", "q"),
        ("/api/search?q=fox&from=yesterday", "from"),
        ("/api/search?q=fox&limit=100000", "limit"),
        ("/api/search?q=fox&buffer=%23chan", "buffer"),
    ] {
        let r = api.get(path, auth).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{}",
            r.text
        );
    }
    assert_eq!(
        api.get(&q("network=nope"), auth).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn read_marker_unread_and_highlights(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let net = add_network(&ferry, alice, "net", "Alice").await;
    let batch = vec![
        line(alice, 1, net, "#chan", "bob", "PRIVMSG", "hello"),
        line(alice, 2, net, "#chan", "bob", "PRIVMSG", "hey ALICE, look"),
        line(alice, 3, net, "#chan", "carol", "ACTION", "waves at alice"),
        line(alice, 4, net, "#chan", "dave", "JOIN", ""),
        line(alice, 5, net, "#chan", "Alice", "PRIVMSG", "alice is here"),
        line(
            alice,
            6,
            net,
            "#chan",
            "carol",
            "NOTICE",
            "notice for alice",
        ),
        line(alice, 7, net, "bob", "bob", "PRIVMSG", "psst"),
    ];
    ferry.store().insert_messages(&batch).await.unwrap();
    let api = Api::new(&ferry);
    let token = api.token("alice", "secret").await;
    let auth = Auth::Bearer(&token);

    let nets = api.get("/api/networks", auth).await;
    assert_eq!(nets.status, StatusCode::OK, "{}", nets.text);
    assert_eq!(nets.body[0]["name"], "net");
    assert_eq!(nets.body[0]["state"], "stopped");
    assert_eq!(nets.body[0]["nick"], "Alice");

    let buffer = |body: &Value, name: &str| -> Value {
        body[0]["buffers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap()
    };
    let b = api.get("/api/buffers", auth).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(b.body[0]["network"], "net");
    let chan = buffer(&b.body, "#chan");
    assert_eq!(chan["kind"], "channel");
    assert_eq!(chan["unread"], 6);
    // 2, 3 and 6; not 5, Alice's own message.
    assert_eq!(chan["highlights"], 3);
    assert_eq!(chan["read_marker"], 0);
    let query = buffer(&b.body, "bob");
    assert_eq!(query["kind"], "query");
    assert_eq!(
        (query["unread"].as_i64(), query["highlights"].as_i64()),
        (Some(1), Some(0))
    );

    let r = api
        .post(
            "/api/read",
            auth,
            json!({ "network": "net", "buffer": "#CHAN", "id": 3 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["read_marker"], 3);
    let chan = buffer(&api.get("/api/buffers", auth).await.body, "#chan");
    assert_eq!(
        (chan["unread"].as_i64(), chan["highlights"].as_i64()),
        (Some(3), Some(1))
    );

    // Never backwards.
    let r = api
        .post(
            "/api/read",
            auth,
            json!({ "network": "net", "buffer": "#chan", "id": 1 }),
        )
        .await;
    assert_eq!(r.body["read_marker"], 3);
    let chan = buffer(&api.get("/api/buffers", auth).await.body, "#chan");
    assert_eq!(
        (chan["read_marker"].as_i64(), chan["unread"].as_i64()),
        (Some(3), Some(3))
    );

    let r = api
        .post(
            "/api/read",
            auth,
            json!({ "network": "net", "buffer": "#chan", "id": 6 }),
        )
        .await;
    assert_eq!(r.body["read_marker"], 6);
    let chan = buffer(&api.get("/api/buffers", auth).await.body, "#chan");
    assert_eq!(
        (chan["unread"].as_i64(), chan["highlights"].as_i64()),
        (Some(0), Some(0))
    );

    let r = api
        .post(
            "/api/read",
            auth,
            json!({ "network": "net", "buffer": "#nope", "id": 6 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .post(
            "/api/read",
            auth,
            json!({ "network": "net", "buffer": "#chan" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r), "bad_request");
}

async fn users_cannot_see_each_other(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let bob = ferry.add_user("bob", "secret").await;
    let a_net = add_network(&ferry, alice, "net", "alice").await;
    let a_only = add_network(&ferry, alice, "alicenet", "alice").await;
    let b_net = add_network(&ferry, bob, "net", "bob").await;
    ferry
        .store()
        .insert_messages(&[
            line(
                alice,
                1,
                a_net,
                "#secret",
                "eve",
                "PRIVMSG",
                "the password is swordfish",
            ),
            line(
                alice,
                2,
                a_only,
                "#secret",
                "eve",
                "PRIVMSG",
                "swordfish again",
            ),
            line(
                bob,
                1,
                b_net,
                "#public",
                "carol",
                "PRIVMSG",
                "nothing to see",
            ),
        ])
        .await
        .unwrap();
    let api = Api::new(&ferry);
    let bob_token = api.token("bob", "secret").await;
    let auth = Auth::Bearer(&bob_token);

    for path in [
        "/api/history?network=net&buffer=%23secret",
        "/api/history?network=alicenet&buffer=%23secret",
        "/api/search?q=swordfish&network=alicenet",
    ] {
        let r = api.get(path, auth).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }
    let r = api.get("/api/search?q=swordfish", auth).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["results"], json!([]));
    let r = api
        .get("/api/search?q=swordfish&network=net&buffer=%23public", auth)
        .await;
    assert_eq!(r.body["results"], json!([]));
    let r = api.get("/api/buffers", auth).await;
    assert!(
        !r.text.contains("secret") && !r.text.contains("alicenet"),
        "{}",
        r.text
    );
    let r = api.get("/api/networks", auth).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    for (network, buffer) in [("net", "#secret"), ("alicenet", "#secret")] {
        let r = api
            .post(
                "/api/read",
                auth,
                json!({ "network": network, "buffer": buffer, "id": 99 }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    }
    // Alice's read marker did not move, and her history is intact.
    let alice_token = api.token("alice", "secret").await;
    let b = api.get("/api/buffers", Auth::Bearer(&alice_token)).await;
    let text = b.text;
    assert!(text.contains("\"read_marker\":0"), "{text}");
    assert!(!text.contains("\"read_marker\":99"), "{text}");
    // Bob's session is not an admin's.
    assert_eq!(
        api.get("/api/admin/users", auth).await.status,
        StatusCode::FORBIDDEN
    );
}

async fn admin_endpoints_need_an_admin(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let root =
        ferry::admin::create_user(ferry.store(), &ferry.services().guard, "root", "toor", true)
            .await
            .unwrap();
    ferry
        .services()
        .users
        .start(root.id, &root.name)
        .await
        .unwrap();
    let api = Api::new(&ferry);
    let admin = api.token("root", "toor").await;
    let user = api.token("alice", "secret").await;
    let node_token = ferry.services().node.admin_token.token.clone();

    for auth in [
        Auth::Bearer(&admin),
        Auth::Cookie(&admin),
        Auth::Bearer(&node_token),
    ] {
        let r = api.get("/api/admin/users", auth).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let names: Vec<&str> = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alice", "root"]);
    }
    let me = api.get("/api/me", Auth::Bearer(&admin)).await;
    assert_eq!(me.body["admin"], true);

    let r = api
        .post(
            "/api/admin/users",
            Auth::Cookie(&admin),
            json!({ "name": "carol", "password": "pw" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    api.token("carol", "pw").await;
    // (Adding a network through the admin API dials it: covered where upstreams exist.)
    let r = api
        .get("/api/admin/users/carol/networks", Auth::Bearer(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!([]));

    for auth in [Auth::Bearer(&user), Auth::Cookie(&user)] {
        let r = api.get("/api/admin/users", auth).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert_eq!(error_code(&r), "forbidden");
        let r = api
            .post(
                "/api/admin/users",
                auth,
                json!({ "name": "mallory", "password": "pw" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = api.get("/api/admin/users/carol/networks", auth).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    assert!(ferry
        .store()
        .user_by_name("mallory")
        .await
        .unwrap()
        .is_none());
    let r = api
        .send(
            reqwest::Method::DELETE,
            "/api/admin/users/carol",
            Auth::Bearer(&user),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(
            reqwest::Method::DELETE,
            "/api/admin/users/carol",
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        api.get("/api/admin/users", Auth::None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn openapi_metrics_and_readyz(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let api = Api::new(&ferry);

    let doc = api.get("/api/openapi.json", Auth::None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    // Every route of the router, with its methods.
    let routes = [
        ("/api/login", "post"),
        ("/api/logout", "post"),
        ("/api/password", "post"),
        ("/api/me", "get"),
        ("/api/me/password", "post"),
        ("/api/me/away", "get"),
        ("/api/me/away", "patch"),
        ("/api/networks", "get"),
        ("/api/networks", "post"),
        ("/api/networks/{name}", "get"),
        ("/api/networks/{name}", "patch"),
        ("/api/networks/{name}", "delete"),
        ("/api/networks/{name}/channels", "post"),
        ("/api/networks/{name}/channels/{channel}", "delete"),
        ("/api/networks/{name}/channels/{channel}", "patch"),
        ("/api/buffers", "get"),
        ("/api/history", "get"),
        ("/api/search", "get"),
        ("/api/read", "post"),
        ("/api/push/vapid", "get"),
        ("/api/push/subscriptions", "post"),
        ("/api/push/subscriptions", "delete"),
        ("/api/push/settings", "get"),
        ("/api/push/settings", "put"),
        ("/api/push/mute", "put"),
        ("/api/openapi.json", "get"),
        ("/api/admin/users", "get"),
        ("/api/admin/users", "post"),
        ("/api/admin/users/{name}", "delete"),
        ("/api/admin/users/{name}/networks", "get"),
        ("/api/admin/users/{name}/networks", "post"),
        ("/api/admin/users/{name}/networks/{network}", "delete"),
        ("/api/admin/limits", "get"),
        ("/api/admin/limits/{key}", "put"),
        ("/api/admin/limits/{key}", "delete"),
        ("/api/invites/{token}", "get"),
        ("/api/invites/{token}", "post"),
        ("/api/admin/invites", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "{method} {path} missing from openapi.json"
        );
    }
    assert_eq!(
        doc.body["paths"].as_object().unwrap().len(),
        30,
        "a path the test does not know"
    );
    // The documented history parameters exist.
    let params: Vec<&str> = doc.body["paths"]["/api/history"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["network", "buffer", "before", "after", "limit"]);

    let m = api.get("/metrics", Auth::None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "ferry_users_running 1",
        "ferry_upstreams{state=\"connected\"} 0",
        "ferry_downstream_clients 0",
        "ferry_store_write_batches_total",
        "ferry_store_write_messages_total",
        "ferry_store_write_errors_total",
        "ferry_store_last_batch_seconds",
        "# TYPE ferry_store_write_batches_total counter",
        "process_resident_memory_bytes",
    ] {
        assert!(m.text.contains(name), "{name} not in metrics:\n{}", m.text);
    }

    let r = api.get("/readyz", Auth::None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["store"], true);
    assert_eq!(api.get("/healthz", Auth::None).await.status, StatusCode::OK);
}
