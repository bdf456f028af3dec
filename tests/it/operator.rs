//! What a new operator meets in the first hour (issue 18, findings 7–12 and 16): the
//! real `ferry` binary on SQLite and PostgreSQL stores, real InspIRCd where users
//! connect. Each test is named after its finding.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry::admin::NetworkSpec;
use ferry::store::{node_state, NetworkLimits, NodeHealth, NodeRecord, Store, UserId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::cluster::{
    create_users, start_cluster, wait_exactly_once, wait_nodes, watcher, NodeProc, BIN, CHAN,
};
use super::fixtures::cli::{self, CliOut as Out};
use super::fixtures::ferry::{test_guard, Backend, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};
use super::fixtures::ports::free_port;

/// Runs the CLI with `store` (`--data-dir DIR` or `--database URL`) and `args`.
async fn run(store: &[&str], args: &[&str], stdin: &str) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(store).args(args);
    cli::run(cmd, stdin, Duration::from_secs(90)).await
}

fn sqlite_url(data: &Path) -> String {
    format!("sqlite://{}", data.join("ferry.db").display())
}

/// `ferry serve` on `data` with free ports; returns the child and its first stdout
/// line (the banner), or `None` when it exits first (with what it said).
async fn serve(store: &[&str], extra: &[&str]) -> (Child, Result<String, String>) {
    let mut child = Command::new(BIN)
        .args(store)
        .args(["serve", "--http"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--irc")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(extra)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve prints its banner or exits")
        .unwrap();
    match banner {
        Some(b) => (child, Ok(b)),
        None => {
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .unwrap()
                .unwrap();
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            (child, Err(format!("{status}: {err}")))
        }
    }
}

/// Registers a node record that no process backs: live for `lease`.
async fn fake_node(store: &Store, id: &str, lease: Duration, health: NodeHealth) {
    let now = Utc::now();
    let rec = NodeRecord {
        id: id.into(),
        admin_url: "http://127.0.0.1:1".into(),
        admin_token: "none".into(),
        http_addr: "http://127.0.0.1:1".into(),
        irc_addr: "127.0.0.1:1".into(),
        version: "test".into(),
        state: node_state::ACTIVE.into(),
        started_at: now,
        heartbeat_at: now,
        source_ips: Vec::new(),
        schema_version: store.schema_version().await.unwrap(),
        config_fingerprint: String::new(),
        fd_limit: 65536,
        fd_budget: 60000,
        health: NodeHealth::default(),
        lease_expires_at: now,
    };
    store.register_node(&rec, lease).await.unwrap();
    store.heartbeat_node(id, &health, lease).await.unwrap();
}

/// A user with one network `name` at `addr`, owned by `node`.
async fn owned_user(store: &Store, user: &str, net: &str, addr: &str, node: &str) -> UserId {
    let u = ferry::admin::create_user(store, &test_guard(), user, "secret", false)
        .await
        .unwrap();
    let spec = NetworkSpec {
        name: net.into(),
        addr: addr.into(),
        nick: user.into(),
        ..NetworkSpec::default()
    };
    store
        .create_network(u.id, &spec.to_new_network().unwrap())
        .await
        .unwrap();
    assert!(store
        .assign_user(u.id, Some(node), 0)
        .await
        .unwrap()
        .is_some());
    u.id
}

/// Finding 7: a second `serve` on the same data directory, or with the node id of a
/// running node on a shared store, is refused with a clear error, and the first
/// node keeps its record and lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding7_second_serve_on_a_data_dir_or_live_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let (mut first, banner) = serve(&["--data-dir", &data_arg], &[]).await;
    banner.expect("the first node serves");
    let (_, second) = serve(&["--data-dir", &data_arg], &["--node-id", "other"]).await;
    let err = second.expect_err("a second serve on the same data directory must not start");
    assert!(
        err.contains("already running on this data directory"),
        "{err}"
    );
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(store.node_is_live("local").await.unwrap());
    // The lock goes with the process: after a clean stop a new node starts.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGTERM) };
    assert!(first.wait().await.unwrap().success());
    let (_again, banner) = serve(&["--data-dir", &data_arg], &[]).await;
    banner.expect("a node starts once the first one is gone");

    // PostgreSQL: one store, nodes on different machines (data dirs); the node id of a
    // running node is refused, the first keeps its lease and record.
    let db = TestDb::new(Backend::Postgres).await;
    let pg = Store::open(&db.url).await.unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let n1 = NodeProc::start(&db, &dir.path().join("a"), "n1", "127.0.0.2");
    wait_nodes(&pg, &[&n1]).await;
    let before = pg.nodes().await.unwrap();
    let other_dir = dir.path().join("b");
    let (_, second) = serve(
        &[
            "--database",
            &db.url,
            "--secret-key-file",
            db.key_file().to_str().unwrap(),
            "--data-dir",
            other_dir.to_str().unwrap(),
        ],
        &["--node-id", "n1"],
    )
    .await;
    let err = second.expect_err("a second node with a live node's id must not start");
    assert!(err.contains("node id \"n1\" is in use"), "{err}");
    let after = pg.nodes().await.unwrap();
    assert_eq!(
        before[0].admin_url, after[0].admin_url,
        "the first node's record was taken over"
    );
    assert!(pg.node_is_live("n1").await.unwrap());
    assert!(!n1.log().contains("declared dead"), "{}", n1.log());
}

