//! Placement by the networks' room, spill, and the cluster-wide connect budget
//! (issue 17), with real `ferry serve` processes on PostgreSQL binding 127.0.0.2/3/4
//! and a real InspIRCd that allows 15 connections per address (`localmax`). What the
//! server sees is checked from its side: a watcher in the channel reads NAMES (a
//! second connection of a user shows as `u1_`) and sees each JOIN as it happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::admin::NetworkSpec;
use ferry::store::{NetworkLimits, Store, UserId};

use super::cluster::{
    create_users, names, owners, per_user, wait_nodes, watcher, NodeProc, BIN, CHAN,
};
use super::fixtures::client::TestClient;
use super::fixtures::ferry::{test_guard, Backend, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};

const PER_IP: u32 = 15;

/// `ferry node list --json` against the test database.
async fn node_list(db: &TestDb) -> serde_json::Value {
    let out = tokio::process::Command::new(BIN)
        .args(["--database", &db.url])
        .arg("--secret-key-file")
        .arg(db.key_file())
        .args(["--json", "node", "list"])
        .env("FERRY_LOG", "warn")
        .output()
        .await
        .expect("ferry runs");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ferry node list` as an operator reads it (printed for docs/operations.md).
async fn node_list_text(db: &TestDb) -> String {
    let out = tokio::process::Command::new(BIN)
        .args(["--database", &db.url])
        .arg("--secret-key-file")
        .arg(db.key_file())
        .args(["node", "list"])
        .env("FERRY_LOG", "warn")
        .output()
        .await
        .expect("ferry runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sum of the samples of metric `name` on a node.
pub(crate) async fn metric(http: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Users `{prefix}1..n`, each with network `test` on `ircd` in `CHAN`, unowned.
pub(crate) async fn users_named(
    store: &Store,
    ircd: &Ircd,
    prefix: &str,
    n: usize,
) -> Vec<(UserId, String)> {
    let mut out = Vec::new();
    for i in 1..=n {
        let name = format!("{prefix}{i}");
        let user = ferry::admin::create_user(store, &test_guard(), &name, "secret", false)
            .await
            .unwrap();
        let spec = NetworkSpec {
            name: "test".into(),
            addr: ircd.addr(),
            nick: name.clone(),
            channels: vec![CHAN.into()],
            ..NetworkSpec::default()
        };
        store
            .create_network(user.id, &spec.to_new_network().unwrap())
            .await
            .unwrap();
        out.push((user.id, name));
    }
    out
}

/// Polls the channel until `want` users are each there exactly once, failing at once
/// if any user is ever seen twice (two connections of one user).
async fn watch_until_once(w: &mut TestClient, want: &[(UserId, String)], within: Duration) {
    let started = Instant::now();
    let want: BTreeMap<String, usize> = want.iter().map(|(_, n)| (n.clone(), 1)).collect();
    loop {
        let got = per_user(&names(w).await);
        assert!(
            got.values().all(|n| *n == 1),
            "a user is connected twice: {got:?}"
        );
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < within,
            "not every user connected exactly once within {within:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The trial: one node on 127.0.0.2 alone, 15 sessions per IP, 20 users: 15
/// connect, 5 wait. Two more nodes start: the 5 waiting users spill to them (each
/// connected exactly once, no rejection by the server), and users added afterwards go
/// where their network has room, not to the full node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spills_waiting_users_and_places_new_users_where_there_is_room() {
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(PER_IP),
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    store
        .set_network_limits(&NetworkLimits::new("127.0.0.1", PER_IP, 120.0, 15))
        .await
        .unwrap();
    let users = users_named(&store, &ircd, "u", 20).await;
    let mut w = watcher(&ircd).await;
    let spill = ["--spill-after-seconds", "3"];
    let n1 = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &spill);
    wait_nodes(&store, &[&n1]).await;

    // 15 connect on n1 and 5 wait there for a slot; nobody is connected twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = per_user(&names(&mut w).await);
        assert!(got.values().all(|n| *n == 1), "{got:?}");
        let list = node_list(&db).await;
        let slots = &list[0]["slots"]["127.0.0.1"];
        if got.len() == PER_IP as usize && slots["waiting"] == 5 {
            assert_eq!(slots["held"], 15, "{list}");
            assert_eq!(
                slots["free"], -5,
                "5 connects queued beyond the slots: {list}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{got:?} {list}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(metric(&n1.http, "ferry_users_waiting_for_slot").await, 5.0);
    let text = node_list_text(&db).await;
    assert!(
        text.contains("slots 127.0.0.1: -5 free (15 held, 5 waiting)"),
        "{text}"
    );
    println!("PLACEMENT-NODE-LIST\n{text}");

    let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &spill);
    let n3 = NodeProc::start_with(&db, dir.path(), "n3", "127.0.0.4", &spill);
    wait_nodes(&store, &[&n1, &n2, &n3]).await;
    let started = Instant::now();
    watch_until_once(&mut w, &users, Duration::from_secs(120)).await;
    println!("PLACEMENT-SPILL 5 users spilled in {:?}", started.elapsed());
    let on = |o: &BTreeMap<UserId, (Option<String>, i64)>, n: &str| {
        o.values().filter(|(x, _)| x.as_deref() == Some(n)).count()
    };
    let after = owners(&store).await;
    assert_eq!(on(&after, "n1"), 15, "{after:?}");
    assert_eq!(on(&after, "n2") + on(&after, "n3"), 5, "{after:?}");
    assert_eq!(metric(&n1.http, "ferry_spills_started").await, 5.0);
    assert_eq!(metric(&n1.http, "ferry_spills_completed").await, 5.0);
    assert_eq!(metric(&n1.http, "ferry_spills_failed").await, 0.0);
    let log = n1.log();
    for l in log.lines().filter(|l| l.contains("spill:")) {
        println!("PLACEMENT-LOG {l}");
    }
    assert_eq!(
        log.matches("spill: the user waited for a session slot here")
            .count(),
        5,
        "{log}"
    );
    // Zero rejections by the server: no connect was refused for lack of a slot or
    // for coming too fast, on any node.
    for n in [&n1, &n2, &n3] {
        assert_eq!(metric(&n.http, "ferry_upstream_no_slot").await, 0.0);
        assert_eq!(metric(&n.http, "ferry_upstream_throttled").await, 0.0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&n1.http, "ferry_users_waiting_for_slot").await != 0.0 {
        assert!(Instant::now() < deadline, "n1 still counts waiting users");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // New users go where their network has room: n1 is full, so none goes there
    // (although placement by fd headroom alone would spread them over all three), and
    // none has to spill.
    let more = users_named(&store, &ircd, "v", 6).await;
    let everyone: Vec<(UserId, String)> = users.iter().chain(&more).cloned().collect();
    watch_until_once(&mut w, &everyone, Duration::from_secs(60)).await;
    let placed = owners(&store).await;
    for (id, name) in &more {
        let node = placed[id].0.as_deref();
        assert!(
            matches!(node, Some("n2" | "n3")),
            "{name} was placed on {node:?}"
        );
    }
    assert_eq!(metric(&n1.http, "ferry_spills_started").await, 5.0);
    // `node list` shows the free slots per network (once every node's heartbeat
    // published its load).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = node_list(&db).await;
        let free = |i: usize| list[i]["slots"]["127.0.0.1"]["free"].as_i64().unwrap();
        if free(0) == 0 && free(1) + free(2) == 30 - 5 - 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop((n2, n3));
}

/// `--connects-per-minute-total` holds for two nodes together: each alone may connect
/// 600 a minute, but the cluster only 30 (after a burst of 2), so 8 users spread over
/// both nodes join no faster than one every 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_connect_budget_holds_across_two_nodes() {
    const N: usize = 8;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    store
        .set_network_limits(&NetworkLimits {
            connects_per_minute_total: Some(30.0),
            ..NetworkLimits::new("127.0.0.1", 100, 600.0, 2)
        })
        .await
        .unwrap();
    let n1 = NodeProc::start(&db, dir.path(), "n1", "127.0.0.2");
    let n2 = NodeProc::start(&db, dir.path(), "n2", "127.0.0.3");
    wait_nodes(&store, &[&n1, &n2]).await;
    let mut w = watcher(&ircd).await;
    let users = create_users(&store, &ircd, N).await;
    let mut joins: Vec<(Instant, String)> = Vec::new();
    while joins.len() < N {
        let l = w
            .expect("a user's JOIN", |l| l.is("JOIN") && l.nick() != "watcher")
            .await;
        joins.push((Instant::now(), l.nick()));
    }
    let o = owners(&store).await;
    for n in ["n1", "n2"] {
        assert!(
            o.values().any(|(x, _)| x.as_deref() == Some(n)),
            "both nodes connect users: {o:?}"
        );
    }
    let first = joins[0].0;
    let at: Vec<f64> = joins
        .iter()
        .map(|(t, _)| (*t - first).as_secs_f64())
        .collect();
    println!("PLACEMENT-BUDGET joins at {at:?}");
    // Token k (0-based) is due (k - 1) × 2 s after the first two; a second of slack
    // for registration.
    for (k, t) in at.iter().enumerate().skip(2) {
        let due = (k as f64 - 1.0) * 2.0 - 1.0;
        assert!(*t >= due, "join {k} at {t:.1}s, before {due:.1}s: {at:?}");
    }
    watch_until_once(&mut w, &users, Duration::from_secs(30)).await;
    drop((n1, n2));
}

/// Issue 17 item 4: a draining node starts no new upstream connects. One node on
/// 127.0.0.2 with 3 sessions per address (the server's `localmax` too) runs 5
/// users: 3 connect, 2 wait for a slot. `ferry migrate drain n1` to two nodes with
/// room: the slots the drain frees on n1 start nobody there, so the waiting users
/// connect for the first time on a target, and the server sees every JOIN of the
/// drain from a target's address, each user exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_a_drain_moves_waiting_users_before_they_connect_on_the_source() {
    const SMALL: u32 = 3;
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(SMALL),
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    store
        .set_network_limits(&NetworkLimits::new("127.0.0.1", SMALL, 120.0, 15))
        .await
        .unwrap();
    let users = users_named(&store, &ircd, "d", 5).await;
    let mut w = watcher(&ircd).await;
    // No spill: only the drain moves the waiting users.
    let calm = ["--spill-after-seconds", "3600"];
    let n1 = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &calm);
    wait_nodes(&store, &[&n1]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let connected = loop {
        let got = per_user(&names(&mut w).await);
        assert!(got.values().all(|n| *n == 1), "{got:?}");
        let list = node_list(&db).await;
        if got.len() == SMALL as usize && list[0]["slots"]["127.0.0.1"]["waiting"] == 2 {
            break got;
        }
        assert!(Instant::now() < deadline, "{got:?} {list}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let waiting: Vec<String> = users
        .iter()
        .map(|(_, n)| n.clone())
        .filter(|n| !connected.contains_key(n))
        .collect();
    assert_eq!(waiting.len(), 2);

    let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &calm);
    let n3 = NodeProc::start_with(&db, dir.path(), "n3", "127.0.0.4", &calm);
    wait_nodes(&store, &[&n1, &n2, &n3]).await;
    let mut cli = super::migrate::spawn_cli(&db, &["migrate", "drain", "n1", "--yes"]);
    // Every JOIN the server shows while the drain runs: (nick, host).
    let mut joins: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Ok(Some(l)) = w.recv_timeout(Duration::from_millis(500)).await {
            if l.is("JOIN") {
                let raw = l.raw_str();
                let host = raw
                    .split_whitespace()
                    .find(|p| p.starts_with(':'))
                    .and_then(|p| p.rsplit_once('@'))
                    .map(|(_, h)| h.to_owned())
                    .unwrap_or_default();
                joins.push((l.nick().trim_end_matches('_').to_owned(), host));
            }
        }
        if let Some(status) = cli.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not end: {joins:?}"
        );
    };
    let out = cli.wait_with_output().await.unwrap();
    assert!(
        status.success(),
        "drain failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        n1.log()
    );
    // Everyone ends on a target, connected exactly once (NAMES also drains the JOINs
    // still on their way).
    watch_until_once(&mut w, &users, Duration::from_secs(60)).await;
    let after = owners(&store).await;
    assert!(
        after
            .values()
            .all(|(n, _)| matches!(n.as_deref(), Some("n2" | "n3"))),
        "{after:?}"
    );
    println!("DRAINSTOP-JOINS {joins:?}");
    assert!(
        joins
            .iter()
            .all(|(_, h)| h == "127.0.0.3" || h == "127.0.0.4"),
        "a JOIN came from the draining node's address: {joins:?}"
    );
    for name in &waiting {
        let theirs: Vec<_> = joins.iter().filter(|(n, _)| n == name).collect();
        assert!(
            theirs.len() <= 1,
            "{name} joined more than once during the drain: {joins:?}"
        );
    }
    for n in [&n1, &n2, &n3] {
        assert_eq!(metric(&n.http, "ferry_upstream_no_slot").await, 0.0);
    }
    // A connect the drain cuts before its JOIN is invisible in the channel (and the
    // server's file log is not flushed in time to read it): n1's own log of its
    // dials shows it started only the first 3, never one for a waiting user.
    let log = n1.log();
    let dials = log
        .lines()
        .filter(|l| l.contains("upstream connecting"))
        .count();
    assert_eq!(dials, SMALL as usize, "n1 dialled a waiting user: {log}");
    // The source paused its connects for the drain.
    assert!(
        log.contains("limiter: the node drains; only connects for moves start"),
        "{log}"
    );
    drop((n2, n3));
}
