//! In-place upgrade (`ferry upgrade`, SIGUSR2): the real binary hands its listening
//! sockets, node id and data-dir lock to a new process. "Two binaries" are one binary
//! started with different `FERRY_VERSION_OVERRIDE`s: the new one is a shell script that
//! sets it and execs the real binary (the upgrade socket, fd 3, survives the exec).
//!
//! Users on plaintext upstreams are parked by the old process and resumed by the new
//! one on the same connections, attached IRC clients with them (no QUIT/JOIN, no
//! client disconnect); TLS upstreams reconnect, unless the kernel has kernel TLS: then
//! TLS upstreams and clients move too (run in a guest with it where the host has not,
//! `scripts/ktls-vm.sh`). The tests check: the listeners never
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
use super::web::{drive_browser, BrowserRequests};

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
        Node::start_with(db, dir, exe, &[], &[])
    }

    /// [`Node::start`] with extra global arguments (`--config …`) and environment.
    pub(super) fn start_with(
        db: &Arc<TestDb>,
        dir: &Path,
        exe: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        Node::start_leased(db, dir, exe, args, env, 6)
    }

    /// [`Node::start_with`] with a lease of `lease_seconds` (an emulated guest needs
    /// longer than the 6 s the others use).
    pub(super) fn start_leased(
        db: &Arc<TestDb>,
        dir: &Path,
        exe: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        lease_seconds: u64,
    ) -> Node {
        let (http, irc) = (free_port(), free_port());
        let log = dir.join("serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(exe)
            .args(global_args(db, dir))
            .args(args)
            .envs(env.iter().copied())
            .args(["serve", "--node-id", "solo"])
            .args(["--lease-seconds", &lease_seconds.to_string()])
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

/// Starts a node on `db` from a copy of this binary in `dir`, once it serves and a
/// watcher in [`CHAN`] sees every one of `users` there exactly once (within `within`).
pub(super) async fn start_watched(
    db: &Arc<TestDb>,
    dir: &Path,
    ircd: &Ircd,
    users: &[(UserId, String)],
    within: Duration,
) -> (Node, TestClient) {
    start_watched_with(db, dir, ircd, users, within, &[]).await
}

/// [`start_watched`], the node started with `env`.
pub(super) async fn start_watched_with(
    db: &Arc<TestDb>,
    dir: &Path,
    ircd: &Ircd,
    users: &[(UserId, String)],
    within: Duration,
    env: &[(&str, &str)],
) -> (Node, TestClient) {
    let exe = dir.join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let node = Node::start_with(db, dir, &exe, &[], env);
    wait_serving(&node.http).await;
    let mut w = watcher(ircd).await;
    wait_exactly_once(&mut w, users, within).await;
    (node, w)
}

/// A plain IRC client `talker` on `ircd`, in [`CHAN`].
pub(super) async fn talker_in_chan(ircd: &Ircd) -> TestClient {
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    t
}

/// Upgrades `node` (see [`upgrade_to_new`]) while a talker says its `lines` lines
/// (`said` so far) and prints the pauses under `label`: the report, how far the talker
/// was when `ferry upgrade` returned, and the new process (killed on drop), which has
/// a new PID and the new version.
pub(super) async fn upgrade_while_talking(
    node: &Node,
    dir: &Path,
    said: &AtomicU64,
    lines: usize,
    label: &str,
) -> (serde_json::Value, u64, KillPid) {
    let old_pid = node.pid();
    let out = upgrade_to_new(node, dir).await;
    let said_at_upgrade = said.load(Ordering::Relaxed);
    let report = upgrade_report(node, &out);
    let new_pid = report["new"]["pid"].as_u64().unwrap() as u32;
    let kill = KillPid(new_pid);
    eprintln!(
        "{label}: pause {} ms, accept pause {} ms, total {} ms (talker at line {said_at_upgrade} of {lines})",
        report["pause_ms"], report["accept_pause_ms"], report["total_ms"]
    );
    assert_ne!(new_pid, old_pid);
    assert_eq!(report["new"]["version"], NEW);
    (report, said_at_upgrade, kill)
}

/// `ferry upgrade --json` on `node` to a wrapper (in `dir`) of this binary that
/// reports [`NEW`] as its version.
pub(super) async fn upgrade_to_new(node: &Node, dir: &Path) -> std::process::Output {
    let new_bin = dir.join("ferry-new");
    wrapper(&new_bin, &format!("FERRY_VERSION_OVERRIDE={NEW}"));
    node.upgrade(&["--binary", new_bin.to_str().unwrap(), "--json"])
        .await
}

/// The JSON report of a `ferry upgrade --json` that must have succeeded.
pub(super) fn upgrade_report(node: &Node, out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_str(&stdout).unwrap()
}

/// The old process of an upgraded `node` exits, and exits 0.
pub(super) async fn old_process_exits(node: &mut Node) {
    let status = tokio::time::timeout(Duration::from_secs(30), node.child.wait())
        .await
        .expect("the old process exits")
        .unwrap();
    assert!(status.success(), "old process: {status}\n{}", node.log());
}

/// A talker `t` saying `n 1` to `n {lines}` in [`CHAN`], one every `pace`: how many
/// it has said so far, and the task (giving `t` back after a roundtrip).
pub(super) fn start_talker(
    mut t: TestClient,
    lines: usize,
    pace: Duration,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<TestClient>) {
    let said = Arc::new(AtomicU64::new(0));
    let counter = said.clone();
    let talker = tokio::spawn(async move {
        for i in 1..=lines {
            t.send(format!("PRIVMSG {CHAN} :n {i}")).await;
            counter.store(i as u64, Ordering::Relaxed);
            tokio::time::sleep(pace).await;
        }
        t.roundtrip().await;
        t
    });
    (said, talker)
}

/// Waits until the talker has said at least `n` lines.
pub(super) async fn wait_said(said: &AtomicU64, n: u64) {
    while said.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw IRC client attached to `name`'s network `test` on `irc`, past its burst JOIN
/// of [`CHAN`].
pub(super) async fn attach_raw(irc: &str, name: &str) -> TestClient {
    let mut c = TestClient::connect(irc).await;
    c.send(format!("PASS {name}/test:secret")).await;
    c.send(format!("NICK {name}")).await;
    c.send(format!("USER {name} 0 * :{name}")).await;
    c.expect("001", |l| l.is("001")).await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == CHAN)
        .await;
    c.roundtrip().await;
    c
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
    setup_env(backend, &[]).await
}

/// [`setup`], the node started with `env`.
async fn setup_env(backend: Backend, env: &[(&str, &str)]) -> Setup {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, &ircd, 2).await;
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let node = Node::start_with(&db, dir.path(), &exe, &[], env);
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
    old_process_exits(&mut s.node).await;
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
    // It failed before any user was handed over (it never said it was up): the old
    // process carried on on their connections (nobody left the channel).
    assert!(stderr.contains("2 of its 2 user(s) carried on"), "{stderr}");
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
    users.push((tls_user(&store, &ircd, "t1").await, "t1".into()));
    let (plain, plain_name) = users[0].clone();
    let (mut node, mut w) =
        start_watched(&db, dir.path(), &ircd, &users, Duration::from_secs(60)).await;
    // The raw client, attached to the plaintext user.
    let mut c = attach_raw(&node.irc, &plain_name).await;
    // From here on the watcher must see nothing of the plaintext user's but lines.
    let mark = w.transcript().len();
    let t = talker_in_chan(&ircd).await;
    let (said, talker) = start_talker(t, LINES, PACE);
    // Some lines before the handoff, the rest during and after it.
    wait_said(&said, 20).await;
    let old_pid = node.pid();
    let (report, said_at_upgrade, _kill) =
        upgrade_while_talking(&node, dir.path(), &said, LINES, "handoff").await;
    assert!(
        (said_at_upgrade as usize) < LINES,
        "the talker was still talking when the upgrade ended: {report}"
    );
    assert_eq!(report["old"]["pid"], old_pid);
    // Where the kernel has kernel TLS the TLS upstream moves too (see
    // `tls_connections_move_as_kernel_tls`); elsewhere it reconnects.
    let ktls = ferry::ktls::available();
    assert_eq!(report["moved"]["upstream"], 1 + u64::from(ktls), "{report}");
    assert_eq!(report["moved"]["irc_client"], 1, "{report}\n{}", node.log());
    assert_eq!(
        report["reconnected"]["upstream"],
        u64::from(!ktls),
        "the TLS one: {report}"
    );
    assert_eq!(report["reconnected"]["clients"], 0, "{report}");
    let pause = report["pause_ms"].as_f64().unwrap();
    assert!(
        pause > 0.0 && pause <= report["total_ms"].as_f64().unwrap(),
        "{report}"
    );
    old_process_exits(&mut node).await;
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
    // The TLS user reconnected (or moved, with kernel TLS); the plaintext one never left.
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
        ktls || watched
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
        stderr.contains("did not take over") && stderr.contains("0 of its 2 user(s) carried on"),
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

/// The users move in batches (one user each here): a new binary that fails right
/// after resuming the first batch leaves that user to reconnect (the new process
/// had its connection), while the old process carries on with the other on its own
/// connection — it had parked it, not sent it. Nobody is there twice, and the lines
/// said before and after are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_failing_after_one_batch_leaves_the_rest_with_the_old_node() {
    let mut s = setup_env(Backend::Sqlite, &[(ferry::upgrade::BATCH_ENV, "1")]).await;
    let old_pid = s.node.pid();
    let failing = s.dir.path().join("ferry-fails-mid");
    wrapper(
        &failing,
        &format!(
            "{}=1 FERRY_VERSION_OVERRIDE={NEW}",
            ferry::upgrade::FAIL_AFTER_BATCHES_ENV
        ),
    );
    let out = s
        .node
        .upgrade(&["--binary", failing.to_str().unwrap()])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not take over")
            && stderr.contains("1 of its 2 user(s) carried on")
            && stderr.contains("the other 1 reconnect"),
        "{stderr}\n{}",
        s.node.log()
    );
    assert!(s.node.child.try_wait().unwrap().is_none());
    assert_eq!(s.node.pid_or(0), old_pid);
    assert_eq!(healthz_version(&s.node.http).await, OLD);
    let lock = std::fs::read_to_string(lock_path(&s.node.db)).unwrap();
    assert_eq!(lock.trim(), old_pid.to_string());
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(60)).await;
    // One user left (its connection died with the new process) and came back; the
    // other never left.
    let transcript = s.w.transcript();
    let quits = transcript.lines().filter(|l| l.contains(" QUIT ")).count();
    assert_eq!(quits, 1, "{transcript}");
    talk(&mut s.w, &s.store, s.users[0].0, "after", 10).await;
    talk(&mut s.w, &s.store, s.users[1].0, "other", 10).await;
    let backlog = channel_backlog(&s.store, s.users[0].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "after", 10);
    let backlog = channel_backlog(&s.store, s.users[1].0).await;
    assert_each_once(&backlog, "before", 20);
    assert_each_once(&backlog, "other", 10);
}

