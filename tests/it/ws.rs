//! The websocket (`GET /ws`), end to end with a websocket client library against an
//! in-process node and a real InspIRCd, on SQLite and PostgreSQL: resume after a
//! dropped socket (no gap, no duplicate), bad frames, authentication, isolation,
//! replies to a socket's own queries, live gap markers, each connection stage as a
//! `network` event and the MOTD in `hello` and at registration.

use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::services::Control;
use ferry::store::UserId;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::fixtures::relay::TcpRelay;

on_both_backends!(
    resume_after_a_dropped_socket_has_no_gap_and_no_duplicate,
    bad_frames_get_errors_and_the_socket_stays_open,
    unauthenticated_upgrades_are_refused,
    users_only_see_their_own_events,
);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

/// Logs `user` in over HTTP and returns the bearer token.
pub async fn login(ferry: &Ferry, user: &str, password: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/api/login", ferry.http_url()))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().expect("login gives a token").to_owned()
}

fn ws_url(ferry: &Ferry, query: &str) -> String {
    format!("{}/ws?{query}", ferry.http_url().replacen("http", "ws", 1))
}

pub(crate) async fn connect(ferry: &Ferry, token: &str, last_id: Option<i64>) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(ferry, &format!("token={token}")))
        .await
        .expect("websocket connects");
    send(&mut ws, json!({ "type": "resume", "last_id": last_id })).await;
    ws
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next event, failing after [`WAIT`].
pub(crate) async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("no websocket error");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads events until one satisfies `pred`; returns it.
pub(crate) async fn until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no {what} in time");
        let ev = next(ws).await;
        if pred(&ev) {
            return ev;
        }
    }
}

fn spec(ircd: &Ircd, nick: &str, chan: &str) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: nick.into(),
        channels: vec![chan.to_owned()],
        ..NetworkSpec::default()
    }
}

/// A user connected to `chan` on the ircd; returns its id and token.
async fn user_in(ferry: &Ferry, ircd: &Ircd, name: &str, chan: &str) -> (UserId, String) {
    let id = ferry.add_user(name, "secret").await;
    ferry.add_network(id, spec(ircd, name, chan)).await;
    ferry.wait_connected(id, "test", 1).await;
    (id, login(ferry, name, "secret").await)
}

async fn speaker(ircd: &Ircd, nick: &str, chan: &str) -> TestClient {
    let mut c = TestClient::connect(&ircd.addr()).await;
    c.register(nick).await;
    c.join(chan).await;
    c
}

fn is_msg(ev: &Value, text_prefix: &str) -> bool {
    ev["type"] == "message" && ev["text"].as_str().unwrap_or("").starts_with(text_prefix)
}

