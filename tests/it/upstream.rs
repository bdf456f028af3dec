//! The upstream task against real servers: registration on InspIRCd and ngircd,
//! byte-faithful relay, reconnect after a crash, dead-server detection, TLS pinning;
//! and through a node: one hop from the socket to the actor, back-pressure from a
//! stalled store writer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::irc::{Casemapping, Message};
use ferry::store::TlsVerify;
use ferry::upstream::{
    spawn, Driven, Registration, Retry, Seen, UpstreamConfig, UpstreamEvent, UpstreamHandle,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ferry::store::HistoryQuery;
use sqlx::Connection;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd, NgircdOpts};

/// Generous: a loaded 2-core box runs several servers at once.
const WAIT: Duration = Duration::from_secs(60);

/// The task's events and its link's lines (the link driven by a task of its own).
type Events = Driven;

fn config(addr: &str, nick: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::new(1, addr, nick);
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(1);
    cfg.register_timeout = Duration::from_secs(30);
    cfg
}

fn start(cfg: UpstreamConfig) -> (UpstreamHandle, Events) {
    let (tx, rx) = mpsc::channel(256);
    let h = spawn(cfg, tx, CancellationToken::new());
    let driven = Driven::spawn(&h, rx);
    (h, driven)
}

async fn seen(rx: &mut Events) -> Seen {
    tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("timed out waiting for an upstream event")
        .expect("upstream task ended")
}

/// The next event of the task, skipping lines.
async fn event(rx: &mut Events) -> UpstreamEvent {
    loop {
        if let Seen::Event(ev) = seen(rx).await {
            return ev;
        }
    }
}

/// Waits for `Registered`, skipping messages and failed attempts (logged).
async fn registered(rx: &mut Events) -> Registration {
    loop {
        match event(rx).await {
            UpstreamEvent::Registered(r) => return *r,
            UpstreamEvent::Disconnected {
                retry: Retry::Never,
                reason,
            } => panic!("gave up: {reason}"),
            _ => {}
        }
    }
}

async fn disconnected(rx: &mut Events) -> (String, Retry) {
    loop {
        if let UpstreamEvent::Disconnected { reason, retry } = event(rx).await {
            return (reason, retry);
        }
    }
}

/// Waits for a message matching `pred`, skipping others.
async fn message(rx: &mut Events, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
    loop {
        match seen(rx).await {
            Seen::Line(m) if pred(&m) => return *m,
            Seen::Line(_) => {}
            other => panic!("while waiting for {what}: {other:?}"),
        }
    }
}

fn send(rx: &Events, line: &[u8]) {
    let m = Message::parse(Bytes::copy_from_slice(line)).unwrap();
    rx.send(m);
}

/// Joins `chan` through the upstream task and waits for the server's 366.
async fn join(rx: &mut Events, chan: &str) {
    send(rx, format!("JOIN {chan}").as_bytes());
    message(rx, "366", |m| m.command == "366").await;
}

#[tokio::test]
async fn registers_on_inspircd_with_ircv3_caps() {
    // InspIRCd sends 001 about a second after CAP END (its registration timer).
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_h, mut rx) = start(config(&ircd.addr(), "ferryinsp"));
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 1 }
    ));
    let reg = registered(&mut rx).await;
    assert_eq!(reg.nick, b"ferryinsp");
    for cap in ["server-time", "message-tags", "batch", "echo-message"] {
        assert!(reg.caps.contains(cap), "{cap} not acked: {:?}", reg.caps);
    }
    assert_eq!(reg.isupport.casemapping, Casemapping::Rfc1459);
    assert_eq!(reg.server_name, b"irc.test");
}

#[tokio::test]
async fn ngircd_shortens_a_long_nick() {
    let ircd = Ircd::ngircd(NgircdOpts::default()).await;
    let (_h, mut rx) = start(config(&ircd.addr(), "twelvecharsx"));
    let reg = registered(&mut rx).await;
    assert_eq!(reg.nick, b"twelvecha");
    assert_eq!(reg.isupport.casemapping, Casemapping::Ascii);
    assert_eq!(reg.isupport.nicklen, Some(9));
    // ngircd offers no message-tags: a tagged line from the actor must reach
    // it without tags (else: 421) and be delivered.
    assert!(!reg.caps.contains("message-tags"));
    join(&mut rx, "#tags").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#tags").await;
    let tagged = Message::new("PRIVMSG", ["#tags", "tagged"]).with_tag("+draft/react", Some("x"));
    rx.send(tagged);
    let got = bob
        .expect("tagged PRIVMSG", |l| {
            l.is("PRIVMSG") && l.nick() == "twelvecha"
        })
        .await;
    assert_eq!(got.param(1), Some(&b"tagged"[..]));
}

