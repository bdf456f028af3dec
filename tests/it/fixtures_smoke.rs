//! Tests of the outage and history fixtures themselves: a private PostgreSQL keeps its
//! data across stops (fast and immediate) and restarts, a TCP relay cuts, black-holes,
//! stalls and restores a path, and the scripted history server answers CHATHISTORY as
//! Ergo does, with and without `draft/event-playback`.

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{Connection, PgConnection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::history::{Delivery, HistoryOpts, HistoryServer, ItemKind, ERGO_CAPS};
use crate::fixtures::pg::PrivatePg;
use crate::fixtures::relay::{RelayMode, TcpRelay};

/// How long a test waits to conclude that nothing happens (a black-holed connect, a
/// stalled query). Only used to assert silence, never to wait for an event.
const SILENCE: Duration = Duration::from_secs(1);

async fn rows(url: &str) -> Vec<String> {
    let mut c = PgConnection::connect(url).await.expect("connect");
    sqlx::query("SELECT v FROM kept ORDER BY v")
        .fetch_all(&mut c)
        .await
        .expect("select")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

async fn insert(url: &str, v: &str) {
    let mut c = PgConnection::connect(url).await.expect("connect");
    sqlx::query("INSERT INTO kept (v) VALUES ($1)")
        .bind(v)
        .execute(&mut c)
        .await
        .expect("insert");
}

#[tokio::test]
async fn private_pg_keeps_data_across_stop_start_and_restart() {
    let t = Instant::now();
    let pg = PrivatePg::new().await;
    let first_start = t.elapsed();
    let url = pg.url();
    assert!(url.ends_with(&format!(":{}/postgres", pg.port())), "{url}");
    assert!(pg.is_running().await);

    let mut held = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (v TEXT)")
        .execute(&mut held)
        .await
        .unwrap();
    insert(&url, "1 before a fast stop").await;

    let t = Instant::now();
    pg.stop().await;
    let fast_stop = t.elapsed();
    assert!(!pg.is_running().await);
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "a stopped server still accepts connections"
    );
    assert!(
        sqlx::query("SELECT 1").execute(&mut held).await.is_err(),
        "a connection survived the stop"
    );

    let t = Instant::now();
    pg.start().await;
    let restart = t.elapsed();
    assert_eq!(pg.url(), url, "the URL changed across a restart");
    assert_eq!(rows(&url).await, ["1 before a fast stop"]);

    // An immediate stop is a crash: what was committed is recovered from the WAL.
    insert(&url, "2 before a crash").await;
    let t = Instant::now();
    pg.stop_immediate().await;
    let immediate_stop = t.elapsed();
    pg.start().await;
    assert_eq!(
        rows(&url).await,
        ["1 before a fast stop", "2 before a crash"]
    );

    insert(&url, "3 before restart()").await;
    let t = Instant::now();
    pg.restart().await;
    let full_restart = t.elapsed();
    assert_eq!(
        rows(&url).await,
        [
            "1 before a fast stop",
            "2 before a crash",
            "3 before restart()"
        ]
    );
    let db = pg.create_db("ferry_private").await;
    PgConnection::connect(&db)
        .await
        .expect("connect to the new database");

    println!(
        "private PostgreSQL: first start {first_start:?}, fast stop {fast_stop:?}, start \
         again {restart:?}, immediate stop {immediate_stop:?}, restart() {full_restart:?}"
    );
    let data = pg.data_dir();
    assert!(data.join("PG_VERSION").exists());
    drop(pg);
    assert!(!data.exists(), "the data directory outlived the fixture");
}

#[tokio::test]
async fn private_pgs_start_side_by_side() {
    let t = Instant::now();
    let (a, b) = tokio::join!(PrivatePg::new(), PrivatePg::new());
    println!(
        "two private PostgreSQL servers started together in {:?}",
        t.elapsed()
    );
    assert_ne!(a.port(), b.port());
    let mut ca = PgConnection::connect(&a.url()).await.unwrap();
    sqlx::query("CREATE TABLE only_in_a (x INT)")
        .execute(&mut ca)
        .await
        .unwrap();
    let mut cb = PgConnection::connect(&b.url()).await.unwrap();
    let found: i64 = sqlx::query("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
        .fetch_one(&mut cb)
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 0, "the two servers share a cluster");
}

#[tokio::test]
async fn relay_cut_fails_queries_until_restored() {
    let pg = PrivatePg::new().await;
    let relay = TcpRelay::start(pg.addr()).await;
    let url = format!("postgres://postgres@{}/postgres", relay.addr());

    let mut through = PgConnection::connect(&url).await.expect("connect through");
    let one: i32 = sqlx::query("SELECT 1")
        .fetch_one(&mut through)
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(relay.stats().active, 1);

    relay.cut();
    assert_eq!(relay.mode(), RelayMode::Refuse);
    assert!(
        sqlx::query("SELECT 1").execute(&mut through).await.is_err(),
        "a query went through a cut relay"
    );
    let err = PgConnection::connect(&url)
        .await
        .expect_err("a connection went through a cut relay");
    println!("connect while cut: {err}");
    // The server itself is untouched: only this path is cut.
    PgConnection::connect(&pg.url())
        .await
        .expect("direct connection");
    let s = relay
        .wait_for("the cut connection to end", |s| s.active == 0)
        .await;
    assert_eq!((s.cut, s.refused), (1, 1), "{s:?}");

    relay.restore();
    let mut again = PgConnection::connect(&url)
        .await
        .expect("connect after restore");
    sqlx::query("SELECT 1").execute(&mut again).await.unwrap();
    assert_eq!(relay.stats().relayed, 2);
}

/// A server that echoes every byte back.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo failed");
    buf
}

