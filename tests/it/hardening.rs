//! Hardening against hostile peers (issue 14): member lists scoped to the viewer
//! (an InspIRCd auditorium channel), HTTP connection limits and timeouts, control
//! bytes in input, caps on channels and buffers, id bounds and error shapes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use ferry::admin::NetworkSpec;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::ws;

fn spec(ircd: &Ircd, nick: &str, channels: &[&str]) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: nick.into(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..NetworkSpec::default()
    }
}

/// The nicks of a `353` line, prefixes dropped, sorted.
fn names_of(line: &crate::fixtures::client::Line) -> Vec<String> {
    let mut v: Vec<String> = line
        .last_str()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches(['@', '%', '+', '~', '&']).to_owned())
        .collect();
    v.sort();
    v
}

/// The NAMES a Ferry client gets in its burst for `chan`.
async fn burst_names(ferry: &Ferry, user: &str, chan: &str) -> Vec<String> {
    let mut c = ferry.client(user, "test", "secret", &[]).await;
    let line = c
        .expect("NAMES", |l| l.is("353") && l.param_str(2) == chan)
        .await;
    names_of(&line)
}

/// The members of `chan` in the user's websocket `hello`, sorted.
async fn hello_members(ferry: &Ferry, user: &str, chan: &str) -> Vec<String> {
    let token = ws::login(ferry, user, "secret").await;
    let mut sock = ws::connect(ferry, &token, None).await;
    let hello = ws::next(&mut sock).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    let buffer = hello["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == chan)
        .unwrap_or_else(|| panic!("{chan} in the hello: {hello}"))
        .clone();
    let mut v: Vec<String> = buffer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m: &Value| m["nick"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn auditorium_members_are_what_the_server_showed_each_user(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut ferry = Ferry::start(backend).await;
    // alice creates #aud (so she is its operator) and makes it an auditorium.
    let alice = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(alice, spec(&ircd, "alice", &["#aud"]))
        .await;
    ferry.wait_connected(alice, "test", 1).await;
    let mut a = ferry.client("alice", "test", "secret", &[]).await;
    a.expect("NAMES", |l| l.is("366")).await;
    a.send("MODE #aud +u").await;
    a.expect("+u set", |l| l.is("MODE") && l.param_str(1) == "+u")
        .await;
    let mut carol = TestClient::connect(&ircd.addr()).await;
    carol.register("carol").await;
    carol.join("#aud").await;
    // The server itself hides carol's fellow members from her: the fixture's
    // auditorium works (a non-operator sees only itself).
    let mut eve = TestClient::connect(&ircd.addr()).await;
    eve.register("eve").await;
    eve.send("JOIN #aud").await;
    let shown = eve.expect("eve's NAMES", |l| l.is("353")).await;
    assert_eq!(names_of(&shown), ["eve"], "{}", shown.raw_str());

    let mallory = ferry.add_user("mallory", "secret").await;
    ferry
        .add_network(mallory, spec(&ircd, "mallory", &["#aud"]))
        .await;
    ferry.wait_connected(mallory, "test", 1).await;
    // alice's connection has seen mallory join once it has seen a later line.
    a.expect("mallory joins", |l| l.is("JOIN") && l.nick() == "mallory")
        .await;
    drop(a);

    assert_eq!(
        burst_names(&ferry, "alice", "#aud").await,
        ["alice", "carol", "eve", "mallory"]
    );
    assert_eq!(hello_members(&ferry, "alice", "#aud").await.len(), 4);
    assert_eq!(burst_names(&ferry, "mallory", "#aud").await, ["mallory"]);
    assert_eq!(hello_members(&ferry, "mallory", "#aud").await, ["mallory"]);

    // After a restart both rejoin an auditorium they no longer operate (carol and
    // eve kept it open): each sees only itself, whoever joined first.
    ferry.restart().await;
    ferry.wait_connected(alice, "test", 1).await;
    ferry.wait_connected(mallory, "test", 1).await;
    for user in ["alice", "mallory"] {
        assert_eq!(burst_names(&ferry, user, "#aud").await, [user]);
        assert_eq!(hello_members(&ferry, user, "#aud").await, [user]);
    }
}

on_both_backends!(
    auditorium_members_are_what_the_server_showed_each_user,
    control_bytes_are_refused_and_store_errors_stay_inside,
    forced_joins_stop_at_the_channel_and_buffer_caps,
    read_markers_and_errors_are_checked,
);

// ---- HTTP limits ----

/// Opens a TCP connection to `addr` from `local` (any port).
async fn connect_from(addr: SocketAddr, local: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the peer closes (or resets); what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_closed_while_others_are_served() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let db = crate::fixtures::ferry::TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |c| {
        c.http_limits.header_timeout = HEADER_TIMEOUT;
    })
    .await;
    let addr: SocketAddr = ferry.running().bound.http;
    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..150 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        attackers.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Silent.
                read_to_close(&mut s).await;
            } else {
                // A header byte every second, never finishing.
                let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                let (mut rd, mut wr) = s.into_split();
                let drip = async move {
                    for b in head {
                        if wr.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                };
                let mut buf = [0u8; 512];
                let closed = async move {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                };
                tokio::select! {
                    _ = closed => {}
                    _ = drip => panic!("a slow header was read to its end"),
                }
            }
            Instant::now()
        }));
    }
    // A normal client is served during the attack.
    let r = reqwest::get(format!("{}/healthz", ferry.http_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every attacker is disconnected within the header timeout (plus scheduling).
    let deadline = HEADER_TIMEOUT + Duration::from_secs(4);
    for a in attackers {
        let closed_at = tokio::time::timeout(deadline * 2, a)
            .await
            .expect("a slowloris connection was still open")
            .unwrap();
        assert!(
            closed_at.duration_since(started) <= deadline,
            "closed after {:?}",
            closed_at.duration_since(started)
        );
    }
    let r = reqwest::get(format!("{}/healthz", ferry.http_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn connection_caps_refuse_extras_per_address_and_in_all() {
    let db = crate::fixtures::ferry::TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |c| {
        c.http_limits.header_timeout = Duration::from_secs(30);
        c.http_limits.max_connections_per_ip = 3;
        c.http_limits.max_connections = 5;
    })
    .await;
    let addr: SocketAddr = ferry.running().bound.http;
    let refused = |what: &'static str| async move {
        let mut s = connect_from(addr, what).await;
        let got = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
            .await
            .expect("an extra connection is closed at once");
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "{text}"
        );
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(addr, "127.0.0.1").await);
    }
    // Make sure the three are accepted before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    refused("127.0.0.1").await;
    for _ in 0..2 {
        held.push(connect_from(addr, "127.0.0.2").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    refused("127.0.0.3").await;
    // A freed slot takes a request again.
    drop(held.remove(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = connect_from(addr, "127.0.0.1").await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

// ---- Input edges ----

async fn control_bytes_are_refused_and_store_errors_stay_inside(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry.add_network(alice, spec(&ircd, "alice", &[])).await;
    let http = reqwest::Client::new();
    let base = ferry.http_url();
    let token = ws::login(&ferry, "alice", "secret").await;
    let error_code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    // Search.
    let r = http
        .get(format!("{base}/api/search?q=hello%00world"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.json().await.unwrap()), "bad_request");
    let r = http
        .get(format!("{base}/api/history?network=test&buffer=%23a%0Db"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Login names.
    let r = http
        .post(format!("{base}/api/login"))
        .json(&json!({ "username": "al\u{0}ice", "password": "secret" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.json().await.unwrap()), "bad_request");
    // Admin API: user and network names, network fields.
    let admin = ferry.services().node.admin_token.token.clone();
    let r = http
        .post(format!("{base}/api/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "bad\u{0}name", "password": "secret" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .delete(format!("{base}/api/admin/users/al%00ice"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{base}/api/admin/users/al%00ice/networks"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for (field, value) in [
        ("nick", "ev\u{0}il"),
        ("realname", "a\r\nQUIT"),
        ("addr", "host\u{0}:6667"),
    ] {
        let mut body = json!({ "name": "net2", "addr": ircd.addr(), "nick": "alice" });
        body[field] = json!(value);
        let r = http
            .post(format!("{base}/api/admin/users/alice/networks"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{field}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("control"),
            "{v}"
        );
    }
    assert_eq!(
        ferry.store().networks(alice).await.unwrap().len(),
        1,
        "nothing was created"
    );

    // IRC: a NUL in the login name is a wrong login, after the failure delay, with no
    // word from the database.
    let delay = ferry.config.downstream.login_failure_delay;
    for pass in [&b"PASS al\0ice/test:secret"[..], b"PASS al\x01ice:secret"] {
        let mut c = TestClient::connect(&ferry.irc_addr()).await;
        let t = Instant::now();
        c.send(pass).await;
        c.send("NICK alice").await;
        c.send("USER alice 0 * :alice").await;
        let lines = c.expect_closed().await;
        assert!(t.elapsed() >= delay, "answered before the failure delay");
        let all: String = lines.iter().map(|l| l.raw_str() + "\n").collect();
        assert!(
            all.contains("464") || all.contains("invalid credentials"),
            "{all}"
        );
        for leak in [
            "temporary",
            "database",
            "sqlx",
            "error returned",
            "0x00",
            "invalid byte",
        ] {
            assert!(!all.to_lowercase().contains(leak), "{all}");
        }
    }
    // The right login still works.
    ferry.client("alice", "test", "secret", &[]).await;
}

// ---- Caps on channels and buffers ----

/// A scripted IRC server for one client: registers it, then, once `go` is
/// notified, forces `joins` JOINs on it and sends private messages from `queries`
/// different nicks, then `marker` in the first channel. Records every line the
/// client sends.
async fn hostile_server(
    joins: usize,
    queries: usize,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    Arc<tokio::sync::Notify>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    let go = Arc::new(tokio::sync::Notify::new());
    let go2 = go.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let mut nick = String::new();
        let mut user = false;
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line.clone());
            let mut words = line.split(' ');
            let out = match words.next().unwrap_or("") {
                "CAP" if line.starts_with("CAP LS") => "CAP * LS :\r\n".to_owned(),
                "NICK" => {
                    nick = words
                        .next()
                        .unwrap_or("")
                        .trim_start_matches(':')
                        .to_owned();
                    String::new()
                }
                "USER" => {
                    user = true;
                    String::new()
                }
                "PING" => format!("PONG irc.hostile {}\r\n", words.next().unwrap_or("")),
                _ => String::new(),
            };
            wr.write_all(out.as_bytes()).await.unwrap();
            if user && !nick.is_empty() {
                user = false;
                let welcome = format!(
                    ":irc.hostile 001 {nick} :Welcome\r\n:irc.hostile 005 {nick} CHANTYPES=# PREFIX=(ov)@+ CASEMAPPING=ascii :are supported\r\n:irc.hostile 422 {nick} :No MOTD\r\n"
                );
                wr.write_all(welcome.as_bytes()).await.unwrap();
                go2.notified().await;
                let mut burst = String::new();
                for i in 0..joins {
                    burst.push_str(&format!(":{nick}!u@h JOIN #c{i}\r\n"));
                }
                for i in 0..queries {
                    burst.push_str(&format!(":q{i}!u@h PRIVMSG {nick} :hello {i}\r\n"));
                }
                burst.push_str(":bob!u@h PRIVMSG #c0 :marker\r\n");
                wr.write_all(burst.as_bytes()).await.unwrap();
            }
        }
    });
    (addr, got, go)
}

async fn forced_joins_stop_at_the_channel_and_buffer_caps(backend: Backend) {
    const CHANNELS: usize = 5;
    const BUFFERS: usize = 12;
    let (addr, got, go) = hostile_server(200, 200).await;
    let db = crate::fixtures::ferry::TestDb::new(backend).await;
    let ferry = Ferry::start_on(db, |c| {
        c.user.max_channels_per_network = CHANNELS;
        c.user.max_buffers_per_user = BUFFERS;
    })
    .await;
    let alice = ferry.add_user("alice", "secret").await;
    let net = NetworkSpec {
        name: "test".into(),
        addr: addr.to_string(),
        nick: "alice".into(),
        ..NetworkSpec::default()
    };
    ferry.add_network(alice, net).await;
    ferry.wait_connected(alice, "test", 0).await;
    // A client is attached (through the websocket) before the flood.
    let token = ws::login(&ferry, "alice", "secret").await;
    let mut sock = ws::connect(&ferry, &token, None).await;
    assert_eq!(ws::next(&mut sock).await["type"], "hello");
    go.notify_one();
    let notice = ws::until(&mut sock, "the channel cap notice", |ev| {
        ev["type"] == "notice"
            && ev["text"]
                .as_str()
                .unwrap_or("")
                .contains("max_channels_per_network")
    })
    .await;
    assert!(notice["text"].as_str().unwrap().contains("#c5"), "{notice}");
    ws::until(&mut sock, "the buffer cap notice", |ev| {
        ev["type"] == "notice"
            && ev["text"]
                .as_str()
                .unwrap_or("")
                .contains("max_buffers_per_user")
    })
    .await;
    ws::until(&mut sock, "the marker", |ev| {
        ev["type"] == "message" && ev["text"] == "marker"
    })
    .await;
    ferry.services().writer.flush().await.unwrap();
    let network = ferry.store().networks(alice).await.unwrap()[0].id;
    let buffers = ferry.store().buffers(network).await.unwrap();
    assert_eq!(buffers.len(), BUFFERS, "{buffers:?}");
    assert_eq!(buffers.iter().filter(|b| b.joined).count(), CHANNELS);
    // Ferry left every channel over the cap.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let parts = got
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("PART #c"))
            .count();
        if parts == 200 - CHANNELS {
            break;
        }
        assert!(Instant::now() < deadline, "only {parts} PARTs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A reconnecting client's hello is bounded too.
    let mut again = ws::connect(&ferry, &token, None).await;
    let hello = ws::next(&mut again).await;
    assert!(
        hello["buffers"].as_array().unwrap().len() <= BUFFERS,
        "{hello}"
    );
}

// ---- Read markers and error shapes ----

async fn read_markers_and_errors_are_checked(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(alice, spec(&ircd, "alice", &["#r"]))
        .await;
    ferry.wait_connected(alice, "test", 1).await;
    let http = reqwest::Client::new();
    let base = ferry.http_url();
    let token = ws::login(&ferry, "alice", "secret").await;
    ferry.services().writer.flush().await.unwrap();
    let last = ferry.store().last_seq(alice).await.unwrap();
    assert!(last > 0, "our JOIN is stored");
    let read = |id: i64| {
        http.post(format!("{base}/api/read"))
            .bearer_auth(&token)
            .json(&json!({ "network": "test", "buffer": "#r", "id": id }))
            .send()
    };
    assert_eq!(read(last).await.unwrap().status(), 200);
    for bad in [last + 1, i64::MAX, -1] {
        let r = read(bad).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
    }
    // Websocket read with a negative id.
    let mut sock = ws::connect(&ferry, &token, None).await;
    assert_eq!(ws::next(&mut sock).await["type"], "hello");
    ws::send(
        &mut sock,
        json!({ "type": "read", "id": 7, "network": "test", "buffer": "#r", "last_id": -5 }),
    )
    .await;
    let err = ws::until(&mut sock, "an error", |ev| ev["type"] == "error").await;
    assert_eq!(err["code"], "bad_request", "{err}");
    let marker = ferry
        .store()
        .buffers(ferry.store().networks(alice).await.unwrap()[0].id)
        .await
        .unwrap();
    assert!(marker
        .iter()
        .all(|b| b.read_marker >= 0 && b.read_marker <= last));

    // Errors in one JSON shape: unauthenticated admin requests (before their body is
    // looked at), and bodies that miss fields, on the admin and the user API.
    let shape = |v: &Value, code: &str| {
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    };
    let r = http
        .post(format!("{base}/api/admin/users"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.expect("a JSON error");
    shape(&v, "unauthorized");
    assert!(!v.to_string().contains("missing field"), "{v}");
    let r = http
        .post(format!("{base}/api/admin/users"))
        .bearer_auth(&ferry.services().node.admin_token.token)
        .json(&json!({ "name": "bob" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    shape(&r.json().await.expect("a JSON error"), "bad_request");
    let r = http
        .post(format!("{base}/api/admin/users"))
        .bearer_auth(&ferry.services().node.admin_token.token)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    shape(&r.json().await.expect("a JSON error"), "bad_request");
    let r = http
        .post(format!("{base}/api/read"))
        .bearer_auth(&token)
        .json(&json!({ "network": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    shape(&r.json().await.expect("a JSON error"), "bad_request");
}
