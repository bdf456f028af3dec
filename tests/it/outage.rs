//! Riding out the store (issue 16, the node-local half): a node whose PostgreSQL goes
//! away keeps its IRC connections and clients, relays live, holds what it would
//! store, refuses logins that need the store with a clear "try again shortly", says
//! it is degraded, and writes everything back in order when the store returns — or
//! an explicit gap marker where its bounded buffer overflowed.
//!
//! Real `ferry serve` processes on a PostgreSQL of the test's own (`PrivatePg`,
//! stopped and started by the test), a real InspIRCd, short leases (3 s) so that an
//! outage of several leases stays quick. "No QUIT, no JOIN" is checked from the IRC
//! server's side, by a watcher in the channel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::store::{HistoryQuery, Store, StoredMessage, UserId};
use tokio::process::{Child, Command};

use super::cluster::{create_users_on, wait_exactly_once, watcher, BIN, CHAN};
use super::fixtures::client::TestClient;
use super::fixtures::ircd::{InspOpts, Ircd};
use super::fixtures::pg::PrivatePg;
use super::fixtures::ports::free_port;

const LEASE_SECS: u64 = 3;

/// A `ferry serve` process on the private PostgreSQL, killed on drop.
struct Node {
    _child: Child,
    irc: String,
    http: String,
    log: PathBuf,
}

impl Node {
    /// Starts node `n1` with `config` (TOML) as its config file.
    fn start(url: &str, dir: &Path, config: &str) -> Node {
        Node::start_logging(url, dir, config, "n1.log")
    }

    /// [`Node::start`], logging to `log` in `dir` (a restart keeps the first log).
    fn start_logging(url: &str, dir: &Path, config: &str, log: &str) -> Node {
        Node::start_as(url, dir, config, "n1", "127.0.0.2", log)
    }

    /// Node `id` dialling from `source_ip`, with its data directory in `dir`.
    fn start_as(url: &str, dir: &Path, config: &str, id: &str, source_ip: &str, log: &str) -> Node {
        let (http, irc) = (free_port(), free_port());
        let log = dir.join(log);
        let cfg = dir.join("ferry.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["--database", url, "--data-dir"])
            .arg(dir.join("data"))
            .arg("--secret-key-file")
            .arg(dir.join("ferry.key"))
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
            _child: child,
            irc: format!("127.0.0.1:{irc}"),
            http: format!("http://127.0.0.1:{http}"),
            log,
        }
    }