#[tokio::test]
async fn latin1_privmsg_arrives_byte_exact() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_h, mut rx) = start(config(&ircd.addr(), "ferrylat"));
    registered(&mut rx).await;
    join(&mut rx, "#latin").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#latin").await;
    message(&mut rx, "bob's JOIN", |m| {
        m.command == "JOIN" && m.source_nick() == Some(b"bob")
    })
    .await;
    bob.send(b"PRIVMSG #latin :caf\xe9 cr\xe8me \xff").await;
    let m = message(&mut rx, "bob's PRIVMSG", |m| m.command == "PRIVMSG").await;
    assert_eq!(m.param(0), Some(&b"#latin"[..]));
    assert_eq!(m.param(1), Some(&b"caf\xe9 cr\xe8me \xff"[..]));
    // server-time was acked, so the line carries the tag.
    assert!(m.tag("time").is_some());
}

#[tokio::test]
async fn reconnects_after_the_server_is_killed() {
    let mut ircd = Ircd::ngircd(NgircdOpts::default()).await;
    let (h, mut rx) = start(config(&ircd.addr(), "ferrykill"));
    registered(&mut rx).await;
    ircd.kill();
    let (reason, retry) = disconnected(&mut rx).await;
    assert!(matches!(retry, Retry::After(_)), "{reason}: {retry:?}");
    ircd.restart().await;
    let reg = registered(&mut rx).await;
    assert_eq!(reg.nick, b"ferrykill");
    assert!(h.stats.reconnects.get() >= 1);
}

#[tokio::test]
async fn keepalive_detects_a_stopped_server() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut cfg = config(&ircd.addr(), "ferrystop");
    cfg.ping_interval = Duration::from_secs(2);
    cfg.ping_timeout = Duration::from_secs(2);
    let (_h, mut rx) = start(cfg);
    registered(&mut rx).await;
    ircd.pause();
    let paused = Instant::now();
    let (reason, retry) = disconnected(&mut rx).await;
    let took = paused.elapsed();
    // Silence for ping_interval, then ping_timeout: about 4 s, with slack for load.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(reason.contains("PING"), "{reason}");
    assert!(matches!(retry, Retry::After(_)));
    ircd.resume();
    let reg = registered(&mut rx).await;
    assert!(reg.nick.starts_with(b"ferrystop"));
}

#[tokio::test]
async fn tls_with_a_pinned_certificate() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        ..InspOpts::default()
    })
    .await;
    let pin = ircd.tls_cert_der_sha256().unwrap();
    let mut cfg = config(&ircd.tls_addr().unwrap(), "ferrytls");
    cfg.tls = true;
    cfg.tls_verify = TlsVerify::Pin(pin);
    let (_h, mut rx) = start(cfg);
    let reg = registered(&mut rx).await;
    assert_eq!(reg.nick, b"ferrytls");

    // The same server with a wrong pin is refused before registration.
    let mut cfg = config(&ircd.tls_addr().unwrap(), "ferrybad");
    cfg.tls = true;
    cfg.tls_verify = TlsVerify::Pin("00".repeat(32));
    let (h, mut rx) = start(cfg);
    loop {
        match event(&mut rx).await {
            UpstreamEvent::Disconnected { reason, .. } => {
                assert!(reason.contains("TLS"), "{reason}");
                break;
            }
            UpstreamEvent::Registered(_) => panic!("registered despite a wrong pin"),
            _ => {}
        }
    }
    h.cancel.cancel();
}

