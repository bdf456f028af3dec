//! Typed state events (issue 10, item 3): our nick, ISUPPORT and member lists are
//! tracked once, by the user actor, and reach IRC clients and websockets as typed
//! changes — no client reads NICK, `005` or NAMES lines to learn them. Against a real
//! InspIRCd, on SQLite and PostgreSQL: a nick change made by another client of the
//! same user reaches an attached IRC client (whose later replies use it) and the
//! websocket; a registration under a fallback nick is told to the IRC client with a
//! NICK line; the websocket's member list follows joins, parts, kicks, quits and
//! renames, and a NAMES reply another client asked for updates it; a gap marker
//! reaches both live; a server restarted with another configuration gives an
//! attached IRC client a `005` with the tokens that changed.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::admin::NetworkSpec;
use serde_json::Value;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::fixtures::relay::TcpRelay;
use crate::ws::{connect, login, until};

on_both_backends!(
    state_changes_reach_irc_clients_and_websockets,
    isupport_change_reaches_irc_clients
);

fn spec(addr: String) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr,
        nick: "alice".into(),
        channels: vec!["#c".to_owned()],
        ..NetworkSpec::default()
    }
}

/// An IRC client of alice on network `test`, after its burst (the end of `#c`'s
/// NAMES).
async fn irc_client(ferry: &Ferry) -> TestClient {
    let mut c = TestClient::connect(&ferry.irc_addr()).await;
    c.send("PASS alice/test:secret").await;
    c.register("alice").await;
    c.expect("the burst's NAMES of #c", |l| {
        l.is("366") && l.param_str(1) == "#c"
    })
    .await;
    c
}

async fn speaker(ircd: &Ircd, nick: &str) -> TestClient {
    let mut c = TestClient::connect(&ircd.addr()).await;
    c.register(nick).await;
    c.join("#c").await;
    c
}

/// What the web client keeps of `#c`: the `hello` snapshot's members, then the member
/// events (`names` replaces the list), as `web/js/app.js` applies them.
struct Members(BTreeMap<String, String>);