// Clients at the barrier: websockets told to reconnect, and lines clients sent that
// the old process had read but not handled.

/// How long each user's actor waits after it took its park (see
/// `FERRY_UPGRADE_PARK_DELAY_MS`): lines clients send meanwhile queue up behind the
/// park, the case the carry is for.
const PARK_DELAY_MS: &str = "300";

/// The close reason of a websocket at an upgrade (`http::ws::ending::RESTARTING`).
const RESTARTING: &str = "Ferry is restarting; reconnect to continue";

/// A node whose users send upstream without flood pacing (the tests' clients send
/// faster than one line a second) and whose actors wait [`PARK_DELAY_MS`] at the
/// park, on SQLite, with `n` users in the channel and a watcher there.
async fn barrier_setup(
    ircd: &Ircd,
    n: usize,
) -> (
    tempfile::TempDir,
    Arc<TestDb>,
    Store,
    Vec<(UserId, String)>,
    Node,
    TestClient,
) {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, ircd, n).await;
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[upstream]\nmessages_per_second = 1000.0\nmessage_burst = 1000\n",
    )
    .unwrap();
    let node = Node::start_with(
        &db,
        dir.path(),
        &exe,
        &["--config", config.to_str().unwrap()],
        &[("FERRY_UPGRADE_PARK_DELAY_MS", PARK_DELAY_MS)],
    );
    wait_serving(&node.http).await;
    let mut w = watcher(ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    (dir, db, store, users, node, w)
}