/// Finding 8: in a cluster, `user list` says the same whichever node answers: each
/// user's owner node and whether that node runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding8_user_list_is_the_same_from_every_node() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_dir, db, store, _nodes) = start_cluster(2).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(90)).await;
    let owners: BTreeMap<String, String> = store
        .ownerships()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.user_name, o.node_id.unwrap()))
        .collect();
    assert!(
        owners.values().any(|n| n == "n1") && owners.values().any(|n| n == "n2"),
        "both nodes must run someone for this test: {owners:?}"
    );
    // Ask each node's admin API in turn (the CLI asks whichever heartbeated last).
    let key = ferry::secrets::SecretKey::load(&db.key_file()).unwrap();
    for node in store.nodes().await.unwrap() {
        let token = key
            .recover_admin_token(&node.id, &node.admin_token)
            .unwrap();
        let rows: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!("{}/api/admin/users", node.admin_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in &rows {
            let name = r["name"].as_str().unwrap();
            assert_eq!(r["running"], true, "node {} says {r}", node.id);
            assert_eq!(
                r["node"].as_str(),
                Some(owners[name].as_str()),
                "node {} says {r}",
                node.id
            );
        }
        assert_eq!(rows.len(), 4);
    }
    let key = db.key_file();
    let out = run(
        &[
            "--database",
            &db.url,
            "--secret-key-file",
            key.to_str().unwrap(),
        ],
        &["user", "list"],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.lines().next().unwrap().contains("NODE"),
        "{}",
        out.stdout
    );
    for (name, node) in &owners {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap();
        assert!(line.ends_with(&format!("yes     {node}")), "{line}");
    }
}

