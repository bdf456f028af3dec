//! Auto-away (`user/actor/away.rs`) against a real InspIRCd on SQLite and PostgreSQL,
//! seen by a watcher on the IRC server (`away-notify` in a shared channel, and
//! WHOIS): the user goes away when no client is attached and comes back when one
//! attaches; a network that connects while the user is away goes away right after
//! registration; the user's own AWAY from a client is left alone; the per-user switch
//! and text, stored, through the user API and BouncerServ.

use std::time::Duration;

use ferry::admin::NetworkSpec;
use serde_json::{json, Value};

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    auto_away_follows_the_clients,
    own_away_is_left_alone,
    away_settings_through_the_api_and_bouncerserv,
);

const DEFAULT_TEXT: &str = "Auto away (Ferry: no client attached)";

/// A node whose users go away 200 ms after their last client left.
async fn start(backend: Backend) -> Ferry {
    let db = TestDb::new(backend).await;
    Ferry::start_on(db, |c| c.user.away_delay = Duration::from_millis(200)).await
}

fn net(ircd: &Ircd, name: &str, nick: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        addr: ircd.addr(),
        nick: nick.into(),
        channels: vec!["#w".into()],
        ..NetworkSpec::default()
    }
}

/// A client of the IRC server with `away-notify`, in `#w`.
async fn watcher(ircd: &Ircd) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register_with_caps("watcher", &["away-notify"]).await;
    w.join("#w").await;
    w
}

/// The next `AWAY` the watcher hears from `nick`: `Some(text)` (away) or `None` (back).
async fn next_away(w: &mut TestClient, nick: &str) -> Option<String> {
    let l = w
        .expect(&format!("AWAY from {nick}"), |l| {
            l.is("AWAY") && l.nick() == nick
        })
        .await;
    (!l.params.is_empty()).then(|| l.last_str())
}

/// Reads until `nick` is away with `text` (`None`: back), skipping other AWAYs.
async fn away_becomes(w: &mut TestClient, nick: &str, text: Option<&str>) {
    w.expect(&format!("AWAY {text:?} from {nick}"), |l| {
        l.is("AWAY")
            && l.nick() == nick
            && (!l.params.is_empty()).then(|| l.last_str()).as_deref() == text
    })
    .await;
}

/// What WHOIS says of `nick`'s away: the 301 text, if any.
async fn whois_away(w: &mut TestClient, nick: &str) -> Option<String> {
    w.send(format!("WHOIS {nick}")).await;
    let mut away = None;
    loop {
        let l: Line = w
            .expect("WHOIS reply", |l| {
                (l.is("301") || l.is("318")) && l.param_str(1).eq_ignore_ascii_case(nick)
            })
            .await;
        if l.is("318") {
            return away;
        }
        away = Some(l.last_str());
    }
}

/// The user API with a bearer token.
async fn api(
    ferry: &Ferry,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", ferry.http_url()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn auto_away_follows_the_clients(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = start(backend).await;
    let mut w = watcher(&ircd).await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry.add_network(alice, net(&ircd, "home", "alice")).await;
    ferry.wait_connected(alice, "home", 1).await;
    w.expect("alice joins", |l| l.is("JOIN") && l.nick() == "alice")
        .await;

    // Nobody attached since the start: away with the operator's text.
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );
    assert_eq!(
        whois_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );

    // A client attaches: back at once. Its own view has none of Ferry's 305/306.
    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    assert_eq!(next_away(&mut w, "alice").await, None);
    assert_eq!(whois_away(&mut w, "alice").await, None);

    // The last client leaves: away again after the delay.
    c.send("QUIT :bye").await;
    c.expect_closed().await;
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );

    // A network that connects while the user is away goes away after registering.
    let token = ferry.api_token("alice", "secret").await;
    let (s, _) = api(
        &ferry,
        &token,
        reqwest::Method::PATCH,
        "/api/networks/home",
        Some(json!({"enabled": false})),
    )
    .await;
    assert!(s.is_success(), "{s}");
    w.expect("alice quits", |l| l.is("QUIT") && l.nick() == "alice")
        .await;
    let (s, _) = api(
        &ferry,
        &token,
        reqwest::Method::PATCH,
        "/api/networks/home",
        Some(json!({"enabled": true})),
    )
    .await;
    assert!(s.is_success(), "{s}");
    w.expect("alice is back in #w", |l| {
        l.is("JOIN") && l.nick() == "alice"
    })
    .await;
    assert_eq!(
        whois_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );

    // Two clients: the first to leave changes nothing; the user is back as one comes.
    let mut c1 = ferry.client("alice", "home", "secret", &[]).await;
    assert_eq!(next_away(&mut w, "alice").await, None);
    // A reply from the server after its answer to Ferry's AWAY: everything before it
    // has been relayed to the client.
    c1.send("WHOIS alice").await;
    c1.expect("end of WHOIS", |l| l.is("318")).await;
    for l in c1.transcript().lines() {
        assert!(
            !l.contains(" 305 ") && !l.contains(" 306 "),
            "Ferry's own AWAY answer reached a client: {l}"
        );
    }
    let mut c2 = ferry.client("alice", "home", "secret", &[]).await;
    c1.send("QUIT").await;
    c1.expect_closed().await;
    c2.roundtrip().await;
    assert_eq!(whois_away(&mut w, "alice").await, None);
    c2.send("QUIT").await;
    c2.expect_closed().await;
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );
}

