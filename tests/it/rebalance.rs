//! `ferry migrate rebalance` against real `ferry serve` processes on PostgreSQL and a
//! real InspIRCd (per-IP limit and connect throttle on): a node that joins a busy
//! cluster later is filled exactly as the dry run planned, `--max-moves` is honoured,
//! nobody is ever connected twice (a watcher in the channel), no line said meanwhile
//! is lost (backlog or gap marker), and rollback puts the moved users back; a killed
//! CLI's rebalance resumes to the planned owners, moving nobody twice. The automatic
//! rebalance (`--auto-rebalance`) fills a node that joined later by itself, the
//! leader alone acting, waits while an operator's migration is unfinished, and is off
//! by default.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::store::{NetworkLimits, Store, UserId};

use super::cluster::{
    create_users, owners, wait_exactly_once, wait_nodes, watcher, NodeProc, CHAN,
};
use super::fixtures::client::TestClient;
use super::fixtures::ferry::{Backend, TestDb};
use super::fixtures::ircd::{ConnFlood, InspOpts, Ircd};
use super::migrate::{ferry, setup, spawn_cli, talk, wait_users, watch_presence_until};

/// Who runs each user now.
async fn node_of(store: &Store) -> BTreeMap<UserId, String> {
    owners(store)
        .await
        .into_iter()
        .map(|(u, (n, _))| (u, n.unwrap_or_default()))
        .collect()
}

