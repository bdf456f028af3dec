//! In-place upgrade (`ferry upgrade`, SIGUSR2): the real binary hands its listening
//! sockets, node id and data-dir lock to a new process. "Two binaries" are one binary
//! started with different `FERRY_VERSION_OVERRIDE`s: the new one is a shell script that
//! sets it and execs the real binary (the upgrade socket, fd 3, survives the exec).
//!
//! Users on plaintext upstreams are parked by the old process and resumed by the new
//! one on the same connections, attached IRC clients with them (no QUIT/JOIN, no
//! client disconnect); TLS upstreams reconnect. The tests check: the listeners never
//! refuse a connection, the version changes, the backlog keeps every line once, a
//! refused upgrade changes nothing, a new binary failing after the handoff leaves the
//! old one carrying on on the same connections, and in a cluster the node keeps its
//! users' owner rows and epochs (no failover).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::store::{HistoryQuery, Store, StoredMessage, UserId};
use tokio::process::{Child, Command};

use super::cluster::{create_users, owners, wait_exactly_once, watcher, CHAN};
use super::fixtures::cli::BIN;
use super::fixtures::client::TestClient;
use super::fixtures::ferry::{test_guard, Backend, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};
use super::fixtures::ports::free_port;

const OLD: &str = "1.0.0-old";
pub(super) const NEW: &str = "2.0.0-new";