/// Finding 9: `node list` counts the sessions of networks added after the user's
/// actor started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding9_node_list_counts_sessions_of_networks_added_later() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = ["--data-dir", data.to_str().unwrap()];
    let out = run(&d, &["user", "add", "alice"], "secret12\n").await;
    assert!(out.ok, "{}", out.stderr);
    let (_serve, banner) = serve(&d, &[]).await;
    banner.expect("serves");
    // The user runs (started at once, with no network); then two networks come.
    let addr = ircd.addr();
    for (name, nick) in [("a", "alice1"), ("b", "alice2")] {
        let out = run(
            &d,
            &[
                "network", "add", "--user", "alice", "--name", name, "--addr", &addr, "--nick",
                nick,
            ],
            "",
        )
        .await;
        assert!(out.ok, "{}", out.stderr);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&d, &["--json", "node", "list"], "").await;
        assert!(out.ok, "{}", out.stderr);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        if rows[0]["sessions"] == 2 {
            assert_eq!(rows[0]["users"], 1, "{rows:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions never counted: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Removing a network counts down.
    let out = run(
        &d,
        &[
            "network", "remove", "--user", "alice", "--name", "b", "--yes",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&d, &["--json", "node", "list"], "").await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        if rows[0]["sessions"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Finding 10: with limits keyed by a network's name, the plan counts the sessions the
/// target already holds on that network (it planned a slot that did not exist).
#[tokio::test]
async fn finding10_plan_counts_held_sessions_under_a_name_keyed_limit() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let store = Store::open(&db.url).await.unwrap();
        let addr = "127.0.0.1:6667";
        // One slot per IP on the network the users call `net` (reached by IP address,
        // so only a name key can group it).
        store
            .set_network_limits(&NetworkLimits::new("net", 1, 60.0, 1))
            .await
            .unwrap();
        let held = NodeHealth {
            users: 1,
            sessions: 1,
            sessions_per_network: [(addr.to_owned(), 1)].into_iter().collect(),
            sessions_per_ip: [("default".to_owned(), 1)].into_iter().collect(),
            ..NodeHealth::default()
        };
        fake_node(
            &store,
            "n1",
            Duration::from_secs(3600),
            NodeHealth::default(),
        )
        .await;
        fake_node(&store, "n2", Duration::from_secs(3600), held).await;
        owned_user(&store, "u1", "net", addr, "n1").await;
        owned_user(&store, "u2", "net", addr, "n2").await;
        let opts = ferry::migrate::Options::default();
        let (_, _, plan) =
            ferry::migrate::make_plan(&store, Some("n1"), None, &["n2".to_owned()], &opts)
                .await
                .unwrap();
        let slot = plan
            .slots
            .iter()
            .find(|s| s.network == "net")
            .expect("a slot on net");
        assert_eq!((slot.held, slot.planned), (1, 1), "{backend:?}: {plan:?}");
        assert!(
            plan.problems
                .iter()
                .any(|p| p.contains("net from default would hold 2 sessions")),
            "{backend:?}: {:?}",
            plan.problems
        );
    }
}

/// Finding 11: a drain to itself is refused; the dry run's ETA counts the preflight's
/// probe connects; `rollback` shows its plan and ETA; a rolled-back migration shows
/// no made-up downtime; `limits set` refuses a key no network falls under.
#[tokio::test]
async fn finding11_migrate_and_limits_refuse_mistakes_and_show_honest_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = ["--data-dir", data.to_str().unwrap()];
    let out = run(&d, &["user", "add", "u1"], "secret12\n").await;
    assert!(out.ok, "{}", out.stderr);
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let addr = "127.0.0.1:6667";
    let u1 = store.user_by_name("u1").await.unwrap().unwrap().id;
    let spec = NetworkSpec {
        name: "net".into(),
        addr: addr.into(),
        nick: "u1".into(),
        ..NetworkSpec::default()
    };
    store
        .create_network(u1, &spec.to_new_network().unwrap())
        .await
        .unwrap();

    // Limits: a key that matches no network is refused (nothing stored) unless forced.
    let limits = |key: &'static str| {
        [
            "limits",
            "set",
            key,
            "--sessions-per-ip",
            "10",
            "--connects-per-minute",
            "60",
        ]
    };
    let out = run(&d, &limits("nonexistent-net"), "").await;
    assert!(
        !out.ok
            && out
                .stderr
                .contains("no network falls under \"nonexistent-net\""),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(store.network_limits().await.unwrap().is_empty());
    let mut forced = limits("future-net").to_vec();
    forced.push("--force");
    let out = run(&d, &forced, "").await;
    assert!(out.ok, "{}", out.stderr);
    for key in ["net", "127.0.0.1"] {
        let out = run(&d, &limits(key), "").await;
        assert!(out.ok, "{key}: {}", out.stderr);
    }
    store.delete_network_limits("127.0.0.1").await.unwrap();

    // Two users on n1 under `net` (60 a minute, burst 1), one target IP.
    fake_node(
        &store,
        "n1",
        Duration::from_secs(3600),
        NodeHealth::default(),
    )
    .await;
    fake_node(
        &store,
        "n2",
        Duration::from_secs(3600),
        NodeHealth::default(),
    )
    .await;
    assert!(store
        .assign_user(u1, Some("n1"), 0)
        .await
        .unwrap()
        .is_some());
    owned_user(&store, "u2", "net", addr, "n1").await;

    let out = run(
        &d,
        &["migrate", "drain", "n2", "--to", "n2", "--dry-run"],
        "",
    )
    .await;
    assert!(
        !out.ok && out.stderr.contains("cannot drain node \"n2\" to itself"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(store.migrations().await.unwrap().is_empty());

    // The preflight probe takes the one burst token: 2 users then take 2 s, not 1.
    let out = run(
        &d,
        &[
            "--json",
            "migrate",
            "drain",
            "n1",
            "--to",
            "n2",
            "--dry-run",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let plan: serde_json::Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let eta = plan["plan"]["eta_seconds"].as_f64().unwrap();
    assert!((eta - 2.0).abs() < 1e-6, "{plan}");

    // A migration that moved both users, then was rolled back.
    let (chosen, _, p) = ferry::migrate::make_plan(
        &store,
        Some("n1"),
        None,
        &["n2".to_owned()],
        &ferry::migrate::Options::default(),
    )
    .await
    .unwrap();
    let from = chosen.iter().map(|(u, n)| (u.id, n.clone())).collect();
    let id = ferry::migrate::create(
        &store,
        ferry::migrate::MigrationKind::Drain,
        "n1",
        &["n2".to_owned()],
        &from,
        &p,
        &ferry::migrate::Options::default(),
        None,
    )
    .await
    .unwrap();
    for (u, _) in &chosen {
        ferry::migrate::set_move_state(&store, id, u.id, ferry::migrate::MoveState::Moved)
            .await
            .unwrap();
    }
    let out = run(&d, &["migrate", "rollback", &id.to_string()], "").await;
    assert!(!out.ok && out.stderr.contains("--yes"), "{}", out.stderr);
    assert!(
        out.stdout.contains("plan: 2 users")
            && out.stdout.contains("→ n1: 2 users")
            && out.stdout.contains("ETA the limits impose: 2 s"),
        "{}",
        out.stdout
    );
    for (u, _) in &chosen {
        ferry::migrate::set_move_state(&store, id, u.id, ferry::migrate::MoveState::RolledBack)
            .await
            .unwrap();
    }
    let out = run(&d, &["migrate", "status", &id.to_string()], "").await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("2 rolled back") && out.stdout.contains("downtime p50 -, p99 -"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("p50 0 ms"), "{}", out.stdout);
}

/// Finding 12: a closed pipe ends a command quietly; logs have no colour codes when
/// not on a terminal; `serve --help` shows defaults and every option and argument
/// has help; `node remove` refuses a live node and a node that still owns users,
/// removes a dead one; `node list` shows a dead node as dead, without figures.
#[tokio::test]
async fn finding12_pipes_logs_help_and_node_remove() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = ["--data-dir", data.to_str().unwrap()];
    let out = run(&d, &["user", "add", "alice"], "secret12\n").await;
    assert!(out.ok, "{}", out.stderr);
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let busy = NodeHealth {
        users: 7,
        // Not a number any other column shows (the schema version is one digit).
        sessions: 947,
        ..NodeHealth::default()
    };
    fake_node(&store, "live", Duration::from_secs(3600), busy.clone()).await;
    fake_node(&store, "gone", Duration::ZERO, busy).await;
    let alice = store.user_by_name("alice").await.unwrap().unwrap().id;
    assert!(store
        .assign_user(alice, Some("gone"), 0)
        .await
        .unwrap()
        .is_some());

    // `ferry node list | head -c 0`: the reader is gone before the first line.
    let mut child = Command::new(BIN)
        .args(d)
        .args(["node", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Logs to a pipe: no ANSI escapes.
    let out = Command::new(BIN)
        .args(d)
        .args(["user", "list"])
        .env("FERRY_LOG", "debug")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.is_empty(), "debug logging says something");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");

    // Help: defaults shown, every argument explained.
    let out = run(&[], &["serve", "--help"], "").await;
    assert!(out.ok, "{}", out.stderr);
    for want in [
        "[default: 127.0.0.1:8080",
        "[default: 127.0.0.1:6667",
        "[default: local]",
        "[default: 15]",
    ] {
        assert!(out.stdout.contains(want), "{want} missing: {}", out.stdout);
    }
    let defaults = ferry::config::NodeConfig::new(String::new());
    assert!(out.stdout.contains(&defaults.http.to_string()));
    assert!(out.stdout.contains(&defaults.node_id));
    assert_eq!(
        ferry::cluster::ClusterConfig::default().lease,
        Duration::from_secs(15)
    );
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(
        &<ferry::cli::Cli as clap::CommandFactory>::command(),
        "ferry",
        &mut missing,
    );
    assert!(missing.is_empty(), "arguments without help: {missing:?}");

    // node list: the dead node is dead, its figures are not shown as current.
    let out = run(&d, &["node", "list"], "").await;
    assert!(out.ok, "{}", out.stderr);
    let gone = out.stdout.lines().find(|l| l.starts_with("gone")).unwrap();
    assert!(gone.contains(" dead "), "{gone}");
    assert!(!gone.contains(" 947 "), "stale session count shown: {gone}");
    let live = out.stdout.lines().find(|l| l.starts_with("live")).unwrap();
    assert!(
        live.contains(" active ") && live.contains(" 947 "),
        "{live}"
    );
    let out = run(&d, &["--json", "node", "list"], "").await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let gone = rows.iter().find(|r| r["id"] == "gone").unwrap();
    assert_eq!(gone["state"], "dead");
    assert!(gone["sessions"].is_null(), "{gone}");

    // node remove: a live node is refused, a dead one that still owns users too.
    let out = run(&d, &["node", "remove", "live"], "").await;
    assert!(!out.ok && out.stderr.contains("is alive"), "{}", out.stderr);
    let out = run(&d, &["node", "remove", "gone"], "").await;
    assert!(
        !out.ok && out.stderr.contains("still owns 1 users (alice)"),
        "{}",
        out.stderr
    );
    let out = run(&d, &["node", "remove", "nobody"], "").await;
    assert!(
        !out.ok && out.stderr.contains("no node \"nobody\""),
        "{}",
        out.stderr
    );
    // Adopted elsewhere: now it goes.
    let epoch = store.owner(alice).await.unwrap().unwrap().epoch;
    assert!(store
        .assign_user(alice, Some("live"), epoch)
        .await
        .unwrap()
        .is_some());
    let out = run(&d, &["node", "remove", "gone"], "").await;
    assert!(out.ok, "{}", out.stderr);
    let ids: Vec<String> = store
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["live"]);
}

/// Finding 16: with two nodes on PostgreSQL, admin changes made through the CLI reach
/// the node that runs each user at once, whichever node the CLI reached: networks
/// added connect, a removed network disconnects, a removed user leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding16_admin_changes_reach_the_owner_node() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_dir, db, store, _nodes) = start_cluster(2).await;
    let key = db.key_file();
    let d = [
        "--database",
        db.url.as_str(),
        "--secret-key-file",
        key.to_str().unwrap(),
    ];
    let names = ["q1", "q2", "q3", "q4"];
    for n in names {
        let out = run(&d, &["user", "add", n], "secret12\n").await;
        assert!(out.ok, "{}", out.stderr);
    }
    // Placement spread them; wait until every owner runs its users.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owners = loop {
        let o: BTreeMap<String, Option<String>> = store
            .ownerships()
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.user_name, o.node_id))
            .collect();
        if o.values().all(Option::is_some) {
            break o;
        }
        assert!(Instant::now() < deadline, "{o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on = |node: &str| {
        owners
            .values()
            .filter(|o| o.as_deref() == Some(node))
            .count()
    };
    assert!(on("n1") > 0 && on("n2") > 0, "{owners:?}");

    let mut w = watcher(&ircd).await;
    let addr = ircd.addr();
    for n in names {
        let out = run(
            &d,
            &[
                "network",
                "add",
                "--user",
                n,
                "--name",
                "test",
                "--addr",
                &addr,
                "--nick",
                n,
                "--channels",
                CHAN,
            ],
            "",
        )
        .await;
        assert!(out.ok, "{n}: {}", out.stderr);
    }
    let users: Vec<(UserId, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i as UserId, (*n).to_owned()))
        .collect();
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;

    // The live state is the owner's, whichever node answers.
    for n in names {
        let out = run(&d, &["network", "list", "--user", n], "").await;
        assert!(out.ok, "{}", out.stderr);
        assert!(out.stdout.contains("connected"), "{n}: {}", out.stdout);
    }
    // One user on each node loses its network; one more is removed altogether.
    let on_n1 = owners
        .iter()
        .find(|(_, o)| o.as_deref() == Some("n1"))
        .map(|(u, _)| u.clone())
        .unwrap();
    let on_n2 = owners
        .iter()
        .find(|(_, o)| o.as_deref() == Some("n2"))
        .map(|(u, _)| u.clone())
        .unwrap();
    for u in [&on_n1, &on_n2] {
        let out = run(
            &d,
            &["network", "remove", "--user", u, "--name", "test", "--yes"],
            "",
        )
        .await;
        assert!(out.ok, "{}", out.stderr);
    }
    let gone = names
        .iter()
        .find(|n| **n != on_n1 && **n != on_n2)
        .unwrap()
        .to_string();
    let out = run(&d, &["user", "remove", &gone, "--yes"], "").await;
    assert!(out.ok, "{}", out.stderr);
    let left: Vec<(UserId, String)> = names
        .iter()
        .filter(|n| ![&on_n1, &on_n2, &gone].contains(&&n.to_string()))
        .enumerate()
        .map(|(i, n)| (i as UserId, (*n).to_owned()))
        .collect();
    assert_eq!(left.len(), 1);
    wait_exactly_once(&mut w, &left, Duration::from_secs(60)).await;
    assert!(store.user_by_name(&gone).await.unwrap().is_none());
}