/// The moves of a `--json` dry run (user → target), after checking it moved nobody.
pub(crate) async fn dry_run(
    db: &TestDb,
    store: &Store,
    extra: &[&str],
) -> BTreeMap<UserId, String> {
    let before = node_of(store).await;
    let mut args = vec!["--json", "migrate", "rebalance", "--dry-run"];
    args.extend_from_slice(extra);
    let (ok, out, err) = ferry(db, &args).await;
    assert!(ok, "{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(node_of(store).await, before, "a dry run moves nobody");
    v["plan"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_i64().unwrap(),
                u["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn with_moves(
    owners: &BTreeMap<UserId, String>,
    moves: &BTreeMap<UserId, String>,
) -> BTreeMap<UserId, String> {
    let mut o = owners.clone();
    o.extend(moves.iter().map(|(u, n)| (*u, n.clone())));
    o
}

fn count(owners: &BTreeMap<UserId, String>, node: &str) -> usize {
    owners.values().filter(|n| *n == node).count()
}

/// Every line said is in every user's backlog exactly once, or the user was moving
/// then (by the migrations' recorded downtime) and a gap marker covers it.
async fn assert_lines_kept(
    store: &Store,
    users: &[(UserId, String)],
    sent: &[(String, chrono::DateTime<chrono::Utc>)],
) {
    let mut downtime: BTreeMap<UserId, i64> = BTreeMap::new();
    for m in store.migrations().await.unwrap() {
        for u in store.migration_users(m.id).await.unwrap() {
            let d = downtime.entry(u.user_id).or_default();
            *d = (*d).max(u.downtime_ms.unwrap_or(0));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut in_gaps = 0;
    for (uid, uname) in users {
        let net = store.networks(*uid).await.unwrap()[0].id;
        let rows = loop {
            let rows = store
                .history(&ferry::store::HistoryQuery {
                    user: *uid,
                    network: Some(net),
                    buffer_key: Some(CHAN.as_bytes().to_vec()),
                    limit: 5000,
                    ..Default::default()
                })
                .await
                .unwrap();
            if rows.iter().any(|r| r.text == "tick last") {
                break rows;
            }
            assert!(Instant::now() < deadline, "{uname} lacks `tick last`");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let gaps: Vec<_> = rows
            .iter()
            .filter(|r| r.command == "GAP")
            .map(|r| r.time)
            .collect();
        let off = chrono::Duration::milliseconds(downtime.get(uid).copied().unwrap_or(0) + 2000);
        for (text, at) in sent {
            let k = rows.iter().filter(|r| &r.text == text).count();
            assert!(k <= 1, "{uname}: {text:?} stored {k} times");
            if k == 0 {
                assert!(
                    gaps.iter()
                        .any(|g| *g >= *at - chrono::Duration::seconds(1) && *g <= *at + off),
                    "{uname}: {text:?} (said at {at}) is neither stored nor covered by a gap \
                     marker ({gaps:?})"
                );
                in_gaps += 1;
            }
        }
    }
    println!(
        "REBALANCE lines_said={} user_lines_in_gaps={in_gaps}",
        sent.len()
    );
}

/// A PostgreSQL store with `n` users of an InspIRCd whose per-IP limit (20) and
/// connect flood protection are on, the same limits set in Ferry, and a watcher in
/// the channel: where the rebalance tests start.
async fn limited_world(
    n: usize,
) -> (
    Ircd,
    Arc<TestDb>,
    tempfile::TempDir,
    Store,
    Vec<(UserId, String)>,
    TestClient,
) {
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(20),
        connflood: Some(ConnFlood {
            period_secs: 2,
            maxconns: 30,
        }),
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    store
        .set_network_limits(&NetworkLimits::new("127.0.0.1", 20, 60.0, 2))
        .await
        .unwrap();
    let users = create_users(&store, &ircd, n).await;
    let w = watcher(&ircd).await;
    (ircd, db, dir, store, users, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_fills_a_node_that_joined_later_as_its_dry_run_planned_then_rollback() {
    const N: usize = 8;
    let (ircd, db, dir, store, users, mut w) = limited_world(N).await;
    let n1 = NodeProc::start(&db, dir.path(), "n1", "127.0.0.2");
    wait_nodes(&store, &[&n1]).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // The second node joins a busy cluster: it stays empty until the rebalance.
    let n2 = NodeProc::start(&db, dir.path(), "n2", "127.0.0.3");
    wait_nodes(&store, &[&n1, &n2]).await;
    let start = node_of(&store).await;
    assert_eq!(count(&start, "n1"), N, "{start:?}");

    // The dry run shows the balance, the moves, the bound and the ETA, like a drain's.
    let (ok, text, err) = ferry(&db, &["migrate", "rebalance", "--dry-run"]).await;
    assert!(ok, "{text}{err}");
    println!("{text}");
    for want in [
        "rebalance: tolerance 10%",
        "n1: 8 users → 4",
        "n2: 0 users → 4",
        "plan: 4 users",
        "move u1 from n1 to n2 (canary)",
        "network 127.0.0.1 allows 60 connects a minute per source IP",
        "ETA the limits impose",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert_eq!(node_of(&store).await, start);

    // Whoever is in the channel sees each user once, and a talker speaks throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = users.iter().map(|(_, n)| n.clone()).collect();
    // 3 + 1 moves there, 3 back.
    let watch = tokio::spawn(watch_presence_until(w, names, stop.clone(), 7));
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    let talking = Arc::new(AtomicBool::new(false));
    let talker = tokio::spawn(talk(t, talking.clone()));

    // --max-moves 3: exactly the dry run's three moves happen.
    let plan1 = dry_run(&db, &store, &["--max-moves", "3"]).await;
    assert_eq!(plan1.len(), 3, "{plan1:?}");
    let (ok, out, err) = ferry(
        &db,
        &[
            "migrate",
            "rebalance",
            "--max-moves",
            "3",
            "--canary",
            "1",
            "--batch",
            "2",
            "--yes",
        ],
    )
    .await;
    assert!(ok, "rebalance failed: {out}{err}\n{}", n1.log());
    println!("{out}");
    let after1 = node_of(&store).await;
    assert_eq!(after1, with_moves(&start, &plan1));
    let m1 = store.migrations().await.unwrap().remove(0);
    assert_eq!(
        (m1.kind.as_str(), m1.state.as_str()),
        ("rebalance", "completed")
    );
    let mu = store.migration_users(m1.id).await.unwrap();
    assert_eq!(mu.len(), 3);
    assert!(
        mu.iter().all(|u| u.state == "moved" && u.attempts == 1),
        "{mu:?}"
    );

    // The rest: one more move evens the nodes out, again as planned.
    let plan2 = dry_run(&db, &store, &[]).await;
    assert_eq!(plan2.len(), 1, "{plan2:?}");
    let (ok, out, err) = ferry(&db, &["migrate", "rebalance", "--yes"]).await;
    assert!(ok, "rebalance failed: {out}{err}");
    let after2 = node_of(&store).await;
    assert_eq!(after2, with_moves(&after1, &plan2));
    assert_eq!((count(&after2, "n1"), count(&after2, "n2")), (4, 4));

    // Balanced: nothing to do, and it says so.
    let (ok, out, err) = ferry(&db, &["migrate", "rebalance", "--yes"]).await;
    assert!(ok && out.contains("nothing to do"), "{out}{err}");
    assert_eq!(node_of(&store).await, after2);
    assert_eq!(store.migrations().await.unwrap().len(), 2);

    let (ok, status, _) = ferry(&db, &["migrate", "status", &m1.id.to_string()]).await;
    assert!(ok, "{status}");
    assert!(
        status.contains("(rebalance n1 → n2): completed") && status.contains("3 moved"),
        "{status}"
    );

    // Rolling the first rebalance back returns its three users to n1.
    let (ok, out, err) = ferry(&db, &["migrate", "rollback", &m1.id.to_string(), "--yes"]).await;
    assert!(ok, "rollback failed: {out}{err}");
    let back: BTreeMap<UserId, String> = plan1.keys().map(|u| (*u, "n1".to_owned())).collect();
    assert_eq!(node_of(&store).await, with_moves(&after2, &back));
    let parent = store.migration(m1.id).await.unwrap().unwrap();
    assert_eq!(parent.state, "rolled_back");

    talking.store(true, SeqCst);
    let sent = talker.await.unwrap();
    stop.store(true, SeqCst);
    let (mut w, joins) = watch.await.expect("no user was present twice");
    assert!(joins >= 7, "the watcher saw {joins} JOINs for 7 moves");
    wait_exactly_once(&mut w, &users, Duration::from_secs(30)).await;

    assert_lines_kept(&store, &users, &sent).await;
    drop((n1, n2, ircd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_a_killed_cli_resumes_to_the_planned_owners() {
    const N: usize = 12;
    // n1 runs everyone; n2 and n3 (30 connects a minute per address, burst 2) are empty.
    let mut e = setup(N, InspOpts::default(), 30.0, 2).await;
    let start = node_of(&e.store).await;
    assert_eq!(count(&start, "n1"), N);
    let plan = dry_run(&e.db, &e.store, &[]).await;
    assert_eq!(plan.len(), 8, "{plan:?}");
    let to = |n: &str| plan.values().filter(|t| *t == n).count();
    assert_eq!((to("n2"), to("n3")), (4, 4), "{plan:?}");

    let mut cli = spawn_cli(
        &e.db,
        &[
            "migrate",
            "rebalance",
            "--canary",
            "2",
            "--batch",
            "3",
            "--yes",
        ],
    );
    let id = wait_users(&e.store, Duration::from_secs(60), "the canary", |mu| {
        mu.iter().filter(|u| u.state == "moved").count() >= 2
    })
    .await;
    cli.start_kill().unwrap(); // SIGKILL to this PID only
    cli.wait().await.unwrap();
    let moved_before = e
        .store
        .migration_users(id)
        .await
        .unwrap()
        .iter()
        .filter(|u| u.state == "moved")
        .count();
    assert!(moved_before < plan.len(), "killed before the end");
    let (ok, out, err) = ferry(&e.db, &["migrate", "resume", &id.to_string()]).await;
    assert!(ok, "resume failed: {out}{err}");
    println!("{out}");
    let m = e.store.migration(id).await.unwrap().unwrap();
    assert_eq!(
        (m.kind.as_str(), m.state.as_str()),
        ("rebalance", "completed")
    );
    let mu = e.store.migration_users(id).await.unwrap();
    assert!(
        mu.iter().all(|u| u.state == "moved" && u.attempts == 1),
        "each user moved once: {mu:?}"
    );
    assert_eq!(node_of(&e.store).await, with_moves(&start, &plan));
    wait_exactly_once(&mut e.w, &e.users, Duration::from_secs(30)).await;
    drop((e.n1, e.n2, e.n3, e.ircd));
}

/// The automatic rebalance's flags: on, looking every second, at most 3 moves a round.
const AUTO: [&str; 5] = [
    "--auto-rebalance",
    "--auto-rebalance-interval-seconds",
    "1",
    "--auto-rebalance-max-moves",
    "3",
];

/// A counter of a node's `/metrics` (0 when absent).
async fn metric(node: &NodeProc, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until the node's counter `name` has grown by `by` from now: its
/// loop ran that many more rounds.
async fn await_rounds(node: &NodeProc, name: &str, by: u64) -> u64 {
    let from = metric(node, name).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(node, name).await;
        if now >= from + by {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now} (from {from}) on {}",
            node.http
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The "optionally rebalancing runs by itself": with `--auto-rebalance` on
/// both nodes, a node that joins later is filled to within the tolerance in rounds of
/// at most `--auto-rebalance-max-moves`, as rebalance migrations that `migrate status`
/// shows as automatic; only the leader (n1, the lowest id) ever acts, one migration at
/// a time; nobody is connected twice and no line said meanwhile is lost; once balanced,
/// further rounds move nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rebalance_fills_a_node_that_joined_later_and_only_the_leader_acts() {
    const N: usize = 8;
    let (ircd, db, dir, store, users, mut w) = limited_world(N).await;
    let n1 = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &AUTO);
    wait_nodes(&store, &[&n1]).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // Alone, n1 leads and finds nothing to do.
    await_rounds(&n1, "ferry_auto_rebalance_rounds_total", 2).await;
    assert!(store.migrations().await.unwrap().is_empty());

    let stop = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = users.iter().map(|(_, n)| n.clone()).collect();
    let watch = tokio::spawn(watch_presence_until(w, names, stop.clone(), 4));
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    let talking = Arc::new(AtomicBool::new(false));
    let talker = tokio::spawn(talk(t, talking.clone()));

    // n2 joins, with the same settings: n1 fills it, 3 users then 1 (8 → 4 and 4).
    let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &AUTO);
    wait_nodes(&store, &[&n1, &n2]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = node_of(&store).await;
        if count(&o, "n2") == N / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 was not filled: {o:?}\n{}",
            n1.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Balanced: more rounds of the leader move nobody and start no migration.
    let settled = node_of(&store).await;
    await_rounds(&n1, "ferry_auto_rebalance_rounds_total", 3).await;
    assert_eq!(node_of(&store).await, settled);
    assert_eq!((count(&settled, "n1"), count(&settled, "n2")), (4, 4));

    let mut ms = store.migrations().await.unwrap();
    ms.reverse();
    assert_eq!(ms.len(), 2, "two rounds (3 moves, then 1): {ms:?}");
    let mut moved = std::collections::BTreeSet::new();
    for (m, want) in ms.iter().zip([3, 1]) {
        assert_eq!(
            (m.kind.as_str(), m.state.as_str()),
            ("rebalance", "completed"),
            "{m:?}"
        );
        let opts: serde_json::Value = serde_json::from_str(&m.options).unwrap();
        assert_eq!(opts["automatic"], "n1", "started by the leader: {m:?}");
        let mu = store.migration_users(m.id).await.unwrap();
        assert_eq!(mu.len(), want, "{mu:?}");
        for u in &mu {
            assert!(u.state == "moved" && u.attempts == 1, "{u:?}");
            assert_eq!((u.from_node.as_str(), u.to_node.as_str()), ("n1", "n2"));
            assert!(moved.insert(u.user_id), "user {} moved twice", u.user_name);
        }
    }
    // One at a time: the second started after the first ended.
    assert!(
        ms[1].started_at.unwrap() >= ms[0].finished_at.unwrap(),
        "{ms:?}"
    );

    // Only the leader acted; the other node's loop ran and stood aside.
    assert_eq!(
        metric(&n1, "ferry_auto_rebalance_migrations_total").await,
        2
    );
    assert_eq!(metric(&n1, "ferry_auto_rebalance_moves_total").await, 4);
    assert_eq!(
        metric(&n1, "ferry_auto_rebalance_failed_rounds_total").await,
        0
    );
    assert_eq!(metric(&n2, "ferry_auto_rebalance_rounds_total").await, 0);
    assert_eq!(
        metric(&n2, "ferry_auto_rebalance_migrations_total").await,
        0
    );
    assert!(metric(&n2, "ferry_auto_rebalance_skipped_rounds_total").await > 0);
    assert!(
        n2.log().contains("automatic rebalance: another node leads"),
        "{}",
        n2.log()
    );
    let log = n1.log();
    for l in log.lines().filter(|l| l.contains("automatic rebalance")) {
        println!("n1: {l}");
    }
    for want in [
        "automatic rebalance is on",
        "automatic rebalance: the nodes are outside the tolerance; moving users",
        "automatic rebalance: migration completed",
        "automatic rebalance: the active nodes are within the tolerance",
    ] {
        assert!(log.contains(want), "{want:?} missing from n1's log:\n{log}");
    }

    // The history shows them as automatic.
    let (ok, status, err) = ferry(&db, &["migrate", "status"]).await;
    assert!(ok, "{status}{err}");
    println!("{status}");
    for m in &ms {
        let want = format!(
            "migration {} (rebalance n1 → n2, automatic by n1): completed",
            m.id
        );
        assert!(status.contains(&want), "{want:?} missing from:\n{status}");
    }

    talking.store(true, SeqCst);
    let sent = talker.await.unwrap();
    stop.store(true, SeqCst);
    let (mut w, joins) = watch.await.expect("no user was present twice");
    assert!(joins >= 4, "the watcher saw {joins} JOINs for 4 moves");
    wait_exactly_once(&mut w, &users, Duration::from_secs(30)).await;
    assert_lines_kept(&store, &users, &sent).await;
    drop((n1, n2, ircd));
}

/// Off by default: with the leader (n1) not turned on — though its interval is set to
/// a second — and n2 on but not the leader, nothing moves while n2's loop runs round
/// after round, and no migration is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rebalance_is_off_by_default_and_a_node_that_does_not_lead_never_acts() {
    const N: usize = 4;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, &ircd, N).await;
    let mut w = watcher(&ircd).await;
    let n1 = NodeProc::start_with(
        &db,
        dir.path(),
        "n1",
        "127.0.0.2",
        &["--auto-rebalance-interval-seconds", "1"],
    );
    wait_nodes(&store, &[&n1]).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &AUTO);
    wait_nodes(&store, &[&n1, &n2]).await;
    let start = node_of(&store).await;
    assert_eq!(count(&start, "n1"), N);

    // Five rounds of n2's loop: each finds n1 leading (and n1 does not act).
    await_rounds(&n2, "ferry_auto_rebalance_skipped_rounds_total", 5).await;
    assert_eq!(node_of(&store).await, start, "nobody moved");
    assert!(store.migrations().await.unwrap().is_empty());
    assert_eq!(metric(&n2, "ferry_auto_rebalance_rounds_total").await, 0);
    assert_eq!(metric(&n1, "ferry_auto_rebalance_rounds_total").await, 0);
    assert_eq!(
        metric(&n1, "ferry_auto_rebalance_skipped_rounds_total").await,
        0,
        "no loop runs on a node where it is off"
    );
    assert!(!n1.log().contains("automatic rebalance is on"));
    assert!(n2
        .log()
        .contains("automatic rebalance: another node leads; this one only watches"));
    wait_exactly_once(&mut w, &users, Duration::from_secs(10)).await;
    drop((n1, n2, ircd));
}

/// The automatic rebalance never runs beside another migration: while an operator's
/// migration is unfinished (here one a killed CLI left `planned`) the leader skips its
/// rounds and says why, nobody moves; once the operator aborts it, the next round
/// evens the nodes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rebalance_waits_while_an_operators_migration_is_unfinished() {
    const N: usize = 4;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, &ircd, N).await;
    let mut w = watcher(&ircd).await;
    let n1 = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &AUTO);
    wait_nodes(&store, &[&n1]).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let other = store
        .create_migration(
            &ferry::store::migrate::NewMigration {
                kind: "move",
                source_node: "n1",
                targets: &["n2".to_owned()],
                options: "{}",
                parent: None,
                now: chrono::Utc::now().timestamp_millis(),
            },
            &[],
        )
        .await
        .unwrap();
    let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &AUTO);
    wait_nodes(&store, &[&n1, &n2]).await;
    let start = node_of(&store).await;
    assert_eq!(count(&start, "n1"), N);

    // The leader's rounds are skipped (not counted as rounds it ran): nobody moves.
    await_rounds(&n1, "ferry_auto_rebalance_skipped_rounds_total", 4).await;
    assert_eq!(node_of(&store).await, start, "nobody moved");
    assert_eq!(store.migrations().await.unwrap().len(), 1);
    let want = format!(
        "migration {other} (move) is planned: the automatic rebalance waits until it is over"
    );
    assert!(n1.log().contains(&want), "{want:?} missing:\n{}", n1.log());

    // The operator ends it: the next round rebalances, 2 and 2.
    let (ok, out, err) = ferry(&db, &["migrate", "abort", &other.to_string()]).await;
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&node_of(&store).await, "n2") < N / 2 {
        assert!(Instant::now() < deadline, "not rebalanced:\n{}", n1.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ms = store.migrations().await.unwrap();
    assert_eq!(ms.len(), 2, "{ms:?}");
    assert!(
        ms[0].options.contains("\"automatic\":\"n1\""),
        "{:?}",
        ms[0]
    );
    wait_exactly_once(&mut w, &users, Duration::from_secs(30)).await;
    drop((n1, n2, ircd));
}
