//! Issue 18, findings 1–6: what IRC clients see (their own replies only, true user
//! modes, the MOTD, full JOIN prefixes, unpaced pastes) and honest state
//! (connection errors, gap markers on every disconnect window).

use std::time::{Duration, Instant};

use ferry::admin::NetworkSpec;
use ferry::config::UserSettings;
use ferry::store::{HistoryQuery, Store, StoredMessage, UserId};
use serde_json::Value;

use crate::cluster::{create_users, owners, start_cluster, wait_exactly_once, CHAN};
use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd, NgircdOpts};
use crate::fixtures::relay::TcpRelay;

fn spec(ircd: &Ircd, channels: &[&str]) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: "alice".into(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ..NetworkSpec::default()
    }
}

async fn alice(ferry: &Ferry, ircd: &Ircd, channels: &[&str]) -> UserId {
    let id = ferry.add_user("alice", "secret").await;
    ferry.add_network(id, spec(ircd, channels)).await;
    ferry.wait_connected(id, "test", channels.len()).await;
    id
}

async fn watcher(ircd: &Ircd, nick: &str, chan: &str) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register(nick).await;
    w.join(chan).await;
    w
}

/// Every line up to and including the first that matches `end`.
async fn lines_until(c: &mut TestClient, what: &str, end: impl Fn(&Line) -> bool) -> Vec<Line> {
    let mut out = Vec::new();
    loop {
        let l = c.expect(what, |_| true).await;
        let done = end(&l);
        out.push(l);
        if done {
            return out;
        }
    }
}

fn numerics<'a>(lines: &'a [Line], code: &str) -> Vec<&'a Line> {
    lines.iter().filter(|l| l.is(code)).collect()
}

