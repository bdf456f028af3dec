//! `soju.im/bouncer-networks` (+ `-notify`) and `draft/read-marker` from raw IRC
//! clients against an in-process node and a real InspIRCd, on SQLite and
//! PostgreSQL: list, add (the IRC server sees the connection), change, delete (the
//! connection quits), bind (a bound connection sees only its network and names it in
//! `BOUNCER_NETID`), notices to a second client for every change — from `BOUNCER`,
//! the user API and state changes —, a user with no network logging in over IRC and
//! adding one, and read markers moved both ways between an IRC client and a
//! websocket; notices for the admin API's network changes (the CLI's path on a
//! running node).

use ferry::admin::NetworkSpec;
use ferry::store::UserId;
use serde_json::json;

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::ws;

on_both_backends!(
    bouncer_networks_list_add_change_delete_with_notices,
    a_user_with_no_network_logs_in_and_adds_one_over_bouncer,
    markread_is_shared_between_irc_and_websocket_clients,
    admin_network_changes_are_announced,
);

const BOUNCER_CAPS: &[&str] = &[
    "soju.im/bouncer-networks",
    "soju.im/bouncer-networks-notify",
    "batch",
];

/// Logs in `user` with no network (a bouncer connection) with `caps`, then `extra`
/// lines before `CAP END` (a `BOUNCER BIND`); returns the client after its `001`.
async fn bouncer_client(
    ferry: &Ferry,
    user: &str,
    caps: &[&str],
    extra: &[String],
) -> (TestClient, Line) {
    let mut c = TestClient::connect(&ferry.irc_addr()).await;
    c.send("CAP LS 302").await;
    c.send(format!("CAP REQ :{}", caps.join(" "))).await;
    c.expect("CAP ACK", |l| l.is("CAP") && l.param_str(1) == "ACK")
        .await;
    c.send(format!("PASS {user}:secret")).await;
    c.send(format!("NICK {user}")).await;
    c.send(format!("USER {user} 0 * :{user}")).await;
    for l in extra {
        c.send(l).await;
    }
    c.send("CAP END").await;
    let welcome = c.expect("001 from ferry", |l| l.is("001")).await;
    (c, welcome)
}

/// Reads a `soju.im/bouncer-networks` batch: the `BOUNCER NETWORK` lines in it.
async fn network_batch(c: &mut TestClient) -> Vec<Line> {
    let start = c
        .expect("the networks batch", |l| {
            l.is("BATCH") && l.param_str(1) == "soju.im/bouncer-networks"
        })
        .await;
    let r = start.param_str(0).trim_start_matches('+').to_owned();
    let mut out = Vec::new();
    loop {
        let l = c.recv().await.expect("the batch goes on");
        if l.is("BATCH") && l.param_str(0) == format!("-{r}") {
            return out;
        }
        assert_eq!(l.tag("batch"), Some(r.as_str()), "{}", l.raw_str());
        assert!(
            l.is("BOUNCER") && l.param_str(0) == "NETWORK",
            "{}",
            l.raw_str()
        );
        out.push(l);
    }
}

/// The attributes of a `BOUNCER NETWORK` line.
fn attrs(l: &Line) -> Vec<(String, Option<String>)> {
    l.param_str(2)
        .split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (
                k.to_owned(),
                Some(v.replace("\\s", " ").replace("\\:", ";")),
            ),
            None => (kv.to_owned(), None),
        })
        .collect()
}

fn attr(l: &Line, key: &str) -> Option<String> {
    attrs(l)
        .into_iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v)
}

/// Waits for `BOUNCER NETWORK <id> …` satisfying `pred`.
async fn network_notice(
    c: &mut TestClient,
    what: &str,
    id: i64,
    pred: impl Fn(&Line) -> bool,
) -> Line {
    let id = id.to_string();
    c.expect(what, |l| {
        l.is("BOUNCER") && l.param_str(0) == "NETWORK" && l.param_str(1) == id && pred(l)
    })
    .await
}

/// Reads `BOUNCER NETWORK <id> …` notices until each of `wanted` (what, test) has
/// matched one, in any order.
/// What a notice must show, and a test of it.
type Wanted<'a> = (&'a str, &'a dyn Fn(&Line) -> bool);

