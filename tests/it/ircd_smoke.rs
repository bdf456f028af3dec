//! Tests of the fixtures themselves: the servers start, serve, enforce the limits we
//! configure, and can be killed, restarted, paused and resumed; the raw client speaks
//! plain TCP and TLS and is byte-faithful.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::fixtures::client::TestClient;
use crate::fixtures::ircd::{ConnFlood, InspOpts, Ircd, IrcdKind, NgircdOpts};

const LOOPBACK_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn inspircd_relays_raw_bytes_and_offers_ircv3() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    assert_eq!(ircd.kind(), IrcdKind::InspIrcd);

    let mut alice = TestClient::connect(&ircd.addr()).await;
    let welcome = alice
        .register_with_caps("alice", &["server-time", "message-tags"])
        .await;
    assert_eq!(welcome.param_str(0), "alice");
    let caps = alice.available_caps();
    for cap in [
        "server-time",
        "message-tags",
        "batch",
        "echo-message",
        "labeled-response",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
    }

    let mut bob = TestClient::connect(&ircd.addr()).await;
    assert!(bob.register("bob").await.is("001"));
    alice.join("#smoke").await;
    bob.join("#smoke").await;
    // Alice sees Bob's JOIN before she speaks, so Bob is surely in the channel.
    alice
        .expect("bob's JOIN", |l| l.is("JOIN") && l.nick() == "bob")
        .await;

    alice.send(b"PRIVMSG #smoke :caf\xe9").await;
    let msg = bob
        .expect("alice's PRIVMSG", |l| {
            l.is("PRIVMSG") && l.nick() == "alice"
        })
        .await;
    assert_eq!(msg.param(0), Some(&b"#smoke"[..]));
    assert_eq!(msg.param(1), Some(&b"caf\xe9"[..]));

    // With server-time negotiated, Alice's copy of Bob's reply is stamped.
    bob.send("PRIVMSG #smoke :hi").await;
    let reply = alice
        .expect("bob's PRIVMSG", |l| l.is("PRIVMSG") && l.nick() == "bob")
        .await;
    assert!(
        reply.tag("time").is_some(),
        "no server-time: {}",
        reply.raw_str()
    );
}

/// A burst is neither killed (`Excess Flood`, `RecvQ exceeded`) nor reordered. Note that
/// InspIRCd 3.15 still paces one client's input at about 10 KB/s once a backlog builds
/// (observed with fake lag off and huge thresholds), so keep floods in tests small.
#[tokio::test]
async fn inspircd_does_not_throttle_bursts() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut tx = TestClient::connect(&ircd.addr()).await;
    tx.register("sender").await;
    let mut rx = TestClient::connect(&ircd.addr()).await;
    rx.register("receiver").await;

    const N: usize = 500;
    for i in 0..N {
        tx.send(format!("PRIVMSG receiver :burst line {i}")).await;
    }
    tx.roundtrip().await;
    for i in 0..N {
        let line = rx.expect("a burst PRIVMSG", |l| l.is("PRIVMSG")).await;
        assert_eq!(line.param_str(1), format!("burst line {i}"));
    }
}

