//! Cluster mode on PostgreSQL: several nodes share one database and split the users.
//!
//! Nodes that must be SIGKILLed or SIGSTOPped run as real `ferry serve` processes
//! (each binding its upstream connections to its own loopback address, so InspIRCd
//! sees distinct hosts); routing tests use in-process nodes. "Connected exactly once"
//! is checked from the IRC server's side: a watcher in the channel reads NAMES, where a
//! second connection of a user shows as a second nick (`u1_`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::admin::NetworkSpec;
use ferry::store::{node_state, Store, UserId};
use futures::FutureExt;
use tokio::process::{Child, Command};

use super::fixtures::client::TestClient;
use super::fixtures::ferry::{test_guard, Backend, Ferry, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};
use super::fixtures::ports::free_port;

pub(crate) use crate::fixtures::cli::BIN;
const LEASE_SECS: u64 = 6;
pub(crate) const CHAN: &str = "#ferrycluster";

/// A `ferry serve` process. Killed (SIGKILL) on drop; only this PID is signalled.
pub(crate) struct NodeProc {
    id: String,
    child: Child,
    pub(crate) irc: String,
    pub(crate) http: String,
    log: PathBuf,
}

impl NodeProc {
    pub(crate) fn start(db: &TestDb, dir: &std::path::Path, id: &str, source_ip: &str) -> NodeProc {
        Self::start_with(db, dir, id, source_ip, &[])
    }

    /// [`NodeProc::start`] with more `serve` flags.
    pub(crate) fn start_with(
        db: &TestDb,
        dir: &std::path::Path,
        id: &str,
        source_ip: &str,
        extra: &[&str],
    ) -> NodeProc {
        let (http, irc) = (free_port(), free_port());
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["--database", &db.url, "--data-dir"])
            .arg(dir)
            .arg("--secret-key-file")
            .arg(db.key_file())
            .args(["serve", "--node-id", id])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--irc", &format!("127.0.0.1:{irc}")])
            .args(["--advertise-http", &format!("http://127.0.0.1:{http}")])
            .args(["--advertise-irc", &format!("127.0.0.1:{irc}")])
            .args(["--source-ip", source_ip])
            .args(["--lease-seconds", &LEASE_SECS.to_string()])
            .args(extra)
            .env("FERRY_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("ferry binary runs");
        NodeProc {
            id: id.to_owned(),
            child,
            irc: format!("127.0.0.1:{irc}"),
            http: format!("http://127.0.0.1:{http}"),
            log,
        }
    }

    pub(crate) fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: signalling a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (it is not reaped until the `Child` is waited
    /// on or dropped): its state in `/proc/PID/stat` is zombie, or it is gone.
    fn exited(&self) -> bool {
        let Some(pid) = self.child.id() else {
            return true;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return true;
        };
        // `PID (comm) STATE …`; the command name may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('Z' | 'X'))
    }
}

/// Users `u1..un`, each with network `test` in `CHAN` (owner: nobody yet; the nodes'
/// failover rounds place them).
pub(crate) async fn create_users(store: &Store, ircd: &Ircd, n: usize) -> Vec<(UserId, String)> {
    create_users_on(store, &[("test", ircd)], n).await
}

/// Users `u1..un`, each on every `(network name, server)` given, in `CHAN`.
pub(crate) async fn create_users_on(
    store: &Store,
    networks: &[(&str, &Ircd)],
    n: usize,
) -> Vec<(UserId, String)> {
    let mut out = Vec::new();
    for i in 1..=n {
        let name = format!("u{i}");
        let user = ferry::admin::create_user(store, &test_guard(), &name, "secret", false)
            .await
            .unwrap();
        for (net, ircd) in networks {
            let spec = NetworkSpec {
                name: (*net).into(),
                addr: ircd.addr(),
                nick: name.clone(),
                channels: vec![CHAN.into()],
                ..NetworkSpec::default()
            };
            store
                .create_network(user.id, &spec.to_new_network().unwrap())
                .await
                .unwrap();
        }
        out.push((user.id, name));
    }
    out
}

/// The channel's members as the server sees them, without the watcher.
pub(crate) async fn names(w: &mut TestClient) -> Vec<String> {
    w.send(format!("NAMES {CHAN}")).await;
    let mut names = Vec::new();
    loop {
        let l = w
            .expect("NAMES reply", |l| l.is("353") || l.is("366"))
            .await;
        if l.is("366") {
            break;
        }
        names.extend(
            l.last_str()
                .split_whitespace()
                .map(|n| n.trim_start_matches(['@', '+', '%', '~', '&']).to_owned())
                .filter(|n| n != w.nick()),
        );
    }
    names.sort();
    names
}

/// Connections per user, counting `nick_`-style fallbacks as the same user.
pub(crate) fn per_user(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.trim_end_matches('_').to_owned()).or_default() += 1;
    }
    m
}

