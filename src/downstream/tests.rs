//! In-process tests: `serve` on a free port with a real SQLite store and a
//! fake user actor, driven by a raw TCP client.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::serve;
use crate::config::DownstreamConfig;
use crate::irc::{ISupport, Message};
use crate::services::Services;
use crate::store::{NewMessage, NewNetwork, Store, TlsVerify, Writer, WriterConfig};
use crate::user::{
    Attached, ChannelView, ConnState, DownstreamId, Event, NetworkView, Outbound, UserHandle,
};

const WAIT: Duration = Duration::from_secs(20);

/// Attached clients' queues by downstream id.
type Queues = Arc<Mutex<Vec<(DownstreamId, mpsc::Sender<Outbound>)>>>;

struct Harness {
    addr: std::net::SocketAddr,
    /// Attached clients' queues, by downstream id, for playing the actor.
    clients: Queues,
    /// Lines clients sent on to the actor.
    from_clients: mpsc::UnboundedReceiver<(DownstreamId, Message)>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn stored(seq: i64, network: i64, user: i64, text: &str) -> NewMessage {
    let raw = format!(":bob!b@host PRIVMSG #Ferry :{text}");
    NewMessage {
        user_id: user,
        seq,
        network_id: network,
        buffer: b"#Ferry".to_vec(),
        buffer_key: b"#ferry".to_vec(),
        time: Utc.timestamp_opt(1_700_000_000 + seq, 0).unwrap(),
        sender: "bob".into(),
        command: "PRIVMSG".into(),
        raw: Bytes::from(raw),
        text: text.into(),
        msgid: None,
        epoch: 0,
        stream: None,
    }
}

fn view(network_id: i64) -> NetworkView {
    let mut isupport = ISupport::default();
    isupport.apply([&b"CHANTYPES=#"[..], b"PREFIX=(ov)@+", b"NETWORK=Test"]);
    NetworkView {
        network_id,
        network_name: "test".into(),
        state: ConnState::Connected,
        nick: b"alice".to_vec(),
        isupport,
        upstream_caps: BTreeSet::new(),
        user_modes: Vec::new(),
        userhost: None,
        motd: None,
        away: None,
        channels: vec![ChannelView {
            name: b"#Ferry".to_vec(),
            topic: Some(b"All aboard".to_vec()),
            topic_meta: None,
            members: vec![
                (b"@".to_vec(), b"alice".to_vec()),
                (Vec::new(), b"bob".to_vec()),
            ],
            detached: false,
        }],
    }
}

/// Starts the listener with one user `alice` (password `pa:ss/word`), one
/// network `test` holding three stored messages, and a fake actor that
/// answers attaches with `last_seq = 3` after queueing a duplicate of seq 3
/// and a new live line (seq 4).
async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let store = Store::open(&url).await.unwrap();
    let shutdown = CancellationToken::new();
    let (writer, _) = Writer::spawn(store.clone(), WriterConfig::default(), shutdown.clone());
    let user = store
        .create_user("alice", &crate::auth::hash_password("pa:ss/word"), false)
        .await
        .unwrap();
    let net = store
        .create_network(
            user.id,
            &NewNetwork {
                name: "test".into(),
                addr: "127.0.0.1:1".into(),
                tls: false,
                tls_verify: TlsVerify::Verify,
                nick: "alice".into(),
                username: None,
                realname: None,
                sasl: None,
                source_ip: None,
                channels: Vec::new(),
            },
        )
        .await
        .unwrap();
    let rows: Vec<_> = (1..=3)
        .map(|i| stored(i, net.id, user.id, &format!("stored {i}")))
        .collect();
    store.insert_messages(&rows).await.unwrap();
    // The fake actor owns the user like a real one would (its writes are fenced).
    let epoch = store
        .assign_user(user.id, Some("local"), 0)
        .await
        .unwrap()
        .unwrap();
    let fence = crate::store::Fence {
        user: user.id,
        node: "local".into(),
        epoch,
    };

