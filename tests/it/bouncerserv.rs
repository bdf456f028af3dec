//! BouncerServ (`downstream/bouncerserv`) from a raw IRC client attached to Ferry,
//! against a real InspIRCd on SQLite and PostgreSQL: every command, what the IRC
//! server sees of it (a new connection, a NICK, a QUIT), its refusals, and that no
//! line addressed to BouncerServ ever reaches the server (a client there is named
//! `BouncerServ` and must hear nothing).

use ferry::admin::NetworkSpec;
use ferry::store::Sasl;

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    bouncerserv_manages_a_users_networks,
    bouncerserv_admin_commands,
);

/// Sends `command` to BouncerServ and returns the text of its NOTICEs (all of them:
/// Ferry answers a line before it reads the next, so its `PONG` comes after).
async fn ask(c: &mut TestClient, command: &str) -> Vec<String> {
    c.send(format!("PRIVMSG BouncerServ :{command}")).await;
    c.send("PING :bouncerserv-barrier").await;
    let mut out = Vec::new();
    loop {
        let l = c
            .expect("BouncerServ's answer", |l| {
                l.is("NOTICE") || (l.is("PONG") && l.last_str() == "bouncerserv-barrier")
            })
            .await;
        if l.is("PONG") {
            break;
        }
        if l.nick() == "BouncerServ" {
            let prefix = String::from_utf8_lossy(l.prefix.as_deref().unwrap_or_default());
            assert!(
                prefix.starts_with("BouncerServ!BouncerServ@"),
                "from {prefix}"
            );
            out.push(l.last_str());
        }
    }
    assert!(!out.is_empty(), "BouncerServ said nothing to {command:?}");
    out
}