impl Members {
    fn from_hello(hello: &Value) -> Members {
        let buffer = hello["buffers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "#c")
            .expect("#c in hello");
        Members(members(&buffer["members"]))
    }

    fn apply(&mut self, ev: &Value) {
        let nick = |k: &str| ev[k].as_str().unwrap().to_owned();
        match ev["type"].as_str().unwrap() {
            "join" if ev["buffer"] == "#c" => {
                self.0.entry(nick("nick")).or_default();
            }
            "part" | "kick" if ev["buffer"] == "#c" => {
                self.0.remove(&nick("nick"));
            }
            "quit" => {
                self.0.remove(&nick("nick"));
            }
            "nick" => {
                if let Some(p) = self.0.remove(&nick("old")) {
                    self.0.insert(nick("new"), p);
                }
            }
            "names" if ev["buffer"] == "#c" => self.0 = members(&ev["members"]),
            _ => {}
        }
    }

    fn nicks(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn members(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["nick"].as_str().unwrap().to_owned(),
                m["prefix"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn state_changes_reach_irc_clients_and_websockets(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let relay = TcpRelay::start(ircd.addr().parse().unwrap()).await;
    let ferry = Ferry::start_on(TestDb::new(backend).await, |cfg| {
        cfg.user.backoff_min = Duration::from_millis(200);
        cfg.user.backoff_max = Duration::from_millis(500);
    })
    .await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(alice, spec(relay.addr().to_string()))
        .await;
    ferry.wait_connected(alice, "test", 1).await;
    let token = login(&ferry, "alice", "secret").await;
    let mut ws = connect(&ferry, &token, None).await;
    let hello = until(&mut ws, "hello", |e| e["type"] == "hello").await;
    let mut list = Members::from_hello(&hello);
    assert_eq!(list.nicks(), ["alice"], "{hello}");
    until(&mut ws, "synced", |e| e["type"] == "synced").await;
    let mut a = irc_client(&ferry).await;
    let mut b = irc_client(&ferry).await;

    // Members come and go; the websocket's list follows the actor's changes.
    let mut bob = speaker(&ircd, "bob").await;
    let mut carol = speaker(&ircd, "carol").await;
    let mut dave = speaker(&ircd, "dave").await;
    let _erin = speaker(&ircd, "erin").await;
    bob.send("NICK bobby").await;
    bob.expect("bob's NICK", |l| l.is("NICK")).await;
    carol.send("PART #c :later").await;
    carol.expect("carol's PART", |l| l.is("PART")).await;
    a.send("KICK #c dave :out").await;
    dave.expect("dave kicked", |l| l.is("KICK")).await;
    bob.send("QUIT :bye").await;
    let mut kicked = None;
    loop {
        let ev = until(&mut ws, "member events", |e| {
            matches!(
                e["type"].as_str(),
                Some("join" | "part" | "kick" | "quit" | "nick" | "names")
            )
        })
        .await;
        list.apply(&ev);
        if ev["type"] == "kick" {
            kicked = Some(ev.clone());
        }
        if ev["type"] == "quit" && ev["nick"] == "bobby" {
            assert!(ev["reason"].as_str().unwrap().ends_with("bye"), "{ev}");
            break;
        }
    }
    let kicked = kicked.expect("a kick event");
    assert_eq!(
        (
            &kicked["nick"],
            &kicked["by"],
            &kicked["reason"],
            &kicked["own"]
        ),
        (
            &Value::from("dave"),
            &Value::from("alice"),
            &Value::from("out"),
            &Value::from(false)
        )
    );
    assert_eq!(list.nicks(), ["alice", "erin"]);
    // A NAMES reply another client asked for goes to that client alone, yet the
    // actor's list it replaced reaches the websocket as `names`.
    a.send("NAMES #c").await;
    a.expect("the NAMES reply", |l| l.is("366")).await;
    let names = until(&mut ws, "names", |e| e["type"] == "names").await;
    assert_eq!(
        members(&names["members"]),
        BTreeMap::from([
            ("alice".to_owned(), "@".to_owned()),
            ("erin".to_owned(), String::new())
        ]),
        "{names}"
    );
    // A fresh socket's snapshot is the same list.
    let mut ws2 = connect(&ferry, &token, None).await;
    let hello = until(&mut ws2, "hello", |e| e["type"] == "hello").await;
    assert_eq!(Members::from_hello(&hello).nicks(), ["alice", "erin"]);
    drop(ws2);

    // Another client of the same user changes our nick: the attached client gets
    // the NICK, and its later replies address the new nick; the websocket too.
    b.send("NICK alice2").await;
    a.expect("our NICK", |l| l.is("NICK") && l.param_str(0) == "alice2")
        .await;
    let nick = until(&mut ws, "our nick", |e| e["type"] == "nick").await;
    assert_eq!(
        (&nick["old"], &nick["new"], &nick["own"]),
        (
            &Value::from("alice"),
            &Value::from("alice2"),
            &Value::from(true)
        ),
        "{nick}"
    );
    a.send("PASS again").await;
    let refused = a.expect("462", |l| l.is("462")).await;
    assert_eq!(refused.param_str(0), "alice2", "{}", a.transcript());
    a.send("PRIVMSG #c :as alice2").await;
    let own = until(&mut ws, "our line", |e| {
        e["type"] == "message" && e["text"] == "as alice2"
    })
    .await;
    assert_eq!(
        (&own["sender"], &own["own"]),
        (&Value::from("alice2"), &Value::from(true))
    );

    // A gap marker reaches both live: the websocket as a `GAP` message, the IRC
    // client as the NOTICE from `*ferry*` it is stored as.
    let now = chrono::Utc::now();
    ferry
        .services()
        .users
        .get(alice)
        .unwrap()
        .gap_marker(
            "[gap] typed".into(),
            now - chrono::Duration::seconds(1),
            now,
        )
        .await
        .unwrap();
    let gap = until(&mut ws, "the gap", |e| {
        e["type"] == "message" && e["kind"] == "GAP"
    })
    .await;
    assert_eq!(
        (&gap["buffer"], &gap["sender"], &gap["text"]),
        (
            &Value::from("#c"),
            &Value::from("*ferry*"),
            &Value::from("[gap] typed")
        ),
        "{gap}"
    );
    let line = a
        .expect("the gap NOTICE", |l| {
            l.is("NOTICE") && l.nick() == "*ferry*"
        })
        .await;
    assert_eq!(
        (line.param_str(0).as_str(), line.last_str().as_str()),
        ("#c", "[gap] typed")
    );

    // The connection drops and someone takes the nick meanwhile: Ferry registers
    // under a fallback. The IRC client is told with a NICK line (it saw no NICK from
    // the server) and uses the new nick; the websocket's lines are still `own`.
    relay.cut();
    a.expect("the disconnect notice", |l| {
        l.is("NOTICE") && l.last_str().starts_with("Disconnected from test")
    })
    .await;
    let mut thief = TestClient::connect(&ircd.addr()).await;
    thief.register("thief").await;
    loop {
        // Until the server has let go of the cut connection (the relay reset it).
        thief.send("ISON alice2").await;
        let on = thief.expect("303", |l| l.is("303")).await;
        if on.last_str().trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    thief.send("NICK alice2").await;
    thief.expect("the thief's NICK", |l| l.is("NICK")).await;
    relay.restore();
    let fallback = a
        .expect("the fallback NICK", |l| {
            l.is("NICK") && l.nick() == "alice2" && l.param_str(0) != "alice2"
        })
        .await;
    let fallback = fallback.param_str(0);
    a.send("PASS again").await;
    let refused = a.expect("462", |l| l.is("462")).await;
    assert_eq!(refused.param_str(0), fallback, "{}", a.transcript());
    let connected = until(&mut ws, "connected", |e| {
        e["type"] == "network" && e["state"] == "connected"
    })
    .await;
    assert_eq!(connected["nick"], fallback.as_str());
    a.expect("the rejoin", |l| l.is("JOIN") && l.nick() == fallback)
        .await;
    // The window of the disconnect gets its marker at the rejoin (InspIRCd offers no
    // history), typed on its way to both.
    let gap = until(&mut ws, "the window's gap", |e| {
        e["type"] == "message" && e["kind"] == "GAP"
    })
    .await;
    assert_eq!(
        (&gap["buffer"], &gap["own"]),
        (&Value::from("#c"), &Value::from(false))
    );
    a.expect("the window's gap NOTICE", |l| {
        l.is("NOTICE") && l.nick() == "*ferry*" && l.last_str().starts_with("[gap]")
    })
    .await;
    a.send("PRIVMSG #c :as the fallback").await;
    let own = until(&mut ws, "our line", |e| {
        e["type"] == "message" && e["text"] == "as the fallback"
    })
    .await;
    assert_eq!(own["own"], true, "{own}");
}

/// The network's ISUPPORT changes across a reconnect (InspIRCd restarted with
/// another network name): the attached IRC client gets a `005` with the token that
/// changed and nothing else, and a client attaching later gets it in its burst.
async fn isupport_change_reaches_irc_clients(backend: Backend) {
    let mut ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start_on(TestDb::new(backend).await, |cfg| {
        cfg.user.backoff_min = Duration::from_millis(200);
        cfg.user.backoff_max = Duration::from_millis(500);
    })
    .await;
    let alice = ferry.add_user("alice", "secret").await;
    ferry.add_network(alice, spec(ircd.addr())).await;
    ferry.wait_connected(alice, "test", 1).await;
    let mut a = irc_client(&ferry).await;
    assert!(
        a.transcript().contains("NETWORK=FerryTest"),
        "{}",
        a.transcript()
    );

    let conf = ircd.dir().join("inspircd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(r#"network="FerryTest""#), "{text}");
    std::fs::write(
        &conf,
        text.replace(r#"network="FerryTest""#, r#"network="FerryTwo""#),
    )
    .unwrap();
    ircd.restart().await;
    let changed = a.expect("the new 005", |l| l.is("005")).await;
    let params: Vec<String> = (0..3).map(|i| changed.param_str(i)).collect();
    assert_eq!(
        params,
        ["alice", "NETWORK=FerryTwo", "are supported by this server"],
        "{}",
        a.transcript()
    );
    assert!(changed.param(3).is_none(), "{}", changed.raw_str());
    a.expect("the rejoin", |l| l.is("JOIN") && l.param_str(0) == "#c")
        .await;
    let b = irc_client(&ferry).await;
    assert!(
        b.transcript().contains("NETWORK=FerryTwo"),
        "{}",
        b.transcript()
    );
}