/// Waits until every user has exactly one connection and nobody else is there.
/// Returns how long it took.
pub(crate) async fn wait_exactly_once(
    w: &mut TestClient,
    users: &[(UserId, String)],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let want: BTreeMap<String, usize> = users.iter().map(|(_, n)| (n.clone(), 1)).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let got = names(w).await;
        if per_user(&got) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not every user connected exactly once within {within:?}: {got:?}"
        );
    }
}

pub(crate) async fn watcher(ircd: &Ircd) -> TestClient {
    let mut w = TestClient::connect(&ircd.addr()).await;
    w.register("watcher").await;
    w.join(CHAN).await;
    w
}
/// `n` `ferry serve` processes (`n1`, `n2`, … with source addresses 127.0.0.2, …) on
/// a fresh PostgreSQL database, registered and live. Bind the parts in this order
/// (`let (dir, db, store, nodes) = …`) so the nodes stop before their database and
/// directory go.
pub(crate) async fn start_cluster(
    n: usize,
) -> (
    tempfile::TempDir,
    std::sync::Arc<TestDb>,
    Store,
    Vec<NodeProc>,
) {
    let db = TestDb::new(Backend::Postgres).await;
    let store = Store::open(&db.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let nodes: Vec<NodeProc> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NodeProc::start(&db, dir.path(), id, &format!("127.0.0.{}", i + 2)))
        .collect();
    wait_nodes(&store, &nodes.iter().collect::<Vec<_>>()).await;
    (dir, db, store, nodes)
}

/// Waits until every node in `nodes` is registered and active. A node whose process
/// exited first (a port taken meanwhile, a bad flag) is reported at once with its
/// log; at the deadline, the logs of those still missing are shown.
pub(crate) async fn wait_nodes(store: &Store, nodes: &[&NodeProc]) {
    // Generous: several nodes start at once on a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let registered = store.nodes().await.unwrap();
        let down: Vec<&NodeProc> = nodes
            .iter()
            .copied()
            .filter(|p| {
                !registered
                    .iter()
                    .any(|n| n.id == p.id && n.state == node_state::ACTIVE)
            })
            .collect();
        if down.is_empty() {
            return;
        }
        if let Some(p) = down.iter().find(|p| p.exited()) {
            panic!(
                "node {} exited before it registered; its log:\n{}",
                p.id,
                p.log()
            );
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = down
                .iter()
                .map(|p| format!("--- {}:\n{}", p.id, p.log()))
                .collect();
            panic!(
                "nodes did not register: {registered:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that exits before it registers (here: a flag it does not know) is reported
/// at once with its log, not after `wait_nodes`' two minutes as "did not register".
#[tokio::test]
async fn wait_nodes_reports_a_node_that_exited_with_its_log() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = Store::open(&db.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &["--no-such-flag"]);
    let started = Instant::now();
    let waited = std::panic::AssertUnwindSafe(wait_nodes(&store, &[&node]))
        .catch_unwind()
        .await;
    let panic = waited.expect_err("the node never registers");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("n1") && text.contains("exited before it registered"),
        "{text}"
    );
    assert!(
        text.contains("--no-such-flag"),
        "the node's log is shown: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reported at once"
    );
}

pub(crate) async fn owners(store: &Store) -> BTreeMap<UserId, (Option<String>, i64)> {
    store
        .ownerships()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.user_id, (o.node_id, o.epoch)))
        .collect()
}

