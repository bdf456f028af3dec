//! Parking (issue 13, in-place upgrade): connections stop at a barrier, yield their
//! parts, and a fresh task resumes from them on the same TCP connection — against a
//! real InspIRCd, with a talker speaking throughout and a watcher in the channel that
//! must see no QUIT, PART or JOIN of ours.

use std::time::Duration;

use bytes::Bytes;
use ferry::admin::NetworkSpec;
use ferry::irc::Message;
use ferry::store::{HistoryQuery, NetworkLimits, TlsVerify, UserId};
use ferry::upstream::{
    self, Driven, NotParked, ParkedUpstream, Seen, UpstreamConfig, UpstreamEvent, UpstreamPark,
};
use ferry::user::UserPark;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};

const WAIT: Duration = Duration::from_secs(60);
const CHAN: &str = "#c";
/// Numbered lines the talker says, one every [`PACE`].
const LINES: usize = 60;
const PACE: Duration = Duration::from_millis(20);

/// The task's events and its link's lines (the link driven by a task of its own).
type Events = Driven;

fn config(addr: &str, nick: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::new(1, addr, nick);
    cfg.register_timeout = Duration::from_secs(30);
    cfg
}

async fn event(rx: &mut Events) -> Seen {
    tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("timed out waiting for an upstream event")
        .expect("upstream task ended")
}

async fn registered(rx: &mut Events) {
    loop {
        match event(rx).await {
            Seen::Event(UpstreamEvent::Registered(_)) => return,
            Seen::Event(UpstreamEvent::Disconnected { reason, .. }) => {
                panic!("disconnected: {reason}")
            }
            _ => {}
        }
    }
}

fn send(rx: &Events, line: &str) {
    let m = Message::parse(Bytes::copy_from_slice(line.as_bytes())).unwrap();
    rx.send(m);
}

async fn park(rx: &Events) -> Result<ParkedUpstream, NotParked> {
    tokio::time::timeout(WAIT, rx.park())
        .await
        .expect("park answered")
}

/// A client in `CHAN` that says `line 0` … `line {LINES-1}` and then `done`.
async fn talker(ircd: &Ircd) -> tokio::task::JoinHandle<TestClient> {
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    tokio::spawn(async move {
        for i in 0..LINES {
            t.send(format!("PRIVMSG {CHAN} :line {i}")).await;
            tokio::time::sleep(PACE).await;
        }
        t.send(format!("PRIVMSG {CHAN} :done")).await;
        t.roundtrip().await;
        t
    })
}

async fn watcher(ircd: &Ircd) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register("watcher").await;
    w.join(CHAN).await;
    w
}

/// Reads the watcher until a PRIVMSG `text`, keeping every line.
async fn watch_until(w: &mut TestClient, seen: &mut Vec<Line>, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.recv_timeout(left).await {
            Ok(Some(l)) => {
                let done = l.is("PRIVMSG") && l.last_str() == text;
                seen.push(l);
                if done {
                    return;
                }
            }
            Ok(None) => panic!("watcher closed waiting for {text}"),
            Err(()) => panic!("watcher timed out waiting for {text}: {}", w.transcript()),
        }
    }
}

/// No QUIT, PART or JOIN of `nick` in what the watcher saw.
fn assert_unnoticed(seen: &[Line], nick: &str) {
    let noticed: Vec<String> = seen
        .iter()
        .filter(|l| (l.is("QUIT") || l.is("PART") || l.is("JOIN")) && l.nick() == nick)
        .map(|l| l.raw_str())
        .collect();
    assert!(
        noticed.is_empty(),
        "the channel noticed {nick}: {noticed:?}"
    );
}

/// Each numbered line exactly once in `texts`.
fn assert_each_once(texts: &[String], what: &str) {
    for i in 0..LINES {
        let t = format!("line {i}");
        let n = texts.iter().filter(|x| **x == t).count();
        assert_eq!(n, 1, "{what}: {t} seen {n} times: {texts:?}");
    }
}

