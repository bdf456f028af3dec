//! The upstream task against a small scripted server on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::irc::{Frame, LineCodec};

const WAIT: Duration = Duration::from_secs(15);

/// The task's events and its link's lines, the link driven by a task of its own.
type Events = Driven;

/// The server side of one test connection.
struct Peer<S> {
    wire: Framed<S, LineCodec>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Peer<S> {
    /// The next line from the upstream task.
    async fn next(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.wire.next())
                .await
                .expect("timed out waiting for a line from the client")
                .expect("client closed")
                .unwrap();
            if let Frame::Line(l) = frame {
                return Message::parse(l).unwrap();
            }
        }
    }

    /// The next line with this command, skipping others.
    async fn expect(&mut self, command: &str) -> Message {
        loop {
            let m = self.next().await;
            if m.command == command {
                return m;
            }
        }
    }

    async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wire.get_mut().write_all(bytes).await.unwrap();
    }

    /// Plays a CAP-less server: answers NICK/USER with 001–005 and 376.
    async fn welcome(&mut self, nick: &str, isupport: &str) {
        self.send(&format!(":irc.test 001 {nick} :Welcome")).await;
        self.send(&format!(":irc.test 004 {nick} irc.test testd-1 iow ntk"))
            .await;
        self.send(&format!(":irc.test 005 {nick} {isupport} :are supported"))
            .await;
        self.send(&format!(":irc.test 376 {nick} :End of MOTD"))
            .await;
    }

    /// Answers CAP LS with `caps`, ACKs whatever is requested, then welcomes.
    /// Returns the `CAP REQ` if there was one.
    async fn register_with_caps(&mut self, caps: &str) -> Option<Message> {
        self.expect("CAP").await;
        self.send(&format!(":irc.test CAP * LS :{caps}")).await;
        let mut nick = None;
        let mut req = None;
        loop {
            let m = self.next().await;
            match (m.command.as_str(), m.param(0)) {
                ("NICK", _) => nick = Some(m.param_str(0).unwrap().into_owned()),
                ("CAP", Some(b"REQ")) => {
                    let list = m.param_str(1).unwrap().into_owned();
                    self.send(&format!(":irc.test CAP * ACK :{list}")).await;
                    req = Some(m);
                }
                ("CAP", Some(b"END")) => break,
                _ => {}
            }
        }
        let nick = nick.expect("no NICK before CAP END");
        self.welcome(&nick, "CASEMAPPING=ascii NICKLEN=30").await;
        req
    }
}

async fn accept(listener: &TcpListener) -> Peer<TcpStream> {
    let (s, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    Peer {
        wire: Framed::new(s, LineCodec::default()),
    }
}

async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn config(addr: &str) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::new(7, addr, "ferry");
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.register_timeout = Duration::from_secs(10);
    cfg
}

fn start(cfg: UpstreamConfig) -> (UpstreamHandle, Events) {
    let (tx, rx) = mpsc::channel(64);
    let h = spawn(cfg, tx, CancellationToken::new());
    let driven = Driven::spawn(&h, rx);
    (h, driven)
}

async fn seen(rx: &mut Events) -> Seen {
    tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}

/// The next event of the task, skipping lines.
async fn event(rx: &mut Events) -> UpstreamEvent {
    loop {
        if let Seen::Event(ev) = seen(rx).await {
            return ev;
        }
    }
}

async fn registered(rx: &mut Events) -> Registration {
    loop {
        match event(rx).await {
            UpstreamEvent::Connecting { .. } | UpstreamEvent::Registering { .. } => {}
            UpstreamEvent::Registered(r) => return *r,
            other => panic!("expected Registered, got {other:?}"),
        }
    }
}

async fn message(rx: &mut Events) -> Message {
    match seen(rx).await {
        Seen::Line(m) => *m,
        other => panic!("expected a line, got {other:?}"),
    }
}