#[tokio::test]
async fn relay_blackhole_stall_and_retarget() {
    let echo = echo_server().await;
    let relay = TcpRelay::start(echo).await;

    // Black hole: existing connections are reset, new ones get no answer.
    let mut before = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut before, b"ping").await, b"ping");
    relay.cut_blackhole();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(60), before.read(&mut buf))
        .await
        .expect("the cut connection is not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "read {n:?} after the cut");
    let mut held = TcpStream::connect(relay.addr()).await.unwrap();
    held.write_all(b"anyone?").await.unwrap();
    assert!(
        tokio::time::timeout(SILENCE, held.read(&mut buf))
            .await
            .is_err(),
        "a black-holed connection got an answer"
    );
    relay.restore();
    let n = tokio::time::timeout(Duration::from_secs(60), held.read(&mut buf))
        .await
        .expect("restore does not end black-holed connections");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "read {n:?} from a black-holed connection"
    );
    let s = relay.stats();
    assert_eq!((s.blackholed, s.cut), (1, 1), "{s:?}");

    // Stall: the connection stays open, bytes wait in the relay, nothing is lost.
    let mut conn = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"one").await, b"one");
    relay.stall();
    conn.write_all(b"two").await.unwrap();
    let mut got = [0u8; 3];
    assert!(
        tokio::time::timeout(SILENCE, conn.read_exact(&mut got))
            .await
            .is_err(),
        "bytes crossed a stalled relay"
    );
    relay.restore();
    tokio::time::timeout(Duration::from_secs(60), conn.read_exact(&mut got))
        .await
        .expect("the stalled connection did not resume")
        .unwrap();
    assert_eq!(&got, b"two");
    assert_eq!(roundtrip(&mut conn, b"three").await, b"three");

    // A failover behind the relay: new connections go to the new target.
    let other = echo_server().await;
    relay.set_target(other);
    let mut moved = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut moved, b"four").await, b"four");
    assert_eq!(relay.target(), other);
    relay
        .wait_for("three connections relayed", |s| s.relayed == 3)
        .await;
}

/// Reads one `chathistory` batch (after the query was sent) and returns its lines.
async fn read_batch(c: &mut TestClient, chan: &str) -> Vec<Line> {
    let start = c
        .expect("BATCH + chathistory", |l| {
            l.is("BATCH") && l.param_str(0).starts_with('+')
        })
        .await;
    assert_eq!(start.param_str(1), "chathistory", "{}", start.raw_str());
    assert_eq!(start.param_str(2), chan, "{}", start.raw_str());
    let reference = start.param_str(0)[1..].to_string();
    let mut lines = Vec::new();
    loop {
        let l = c.expect("a batch line", |_| true).await;
        if l.is("BATCH") && l.param_str(0) == format!("-{reference}") {
            return lines;
        }
        assert_eq!(l.tag("batch"), Some(reference.as_str()), "{}", l.raw_str());
        lines.push(l);
    }
}

const REPLAY_CAPS: &[&str] = &["server-time", "message-tags", "batch", "draft/chathistory"];

