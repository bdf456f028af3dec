//! `ferry migrate rebalance` against real `ferry serve` processes on PostgreSQL and a
//! real InspIRCd (per-IP limit and connect throttle on): a node that joins a busy
//! cluster later is filled exactly as the dry run planned, `--max-moves` is honoured,
//! nobody is ever connected twice (a watcher in the channel), no line said meanwhile
//! is lost (backlog or gap marker), and rollback puts the moved users back; a killed
//! CLI's rebalance resumes to the planned owners, moving nobody twice.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_fills_a_node_that_joined_later_as_its_dry_run_planned_then_rollback() {
    const N: usize = 8;
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
    let users = create_users(&store, &ircd, N).await;
    let mut w = watcher(&ircd).await;
    let n1 = NodeProc::start(&db, dir.path(), "n1", "127.0.0.2");
    wait_nodes(&store, &["n1"]).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // The second node joins a busy cluster: it stays empty until the rebalance.
    let n2 = NodeProc::start(&db, dir.path(), "n2", "127.0.0.3");
    wait_nodes(&store, &["n1", "n2"]).await;
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

    // Every line said is in every user's backlog exactly once, or the user was moving
    // then and a gap marker covers it.
    let mut downtime: BTreeMap<UserId, i64> = BTreeMap::new();
    for m in store.migrations().await.unwrap() {
        for u in store.migration_users(m.id).await.unwrap() {
            let d = downtime.entry(u.user_id).or_default();
            *d = (*d).max(u.downtime_ms.unwrap_or(0));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut in_gaps = 0;
    for (uid, uname) in &users {
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
        for (text, at) in &sent {
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