/// Three clients of one user send queries at once, one of them after irssi's
/// `MODE alice +i` on connect; each gets its own replies and nobody else's.
async fn pipelined_queries_reach_only_the_asker(ircd: Ircd) {
    let whox = ircd.kind() == crate::fixtures::ircd::IrcdKind::InspIrcd;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let _bob = watcher(&ircd, "bob", "#ferry").await;
    let mut a = ferry.client("alice@a", "test", "secret", &[]).await;
    let mut b = ferry.client("alice@b", "test", "secret", &[]).await;
    let mut c = ferry.client("alice@c", "test", "secret", &[]).await;
    for x in [&mut a, &mut b, &mut c] {
        x.roundtrip().await;
    }
    // irssi's first line: a mode change whose answer is no numeric.
    a.send("MODE alice +i").await;
    a.send("WHOIS bob").await;
    a.send("WHO #ferry").await;
    b.send("MODE #ferry b").await;
    b.send("WHOIS alice").await;
    if whox {
        c.send("WHO #ferry %tcuhnf,123").await;
    } else {
        c.send("WHO #ferry").await;
    }
    c.send("LIST").await;
    // A last query each: once its end arrives, every earlier reply has too.
    a.send("WHOIS enda").await;
    b.send("WHOIS endb").await;
    c.send("WHOIS endc").await;
    let end = |nick: &'static str| move |l: &Line| l.is("318") && l.param_str(1) == nick;
    let la = lines_until(&mut a, "a's last WHOIS", end("enda")).await;
    let lb = lines_until(&mut b, "b's last WHOIS", end("endb")).await;
    let lc = lines_until(&mut c, "c's last WHOIS", end("endc")).await;
    let whois_targets = |ls: &[Line]| -> Vec<String> {
        ls.iter()
            .filter(|l| l.is("311") || l.is("318") || l.is("401"))
            .map(|l| l.param_str(1))
            .collect()
    };
    let show = |ls: &[Line]| {
        ls.iter()
            .map(|l| l.raw_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // a: WHOIS bob, WHO #ferry.
    assert!(!numerics(&la, "315").is_empty(), "{}", show(&la));
    for t in whois_targets(&la) {
        assert!(
            t == "bob" || t == "enda",
            "a got {t}'s WHOIS:\n{}",
            show(&la)
        );
    }
    for code in ["368", "321", "322", "323", "354"] {
        assert!(
            numerics(&la, code).is_empty(),
            "a got {code}:\n{}",
            show(&la)
        );
    }
    // b: the ban list, WHOIS alice.
    assert!(!numerics(&lb, "368").is_empty(), "{}", show(&lb));
    for t in whois_targets(&lb) {
        assert!(
            t == "alice" || t == "endb",
            "b got {t}'s WHOIS:\n{}",
            show(&lb)
        );
    }
    for code in ["352", "354", "315", "321", "322", "323"] {
        assert!(
            numerics(&lb, code).is_empty(),
            "b got {code}:\n{}",
            show(&lb)
        );
    }
    // c: WHO (WHOX on InspIRCd), LIST.
    assert!(!numerics(&lc, "315").is_empty(), "{}", show(&lc));
    assert!(!numerics(&lc, "323").is_empty(), "{}", show(&lc));
    if whox {
        assert!(!numerics(&lc, "354").is_empty(), "{}", show(&lc));
    }
    for t in whois_targets(&lc) {
        assert_eq!(t, "endc", "c got {t}'s WHOIS:\n{}", show(&lc));
    }
    assert!(numerics(&lc, "368").is_empty(), "{}", show(&lc));
    // The mode change itself is everyone's.
    for (name, ls) in [("a", &la), ("b", &lb), ("c", &lc)] {
        assert!(
            ls.iter()
                .any(|l| l.is("MODE") && l.param_str(0) == "alice" && l.last_str().contains('i')),
            "{name} did not see MODE alice +i:\n{}",
            show(ls)
        );
    }
}

/// Finding 1 with labeled-response (InspIRCd 3).
#[tokio::test]
async fn finding1_pipelined_queries_reach_only_the_asker_labeled() {
    pipelined_queries_reach_only_the_asker(Ircd::inspircd(InspOpts::default()).await).await;
}

/// Finding 1 without labeled-response (ngircd): the router by numeric.
#[tokio::test]
async fn finding1_pipelined_queries_reach_only_the_asker_by_numeric() {
    pipelined_queries_reach_only_the_asker(Ircd::ngircd(NgircdOpts::default()).await).await;
}

/// Finding 2: clients see the user modes the server reports, not `004`'s list of
/// available ones.
#[tokio::test]
async fn finding2_clients_see_the_real_user_modes() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut a = ferry.client("alice@a", "test", "secret", &[]).await;
    let burst = lines_until(&mut a, "end of the burst", |l| l.is("366")).await;
    for l in burst.iter().filter(|l| l.is("MODE")) {
        assert!(
            !l.last_str().contains(['o', 's', 'w']),
            "fake user modes in the burst: {}",
            l.raw_str()
        );
    }
    a.send("MODE alice +i").await;
    a.expect("MODE alice +i", |l| {
        l.is("MODE") && l.param_str(0) == "alice"
    })
    .await;
    a.send("MODE alice").await;
    let umode = a.expect("221", |l| l.is("221")).await.last_str();
    assert!(umode.contains('i') && !umode.contains('o'), "221 {umode}");
    // A client attaching now is told exactly those modes.
    let mut b = ferry.client("alice@b", "test", "secret", &[]).await;
    let burst = lines_until(&mut b, "end of the burst", |l| l.is("366")).await;
    let modes: Vec<String> = burst
        .iter()
        .filter(|l| l.is("MODE") && l.param_str(0) == "alice")
        .map(|l| l.last_str())
        .collect();
    assert_eq!(modes, [umode]);
}

/// Finding 3: the burst's JOIN has `nick!user@host`, and the network's MOTD is
/// passed on (no `422`).
#[tokio::test]
async fn finding3_burst_join_has_user_host_and_the_motd() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    let burst = lines_until(&mut c, "end of the burst", |l| l.is("366")).await;
    let show = burst
        .iter()
        .map(|l| l.raw_str())
        .collect::<Vec<_>>()
        .join("\n");
    let join = burst
        .iter()
        .find(|l| l.is("JOIN"))
        .expect("a JOIN in the burst");
    let prefix = String::from_utf8_lossy(join.prefix.as_deref().unwrap()).into_owned();
    assert!(
        prefix.starts_with("alice!") && prefix.contains('@'),
        "JOIN prefix {prefix}"
    );
    assert!(numerics(&burst, "422").is_empty(), "{show}");
    assert!(
        burst
            .iter()
            .any(|l| l.is("372") && l.last_str().contains("Ferry test server")),
        "{show}"
    );
    assert!(!numerics(&burst, "376").is_empty(), "{show}");
}