/// One hop from the socket to a client (issue 10): the user actor reads its
/// registered connections itself, so every line from a real InspIRCd is handled in
/// the task that read it from the socket. The link stamps each line with the task
/// that read it and the actor counts the lines it gets from another task
/// (`lines_handed_over`): a queue between a reading task and the actor would count
/// every line.
#[tokio::test]
async fn a_line_is_handled_in_the_task_that_read_it() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    ferry.user_in(&ircd.addr(), "alice", "#hop").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == "#hop")
        .await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#hop").await;
    for i in 0..50 {
        bob.send(format!("PRIVMSG #hop :hop {i}")).await;
    }
    c.expect("the last line", |l| {
        l.is("PRIVMSG") && l.last_str() == "hop 49"
    })
    .await;
    let stats = &ferry.services().users.config().upstream_stats;
    assert!(stats.lines_in.get() >= 50, "{}", stats.lines_in.get());
    assert_eq!(
        stats.lines_handed_over.get(),
        0,
        "lines crossed a task boundary between the socket and the actor"
    );
}

/// Back-pressure (issue 10): while the store writer cannot take more, the actor waits
/// for it and reads nothing more from its upstream sockets — the server's lines stay
/// in the kernel (and the server's send queue), not in a queue of ours — and once the
/// writer moves again every line is stored exactly once.
///
/// PostgreSQL only: a table lock held by the test stalls the writer's commit as long
/// as the test wants. (SQLite's writer gives up on a locked file after its busy
/// timeout and holds the lines as an outage instead, which is another test's subject.)
#[tokio::test]
async fn a_stalled_writer_stops_reading_upstream_and_loses_nothing() {
    const N: usize = 2000;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let ferry = Ferry::start_on(db.clone(), |cfg| {
        // Small: the stall holds few lines; catching up takes a hundred commits.
        cfg.writer.queue = 16;
        cfg.writer.max_batch = 16;
    })
    .await;
    let id = ferry.user_in(&ircd.addr(), "alice", "#bp").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#bp").await;
    // Stall the writer: its next commit waits for this lock.
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE bodies, messages IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let stats = ferry.services().users.config().upstream_stats.clone();
    let before = stats.lines_in.get();
    for i in 0..N {
        bob.send(format!("PRIVMSG #bp :line {i}")).await;
    }
    // The server has handled every line (and queued it for us) once it answers this.
    bob.roundtrip().await;
    // Wait until the writer is stuck on the lock with its queue full.
    let mut monitor = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE NOT l.granted AND d.datname = current_database()",
        )
        .fetch_one(&mut monitor)
        .await
        .unwrap();
        if waiting > 0 && ferry.services().writer.queued() >= 16 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not synchronisation but the absence being tested: give a reader that would
    // not stop (a task feeding a queue of 1024 lines) the time to read ahead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // At most a commit's batch, the queue and the line waiting for room (plus what
    // a reader that did not stop would add: the old upstream task's 1024-line queue).
    let read = stats.lines_in.get() - before;
    assert!(
        read < 100,
        "{read} of {N} lines read while the writer was stalled: the socket was not left alone"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    // Every line arrives and is stored once.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stored: Vec<String> = ferry
            .store()
            .history(&HistoryQuery {
                user: id,
                limit: N as i64 + 100,
                ..HistoryQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.command == "PRIVMSG")
            .map(|m| m.text)
            .collect();
        if stored.len() >= N {
            for i in 0..N {
                let t = format!("line {i}");
                let n = stored.iter().filter(|x| **x == t).count();
                assert_eq!(n, 1, "{t} stored {n} times");
            }
            assert_eq!(stored.len(), N);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {N} lines stored",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client's relay never waits for its position to be saved (issue 10): with the
/// positions table locked (PostgreSQL), a client attached meanwhile still gets every
/// live line. Its loop used to await the save when it started and every 5 s, and
/// relayed nothing until the store answered: at 1,000 clients saving together, a
/// stall of seconds for each (docs/benchmarks.md §3).
#[tokio::test]
async fn a_client_keeps_receiving_while_its_position_cannot_be_saved() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let ferry = Ferry::start_on(db.clone(), |_| {}).await;
    ferry.user_in(&ircd.addr(), "alice", "#pos").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#pos").await;
    // A stored line, so the client has a position to save once it is replayed.
    bob.send("PRIVMSG #pos :before").await;
    bob.roundtrip().await;
    ferry.services().writer.flush().await.unwrap();
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE client_positions IN EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("the replayed line", |l| {
        l.is("PRIVMSG") && l.last_str() == "before"
    })
    .await;
    for i in 0..20 {
        bob.send(format!("PRIVMSG #pos :live {i}")).await;
    }
    c.expect("the last live line, the position still unsaved", |l| {
        l.is("PRIVMSG") && l.last_str() == "live 19"
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
}