async fn disconnected(rx: &mut Events) -> (String, Retry) {
    loop {
        match event(rx).await {
            UpstreamEvent::Disconnected { reason, retry } => return (reason, retry),
            UpstreamEvent::Connecting { .. } | UpstreamEvent::Registering { .. } => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
}

async fn ended(handle: UpstreamHandle, rx: &mut Events) {
    tokio::time::timeout(WAIT, handle.task)
        .await
        .expect("task did not end")
        .unwrap();
    assert!(rx.next().await.is_none(), "event after the end");
}

#[tokio::test]
async fn cap_ls_multiline_with_empty_tokens() {
    let (l, addr) = listen().await;
    let (_h, mut rx) = start(config(&addr));
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 1 }
    ));
    let mut p = accept(&l).await;
    let ls = p.expect("CAP").await;
    assert_eq!(ls.to_bytes(), &b"CAP LS 302"[..]);
    p.send(":irc.test CAP * LS * :multi-prefix  sasl=PLAIN unknown-cap ")
        .await;
    p.send(":irc.test CAP * LS :server-time message-tags ")
        .await;
    let req = p.expect("CAP").await;
    assert_eq!(req.param(0), Some(&b"REQ"[..]));
    // sasl is offered but not configured: not requested.
    assert_eq!(
        req.param(1),
        Some(&b"server-time message-tags multi-prefix"[..])
    );
    p.send(":irc.test CAP * ACK :server-time message-tags multi-prefix ")
        .await;
    assert_eq!(p.expect("CAP").await.param(0), Some(&b"END"[..]));
    p.welcome("ferry", "CASEMAPPING=ascii CHANTYPES=# NICKLEN=30")
        .await;
    let reg = registered(&mut rx).await;
    let caps: Vec<&str> = reg.caps.iter().map(String::as_str).collect();
    assert_eq!(caps, ["message-tags", "multi-prefix", "server-time"]);
    assert_eq!(reg.isupport.casemapping, crate::irc::Casemapping::Ascii);
    assert_eq!(reg.server_name, b"irc.test");
    assert_eq!(reg.nick, b"ferry");
}

fn sasl_config(addr: &str) -> UpstreamConfig {
    let mut cfg = config(addr);
    cfg.sasl = Some(Sasl::Plain {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    cfg
}

async fn sasl_until_payload(p: &mut Peer<TcpStream>) {
    p.expect("CAP").await;
    p.send(":irc.test CAP * LS :sasl=PLAIN,EXTERNAL server-time")
        .await;
    let req = p.expect("CAP").await;
    assert_eq!(req.param(1), Some(&b"server-time sasl"[..]));
    p.send(":irc.test CAP * ACK :server-time sasl").await;
    let auth = p.expect("AUTHENTICATE").await;
    assert_eq!(auth.param(0), Some(&b"PLAIN"[..]));
    p.send("AUTHENTICATE +").await;
    let payload = p.expect("AUTHENTICATE").await;
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        payload.param(0).unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, b"\0alice\0s3cret");
}

#[tokio::test]
async fn sasl_plain_success() {
    let (l, addr) = listen().await;
    let (_h, mut rx) = start(sasl_config(&addr));
    let mut p = accept(&l).await;
    sasl_until_payload(&mut p).await;
    p.send(":irc.test 900 * * alice :You are now logged in as alice")
        .await;
    p.send(":irc.test 903 * :SASL authentication successful")
        .await;
    assert_eq!(p.expect("CAP").await.param(0), Some(&b"END"[..]));
    p.welcome("ferry", "NICKLEN=30").await;
    let reg = registered(&mut rx).await;
    assert_eq!(reg.account.as_deref(), Some(&b"alice"[..]));
    assert!(reg.caps.contains("sasl"));
}

#[tokio::test]
async fn sasl_failure_is_permanent() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(sasl_config(&addr));
    let mut p = accept(&l).await;
    sasl_until_payload(&mut p).await;
    p.send(":irc.test 904 * :SASL authentication failed").await;
    let (reason, retry) = disconnected(&mut rx).await;
    assert_eq!(retry, Retry::Never);
    assert!(reason.contains("904"), "{reason}");
    ended(h, &mut rx).await;
    // No reconnect.
    assert!(tokio::time::timeout(Duration::from_millis(500), l.accept())
        .await
        .is_err());
}