    /// Sends `sig` to the process and waits until it has exited.
    async fn signal_and_wait(&mut self, sig: i32) {
        let pid = self._child.id().expect("still running") as i32;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(60), self._child.wait())
            .await
            .unwrap_or_else(|_| panic!("the node did not exit after signal {sig}:\n{}", self.log()))
            .unwrap();
        if sig == libc::SIGKILL {
            assert!(!status.success());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /readyz`: status code and body.
    async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = http()
            .get(format!("{}/readyz", self.http))
            .send()
            .await
            .expect("GET /readyz");
        (r.status().as_u16(), r.json().await.expect("readyz JSON"))
    }

    /// Waits until the HTTP listener answers (a node starting).
    async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http()
            .get(format!("{}/readyz", self.http))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the node never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `/readyz` until its `status` field reads `want`.
    async fn wait_ready_state(&self, want: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, body) = self.readyz().await;
            if body["status"] == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never said {want:?}: {code} {body}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metrics(&self) -> String {
        let r = http()
            .get(format!("{}/metrics", self.http))
            .send()
            .await
            .expect("GET /metrics");
        assert!(r.status().is_success());
        r.text().await.unwrap()
    }

    /// Scrapes until sample `name` satisfies `ok`; returns its value.
    async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.metrics().await;
            if let Some(v) = value(&text, name).filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name} never got there:\n{text}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An IRC client of user `u1` on network `test`, logged in.
    async fn client(&self) -> TestClient {
        let mut c = TestClient::connect(&self.irc).await;
        c.send("PASS u1/test:secret").await;
        c.send("NICK u1").await;
        c.send("USER u1 0 * :u1").await;
        c.expect("001 from ferry", |l| l.is("001")).await;
        c
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The value of the sample `name` (without labels).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// A private PostgreSQL with database `ferry`, user `u1` (network `test` on `ircd`, in
/// `CHAN`), and the store handle the test reads it with.
async fn setup(ircd: &Ircd) -> (PrivatePg, String, Store, UserId) {
    let pg = PrivatePg::new().await;
    let url = pg.create_db("ferry").await;
    let store = Store::open(&url).await.unwrap();
    let users = create_users_on(&store, &[("test", ircd)], 1).await;
    (pg, url, store, users[0].0)
}

/// The channel's stored lines for `user`, by id.
async fn channel_backlog(store: &Store, user: UserId) -> Vec<StoredMessage> {
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

/// Waits until the channel's backlog holds a line whose text contains `needle`.
async fn wait_stored(store: &Store, user: UserId, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !channel_backlog(store, user)
        .await
        .iter()
        .any(|m| m.text.contains(needle))
    {
        assert!(Instant::now() < deadline, "{needle:?} never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The watcher's lines since `from` (a transcript length) that show `u1` leaving or
/// joining.
fn u1_quits_or_joins(w: &TestClient, from: usize) -> Vec<String> {
    w.transcript()[from..]
        .lines()
        .filter(|l| l.contains(":u1!") && (l.contains(" QUIT") || l.contains(" JOIN ")))
        .map(str::to_owned)
        .collect()
}

/// Reads the watcher's pending lines (so its transcript is current) without waiting
/// for more than `for_`.
async fn pump(w: &mut TestClient, for_: Duration) {
    let deadline = tokio::time::Instant::now() + for_;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || w.recv_timeout(left).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_rides_out_a_store_outage_of_several_leases() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (pg, url, store, u1) = setup(&ircd).await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&url, dir.path(), "");
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    let mut c = node.client().await;
    w.send(format!("PRIVMSG {CHAN} :before the outage")).await;
    c.expect("the line before", |l| l.last_str() == "before the outage")
        .await;
    wait_stored(&store, u1, "before the outage").await;
    node.wait_ready_state("ready").await;

    // The store goes away for well over three leases.
    let seen = w.transcript().len();
    let stopped = Instant::now();
    pg.stop().await;
    let body = node.wait_ready_state("degraded").await;
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the store is unreachable")),
        "{body}"
    );
    let (code, _) = node.readyz().await;
    assert_eq!(code, 503, "degraded is not ready");
    node.wait_metric("ferry_store_reachable", |v| v == 0.0)
        .await;
    node.wait_metric("ferry_store_riding_out", |v| v == 1.0)
        .await;

    // A login that needs the store hears so, over HTTP and IRC…
    let r = http()
        .post(format!("{}/api/login", node.http))
        .json(&serde_json::json!({ "username": "u1", "password": "secret" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s > 0), "Retry-After: {retry:?}");
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "store_unreachable", "{err}");
    assert_eq!(
        err["error"]["message"], "the store is unreachable, try again shortly",
        "{err}"
    );
    let mut late = TestClient::connect(&node.irc).await;
    late.send("PASS u1/test:secret").await;
    late.send("NICK u1").await;
    late.send("USER u1 0 * :u1").await;
    let e = late.expect("ERROR", |l| l.is("ERROR")).await;
    assert!(
        e.last_str()
            .contains("the store is unreachable, try again shortly"),
        "{}",
        e.raw_str()
    );

    // …while the attached client keeps getting live lines.
    let said: Vec<String> = (1..=6).map(|i| format!("during the outage {i}")).collect();
    for line in &said {
        w.send(format!("PRIVMSG {CHAN} :{line}")).await;
        c.expect("a live line during the outage", |l| l.last_str() == *line)
            .await;
        pump(&mut w, Duration::from_millis(1000)).await;
    }
    node.wait_metric("ferry_outage_held_lines", |v| v >= 6.0)
        .await;
    // A minute, as the issue asks: twenty leases.
    let outage = Duration::from_secs(60);
    if let Some(left) = outage.checked_sub(stopped.elapsed()) {
        pump(&mut w, left).await;
    }
    assert_eq!(
        node.readyz().await.1["status"],
        "degraded",
        "still riding out"
    );

    // The store returns: the node renews, writes back, is ready again.
    let back = chrono::Utc::now();
    pg.start().await;
    node.wait_ready_state("ready").await;
    node.wait_metric("ferry_outage_held_lines", |v| v == 0.0)
        .await;
    node.wait_metric("ferry_store_reachable", |v| v == 1.0)
        .await;
    w.send(format!("PRIVMSG {CHAN} :after the outage")).await;
    c.expect("the line after", |l| l.last_str() == "after the outage")
        .await;
    wait_stored(&store, u1, "after the outage").await;
    pump(&mut w, Duration::from_millis(500)).await;
    assert_eq!(
        u1_quits_or_joins(&w, seen),
        Vec::<String>::new(),
        "u1 left or joined the channel during the outage"
    );
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(10)).await;

    // Every line is in the backlog exactly once, in order, with the time it arrived.
    let backlog = channel_backlog(&store, u1).await;
    let texts: Vec<&str> = backlog
        .iter()
        .map(|m| m.text.as_str())
        .filter(|t| t.contains("the outage"))
        .collect();
    let mut want = vec!["before the outage"];
    want.extend(said.iter().map(String::as_str));
    want.push("after the outage");
    assert_eq!(texts, want, "{}", node.log());
    for m in backlog.iter().filter(|m| m.text.starts_with("during")) {
        assert!(m.time < back, "{:?} kept the time it arrived", m.text);
    }
    assert!(
        !backlog.iter().any(|m| m.command == "GAP"),
        "nothing overflowed, no gap marker"
    );
    let log = node.log();
    assert!(log.contains("riding the outage out"), "{log}");
    assert!(!log.contains("lease lost"), "{log}");
    // What an operator sees (docs/operations.md has it), for `--no-capture` runs.
    for l in log
        .lines()
        .filter(|l| l.contains("riding") || l.contains("answers again") || l.contains("holding"))
    {
        eprintln!("node log: {l}");
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_outage_buffer_turns_the_oldest_lines_into_a_gap_marker() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (pg, url, store, u1) = setup(&ircd).await;
    let dir = tempfile::tempdir().unwrap();
    // Two lines in memory, a spill file of about two more.
    let spill = dir.path().join("spill").join("n1.spill");
    let config = format!(
        "[outage]\nmemory_lines = 2\nspill_bytes = 1200\nspill_path = {:?}\n",
        spill.display().to_string()
    );
    let node = Node::start(&url, dir.path(), &config);
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    let mut c = node.client().await;
    w.send(format!("PRIVMSG {CHAN} :before")).await;
    c.expect("the line before", |l| l.last_str() == "before")
        .await;
    wait_stored(&store, u1, "before").await;

    pg.stop().await;
    node.wait_ready_state("degraded").await;
    let said: Vec<String> = (1..=12).map(|i| format!("line {i:02}")).collect();
    for line in &said {
        w.send(format!("PRIVMSG {CHAN} :{line}")).await;
        c.expect("a live line", |l| l.last_str() == *line).await;
    }
    // Every line taken by the writer: each is held (the gauge counts the one gap
    // marker too) or became part of the marker; only then is the count final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let gapped = loop {
        let text = node.metrics().await;
        let held = value(&text, "ferry_outage_held_lines").unwrap_or(0.0);
        let gap = value(&text, "ferry_outage_gap_lines_total").unwrap_or(0.0);
        if gap >= 1.0 && held + gap >= (said.len() + 1) as f64 {
            break gap;
        }
        assert!(
            Instant::now() < deadline,
            "the writer never took every line: held {held}, gap {gap}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = node.metrics().await;
    let spilled = value(&text, "ferry_outage_spill_bytes").unwrap();
    assert!(
        spilled > 0.0 && spilled <= 1200.0,
        "spill file within its limit: {spilled}"
    );
    assert!(spill.exists(), "the configured spill file is used");

    pg.start().await;
    node.wait_ready_state("ready").await;
    node.wait_metric("ferry_outage_held_lines", |v| v == 0.0)
        .await;
    let gapped = gapped as usize;
    // All gap lines are counted once they happened; the count cannot grow after.
    assert_eq!(
        value(&node.metrics().await, "ferry_outage_gap_lines_total"),
        Some(gapped as f64)
    );

    // The oldest lines became one marker, where they were; the rest is stored in order.
    let backlog = channel_backlog(&store, u1).await;
    let after: Vec<&StoredMessage> = backlog
        .iter()
        .skip_while(|m| m.text != "before")
        .skip(1)
        .collect();
    assert_eq!(after[0].command, "GAP", "{after:#?}");
    assert!(
        after[0].text.starts_with(&format!("{gapped} lines from ")),
        "{}",
        after[0].text
    );
    assert!(after[0].text.contains("outage buffer was full"));
    let kept: Vec<&str> = after[1..].iter().map(|m| m.text.as_str()).collect();
    let want: Vec<&str> = said[gapped..].iter().map(String::as_str).collect();
    assert_eq!(kept, want, "{}", node.log());
    assert_eq!(
        gapped + kept.len(),
        said.len(),
        "every line is stored or counted in the marker"
    );
    assert_eq!(
        std::fs::metadata(&spill).unwrap().len(),
        0,
        "the spill file is emptied once written back"
    );
    drop(c);
}

/// With `u1` attached to `node`: says a line and waits until it is stored, stops
/// PostgreSQL, then says five lines that `node` relays live to the attached client
/// (acknowledged, so they must not be lost) and holds. Returns the client and the five.
async fn hold_lines_through_an_outage(
    node: &Node,
    w: &mut TestClient,
    store: &Store,
    u1: UserId,
    pg: &PrivatePg,
) -> (TestClient, Vec<String>) {
    let mut c = node.client().await;
    w.send(format!("PRIVMSG {CHAN} :before the outage")).await;
    c.expect("the line before", |l| l.last_str() == "before the outage")
        .await;
    wait_stored(store, u1, "before the outage").await;

    pg.stop().await;
    node.wait_ready_state("degraded").await;
    let said: Vec<String> = (1..=5).map(|i| format!("during the outage {i}")).collect();
    for line in &said {
        w.send(format!("PRIVMSG {CHAN} :{line}")).await;
        c.expect("a live line during the outage", |l| l.last_str() == *line)
            .await;
    }
    node.wait_metric("ferry_outage_held_lines", |v| v >= said.len() as f64)
        .await;
    (c, said)
}

/// The channel's backlog, asserted to hold `before the outage`, `said` and `last`
/// exactly once each and in that order (`logs` are shown when it does not).
async fn backlog_in_order(
    store: &Store,
    u1: UserId,
    said: &[String],
    last: &str,
    logs: &[&str],
) -> Vec<StoredMessage> {
    let backlog = channel_backlog(store, u1).await;
    let texts: Vec<&str> = backlog
        .iter()
        .map(|m| m.text.as_str())
        .filter(|t| t.contains("the outage") || *t == last)
        .collect();
    let mut want = vec!["before the outage"];
    want.extend(said.iter().map(String::as_str));
    want.push(last);
    assert_eq!(texts, want, "exactly once, in order\n{}", logs.join("\n"));
    backlog
}

/// The node stops during a store outage (SIGKILL: a crash; SIGTERM: a clean stop)
/// holding lines it relayed; it starts again once the store is back and writes them
/// back: each exactly once, in order, with the time it arrived, no gap marker for
/// them, and new lines after them.
async fn stopped_during_an_outage(sig: i32) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (pg, url, store, u1) = setup(&ircd).await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&url, dir.path(), "");
    let spill = dir.path().join("data").join("outage-n1.spill");
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    let (c, said) = hold_lines_through_an_outage(&node, &mut w, &store, u1, &pg).await;
    let stopped_at = chrono::Utc::now();
    node.signal_and_wait(sig).await;
    let first_log = node.log();
    assert!(
        std::fs::metadata(&spill).is_ok_and(|m| m.len() > 0),
        "the spill file holds the lines after the node stopped\n{first_log}"
    );
    if sig == libc::SIGTERM {
        assert!(
            first_log.contains("held messages kept in the spill file"),
            "a clean stop says it kept them:\n{first_log}"
        );
        assert!(!first_log.contains("held messages lost"), "{first_log}");
    }
    drop(c);

    // The store returns, then the node: it writes the lines back before its users run.
    pg.start().await;
    let node = Node::start_logging(&url, dir.path(), "", "n1-restarted.log");
    node.wait_listening().await;
    node.wait_ready_state("ready").await;
    let log = node.log();
    assert!(
        log.contains("outage spill file: wrote back the lines held when the node last stopped"),
        "{log}"
    );
    assert!(
        !spill.exists() || std::fs::metadata(&spill).unwrap().len() == 0,
        "the spill file is emptied once written back"
    );
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    let mut c = node.client().await;
    w.send(format!("PRIVMSG {CHAN} :after the restart")).await;
    c.expect("the line after", |l| l.last_str() == "after the restart")
        .await;
    wait_stored(&store, u1, "after the restart").await;

    let backlog =
        backlog_in_order(&store, u1, &said, "after the restart", &[&first_log, &log]).await;
    for m in backlog.iter().filter(|m| m.text.starts_with("during")) {
        assert!(m.time < stopped_at, "{:?} kept the time it arrived", m.text);
    }
    // What an operator sees (docs/operations.md has it), for `--no-capture` runs.
    for l in first_log
        .lines()
        .chain(log.lines())
        .filter(|l| l.contains("spill") || l.contains("store is away") || l.contains("database"))
    {
        eprintln!("node log: {l}");
    }
    // No marker stands for them: any gap marker is the reconnect window, after them.
    let last_said = backlog
        .iter()
        .position(|m| m.text == said[said.len() - 1])
        .unwrap();
    for (i, m) in backlog.iter().enumerate() {
        if m.command == "GAP" {
            assert!(i > last_said, "a gap marker among the held lines: {m:?}");
            assert!(!m.text.contains("outage buffer was full"), "{m:?}");
        }
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_held_in_an_outage_survive_a_sigkill_of_the_node() {
    stopped_during_an_outage(libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_held_in_an_outage_survive_a_clean_stop_of_the_node() {
    stopped_during_an_outage(libc::SIGTERM).await;
}

/// A node killed while it held lines, whose user another node adopted meanwhile: the
/// adopter reserved ids above what was stored (`seq_floor`), so when the killed node
/// starts again its held lines are written back with their ids, in their place
/// before the adopter's lines, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_held_lines_land_before_its_adopters() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let (pg, url, store, u1) = setup(&ircd).await;
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = Node::start(&url, dir.path(), "");
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    assert_eq!(
        store.owner(u1).await.unwrap().unwrap().node_id.as_deref(),
        Some("n1")
    );
    let dir2 = tempfile::tempdir().unwrap();
    // Every node of a cluster has the same secret key.
    std::fs::copy(dir.path().join("ferry.key"), dir2.path().join("ferry.key")).unwrap();
    let n2 = Node::start_as(&url, dir2.path(), "", "n2", "127.0.0.3", "n2.log");
    n2.wait_listening().await;
    n2.wait_ready_state("ready").await;
    let (c, said) = hold_lines_through_an_outage(&n1, &mut w, &store, u1, &pg).await;
    n1.signal_and_wait(libc::SIGKILL).await;
    let first_log = n1.log();
    drop(c);

    // The store returns; n2 adopts u1 (n1 is gone: after its lease and the margin).
    pg.start().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owner = store.owner(u1).await.ok().flatten();
        if owner.and_then(|o| o.node_id).as_deref() == Some("n2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 never adopted u1:\n{}",
            n2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(90)).await;
    let floor = store.seq_floor(u1).await.unwrap();
    assert!(floor > 0, "a take-over without a release reserves ids");
    w.send(format!("PRIVMSG {CHAN} :after the adoption")).await;
    wait_stored(&store, u1, "after the adoption").await;

    // n1 starts again: it writes back what it held, below n2's floor.
    let n1 = Node::start_logging(&url, dir.path(), "", "n1-restarted.log");
    n1.wait_listening().await;
    let log = n1.log();
    assert!(
        log.contains("outage spill file: wrote back the lines held when the node last stopped"),
        "{log}"
    );
    assert!(!log.contains("set aside"), "{log}");
    let backlog =
        backlog_in_order(&store, u1, &said, "after the adoption", &[&first_log, &log]).await;
    for m in &backlog {
        if m.text.starts_with("during the outage") {
            assert!(m.seq < floor, "{m:?} kept its id, below the floor {floor}");
        }
        if m.text == "after the adoption" {
            assert!(m.seq >= floor, "{m:?} numbered from the floor {floor}");
        }
    }
}

/// On SQLite one process holds the database (its `flock`), so nobody could adopt
/// its users and its lease cannot be taken: a heartbeat that waits behind a long
/// write (here another connection holds SQLite's write lock for four leases) must
/// neither ride an "outage" out nor drop the sessions. The client keeps its live
/// lines, the user keeps its one connection, and every line is stored once, in
/// order, with nothing fenced, once the lock is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_node_keeps_its_lease_while_the_write_lock_is_held() {
    use sqlx::Connection;

    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.db");
    let url = format!("sqlite://{}", file.display());
    let store = Store::open(&url).await.unwrap();
    let u1 = create_users_on(&store, &[("test", &ircd)], 1).await[0].0;
    let node = Node::start(&url, dir.path(), "");
    let mut w = watcher(&ircd).await;
    wait_exactly_once(&mut w, &[(u1, "u1".into())], Duration::from_secs(60)).await;
    let mut c = node.client().await;
    w.send(format!("PRIVMSG {CHAN} :before the lock")).await;
    c.expect("the line before", |l| l.last_str() == "before the lock")
        .await;
    wait_stored(&store, u1, "before the lock").await;
    node.wait_ready_state("ready").await;

    // Another connection takes the write lock (WAL: readers go on) for four leases.
    let seen = w.transcript().len();
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let locked = Instant::now();
    let said: Vec<String> = (1..=6).map(|i| format!("while locked {i}")).collect();
    for line in &said {
        w.send(format!("PRIVMSG {CHAN} :{line}")).await;
        c.expect("a live line while the lock is held", |l| {
            l.last_str() == *line
        })
        .await;
        pump(&mut w, Duration::from_millis(500)).await;
    }
    if let Some(left) = Duration::from_secs(4 * LEASE_SECS).checked_sub(locked.elapsed()) {
        pump(&mut w, left).await;
    }
    let metrics = node.metrics().await;
    assert_eq!(
        value(&metrics, "ferry_store_riding_out"),
        Some(0.0),
        "a SQLite node never rides out: {}",
        node.log()
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    w.send(format!("PRIVMSG {CHAN} :after the lock")).await;
    c.expect("the line after", |l| l.last_str() == "after the lock")
        .await;
    wait_stored(&store, u1, "after the lock").await;
    node.wait_ready_state("ready").await;
    pump(&mut w, Duration::from_millis(500)).await;
    assert_eq!(
        u1_quits_or_joins(&w, seen),
        Vec::<String>::new(),
        "u1 left or joined the channel while the lock was held"
    );
    let texts: Vec<String> = channel_backlog(&store, u1)
        .await
        .into_iter()
        .map(|m| m.text)
        .filter(|t| t.contains("the lock") || t.starts_with("while locked"))
        .collect();
    let mut want = vec!["before the lock".to_owned()];
    want.extend(said.iter().cloned());
    want.push("after the lock".to_owned());
    assert_eq!(texts, want, "{}", node.log());
    let metrics = node.metrics().await;
    assert_eq!(
        value(&metrics, "ferry_store_write_fenced_total"),
        Some(0.0),
        "nothing was fenced"
    );
    let log = node.log();
    assert!(!log.contains("lease lost"), "{log}");
    assert!(!log.contains("dropped every session"), "{log}");
    assert!(!log.contains("riding the outage out"), "{log}");
    drop(c);
}