/// Alice and Bob in `#c`; Bob says hello, renames to robert and quits; Carol's line
/// from the past is injected. Returns Alice (still connected) and the window's start.
async fn history_scene(
    server: &HistoryServer,
    alice_caps: &[&str],
) -> (TestClient, chrono::DateTime<Utc>) {
    let since = Utc::now() - chrono::Duration::seconds(1);
    let mut alice = TestClient::connect(&server.addr()).await;
    alice.register_with_caps("alice", alice_caps).await;
    alice.join("#c").await;
    let mut bob = TestClient::connect(&server.addr()).await;
    bob.register("bob").await;
    bob.join("#c").await;
    bob.send("PRIVMSG #c :hello").await;
    let live = alice
        .expect("bob's hello", |l| l.is("PRIVMSG") && l.nick() == "bob")
        .await;
    let stored = server.history("#c");
    let hello = stored
        .iter()
        .find(|i| i.kind == ItemKind::Privmsg(b"hello".to_vec()))
        .expect("hello is in the history");
    assert_eq!(live.tag("msgid"), Some(hello.msgid.as_str()));
    assert_eq!(live.tag("time"), Some(hello.time_tag().as_str()));
    bob.send("NICK robert").await;
    alice.expect("bob's NICK", |l| l.is("NICK")).await;
    bob.send("QUIT :moving").await;
    bob.expect_closed().await;
    alice
        .expect("robert's QUIT", |l| l.is("QUIT") && l.nick() == "robert")
        .await;
    server.say_at(
        "#c",
        "carol",
        "from the past",
        since + chrono::Duration::milliseconds(1),
    );
    (alice, since)
}

#[tokio::test]
async fn history_server_replays_events_as_histserv_without_event_playback() {
    let server = HistoryServer::ergo().await;
    let (mut alice, since) = history_scene(&server, REPLAY_CAPS).await;
    let offered = alice.available_caps();
    let names: Vec<&str> = ERGO_CAPS
        .iter()
        .map(|c| c.split('=').next().unwrap())
        .collect();
    assert_eq!(offered, names);
    assert_eq!(alice.cap_value("sasl"), Some("PLAIN,EXTERNAL"));

    let until = Utc::now() + chrono::Duration::seconds(1);
    alice
        .send(format!(
            "CHATHISTORY BETWEEN #c timestamp={} timestamp={} 1000",
            crate::fixtures::history::irc_time(since),
            crate::fixtures::history::irc_time(until)
        ))
        .await;
    let batch = read_batch(&mut alice, "#c").await;
    let history = server.history("#c");
    assert_eq!(batch.len(), history.len(), "{batch:?}");
    let seen: Vec<(String, String)> = batch.iter().map(|l| (l.nick(), l.last_str())).collect();
    assert_eq!(
        seen,
        [
            ("carol", "from the past"),
            ("HistServ", "alice joined the channel"),
            ("HistServ", "bob joined the channel"),
            ("bob", "hello"),
            ("HistServ", "bob changed nick to robert"),
            ("HistServ", "robert quit (Quit: moving)"),
        ]
        .map(|(n, t)| (n.to_string(), t.to_string()))
    );
    for (line, item) in batch.iter().zip(&history) {
        assert!(line.is("PRIVMSG"), "{}", line.raw_str());
        assert_eq!(line.tag("time"), Some(item.time_tag().as_str()));
        let want = if line.nick() == "HistServ" {
            format!("_{}", item.msgid)
        } else {
            item.msgid.clone()
        };
        assert_eq!(line.tag("msgid"), Some(want.as_str()), "{}", line.raw_str());
    }
}

#[tokio::test]
async fn history_server_replays_real_events_with_event_playback() {
    let server = HistoryServer::ergo().await;
    let mut caps = REPLAY_CAPS.to_vec();
    caps.push("draft/event-playback");
    let (mut alice, _) = history_scene(&server, &caps).await;
    let history = server.history("#c");
    let hello = &history[3];
    // AFTER carol's line (by msgid), the next four: joins, hello, nick.
    alice
        .send(format!("CHATHISTORY AFTER #c msgid={} 4", history[0].msgid))
        .await;
    let batch = read_batch(&mut alice, "#c").await;
    let seen: Vec<String> = batch.iter().map(|l| l.raw_str()).collect();
    assert_eq!(batch.len(), 4, "{seen:#?}");
    assert!(
        batch[0].is("JOIN") && batch[0].nick() == "alice",
        "{seen:#?}"
    );
    assert!(batch[1].is("JOIN") && batch[1].nick() == "bob", "{seen:#?}");
    assert_eq!(batch[2].tag("msgid"), Some(hello.msgid.as_str()));
    assert!(
        batch[3].is("NICK") && batch[3].param_str(0) == "robert",
        "{seen:#?}"
    );
    // LATEST: the QUIT as itself, original msgid and time.
    alice.send("CHATHISTORY LATEST #c * 1").await;
    let batch = read_batch(&mut alice, "#c").await;
    let quit = &history[5];
    assert_eq!(batch.len(), 1);
    assert!(batch[0].is("QUIT") && batch[0].nick() == "robert");
    assert_eq!(batch[0].last_str(), "Quit: moving");
    assert_eq!(batch[0].tag("msgid"), Some(quit.msgid.as_str()));
    assert_eq!(batch[0].tag("time"), Some(quit.time_tag().as_str()));
    assert!(history.iter().all(|i| !i.msgid.starts_with('_')));
}