async fn own_away_is_left_alone(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = start(backend).await;
    let mut w = watcher(&ircd).await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry.add_network(alice, net(&ircd, "home", "alice")).await;
    ferry.add_network(alice, net(&ircd, "work", "alicew")).await;
    ferry.wait_connected(alice, "home", 1).await;
    ferry.wait_connected(alice, "work", 1).await;
    let mut home = ferry.client("alice", "home", "secret", &[]).await;
    let mut work = ferry.client("alice", "work", "secret", &[]).await;
    home.roundtrip().await;
    work.roundtrip().await;

    // The user sets their own away on one network (after Ferry's own AWAYs of the
    // start, if the delay ran out before the clients attached).
    home.send("AWAY :lunch").await;
    away_becomes(&mut w, "alice", Some("lunch")).await;
    let mark = w.transcript().lines().count();

    // Both clients leave: only the other network goes away; "lunch" stays.
    home.send("QUIT").await;
    home.expect_closed().await;
    work.send("QUIT").await;
    work.expect_closed().await;
    away_becomes(&mut w, "alicew", Some(DEFAULT_TEXT)).await;
    assert_eq!(whois_away(&mut w, "alice").await.as_deref(), Some("lunch"));

    // A client comes back: the other network is back, the user's own away is not touched.
    let mut home = ferry.client("alice", "home", "secret", &[]).await;
    assert_eq!(next_away(&mut w, "alicew").await, None);
    home.roundtrip().await;
    assert_eq!(whois_away(&mut w, "alice").await.as_deref(), Some("lunch"));
    let heard: Vec<String> = w
        .transcript()
        .lines()
        .skip(mark)
        .filter(|l| l.contains(":alice!") && l.contains(" AWAY"))
        .map(str::to_owned)
        .collect();
    assert!(
        heard.is_empty(),
        "Ferry touched the user's own away: {heard:?}"
    );

    // The user comes back themselves.
    home.send("AWAY").await;
    assert_eq!(next_away(&mut w, "alice").await, None);
}

async fn away_settings_through_the_api_and_bouncerserv(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = start(backend).await;
    let mut w = watcher(&ircd).await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry.add_network(alice, net(&ircd, "home", "alice")).await;
    ferry.wait_connected(alice, "home", 1).await;
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some(DEFAULT_TEXT)
    );
    let token = ferry.api_token("alice", "secret").await;

    // Defaults, as stored.
    let (s, body) = api(&ferry, &token, reqwest::Method::GET, "/api/me/away", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"auto_away": true, "away_message": null, "default_away_message": DEFAULT_TEXT})
    );

    // A new text while away: the user is away with it at once.
    let (s, body) = api(
        &ferry,
        &token,
        reqwest::Method::PATCH,
        "/api/me/away",
        Some(json!({"away_message": "on a boat"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["away_message"], "on a boat");
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some("on a boat")
    );

    // Off while away: back at once.
    let (s, body) = api(
        &ferry,
        &token,
        reqwest::Method::PATCH,
        "/api/me/away",
        Some(json!({"auto_away": false})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(next_away(&mut w, "alice").await, None);
    let stored = ferry.store().away_settings(alice).await.unwrap();
    assert!(!stored.auto_away);
    assert_eq!(stored.away_message.as_deref(), Some("on a boat"));

    // Bad input is refused with the field named.
    let (s, body) = api(
        &ferry,
        &token,
        reqwest::Method::PATCH,
        "/api/me/away",
        Some(json!({"away_message": "a\r\nQUIT"})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("away_message"),
        "{body}"
    );

    // BouncerServ: on again with another text; it applies when the client leaves.
    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    c.send("PRIVMSG BouncerServ :user update -auto-away on -away-message \"gone fishing\"")
        .await;
    let answer = c
        .expect("BouncerServ's answer", |l| {
            l.is("NOTICE") && l.nick() == "BouncerServ"
        })
        .await;
    assert!(
        answer.last_str().contains("auto-away on"),
        "{}",
        answer.raw_str()
    );
    c.send("PRIVMSG BouncerServ :user update -auto-away maybe")
        .await;
    let answer = c
        .expect("BouncerServ's refusal", |l| {
            l.is("NOTICE") && l.nick() == "BouncerServ"
        })
        .await;
    assert!(
        answer.last_str().contains("use on or off"),
        "{}",
        answer.raw_str()
    );
    c.send("QUIT").await;
    c.expect_closed().await;
    assert_eq!(
        next_away(&mut w, "alice").await.as_deref(),
        Some("gone fishing")
    );
    let stored = ferry.store().away_settings(alice).await.unwrap();
    assert!(stored.auto_away);
    assert_eq!(stored.away_message.as_deref(), Some("gone fishing"));
}
