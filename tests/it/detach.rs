//! Detached channels (`user/actor/detach.rs`, soju's `/part detach`) from raw IRC
//! clients attached to Ferry, against a real InspIRCd on SQLite and PostgreSQL: a
//! detached channel stays joined upstream and logged, its lines are not relayed nor
//! replayed nor in the attach burst; a highlight attaches it again (with what was said
//! meanwhile), a client's JOIN too; BouncerServ and the user API set it; the flag and
//! `reattach_on` are stored and survive a restart.

use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::store::{HistoryQuery, ReattachOn, UserId};

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    a_detached_channel_is_logged_not_relayed,
    a_websocket_resume_leaves_out_detached_channels,
    attaching_replays_everything_said_meanwhile_once,
);

/// Reads until `pred`, then checks that nothing read on the way (nor before)
/// contains `never`.
fn never_saw(c: &TestClient, never: &str) {
    let t = c.transcript();
    assert!(
        !t.lines()
            .any(|l| l.starts_with("  << ") && l.contains(never)),
        "{never:?} reached the client:\n{t}"
    );
}

/// Sends a line in `#w` from `bob` and waits until `c` has it: whatever bob said
/// before reached Ferry first.
async fn sync(bob: &mut TestClient, c: &mut TestClient, text: &str) {
    bob.send(format!("PRIVMSG #w :{text}")).await;
    c.expect(text, |l| l.is("PRIVMSG") && l.last_str() == text)
        .await;
}

/// BouncerServ's answer to `command`, all its lines (read up to a PONG: Ferry answers
/// a line before it reads the next), and the other lines read meanwhile.
async fn bouncerserv_and(c: &mut TestClient, command: &str) -> (String, Vec<Line>) {
    c.send(format!("PRIVMSG BouncerServ :{command}")).await;
    c.send("PING :bouncerserv-barrier").await;
    let (mut out, mut others) = (Vec::new(), Vec::new());
    loop {
        let l = c.expect("BouncerServ's answer", |_| true).await;
        if l.is("PONG") && l.last_str() == "bouncerserv-barrier" {
            return (out.join("\n"), others);
        }
        if l.is("NOTICE") && l.nick() == "BouncerServ" {
            out.push(l.last_str());
        } else {
            others.push(l);
        }
    }
}

async fn bouncerserv(c: &mut TestClient, command: &str) -> String {
    bouncerserv_and(c, command).await.0
}

fn own_joins(bob: &TestClient) -> usize {
    bob.transcript()
        .lines()
        .filter(|l| l.contains(":alice!") && l.contains(" JOIN "))
        .count()
}