async fn notices(c: &mut TestClient, id: i64, wanted: &[Wanted<'_>]) {
    let mut seen = vec![false; wanted.len()];
    let id = id.to_string();
    while seen.contains(&false) {
        let missing: Vec<&str> = wanted
            .iter()
            .zip(&seen)
            .filter(|(_, s)| !**s)
            .map(|((w, _), _)| *w)
            .collect();
        let l = c
            .expect(&missing.join(", "), |l| {
                l.is("BOUNCER") && l.param_str(0) == "NETWORK" && l.param_str(1) == id
            })
            .await;
        for (i, (_, pred)) in wanted.iter().enumerate() {
            if !seen[i] && pred(&l) {
                seen[i] = true;
                break;
            }
        }
    }
}

fn state_is(state: &'static str) -> impl Fn(&Line) -> bool {
    move |l| attr(l, "state").as_deref() == Some(state)
}

/// Sends a `BOUNCER` command and returns the answer: `BOUNCER <sub> …` or `FAIL`.
async fn bouncer(c: &mut TestClient, line: &str) -> Line {
    c.send(line).await;
    let sub = line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_ascii_uppercase();
    c.expect(&format!("the answer to {line:?}"), |l| {
        (l.is("BOUNCER") && l.param_str(0) == sub) || (l.is("FAIL") && l.param_str(0) == "BOUNCER")
    })
    .await
}

async fn expect_fail(c: &mut TestClient, line: &str, params: &[&str]) {
    let l = bouncer(c, line).await;
    let got: Vec<String> = (0..params.len()).map(|i| l.param_str(i)).collect();
    assert!(l.is("FAIL") && got == params, "{line:?}: {}", l.raw_str());
}

/// The RPL_WHOISUSER (311) of `nick`, or `None` for 401.
async fn whois(w: &mut TestClient, nick: &str) -> Option<Line> {
    w.send(format!("WHOIS {nick}")).await;
    let l = w
        .expect("WHOIS reply", |l| {
            (l.is("311") || l.is("401")) && l.param_str(1).eq_ignore_ascii_case(nick)
        })
        .await;
    l.is("311").then_some(l)
}

fn home(ircd: &Ircd, nick: &str) -> NetworkSpec {
    NetworkSpec {
        name: "home".into(),
        addr: ircd.addr(),
        nick: nick.into(),
        channels: vec!["#w".into()],
        ..NetworkSpec::default()
    }
}

async fn network_id(ferry: &Ferry, user: UserId, name: &str) -> i64 {
    ferry
        .store()
        .network_by_name(user, name)
        .await
        .unwrap()
        .expect("stored")
        .id
}

async fn bouncer_networks_list_add_change_delete_with_notices(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register("watcher").await;
    w.join("#w").await;
    ferry.add_network(alice, home(&ircd, "alice")).await;
    ferry.wait_connected(alice, "home", 1).await;
    let home_id = network_id(&ferry, alice, "home").await;
    let (host, port) = ircd
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();

    // Two bouncer connections (bound to no network): each gets the initial list.
    let (mut a, _) = bouncer_client(&ferry, "alice", BOUNCER_CAPS, &[]).await;
    let initial = network_batch(&mut a).await;
    assert_eq!(initial.len(), 1, "{}", a.transcript());
    let (mut b, _) = bouncer_client(&ferry, "alice", BOUNCER_CAPS, &[]).await;
    network_batch(&mut b).await;

    // LISTNETWORKS: every attribute of the network, its state connected.
    a.send("BOUNCER LISTNETWORKS").await;
    let list = network_batch(&mut a).await;
    assert_eq!(list.len(), 1);
    let l = &list[0];
    assert_eq!(l.param_str(1), home_id.to_string());
    for (k, v) in [
        ("name", "home"),
        ("host", host.as_str()),
        ("port", port.as_str()),
        ("tls", "0"),
        ("nickname", "alice"),
        ("state", "connected"),
    ] {
        assert_eq!(attr(l, k).as_deref(), Some(v), "{k} in {}", l.raw_str());
    }

    // ADDNETWORK: the IRC server sees the new connection; the other client is told
    // of the network, then of its state.
    let added = bouncer(
        &mut a,
        &format!(
            "BOUNCER ADDNETWORK name=second;host={host};port={port};tls=0;nickname=alice2;realname=Alice\\sTwo"
        ),
    )
    .await;
    assert!(added.is("BOUNCER"), "{}", a.transcript());
    let second: i64 = added.param_str(1).parse().expect("a network id");
    assert_eq!(second, network_id(&ferry, alice, "second").await);
    let full = |l: &Line| {
        attr(l, "name").as_deref() == Some("second")
            && attr(l, "nickname").as_deref() == Some("alice2")
            && attr(l, "realname").as_deref() == Some("Alice Two")
    };
    notices(
        &mut b,
        second,
        &[
            ("the new network's attributes", &full),
            ("the new network connected", &state_is("connected")),
        ],
    )
    .await;
    ferry.wait_connected(alice, "second", 0).await;
    let who = whois(&mut w, "alice2")
        .await
        .expect("alice2 is on the server");
    assert_eq!(who.last_str(), "Alice Two");

    // BIND: a connection bound to the new network names it and sees only it.
    let (mut c, _) = bouncer_client(
        &ferry,
        "alice",
        &["soju.im/bouncer-networks"],
        &[format!("BOUNCER BIND {second}")],
    )
    .await;
    let netid = c
        .expect("BOUNCER_NETID", |l| {
            l.is("005") && l.params.iter().any(|p| p.starts_with(b"BOUNCER_NETID="))
        })
        .await;
    assert!(
        netid
            .raw_str()
            .contains(&format!("BOUNCER_NETID={second} ")),
        "{}",
        netid.raw_str()
    );
    c.join("#w").await;
    w.expect("alice2 joins through the bound client", |l| {
        l.is("JOIN") && l.nick() == "alice2"
    })
    .await;
    // home's line in #w reaches home's clients, not this one.
    w.send("PRIVMSG #w :to everyone").await;
    c.expect("the channel line", |l| {
        l.is("PRIVMSG") && l.last_str() == "to everyone"
    })
    .await;
    c.roundtrip().await;
    assert!(
        !c.transcript().contains(":alice!"),
        "home's lines reached the bound client:\n{}",
        c.transcript()
    );
    assert!(
        c.transcript().contains("you are on network second"),
        "{}",
        c.transcript()
    );
    // A bad id closes the connection with INVALID_NETID.
    let mut bad = TestClient::connect(&ferry.irc_addr()).await;
    for l in [
        "CAP LS 302",
        "CAP REQ soju.im/bouncer-networks",
        "PASS alice:secret",
        "NICK alice",
        "USER alice 0 * :a",
        "BOUNCER BIND 987654",
        "CAP END",
    ] {
        bad.send(l).await;
    }
    let closing = bad.expect_closed().await;
    assert!(
        closing
            .iter()
            .any(|l| l.is("FAIL") && l.param_str(1) == "INVALID_NETID"),
        "{}",
        bad.transcript()
    );

    // CHANGENETWORK: a new nick is sent as NICK; the other client sees it.
    let changed = bouncer(
        &mut a,
        &format!("BOUNCER CHANGENETWORK {second} nickname=alice3"),
    )
    .await;
    assert!(
        changed.is("BOUNCER") && changed.param_str(1) == second.to_string(),
        "{}",
        a.transcript()
    );
    network_notice(&mut b, "the nick change", second, |l| {
        attr(l, "nickname").as_deref() == Some("alice3")
    })
    .await;
    w.expect("alice2 becomes alice3", |l| {
        l.is("NICK") && l.nick() == "alice2" && l.last_str() == "alice3"
    })
    .await;

    // A change through the user API reaches the IRC clients too, and its reconnect
    // shows as state changes.
    let token = ferry.api_token("alice", "secret").await;
    let r = reqwest::Client::new()
        .patch(format!("{}/api/networks/second", ferry.http_url()))
        .bearer_auth(&token)
        .json(&json!({ "realname": "Alice Three" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let api_change = |l: &Line| attr(l, "realname").as_deref() == Some("Alice Three");
    notices(
        &mut b,
        second,
        &[
            ("the API's change", &api_change),
            ("the reconnect", &state_is("disconnected")),
            ("connected again", &state_is("connected")),
        ],
    )
    .await;
    // The connection closed by the reconnect was the bound client's; alice3 rejoins
    // the channel it joined.
    c.expect_closed().await;
    w.expect("alice3 rejoins", |l| l.is("JOIN") && l.nick() == "alice3")
        .await;

    // Refusals, with soju's codes.
    expect_fail(
        &mut a,
        "BOUNCER ADDNETWORK name=x",
        &["BOUNCER", "NEED_ATTRIBUTE", "ADDNETWORK", "host"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER ADDNETWORK host={host};state=connected"),
        &["BOUNCER", "READ_ONLY_ATTRIBUTE", "ADDNETWORK", "*", "state"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER ADDNETWORK host={host};colour=red"),
        &["BOUNCER", "UNKNOWN_ATTRIBUTE", "ADDNETWORK", "*", "colour"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER ADDNETWORK host={host};port=x"),
        &["BOUNCER", "INVALID_ATTRIBUTE", "ADDNETWORK", "*", "port"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER ADDNETWORK name=home;host={host};port={port};tls=0"),
        &["BOUNCER", "INVALID_ATTRIBUTE", "ADDNETWORK", "*", "name"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER ADDNETWORK name=bad\\sname;host={host}"),
        &["BOUNCER", "INVALID_ATTRIBUTE", "ADDNETWORK", "*", "name"],
    )
    .await;
    expect_fail(
        &mut a,
        "BOUNCER CHANGENETWORK 987654 nickname=x",
        &["BOUNCER", "INVALID_NETID", "CHANGENETWORK", "987654"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER CHANGENETWORK {second} name=other"),
        &[
            "BOUNCER",
            "READ_ONLY_ATTRIBUTE",
            "CHANGENETWORK",
            &second.to_string(),
            "name",
        ],
    )
    .await;
    expect_fail(
        &mut a,
        "BOUNCER DELNETWORK 987654",
        &["BOUNCER", "INVALID_NETID", "DELNETWORK", "987654"],
    )
    .await;
    expect_fail(
        &mut a,
        "BOUNCER FROBNICATE",
        &["BOUNCER", "UNKNOWN_COMMAND", "FROBNICATE"],
    )
    .await;
    expect_fail(
        &mut a,
        &format!("BOUNCER BIND {home_id}"),
        &["BOUNCER", "REGISTRATION_IS_COMPLETED", "BIND"],
    )
    .await;
    // Another user's network is not found.
    let bob = ferry.add_user("bob", "secret").await;
    ferry
        .add_network(
            bob,
            NetworkSpec {
                name: "bobs".into(),
                addr: ircd.addr(),
                nick: "bob".into(),
                ..NetworkSpec::default()
            },
        )
        .await;
    let bobs = network_id(&ferry, bob, "bobs").await;
    expect_fail(
        &mut a,
        &format!("BOUNCER DELNETWORK {bobs}"),
        &["BOUNCER", "INVALID_NETID", "DELNETWORK", &bobs.to_string()],
    )
    .await;

    // DELNETWORK: the connection quits, the bound client is closed, the other client
    // is told the network is gone.
    let deleted = bouncer(&mut a, &format!("BOUNCER DELNETWORK {second}")).await;
    assert!(
        deleted.is("BOUNCER") && deleted.param_str(1) == second.to_string(),
        "{}",
        a.transcript()
    );
    network_notice(&mut b, "the removal", second, |l| l.param_str(2) == "*").await;
    w.expect("alice3 quits", |l| l.is("QUIT") && l.nick() == "alice3")
        .await;
    assert!(ferry
        .store()
        .network_by_name(alice, "second")
        .await
        .unwrap()
        .is_none());
    a.send("BOUNCER LISTNETWORKS").await;
    assert_eq!(network_batch(&mut a).await.len(), 1);
}

async fn a_user_with_no_network_logs_in_and_adds_one_over_bouncer(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let carol = ferry.add_user("carol", "secret").await;

    // A client that does not speak the extension still cannot log in.
    let mut plain = TestClient::connect(&ferry.irc_addr()).await;
    plain.send("PASS carol:secret").await;
    plain.send("NICK carol").await;
    plain.send("USER carol 0 * :c").await;
    let closing = plain.expect_closed().await;
    assert!(
        closing
            .iter()
            .any(|l| l.is("ERROR") && l.last_str().contains("no networks")),
        "{}",
        plain.transcript()
    );

    // One that does logs in bound to nothing: no BOUNCER_NETID value, an empty list.
    let (mut c, welcome) = bouncer_client(&ferry, "carol", BOUNCER_CAPS, &[]).await;
    assert_eq!(welcome.param_str(0), "carol");
    let isupport = c.expect("005", |l| l.is("005")).await;
    assert!(
        isupport.params.iter().any(|p| p == b"BOUNCER_NETID"),
        "{}",
        isupport.raw_str()
    );
    assert!(network_batch(&mut c).await.is_empty());
    // Commands for a network are refused; BouncerServ answers.
    c.send("JOIN #x").await;
    c.expect("421 for JOIN", |l| l.is("421")).await;
    c.send("PRIVMSG BouncerServ :network status").await;
    c.expect("BouncerServ's answer", |l| {
        l.is("NOTICE") && l.nick() == "BouncerServ"
    })
    .await;
    c.send("MARKREAD #x").await;
    c.expect("MARKREAD refused", |l| {
        l.is("FAIL") && l.param_str(0) == "MARKREAD"
    })
    .await;

    // ADDNETWORK with defaults (name: the host; nick: the user's name).
    let (host, port) = ircd
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();
    let added = bouncer(
        &mut c,
        &format!("BOUNCER ADDNETWORK host={host};port={port};tls=0"),
    )
    .await;
    assert!(added.is("BOUNCER"), "{}", c.transcript());
    let id: i64 = added.param_str(1).parse().unwrap();
    ferry.wait_connected(carol, &host, 0).await;
    c.send("BOUNCER LISTNETWORKS").await;
    let list = network_batch(&mut c).await;
    assert_eq!(list.len(), 1, "{}", c.transcript());
    assert_eq!(list[0].param_str(1), id.to_string());
    assert_eq!(attr(&list[0], "name").as_deref(), Some(host.as_str()));
    assert_eq!(attr(&list[0], "nickname").as_deref(), Some("carol"));
    assert_eq!(attr(&list[0], "state").as_deref(), Some("connected"));
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register("watcher").await;
    assert!(whois(&mut w, "carol").await.is_some(), "{}", w.transcript());
    let stored = ferry.store().networks(carol).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].addr, ircd.addr());
    assert!(!stored[0].tls);
}

/// The `time` tag and id of a relayed channel line.
async fn line_with_time(c: &mut TestClient, text: &str) -> String {
    let l = c
        .expect(text, |l| l.is("PRIVMSG") && l.last_str() == text)
        .await;
    l.tag("time").expect("server-time").to_owned()
}

async fn markread(c: &mut TestClient, target: &str) -> Line {
    c.expect(&format!("MARKREAD {target}"), |l| {
        l.is("MARKREAD") && l.param_str(0) == target
    })
    .await
}

async fn markread_is_shared_between_irc_and_websocket_clients(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register("speaker").await;
    w.join("#w").await;
    ferry.add_network(alice, home(&ircd, "alice")).await;
    ferry.wait_connected(alice, "home", 1).await;
    let caps = ["draft/read-marker", "server-time", "message-tags"];

    // Nothing read yet: `*`, right after the JOIN and before NAMES' end.
    let mut i = ferry.client("alice", "home", "secret", &caps).await;
    let join = i.expect("JOIN #w", |l| l.is("JOIN")).await;
    assert_eq!(join.param_str(0), "#w");
    let first = i.recv().await.unwrap();
    assert!(first.is("MARKREAD"), "{}", i.transcript());
    assert_eq!(first.param_str(0), "#w");
    assert_eq!(first.param_str(1), "*", "{}", i.transcript());
    i.expect("366", |l| l.is("366")).await;
    assert!(
        i.transcript().find("MARKREAD #w").unwrap() < i.transcript().find(" 366 ").unwrap(),
        "{}",
        i.transcript()
    );

    let token = ws::login(&ferry, "alice", "secret").await;
    let mut s = ws::connect(&ferry, &token, None).await;
    ws::until(&mut s, "hello", |e| e["type"] == "hello").await;

    let mut times = Vec::new();
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        w.send(format!("PRIVMSG #w :{text}")).await;
        times.push(line_with_time(&mut i, text).await);
        let ev = ws::until(&mut s, text, |e| {
            e["type"] == "message" && e["text"] == text
        })
        .await;
        ids.push(ev["id"].as_i64().expect("an id"));
        // A marker set by time reads every line of its millisecond: let the clock
        // pass this line's, so that each line has a time of its own (a wait for the
        // clock, not for an event).
        let t = chrono::DateTime::parse_from_rfc3339(times.last().unwrap()).unwrap();
        while chrono::Utc::now() <= t + chrono::Duration::milliseconds(1) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    // IRC → web: the websocket's read event names the message read; the IRC client is
    // told too.
    i.send(format!("MARKREAD #w timestamp={}", times[1])).await;
    let m = markread(&mut i, "#w").await;
    assert_eq!(m.param_str(1), format!("timestamp={}", times[1]));
    let ev = ws::until(&mut s, "read", |e| e["type"] == "read").await;
    assert_eq!(ev["network"], "home");
    assert_eq!(ev["buffer"], "#w");
    assert_eq!(ev["id"].as_i64(), Some(ids[1]), "{ev} {times:?}");

    // Web → IRC.
    ws::send(
        &mut s,
        json!({ "type": "read", "network": "home", "buffer": "#w", "last_id": ids[2] }),
    )
    .await;
    let m = markread(&mut i, "#w").await;
    assert_eq!(
        m.param_str(1),
        format!("timestamp={}", times[2]),
        "{}",
        i.transcript()
    );
    let stored = ferry
        .store()
        .buffers(network_id(&ferry, alice, "home").await)
        .await
        .unwrap();
    assert_eq!(
        stored.iter().find(|b| b.name == b"#w").unwrap().read_marker,
        ids[2]
    );

    // Never backwards: an older time is answered with the marker as it stands.
    i.send(format!("MARKREAD #w timestamp={}", times[0])).await;
    let m = markread(&mut i, "#w").await;
    assert_eq!(m.param_str(1), format!("timestamp={}", times[2]));
    // A query, and refusals.
    i.send("MARKREAD #w").await;
    assert_eq!(
        markread(&mut i, "#w").await.param_str(1),
        format!("timestamp={}", times[2])
    );
    i.send("MARKREAD").await;
    i.expect("NEED_MORE_PARAMS", |l| {
        l.is("FAIL") && l.param_str(1) == "NEED_MORE_PARAMS"
    })
    .await;
    i.send("MARKREAD #w when=now").await;
    i.expect("INVALID_PARAMS", |l| {
        l.is("FAIL") && l.param_str(1) == "INVALID_PARAMS"
    })
    .await;

    // A channel joined later gets its marker right after our JOIN.
    i.send("JOIN #later").await;
    i.expect("our JOIN", |l| l.is("JOIN") && l.param_str(0) == "#later")
        .await;
    let next = i.recv().await.unwrap();
    assert!(
        next.is("MARKREAD") && next.param_str(0) == "#later" && next.param_str(1) == "*",
        "{}",
        i.transcript()
    );

    // A client attaching later gets the marker in its burst.
    let mut j = ferry.client("alice", "home", "secret", &caps).await;
    assert_eq!(
        markread(&mut j, "#w").await.param_str(1),
        format!("timestamp={}", times[2])
    );
    // A client without the capability never sees MARKREAD.
    let mut k = ferry
        .client("alice", "home", "secret", &["server-time"])
        .await;
    i.send(format!(
        "MARKREAD #w timestamp={}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    ))
    .await;
    w.send("PRIVMSG #w :barrier").await;
    k.expect("the barrier", |l| {
        l.is("PRIVMSG") && l.last_str() == "barrier"
    })
    .await;
    assert!(!k.transcript().contains("MARKREAD"), "{}", k.transcript());
}

/// A network the admin API adds (as `ferry network add` does through the running
/// node) or removes is announced to the user's bouncer-networks-notify clients.
async fn admin_network_changes_are_announced(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let carol = ferry.add_user("carol", "secret").await;
    ferry.add_network(carol, home(&ircd, "carol")).await;
    ferry.wait_connected(carol, "home", 1).await;
    let (mut c, _) = bouncer_client(&ferry, "carol", BOUNCER_CAPS, &[]).await;
    assert_eq!(network_batch(&mut c).await.len(), 1, "{}", c.transcript());

    let admin = ferry.services().node.admin_token.token.clone();
    let http = reqwest::Client::new();
    let spec = NetworkSpec {
        name: "work".into(),
        addr: ircd.addr(),
        nick: "carol2".into(),
        ..NetworkSpec::default()
    };
    let r = http
        .post(format!(
            "{}/api/admin/users/carol/networks",
            ferry.http_url()
        ))
        .bearer_auth(&admin)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let id = network_id(&ferry, carol, "work").await;
    let added = network_notice(&mut c, "the added network", id, |l| {
        attr(l, "name").as_deref() == Some("work")
    })
    .await;
    assert_eq!(attr(&added, "nickname").as_deref(), Some("carol2"));
    assert_eq!(
        attr(&added, "host").as_deref(),
        ircd.addr().rsplit_once(':').map(|h| h.0)
    );

    let r = http
        .delete(format!(
            "{}/api/admin/users/carol/networks/work",
            ferry.http_url()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    network_notice(&mut c, "the removed network", id, |l| l.param_str(2) == "*").await;
    c.send("BOUNCER LISTNETWORKS").await;
    assert_eq!(network_batch(&mut c).await.len(), 1, "{}", c.transcript());
}