/// Kills a process this test caused to start (the new `ferry serve` of an upgrade is
/// the old one's child, not ours) by its PID when dropped.
pub(super) struct KillPid(pub(super) u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        // SAFETY: signalling one PID this test learnt from the upgrade it ran.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// A `ferry serve` started from `exe` (a copy of the binary in the test's directory,
/// so that the test can replace the file as an operator would).
pub(super) struct Node {
    pub(super) child: Child,
    dir: PathBuf,
    db: Arc<TestDb>,
    pub(super) irc: String,
    pub(super) http: String,
    log: PathBuf,
}

impl Node {
    pub(super) fn start(db: &Arc<TestDb>, dir: &Path, exe: &Path) -> Node {
        let (http, irc) = (free_port(), free_port());
        let log = dir.join("serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(exe)
            .args(global_args(db, dir))
            .args(["serve", "--node-id", "solo", "--lease-seconds", "6"])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--irc", &format!("127.0.0.1:{irc}")])
            .env("FERRY_LOG", "info,sqlx=warn")
            .env("FERRY_VERSION_OVERRIDE", OLD)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("ferry binary runs");
        Node {
            child,
            dir: dir.to_owned(),
            db: db.clone(),
            irc: format!("127.0.0.1:{irc}"),
            http: format!("http://127.0.0.1:{http}"),
            log,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ferry upgrade` with these extra arguments against this node's store.
    pub(super) async fn upgrade(&self, extra: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(global_args(&self.db, &self.dir))
            .arg("upgrade")
            .args(extra)
            .env("FERRY_LOG", "warn");
        tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .expect("ferry upgrade returns")
            .unwrap()
    }
}

fn global_args(db: &TestDb, dir: &Path) -> Vec<String> {
    vec![
        "--database".into(),
        db.url.clone(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--secret-key-file".into(),
        db.key_file().display().to_string(),
    ]
}

/// A shell script that runs the real binary with `env` set (`NAME=value` words).
pub(super) fn wrapper(path: &Path, env: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("#!/bin/sh\n{env} exec {BIN} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A rename, as an operator replacing a running binary does.
    std::fs::rename(&tmp, path).unwrap();
}

/// The SQLite store's data-dir lock, which names the PID holding it.
fn lock_path(db: &TestDb) -> PathBuf {
    PathBuf::from(format!("{}.lock", db.url.trim_start_matches("sqlite://")))
}

pub(super) async fn healthz_version(http: &str) -> String {
    let v: serde_json::Value = reqwest::get(format!("{http}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["version"].as_str().unwrap_or_default().to_owned()
}

pub(super) async fn wait_serving(http: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{http}/healthz")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{http} never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to both listeners in a loop until stopped (at most 3,000 rounds), counting
/// connections and refusals.
struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
    connected: Arc<AtomicU64>,
}

impl Prober {
    fn start(addrs: Vec<String>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), connected.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..3000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                for a in &addrs {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        tokio::net::TcpStream::connect(a),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => failures.push(format!("{a}: {e}")),
                        Err(_) => failures.push(format!("{a}: connect timed out")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (c.load(Ordering::Relaxed), failures)
        });
        Prober {
            stop,
            task,
            connected,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

pub(super) async fn channel_backlog(store: &Store, user: UserId) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .history(&HistoryQuery {
                user,
                buffer_key: Some(CHAN.as_bytes().to_vec()),
                after,
                limit: 500,
                ..HistoryQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|m| m.seq);
        out.extend(page);
    }
}

/// How many stored lines of `user`'s channel have exactly the text `text`.
pub(super) fn count(backlog: &[StoredMessage], text: &str) -> usize {
    backlog.iter().filter(|m| m.text == text).count()
}

/// Says `prefix 1..=n` in the channel and waits until `user` stored the last one.
async fn talk(w: &mut TestClient, store: &Store, user: UserId, prefix: &str, n: usize) {
    for i in 1..=n {
        w.send(format!("PRIVMSG {CHAN} :{prefix} {i}")).await;
    }
    let last = format!("{prefix} {n}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&channel_backlog(store, user).await, &last) == 0 {
        assert!(Instant::now() < deadline, "{last:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn assert_each_once(backlog: &[StoredMessage], prefix: &str, n: usize) {
    for i in 1..=n {
        let text = format!("{prefix} {i}");
        assert_eq!(count(backlog, &text), 1, "{text:?} stored once");
    }
}

/// A node on SQLite with two users in the channel, a watcher, and lines said before.
struct Setup {
    _ircd: Ircd,
    dir: tempfile::TempDir,
    store: Store,
    users: Vec<(UserId, String)>,
    w: TestClient,
    node: Node,
    exe: PathBuf,
}

async fn setup(backend: Backend) -> Setup {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, &ircd, 2).await;
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let node = Node::start(&db, dir.path(), &exe);
    wait_serving(&node.http).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    talk(&mut w, &store, users[0].0, "before", 20).await;
    Setup {
        _ircd: ircd,
        dir,
        store,
        users,
        w,
        node,
        exe,
    }
}

/// What must hold once the new process serves: the old one exited 0, the new one
/// reports the new version, a client is served, every user is there exactly once and
/// never left (no QUIT), and the backlog has every line once, before and after.
async fn after_upgrade(s: &mut Setup) {
    let status = tokio::time::timeout(Duration::from_secs(30), s.node.child.wait())
        .await
        .expect("the old process exits")
        .unwrap();
    assert!(status.success(), "old process: {status}\n{}", s.node.log());
    let exited = chrono::Utc::now();
    assert_eq!(healthz_version(&s.node.http).await, NEW);
    // The new process's limiter holds a slot for each moved connection (adopted):
    // its heartbeat publishes both sessions.
    assert_eq!(published_held(&s.store, exited).await, 2);
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(60)).await;
    // Both users are on plaintext: their connections moved, nobody left the channel.
    assert_eq!(
        s.w.transcript().matches(" QUIT ").count(),
        0,
        "{}",
        s.w.transcript()
    );
    // A client connecting right after is served by the new process.
    let name = &s.users[0].1;
    let mut c = TestClient::connect(&s.node.irc).await;
    c.send(format!("PASS {name}/test:secret")).await;
    c.send(format!("NICK {name}")).await;
    c.send(format!("USER {name} 0 * :{name}")).await;
    c.expect("001 from the new process", |l| l.is("001")).await;
    talk(&mut s.w, &s.store, s.users[0].0, "after", 20).await;
    let backlog = channel_backlog(&s.store, s.users[0].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "after", 20);
    // The node kept its id: one record, the new version.
    let nodes = s.store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].id, "solo");
    assert_eq!(nodes[0].version, NEW);
}

/// The sessions holding a limiter slot under the ircd's key (`127.0.0.1`) that the
/// node's first heartbeat after `since` published (`nodes.key_load`, what placement
/// and `ferry node list` read).
async fn published_held(store: &Store, since: chrono::DateTime<chrono::Utc>) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = store.nodes().await.unwrap();
        if let Some(n) = nodes.iter().find(|n| n.heartbeat_at > since) {
            return n.health.key_load.get("127.0.0.1").map_or(0, |l| l.held);
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat after {since}: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Node {
    fn pid_or(&self, default: u32) -> u32 {
        self.child.id().unwrap_or(default)
    }
}

/// (a) `ferry upgrade --binary NEW`: new PID and version, the listeners never refused
/// a connection, the backlog intact and the lines said after stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_command_hands_the_listeners_over() {
    let mut s = setup(Backend::Sqlite).await;
    let old_pid = s.node.pid();
    let new_bin = s.dir.path().join("ferry-new");
    wrapper(&new_bin, &format!("FERRY_VERSION_OVERRIDE={NEW}"));
    let http_addr = s.node.http.trim_start_matches("http://").to_owned();
    let prober = Prober::start(vec![s.node.irc.clone(), http_addr]);
    while prober.connected.load(Ordering::Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = s
        .node
        .upgrade(&["--binary", new_bin.to_str().unwrap(), "--json"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", s.node.log());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let new_pid = report["new"]["pid"].as_u64().unwrap() as u32;
    let _kill = KillPid(new_pid);
    // Keep probing a little past the handoff.
    let before = prober.connected.load(Ordering::Relaxed);
    while prober.connected.load(Ordering::Relaxed) < before + 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (connected, refused) = prober.finish().await;
    assert!(refused.is_empty(), "connections failed: {refused:?}");
    assert!(connected > 20, "{connected}");
    assert_eq!(report["old"]["pid"], old_pid);
    assert_eq!(report["old"]["version"], OLD);
    assert_eq!(report["new"]["version"], NEW);
    assert_ne!(new_pid, old_pid);
    assert_eq!(report["moved"]["http"], 1);
    assert_eq!(report["moved"]["irc"], 1);
    // Both users are on plaintext: their connections moved.
    assert_eq!(report["moved"]["upstream"], 2, "{report}");
    assert_eq!(report["reconnected"]["upstream"], 0, "{report}");
    assert!(report["pause_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["total_ms"].as_f64() >= report["pause_ms"].as_f64(),
        "{report}"
    );
    after_upgrade(&mut s).await;
    // The data-dir lock moved with the node: it names the new process.
    let lock = std::fs::read_to_string(lock_path(&s.node.db)).unwrap();
    assert_eq!(lock.trim(), new_pid.to_string());
}

/// (b) SIGUSR2 after replacing the binary file: the same, with the node's own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_from_the_replaced_binary() {
    let mut s = setup(Backend::Sqlite).await;
    let old_pid = s.node.pid();
    // Replace the file the node was started from, then signal it.
    wrapper(&s.exe, &format!("FERRY_VERSION_OVERRIDE={NEW}"));
    let http_addr = s.node.http.trim_start_matches("http://").to_owned();
    let prober = Prober::start(vec![s.node.irc.clone(), http_addr]);
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(old_pid as i32, libc::SIGUSR2) }, 0);
    // The new process names itself in the data-dir lock it took over.
    let lock = lock_path(&s.node.db);
    let deadline = Instant::now() + Duration::from_secs(120);
    let new_pid = loop {
        let pid: u32 = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(old_pid);
        if pid != old_pid {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new process\n{}",
            s.node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _kill = KillPid(new_pid);
    after_upgrade(&mut s).await;
    let (connected, refused) = prober.finish().await;
    assert!(refused.is_empty(), "connections failed: {refused:?}");
    assert!(connected > 0);
    assert!(
        s.node.log().contains("upgrade: the new process serves"),
        "{}",
        s.node.log()
    );
}

/// (c) A new binary that fails (`/bin/false`) or refuses: the command fails with the
/// reason; the old process serves on, same PID and version, its users and attached
/// client still connected, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_refusing_binary_leaves_the_node_serving() {
    let mut s = setup(Backend::Sqlite).await;
    let old_pid = s.node.pid();
    let name = s.users[0].1.clone();
    let mut c = TestClient::connect(&s.node.irc).await;
    c.send(format!("PASS {name}/test:secret")).await;
    c.send(format!("NICK {name}")).await;
    c.send(format!("USER {name} 0 * :{name}")).await;
    c.expect("001", |l| l.is("001")).await;
    let joins_before = s.w.transcript().matches(" JOIN ").count();

    let out = s.node.upgrade(&["--binary", "/bin/false"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("ended before answering its check") && stderr.contains("serves on"),
        "{stderr}"
    );

    let refusing = s.dir.path().join("ferry-refuses");
    wrapper(
        &refusing,
        "FERRY_UPGRADE_REFUSE='not-today' FERRY_VERSION_OVERRIDE=2.0.0-new",
    );
    let out = s
        .node
        .upgrade(&["--binary", refusing.to_str().unwrap(), "--timeout", "20"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("refused: not-today") && stderr.contains("serves on"),
        "{stderr}"
    );

    // Same process, same version, still serving its attached client.
    assert_eq!(s.node.pid_or(0), old_pid);
    assert!(s.node.child.try_wait().unwrap().is_none());
    assert_eq!(healthz_version(&s.node.http).await, OLD);
    s.w.send(format!("PRIVMSG {CHAN} :still here")).await;
    c.expect("a line relayed by the old process", |l| {
        l.is("PRIVMSG") && l.last_str() == "still here"
    })
    .await;
    // Nobody left or joined the channel.
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(5)).await;
    assert_eq!(s.w.transcript().matches(" JOIN ").count(), joins_before);
    assert_eq!(s.w.transcript().matches(" QUIT ").count(), 0);
    talk(&mut s.w, &s.store, s.users[0].0, "later", 5).await;
    let backlog = channel_backlog(&s.store, s.users[0].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "later", 5);
    assert_eq!(count(&backlog, "still here"), 1);
}

/// (d) PostgreSQL, two nodes: upgrading one keeps its id, its users' owner rows and
/// epochs; the other node adopts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_one_node_of_a_cluster_starts_no_failover() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (dir, db, store, nodes) = super::cluster::start_cluster(2).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    let adoptions = nodes[1].log().matches("adopt").count();
    assert!(
        before.values().any(|(n, _)| n.as_deref() == Some("n1")),
        "{before:?}"
    );
    let new_bin = dir.path().join("ferry-new");
    wrapper(&new_bin, &format!("FERRY_VERSION_OVERRIDE={NEW}"));
    let mut cmd = Command::new(BIN);
    cmd.args(["--database", &db.url, "--secret-key-file"])
        .arg(db.key_file())
        .args(["upgrade", "--node", "n1", "--json", "--binary"])
        .arg(&new_bin);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        nodes[0].log()
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let _kill = KillPid(report["new"]["pid"].as_u64().unwrap() as u32);
    assert_eq!(report["node"], "n1");
    assert_eq!(healthz_version(&nodes[0].http).await, NEW);
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // Past a lease: still the same owners and epochs, both nodes active.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(owners(&store).await, before);
    let list = store.nodes().await.unwrap();
    for id in ["n1", "n2"] {
        let n = list.iter().find(|n| n.id == id).unwrap();
        assert_eq!(n.state, ferry::store::node_state::ACTIVE, "{n:?}");
    }
    assert_eq!(
        nodes[1].log().matches("adopt").count(),
        adoptions,
        "n2 adopted: {}",
        nodes[1].log()
    );
}

/// A new binary that passes its check but fails after the barrier: the old process
/// accepts again on the same sockets and restarts its users; the lines said around
/// it are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_failing_after_the_handoff_lets_the_old_node_resume() {
    let mut s = setup(Backend::Sqlite).await;
    let old_pid = s.node.pid();
    let failing = s.dir.path().join("ferry-fails");
    wrapper(
        &failing,
        &format!("FERRY_UPGRADE_FAIL_AFTER_HANDOFF=1 FERRY_VERSION_OVERRIDE={NEW}"),
    );
    let out = s
        .node
        .upgrade(&["--binary", failing.to_str().unwrap()])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not take over") && stderr.contains("resumed serving"),
        "{stderr}"
    );
    // It failed before touching the parked connections: the old process carried on
    // on them (nobody left the channel).
    assert!(
        stderr.contains("2 of its 2 parked user(s) carried on"),
        "{stderr}"
    );
    assert!(s.node.child.try_wait().unwrap().is_none());
    assert_eq!(s.node.pid_or(0), old_pid);
    assert_eq!(healthz_version(&s.node.http).await, OLD);
    // The lock still names the old process; its users are back, clients served.
    let lock = std::fs::read_to_string(lock_path(&s.node.db)).unwrap();
    assert_eq!(lock.trim(), old_pid.to_string());
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(60)).await;
    assert_eq!(s.w.transcript().matches(" QUIT ").count(), 0);
    let name = s.users[0].1.clone();
    let mut c = TestClient::connect(&s.node.irc).await;
    c.send(format!("PASS {name}/test:secret")).await;
    c.send(format!("NICK {name}")).await;
    c.send(format!("USER {name} 0 * :{name}")).await;
    c.expect("001 from the resumed node", |l| l.is("001")).await;
    talk(&mut s.w, &s.store, s.users[0].0, "resumed", 10).await;
    let backlog = channel_backlog(&s.store, s.users[0].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "resumed", 10);
}

/// Numbered lines the talker of the live-handoff test says, one every [`PACE`].
const LINES: usize = 120;
const PACE: Duration = Duration::from_millis(50);

/// Reads `c` until a PRIVMSG `text`, returning every line read; panics on EOF.
pub(super) async fn read_until(
    c: &mut TestClient,
    text: &str,
) -> Vec<super::fixtures::client::Line> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(Some(l)) => {
                let done = l.is("PRIVMSG") && l.last_str() == text;
                seen.push(l);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("closed waiting for {text}: {}", c.transcript()),
            Err(()) => panic!("timed out waiting for {text}: {}", c.transcript()),
        }
    }
}

/// The live handoff: a user on a plaintext upstream in the channel with a raw IRC
/// client attached, and a user on a TLS upstream, while a talker says numbered lines
/// throughout. After `ferry upgrade`: the channel saw no QUIT/JOIN of the plaintext
/// user, the client's socket stayed open and got every line exactly once, the store
/// has every line once, the PID and version changed, and the report counts one
/// upstream and one client moved and the TLS upstream reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_moves_plaintext_connections_without_anyone_noticing() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let mut users = create_users(&store, &ircd, 1).await;
    let tls_user = ferry::admin::create_user(&store, &test_guard(), "t1", "secret", false)
        .await
        .unwrap();
    let spec = ferry::admin::NetworkSpec {
        name: "test".into(),
        addr: ircd.tls_addr().unwrap(),
        tls: true,
        tls_verify: Some("insecure".into()),
        nick: "t1".into(),
        channels: vec![CHAN.into()],
        ..ferry::admin::NetworkSpec::default()
    };
    store
        .create_network(tls_user.id, &spec.to_new_network().unwrap())
        .await
        .unwrap();
    users.push((tls_user.id, "t1".into()));
    let (plain, plain_name) = users[0].clone();
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let mut node = Node::start(&db, dir.path(), &exe);
    wait_serving(&node.http).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // The raw client, attached to the plaintext user.
    let mut c = TestClient::connect(&node.irc).await;
    c.send(format!("PASS {plain_name}/test:secret")).await;
    c.send(format!("NICK {plain_name}")).await;
    c.send(format!("USER {plain_name} 0 * :{plain_name}")).await;
    c.expect("001", |l| l.is("001")).await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == CHAN)
        .await;
    c.roundtrip().await;
    // From here on the watcher must see nothing of the plaintext user's but lines.
    let mark = w.transcript().len();
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    let said = Arc::new(AtomicU64::new(0));
    let counter = said.clone();
    let talker = tokio::spawn(async move {
        for i in 1..=LINES {
            t.send(format!("PRIVMSG {CHAN} :n {i}")).await;
            counter.store(i as u64, Ordering::Relaxed);
            tokio::time::sleep(PACE).await;
        }
        t.roundtrip().await;
        t
    });
    // Some lines before the handoff, the rest during and after it.
    while said.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old_pid = node.pid();
    let new_bin = dir.path().join("ferry-new");
    wrapper(&new_bin, &format!("FERRY_VERSION_OVERRIDE={NEW}"));
    let out = node
        .upgrade(&["--binary", new_bin.to_str().unwrap(), "--json"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let said_at_upgrade = said.load(Ordering::Relaxed);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let new_pid = report["new"]["pid"].as_u64().unwrap() as u32;
    let _kill = KillPid(new_pid);
    eprintln!(
        "handoff: pause {} ms, accept pause {} ms, total {} ms (talker at line {said_at_upgrade} of {LINES})",
        report["pause_ms"], report["accept_pause_ms"], report["total_ms"]
    );
    assert!(
        (said_at_upgrade as usize) < LINES,
        "the talker was still talking when the upgrade ended: {report}"
    );
    assert_ne!(new_pid, old_pid);
    assert_eq!(report["old"]["pid"], old_pid);
    assert_eq!(report["new"]["version"], NEW);
    assert_eq!(report["moved"]["upstream"], 1, "{report}");
    assert_eq!(report["moved"]["irc_client"], 1, "{report}\n{}", node.log());
    assert_eq!(
        report["reconnected"]["upstream"], 1,
        "the TLS one: {report}"
    );
    assert_eq!(report["reconnected"]["clients"], 0, "{report}");
    let pause = report["pause_ms"].as_f64().unwrap();
    assert!(
        pause > 0.0 && pause <= report["total_ms"].as_f64().unwrap(),
        "{report}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), node.child.wait())
        .await
        .expect("the old process exits")
        .unwrap();
    assert!(status.success(), "old process: {status}\n{}", node.log());
    assert_eq!(healthz_version(&node.http).await, NEW);
    talker.await.unwrap();
    let last = format!("n {LINES}");
    // The attached client kept its socket and got every line exactly once, and was
    // told nothing again (no welcome, no burst, no error).
    let seen = read_until(&mut c, &last).await;
    let texts: Vec<String> = seen
        .iter()
        .filter(|l| l.is("PRIVMSG"))
        .map(|l| l.last_str())
        .collect();
    for i in 1..=LINES {
        let t = format!("n {i}");
        let n = texts.iter().filter(|x| **x == t).count();
        assert_eq!(n, 1, "the client got {t:?} {n} times: {}", c.transcript());
    }
    let again: Vec<String> = seen
        .iter()
        .filter(|l| {
            l.is("001") || l.is("ERROR") || l.is("353") || (l.is("JOIN") && l.nick() == plain_name)
        })
        .map(|l| l.raw_str())
        .collect();
    assert!(again.is_empty(), "the client was told again: {again:?}");
    // The same socket speaks through the new process on the same registration.
    c.send(format!("PRIVMSG {CHAN} :from the moved client"))
        .await;
    w.expect("the moved client's line", |l| {
        l.is("PRIVMSG") && l.nick() == plain_name && l.last_str() == "from the moved client"
    })
    .await;
    // The TLS user reconnected; the plaintext one never left.
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // The new process counts the moved connection (adopted) and the TLS one (connected
    // again through the limiter): its heartbeat publishes two live upstreams.
    assert_eq!(published_held(&store, chrono::Utc::now()).await, 2);
    let watched = &w.transcript()[mark..];
    let noticed: Vec<&str> = watched
        .lines()
        .filter(|l| {
            l.contains(&format!(":{plain_name}!"))
                && [" QUIT", " JOIN ", " PART "].iter().any(|c| l.contains(c))
        })
        .collect();
    assert!(
        noticed.is_empty(),
        "the channel noticed {plain_name}: {noticed:?}"
    );
    assert!(
        watched
            .lines()
            .any(|l| l.contains(":t1!") && l.contains(" JOIN ")),
        "the TLS user reconnected (joined again): {watched}"
    );
    // Every line stored exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&channel_backlog(&store, plain).await, &last) == 0 {
        assert!(Instant::now() < deadline, "{last:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog = channel_backlog(&store, plain).await;
    assert_each_once(&backlog, "n", LINES);
}

/// A new binary that fails after it resumed the parked users (before confirming):
/// the old process must not carry on on the parts it kept (the new one may have
/// read from the connections); it closes them, its users reconnect, and the lines
/// said before and after are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_failing_after_resuming_makes_the_old_node_reconnect() {
    let mut s = setup(Backend::Sqlite).await;
    let old_pid = s.node.pid();
    let failing = s.dir.path().join("ferry-fails-late");
    wrapper(
        &failing,
        &format!("FERRY_UPGRADE_FAIL_AFTER_RESUME=1 FERRY_VERSION_OVERRIDE={NEW}"),
    );
    let out = s
        .node
        .upgrade(&["--binary", failing.to_str().unwrap()])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not take over")
            && stderr.contains("0 of its 2 parked user(s) carried on"),
        "{stderr}\n{}",
        s.node.log()
    );
    assert!(s.node.child.try_wait().unwrap().is_none());
    assert_eq!(s.node.pid_or(0), old_pid);
    assert_eq!(healthz_version(&s.node.http).await, OLD);
    let lock = std::fs::read_to_string(lock_path(&s.node.db)).unwrap();
    assert_eq!(lock.trim(), old_pid.to_string());
    // Back, each exactly once, on new connections.
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(60)).await;
    talk(&mut s.w, &s.store, s.users[0].0, "reconnected", 10).await;
    let backlog = channel_backlog(&s.store, s.users[0].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "reconnected", 10);
}