#[tokio::test]
async fn history_server_serves_members_only_and_has_a_test_api() {
    let opts = HistoryOpts {
        motd: vec!["welcome".into()],
        ..HistoryOpts::without_cap("draft/event-playback")
    };
    let server = HistoryServer::start(opts).await;

    let mut dave = TestClient::connect(&server.addr()).await;
    dave.send("CAP LS 302").await;
    dave.send("NICK dave").await;
    dave.send("USER dave 0 * :Dave").await;
    let ls = dave.expect("CAP LS", |l| l.is("CAP")).await;
    assert!(
        !ls.last_str().contains("event-playback"),
        "{}",
        ls.raw_str()
    );
    dave.send("CAP REQ :batch draft/event-playback").await;
    dave.expect("CAP NAK", |l| l.is("CAP") && l.param_str(1) == "NAK")
        .await;
    dave.send("CAP REQ :batch labeled-response server-time")
        .await;
    dave.expect("CAP ACK", |l| l.is("CAP") && l.param_str(1) == "ACK")
        .await;
    dave.send("CAP END").await;
    dave.expect("001", |l| l.is("001")).await;
    let isupport = dave.expect("005", |l| l.is("005")).await;
    assert!(
        isupport.raw_str().contains("CHATHISTORY=1000"),
        "{}",
        isupport.raw_str()
    );
    dave.expect("MOTD", |l| l.is("372") && l.last_str() == "- welcome")
        .await;
    dave.expect("end of MOTD", |l| l.is("376")).await;

    // Not a member: no history. Members get it, labeled.
    server.say("#c", "bob", "said before dave came");
    dave.send("CHATHISTORY LATEST #c * 10").await;
    let fail = dave.expect("FAIL", |l| l.is("FAIL")).await;
    assert_eq!(
        fail.params[..4],
        [&b"CHATHISTORY"[..], b"INVALID_TARGET", b"LATEST", b"#c"]
    );
    dave.join("#c").await;
    server.wait_joined("#c", "dave").await;
    dave.send("@label=q1 CHATHISTORY LATEST #c * 10").await;
    let outer = dave
        .expect("labeled-response batch", |l| l.is("BATCH"))
        .await;
    assert_eq!(outer.tag("label"), Some("q1"));
    assert_eq!(outer.param_str(1), "labeled-response");
    let inner = dave.expect("chathistory batch", |l| l.is("BATCH")).await;
    assert_eq!(inner.param_str(1), "chathistory");
    assert_eq!(inner.tag("batch"), Some(&outer.param_str(0)[1..]));
    let said = dave.expect("bob's line", |l| l.is("PRIVMSG")).await;
    assert_eq!(said.last_str(), "said before dave came");
    assert_eq!(said.tag("batch"), Some(&inner.param_str(0)[1..]));
    dave.expect("dave's own JOIN, as HistServ", |l| {
        l.nick() == "HistServ" && l.last_str() == "dave joined the channel"
    })
    .await;

    // Injected events, live and history-only; the members list follows them.
    server.inject("#c", "erin", ItemKind::Join, None, Delivery::Live);
    let join = dave.expect("erin's JOIN", |l| l.is("JOIN")).await;
    assert_eq!(join.nick(), "erin");
    assert_eq!(server.members("#c"), ["dave", "erin"]);
    let quiet = server.inject(
        "#c",
        "erin",
        ItemKind::Part(b"bye".to_vec()),
        None,
        Delivery::HistoryOnly,
    );
    server.say("#c", "frank!f@example.org", "live again");
    let next = dave.expect("frank's line", |l| l.is("PRIVMSG")).await;
    assert_eq!(next.prefix.as_deref(), Some(&b"frank!f@example.org"[..]));
    assert_eq!(server.members("#c"), ["dave"]);
    assert!(server.history("#c").contains(&quiet));

    // What the client sent, and a disconnect from the server side.
    let sent = server
        .wait_received("dave", "a CHATHISTORY with a label", |l| {
            l.is("CHATHISTORY") && l.tag("label") == Some("q1")
        })
        .await;
    assert_eq!(sent.param_str(0), "LATEST");
    assert!(server.received("dave").iter().any(|l| l.is("CAP")));
    assert!(server.disconnect("dave", "Killed by the test"));
    let last = dave.expect_closed().await;
    assert!(
        last.iter().any(|l| l.is("ERROR")),
        "no ERROR before the close: {last:?}"
    );
    server.wait_gone("dave").await;
    assert!(!server.clients()[0].open);
    let history = server.history("#c");
    let quit = history.last().expect("dave's quit is recorded");
    assert_eq!(quit.kind, ItemKind::Quit(b"Killed by the test".to_vec()));
}