    let services = Services::standalone(store, writer, shutdown.clone());
    let (events_tx, mut events) = mpsc::channel(16);
    services
        .users
        .insert(UserHandle::for_test(user.id, "alice", events_tx));
    let clients = Arc::new(Mutex::new(Vec::new()));
    let (fwd_tx, from_clients) = mpsc::unbounded_channel();
    let actor_clients = clients.clone();
    let network_id = net.id;
    tokio::spawn(async move {
        let mut next_id = 0;
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Attach(a, reply) => {
                    next_id += 1;
                    let live = |seq, text: &'static str| Outbound::Relay {
                        msg: Arc::new(
                            Message::new("PRIVMSG", ["#Ferry", text]).with_prefix("bob!b@host"),
                        ),
                        seq: Some(seq),
                        time: Utc.timestamp_opt(1_700_000_000 + seq, 0).unwrap(),
                        echo_of: None,
                        buffers: std::sync::Arc::from([]),
                    };
                    a.tx.send(live(3, "stored 3")).await.unwrap();
                    a.tx.send(live(4, "live 4")).await.unwrap();
                    actor_clients.lock().unwrap().push((next_id, a.tx));
                    let _ = reply.send(Ok(Attached {
                        id: next_id,
                        view: view(network_id),
                        last_seq: 3,
                        fence: fence.clone(),
                    }));
                }
                Event::FromClient { id, msg, .. } => {
                    let _ = fwd_tx.send((id, *msg));
                }
                Event::Detach { .. } => {}
                _ => {}
            }
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = DownstreamConfig {
        login_failure_delay: Duration::from_millis(200),
        registration_timeout: Duration::from_secs(30),
        ..DownstreamConfig::default()
    };
    tokio::spawn(serve(listener, None, services, cfg, shutdown.clone()));
    Harness {
        addr,
        clients,
        from_clients,
        shutdown,
        _dir: dir,
    }
}

struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    pings: u32,
}

impl Client {
    async fn connect(h: &Harness) -> Client {
        let (r, w) = TcpStream::connect(h.addr).await.unwrap().into_split();
        Client {
            r: BufReader::new(r),
            w,
            pings: 0,
        }
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next line, or `None` at end of stream.
    async fn line(&mut self) -> Option<String> {
        let mut buf = String::new();
        let n = tokio::time::timeout(WAIT, self.r.read_line(&mut buf))
            .await
            .expect("timed out waiting for a line")
            .unwrap();
        (n > 0).then(|| buf.trim_end().to_owned())
    }

    /// Reads lines until one contains `needle`; returns the lines before it and it.
    async fn until(&mut self, needle: &str) -> (Vec<String>, String) {
        let mut seen = Vec::new();
        loop {
            let l = self
                .line()
                .await
                .unwrap_or_else(|| panic!("closed before {needle:?}; saw {seen:#?}"));
            if l.contains(needle) {
                return (seen, l);
            }
            seen.push(l);
        }
    }

    /// A PING/PONG barrier: returns every line received before the PONG.
    async fn roundtrip(&mut self) -> Vec<String> {
        self.pings += 1;
        let token = format!("barrier{}", self.pings);
        self.send(&format!("PING {token}")).await;
        self.until(&format!("PONG ferry {token}")).await.0
    }

    async fn expect_closed(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(l) = self.line().await {
            seen.push(l);
        }
        seen
    }
}

fn privmsgs(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.contains("PRIVMSG"))
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let h = start().await;
    let mut outs = Vec::new();
    for pass in ["alice/test:wrong", "mallory/test:pa:ss/word"] {
        let mut c = Client::connect(&h).await;
        c.send(&format!("PASS {pass}")).await;
        c.send("NICK x").await;
        c.send("USER x 0 * :x").await;
        let started = std::time::Instant::now();
        let lines = c.expect_closed().await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "no delay before 464"
        );
        outs.push(lines);
    }
    assert_eq!(
        outs[0],
        [
            ":ferry 464 x :Invalid username or password",
            "ERROR :Closing link (invalid credentials)"
        ]
    );
    assert_eq!(outs[0], outs[1]);
}