async fn resume_after_a_dropped_socket_has_no_gap_and_no_duplicate(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let (alice, token) = user_in(&ferry, &ircd, "alice", "#ws").await;
    let mut bob = speaker(&ircd, "bob", "#ws").await;

    // Bob's JOIN reached the server before his own echo, but alice's actor may take
    // it in a moment later: a snapshot without him is taken again until it has him.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        let mut ws = connect(&ferry, &token, None).await;
        let hello = next(&mut ws).await;
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["networks"][0]["name"], "test");
        let chan = hello["buffers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "#ws")
            .expect("the channel is in the snapshot");
        assert_eq!(chan["joined"], true);
        let has_bob = chan["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["nick"] == "bob");
        if has_bob {
            break ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never appeared in the snapshot's members: {chan}"
        );
        drop(ws);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next(&mut ws).await["type"], "synced");

    const N: usize = 60;
    const CUT: usize = 20;
    for i in 0..N {
        bob.send(format!("PRIVMSG #ws :line {i}")).await;
    }
    // Read some of them, then lose the socket while the rest are still arriving.
    let mut got: Vec<(i64, String)> = Vec::new();
    while got.len() < CUT {
        let ev = until(&mut ws, "a line", |e| is_msg(e, "line ")).await;
        got.push((
            ev["id"].as_i64().unwrap(),
            ev["text"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(ferry.services().sockets.control(alice, Control::Drop), 1);
    drop(ws);
    // More lines while no socket is connected.
    for i in N..N + 10 {
        bob.send(format!("PRIVMSG #ws :line {i}")).await;
    }
    bob.roundtrip().await;

    let last = got.last().unwrap().0;
    let mut ws = connect(&ferry, &token, Some(last)).await;
    assert_eq!(next(&mut ws).await["type"], "hello");
    while got.len() < N + 10 {
        let ev = next(&mut ws).await;
        if is_msg(&ev, "line ") {
            got.push((
                ev["id"].as_i64().unwrap(),
                ev["text"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let texts: Vec<String> = got.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<String> = (0..N + 10).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, want, "every line exactly once, in order");
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "ids increase: {got:?}"
    );
    // Nothing else arrives twice: a ping is answered next.
    send(&mut ws, json!({ "type": "ping", "id": "p" })).await;
    let ev = until(&mut ws, "pong", |e| {
        e["type"] == "pong" || is_msg(e, "line ")
    })
    .await;
    assert_eq!(
        ev["type"], "pong",
        "no duplicate line after the resume: {ev}"
    );
    assert_eq!(ev["re"], "p");

    // Sending: the channel sees it, and it comes back as our own message.
    send(
        &mut ws,
        json!({ "type": "send", "id": 1, "network": "test", "buffer": "#ws", "text": "hi from the web" }),
    )
    .await;
    bob.expect("alice's message", |l| {
        l.is("PRIVMSG") && l.last_str() == "hi from the web"
    })
    .await;
    let own = until(&mut ws, "own message", |e| is_msg(e, "hi from the web")).await;
    assert_eq!(own["own"], true);
    assert_eq!(own["sender"], "alice");

    // History pages back by id.
    send(
        &mut ws,
        json!({ "type": "history", "id": 2, "network": "test", "buffer": "#ws", "before": got[10].0, "limit": 5 }),
    )
    .await;
    let h = until(&mut ws, "history", |e| e["type"] == "history").await;
    assert_eq!(h["re"], 2);
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 5", "line 6", "line 7", "line 8", "line 9"]);
    assert_eq!(h["more"], true);
}

async fn bad_frames_get_errors_and_the_socket_stays_open(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let token = login(&ferry, "alice", "secret").await;
    let mut ws = connect(&ferry, &token, None).await;
    assert_eq!(next(&mut ws).await["type"], "hello");
    assert_eq!(next(&mut ws).await["type"], "synced");

    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );

    send(&mut ws, json!({ "type": "launch", "id": 9 })).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["re"].as_i64()),
        (Some("bad_request"), Some(9)),
        "{e}"
    );

    send(
        &mut ws,
        json!({ "type": "join", "id": 10, "network": "nope", "channel": "#x" }),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], "not_found");

    let big = json!({ "type": "ping", "pad": "x".repeat(100 * 1024) }).to_string();
    ws.send(Message::Text(big.into())).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["code"], "too_large", "{e}");

    send(&mut ws, json!({ "type": "ping", "id": 11 })).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["re"].as_i64()),
        (Some("pong"), Some(11))
    );

    // Beyond the transport limit the websocket layer closes the connection.
    let huge = "x".repeat(2 * 1024 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed in time");
    if let Some(code) = closed {
        assert_eq!(code, 1009, "message too big");
    }
}

async fn unauthenticated_upgrades_are_refused(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    for query in ["", "token=nope"] {
        let err = tokio_tungstenite::connect_async(ws_url(&ferry, query))
            .await
            .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
            other => panic!("expected HTTP 401, got {other}"),
        }
    }
    // A session cookie from a page of another origin is refused too.
    let token = login(&ferry, "alice", "secret").await;
    let mut req = ws_url(&ferry, "").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("cookie", format!("ferry_session={token}").parse().unwrap());
    h.insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req)
        .await
        .expect_err("refused")
    {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 403),
        other => panic!("expected HTTP 403, got {other}"),
    }
    // The same cookie from our own origin works.
    let mut req = ws_url(&ferry, "").into_client_request().unwrap();
    let host = ferry.http_url().trim_start_matches("http://").to_owned();
    let h = req.headers_mut();
    h.insert("cookie", format!("ferry_session={token}").parse().unwrap());
    h.insert("origin", format!("http://{host}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(&mut ws, json!({ "type": "resume", "last_id": null })).await;
    assert_eq!(next(&mut ws).await["type"], "hello");
}

async fn users_only_see_their_own_events(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let (_, alice) = user_in(&ferry, &ircd, "alice", "#alice").await;
    let (_, bob) = user_in(&ferry, &ircd, "bobby", "#bob").await;
    let mut carol = speaker(&ircd, "carol", "#alice").await;
    carol.join("#bob").await;

    let mut a = connect(&ferry, &alice, None).await;
    let hello = next(&mut a).await;
    let names: Vec<&str> = hello["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"#bob"),
        "alice's snapshot has no #bob: {names:?}"
    );
    assert_eq!(next(&mut a).await["type"], "synced");
    let mut b = connect(&ferry, &bob, None).await;
    until(&mut b, "synced", |e| e["type"] == "synced").await;

    carol.send("PRIVMSG #bob :secret for bobby").await;
    carol.send("PRIVMSG #alice :hello alice").await;
    until(&mut b, "bob's line", |e| is_msg(e, "secret for bobby")).await;
    let ev = until(&mut a, "alice's line", |e| e["type"] == "message").await;
    assert_eq!(
        ev["text"], "hello alice",
        "alice sees only her channel: {ev}"
    );

    // Both users call their network "test": names resolve within the session's user.
    send(
        &mut a,
        json!({ "type": "history", "id": 1, "network": "test", "buffer": "#bob" }),
    )
    .await;
    let e = until(&mut a, "reply", |e| e["re"] == 1).await;
    assert_eq!(e["code"], "not_found", "{e}");
}

/// The commands people type (`whois`, `mode`, `raw`) reach IRC; the replies to one
/// websocket's query reach that websocket alone (not a second tab, not an IRC client
/// of the same user); an error nobody asked for reaches every client as a `notice`;
/// a gap marker written while a socket is open arrives live with kind `GAP`.
#[tokio::test]
async fn queries_are_answered_to_the_asking_socket_and_gaps_arrive_live() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let (alice, token) = user_in(&ferry, &ircd, "alice", "#c").await;
    let mut bob = speaker(&ircd, "bob", "#c").await;
    let mut asker = connect(&ferry, &token, None).await;
    let mut other = connect(&ferry, &token, None).await;
    for ws in [&mut asker, &mut other] {
        until(ws, "synced", |e| e["type"] == "synced").await;
    }
    let mut irc = TestClient::connect(&ferry.irc_addr()).await;
    irc.send("PASS alice/test:secret").await;
    irc.register("alice").await;

    send(
        &mut asker,
        json!({ "type": "whois", "id": 1, "network": "test", "nick": "bob" }),
    )
    .await;
    let is_reply = |code: &'static str| {
        move |e: &Value| e["type"] == "notice" && e["code"] == code && e["reply"] == true
    };
    let user = until(&mut asker, "311", is_reply("311")).await;
    assert!(
        user["text"].as_str().unwrap().starts_with("bob is "),
        "{user}"
    );
    until(&mut asker, "318", is_reply("318")).await;
    // Bob speaks after the server answered: whatever reached the others before is
    // ahead of his line in their queues.
    bob.send("PRIVMSG #c :after the whois").await;
    let seen = |ev: &Value| is_msg(ev, "after the whois");
    loop {
        let ev = next(&mut other).await;
        assert!(
            !(ev["type"] == "notice" && ev["code"].as_str().is_some_and(|c| c.starts_with("31"))),
            "the other socket got a reply to the asker's WHOIS: {ev}"
        );
        if seen(&ev) {
            break;
        }
    }
    irc.expect("bob's line", |l| {
        l.is("PRIVMSG") && l.last_str() == "after the whois"
    })
    .await;
    assert!(!irc.transcript().contains(" 311 "), "{}", irc.transcript());

    // An error from another client's line reaches the web clients as an error notice.
    irc.send("FOO").await;
    for ws in [&mut asker, &mut other] {
        let e = until(ws, "421", |e| e["type"] == "notice" && e["code"] == "421").await;
        assert_eq!(
            (e["error"].as_bool(), e["reply"].as_bool()),
            (Some(true), Some(false)),
            "{e}"
        );
    }

    // `mode` and `raw` reach IRC; `raw` refuses what belongs to the bouncer.
    send(
        &mut asker,
        json!({ "type": "mode", "id": 2, "network": "test", "target": "#c", "modes": ["+v", "bob"] }),
    )
    .await;
    bob.expect("+v from alice", |l| l.is("MODE") && l.param_str(1) == "+v")
        .await;
    send(
        &mut asker,
        json!({ "type": "raw", "id": 3, "network": "test", "line": "PRIVMSG bob :raw hi" }),
    )
    .await;
    bob.expect("raw PRIVMSG", |l| {
        l.is("PRIVMSG") && l.last_str() == "raw hi"
    })
    .await;
    send(
        &mut asker,
        json!({ "type": "raw", "id": 4, "network": "test", "line": "QUIT :bye" }),
    )
    .await;
    let e = until(&mut asker, "error 4", |e| e["re"] == 4).await;
    assert_eq!(e["code"], "bad_request", "{e}");

    // A gap marker while the socket is open: live, kind GAP, in the channel.
    let now = chrono::Utc::now();
    let marked = ferry
        .services()
        .users
        .get(alice)
        .unwrap()
        .gap_marker(
            "[gap] test gap".into(),
            now - chrono::Duration::seconds(1),
            now,
        )
        .await
        .unwrap();
    assert_eq!(marked, ["test"]);
    for ws in [&mut asker, &mut other] {
        let gap = until(ws, "the gap", |e| {
            e["type"] == "message" && e["kind"] == "GAP"
        })
        .await;
        assert_eq!(
            (gap["buffer"].as_str(), gap["text"].as_str()),
            (Some("#c"), Some("[gap] test gap"))
        );
        assert!(gap["id"].as_i64().is_some(), "{gap}");
    }
}