/// Two linked servers are one network: a client of each gets its own server's
/// welcome, sees the other's JOIN and lines both ways, with the same `msgid` (the
/// origin server's).
#[tokio::test]
async fn inspircd_linked_servers_are_one_network() {
    let (one, two) = Ircd::inspircd_linked(InspOpts::default()).await;
    let caps = ["message-tags", "server-time"];
    let mut a = TestClient::connect(&one.addr()).await;
    let welcome = a.register_with_caps("alice", &caps).await;
    assert_eq!(welcome.prefix.as_deref(), Some(&b"irc1.test"[..]));
    let mut b = TestClient::connect(&two.addr()).await;
    let welcome = b.register_with_caps("bob", &caps).await;
    assert_eq!(welcome.prefix.as_deref(), Some(&b"irc2.test"[..]));
    a.join("#link").await;
    b.join("#link").await;
    a.expect("bob's JOIN from irc2", |l| {
        l.is("JOIN") && l.nick() == "bob"
    })
    .await;
    a.send("PRIVMSG #link :from one").await;
    let got = b
        .expect("alice's line on irc2", |l| {
            l.is("PRIVMSG") && l.nick() == "alice"
        })
        .await;
    assert_eq!(got.last_str(), "from one");
    assert!(
        got.tag("msgid").is_some_and(|m| m.starts_with("1FT")),
        "{}",
        got.raw_str()
    );
    b.send("PRIVMSG #link :from two").await;
    let got = a
        .expect("bob's line on irc1", |l| {
            l.is("PRIVMSG") && l.nick() == "bob"
        })
        .await;
    assert_eq!(got.last_str(), "from two");
    assert!(
        got.tag("msgid").is_some_and(|m| m.starts_with("2FT")),
        "{}",
        got.raw_str()
    );
}

#[tokio::test]
async fn inspircd_localmax_refuses_third_connection_per_ip() {
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(2),
        ..InspOpts::default()
    })
    .await;
    let mut first = TestClient::connect(&ircd.addr()).await;
    first.register("first").await;
    let mut second = TestClient::connect(&ircd.addr()).await;
    second.register("second").await;

    // Refused at accept: the ERROR comes before we send anything.
    let mut third = TestClient::connect(&ircd.addr()).await;
    let lines = third.expect_closed().await;
    let error = lines.iter().find(|l| l.is("ERROR")).unwrap_or_else(|| {
        panic!("no ERROR\n{}", third.transcript());
    });
    assert!(
        error.last_str().ends_with(
            "[No more connections allowed from your host via this connect class (local)]"
        ),
        "{}",
        error.raw_str()
    );

    // Another loopback address is another host.
    let mut other = TestClient::connect_from(&ircd.addr(), LOOPBACK_2).await;
    let welcome = other.register("other").await;
    assert!(
        welcome.last_str().ends_with("@127.0.0.2"),
        "{}",
        welcome.raw_str()
    );
}

#[tokio::test]
async fn inspircd_connflood_throttles_a_burst() {
    let ircd = Ircd::inspircd(InspOpts {
        connflood: Some(ConnFlood {
            period_secs: 60,
            maxconns: 3,
        }),
        ..InspOpts::default()
    })
    .await;
    // InspIRCd 3 refuses the maxconns-th registration in a period, not the one after.
    for nick in ["flood1", "flood2"] {
        TestClient::connect(&ircd.addr()).await.register(nick).await;
    }
    for nick in ["flood3", "flood4"] {
        let mut c = TestClient::connect_from(&ircd.addr(), LOOPBACK_2).await;
        c.send(format!("NICK {nick}")).await;
        c.send(format!("USER {nick} 0 * :x")).await;
        let lines = c.expect_closed().await;
        assert!(
            lines
                .iter()
                .any(|l| l.is("ERROR") && l.last_str().ends_with("[Throttled]")),
            "{nick} not throttled\n{}",
            c.transcript()
        );
    }
}

#[tokio::test]
async fn ngircd_registers_and_enforces_nicklen_and_max_connections_ip() {
    let ircd = Ircd::ngircd(NgircdOpts {
        max_connections_ip: Some(2),
        ..NgircdOpts::default()
    })
    .await;
    assert_eq!(ircd.kind(), IrcdKind::Ngircd);
    let mut ok = TestClient::connect(&ircd.addr()).await;
    let welcome = ok.register("ninechars").await;
    assert_eq!(welcome.param_str(0), "ninechars");

    let mut long = TestClient::connect(&ircd.addr()).await;
    long.send("NICK tencharsxx").await;
    let refusal = long.expect("432", |l| l.is("432")).await;
    assert_eq!(refusal.param_str(1), "tencharsxx");

    // Two connections are open from 127.0.0.1: a third is refused at accept.
    let mut third = TestClient::connect(&ircd.addr()).await;
    let lines = third.expect_closed().await;
    assert!(
        lines.iter().any(|l| l.is("ERROR")
            && l.last_str() == "Connection refused, too many connections from your IP address"),
        "{}",
        third.transcript()
    );
    let mut other = TestClient::connect_from(&ircd.addr(), LOOPBACK_2).await;
    other.register("other").await;
}