#[tokio::test]
async fn nick_in_use_falls_back() {
    let (l, addr) = listen().await;
    let (_h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.expect("CAP").await;
    p.send(":irc.test CAP * LS :").await;
    p.expect("USER").await;
    p.send(":irc.test 433 * ferry :Nickname is already in use")
        .await;
    let nick = p.expect("NICK").await;
    assert_eq!(nick.param(0), Some(&b"ferry_"[..]));
    p.welcome("ferry_", "NICKLEN=30").await;
    assert_eq!(registered(&mut rx).await.nick, b"ferry_");
}

#[tokio::test]
async fn erroneous_nick_is_shortened() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.nick = "averylongnick".into();
    let (_h, mut rx) = start(cfg);
    let mut p = accept(&l).await;
    p.expect("CAP").await;
    p.send(":irc.test CAP * LS :").await;
    p.expect("USER").await;
    p.send(":irc.test 432 * averylongnick :Erroneous Nickname")
        .await;
    let nick = p.expect("NICK").await;
    assert_eq!(nick.param(0), Some(&b"averylong"[..]));
    p.welcome("averylong", "NICKLEN=9").await;
    assert_eq!(registered(&mut rx).await.nick, b"averylong");
}

#[tokio::test]
async fn ping_is_answered_before_welcome() {
    let (l, addr) = listen().await;
    let (_h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.send("PING :early-1234").await;
    let pong = p.expect("PONG").await;
    assert_eq!(pong.param(0), Some(&b"early-1234"[..]));
    // The CAP LS sent first is still answered normally afterwards.
    p.send(":irc.test CAP * LS :").await;
    assert_eq!(p.expect("CAP").await.param(0), Some(&b"END"[..]));
    p.welcome("ferry", "").await;
    registered(&mut rx).await;
    // PINGs are not forwarded after registration either.
    p.send("PING :later").await;
    p.expect("PONG").await;
    p.send(":irc.test NOTICE ferry :after").await;
    assert_eq!(message(&mut rx).await.command, "NOTICE");
}

#[tokio::test]
async fn silent_server_is_detected_and_replaced() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.ping_interval = Duration::from_millis(300);
    cfg.ping_timeout = Duration::from_millis(300);
    let (h, mut rx) = start(cfg);
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    registered(&mut rx).await;
    // Our PINGs are answered: the connection stays up across several intervals.
    for _ in 0..3 {
        let ping = p.expect("PING").await;
        let token = ping.param_str(0).unwrap().into_owned();
        assert!(token.starts_with("ferry-"), "{token}");
        p.send(&format!(":irc.test PONG irc.test :{token}")).await;
    }
    // Then the server goes silent (but keeps the socket open).
    p.expect("PING").await;
    let t = std::time::Instant::now();
    let (reason, retry) = disconnected(&mut rx).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(reason.contains("PING"), "{reason}");
    assert!(matches!(retry, Retry::After(_)));
    // Registration resets the attempt counter.
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 1 }
    ));
    let _p2 = accept(&l).await;
    assert_eq!(UpstreamStats::get(&h.stats.reconnects), 1);
    drop(p);
}

#[tokio::test]
async fn tags_are_stripped_unless_message_tags_acked() {
    for (caps, expect_tags) in [("server-time", false), ("message-tags", true)] {
        let (l, addr) = listen().await;
        let (_h, mut rx) = start(config(&addr));
        let mut p = accept(&l).await;
        p.register_with_caps(caps).await;
        registered(&mut rx).await;
        let m = Message::new("PRIVMSG", ["#chan", "hello"]).with_tag("+draft/react", Some("x"));
        rx.send(m);
        let got = p.expect("PRIVMSG").await;
        assert_eq!(!got.tags.is_empty(), expect_tags, "caps {caps}");
        assert_eq!(got.param(1), Some(&b"hello"[..]));
        // Too long for one line: the trailing parameter is cut to fit 512 bytes.
        let long = Message::new(
            "PRIVMSG",
            [Bytes::from("#chan"), Bytes::from(vec![b'x'; 700])],
        );
        rx.send(long);
        let got = p.expect("PRIVMSG").await;
        assert_eq!(got.body_len(), 510);
    }
}