/// Finding 4: with the default pacing a 10-line paste reaches the channel at once
/// (it took 10 s at 0.5 lines/s after 5), and a query sent after a long paste is
/// answered before the paste has gone out.
#[tokio::test]
async fn finding4_a_paste_is_not_paced_and_queries_go_first() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |cfg| {
        let d = UserSettings::default();
        cfg.user.flood_rate = d.flood_rate;
        cfg.user.flood_burst = d.flood_burst;
    })
    .await;
    alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.roundtrip().await;
    let started = Instant::now();
    for i in 1..=10 {
        c.send(format!("PRIVMSG #ferry :paste line {i}")).await;
    }
    for i in 1..=10 {
        let l = bob
            .expect("a pasted line", |l| l.is("PRIVMSG") && l.nick() == "alice")
            .await;
        assert_eq!(l.last_str(), format!("paste line {i}"), "in order");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "10 lines took {took:?}: paced"
    );
    // A long paste, then a question: the answer does not wait for the paste.
    let started = Instant::now();
    for i in 1..=30 {
        c.send(format!("PRIVMSG #ferry :long paste {i}")).await;
    }
    c.send("WHOIS bob").await;
    c.expect("the WHOIS answer", |l| l.is("318")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "WHOIS waited {took:?} behind the paste"
    );
    let last = bob
        .expect("the paste's last line", |l| {
            l.is("PRIVMSG") && l.last_str() == "long paste 30"
        })
        .await;
    drop(last);
}

