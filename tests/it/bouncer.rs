//! Ferry end to end: a real ircd upstream, Ferry in the middle, raw IRC
//! clients on both sides (a "watcher" directly on the ircd, the user's client
//! on Ferry).

use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::store::{HistoryQuery, SearchQuery, StoredMessage, UserId};

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd, NgircdOpts};

fn spec(ircd: &Ircd, nick: &str, channels: &[&str]) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: nick.into(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..NetworkSpec::default()
    }
}

/// A user `alice` (password `secret`) on network `test` in `channels`, connected.
async fn alice(ferry: &Ferry, ircd: &Ircd, channels: &[&str]) -> UserId {
    let id = ferry.add_user("alice", "secret").await;
    ferry.add_network(id, spec(ircd, "alice", channels)).await;
    ferry.wait_connected(id, "test", channels.len()).await;
    id
}

async fn watcher(ircd: &Ircd, nick: &str, chan: &str) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register(nick).await;
    w.join(chan).await;
    w
}

/// A user's newest 100 stored messages, oldest first, once the writer committed
/// everything relayed so far.
async fn backlog(ferry: &Ferry, user: UserId) -> Vec<StoredMessage> {
    ferry.services().writer.flush().await.unwrap();
    ferry
        .store()
        .history(&HistoryQuery {
            user,
            limit: 100,
            ..HistoryQuery::default()
        })
        .await
        .unwrap()
}