#[tokio::test]
async fn unknown_network_names_the_users_networks() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    c.send("PASS alice/nope:pa:ss/word").await;
    c.send("NICK x").await;
    c.send("USER x 0 * :x").await;
    let lines = c.expect_closed().await;
    assert_eq!(
        lines,
        ["ERROR :Closing link (unknown network; log in as user/network with one of: test)"]
    );
}

#[tokio::test]
async fn pass_login_burst_then_replay_without_duplicates() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    c.send("CAP LS 302").await;
    c.send("PASS alice@laptop/test:pa:ss/word").await;
    c.send("NICK al").await;
    c.send("USER al 0 * :Alice").await;
    c.until(" LS ").await;
    c.send("CAP REQ :server-time").await;
    c.until(" ACK ").await;
    c.send("CAP END").await;
    let (_, welcome) = c.until(" 001 ").await;
    assert!(welcome.starts_with(":ferry 001 al "), "{welcome}");
    let mut lines = c.roundtrip().await;
    lines.retain(|l| !l.contains(" 00") && !l.contains(" 422 "));
    assert_eq!(
        lines,
        [
            ":al NICK alice",
            ":alice JOIN #Ferry",
            ":ferry 332 alice #Ferry :All aboard",
            ":ferry 353 alice = #Ferry :@alice bob",
            ":ferry 366 alice #Ferry :End of /NAMES list",
            "@time=2023-11-14T22:13:21.000Z :bob!b@host PRIVMSG #Ferry :stored 1",
            "@time=2023-11-14T22:13:22.000Z :bob!b@host PRIVMSG #Ferry :stored 2",
            "@time=2023-11-14T22:13:23.000Z :bob!b@host PRIVMSG #Ferry :stored 3",
            "@time=2023-11-14T22:13:24.000Z :bob!b@host PRIVMSG #Ferry :live 4",
        ]
    );
    c.send("QUIT :bye").await;
    assert_eq!(c.expect_closed().await, ["ERROR :Closing link (quit)"]);

    // The same client again: its position (4) was saved, nothing is replayed
    // but the (fake actor's) live line 4 is a duplicate too.
    let mut c = Client::connect(&h).await;
    c.send("PASS alice@laptop/test:pa:ss/word").await;
    c.send("NICK alice").await;
    c.send("USER al 0 * :Alice").await;
    c.until(" 366 ").await;
    assert_eq!(privmsgs(&c.roundtrip().await), Vec::<&str>::new());
}

#[tokio::test]
async fn sasl_plain_login_and_retry() {
    let h = start().await;
    let mut c = Client::connect(&h).await;
    c.send("CAP LS 302").await;
    c.send("NICK alice").await;
    c.send("USER a 0 * :a").await;
    c.send("CAP REQ sasl").await;
    c.until("ACK").await;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    c.send("AUTHENTICATE PLAIN").await;
    c.until("AUTHENTICATE +").await;
    c.send(&format!("AUTHENTICATE {}", b64(b"\0alice/test\0nope")))
        .await;
    c.until(" 904 ").await;
    c.send("AUTHENTICATE PLAIN").await;
    c.until("AUTHENTICATE +").await;
    c.send(&format!(
        "AUTHENTICATE {}",
        b64(b"\0alice/test\0pa:ss/word")
    ))
    .await;
    c.until(" 900 ").await;
    c.until(" 903 ").await;
    c.send("CAP END").await;
    c.until(":ferry 001 alice").await;
    c.until(" 366 alice #Ferry").await;
    // No position yet for client "default": the last stored messages replay.
    let replayed = c.roundtrip().await;
    assert_eq!(
        privmsgs(&replayed),
        [
            ":bob!b@host PRIVMSG #Ferry :stored 1",
            ":bob!b@host PRIVMSG #Ferry :stored 2",
            ":bob!b@host PRIVMSG #Ferry :stored 3",
            ":bob!b@host PRIVMSG #Ferry :live 4",
        ]
    );
}