async fn kill_and_restart(mut ircd: Ircd) {
    let addr = ircd.addr();
    let mut before = TestClient::connect(&addr).await;
    before.register("before").await;
    let old_pid = ircd.pid();

    ircd.kill();
    assert_eq!(ircd.pid(), None);
    before.expect_closed().await;

    ircd.restart().await;
    assert_eq!(ircd.addr(), addr);
    assert_ne!(ircd.pid(), old_pid);
    let mut after = TestClient::connect(&addr).await;
    after.register("before").await; // The nick is free again: a fresh server.
}

#[tokio::test]
async fn kill_and_restart_on_the_same_port() {
    kill_and_restart(Ircd::inspircd(InspOpts::default()).await).await;
    kill_and_restart(Ircd::ngircd(NgircdOpts::default()).await).await;
}

#[tokio::test]
async fn pause_stalls_the_server_and_resume_continues() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut c = TestClient::connect(&ircd.addr()).await;
    c.register("pauser").await;
    c.roundtrip().await;

    ircd.pause();
    c.send("PING :while-paused").await;
    assert!(
        c.recv_timeout(Duration::from_secs(2)).await.is_err(),
        "a paused server answered\n{}",
        c.transcript()
    );
    ircd.resume();
    c.expect("the PONG held while paused", |l| {
        l.is("PONG") && l.last_str() == "while-paused"
    })
    .await;
    c.roundtrip().await;
}

#[tokio::test]
async fn inspircd_serves_tls() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        ..InspOpts::default()
    })
    .await;
    let tls_addr = ircd.tls_addr().expect("TLS listener");
    assert_ne!(tls_addr, ircd.addr());
    let mut c = TestClient::connect_tls_insecure(&tls_addr).await;
    c.register("tlsuser").await;
    let pin = ircd.tls_cert_der_sha256().expect("cert fingerprint");
    assert_eq!(pin.len(), 64);
    assert_eq!(c.peer_cert_sha256(), Some(pin.as_str()));
    c.roundtrip().await;
}

#[tokio::test]
async fn inspircd_with_services_offers_sasl_for_registered_accounts() {
    use base64::Engine as _;

    let ircd = Ircd::inspircd(InspOpts {
        services: true,
        ..InspOpts::default()
    })
    .await;
    ircd.register_account("acct", "hunter22pass").await;

    let mut c = TestClient::connect(&ircd.addr()).await;
    c.send("CAP LS 302").await;
    c.send("NICK saslnick").await;
    c.send("USER saslnick 0 * :x").await;
    let ls = c
        .expect("CAP LS", |l| l.is("CAP") && l.param_str(1) == "LS")
        .await;
    assert!(
        ls.last_str().contains("sasl=EXTERNAL,PLAIN"),
        "{}",
        ls.raw_str()
    );
    c.send("CAP REQ :sasl").await;
    c.expect("CAP ACK", |l| l.is("CAP") && l.param_str(1) == "ACK")
        .await;
    c.send("AUTHENTICATE PLAIN").await;
    c.expect("AUTHENTICATE +", |l| l.is("AUTHENTICATE")).await;
    let creds = base64::engine::general_purpose::STANDARD.encode(b"acct\0acct\0hunter22pass");
    c.send(format!("AUTHENTICATE {creds}")).await;
    let logged_in = c.expect("900", |l| l.is("900")).await;
    assert_eq!(logged_in.param_str(2), "acct");
    c.expect("903", |l| l.is("903")).await;
    c.send("CAP END").await;
    c.expect("001", |l| l.is("001")).await;
}