/// An InspIRCd, a Ferry with user alice whose network `home` is connected in
/// `channels`, and bob on that server in each of them.
async fn alice_at_home_with_bob(
    backend: Backend,
    channels: &[&str],
) -> (Ircd, Ferry, UserId, TestClient) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    for chan in channels {
        bob.join(chan).await;
    }
    ferry
        .add_network(
            alice,
            NetworkSpec {
                name: "home".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(alice, "home", channels.len()).await;
    (ircd, ferry, alice, bob)
}

async fn a_detached_channel_is_logged_not_relayed(backend: Backend) {
    let (_ircd, mut ferry, alice, mut bob) = alice_at_home_with_bob(backend, &["#w", "#d"]).await;
    let net = ferry
        .store()
        .network_by_name(alice, "home")
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    c.expect("#d in the burst", |l| {
        l.is("JOIN") && l.param_str(0) == "#d"
    })
    .await;

    // PART #d detach: the client is told it left; upstream, alice stays.
    c.send("PART #d detach").await;
    let part = c
        .expect("PART #d", |l| l.is("PART") && l.param_str(0) == "#d")
        .await;
    assert!(part.raw_str().starts_with(":alice!"), "{}", part.raw_str());
    bob.send("NAMES #d").await;
    let names = bob.expect("NAMES #d", |l| l.is("353")).await;
    assert!(names.last_str().contains("alice"), "{}", names.raw_str());
    let buffers = ferry.store().buffers(net).await.unwrap();
    let d = buffers.iter().find(|b| b.key == b"#d").unwrap();
    assert!(d.detached && d.joined);

    // Its lines are stored, not relayed.
    bob.send("PRIVMSG #d :quiet line one").await;
    sync(&mut bob, &mut c, "sync one").await;
    never_saw(&c, "quiet line one");
    let handle = ferry.services().users.get(alice).unwrap();
    assert!(handle.flush().await.unwrap());
    let stored = ferry
        .store()
        .history(&HistoryQuery {
            user: alice,
            network: Some(net),
            buffer_key: Some(b"#d".to_vec()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        stored.iter().any(|m| m.text == "quiet line one"),
        "not stored: {stored:?}"
    );

    // A client attaching now: no JOIN #d in its burst, no replay of its lines.
    let mut c2 = ferry.client("alice", "home", "secret", &[]).await;
    c2.expect("#w in the burst", |l| {
        l.is("JOIN") && l.param_str(0) == "#w"
    })
    .await;
    c2.roundtrip().await;
    let t = c2.transcript();
    assert!(!t.contains("JOIN #d") && !t.contains("JOIN :#d"), "{t}");
    never_saw(&c2, "quiet line one");

    // A highlight attaches it: JOIN, names, what was said meanwhile, then the line.
    bob.send("PRIVMSG #d :alice: are you there?").await;
    c.expect("JOIN #d", |l| l.is("JOIN") && l.param_str(0) == "#d")
        .await;
    c.expect("names of #d", |l| l.is("366") && l.param_str(1) == "#d")
        .await;
    c.expect("the line said while detached", |l| {
        l.is("PRIVMSG") && l.last_str() == "quiet line one"
    })
    .await;
    c.expect("the highlight", |l| {
        l.is("PRIVMSG") && l.last_str() == "alice: are you there?"
    })
    .await;
    c2.expect("JOIN #d on the other client", |l| {
        l.is("JOIN") && l.param_str(0) == "#d"
    })
    .await;
    assert!(!ferry
        .store()
        .buffers(net)
        .await
        .unwrap()
        .iter()
        .any(|b| b.detached));

    // BouncerServ detaches it, never to attach by itself; a highlight is then held.
    let (said, others) =
        bouncerserv_and(&mut c, "channel update #d -detached true -reattach-on none").await;
    assert!(said.contains("#d detached"), "{said}");
    let is_part = |l: &Line| l.is("PART") && l.param_str(0) == "#d";
    if !others.iter().any(is_part) {
        c.expect("PART #d", is_part).await;
    }
    let said = bouncerserv(&mut c, "channel status").await;
    assert!(said.contains("#d (joined, detached)"), "{said}");
    let said = bouncerserv(&mut c, "channel update #d -reattach-on sometimes").await;
    assert!(said.contains("use message, highlight or none"), "{said}");
    bob.send("PRIVMSG #d :alice: held anyway").await;
    sync(&mut bob, &mut c, "sync two").await;
    never_saw(&c, "held anyway");
    let d = ferry.store().buffers(net).await.unwrap();
    let d = d.iter().find(|b| b.key == b"#d").unwrap();
    assert!(d.detached);
    assert_eq!(d.reattach_on, ReattachOn::None);

    // A client's JOIN attaches it (nothing sent upstream: bob sees no JOIN) and
    // replays what it missed.
    let joins = own_joins(&bob);
    c.send("JOIN #d").await;
    c.expect("JOIN #d", |l| l.is("JOIN") && l.param_str(0) == "#d")
        .await;
    c.expect("the held line", |l| {
        l.is("PRIVMSG") && l.last_str() == "alice: held anyway"
    })
    .await;
    bob.roundtrip().await;
    assert_eq!(
        own_joins(&bob),
        joins,
        "a JOIN reached the server:\n{}",
        bob.transcript()
    );

    // The user API detaches it; the flag survives a restart.
    let token = ferry.api_token("alice", "secret").await;
    let http = reqwest::Client::new();
    let patch = |body: serde_json::Value| {
        http.patch(format!(
            "{}/api/networks/home/channels/%23d",
            ferry.http_url()
        ))
        .bearer_auth(&token)
        .json(&body)
        .send()
    };
    let r = patch(serde_json::json!({"detached": true})).await.unwrap();
    assert_eq!(r.status(), 204);
    c.expect("PART #d", |l| l.is("PART") && l.param_str(0) == "#d")
        .await;
    let r = patch(serde_json::json!({"detached": "yes"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .patch(format!(
            "{}/api/networks/home/channels/%23nope",
            ferry.http_url()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"detached": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    drop((c, c2));
    ferry.restart().await;
    ferry.wait_connected(alice, "home", 2).await;
    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    c.expect("#w in the burst", |l| {
        l.is("JOIN") && l.param_str(0) == "#w"
    })
    .await;
    c.roundtrip().await;
    let t = c.transcript();
    assert!(!t.contains("JOIN #d") && !t.contains("JOIN :#d"), "{t}");
    bob.send("PRIVMSG #d :after the restart").await;
    sync(&mut bob, &mut c, "sync three").await;
    never_saw(&c, "after the restart");
    // Attached from the API: the client gets the channel at once.
    let token = ferry.api_token("alice", "secret").await;
    let r = reqwest::Client::new()
        .patch(format!(
            "{}/api/networks/home/channels/%23d",
            ferry.http_url()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"detached": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    c.expect("JOIN #d", |l| l.is("JOIN") && l.param_str(0) == "#d")
        .await;
    tokio::time::timeout(Duration::from_secs(30), async {
        bob.send("PRIVMSG #d :live again").await;
        c.expect("live again", |l| l.last_str() == "live again")
            .await;
    })
    .await
    .unwrap();
}

/// A websocket resuming after lines were said in a detached channel does not get
/// them replayed (as live, they are held); lines of attached channels it does get.
async fn a_websocket_resume_leaves_out_detached_channels(backend: Backend) {
    use crate::ws::{connect, login, next};
    let (_ircd, ferry, alice, mut bob) = alice_at_home_with_bob(backend, &["#w", "#d"]).await;
    let token = login(&ferry, "alice", "secret").await;
    let r = reqwest::Client::new()
        .patch(format!(
            "{}/api/networks/home/channels/%23d",
            ferry.http_url()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"detached": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    c.expect("#w in the burst", |l| {
        l.is("JOIN") && l.param_str(0) == "#w"
    })
    .await;
    let mut ws = connect(&ferry, &token, None).await;
    let hello = next(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    let d = hello["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "#d")
        .expect("#d in the snapshot");
    assert_eq!(d["detached"], true, "{d}");
    let last = hello["last_id"].as_i64().unwrap();
    drop(ws);

    // Said while no socket is connected: one line held, one not.
    // An IRC client of alice's tells when Ferry has both (bob's lines arrive in order).
    bob.send("PRIVMSG #d :held while away").await;
    bob.send("PRIVMSG #w :seen after resume").await;
    c.expect("the #w line", |l| {
        l.is("PRIVMSG") && l.last_str() == "seen after resume"
    })
    .await;
    never_saw(&c, "held while away");
    let handle = ferry.services().users.get(alice).unwrap();
    assert!(handle.flush().await.unwrap());

    let mut ws = connect(&ferry, &token, Some(last)).await;
    assert_eq!(next(&mut ws).await["type"], "hello");
    let mut seen = Vec::new();
    loop {
        let e = next(&mut ws).await;
        if e["type"] == "message" {
            seen.push(e.clone());
            if e["text"] == "seen after resume" {
                break;
            }
        }
    }
    assert!(
        !seen.iter().any(|e| e["text"] == "held while away"),
        "a detached channel's line was replayed: {seen:?}"
    );
}

/// Attached again by a highlight after a long quiet spell, a channel's replay goes
/// through the resume protocol's pages: every line said while it was detached — more
/// than one page of the old single query (500), and none of them relayed, so all
/// newer than anything the client was given — then the highlight, each exactly once.
async fn attaching_replays_everything_said_meanwhile_once(backend: Backend) {
    const QUIET: usize = 1200;
    let (_ircd, ferry, _, mut bob) = alice_at_home_with_bob(backend, &["#d"]).await;
    let mut c = ferry.client("alice", "home", "secret", &[]).await;
    c.expect("#d in the burst", |l| {
        l.is("JOIN") && l.param_str(0) == "#d"
    })
    .await;
    c.send("PART #d detach").await;
    c.expect("PART #d", |l| l.is("PART") && l.param_str(0) == "#d")
        .await;

    for i in 0..QUIET {
        bob.send(format!("PRIVMSG #d :quiet {i}")).await;
    }
    bob.send("PRIVMSG #d :alice: back?").await;
    c.expect("JOIN #d", |l| l.is("JOIN") && l.param_str(0) == "#d")
        .await;
    let mut said = Vec::new();
    loop {
        let l = c
            .expect("#d's lines", |l| l.is("PRIVMSG") && l.param_str(0) == "#d")
            .await;
        said.push(l.last_str());
        if l.last_str() == "alice: back?" {
            break;
        }
    }
    c.roundtrip().await;
    let mut want: Vec<String> = (0..QUIET).map(|i| format!("quiet {i}")).collect();
    want.push("alice: back?".into());
    assert_eq!(said.len(), want.len(), "first: {:?}", said.first());
    assert_eq!(said, want);
    let t = c.transcript();
    assert_eq!(t.matches("alice: back?").count(), 1, "the highlight twice");
}
