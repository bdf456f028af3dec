//! The upstream task against real servers: registration on InspIRCd and ngircd,
//! byte-faithful relay, reconnect after a crash, dead-server detection, TLS pinning.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::irc::{Casemapping, Message};
use ferry::store::TlsVerify;
use ferry::upstream::{
    spawn, Registration, Retry, UpstreamCommand, UpstreamConfig, UpstreamEvent, UpstreamHandle,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fixtures::client::TestClient;
use crate::fixtures::ircd::{InspOpts, Ircd, NgircdOpts};

/// Generous: a loaded 2-core box runs several servers at once.
const WAIT: Duration = Duration::from_secs(60);

type Events = mpsc::Receiver<(i64, UpstreamEvent)>;

fn config(addr: &str, nick: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::new(1, addr, nick);
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(1);
    cfg.register_timeout = Duration::from_secs(30);
    cfg
}

fn start(cfg: UpstreamConfig) -> (UpstreamHandle, Events) {
    let (tx, rx) = mpsc::channel(256);
    (spawn(cfg, tx, CancellationToken::new()), rx)
}

async fn event(rx: &mut Events) -> UpstreamEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for an upstream event")
        .expect("upstream task ended")
        .1
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
        match event(rx).await {
            UpstreamEvent::Message(m, _) if pred(&m) => return *m,
            UpstreamEvent::Message(..) => {}
            other => panic!("while waiting for {what}: {other:?}"),
        }
    }
}

async fn send(h: &UpstreamHandle, line: &[u8]) {
    let m = Message::parse(Bytes::copy_from_slice(line)).unwrap();
    h.commands
        .send(UpstreamCommand::Send(Box::new(m)))
        .await
        .unwrap();
}

/// Joins `chan` through the upstream task and waits for the server's 366.
async fn join(h: &UpstreamHandle, rx: &mut Events, chan: &str) {
    send(h, format!("JOIN {chan}").as_bytes()).await;
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
    let (h, mut rx) = start(config(&ircd.addr(), "twelvecharsx"));
    let reg = registered(&mut rx).await;
    assert_eq!(reg.nick, b"twelvecha");
    assert_eq!(reg.isupport.casemapping, Casemapping::Ascii);
    assert_eq!(reg.isupport.nicklen, Some(9));
    // ngircd offers no message-tags: a tagged line from the actor must reach
    // it without tags (else: 421) and be delivered.
    assert!(!reg.caps.contains("message-tags"));
    join(&h, &mut rx, "#tags").await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#tags").await;
    let tagged = Message::new("PRIVMSG", ["#tags", "tagged"]).with_tag("+draft/react", Some("x"));
    h.commands
        .send(UpstreamCommand::Send(Box::new(tagged)))
        .await
        .unwrap();
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
    let (h, mut rx) = start(config(&ircd.addr(), "ferrylat"));
    registered(&mut rx).await;
    join(&h, &mut rx, "#latin").await;
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