/// Issue 18, finding 5 and the MOTD at connect: `hello` says a network whose server
/// holds the connection unanswered is `registering`; when it is let through, every
/// stage comes as a `network` event in order — the reset (`disconnected`, with the
/// retry), `connecting` and `registering` (with the last error), `connected` with
/// the registration's MOTD — and a new socket's `hello` has the MOTD too.
#[tokio::test]
async fn network_events_follow_each_stage_and_carry_the_motd() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let relay = TcpRelay::start(ircd.addr().parse().unwrap()).await;
    relay.cut_blackhole();
    let ferry = Ferry::start_on(TestDb::new(Backend::Sqlite).await, |cfg| {
        cfg.user.register_timeout = Duration::from_secs(120);
        cfg.user.backoff_min = Duration::from_millis(200);
        cfg.user.backoff_max = Duration::from_millis(500);
    })
    .await;
    let id = ferry.add_user("alice", "secret").await;
    let mut s = spec(&ircd, "alice", "#motd");
    s.addr = relay.addr().to_string();
    ferry.add_network(id, s).await;
    relay
        .wait_for("ferry's connection", |s| s.blackholed >= 1)
        .await;
    let token = login(&ferry, "alice", "secret").await;

    let mut ws = connect(&ferry, &token, None).await;
    let hello = until(&mut ws, "hello", |e| e["type"] == "hello").await;
    let net = &hello["networks"][0];
    assert_eq!(
        (&net["state"], &net["attempt"], net.get("motd")),
        (&json!("registering"), &json!(1), None),
        "{net}"
    );

    relay.restore();
    let mut stages = Vec::new();
    let connected = loop {
        let ev = until(&mut ws, "a network event", |e| e["type"] == "network").await;
        stages.push(ev["state"].as_str().unwrap().to_owned());
        match ev["state"].as_str() {
            Some("connected") => break ev,
            Some("disconnected") => {
                assert!(ev["retrying"] == true && ev["retry_at"].is_string(), "{ev}")
            }
            Some("connecting" | "registering") => {
                assert!(ev["last_error"].is_string(), "{ev}");
                assert!(ev.get("motd").is_none(), "{ev}");
            }
            _ => panic!("unexpected {ev}"),
        }
    };
    assert_eq!(
        stages,
        ["disconnected", "connecting", "registering", "connected"]
    );
    let has_motd = |net: &Value| {
        net["motd"].as_array().is_some_and(|m| {
            m.iter()
                .any(|l| l.as_str().unwrap().contains("Ferry test server"))
        })
    };
    assert!(has_motd(&connected), "{connected}");

    // A new socket (a page reload) gets it in `hello`.
    let mut ws = connect(&ferry, &token, None).await;
    let hello = until(&mut ws, "hello", |e| e["type"] == "hello").await;
    let net = &hello["networks"][0];
    assert!(net["state"] == "connected" && has_motd(net), "{net}");
}