/// Asks and expects one answer line containing `says`.
async fn expect_answer(c: &mut TestClient, command: &str, says: &str) -> Vec<String> {
    let out = ask(c, command).await;
    assert!(
        out.iter().any(|l| l.contains(says)),
        "{command:?}: expected {says:?} in {out:?}"
    );
    out
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

/// A client on the IRC server itself, in `chan`.
async fn watcher(ircd: &Ircd, nick: &str, chan: &str) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register(nick).await;
    w.join(chan).await;
    w
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

/// Nothing addressed to BouncerServ reached the IRC server: the client named so there
/// hears the probe `from` sends it, and no other message.
async fn heard_nothing(spy: &mut TestClient, from: &mut TestClient) {
    from.send("PRIVMSG BouncerServ :probe").await;
    spy.expect("the probe", |l| l.is("PRIVMSG") && l.last_str() == "probe")
        .await;
    let t = spy.transcript();
    let heard: Vec<&str> = t
        .lines()
        .filter(|l| {
            l.starts_with("  << ")
                && ["PRIVMSG", "NOTICE", "TAGMSG"]
                    .iter()
                    .any(|c| l.contains(&format!(" {c} BouncerServ")))
        })
        .collect();
    assert_eq!(
        heard.len(),
        1,
        "a line to BouncerServ reached the IRC server:\n{t}"
    );
}

async fn bouncerserv_manages_a_users_networks(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let alice = ferry.add_user("alice", "secret").await;
    // A user of the IRC server named BouncerServ: anything passed upstream reaches it.
    let mut spy = TestClient::connect(&ircd.addr()).await;
    spy.register("BouncerServ").await;
    let mut w = watcher(&ircd, "watcher", "#w").await;
    ferry.add_network(alice, home(&ircd, "alice")).await;
    ferry.wait_connected(alice, "home", 1).await;
    w.expect("alice joins", |l| l.is("JOIN") && l.nick() == "alice")
        .await;
    let mut c = ferry.client("alice", "home", "secret", &[]).await;

    // help, and help for one command.
    let out = expect_answer(&mut c, "help", "network create").await;
    for command in [
        "network status",
        "network update",
        "network delete",
        "sasl set-plain",
        "sasl reset",
        "channel status",
        "user update",
        "server status",
    ] {
        assert!(
            out.iter().any(|l| l.contains(command)),
            "{command}: {out:?}"
        );
    }
    expect_answer(&mut c, "HELP network create", "usage: network create -addr").await;
    expect_answer(&mut c, "help frobnicate", "no command \"frobnicate\"").await;
    // A NOTICE or TAGMSG to BouncerServ is swallowed without an answer.
    c.send("NOTICE BouncerServ :help").await;
    c.send("@+typing=active TAGMSG BouncerServ").await;

    // network create: the IRC server sees the new connection, as given.
    expect_answer(
        &mut c,
        &format!(
            "network create -addr irc+insecure://{} -name second -nick alice2 -username al2 \
             -realname \"Alice Two\"",
            ircd.addr()
        ),
        "created network \"second\"",
    )
    .await;
    ferry.wait_connected(alice, "second", 0).await;
    let who = whois(&mut w, "alice2")
        .await
        .expect("alice2 is on the server");
    assert_eq!(who.param_str(2), "al2", "{}", w.transcript());
    assert_eq!(who.last_str(), "Alice Two");
    let second = ferry
        .store()
        .network_by_name(alice, "second")
        .await
        .unwrap()
        .expect("stored");
    assert!(!second.tls);
    assert_eq!(second.addr, ircd.addr());

    // network status: both, with their state.
    let out = ask(&mut c, "network status").await;
    assert!(
        out.iter()
            .any(|l| l.starts_with("home:") && l.contains("connected") && l.contains("nick alice")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("second:")
                && l.contains(&format!("irc+insecure://{}", ircd.addr()))),
        "{out:?}"
    );

    // channel status: the attached network's channels by default.
    expect_answer(&mut c, "channel status", "home: #w (joined)").await;
    expect_answer(
        &mut c,
        "channel status -network second",
        "second: no channels",
    )
    .await;

    // Refusals that say what to fix; nothing is created.
    for (command, says) in [
        (
            "network create -addr http://x",
            "-addr: unknown scheme \"http\"",
        ),
        (
            "network create -addr irc+insecure://",
            "-addr: \"irc+insecure://\": expected",
        ),
        ("network create -name x", "-addr is missing"),
        (
            "network create -addr irc+insecure://127.0.0.1:9 -name third -nick \"a b\"",
            "-nick: \"a b\" is not valid",
        ),
        (
            "network create -addr irc+insecure://127.0.0.1:9 -name a/b",
            "-name: \"a/b\": use letters",
        ),
        (
            "network create -addr irc+insecure://127.0.0.1:9 -name second",
            "already exists",
        ),
        (
            "network create -addr x -pass p",
            "-pass: Ferry does not send server passwords",
        ),
        ("network create -addr x -bogus 1", "unknown flag -bogus"),
        ("network delete nope", "you have no network \"nope\""),
        (
            "network update nope -nick x",
            "you have no network \"nope\"",
        ),
        ("network update second", "nothing to change"),
        ("sasl reset -network nope", "you have no network \"nope\""),
        ("sasl set-plain onlyone", "usage: sasl set-plain"),
        (
            "channel status -network nope",
            "you have no network \"nope\"",
        ),
        ("user status", "only an admin"),
        ("user create -username bob -password x", "only an admin"),
        ("server status", "only an admin"),
        (
            "frobnicate now",
            "unknown command \"frobnicate now\"; \"help\" lists",
        ),
        (
            "network",
            "unknown command \"network\"; \"help network\" lists its commands",
        ),
    ] {
        let out = expect_answer(&mut c, command, says).await;
        assert!(out[0].starts_with("error: "), "{command:?}: {out:?}");
    }
    assert_eq!(ferry.store().networks(alice).await.unwrap().len(), 2);

    // network update -nick: the network sees the NICK, without a reconnect.
    expect_answer(
        &mut c,
        "network update home -nick alicia",
        "updated network \"home\"",
    )
    .await;
    w.expect("NICK alice -> alicia", |l| {
        l.is("NICK") && l.nick() == "alice" && l.param_str(0) == "alicia"
    })
    .await;

    // sasl set-plain / reset on another network: stored (sealed), then removed.
    expect_answer(
        &mut c,
        "sasl set-plain -network second alice2 \"pa ss\"",
        "SASL PLAIN set for network \"second\"",
    )
    .await;
    let stored = ferry
        .store()
        .network_by_name(alice, "second")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.sasl,
        Some(Sasl::Plain {
            username: "alice2".into(),
            password: "pa ss".into()
        })
    );
    expect_answer(&mut c, "sasl reset -network second", "SASL removed").await;
    let stored = ferry
        .store()
        .network_by_name(alice, "second")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.sasl, None);
    ferry.wait_connected(alice, "second", 0).await;

    // network delete: a client of that network sees it go, the server sees it quit.
    let mut c2 = ferry.client("alice", "second", "secret", &[]).await;
    c2.send("JOIN #w").await;
    w.expect("alice2 joins", |l| l.is("JOIN") && l.nick() == "alice2")
        .await;
    expect_answer(
        &mut c,
        "network delete second",
        "deleted network \"second\"",
    )
    .await;
    w.expect("alice2 quits", |l| l.is("QUIT") && l.nick() == "alice2")
        .await;
    c2.expect_closed().await;
    assert!(ferry
        .store()
        .network_by_name(alice, "second")
        .await
        .unwrap()
        .is_none());

    // user update -password: the current one is checked, as over the API.
    expect_answer(
        &mut c,
        "user update -password newsecret",
        "give your current password too",
    )
    .await;
    expect_answer(
        &mut c,
        "user update -password newsecret -current wrong",
        "the current password is wrong",
    )
    .await;
    expect_answer(
        &mut c,
        "user update -password newsecret -current secret",
        "password changed",
    )
    .await;
    let mut again = ferry.client("alice", "home", "newsecret", &[]).await;
    again.roundtrip().await;

    // The attached client still works, and the IRC server never heard of any of it.
    c.roundtrip().await;
    assert!(
        !c.transcript().contains(" 401 "),
        "the server answered a line to BouncerServ:\n{}",
        c.transcript()
    );
    heard_nothing(&mut spy, &mut w).await;
}