/// Reads the watcher until it has seen `nick` say every one of `texts`, then returns
/// how many times it saw each (the channel as everyone in it sees it).
async fn said_in_channel(
    w: &mut TestClient,
    nick: &str,
    texts: &[String],
) -> std::collections::BTreeMap<String, usize> {
    let count = |w: &TestClient| {
        let mut seen: std::collections::BTreeMap<String, usize> =
            texts.iter().map(|t| (t.clone(), 0)).collect();
        for raw in w.transcript().lines() {
            let Some(raw) = raw.trim_start().strip_prefix("<< ") else {
                continue;
            };
            let l = super::fixtures::client::parse_line(raw.as_bytes());
            if l.is("PRIVMSG") && l.nick() == nick && l.param_str(0) == CHAN {
                if let Some(n) = seen.get_mut(&l.last_str()) {
                    *n += 1;
                }
            }
        }
        seen
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = count(w);
        let missing: Vec<&String> = seen
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(t, _)| t)
            .collect();
        if missing.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.recv_timeout(left).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => {
                let t = w.transcript();
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                panic!("the channel never saw {nick} say {missing:?}; last read: {tail:#?}")
            }
        }
    }
    // Anything sent twice would arrive right behind: one round trip more.
    w.roundtrip().await;
    count(w)
}