async fn relays_both_ways(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let id = alice(&ferry, &ircd, &["#ferry", "#rust"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;

    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN #ferry", |l| {
        l.is("JOIN") && l.param_str(0) == "#ferry"
    })
    .await;
    c.expect("NAMES with bob", |l| {
        l.is("353") && l.last_str().contains("bob")
    })
    .await;
    c.expect("burst JOIN #rust", |l| {
        l.is("JOIN") && l.param_str(0) == "#rust"
    })
    .await;

    bob.send("PRIVMSG #ferry :hello from the network").await;
    let l = c
        .expect("bob's message", |l| l.is("PRIVMSG") && l.nick() == "bob")
        .await;
    assert_eq!(l.last_str(), "hello from the network");

    // Latin-1 is relayed byte for byte, both ways.
    bob.send(b"PRIVMSG #ferry :caf\xe9 cr\xe8me").await;
    let l = c
        .expect("Latin-1 line", |l| {
            l.is("PRIVMSG") && l.nick() == "bob" && l.last_str() != "hello from the network"
        })
        .await;
    assert_eq!(l.param(1), Some(&b"caf\xe9 cr\xe8me"[..]));
    c.send(b"PRIVMSG #ferry :na\xefve reply").await;
    let l = bob
        .expect("alice's reply", |l| l.is("PRIVMSG") && l.nick() == "alice")
        .await;
    assert_eq!(l.param(1), Some(&b"na\xefve reply"[..]));
    // The server echoes alice's line to Ferry before anything bob says next.
    bob.send("PRIVMSG #ferry :sync").await;
    c.expect("sync", |l| l.is("PRIVMSG") && l.last_str() == "sync")
        .await;

    // Everything is in the backlog, bytes intact, searchable.
    let history = backlog(&ferry, id).await;
    let privmsgs: Vec<_> = history.iter().filter(|m| m.command == "PRIVMSG").collect();
    assert_eq!(privmsgs.len(), 4, "{history:#?}");
    assert!(privmsgs[1].raw.ends_with(b"caf\xe9 cr\xe8me"));
    assert_eq!(privmsgs[1].text, "café crème");
    assert!(privmsgs[2].raw.ends_with(b"na\xefve reply"));
    let found = ferry
        .store()
        .search(&SearchQuery {
            user: id,
            text: "hello".into(),
            limit: 10,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].sender, "bob");

    // The traffic shows in /metrics.
    let metrics = reqwest::get(format!("{}/metrics", ferry.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(value("ferry_upstream_lines_in_total ") >= 5.0);
    assert!(value("ferry_upstream_lines_out_total ") >= 1.0);
    assert!(value("ferry_messages_stored_total ") >= 7.0);
    assert!(value("ferry_messages_relayed_total ") >= 4.0);
}

#[tokio::test]
async fn relays_both_ways_sqlite() {
    relays_both_ways(Backend::Sqlite).await;
}

#[tokio::test]
async fn relays_both_ways_postgres() {
    relays_both_ways(Backend::Postgres).await;
}

#[tokio::test]
async fn ngircd_shortens_a_long_nick() {
    let ircd = Ircd::ngircd(NgircdOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(id, spec(&ircd, "alicewonderland", &["#ferry"]))
        .await;
    ferry.wait_connected(id, "test", 1).await;
    let status = ferry
        .services()
        .users
        .get(id)
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(status[0].nick.len() <= 9, "{status:?}");
    assert!("alicewonderland".starts_with(&status[0].nick), "{status:?}");
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == "#ferry")
        .await;
    bob.send("PRIVMSG #ferry :hi").await;
    c.expect("message via ngircd", |l| {
        l.is("PRIVMSG") && l.last_str() == "hi"
    })
    .await;
}

#[tokio::test]
async fn reconnects_and_rejoins_after_the_server_dies() {
    let mut ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = alice(&ferry, &ircd, &["#ferry"]).await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN", |l| l.is("JOIN")).await;

    ircd.kill();
    c.expect("disconnect notice", |l| {
        l.is("NOTICE") && l.last_str().contains("Disconnected")
    })
    .await;
    ircd.restart().await;
    c.expect("reconnect notice", |l| {
        l.is("NOTICE") && l.last_str().contains("Connected to test")
    })
    .await;
    c.expect("rejoin", |l| l.is("JOIN") && l.param_str(0) == "#ferry")
        .await;
    ferry.wait_connected(id, "test", 1).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    bob.send("PRIVMSG #ferry :welcome back").await;
    c.expect("message after reconnect", |l| {
        l.is("PRIVMSG") && l.last_str() == "welcome back"
    })
    .await;
}

#[tokio::test]
async fn detects_a_hung_server_by_ping_timeout() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start_on(
        crate::fixtures::ferry::TestDb::new(Backend::Sqlite).await,
        |c| {
            c.user.ping_interval = Duration::from_secs(2);
            c.user.ping_timeout = Duration::from_secs(2);
        },
    )
    .await;
    let id = alice(&ferry, &ircd, &["#ferry"]).await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN", |l| l.is("JOIN")).await;
    ircd.pause();
    let started = std::time::Instant::now();
    c.expect("disconnect notice", |l| {
        l.is("NOTICE") && l.last_str().contains("Disconnected")
    })
    .await;
    let took = started.elapsed();
    ircd.resume();
    assert!(
        took >= Duration::from_secs(2),
        "detected too early: {took:?}"
    );
    c.expect("reconnected", |l| {
        l.is("NOTICE") && l.last_str().contains("Connected to test")
    })
    .await;
    ferry.wait_connected(id, "test", 1).await;
}

#[tokio::test]
async fn replays_missed_backlog_to_a_returning_client() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;

    let mut c = ferry
        .client("alice@laptop", "test", "secret", &["server-time"])
        .await;
    bob.send("PRIVMSG #ferry :seen live").await;
    c.expect("live message", |l| {
        l.is("PRIVMSG") && l.last_str() == "seen live"
    })
    .await;
    c.send("QUIT :bye").await;
    c.expect_closed().await;

    for i in 0..3 {
        bob.send(format!("PRIVMSG #ferry :missed {i}")).await;
    }
    bob.roundtrip().await;
    // Wait until Ferry has seen them: a marker message through another client.
    let mut other = ferry.client("alice@phone", "test", "secret", &[]).await;
    bob.send("PRIVMSG #ferry :marker").await;
    other
        .expect("marker", |l| l.is("PRIVMSG") && l.last_str() == "marker")
        .await;

    let mut c = ferry
        .client("alice@laptop", "test", "secret", &["server-time"])
        .await;
    let mut got = Vec::new();
    while got.len() < 4 {
        let l = c.expect("replayed PRIVMSG", |l| l.is("PRIVMSG")).await;
        assert!(
            l.tag("time").is_some(),
            "replayed line without server-time: {}",
            l.raw_str()
        );
        got.push(l.last_str());
    }
    assert_eq!(got, ["missed 0", "missed 1", "missed 2", "marker"]);
}