/// Texts of the channel PRIVMSGs among upstream events, until `done` or the end of
/// the channel (`None`: the task ended).
async fn drain_texts(rx: &mut Events, texts: &mut Vec<String>, until_done: bool) {
    loop {
        let ev = if until_done {
            Some(event(rx).await)
        } else {
            tokio::time::timeout(WAIT, rx.next())
                .await
                .expect("old task ends")
        };
        match ev {
            Some(Seen::Line(m)) if m.command.as_str() == "PRIVMSG" => {
                let text = String::from_utf8_lossy(m.params.last().unwrap()).into_owned();
                let done = text == "done";
                texts.push(text);
                if done && until_done {
                    return;
                }
            }
            Some(Seen::Event(UpstreamEvent::Disconnected { reason, .. })) => {
                panic!("parking must not disconnect: {reason}")
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// One upstream connection parked mid-stream and resumed in a new task: every line
/// the talker said reaches exactly one of the two tasks once, lines queued for flood
/// control before the barrier go out after it, and the channel sees nothing.
#[tokio::test]
async fn upstream_parks_and_resumes_on_the_same_connection() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut w = watcher(&ircd).await;
    let mut cfg = config(&ircd.addr(), "parked");
    // One line a second after the first: the lines below wait in the flood queue.
    cfg.flood_burst = 1;
    cfg.flood_rate = 1.0;
    let (tx, rx) = mpsc::channel(1024);
    let h = upstream::spawn(cfg.clone(), tx, CancellationToken::new());
    let mut rx = Driven::spawn(&h, rx);
    registered(&mut rx).await;
    send(&rx, &format!("JOIN {CHAN}"));
    loop {
        if let Seen::Line(m) = event(&mut rx).await {
            if m.command.as_str() == "366" {
                break;
            }
        }
    }
    w.expect("our JOIN", |l| l.is("JOIN") && l.nick() == "parked")
        .await;
    // From here on the channel must see nothing of ours but our lines.
    let mut seen = Vec::new();
    let talking = talker(&ircd).await;
    // Some lines before the barrier, some after.
    let mut texts = Vec::new();
    while texts.len() < 10 {
        if let Seen::Line(m) = event(&mut rx).await {
            if m.command.as_str() == "PRIVMSG" {
                texts.push(String::from_utf8_lossy(m.params.last().unwrap()).into_owned());
            }
        }
    }
    for k in 0..3 {
        send(&rx, &format!("PRIVMSG {CHAN} :queued {k}"));
    }
    let parked = park(&rx).await.expect("a plaintext connection parks");
    assert!(
        !parked.state.queue.is_empty(),
        "the flood queue is carried: {:?}",
        parked.state
    );
    // The old task ends without a word; what its driver had cut before the barrier
    // is queued.
    drain_texts(&mut rx, &mut texts, false).await;
    tokio::time::timeout(WAIT, h.task)
        .await
        .expect("the parked task ends")
        .unwrap();
    // The state crosses a process boundary as JSON.
    let json = serde_json::to_string(&parked.state).unwrap();
    let state: UpstreamPark = serde_json::from_str(&json).unwrap();
    assert_eq!(state, parked.state);
    let parked = ParkedUpstream {
        state,
        socket: parked.socket,
        permit: None,
    };
    let (tx2, rx2) = mpsc::channel(1024);
    let (h2, link) = upstream::resume(cfg, parked, tx2, CancellationToken::new()).expect("resumes");
    let mut rx2 = Driven::resumed(&h2, link, rx2);
    drain_texts(&mut rx2, &mut texts, true).await;
    assert_each_once(&texts, "upstream events");
    // The resumed task writes on the same registration: the queued lines, then ours.
    send(&rx2, &format!("PRIVMSG {CHAN} :after"));
    watch_until(&mut w, &mut seen, "after").await;
    for k in 0..3 {
        let t = format!("queued {k}");
        let n = seen
            .iter()
            .filter(|l| l.is("PRIVMSG") && l.nick() == "parked" && l.last_str() == t)
            .count();
        assert_eq!(n, 1, "{t} reached the channel {n} times");
    }
    assert_unnoticed(&seen, "parked");
    talking.await.unwrap();
}

/// A TLS connection cannot be parked here (no kernel TLS handoff): the request is
/// refused with "must reconnect" and the connection carries on.
#[tokio::test]
async fn a_tls_upstream_refuses_to_park_and_keeps_running() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        ..InspOpts::default()
    })
    .await;
    let mut w = watcher(&ircd).await;
    let mut cfg = config(&ircd.tls_addr().unwrap(), "tlsuser");
    cfg.tls = true;
    cfg.tls_verify = TlsVerify::Insecure;
    let (tx, rx) = mpsc::channel(1024);
    let h = upstream::spawn(cfg, tx, CancellationToken::new());
    let mut rx = Driven::spawn(&h, rx);
    registered(&mut rx).await;
    send(&rx, &format!("JOIN {CHAN}"));
    let refused = park(&rx).await.expect_err("TLS does not park");
    assert!(
        matches!(refused, NotParked::MustReconnect(_)),
        "{refused:?}"
    );
    send(&rx, &format!("PRIVMSG {CHAN} :still here"));
    let mut seen = Vec::new();
    watch_until(&mut w, &mut seen, "still here").await;
    assert!(!h.task.is_finished());
}