/// Finding 16, the other half: a change for a user whose owner node is live but does
/// not answer is refused with the reason, and nothing is changed.
#[tokio::test]
async fn finding16_a_change_for_an_unreachable_owner_is_refused() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = super::fixtures::ferry::Ferry::start_on(db, |_| {}).await;
    let store = a.store().clone();
    // "ghost" holds a live lease, but nothing listens at its admin URL.
    fake_node(
        &store,
        "ghost",
        Duration::from_secs(3600),
        NodeHealth::default(),
    )
    .await;
    let u = ferry::admin::create_user(&store, &test_guard(), "q9", "secret", false)
        .await
        .unwrap();
    assert!(store
        .assign_user(u.id, Some("ghost"), 0)
        .await
        .unwrap()
        .is_some());
    let http = reqwest::Client::new();
    let token = &a.services().node.admin_token.token;
    let resp = http
        .post(format!("{}/api/admin/users/q9/networks", a.http_url()))
        .bearer_auth(token)
        .json(&serde_json::json!({ "name": "test", "addr": "127.0.0.1:6667", "nick": "q9" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "owner_unreachable", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("runs on node \"ghost\"") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert!(store.networks(u.id).await.unwrap().is_empty());
    let resp = http
        .delete(format!("{}/api/admin/users/q9", a.http_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(store.user_by_name("q9").await.unwrap().is_some());
}
