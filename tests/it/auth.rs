//! The login guard and sessions (issue 14, findings 1, 5, 6, 7 and parts of 10):
//! floods of wrong IRC logins are throttled, their hashing bounded and logged; the
//! owner of a targeted account still gets in; user names cannot forge log lines;
//! logout and a password change close websockets; sessions end at their absolute
//! lifetime; short passwords are refused.
//!
//! Distinct attackers and owners are distinct loopback addresses (127.0.0.0/8).

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::admin::NetworkSpec;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    irc_login_flood_is_throttled_bounded_and_logged,
    a_locked_out_owner_still_gets_in,
    logout_closes_that_sessions_websockets,
    password_change_closes_sockets_and_other_sessions,
    sessions_end_at_their_absolute_lifetime,
);

const PASSWORD: &str = "correct horse";
const WAIT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Log output of this test's runtime (the tests run on one thread, and so do the
/// node's tasks): a plain fmt subscriber writing into memory, as `ferry serve` writes
/// to stderr.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A node with the default login rules (tests otherwise allow short passwords),
/// `tweak`ed, and alice on a real InspIRCd.
async fn node(
    backend: Backend,
    tweak: impl FnOnce(&mut ferry::config::NodeConfig),
) -> (Ircd, Ferry) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(backend).await;
    let ferry = Ferry::start_on(db, |c| {
        c.auth.min_password_len = 8;
        tweak(c);
    })
    .await;
    let alice = ferry.add_user("alice", PASSWORD).await;
    ferry
        .add_network(
            alice,
            NetworkSpec {
                name: "testnet".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(alice, "testnet", 0).await;
    (ircd, ferry)
}

/// How an IRC login ended.
#[derive(Debug, PartialEq, Eq)]
enum Irc {
    Welcome,
    WrongPassword,
    Throttled,
    Busy,
}

/// Logs in over IRC with `PASS` from `from` and says how it ended.
async fn irc_login(ferry: &Ferry, from: &str, pass: &str) -> Irc {
    let mut c = TestClient::connect_from(&ferry.irc_addr(), ip(from)).await;
    c.send(format!("PASS :{pass}")).await;
    c.send("NICK someone").await;
    c.send("USER someone 0 * :x").await;
    loop {
        let Some(line) = c.recv_timeout(WAIT).await.expect("an answer in time") else {
            panic!("closed without an answer:\n{}", c.transcript());
        };
        let raw = line.raw_str();
        if line.is("001") {
            return Irc::Welcome;
        }
        if line.is("464") {
            return Irc::WrongPassword;
        }
        if raw.contains("too many failed logins") {
            return Irc::Throttled;
        }
        if raw.contains("busy checking passwords") {
            return Irc::Busy;
        }
        assert!(!line.is("ERROR"), "unexpected: {raw}");
    }
}

async fn http_login(ferry: &Ferry, from: &str, user: &str, password: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .local_address(ip(from))
        .build()
        .unwrap()
        .post(format!("{}/api/login", ferry.http_url()))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn token(ferry: &Ferry, from: &str, password: &str) -> String {
    let r = http_login(ferry, from, "alice", password).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn metric(ferry: &Ferry, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", ferry.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Finding 1: 50 concurrent wrong `PASS` logins from one address get at most the free
/// failures checked (the rest refused unchecked); 50 from 50 addresses are checked at
/// most `hash_permits` at a time, and beyond the queue refused as busy; every failure
/// is logged once with address and user; `/metrics` counts them.
async fn irc_login_flood_is_throttled_bounded_and_logged(backend: Backend) {
    let (logs, _log_guard) = Logs::capture();
    let (_ircd, ferry) = node(backend, |c| {
        c.auth.hash_permits = Some(2);
        c.auth.hash_queue = 6;
    })
    .await;
    let guard = &ferry.services().guard;

    // One address.
    let one = futures::future::join_all((0..50).map(|i| {
        let ferry = &ferry;
        async move { irc_login(ferry, "127.0.0.2", &format!("alice:wrong{i}")).await }
    }))
    .await;
    let wrong = one.iter().filter(|r| **r == Irc::WrongPassword).count();
    let throttled = one.iter().filter(|r| **r == Irc::Throttled).count();
    assert!((1..=5).contains(&wrong), "{one:?}");
    assert_eq!(wrong + throttled, 50, "{one:?}");
    assert_eq!(guard.stats.failed.load(Relaxed), wrong as u64);
    assert_eq!(guard.stats.throttled.load(Relaxed), throttled as u64);

    // Fifty addresses: each is in good standing, so each is checked, on the pool.
    let many = futures::future::join_all((0..50).map(|i| {
        let ferry = &ferry;
        async move {
            let from = format!("127.0.1.{}", i + 1);
            irc_login(ferry, &from, &format!("alice:guess{i}")).await
        }
    }))
    .await;
    let busy = many.iter().filter(|r| **r == Irc::Busy).count();
    let wrong2 = many.iter().filter(|r| **r == Irc::WrongPassword).count();
    assert_eq!(busy + wrong2, 50, "{many:?}");
    assert!(
        busy > 0,
        "beyond permits + queue logins are refused: {many:?}"
    );
    let h = guard.hasher.stats();
    assert_eq!(h.permits, 2);
    assert!(h.peak <= 2, "hashing concurrency above its permits: {h:?}");
    assert!(h.peak >= 1);

    // Logged once per failure, in the fixed format, with address and user.
    let text = logs.text();
    let failed = wrong + wrong2;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("login failed: "))
        .collect();
    assert_eq!(lines.len(), failed, "{text}");
    let first = "WARN ferry::login: login failed: door=irc-pass addr=127.0.0.2 user=\"alice\"";
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(first)).count(),
        wrong,
        "{text}"
    );
    assert!(lines.iter().all(|l| l.contains(" WARN ")));

    assert_eq!(
        metric(&ferry, "ferry_login_failures_total").await,
        failed as f64
    );
    assert!(metric(&ferry, "ferry_login_throttled_total").await >= throttled as f64);
    assert_eq!(metric(&ferry, "ferry_login_busy_total").await, busy as f64);
    assert!(metric(&ferry, "ferry_password_hash_peak").await <= 2.0);
    assert_eq!(metric(&ferry, "ferry_password_hash_permits").await, 2.0);

    // The right password from a clean address still works.
    assert_eq!(
        irc_login(&ferry, "127.0.0.9", &format!("alice:{PASSWORD}")).await,
        Irc::Welcome
    );
}

/// Finding 6: an attacker spends alice's account budget (over IRC and HTTP) and keeps
/// failing; alice, from her own address, logs in with the right password on both doors.
async fn a_locked_out_owner_still_gets_in(backend: Backend) {
    // Long delays, so the blocks outlast the test however slow the machine.
    let (_ircd, ferry) = node(backend, |c| c.auth.failure_delay = Duration::from_secs(60)).await;
    // Two attacker addresses, five guesses in all: the account's five free failures.
    for (from, guesses) in [("127.0.0.3", 3), ("127.0.0.4", 2)] {
        for i in 0..guesses {
            let r = http_login(&ferry, from, "alice", &format!("guess{i}")).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    // The account is blocked for addresses that are not in good standing ...
    let r = http_login(&ferry, "127.0.0.3", "alice", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        irc_login(&ferry, "127.0.0.4", "alice:guess9").await,
        Irc::Throttled
    );
    // ... and the attacker keeps failing.
    assert_eq!(
        irc_login(&ferry, "127.0.0.3", "alice:guess10").await,
        Irc::Throttled
    );

    // Alice is not locked out: HTTP, IRC PASS and IRC SASL PLAIN.
    assert_eq!(
        http_login(&ferry, "127.0.0.5", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        irc_login(&ferry, "127.0.0.5", &format!("alice:{PASSWORD}")).await,
        Irc::Welcome
    );
    let mut c = TestClient::connect_from(&ferry.irc_addr(), ip("127.0.0.6")).await;
    c.send("CAP LS 302").await;
    c.send("CAP REQ :sasl").await;
    c.send("NICK alice").await;
    c.send("USER alice 0 * :x").await;
    c.send("AUTHENTICATE PLAIN").await;
    c.expect("AUTHENTICATE +", |l| l.is("AUTHENTICATE")).await;
    use base64::Engine;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{PASSWORD}"));
    c.send(format!("AUTHENTICATE {plain}")).await;
    c.expect("903", |l| l.is("903")).await;
    c.send("CAP END").await;
    c.expect("001", |l| l.is("001")).await;

    // The attacker, still failing, never gets in.
    let r = http_login(&ferry, "127.0.0.4", "alice", "guess11").await;
    assert!(matches!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED
    ));
}

/// Finding 7: a user name with a newline and ANSI escapes is logged escaped, on one
/// line, over HTTP and IRC.
#[tokio::test]
async fn a_forged_log_line_is_escaped() {
    let (logs, _log_guard) = Logs::capture();
    let (_ircd, ferry) = node(Backend::Sqlite, |_| {}).await;
    let forged = "x\n2026-01-01T00:00:00Z  INFO ferry::http: login user=\"root\"\u{1b}[2J";
    // Control characters in a login name are refused before any check (400, nothing
    // logged as a login), so HTTP cannot forge a line either way.
    let r = http_login(&ferry, "127.0.0.7", forged, "nope").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        irc_login(&ferry, "127.0.0.7", "mal\u{1b}[31mlory:nope").await,
        Irc::WrongPassword
    );
    let text = logs.text();
    assert!(!text.contains('\u{1b}'), "raw escape in the log: {text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line: {text}"
    );
    assert!(
        text.contains(r#"login failed: door=irc-pass addr=127.0.0.7 user="mal\u{1b}[31mlory""#),
        "{text}"
    );
}

/// Finding 10: a password shorter than `[auth] min_password_len` is refused with a
/// clear error, on user creation and on a password change.
#[tokio::test]
async fn short_passwords_are_refused() {
    let (_ircd, ferry) = node(Backend::Sqlite, |_| {}).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/admin/users", ferry.http_url()))
        .bearer_auth(&ferry.services().node.admin_token.token)
        .json(&json!({ "name": "bob", "password": "1234567" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("too short") && msg.contains("at least 8"),
        "{body}"
    );
    assert!(ferry.store().user_by_name("bob").await.unwrap().is_none());

    let t = token(&ferry, "127.0.0.1", PASSWORD).await;
    let r = http
        .post(format!("{}/api/password", ferry.http_url()))
        .bearer_auth(&t)
        .json(&json!({ "current": PASSWORD, "new": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 8"),
        "{body}"
    );
    // The old password still works.
    token(&ferry, "127.0.0.1", PASSWORD).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(ferry: &Ferry, token: &str) -> Ws {
    let url = format!(
        "{}/ws?token={token}",
        ferry.http_url().replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        json!({ "type": "resume", "last_id": null })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    until_text(&mut ws, "synced").await;
    ws
}

/// Reads until an event of type `kind`.
async fn until_text(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// Waits for the server's close frame; returns its code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// The socket still answers.
async fn answers(ws: &mut Ws) {
    ws.send(Message::Text(
        json!({ "type": "ping", "id": 5 }).to_string().into(),
    ))
    .await
    .unwrap();
    let pong = until_text(ws, "pong").await;
    assert_eq!(pong["re"], 5);
}

async fn api(
    ferry: &Ferry,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> StatusCode {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", ferry.http_url()))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap().status()
}

/// Finding 5: `POST /api/logout` closes the websockets of that session (1008), and
/// only those.
async fn logout_closes_that_sessions_websockets(backend: Backend) {
    let (_ircd, ferry) = node(backend, |_| {}).await;
    let (t1, t2) = (
        token(&ferry, "127.0.0.1", PASSWORD).await,
        token(&ferry, "127.0.0.1", PASSWORD).await,
    );
    let mut ws1 = ws(&ferry, &t1).await;
    let mut ws2 = ws(&ferry, &t2).await;
    answers(&mut ws1).await;
    assert_eq!(
        api(&ferry, &t1, reqwest::Method::POST, "/api/logout", None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(closed(&mut ws1).await, (1008, "you logged out".to_owned()));
    answers(&mut ws2).await;
    assert_eq!(
        api(&ferry, &t1, reqwest::Method::GET, "/api/me", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api(&ferry, &t2, reqwest::Method::GET, "/api/me", None).await,
        StatusCode::OK
    );
}

/// A password change closes every websocket of the user and ends the other sessions;
/// the session that changed it stays; the old password stops working.
async fn password_change_closes_sockets_and_other_sessions(backend: Backend) {
    let (_ircd, ferry) = node(backend, |_| {}).await;
    let (t1, t2) = (
        token(&ferry, "127.0.0.1", PASSWORD).await,
        token(&ferry, "127.0.0.1", PASSWORD).await,
    );
    let mut ws1 = ws(&ferry, &t1).await;
    let mut ws2 = ws(&ferry, &t2).await;
    let wrong = json!({ "current": "not it", "new": "a new long password" });
    assert_eq!(
        api(
            &ferry,
            &t1,
            reqwest::Method::POST,
            "/api/password",
            Some(wrong)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    answers(&mut ws1).await;
    let change = json!({ "current": PASSWORD, "new": "a new long password" });
    assert_eq!(
        api(
            &ferry,
            &t1,
            reqwest::Method::POST,
            "/api/password",
            Some(change)
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(closed(&mut ws1).await.0, 1008);
    assert_eq!(
        closed(&mut ws2).await,
        (1008, "your password changed".to_owned())
    );
    assert_eq!(
        api(&ferry, &t1, reqwest::Method::GET, "/api/me", None).await,
        StatusCode::OK
    );
    assert_eq!(
        api(&ferry, &t2, reqwest::Method::GET, "/api/me", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http_login(&ferry, "127.0.0.1", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    token(&ferry, "127.0.0.1", "a new long password").await;
    assert_eq!(
        irc_login(&ferry, "127.0.0.8", "alice:a new long password").await,
        Irc::Welcome
    );
}

/// Finding 5: a session in constant use still ends at its absolute lifetime.
async fn sessions_end_at_their_absolute_lifetime(backend: Backend) {
    let lifetime = Duration::from_secs(3);
    let (_ircd, ferry) = node(backend, |c| c.auth.session_lifetime = lifetime).await;
    let start = tokio::time::Instant::now();
    let t = token(&ferry, "127.0.0.1", PASSWORD).await;
    let mut socket = ws(&ferry, &t).await;
    // Used all along (each use slides the idle expiry), it still ends.
    let ended = loop {
        let status = api(&ferry, &t, reqwest::Method::GET, "/api/me", None).await;
        if status == StatusCode::UNAUTHORIZED {
            break start.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(start.elapsed() < WAIT, "the session did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ended >= lifetime - Duration::from_millis(500),
        "ended too early: {ended:?}"
    );
    // Its websocket closes at the absolute lifetime too.
    assert_eq!(
        closed(&mut socket).await,
        (1008, "your session expired".to_owned())
    );
    assert!(start.elapsed() >= lifetime - Duration::from_millis(500));
}