#[tokio::test]
async fn two_clients_see_each_others_messages() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut a = ferry.client("alice@a", "test", "secret", &[]).await;
    let mut b = ferry.client("alice@b", "test", "secret", &[]).await;
    a.send("PRIVMSG #ferry :from client a").await;
    let l = b
        .expect("echo on the other client", |l| {
            l.is("PRIVMSG") && l.last_str() == "from client a"
        })
        .await;
    assert_eq!(l.nick(), "alice");
    bob.expect("message upstream", |l| {
        l.is("PRIVMSG") && l.last_str() == "from client a"
    })
    .await;
    // The sender did not ask for echo-message: it must not get its own line back.
    a.roundtrip().await;
    b.send("PRIVMSG #ferry :from client b").await;
    let l = a.expect("b's message", |l| l.is("PRIVMSG")).await;
    assert_eq!(
        l.last_str(),
        "from client b",
        "client a got its own message echoed"
    );
}

#[tokio::test]
async fn chathistory_is_served_from_the_store() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry
        .client(
            "alice",
            "test",
            "secret",
            &["draft/chathistory", "batch", "server-time", "message-tags"],
        )
        .await;
    for i in 0..5 {
        bob.send(format!("PRIVMSG #ferry :line {i}")).await;
    }
    c.expect("last live line", |l| {
        l.is("PRIVMSG") && l.last_str() == "line 4"
    })
    .await;
    c.send("CHATHISTORY LATEST #ferry * 3").await;
    let start = c
        .expect("batch start", |l| {
            l.is("BATCH") && l.param_str(0).starts_with('+')
        })
        .await;
    let mut got = Vec::new();
    loop {
        let l = c.recv().await.expect("open");
        if l.is("BATCH") && l.param_str(0).starts_with('-') {
            break;
        }
        if l.is("PRIVMSG") {
            assert_eq!(l.tag("batch"), Some(&start.param_str(0)[1..]));
            got.push(l.last_str());
        }
    }
    assert_eq!(got, ["line 2", "line 3", "line 4"]);
}

#[tokio::test]
async fn restart_keeps_the_backlog() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut ferry = Ferry::start(Backend::Postgres).await;
    let id = alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    bob.send("PRIVMSG #ferry :before the restart").await;
    c.expect("live", |l| l.is("PRIVMSG")).await;
    drop(c);
    ferry.restart().await;
    ferry.wait_connected(id, "test", 1).await;
    let found = ferry
        .store()
        .search(&SearchQuery {
            user: id,
            text: "restart".into(),
            limit: 10,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    // The channel is rejoined from the store and the client gets it in its burst.
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN after restart", |l| {
        l.is("JOIN") && l.param_str(0) == "#ferry"
    })
    .await;
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    let _ = id;
    for pass in ["alice/test:wrong", "nobody/test:secret"] {
        let mut c = TestClient::connect(&ferry.irc_addr()).await;
        c.send(format!("PASS {pass}")).await;
        c.send("NICK x").await;
        c.send("USER x 0 * :x").await;
        c.expect("464", |l| l.is("464")).await;
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn tls_upstream_with_a_pinned_certificate_and_sasl() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        services: true,
        ..InspOpts::default()
    })
    .await;
    ircd.register_account("alice", "hunter22").await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    let pin = format!("pin:{}", ircd.tls_cert_der_sha256().unwrap());
    ferry
        .add_network(
            id,
            NetworkSpec {
                addr: ircd.tls_addr().unwrap(),
                tls: true,
                tls_verify: Some(pin),
                sasl: Some("alice:hunter22".into()),
                ..spec(&ircd, "alice", &["#ferry"])
            },
        )
        .await;
    ferry.wait_connected(id, "test", 1).await;
    // The server knows us by our account: WHOIS shows it (330).
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.send("WHOIS alice").await;
    let l = c
        .expect("330 logged in as", |l| l.is("330") || l.is("318"))
        .await;
    assert!(l.is("330"), "not logged in: {}", l.raw_str());
    assert_eq!(l.param_str(2), "alice");
}