/// A whole user parked through the node's registry and resumed in a fresh actor, with
/// a raw IRC client attached: the channel sees no QUIT/JOIN, the client's socket stays
/// open and gets every numbered line exactly once (and no second welcome), the store
/// has every numbered line once, and the resumed actor knows its channel (no re-JOIN)
/// and speaks for the client on the same connection.
async fn user_parks_and_resumes_without_the_network_noticing(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            id,
            NetworkSpec {
                name: "test".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                channels: vec![CHAN.into()],
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(id, "test", 1).await;
    let mut c = ferry
        .client("alice", "test", "secret", &["server-time", "message-tags"])
        .await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == CHAN)
        .await;
    c.roundtrip().await;
    let mut client_seen = Vec::new();
    let mut w = watcher(&ircd).await;
    let mut seen = Vec::new();
    let talking = talker(&ircd).await;
    watch_until(&mut w, &mut seen, "line 10").await;
    let users = &ferry.services().users;
    let parked = users
        .park(id, Duration::from_secs(60))
        .await
        .expect("alice runs here");
    assert_eq!(parked.state.networks.len(), 1, "{:?}", parked.state);
    assert!(parked.state.reconnect.is_empty(), "{:?}", parked.state);
    assert_eq!(
        parked.state.clients.len(),
        1,
        "the client parked: {:?}",
        parked.state
    );
    assert_eq!(parked.state.clients_closed, 0);
    assert!(users.get(id).is_none(), "the old actor is gone");
    // The state crosses a process boundary as JSON.
    let json = serde_json::to_string(&parked.state).unwrap();
    let state: UserPark = serde_json::from_str(&json).unwrap();
    let parked = ferry::user::ParkedUser {
        state,
        sockets: parked.sockets,
        client_sockets: parked.client_sockets,
        permits: parked.permits,
        attach: Vec::new(),
        rows: None,
    };
    let handle = ferry::downstream::resume_user(
        ferry.services(),
        &ferry.config.downstream,
        id,
        "alice",
        parked,
    )
    .await
    .expect("resumes");
    let status = handle.status().await.unwrap();
    assert!(
        matches!(status[0].state, ferry::user::ConnState::Connected)
            && status[0].channels.len() == 1
            && status[0].clients == 1,
        "resumed connected, in {CHAN}, with the client: {status:?}"
    );
    watch_until(&mut w, &mut seen, "done").await;
    talking.await.unwrap();
    // The client kept its socket and got every line once, with nothing said again.
    watch_until(&mut c, &mut client_seen, "done").await;
    let texts: Vec<String> = client_seen
        .iter()
        .filter(|l| l.is("PRIVMSG"))
        .map(|l| l.last_str())
        .collect();
    assert_each_once(&texts, "the attached client");
    let again: Vec<String> = client_seen
        .iter()
        .filter(|l| {
            l.is("001") || l.is("ERROR") || l.is("353") || (l.is("JOIN") && l.nick() == "alice")
        })
        .map(|l| l.raw_str())
        .collect();
    assert!(
        again.is_empty(),
        "the client was told nothing again: {again:?}"
    );
    // The same socket speaks through the resumed actor and the same registration.
    c.send(format!("PRIVMSG {CHAN} :resumed")).await;
    watch_until(&mut w, &mut seen, "resumed").await;
    c.roundtrip().await;
    assert_unnoticed(&seen, "alice");
    // Every numbered line stored exactly once.
    ferry.services().writer.flush().await.unwrap();
    let stored: Vec<String> = ferry
        .store()
        .history(&HistoryQuery {
            user: id,
            limit: 1000,
            ..HistoryQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.command == "PRIVMSG")
        .map(|m| m.text)
        .collect();
    assert_each_once(&stored, "the store");
}

/// The ircd listens on 127.0.0.1: the limiter key of its networks.
const KEY: &str = "127.0.0.1";

/// This node's sessions holding a slot under [`KEY`], as its heartbeat publishes them
/// (`nodes.key_load`, placement, `ferry node list`).
fn held(ferry: &Ferry) -> i64 {
    ferry
        .services()
        .health()
        .key_load
        .get(KEY)
        .map_or(0, |l| l.held)
}

/// A user with one network on `ircd`, started (its connect goes through the limiter;
/// not waited for).
async fn start_user(ferry: &Ferry, ircd: &Ircd, name: &str) -> UserId {
    let u = ferry.store().create_user(name, "x", false).await.unwrap();
    let spec = NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: name.into(),
        ..NetworkSpec::default()
    };
    ferry
        .store()
        .create_network(u.id, &spec.to_new_network().unwrap())
        .await
        .unwrap();
    ferry.services().users.start(u.id, name).await.unwrap();
    u.id
}