async fn bouncerserv_admin_commands(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let root = ferry::admin::create_user(
        ferry.store(),
        &ferry.services().guard,
        "root",
        "rootpw",
        true,
    )
    .await
    .unwrap();
    ferry
        .services()
        .users
        .start(root.id, &root.name)
        .await
        .unwrap();
    let mut spy = TestClient::connect(&ircd.addr()).await;
    spy.register("BouncerServ").await;
    ferry.add_network(root.id, home(&ircd, "root")).await;
    ferry.wait_connected(root.id, "home", 1).await;
    // echo-message: the client sees its own line to BouncerServ, then the answer.
    let mut c = ferry
        .client("root", "home", "rootpw", &["echo-message"])
        .await;

    c.send("PRIVMSG BouncerServ :user status").await;
    c.expect("the echo", |l| {
        l.is("PRIVMSG") && l.param_str(0) == "BouncerServ" && l.last_str() == "user status"
    })
    .await;
    c.expect("root's line", |l| {
        l.is("NOTICE") && l.last_str().starts_with("root (admin): 1 network")
    })
    .await;

    expect_answer(
        &mut c,
        "user create -username bob -password bobsecret",
        "created user \"bob\"",
    )
    .await;
    let bob = ferry
        .store()
        .user_by_name("bob")
        .await
        .unwrap()
        .expect("bob stored");
    assert!(!bob.is_admin);
    expect_answer(
        &mut c,
        "user create -username carol -password carolpw -admin",
        "created user \"carol\" (admin)",
    )
    .await;
    assert!(
        ferry
            .store()
            .user_by_name("carol")
            .await
            .unwrap()
            .unwrap()
            .is_admin
    );
    for (command, says) in [
        (
            "user create -username bob -password again",
            "already exists",
        ),
        (
            "user create -username a/b -password x",
            "invalid user name \"a/b\"",
        ),
        ("user create -username dave", "usage: user create"),
        ("user delete nobody", "no user named \"nobody\""),
        ("user delete root", "you cannot delete yourself"),
    ] {
        let out = expect_answer(&mut c, command, says).await;
        assert!(out[0].starts_with("error: "), "{command:?}: {out:?}");
    }
    let out = ask(&mut c, "user status").await;
    assert!(
        out.iter().any(|l| l.starts_with("bob: 0 network")),
        "{out:?}"
    );
    assert!(
        out.iter().any(|l| l.starts_with("carol (admin)")),
        "{out:?}"
    );
    expect_answer(&mut c, "server status", "of 3 user(s) running here").await;

    expect_answer(&mut c, "user delete bob", "deleted user \"bob\"").await;
    assert!(ferry.store().user_by_name("bob").await.unwrap().is_none());
    assert!(ferry.services().users.get(bob.id).is_none());
    let mut w = watcher(&ircd, "watcher", "#w").await;
    heard_nothing(&mut spy, &mut w).await;

    // Without -network, sasl applies to the client's own network (which reconnects
    // with it: the answer comes first).
    c.send("PRIVMSG BouncerServ :sasl set-plain root \"s3cret pw\"")
        .await;
    c.expect("the answer", |l| {
        l.is("NOTICE") && l.last_str() == "SASL PLAIN set for network \"home\""
    })
    .await;
    let home = ferry
        .store()
        .network_by_name(root.id, "home")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        home.sasl,
        Some(Sasl::Plain {
            username: "root".into(),
            password: "s3cret pw".into()
        })
    );
}