/// Finding 5: TLS to a plaintext port fails within the TLS handshake timeout, and
/// the reason is shown: the user API, an attached IRC client's NOTICE, and
/// `ferry network list`.
#[tokio::test]
async fn finding5_tls_to_a_plaintext_port_says_why() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |cfg| {
        cfg.user.tls_timeout = Duration::from_secs(2);
        cfg.user.backoff_min = Duration::from_secs(3);
    })
    .await;
    let id = ferry.add_user("alice", "secret").await;
    let mut s = spec(&ircd, &["#ferry"]);
    s.tls = true;
    s.tls_verify = Some("insecure".into());
    let started = Instant::now();
    ferry.add_network(id, s).await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    let notice = c
        .expect("a NOTICE saying why", |l| {
            l.is("NOTICE") && l.last_str().contains("TLS handshake")
        })
        .await;
    let took = started.elapsed();
    // The registration timeout is 30 s in tests: the error came from the handshake's.
    assert!(
        took < Duration::from_secs(15),
        "{took:?}: {}",
        notice.raw_str()
    );

    // The user API: the stage, the last error, when it tries again.
    let http = reqwest::Client::new();
    let token = ferry.api_token("alice", "secret").await;
    let networks: Value = http
        .get(format!("{}/api/networks", ferry.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = &networks[0];
    let why = match n["state"].as_str() {
        Some("disconnected") => {
            assert!(n["retry_at"].is_string(), "{n}");
            n["reason"].as_str()
        }
        Some("connecting") => n["last_error"].as_str(),
        _ => None,
    };
    assert!(
        why.is_some_and(|w| w.contains("TLS handshake")),
        "API shows no reason: {n}"
    );

    // The CLI, through the running node.
    let out = tokio::process::Command::new(crate::cluster::BIN)
        .args(["--database", &ferry.db.url])
        .arg("--secret-key-file")
        .arg(ferry.db.key_file())
        .args(["network", "list", "--user", "alice"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("TLS handshake"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Finding 5, the stage between connecting and connected: a server that takes
/// the connection and does not answer leaves the network `registering` (not
/// `connecting`) in the API, `network list` and the NOTICE an IRC client gets on
/// attach, until the server answers; then `connected`.
#[tokio::test]
async fn finding5_a_server_that_does_not_answer_shows_registering() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    // The relay accepts connections and holds them unanswered until `restore`.
    let relay = TcpRelay::start(ircd.addr().parse().unwrap()).await;
    relay.cut_blackhole();
    let db = TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |cfg| {
        cfg.user.register_timeout = Duration::from_secs(120);
        cfg.user.backoff_min = Duration::from_millis(200);
    })
    .await;
    let id = ferry.add_user("alice", "secret").await;
    let mut s = spec(&ircd, &["#ferry"]);
    s.addr = relay.addr().to_string();
    ferry.add_network(id, s).await;
    relay
        .wait_for("ferry's connection", |s| s.blackholed >= 1)
        .await;

    let http = reqwest::Client::new();
    let token = ferry.api_token("alice", "secret").await;
    let network_until = |want: &'static str| {
        let (http, token, url) = (http.clone(), token.clone(), ferry.http_url());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let networks: Value = http
                    .get(format!("{url}/api/networks"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if networks[0]["state"] == want {
                    return networks[0].clone();
                }
                assert!(Instant::now() < deadline, "never {want}: {networks}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The socket is up once the relay accepted it: the actor hears so at once.
    let n = network_until("registering").await;
    assert_eq!(n["attempt"], 1, "{n}");

    let out = tokio::process::Command::new(crate::cluster::BIN)
        .args(["--database", &ferry.db.url])
        .arg("--secret-key-file")
        .arg(ferry.db.key_file())
        .args(["network", "list", "--user", "alice"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("test "))
        .unwrap_or("");
    assert!(
        out.status.success() && row.split_whitespace().any(|w| w == "registering"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.expect("a NOTICE with the stage", |l| {
        l.is("NOTICE") && l.last_str().contains("not connected: registering")
    })
    .await;

    // The held connection is reset; the next one gets through.
    relay.restore();
    ferry.wait_connected(id, "test", 1).await;
    network_until("connected").await;
}

/// The newest stored lines of a user's channel, oldest first.
async fn channel_history(store: &Store, user: UserId) -> Vec<StoredMessage> {
    store
        .history(&HistoryQuery {
            user,
            limit: 200,
            ..HistoryQuery::default()
        })
        .await
        .unwrap()
}

/// Finding 6: a plain restart says so (not "your session is moving"), and the
/// window it leaves gets a gap marker in the channel.
#[tokio::test]
async fn finding6_a_restart_leaves_a_gap_marker() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let mut ferry = Ferry::start(Backend::Sqlite).await;
    let id = alice(&ferry, &ircd, &["#ferry"]).await;
    let mut bob = watcher(&ircd, "bob", "#ferry").await;
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    bob.send("PRIVMSG #ferry :before the restart").await;
    c.expect("live", |l| l.is("PRIVMSG")).await;
    ferry.stop().await;
    let closing = c.expect_closed().await;
    let error = closing
        .iter()
        .find(|l| l.is("ERROR"))
        .map(|l| l.last_str())
        .unwrap_or_default();
    assert!(
        !error.contains("moving") && error.contains("restarting"),
        "ERROR {error:?}"
    );
    bob.send("PRIVMSG #ferry :said while ferry was down").await;
    bob.roundtrip().await;
    ferry.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ferry.services().users.get(id).is_none() {
        assert!(Instant::now() < deadline, "the user never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ferry.wait_connected(id, "test", 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ferry.services().writer.flush().await.unwrap();
        let h = channel_history(ferry.store(), id).await;
        let before = h.iter().position(|m| m.text == "before the restart");
        let gap = h.iter().position(|m| m.command == "GAP");
        if let (Some(b), Some(g)) = (before, gap) {
            assert!(g > b, "the marker follows the last line seen");
            assert!(h[g].text.contains("not connected"), "{}", h[g].text);
            break;
        }
        assert!(Instant::now() < deadline, "no gap marker: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 6: users adopted after a SIGKILL get a gap marker for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding6_a_sigkill_failover_leaves_a_gap_marker() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_dir, _db, store, nodes) = start_cluster(2).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = crate::cluster::watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    let victims: Vec<UserId> = users
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| before[id].0.as_deref() == Some("n2"))
        .collect();
    assert!(!victims.is_empty(), "n2 runs nobody: {before:?}");
    w.send(format!("PRIVMSG {CHAN} :before the kill")).await;
    // Stored for every victim before the kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    for v in &victims {
        while !channel_history(&store, *v)
            .await
            .iter()
            .any(|m| m.text == "before the kill")
        {
            assert!(Instant::now() < deadline, "never stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes[1].signal(libc::SIGKILL);
    w.send(format!("PRIVMSG {CHAN} :said during the failover"))
        .await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for v in &victims {
        loop {
            let h = channel_history(&store, *v).await;
            let kill = h.iter().position(|m| m.text == "before the kill");
            let gap = h.iter().rposition(|m| m.command == "GAP");
            if let (Some(k), Some(g)) = (kill, gap) {
                if g > k {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "user {v}: no gap marker after the kill: {h:?}\n{}",
                nodes[0].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