/// How [`park_and_resume`] carries the parts across.
#[derive(Clone, Copy, PartialEq)]
enum Carry {
    /// As to another process: the state through JSON, none of this process's limiter
    /// permits (the new process adopts the slots from the state).
    OtherProcess,
    /// The same, from a Ferry that did not carry the slot in the state (no
    /// `limits_key`/`source_ip`): the slot is worked out from the network.
    OlderState,
    /// A resume in this process (as a failed upgrade's): the permits are kept.
    SameProcess,
}

/// Parks a user and resumes it, carrying the parts as `carry` says.
async fn park_and_resume(ferry: &Ferry, id: UserId, name: &str, carry: Carry) {
    let users = &ferry.services().users;
    let parked = users
        .park(id, Duration::from_secs(60))
        .await
        .expect("the user runs here");
    assert_eq!(parked.state.networks.len(), 1, "{:?}", parked.state);
    let carried = &parked.state.networks[0].upstream;
    assert_eq!(
        carried.limits_key.as_deref(),
        Some(KEY),
        "the slot's key is carried: {carried:?}"
    );
    let mut json = serde_json::to_value(&parked.state).unwrap();
    if carry == Carry::OlderState {
        let up = json["networks"][0]["upstream"].as_object_mut().unwrap();
        up.remove("limits_key").expect("carried");
        up.remove("source_ip").expect("carried");
    }
    let state: UserPark = serde_json::from_value(json).unwrap();
    let permits = if carry == Carry::SameProcess {
        parked.permits
    } else {
        drop(parked.permits);
        Default::default()
    };
    let parked = ferry::user::ParkedUser {
        state,
        sockets: parked.sockets,
        client_sockets: parked.client_sockets,
        permits,
        attach: Vec::new(),
        rows: None,
    };
    users.resume(id, name, parked).await.expect("resumes");
    ferry.wait_connected(id, "test", 0).await;
}