#[tokio::test]
async fn a_wrong_sasl_password_stops_retrying_and_says_so() {
    let ircd = Ircd::inspircd(InspOpts {
        services: true,
        ..InspOpts::default()
    })
    .await;
    ircd.register_account("alice", "hunter22").await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    let mut c_spec = spec(&ircd, "alice", &["#ferry"]);
    c_spec.sasl = Some("alice:wrong".into());
    ferry.add_network(id, c_spec).await;
    let handle = ferry.services().users.get(id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let reason = loop {
        let s = handle.status().await.unwrap().remove(0);
        if let ferry::user::ConnState::Disconnected {
            reason,
            retrying: false,
        } = s.state
        {
            break reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never gave up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.to_lowercase().contains("sasl"), "{reason}");
    // The user sees why when a client attaches.
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("not connected notice", |l| {
        l.is("NOTICE") && l.last_str().to_lowercase().contains("sasl")
    })
    .await;
}

#[tokio::test]
async fn clients_can_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let db = crate::fixtures::ferry::TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |c| {
        c.irc_tls = Some("127.0.0.1:0".parse().unwrap());
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let ircd = Ircd::ngircd(NgircdOpts::default()).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(id, spec(&ircd, "alice", &["#ferry"]))
        .await;
    let addr = ferry.running().bound.irc_tls.unwrap().to_string();
    let mut c = TestClient::connect_tls_insecure(&addr).await;
    c.send("PASS alice/test:secret").await;
    c.send("NICK alice").await;
    c.send("USER alice 0 * :alice").await;
    c.expect("001 over TLS", |l| l.is("001")).await;
}

#[tokio::test]
async fn replies_go_to_the_client_that_asked() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let _bob = watcher(&ircd, "bob", "#ferry").await;
    let mut a = ferry.client("alice@a", "test", "secret", &[]).await;
    let mut b = ferry.client("alice@b", "test", "secret", &[]).await;
    a.send("WHOIS bob").await;
    a.expect("whois reply", |l| l.is("311") && l.param_str(1) == "bob")
        .await;
    a.expect("end of whois", |l| l.is("318")).await;
    // b asks something else; the first reply it sees must be its own.
    b.send("WHOIS alice").await;
    let l = b.expect("a WHOIS reply", |l| l.is("311")).await;
    assert_eq!(
        l.param_str(1),
        "alice",
        "b received a reply meant for a: {}",
        l.raw_str()
    );
}

#[tokio::test]
async fn long_messages_are_split_by_bytes() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    let text: String = (0..120)
        .map(|i| format!("wörd{i} "))
        .collect::<String>()
        .trim_end()
        .to_owned();
    assert!(text.len() > 900);
    c.send(format!("PRIVMSG #ferry :{text}")).await;
    let mut got = Vec::new();
    while got.concat::<u8>().len() < text.len() {
        let l = bob
            .expect("a piece", |l| l.is("PRIVMSG") && l.nick() == "alice")
            .await;
        assert!(l.raw.len() <= 510, "line too long: {}", l.raw.len());
        assert!(
            std::str::from_utf8(l.param(1).unwrap()).is_ok(),
            "split inside a UTF-8 sequence"
        );
        got.push(l.param(1).unwrap().to_vec());
    }
    assert!(got.len() >= 2);
    assert_eq!(got.concat(), text.as_bytes());
}

#[tokio::test]
async fn keyed_channels_are_rejoined_after_a_restart() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#secret").await;
    bob.send("MODE #secret +k sesame").await;
    bob.expect("mode set", |l| l.is("MODE") && l.param_str(1) == "+k")
        .await;
    let mut ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(id, spec(&ircd, "alice", &["#secret sesame"]))
        .await;
    bob.expect("alice joins with the key", |l| {
        l.is("JOIN") && l.nick() == "alice"
    })
    .await;
    ferry.restart().await;
    bob.expect("alice quits on restart", |l| {
        l.is("QUIT") && l.nick() == "alice"
    })
    .await;
    bob.expect("alice rejoins with the key", |l| {
        l.is("JOIN") && l.nick() == "alice"
    })
    .await;
    ferry.wait_connected(id, "test", 1).await;
}

#[tokio::test]
async fn users_in_the_same_channel_share_a_member_list() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let alice = alice(&ferry, &ircd, &["#ferry"]).await;
    let carol = ferry.add_user("carol", "secret").await;
    ferry
        .add_network(carol, spec(&ircd, "carol", &["#ferry"]))
        .await;
    ferry.wait_connected(carol, "test", 1).await;
    assert_eq!(
        ferry.services().users.config().rosters.live(),
        1,
        "one roster for #ferry on this node"
    );

    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("carol", "test", "secret", &[]).await;
    c.expect("NAMES", |l| l.is("353")).await;
    bob.send("QUIT :gone").await;
    c.expect("bob quits", |l| l.is("QUIT") && l.nick() == "bob")
        .await;
    // The marker makes sure alice's connection has seen the QUIT too.
    let mut w = watcher(&ircd, "dave", "#ferry").await;
    w.send("PRIVMSG #ferry :marker").await;
    c.expect("marker", |l| l.is("PRIVMSG") && l.last_str() == "marker")
        .await;
    let mut a = ferry.client("alice", "test", "secret", &[]).await;
    let names = a.expect("NAMES", |l| l.is("353")).await;
    assert!(
        names.last_str().contains("carol") && !names.last_str().contains("bob"),
        "{}",
        names.raw_str()
    );
    // Each user's backlog has the QUIT, though one shared roster saw it first.
    for user in [alice, carol] {
        let h = backlog(&ferry, user).await;
        assert!(
            h.iter().any(|m| m.command == "QUIT" && m.sender == "bob"),
            "user {user}: {h:#?}"
        );
    }
}