#[tokio::test]
async fn latin1_overlong_and_garbage_lines() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    registered(&mut rx).await;
    p.send_raw(b":bob!b@h PRIVMSG #chan :caf\xe9\r\n").await;
    let m = message(&mut rx).await;
    assert_eq!(m.param(1), Some(&b"caf\xe9"[..]));
    assert_eq!(m.prefix.as_deref(), Some(&b"bob!b@h"[..]));

    let mut overlong = b":bob!b@h PRIVMSG #chan :".to_vec();
    overlong.resize(9000, b'a');
    overlong.extend_from_slice(b"\r\n");
    p.send_raw(&overlong).await;
    p.send_raw(b":only-a-prefix\r\n@tag=1\r\nbad!command here\r\n")
        .await;
    p.send(":bob!b@h PRIVMSG #chan :still here").await;
    let m = message(&mut rx).await;
    assert_eq!(m.param(1), Some(&b"still here"[..]));
    assert_eq!(UpstreamStats::get(&h.stats.overlong), 1);
    assert_eq!(UpstreamStats::get(&h.stats.parse_errors), 3);
    assert!(UpstreamStats::get(&h.stats.lines_in) >= 8);
    assert!(UpstreamStats::get(&h.stats.lines_out) >= 3);
}

#[tokio::test]
async fn flood_control_paces_lines() {
    let (l, addr) = listen().await;
    let mut cfg = config(&addr);
    cfg.flood_burst = 2;
    cfg.flood_rate = 5.0;
    let (_h, mut rx) = start(cfg);
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    registered(&mut rx).await;
    let t = std::time::Instant::now();
    for i in 0..5 {
        let m = Message::new("PRIVMSG", ["#c".to_owned(), format!("line {i}")]);
        rx.send(m);
    }
    for i in 0..5 {
        let m = p.expect("PRIVMSG").await;
        assert_eq!(m.param_str(1).unwrap(), format!("line {i}"));
    }
    // Two at once, then three at 200 ms each.
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn quit_sends_quit_and_stops() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    registered(&mut rx).await;
    rx.quit(Bytes::from_static(b"see you"));
    let q = p.expect("QUIT").await;
    assert_eq!(q.param(0), Some(&b"see you"[..]));
    p.send("ERROR :Closing link: (ferry@127.0.0.1) [Quit: see you]")
        .await;
    drop(p);
    let (_, retry) = disconnected(&mut rx).await;
    assert_eq!(retry, Retry::Never);
    ended(h, &mut rx).await;
}

#[tokio::test]
async fn cancel_closes_without_reconnecting() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    registered(&mut rx).await;
    h.cancel.cancel();
    let (_, retry) = disconnected(&mut rx).await;
    assert_eq!(retry, Retry::Never);
    // The socket is closed without QUIT.
    match tokio::time::timeout(WAIT, p.wire.next()).await.unwrap() {
        None | Some(Err(_)) => {}
        Some(Ok(f)) => panic!("unexpected {f:?}"),
    }
    ended(h, &mut rx).await;
}

#[tokio::test]
async fn server_close_reconnects_with_backoff_and_ban_stops() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(config(&addr));
    // Refused during registration: a temporary failure, retried.
    let mut p = accept(&l).await;
    p.expect("USER").await;
    p.send("ERROR :Closing link: (ferry@127.0.0.1) [Server shutting down]")
        .await;
    drop(p);
    let (reason, retry) = disconnected(&mut rx).await;
    assert!(reason.contains("shutting down"), "{reason}");
    let Retry::After(d) = retry else {
        panic!("{retry:?}")
    };
    assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(200));
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 2 }
    ));
    // K-lined: permanent.
    let mut p = accept(&l).await;
    p.expect("USER").await;
    p.send("ERROR :Closing link: (ferry@127.0.0.1) [K-Lined: no bouncers]")
        .await;
    drop(p);
    let (_, retry) = disconnected(&mut rx).await;
    assert_eq!(retry, Retry::Never);
    ended(h, &mut rx).await;
}