async fn login(h: &Harness, caps: &str, client: &str) -> Client {
    let mut c = Client::connect(h).await;
    c.send("CAP LS 302").await;
    c.send(&format!("CAP REQ :{caps}")).await;
    c.send("CAP END").await;
    c.send(&format!("PASS alice@{client}/test:pa:ss/word"))
        .await;
    c.send("NICK alice").await;
    c.send("USER a 0 * :a").await;
    c.until(" 366 alice #Ferry").await;
    c.roundtrip().await;
    c
}

#[tokio::test]
async fn echo_only_with_echo_message() {
    let mut h = start().await;
    let mut plain = login(&h, "server-time", "one").await;
    let mut echo = login(&h, "echo-message", "two").await;
    for (c, text) in [(&mut plain, "from plain"), (&mut echo, "from echo")] {
        c.send(&format!("PRIVMSG #Ferry :{text}")).await;
        let (id, msg) = tokio::time::timeout(WAIT, h.from_clients.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.param(1), Some(text.as_bytes()));
        // Play the actor: relay the line to every attached client.
        let relay = Outbound::Relay {
            msg: Arc::new(msg.with_prefix("alice!a@host")),
            seq: None,
            time: Utc::now(),
            echo_of: Some(id),
            buffers: std::sync::Arc::from([]),
        };
        let clients = h.clients.lock().unwrap().clone();
        for (_, tx) in clients {
            tx.send(relay.clone()).await.unwrap();
        }
    }
    let plain_saw = plain.roundtrip().await;
    let echo_saw = echo.roundtrip().await;
    assert_eq!(privmsgs(&plain_saw).len(), 1, "{plain_saw:?}");
    assert!(
        plain_saw[0].ends_with("PRIVMSG #Ferry :from echo"),
        "{plain_saw:?}"
    );
    assert_eq!(
        privmsgs(&echo_saw),
        [
            ":alice!a@host PRIVMSG #Ferry :from plain",
            ":alice!a@host PRIVMSG #Ferry :from echo"
        ]
    );
    // QUIT never goes upstream.
    echo.send("QUIT").await;
    echo.expect_closed().await;
    plain.roundtrip().await;
    assert!(h.from_clients.try_recv().is_err());
}

#[tokio::test]
async fn chathistory_latest_and_before_in_batches() {
    let h = start().await;
    let mut c = login(
        &h,
        "draft/chathistory batch message-tags server-time",
        "hist",
    )
    .await;
    // No automatic replay; the live line still arrives.
    c.send("CHATHISTORY LATEST #FERRY * 2").await;
    let (_, start) = c.until("BATCH +").await;
    let id = start
        .split(' ')
        .nth(2)
        .unwrap()
        .trim_start_matches('+')
        .to_owned();
    assert_eq!(start, format!(":ferry BATCH +{id} chathistory #FERRY"));
    let (lines, _) = c.until(&format!("BATCH -{id}")).await;
    assert_eq!(
        lines,
        [
            format!("@time=2023-11-14T22:13:22.000Z;msgid=2;batch={id} :bob!b@host PRIVMSG #Ferry :stored 2"),
            format!("@time=2023-11-14T22:13:23.000Z;msgid=3;batch={id} :bob!b@host PRIVMSG #Ferry :stored 3"),
        ]
    );
    c.send("CHATHISTORY BEFORE #ferry msgid=3 5").await;
    let (_, start) = c.until("BATCH +").await;
    let id = start
        .split(' ')
        .nth(2)
        .unwrap()
        .trim_start_matches('+')
        .to_owned();
    let (lines, _) = c.until(&format!("BATCH -{id}")).await;
    assert_eq!(privmsgs(&lines).len(), 2);
    assert!(
        lines[0].ends_with("stored 1") && lines[1].ends_with("stored 2"),
        "{lines:?}"
    );
    c.send("CHATHISTORY BEFORE #ferry * 5").await;
    let (_, fail) = c.until("FAIL").await;
    assert_eq!(
        fail,
        ":ferry FAIL CHATHISTORY INVALID_PARAMS BEFORE * :Invalid message reference"
    );
}