/// After park and resume the node's limiter counts the resumed connections — the
/// slots are adopted (as in the new process of an in-place upgrade; from an older
/// state without the slot too, worked out from the network) or kept — so its
/// published load equals the live upstreams, and with the network's per-IP limit (and
/// the server's `localmax`) at that count a new user waits for a slot instead of
/// connecting beyond it; when a resumed connection ends, its slot goes to the waiter.
async fn resumed_connections_hold_their_limiter_slots(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(2),
        ..InspOpts::default()
    })
    .await;
    let ferry = Ferry::start(backend).await;
    ferry
        .store()
        .set_network_limits(&NetworkLimits::new(KEY, 2, 6000.0, 100))
        .await
        .unwrap();
    ferry.services().reload_limits().await.unwrap();
    let alice = start_user(&ferry, &ircd, "alice").await;
    let bob = start_user(&ferry, &ircd, "bob").await;
    ferry.wait_connected(alice, "test", 0).await;
    ferry.wait_connected(bob, "test", 0).await;
    assert_eq!(held(&ferry), 2);
    let limiter = &ferry.services().limiter;
    let granted = limiter.stats().granted;

    // As in the new process of an upgrade: the permits stay behind, slots adopted.
    park_and_resume(&ferry, alice, "alice", Carry::OtherProcess).await;
    park_and_resume(&ferry, bob, "bob", Carry::OtherProcess).await;
    assert_eq!(held(&ferry), 2, "both resumed connections hold a slot");
    let stats = limiter.stats();
    assert_eq!(
        (stats.adopted, stats.adopted_over_limit),
        (2, 0),
        "{stats:?}"
    );
    assert_eq!(stats.granted, granted, "no new connect: {stats:?}");
    // In the same process (a failed upgrade's resume): the permit is kept, nothing
    // adopted, and the slot stays counted while the user is parked.
    park_and_resume(&ferry, bob, "bob", Carry::SameProcess).await;
    assert_eq!(held(&ferry), 2);
    assert_eq!(limiter.stats().adopted, 2);
    // State from a Ferry that did not carry the slot: worked out, still counted.
    park_and_resume(&ferry, alice, "alice", Carry::OlderState).await;
    assert_eq!(held(&ferry), 2);
    assert_eq!(
        limiter
            .local_counts()
            .iter()
            .map(|c| c.sessions)
            .sum::<u32>(),
        2,
        "one slot each, on the same (key, source): {:?}",
        limiter.local_counts()
    );
    assert_eq!(limiter.stats().adopted, 3);

    // A third user: both slots are held, so it waits in the limiter.
    let carol = start_user(&ferry, &ircd, "carol").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while limiter.waiting(KEY) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "carol never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It keeps waiting (bounded: a connect would take well under this here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(limiter.waiting(KEY), 1, "carol still waits for a slot");
    assert_eq!(limiter.stats().granted, granted);
    assert_eq!(ferry.services().health().key_load[KEY].waiting, 1);
    // The resumed connection of alice ends: its slot frees and carol connects.
    ferry.services().users.stop(alice, None).await;
    ferry.wait_connected(carol, "test", 0).await;
    assert_eq!(held(&ferry), 2);
    assert_eq!(limiter.waiting(KEY), 0);
    let stats = limiter.stats();
    assert_eq!(
        (stats.too_many_connections, stats.throttled),
        (0, 0),
        "the server never refused a connect: {stats:?}"
    );
    assert!(
        !ircd.log().contains("No more connections"),
        "the server refused a connect over localmax:\n{}",
        ircd.log()
    );
}

on_both_backends!(
    user_parks_and_resumes_without_the_network_noticing,
    resumed_connections_hold_their_limiter_slots,
);