#[tokio::test]
async fn gone_event_receiver_ends_the_task() {
    let (l, addr) = listen().await;
    let (h, rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.register_with_caps("").await;
    drop(rx);
    p.send(":irc.test NOTICE ferry :anyone?").await;
    tokio::time::timeout(WAIT, h.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn registration_ends_without_motd_after_quiet() {
    let (l, addr) = listen().await;
    let (_h, mut rx) = start(config(&addr));
    let mut p = accept(&l).await;
    p.expect("CAP").await;
    p.send(":irc.test CAP * LS :").await;
    p.expect("USER").await;
    p.send(":irc.test 001 ferry :Welcome").await;
    p.send(":irc.test 005 ferry NETWORK=Quiet :are supported")
        .await;
    let reg = registered(&mut rx).await;
    assert_eq!(reg.isupport.network.as_deref(), Some("Quiet"));
}

// TLS

struct TlsServer {
    listener: TcpListener,
    addr: String,
    acceptor: tokio_rustls::TlsAcceptor,
    fingerprint: String,
}

async fn tls_server() -> TlsServer {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let fingerprint = super::tls::fingerprint(&der);
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let (listener, addr) = listen().await;
    TlsServer {
        listener,
        addr,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    }
}

fn tls_config(addr: &str, verify: TlsVerify) -> UpstreamConfig {
    let mut cfg = config(addr);
    cfg.tls = true;
    cfg.tls_verify = verify;
    // A failed handshake is retried; keep the retry far away.
    cfg.backoff_min = Duration::from_secs(30);
    cfg.backoff_max = Duration::from_secs(30);
    cfg
}

#[tokio::test]
async fn tls_pin_accepts_the_pinned_cert() {
    let srv = tls_server().await;
    // Pins are accepted in openssl's colon format too.
    let pin = srv
        .fingerprint
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let (_h, mut rx) = start(tls_config(&srv.addr, TlsVerify::Pin(pin)));
    let (tcp, _) = srv.listener.accept().await.unwrap();
    let tls = srv.acceptor.accept(tcp).await.unwrap();
    let mut p = Peer {
        wire: Framed::new(tls, LineCodec::default()),
    };
    p.register_with_caps("").await;
    registered(&mut rx).await;
}

async fn tls_rejected(verify: TlsVerify) {
    let srv = tls_server().await;
    let addr = srv.addr.replace("127.0.0.1", "localhost");
    let (h, mut rx) = start(tls_config(&addr, verify));
    let (tcp, _) = srv.listener.accept().await.unwrap();
    // The client aborts the handshake.
    assert!(srv.acceptor.accept(tcp).await.is_err());
    let (reason, retry) = disconnected(&mut rx).await;
    assert!(reason.contains("TLS"), "{reason}");
    assert!(matches!(retry, Retry::After(_)));
    h.cancel.cancel();
}

#[tokio::test]
async fn tls_pin_rejects_another_cert() {
    tls_rejected(TlsVerify::Pin("00".repeat(32))).await;
}

#[tokio::test]
async fn tls_verify_rejects_self_signed() {
    tls_rejected(TlsVerify::Verify).await;
}

/// Issue 18, finding 5: the actor hears `Registering` once the socket is up, before
/// the server has said anything; with TLS only after the handshake, so a TLS
/// handshake that never finishes ends the attempt without it.
#[tokio::test]
async fn registering_is_reported_once_the_socket_is_up() {
    let (l, addr) = listen().await;
    let (h, mut rx) = start(config(&addr));
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 1 }
    ));
    let mut p = accept(&l).await;
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Registering { attempt: 1 }
    ));
    assert_eq!(p.expect("CAP").await.to_bytes(), &b"CAP LS 302"[..]);
    h.cancel.cancel();

    // TLS to a plaintext listener that says nothing: the handshake times out.
    let (l, addr) = listen().await;
    let mut cfg = tls_config(&addr, TlsVerify::Insecure);
    cfg.tls_timeout = Duration::from_millis(300);
    let (h, mut rx) = start(cfg);
    assert!(matches!(
        event(&mut rx).await,
        UpstreamEvent::Connecting { attempt: 1 }
    ));
    let _held = accept(&l).await;
    match event(&mut rx).await {
        UpstreamEvent::Disconnected { reason, .. } => {
            assert!(reason.contains("TLS"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    h.cancel.cancel();
}