async fn count_rows(db: &TestDb, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_users_and_fails_over_after_sigkill() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_dir, _db, store, mut nodes) = start_cluster(3).await;
    let users = create_users(&store, &ircd, 6).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;

    // Spread: every node runs some users, and every user has exactly one owner.
    let before = owners(&store).await;
    for n in ["n1", "n2", "n3"] {
        assert!(
            before.values().any(|(o, _)| o.as_deref() == Some(n)),
            "node {n} runs nobody: {before:?}"
        );
    }
    // The node list shows capacity and load.
    let listed = store.nodes().await.unwrap();
    assert!(listed
        .iter()
        .all(|n| n.fd_budget > 0 && n.schema_version >= 3));

    // A client of a user on n2 sees a line relayed; it is stored (flushed) before the kill.
    let (victim_user, victim_name) = users
        .iter()
        .find(|(id, _)| before[id].0.as_deref() == Some("n2"))
        .cloned()
        .unwrap();
    let mut c = TestClient::connect(&nodes[1].irc).await;
    c.send(format!("PASS {victim_name}/test:secret")).await;
    c.send(format!("NICK {victim_name}")).await;
    c.send(format!("USER {victim_name} 0 * :x")).await;
    c.expect("001", |l| l.is("001")).await;
    w.send(format!("PRIVMSG {CHAN} :acknowledged-before-kill"))
        .await;
    c.expect("the relayed line", |l| {
        l.is("PRIVMSG") && l.last_str() == "acknowledged-before-kill"
    })
    .await;
    let stored = |store: Store| async move {
        let q = ferry::store::SearchQuery {
            user: victim_user,
            text: "acknowledged-before-kill".into(),
            limit: 10,
            ..Default::default()
        };
        store.search(&q).await.unwrap().len()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(store.clone()).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the relayed line was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGKILL n2: its users come back through n1 and n3.
    nodes[1].child.start_kill().unwrap();
    let killed = Instant::now();
    let _ = nodes[1].child.wait().await;
    let took = wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // Exactly once again, and none of them is owned by n2 any more.
    let after = owners(&store).await;
    for (u, (o, e)) in &after {
        assert_ne!(o.as_deref(), Some("n2"), "user {u} still on the dead node");
        if before[u].0.as_deref() == Some("n2") {
            assert!(*e > before[u].1, "adoption bumps the epoch");
        }
    }
    let failover = killed.elapsed();
    eprintln!("FAILOVER: SIGKILL -> every user registered again in {failover:?} (wait loop {took:?}), lease {LEASE_SECS}s");
    assert!(
        failover < Duration::from_secs(LEASE_SECS * 2 + 10),
        "failover took {failover:?}"
    );
    let dead = store.nodes().await.unwrap();
    assert_eq!(
        dead.iter().find(|n| n.id == "n2").unwrap().state,
        node_state::DEAD
    );
    // Nothing acknowledged is lost from the backlog.
    assert_eq!(stored(store.clone()).await, 1);
    drop(c);
    for n in &nodes {
        if n.id != "n2" {
            assert!(!n.log().contains("panicked"), "{}", n.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_woken_after_losing_its_lease_writes_nothing() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (_dir, db, store, nodes) = start_cluster(2).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    let victims: Vec<UserId> = before
        .iter()
        .filter(|(_, (o, _))| o.as_deref() == Some("n2"))
        .map(|(u, _)| *u)
        .collect();
    assert!(!victims.is_empty(), "{before:?}");

    // Pause n2 past its lease (plus margin): n1 adopts its users.
    nodes[1].signal(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = owners(&store).await;
        if victims.iter().all(|u| o[u].0.as_deref() == Some("n1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 did not adopt n2's users: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Lines the paused node's sockets now hold: after waking it must not store them.
    for i in 0..5 {
        w.send(format!("PRIVMSG {CHAN} :while-paused-{i}")).await;
    }
    w.roundtrip().await;
    let old_epochs: Vec<String> = victims
        .iter()
        .map(|u| format!("(user_id = {u} AND epoch = {})", before[u].1))
        .collect();
    let stale_rows = format!(
        "SELECT COUNT(*) FROM messages WHERE {}",
        old_epochs.join(" OR ")
    );
    let stale_before = count_rows(&db, &stale_rows).await;

    nodes[1].signal(libc::SIGCONT);
    // The woken node registers again (heartbeat told it it was dead) with no users.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n2 = store
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.id == "n2")
            .unwrap();
        if n2.state == node_state::ACTIVE
            && n2.lease_expires_at > chrono::Utc::now()
            && n2.health.users == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 did not come back empty: {n2:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In the end every user-network has exactly one connection: the woken node
    // dropped its own.
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    w.send(format!("PRIVMSG {CHAN} :after-wake")).await;
    w.roundtrip().await;
    assert_eq!(
        count_rows(&db, &stale_rows).await,
        stale_before,
        "the woken node wrote rows with its old epoch"
    );
    let log = nodes[1].log();
    assert!(
        log.contains("lease"),
        "the woken node says it lost its lease:\n{log}"
    );
    // Its users stay with n1.
    let o = owners(&store).await;
    assert!(
        victims.iter().all(|u| o[u].0.as_deref() == Some("n1")),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_non_owner_node_reach_their_user() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let lease = |c: &mut ferry::config::NodeConfig| {
        c.cluster = ferry::cluster::ClusterConfig::with_lease(Duration::from_secs(LEASE_SECS));
    };
    let a = Ferry::start_on(db.clone(), lease).await;
    let b = Ferry::start_on(db.clone(), lease).await;
    let id = a.add_user("alice", "secret").await;
    a.add_network(
        id,
        NetworkSpec {
            name: "test".into(),
            addr: ircd.addr(),
            nick: "alice".into(),
            channels: vec![CHAN.into()],
            ..NetworkSpec::default()
        },
    )
    .await;
    a.wait_connected(id, "test", 1).await;
    assert!(
        b.services().users.get(id).is_none(),
        "only the owner runs the user"
    );
    let owner = b.services().owner_of(id).await.unwrap();
    assert!(!owner.local);
    assert_eq!(owner.irc_addr.as_deref(), Some(&a.irc_addr()[..]));

    // IRC: the client logs in on b and is proxied to a, with its caps.
    let mut c = b.client("alice", "test", "secret", &["server-time"]).await;
    c.expect("the channel from the owner's burst", |l| {
        l.is("JOIN") && l.param_str(0) == CHAN
    })
    .await;
    let mut w = watcher(&ircd).await;
    w.send(format!("PRIVMSG {CHAN} :to-the-proxied-client"))
        .await;
    let line = c
        .expect("a relayed line", |l| {
            l.is("PRIVMSG") && l.last_str() == "to-the-proxied-client"
        })
        .await;
    assert!(
        line.tag("time").is_some(),
        "server-time was negotiated through the proxy"
    );
    c.send(format!("PRIVMSG {CHAN} :from-the-proxied-client"))
        .await;
    w.expect("the client's line upstream", |l| {
        l.is("PRIVMSG") && l.last_str() == "from-the-proxied-client"
    })
    .await;

    // Web: b answers API requests for alice with where her owner is.
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/login", b.http_url()))
        .json(&serde_json::json!({"username": "alice", "password": "secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().expect("a session token").to_owned();
    let r = http
        .get(format!("{}/api/networks", b.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "moved");
    assert_eq!(body["error"]["owner"]["http"], a.http_url());
    // The same session works on the owner (sessions live in the shared store).
    let r = http
        .get(format!("{}/api/networks", a.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Web: a websocket on the non-owner is told where the session runs.
    let url = format!(
        "{}/ws?token={token}",
        b.http_url().replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    use futures::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        serde_json::json!({ "type": "resume", "last_id": null })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let moved = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("no websocket error");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "moved" {
                break v;
            }
        }
    };
    assert_eq!(
        moved["url"],
        format!("{}/ws", a.http_url().replacen("http", "ws", 1))
    );
}