/// An attached IRC client keeps sending numbered lines, one every 10 ms and now and
/// then two in one write (pipelined), while the node upgrades; the actor waits at the
/// park, so some lines are read by the old process and queued behind the park. Every
/// line reaches the channel exactly once and is stored once: the ones the old process
/// read but had not handled went to the new one with the client's unparsed bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_carries_lines_a_client_sent_at_the_barrier() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (dir, _db, store, users, mut node, mut w) = barrier_setup(&ircd, 1).await;
    let (user, name) = users[0].clone();
    let mut c = attach_raw(&node.irc, &name).await;
    let upgraded = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (done, counter) = (upgraded.clone(), sent.clone());
    let sender = tokio::spawn(async move {
        let mut i = 0;
        let mut after = 0;
        // Until well past the upgrade (at most 3,000 lines).
        while after < 50 && i < 3000 {
            i += 1;
            if i % 10 == 0 {
                c.send(format!(
                    "PRIVMSG {CHAN} :c {i}\r\nPRIVMSG {CHAN} :c {}",
                    i + 1
                ))
                .await;
                i += 1;
            } else {
                c.send(format!("PRIVMSG {CHAN} :c {i}")).await;
            }
            counter.store(i, Ordering::Relaxed);
            if done.load(Ordering::Relaxed) {
                after += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.roundtrip().await;
        (c, i)
    });
    wait_said(&sent, 30).await;
    let out = upgrade_to_new(&node, dir.path()).await;
    upgraded.store(true, Ordering::Relaxed);
    let report = upgrade_report(&node, &out);
    let _kill = KillPid(report["new"]["pid"].as_u64().unwrap() as u32);
    assert_eq!(report["moved"]["irc_client"], 1, "{report}");
    old_process_exits(&mut node).await;
    let (mut c, last) = sender.await.unwrap();
    // The lines were sent into the park: some were queued behind it.
    assert!(
        node.log().contains("carrying client lines not yet handled"),
        "no line was queued at the barrier; the test proves nothing: {}",
        node.log()
    );
    let texts: Vec<String> = (1..=last).map(|i| format!("c {i}")).collect();
    let seen = said_in_channel(&mut w, &name, &texts).await;
    let wrong: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "not said exactly once: {wrong:?}");
    // The client kept its socket throughout and is still served.
    c.send(format!("PRIVMSG {CHAN} :still here")).await;
    w.expect("the moved client's line", |l| {
        l.is("PRIVMSG") && l.nick() == name && l.last_str() == "still here"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_text = format!("c {last}");
    while count(&channel_backlog(&store, user).await, &last_text) == 0 {
        assert!(Instant::now() < deadline, "{last_text:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog = channel_backlog(&store, user).await;
    assert_each_once(&backlog, "c", last as usize);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Logs `user` in over HTTP; returns the session token.
async fn login(http: &str, user: &str) -> String {
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{http}/api/login"))
        .json(&serde_json::json!({ "username": user, "password": "secret" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().expect("login gives a token").to_owned()
}

/// Opens `/ws` and resumes from `last_id`, as the web client does.
async fn ws_open(http: &str, token: &str, last_id: Option<i64>) -> Ws {
    use futures::SinkExt;
    let url = format!("{}/ws?token={token}", http.replacen("http", "ws", 1));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("the websocket connects in time")
    .expect("the websocket connects");
    let resume = serde_json::json!({ "type": "resume", "last_id": last_id });
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        resume.to_string().into(),
    ))
    .await
    .unwrap();
    ws
}

/// What the websocket client of [`web_client`] saw.
#[derive(Debug, Default)]
struct WebSeen {
    /// `message` events: (id, text, own), in the order received.
    messages: Vec<(i64, String, bool)>,
    /// How each connection ended: (close code, reason); 0 without a close frame.
    closes: Vec<(u16, String)>,
    /// From each close to the next `synced`.
    gaps: Vec<Duration>,
}

/// A client like the web client's `Conn`: it resumes from the newest message id it
/// saw on every (re)connect and reconnects at once after a close, and it sends
/// `w 1..=sends` into the channel, one every 100 ms while connected, counting a line
/// sent only once the server answered `ok` (a line without an answer when the socket
/// closed is sent again). Ends once it has seen the message `until` and its own
/// lines.
async fn web_client(
    http: String,
    token: String,
    until: String,
    sends: usize,
    confirmed: Arc<AtomicU64>,
) -> WebSeen {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = WebSeen::default();
    let mut last_id: Option<i64> = None;
    let mut queue: std::collections::VecDeque<usize> = (1..=sends).collect();
    let mut ok = std::collections::BTreeSet::new();
    let own: Vec<String> = (1..=sends).map(|i| format!("w {i}")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut closed_at: Option<tokio::time::Instant> = None;
    let done = |seen: &WebSeen| {
        seen.messages.iter().any(|(_, t, _)| *t == until)
            && own
                .iter()
                .all(|o| seen.messages.iter().any(|(_, t, me)| *me && t == o))
    };
    'connect: loop {
        assert!(
            seen.closes.len() < 5,
            "reconnected again and again: {seen:?}"
        );
        let mut ws = ws_open(&http, &token, last_id).await;
        let mut synced = false;
        let mut in_flight: Vec<usize> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if done(&seen) {
                let _ = ws.close(None).await;
                break 'connect;
            }
            tokio::select! {
                _ = tick.tick(), if synced && !queue.is_empty() => {
                    let i = queue.pop_front().unwrap();
                    let cmd = serde_json::json!({
                        "type": "send", "id": i, "network": "test", "buffer": CHAN,
                        "text": format!("w {i}"),
                    });
                    if ws.send(Message::Text(cmd.to_string().into())).await.is_ok() {
                        in_flight.push(i);
                    } else {
                        queue.push_front(i);
                    }
                }
                m = ws.next() => {
                    let ev: serde_json::Value = match m {
                        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((0, String::new()));
                            seen.closes.push((code, reason));
                            break;
                        }
                        Some(Ok(_)) => continue,
                        None | Some(Err(_)) => {
                            seen.closes.push((0, "dropped".into()));
                            break;
                        }
                    };
                    match ev["type"].as_str().unwrap_or_default() {
                        "synced" => {
                            synced = true;
                            if let Some(at) = closed_at.take() {
                                seen.gaps.push(at.elapsed());
                            }
                        }
                        "message" => {
                            let id = ev["id"].as_i64().unwrap();
                            last_id = Some(last_id.map_or(id, |l| l.max(id)));
                            seen.messages.push((
                                id,
                                ev["text"].as_str().unwrap_or_default().to_owned(),
                                ev["own"].as_bool().unwrap_or(false),
                            ));
                        }
                        "ok" | "error" => {
                            let Some(i) = ev["re"].as_u64().map(|i| i as usize) else {
                                continue;
                            };
                            in_flight.retain(|x| *x != i);
                            if ev["type"] == "ok" {
                                ok.insert(i);
                                confirmed.store(ok.len() as u64, Ordering::Relaxed);
                            } else {
                                queue.push_front(i);
                            }
                        }
                        _ => {}
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    panic!("the web client did not see everything in time: {seen:?}")
                }
            }
        }
        // Not answered: the server never read them (it answers every line it read
        // before it closes). Sent again, first.
        for i in in_flight.into_iter().rev() {
            queue.push_front(i);
        }
        closed_at = Some(tokio::time::Instant::now());
    }
    seen
}

/// A websocket client across `ferry upgrade`, while a talker says numbered lines
/// before, during and after it and the client sends lines of its own: the server
/// closes the socket with 1012 and "Ferry is restarting", the client reconnects at
/// once to the same address (it waits in the listening socket's backlog until the
/// new process accepts it) and resumes from its last id. It receives every numbered
/// line exactly once and in order, with increasing ids; each of its own lines that
/// the server acknowledged reaches the channel and the store exactly once, including
/// those the old process had queued behind the park (carried to the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tells_websockets_to_reconnect_and_they_resume_without_a_gap() {
    const SENDS: usize = 40;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (dir, _db, store, users, mut node, mut w) = barrier_setup(&ircd, 1).await;
    let (user, name) = users[0].clone();
    let token = login(&node.http, &name).await;
    let confirmed = Arc::new(AtomicU64::new(0));
    let last = format!("n {LINES}");
    let client = tokio::spawn(web_client(
        node.http.clone(),
        token,
        last.clone(),
        SENDS,
        confirmed.clone(),
    ));
    let t = talker_in_chan(&ircd).await;
    // The web client is in and sending before anything is said.
    while confirmed.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (said, talker) = start_talker(t, LINES, PACE);
    wait_said(&said, 20).await;
    let out = upgrade_to_new(&node, dir.path()).await;
    let said_at_upgrade = said.load(Ordering::Relaxed) as usize;
    let report = upgrade_report(&node, &out);
    let _kill = KillPid(report["new"]["pid"].as_u64().unwrap() as u32);
    assert!(
        said_at_upgrade < LINES,
        "the talker was done before the upgrade: {report}"
    );
    assert_eq!(report["new"]["version"], NEW);
    assert_eq!(report["reconnected"]["websocket"], 1, "{report}");
    old_process_exits(&mut node).await;
    talker.await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(150), client)
        .await
        .expect("the web client finishes")
        .unwrap();
    eprintln!(
        "websocket: closes {:?}, back in sync after {:?}",
        seen.closes, seen.gaps
    );
    // Told to reconnect, once, in words the web client knows.
    assert_eq!(seen.closes, vec![(1012, RESTARTING.to_owned())], "{seen:?}");
    // Every numbered line once, in order; ids only increase (no duplicate at all).
    let numbered: Vec<&str> = seen
        .messages
        .iter()
        .filter(|(_, t, _)| t.starts_with("n "))
        .map(|(_, t, _)| t.as_str())
        .collect();
    let want: Vec<String> = (1..=LINES).map(|i| format!("n {i}")).collect();
    assert_eq!(numbered, want, "{seen:?}");
    assert!(
        seen.messages.windows(2).all(|p| p[0].0 < p[1].0),
        "ids not increasing: {seen:?}"
    );
    // Its own lines: each acknowledged one once, on the socket, in the channel and in
    // the store; some of them were queued behind the park and carried.
    assert!(
        node.log().contains("carrying client lines not yet handled"),
        "no line was queued at the barrier; the test proves nothing: {}",
        node.log()
    );
    let own: Vec<String> = (1..=SENDS).map(|i| format!("w {i}")).collect();
    for o in &own {
        let n = seen
            .messages
            .iter()
            .filter(|(_, t, me)| *me && t == o)
            .count();
        assert_eq!(n, 1, "the web client saw {o:?} {n} times: {seen:?}");
    }
    let in_channel = said_in_channel(&mut w, &name, &own).await;
    let wrong: Vec<_> = in_channel.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "not said exactly once: {wrong:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&channel_backlog(&store, user).await, &last) == 0 {
        assert!(Instant::now() < deadline, "{last:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog = channel_backlog(&store, user).await;
    assert_each_once(&backlog, "n", LINES);
    assert_each_once(&backlog, "w", SENDS);
}

/// Numbered lines the talker says while the browser's node upgrades.
const BROWSER_LINES: usize = 60;

/// The requests of `tests/browser/upgrade.mjs`: `say` a line as the talker,
/// `upgrade` the node while the talker says [`BROWSER_LINES`] numbered lines (answered
/// with how many), and wait until the page's line is `heard` in the channel.
struct BrowserUpgrade<'a> {
    talker: Option<TestClient>,
    kill: Option<KillPid>,
    w: &'a mut TestClient,
    node: &'a Node,
    name: &'a str,
    dir: &'a Path,
}

impl BrowserRequests for BrowserUpgrade<'_> {
    fn act(&mut self, action: &str, arg: &str) -> impl std::future::Future<Output = String> {
        const N: usize = BROWSER_LINES;
        async move {
            match action {
                "say" => {
                    let t = self.talker.as_mut().unwrap();
                    t.send(format!("PRIVMSG {CHAN} :{arg}")).await;
                    t.roundtrip().await;
                    String::new()
                }
                "upgrade" => {
                    let t = self.talker.take().unwrap();
                    let (said, talking) = start_talker(t, N, PACE);
                    wait_said(&said, 10).await;
                    let out = upgrade_to_new(self.node, self.dir).await;
                    let report = upgrade_report(self.node, &out);
                    self.kill = Some(KillPid(report["new"]["pid"].as_u64().unwrap() as u32));
                    assert!(
                        (said.load(Ordering::Relaxed) as usize) < N,
                        "the talker was done before the upgrade: {report}"
                    );
                    self.talker = Some(talking.await.unwrap());
                    N.to_string()
                }
                "heard" => {
                    let name = self.name;
                    self.w
                        .expect("the page's line in the channel", |l| {
                            l.is("PRIVMSG") && l.nick() == name && l.last_str() == arg
                        })
                        .await;
                    String::new()
                }
                other => panic!("unknown request {other}"),
            }
        }
    }
}

/// The web client in Debian's Chromium across `ferry upgrade` (`tests/browser/upgrade.mjs`):
/// the page reconnects by itself without a reload and shows every numbered line said
/// before, during and after the upgrade exactly once, then sends through the new
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_every_line_once_across_an_upgrade() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and tests/browser/node_modules: run scripts/test-deps.sh"
    );
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (dir, _db, _store, users, mut node, mut w) = barrier_setup(&ircd, 1).await;
    let name = users[0].1.clone();
    let child = Command::new("node")
        .arg("upgrade.mjs")
        .current_dir(&browser_dir)
        .env("FERRY_URL", &node.http)
        .env("FERRY_USER", &name)
        .env("FERRY_PASSWORD", "secret")
        .env("FERRY_CHANNEL", CHAN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut world = BrowserUpgrade {
        talker: Some(talker_in_chan(&ircd).await),
        kill: None,
        w: &mut w,
        node: &node,
        name: &name,
        dir: dir.path(),
    };
    let (status, log) = drive_browser(child, &mut world).await;
    let kill = world.kill.take();
    assert!(
        status.success(),
        "browser test failed:\n{log}\n{}",
        node.log()
    );
    assert!(log.contains("BROWSER OK"), "{log}");
    drop(kill);
    let _ = node.child.wait().await;
}

/// A channel still to be rejoined at the barrier keeps its disconnect window: the
/// user comes back after a restart to a channel that has become invite-only (its
/// JOIN refused, its window waiting up to a minute for the rejoin), the node upgrades
/// meanwhile, and when the channel is open again and joined through the moved
/// connection, the new process covers the window (a gap marker in that channel), as
/// the old one would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_carries_a_window_waiting_for_its_channels_rejoin() {
    const INV: &str = "#ferryinv";
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let user = ferry::admin::create_user(&store, &test_guard(), "u1", "secret", false)
        .await
        .unwrap();
    let spec = ferry::admin::NetworkSpec {
        name: "test".into(),
        addr: ircd.addr(),
        nick: "u1".into(),
        channels: vec![CHAN.into(), INV.into()],
        ..ferry::admin::NetworkSpec::default()
    };
    store
        .create_network(user.id, &spec.to_new_network().unwrap())
        .await
        .unwrap();
    let users = vec![(user.id, "u1".to_owned())];
    // The watcher opens the channel first: it is its operator.
    let mut w = watcher(&ircd).await;
    w.join(INV).await;
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    let mut node = Node::start(&db, dir.path(), &exe);
    wait_serving(&node.http).await;
    w.expect("u1 joins the channel", |l| {
        l.is("JOIN") && l.nick() == "u1" && l.param_str(0) == INV
    })
    .await;
    w.send(format!("PRIVMSG {INV} :said while u1 is here"))
        .await;
    let inv_backlog = |store: Store| async move {
        store
            .history(&HistoryQuery {
                user: user.id,
                buffer_key: Some(INV.as_bytes().to_vec()),
                limit: 500,
                ..HistoryQuery::default()
            })
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while inv_backlog(store.clone()).await.is_empty() {
        assert!(Instant::now() < deadline, "nothing stored in {INV}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node dies; the channel becomes invite-only; the node comes back and cannot
    // rejoin it: its window waits for the rejoin.
    node.child.kill().await.unwrap();
    w.expect("u1 quits", |l| l.is("QUIT") && l.nick() == "u1")
        .await;
    w.send(format!("MODE {INV} +i")).await;
    w.expect("+i", |l| l.is("MODE") && l.param_str(1) == "+i")
        .await;
    let node = Node::start(&db, dir.path(), &exe);
    wait_serving(&node.http).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    // Registered again (back in the other channel): the window waits for the rejoin.
    let out = upgrade_to_new(&node, dir.path()).await;
    let report = upgrade_report(&node, &out);
    let _kill = KillPid(report["new"]["pid"].as_u64().unwrap() as u32);
    assert_eq!(report["moved"]["upstream"], 1, "{report}");
    assert!(
        !inv_backlog(store.clone())
            .await
            .iter()
            .any(|m| m.text.starts_with("[gap]")),
        "marked before the rejoin"
    );
    // Open again; a client joins it through the moved connection.
    w.send(format!("MODE {INV} -i")).await;
    w.expect("-i", |l| l.is("MODE") && l.param_str(1) == "-i")
        .await;
    let mut c = TestClient::connect(&node.irc).await;
    c.send("PASS u1/test:secret").await;
    c.send("NICK u1").await;
    c.send("USER u1 0 * :u1").await;
    c.expect("001", |l| l.is("001")).await;
    c.send(format!("JOIN {INV}")).await;
    w.expect("u1 rejoins", |l| {
        l.is("JOIN") && l.nick() == "u1" && l.param_str(0) == INV
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = inv_backlog(store.clone()).await;
        if b.iter().any(|m| m.text.starts_with("[gap]")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the window of {INV} was never covered: {:?}\n{}",
            b.iter().map(|m| &m.text).collect::<Vec<_>>(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lines the talker says in the kernel-TLS test (fewer than [`LINES`]: in the guest
/// everything runs emulated).
const KTLS_LINES: usize = 40;
/// Lines the talker says once the new process serves, in the same test.
const AFTER_LINES: usize = 10;

/// Kernel TLS (issue 13, item 3): a user on a TLS upstream with an IRC client attached
/// over TLS, while a talker says numbered lines; after `ferry upgrade` both TLS
/// connections moved as kernel TLS (the report counts them, nothing reconnected), the
/// channel saw no QUIT/JOIN of the user, and the client's TLS connection stayed open,
/// got every line once, then spoke through the new process.
///
/// It needs a kernel with the `tls` ULP. On a host without one (a Firecracker kernel
/// lists only `mptcp`) it runs itself in the guest of `scripts/ktls-vm.sh` (a Debian
/// kernel on this host's files: the same test binary, ferry binary and InspIRCd),
/// and fails — does not skip — when that guest cannot be started
/// (`scripts/test-deps.sh` installs what it needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_move_as_kernel_tls() {
    if ferry::ktls::available() {
        return ktls_handoff().await;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ktls-vm.sh");
    let exe = std::env::current_exe().unwrap();
    let name = "upgrade::ktls_handoff_in_guest";
    let run = Command::new(&script)
        .args(["run", "--"])
        .arg(&exe)
        .args([name, "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("KTLS_VM_TIMEOUT", "540")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the kernel-TLS guest returns")
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the kernel-TLS handoff in the guest failed ({}; if the guest did not start, \
         scripts/test-deps.sh installs what it needs):\n{stdout}\n{stderr}",
        out.status
    );
    // It ran there (an empty filter would pass too).
    assert!(
        stdout.contains(&format!("test {name} ... ok")),
        "{stdout}\n{stderr}"
    );
}

/// [`tls_connections_move_as_kernel_tls`]'s scenario where the kernel has kernel TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by tls_connections_move_as_kernel_tls in a guest with kernel TLS"]
async fn ktls_handoff_in_guest() {
    assert!(
        ferry::ktls::available(),
        "tls is not in /proc/sys/net/ipv4/tcp_available_ulp here"
    );
    ktls_handoff().await;
}

/// A user `name` (password "secret") whose network is `ircd`'s TLS port, in `CHAN`.
async fn tls_user(store: &Store, ircd: &Ircd, name: &str) -> UserId {
    let user = ferry::admin::create_user(store, &test_guard(), name, "secret", false)
        .await
        .unwrap();
    let spec = ferry::admin::NetworkSpec {
        name: "test".into(),
        addr: ircd.tls_addr().unwrap(),
        tls: true,
        tls_verify: Some("insecure".into()),
        nick: name.into(),
        channels: vec![CHAN.into()],
        ..ferry::admin::NetworkSpec::default()
    };
    store
        .create_network(user.id, &spec.to_new_network().unwrap())
        .await
        .unwrap();
    user.id
}

async fn ktls_handoff() {
    let ircd = Ircd::inspircd(InspOpts {
        tls: true,
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let user = tls_user(&store, &ircd, "t1").await;
    let users = vec![(user, "t1".to_owned())];
    // The node's TLS listener for clients.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let irc_tls = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\nirc_tls = \"{irc_tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let exe = dir.path().join("ferry");
    std::fs::copy(BIN, &exe).unwrap();
    // A long lease: in an emulated guest a step of the handoff can take seconds.
    let mut node = Node::start_leased(
        &db,
        dir.path(),
        &exe,
        &["--config", config.to_str().unwrap()],
        &[],
        60,
    );
    wait_serving(&node.http).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(120)).await;
    // The client, attached over TLS.
    let mut c = TestClient::connect_tls_insecure(&irc_tls).await;
    c.send("PASS t1/test:secret").await;
    c.send("NICK t1").await;
    c.send("USER t1 0 * :t1").await;
    c.expect("001", |l| l.is("001")).await;
    c.expect("burst JOIN", |l| l.is("JOIN") && l.param_str(0) == CHAN)
        .await;
    c.roundtrip().await;
    let mark = w.transcript().len();
    let t = talker_in_chan(&ircd).await;
    let (said, talker) = start_talker(t, KTLS_LINES, PACE);
    wait_said(&said, 10).await;
    let (report, _, _kill) =
        upgrade_while_talking(&node, dir.path(), &said, KTLS_LINES, "kernel TLS").await;
    // Both TLS connections moved, as kernel TLS; nothing reconnected.
    assert_eq!(report["moved"]["upstream"], 1, "{report}\n{}", node.log());
    assert_eq!(report["moved"]["upstream_ktls"], 1, "{report}");
    assert_eq!(report["moved"]["irc_client"], 1, "{report}\n{}", node.log());
    assert_eq!(report["moved"]["irc_client_ktls"], 1, "{report}");
    assert_eq!(report["reconnected"]["upstream"], 0, "{report}");
    assert_eq!(report["reconnected"]["clients"], 0, "{report}");
    old_process_exits(&mut node).await;
    assert_eq!(healthz_version(&node.http).await, NEW);
    let mut t = talker.await.unwrap();
    // Lines said once the new process alone serves: they come in on the moved
    // upstream and go out on the moved client, kernel TLS both ways (in the guest the
    // talker may have finished before the handoff).
    for i in 1..=AFTER_LINES {
        t.send(format!("PRIVMSG {CHAN} :after {i}")).await;
    }
    // The client's TLS connection stayed open (now kernel TLS on the new process's
    // side) and got every line exactly once, and was told nothing again.
    let last = format!("after {AFTER_LINES}");
    let seen = read_until(&mut c, &last).await;
    let texts: Vec<String> = seen
        .iter()
        .filter(|l| l.is("PRIVMSG"))
        .map(|l| l.last_str())
        .collect();
    let said = (1..=KTLS_LINES)
        .map(|i| format!("n {i}"))
        .chain((1..=AFTER_LINES).map(|i| format!("after {i}")));
    for t in said {
        let n = texts.iter().filter(|x| **x == t).count();
        assert_eq!(n, 1, "the client got {t:?} {n} times: {}", c.transcript());
    }
    let again: Vec<String> = seen
        .iter()
        .filter(|l| {
            l.is("001") || l.is("ERROR") || l.is("353") || (l.is("JOIN") && l.nick() == "t1")
        })
        .map(|l| l.raw_str())
        .collect();
    assert!(again.is_empty(), "the client was told again: {again:?}");
    // The same TLS session speaks, through the new process and the moved upstream
    // (kernel TLS both ways).
    c.send(format!("PRIVMSG {CHAN} :from the moved client"))
        .await;
    w.expect("the moved client's line", |l| {
        l.is("PRIVMSG") && l.nick() == "t1" && l.last_str() == "from the moved client"
    })
    .await;
    c.roundtrip().await;
    let watched = &w.transcript()[mark..];
    let noticed: Vec<&str> = watched
        .lines()
        .filter(|l| {
            l.contains(":t1!") && [" QUIT", " JOIN ", " PART "].iter().any(|c| l.contains(c))
        })
        .collect();
    assert!(noticed.is_empty(), "the channel noticed t1: {noticed:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&channel_backlog(&store, user).await, &last) == 0 {
        assert!(Instant::now() < deadline, "{last:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog = channel_backlog(&store, user).await;
    assert_each_once(&backlog, "n", KTLS_LINES);
    assert_each_once(&backlog, "after", AFTER_LINES);
}
