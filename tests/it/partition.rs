//! Riding out the store, the cluster half: two `ferry serve` processes on a private
//! PostgreSQL, one of them reaching it through a TCP relay the test can cut. The node
//! cut off from the store asks its peer, learns the peer still reaches the store,
//! fences (drops its sessions); the peer adopts its users only on its word that it
//! fenced. A watcher in the channel checks from the IRC server's side that nobody is
//! ever connected twice; `ferry node list` shows the cut-off node as `store-cut`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::store::{node_state, Store, UserId};
use tokio::process::{Child, Command};

use super::cluster::{create_users, names, owners, per_user, watcher, CHAN};
use super::fixtures::cli::{self, BIN};
use super::fixtures::client::TestClient;
use super::fixtures::ircd::{InspOpts, Ircd};
use super::fixtures::pg::PrivatePg;
use super::fixtures::ports::free_port;
use super::fixtures::relay::TcpRelay;

const LEASE_SECS: u64 = 6;

/// A `ferry serve` process on database `url`; SIGKILLed on drop (only this PID).
struct Node {
    child: Child,
    log: PathBuf,
    http: String,
}

impl Node {
    fn start(url: &str, key: &Path, dir: &Path, id: &str, source_ip: &str) -> Node {
        let (http, irc) = (free_port(), free_port());
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["--database", url, "--data-dir"])
            .arg(dir)
            .arg("--secret-key-file")
            .arg(key)
            .args(["serve", "--node-id", id])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--irc", &format!("127.0.0.1:{irc}")])
            .args(["--source-ip", source_ip])
            .args(["--lease-seconds", &LEASE_SECS.to_string()])
            .env("FERRY_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("ferry binary runs");
        Node {
            child,
            log,
            http: format!("http://127.0.0.1:{http}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until `pred` holds for node `id`'s record (polling the store).
async fn wait_node(
    store: &Store,
    id: &str,
    what: &str,
    pred: impl Fn(&ferry::store::NodeRecord) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = store.nodes().await.unwrap();
        if nodes.iter().any(|n| n.id == id && pred(n)) {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: {what}: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second client in the channel that records every line it sees, from the start,
/// until the test ends: the JOINs and QUITs of every user in order.
struct Spy {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Spy {
    async fn start(ircd: &Ircd) -> Spy {
        let mut c = TestClient::connect(&ircd.addr()).await;
        c.register("spy").await;
        c.join(CHAN).await;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(l)) = c.recv_timeout(Duration::from_secs(3600)).await {
                keep.lock().unwrap().push(l.raw_str());
            }
        });
        Spy { lines, task }
    }

    /// Per user (nick without `_` fallbacks), the most connections the channel ever
    /// had at once, and every nick that joined.
    fn most_at_once(&self) -> (BTreeMap<String, i32>, Vec<String>) {
        let mut now: BTreeMap<String, i32> = BTreeMap::new();
        let mut most: BTreeMap<String, i32> = BTreeMap::new();
        let mut nicks = Vec::new();
        for raw in self.lines.lock().unwrap().iter() {
            let l = super::fixtures::client::parse_line(raw.as_bytes());
            let nick = l.nick();
            if nick == "spy" || nick == "watcher" || nick.is_empty() {
                continue;
            }
            let user = nick.trim_end_matches('_').to_owned();
            let delta = if l.is("JOIN") {
                nicks.push(nick.clone());
                1
            } else if l.is("QUIT") || l.is("PART") {
                -1
            } else {
                continue;
            };
            let n = now.entry(user.clone()).or_default();
            *n += delta;
            let m = most.entry(user).or_default();
            *m = (*m).max(*n);
        }
        (most, nicks)
    }
}

impl Spy {
    /// Every JOIN, PART and QUIT of a user (not of the watchers) the spy saw.
    fn membership_changes(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|raw| {
                let l = super::fixtures::client::parse_line(raw.as_bytes());
                let nick = l.nick();
                (l.is("JOIN") || l.is("PART") || l.is("QUIT"))
                    && !["spy", "watcher", ""].contains(&nick.as_str())
            })
            .cloned()
            .collect()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every user has exactly one connection in the channel (as NAMES shows
/// it, `nick_` fallbacks counted as the user) and nobody else but the two watchers.
async fn wait_exactly_once(w: &mut TestClient, users: &[(UserId, String)], within: Duration) {
    let started = Instant::now();
    let want: BTreeMap<String, usize> = users.iter().map(|(_, n)| (n.clone(), 1)).collect();
    loop {
        let members: Vec<String> = names(w)
            .await
            .into_iter()
            .filter(|n| n != "spy" && n != "watcher")
            .collect();
        let got = per_user(&members);
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

/// `ferry node list --json` on `url`: node id → (state, users).
async fn node_list(url: &str, key: &Path) -> BTreeMap<String, (String, serde_json::Value)> {
    let mut cmd = Command::new(BIN);
    cmd.args(["--database", url, "--secret-key-file"])
        .arg(key)
        .args(["--json", "node", "list"]);
    let out = cli::run(cmd, "", Duration::from_secs(30)).await;
    assert!(out.ok, "node list failed: {}", out.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    rows.into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                (r["state"].as_str().unwrap().to_owned(), r["users"].clone()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_store_fences_and_its_users_move_once() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let pg = PrivatePg::new().await;
    let url = pg.create_db("ferry").await;
    let relay = TcpRelay::start(pg.addr()).await;
    let cut_url = format!("postgres://postgres@127.0.0.1:{}/ferry", relay.port());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ferry.key");

    // n1 reaches PostgreSQL directly, n2 through the relay. n1 first: it creates the
    // schema and the key file both share.
    let n1 = Node::start(&url, &key, dir.path(), "n1", "127.0.0.2");
    let store = Store::open(&url).await.unwrap();
    wait_node(&store, "n1", "registers", |n| n.state == node_state::ACTIVE).await;
    let n2 = Node::start(&cut_url, &key, dir.path(), "n2", "127.0.0.3");
    wait_node(&store, "n2", "registers", |n| n.state == node_state::ACTIVE).await;

    let spy = Spy::start(&ircd).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    let victims: Vec<UserId> = before
        .iter()
        .filter(|(_, (o, _))| o.as_deref() == Some("n2"))
        .map(|(u, _)| *u)
        .collect();
    assert!(!victims.is_empty(), "n2 runs nobody: {before:?}");

    // The peer endpoint answers only the node token (derived with the secret key).
    let anon = reqwest::get(format!("{}/api/admin/peer", n2.http))
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // Cut n2 off from the store; n1 still reaches it, and n2 reaches n1.
    relay.cut();
    let cut_at = Instant::now();

    // While n2 is cut off and answers its peers, the node list (read from the
    // store, as from any node that reaches it) shows it as store-cut, not dead.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = node_list(&url, &key).await;
        if list["n2"].0 == "store-cut" {
            assert_eq!(list["n1"].0, node_state::ACTIVE, "{list:?}");
            let mut cmd = Command::new(BIN);
            cmd.args(["--database", &url, "--secret-key-file"])
                .arg(&key)
                .args(["node", "list"]);
            let text = cli::run(cmd, "", Duration::from_secs(30)).await;
            assert!(
                text.stdout
                    .lines()
                    .any(|l| l.starts_with("n2") && l.contains(" store-cut ")),
                "{}",
                text.stdout
            );
            eprintln!("TRANSCRIPT $ ferry node list\n{}", text.stdout);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 never showed as store-cut: {list:?}\n{}",
            n2.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // n2 fences (its peer reaches the store), n1 adopts its users on its word.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = owners(&store).await;
        if victims.iter().all(|u| o[u].0.as_deref() == Some("n1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 did not adopt n2's users: {o:?}\n--- n1 ---\n{}\n--- n2 ---\n{}",
            n1.log(),
            n2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let adopted_after = cut_at.elapsed();
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let n1_log = n1.log();
    let n2_log = n2.log();
    assert!(
        n2_log.contains("store lost: asked the peers") && n2_log.contains("verdict=Fence"),
        "n2 decided to fence because its peer reaches the store:\n{n2_log}"
    );
    assert!(
        n1_log.contains("lapsed node declared dead") && n1_log.contains("probe=Fenced"),
        "n1 declared n2 dead on its word that it fenced:\n{n1_log}"
    );
    // On n2's word, not after the unreachable margin (lease + 5 s beyond the lapse).
    assert!(
        adopted_after < Duration::from_secs(2 * LEASE_SECS + 5),
        "adoption took {adopted_after:?}"
    );

    // Nobody was ever in the channel twice, and no nick collided.
    w.roundtrip().await;
    let (most, nicks) = spy.most_at_once();
    for (_, name) in &users {
        assert_eq!(most.get(name), Some(&1), "{name}: {most:?}\n{nicks:?}");
    }
    assert!(
        nicks.iter().all(|n| !n.ends_with('_')),
        "a nick collided (a user connected twice): {nicks:?}"
    );

    // The store comes back for n2: it registers again, empty, and its users stay put.
    relay.restore();
    wait_node(&store, "n2", "comes back empty", |n| {
        n.state == node_state::ACTIVE
            && n.lease_expires_at > chrono::Utc::now()
            && n.health.users == 0
    })
    .await;
    let o = owners(&store).await;
    assert!(
        victims.iter().all(|u| o[u].0.as_deref() == Some("n1")),
        "{o:?}"
    );
    wait_exactly_once(&mut w, &users, Duration::from_secs(30)).await;
    assert!(!n1.log().contains("panicked") && !n2.log().contains("panicked"));
    for (id, log) in [("n1", n1.log()), ("n2", n2.log())] {
        for l in log.lines().filter(|l| {
            [
                "store lost",
                "lease lost",
                "declared dead",
                "adopted user",
                "registering again",
            ]
            .iter()
            .any(|k| l.contains(k))
        }) {
            eprintln!("TRANSCRIPT {id}: {l}");
        }
    }
}

/// A node that stops answering (SIGSTOP: cut off from the store and from its peers
/// at once) is adopted only after it has been unreachable for its lease plus the
/// peer margin, never at its lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_adopted_only_after_its_lease_plus_the_margin() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let pg = PrivatePg::new().await;
    let url = pg.create_db("ferry").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ferry.key");
    let n1 = Node::start(&url, &key, dir.path(), "n1", "127.0.0.2");
    let store = Store::open(&url).await.unwrap();
    wait_node(&store, "n1", "registers", |n| n.state == node_state::ACTIVE).await;
    let n2 = Node::start(&url, &key, dir.path(), "n2", "127.0.0.3");
    wait_node(&store, "n2", "registers", |n| n.state == node_state::ACTIVE).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    let victims: Vec<UserId> = before
        .iter()
        .filter(|(_, (o, _))| o.as_deref() == Some("n2"))
        .map(|(u, _)| *u)
        .collect();
    assert!(!victims.is_empty(), "n2 runs nobody: {before:?}");

    let pid = n2.child.id().unwrap() as i32;
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(90);
    loop {
        let o = owners(&store).await;
        if victims.iter().all(|u| o[u].0.as_deref() == Some("n1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 did not adopt: {o:?}\n{}",
            n1.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = stopped.elapsed();
    // n1 starts counting at its first failed call (once n2's heartbeat is half a
    // lease old, so not before the stop), and waits a lease plus the margin (5 s).
    assert!(
        took >= Duration::from_secs(LEASE_SECS + 5),
        "adopted after {took:?}, before the peer margin ran out"
    );
    assert!(
        n1.log().contains("probe=Unreachable"),
        "n1 declared n2 dead for being unreachable:\n{}",
        n1.log()
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
}

/// The store stopped for three leases under two nodes with users on both: nobody can
/// adopt anybody, every peer says it lost the store too, so every node keeps its
/// sessions — a watcher sees no QUIT and no JOIN — and renews its lease afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stopped_for_three_leases_costs_nobody_a_reconnect() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let pg = PrivatePg::new().await;
    let url = pg.create_db("ferry").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ferry.key");
    let n1 = Node::start(&url, &key, dir.path(), "n1", "127.0.0.2");
    let store = Store::open(&url).await.unwrap();
    wait_node(&store, "n1", "registers", |n| n.state == node_state::ACTIVE).await;
    let n2 = Node::start(&url, &key, dir.path(), "n2", "127.0.0.3");
    wait_node(&store, "n2", "registers", |n| n.state == node_state::ACTIVE).await;
    let users = create_users(&store, &ircd, 4).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
    let before = owners(&store).await;
    for n in ["n1", "n2"] {
        assert!(
            before.values().any(|(o, _)| o.as_deref() == Some(n)),
            "{n} runs nobody: {before:?}"
        );
    }
    let spy = Spy::start(&ircd).await;
    drop(store);

    pg.stop().await;
    // The outage itself: three leases without a store (the scenario, not a wait for
    // an event).
    tokio::time::sleep(Duration::from_secs(3 * LEASE_SECS)).await;
    pg.start().await;

    let store = Store::open(&url).await.unwrap();
    for id in ["n1", "n2"] {
        wait_node(&store, id, "renews its lease", |n| {
            n.state == node_state::ACTIVE && n.lease_expires_at > chrono::Utc::now()
        })
        .await;
    }
    w.roundtrip().await;
    assert_eq!(owners(&store).await, before, "nobody was adopted");
    // Every node heard from its peer that the store was gone for it too.
    for (id, log) in [("n1", n1.log()), ("n2", n2.log())] {
        assert!(
            log.contains("verdict=Keep") && !log.contains("verdict=Fence"),
            "{id} decided to keep its sessions:\n{log}"
        );
    }
    let changes = spy.membership_changes();
    assert!(
        changes.is_empty(),
        "a user left or joined during the outage: {changes:?}"
    );
    for (id, log) in [("n1", n1.log()), ("n2", n2.log())] {
        assert!(!log.contains("lease lost"), "{id} dropped sessions:\n{log}");
    }
}

/// The CLI (`ferry …`) on the private database, its output piped; SIGKILLed on drop.
fn spawn_cli(url: &str, key: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["--database", url, "--secret-key-file"])
        .arg(key)
        .args(args)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ferry runs")
}

/// The window `[from, to]` a gap marker's text names (`… messages from A to B …`,
/// A with or without a date), on the day of the marker.
fn gap_window(
    g: &ferry::store::StoredMessage,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    window_in(&g.text, g.time)
}

/// The window `[from, to]` a gap marker's `text` names, on the day of `day`.
pub(crate) fn window_in(
    text: &str,
    day: chrono::DateTime<chrono::Utc>,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let rest = text.split(" from ").nth(1)?;
    let (from, to) = rest.split_once(" to ")?;
    let at = |t: &str| {
        let t = chrono::NaiveTime::parse_from_str(t, "%H:%M:%S%.3f").ok()?;
        Some(day.date_naive().and_time(t).and_utc())
    };
    Some((
        at(from.split_whitespace().last()?)?,
        at(to.split_whitespace().next()?)?,
    ))
}

/// PostgreSQL restarted in the middle of `ferry migrate drain n1`, down for two
/// leases: the drain stops (its driver cannot record a step, the nodes refuse handoffs
/// while they ride the outage out), the nodes keep their sessions, and `ferry migrate
/// resume` finishes the drain once the store is back — every user on n2, moved once,
/// never in the channel twice, and every line said meanwhile in each backlog once or
/// covered by a gap marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_drain_pauses_and_resume_moves_nobody_twice() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    const N: usize = 10;
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let pg = PrivatePg::new().await;
    let url = pg.create_db("ferry").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ferry.key");
    let n1 = Node::start(&url, &key, dir.path(), "n1", "127.0.0.2");
    let store = Store::open(&url).await.unwrap();
    wait_node(&store, "n1", "registers", |n| n.state == node_state::ACTIVE).await;
    let users = create_users(&store, &ircd, N).await;
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &users, Duration::from_secs(120)).await;
    // The target connects once a second after a burst of one: the drain takes ~N s.
    store
        .set_network_limits(&ferry::store::NetworkLimits::new("127.0.0.1", 500, 60.0, 1))
        .await
        .unwrap();
    let n2 = Node::start(&url, &key, dir.path(), "n2", "127.0.0.3");
    wait_node(&store, "n2", "registers", |n| n.state == node_state::ACTIVE).await;
    let before = owners(&store).await;
    assert!(
        before.values().all(|(o, _)| o.as_deref() == Some("n1")),
        "{before:?}"
    );

    let names: Vec<String> = users.iter().map(|(_, n)| n.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(super::migrate::watch_presence_until(
        w,
        names,
        stop.clone(),
        N,
    ));
    let talking = Arc::new(AtomicBool::new(false));
    let mut t = TestClient::connect(&ircd.addr()).await;
    t.register("talker").await;
    t.join(CHAN).await;
    let talker = tokio::spawn(super::migrate::talk(t, talking.clone()));

    let cli = spawn_cli(
        &url,
        &key,
        &[
            "migrate", "drain", "n1", "--canary", "1", "--batch", "2", "--yes",
        ],
    );
    // Mid-drain: the canary and a batch through, most users still to go.
    let deadline = Instant::now() + Duration::from_secs(90);
    let id = loop {
        if let Some(m) = store.migrations().await.unwrap().into_iter().next() {
            let mu = store.migration_users(m.id).await.unwrap();
            if mu.iter().filter(|u| u.state == "moved").count() >= 3 {
                break m.id;
            }
        }
        assert!(Instant::now() < deadline, "the drain did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(store);
    pg.stop().await;
    // The outage: two leases without a store (the scenario, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(2 * LEASE_SECS)).await;
    pg.start().await;
    let out = tokio::time::timeout(Duration::from_secs(300), cli.wait_with_output())
        .await
        .expect("the drain's CLI stops")
        .unwrap();
    let first = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("TRANSCRIPT drain (exit {:?}):\n{first}", out.status.code());
    let store = Store::open(&url).await.unwrap();
    let m = store.migration(id).await.unwrap().unwrap();
    println!("migration after the drain's CLI: {} {:?}", m.state, m.note);
    if m.state != "completed" {
        assert!(
            !out.status.success(),
            "an unfinished drain exits non-zero: {first}"
        );
        let (ok, resumed) = {
            let mut cmd = Command::new(BIN);
            cmd.args(["--database", &url, "--secret-key-file"])
                .arg(&key)
                .args(["migrate", "resume", &id.to_string()]);
            let r = cli::run(cmd, "", Duration::from_secs(300)).await;
            (r.ok, format!("{}{}", r.stdout, r.stderr))
        };
        println!("TRANSCRIPT resume:\n{resumed}");
        assert!(
            ok,
            "resume failed: {resumed}\n--- n1 ---\n{}\n--- n2 ---\n{}",
            n1.log(),
            n2.log()
        );
    }
    let m = store.migration(id).await.unwrap().unwrap();
    assert_eq!(m.state, "completed", "{m:?}");
    let mu = store.migration_users(id).await.unwrap();
    // Moved, each in one attempt: a move the outage caught, even after its release
    // had gone out, is continued by `resume` as the same attempt, not retried (the
    // owner counters below show no user handed over twice).
    assert!(
        mu.iter().all(|u| u.state == "moved" && u.attempts == 1),
        "each user moved once: {mu:?}"
    );
    let own = owners(&store).await;
    assert!(
        own.values().all(|(o, _)| o.as_deref() == Some("n2")),
        "{own:?}"
    );
    // One handoff per user: every owner epoch went up by the same amount.
    let deltas: std::collections::BTreeSet<i64> =
        own.iter().map(|(u, (_, ep))| ep - before[u].1).collect();
    assert_eq!(deltas.len(), 1, "{before:?} -> {own:?}");

    talking.store(true, SeqCst);
    let said = talker.await.unwrap();
    stop.store(true, SeqCst);
    let (mut w, joins) = watch.await.expect("no user was in the channel twice");
    assert!(joins >= N, "{joins} JOINs for {N} moves");
    wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;

    // Every line the talker said is in every user's backlog exactly once, or a gap
    // marker there names a window that covers it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut in_gaps = 0;
    for (uid, name) in &users {
        let rows = loop {
            let rows = store
                .history(&ferry::store::HistoryQuery {
                    user: *uid,
                    buffer_key: Some(CHAN.as_bytes().to_vec()),
                    limit: 5000,
                    ..Default::default()
                })
                .await
                .unwrap();
            if rows.iter().any(|r| r.text == "tick last") {
                break rows;
            }
            assert!(Instant::now() < deadline, "{name} lacks `tick last`");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let gaps: Vec<_> = rows
            .iter()
            .filter(|r| r.command == "GAP")
            .filter_map(gap_window)
            .collect();
        for (text, at) in &said {
            let k = rows.iter().filter(|r| &r.text == text).count();
            assert!(k <= 1, "{name}: {text:?} stored {k} times");
            if k == 0 {
                let second = chrono::Duration::seconds(1);
                assert!(
                    gaps.iter()
                        .any(|(f, t)| *f - second <= *at && *at <= *t + second),
                    "{name}: {text:?} (said at {at}) is neither stored nor covered by a \
                     gap marker ({gaps:?})"
                );
                in_gaps += 1;
            }
        }
    }
    println!(
        "PG-RESTART-DRAIN users={N} lines_said={} user_lines_in_gaps={in_gaps}",
        said.len()
    );
    for (id, log) in [("n1", n1.log()), ("n2", n2.log())] {
        assert!(!log.contains("panicked"), "{id}:\n{log}");
        assert!(!log.contains("lease lost"), "{id} dropped sessions:\n{log}");
        for l in log.lines().filter(|l| {
            ["riding", "store lost", "released", "adopted", "lease"]
                .iter()
                .any(|k| l.contains(k))
        }) {
            println!("LOG {id}: {l}");
        }
    }
}