#[tokio::test]
async fn the_wanted_nick_is_taken_back_when_it_frees_up() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut squatter = TestClient::connect(&ircd.addr()).await;
    squatter.register("alice").await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(id, spec(&ircd, "alice", &["#ferry"]))
        .await;
    ferry.wait_connected(id, "test", 1).await;
    let handle = ferry.services().users.get(id).unwrap();
    let fallback = handle.status().await.unwrap()[0].nick.clone();
    assert_ne!(fallback, "alice");
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    squatter.send("QUIT :bye").await;
    let l = bob
        .expect("Ferry takes the nick back", |l| {
            l.is("NICK") && l.nick() == fallback
        })
        .await;
    assert_eq!(l.param_str(0), "alice");
    // The fallback was never saved as the user's nick.
    let net = ferry.store().networks(id).await.unwrap().remove(0);
    assert_eq!(net.nick, "alice");
}

#[tokio::test]
async fn membership_events_are_stored_only_in_small_channels() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start_on(
        crate::fixtures::ferry::TestDb::new(Backend::Sqlite).await,
        |c| c.user.membership_events_max_members = 2,
    )
    .await;
    let id = alice(&ferry, &ircd, &["#small", "#big"]).await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("burst JOIN #big", |l| {
        l.is("JOIN") && l.param_str(0) == "#big"
    })
    .await;

    // #small ends with 2 members, #big with 4: bob's join makes #big 2 (stored),
    // carol's 3 and erin's 4 (not stored).
    let mut dave = watcher(&ircd, "dave", "#small").await;
    let mut bob = watcher(&ircd, "bob", "#big").await;
    c.expect("bob's JOIN", |l| l.is("JOIN") && l.nick() == "bob")
        .await;
    let _carol = watcher(&ircd, "carol", "#big").await;
    c.expect("carol's JOIN", |l| l.is("JOIN") && l.nick() == "carol")
        .await;
    let mut erin = watcher(&ircd, "erin", "#big").await;
    // Relayed live all the same.
    c.expect("erin's JOIN", |l| l.is("JOIN") && l.nick() == "erin")
        .await;
    erin.send("PART #big :bye").await;
    c.expect("erin's PART", |l| l.is("PART") && l.nick() == "erin")
        .await;
    dave.send("PART #small :bye").await;
    c.expect("dave's PART", |l| l.is("PART") && l.nick() == "dave")
        .await;
    bob.send("PRIVMSG #big :conversation is always kept").await;
    c.expect("bob's message", |l| l.is("PRIVMSG") && l.nick() == "bob")
        .await;

    let rows: Vec<(String, String, String)> = backlog(&ferry, id)
        .await
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.buffer).into_owned(),
                m.command.clone(),
                m.sender.clone(),
            )
        })
        .collect();
    let has = |buffer: &str, command: &str, sender: &str| {
        rows.iter()
            .any(|(b, c, s)| b == buffer && c == command && s == sender)
    };
    assert!(has("#small", "JOIN", "alice"), "{rows:?}");
    assert!(has("#big", "JOIN", "alice"), "{rows:?}");
    assert!(has("#small", "JOIN", "dave"), "{rows:?}");
    assert!(has("#small", "PART", "dave"), "{rows:?}");
    assert!(has("#big", "JOIN", "bob"), "{rows:?}");
    assert!(has("#big", "PRIVMSG", "bob"), "{rows:?}");
    assert!(!has("#big", "JOIN", "carol"), "{rows:?}");
    assert!(!has("#big", "JOIN", "erin"), "{rows:?}");
    assert!(!has("#big", "PART", "erin"), "{rows:?}");
}
