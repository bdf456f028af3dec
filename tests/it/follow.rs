//! IRC clients follow their user's moves on the same socket (issue 17, item 5), for
//! every way a user moves: `ferry migrate move`, a drain, a rebalance and a spill.
//! Each scenario runs real `ferry serve` processes on PostgreSQL and a real InspIRCd
//! with two clients of the moving user: one attached to its owner, one proxied to the
//! owner through a node that is neither the source nor the target. Neither is closed
//! or sees an `ERROR`; each gets every line said after the move exactly once, what it
//! already had (the welcome, its channels' burst) not again, and a line said during
//! the move at most once — a missing one only where the move's gap marker covers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::store::{NetworkLimits, Store, UserId};

use super::cluster::{names, per_user, wait_exactly_once, wait_nodes, watcher, NodeProc, CHAN};
use super::fixtures::client::{Line, TestClient};
use super::fixtures::ferry::{Backend, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};
use super::migrate::{setup, spawn_cli, Env};

/// How the user moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `ferry migrate move USER --to n2`.
    Move,
    /// `ferry migrate drain n1 --to n2`.
    Drain,
    /// `ferry migrate rebalance --max-moves 1`: the user and target its dry run names.
    Rebalance,
    /// A user waiting for a session slot on a full node spills to a node that joins
    /// with room.
    Spill,
}

/// The nodes, the users and who moves where. Nodes are declared first: they stop
/// before their database and directory go.
struct Scene {
    nodes: BTreeMap<&'static str, NodeProc>,
    ircd: Ircd,
    db: Arc<TestDb>,
    store: Store,
    w: TestClient,
    users: Vec<(UserId, String)>,
    /// The moving user.
    user: (UserId, String),
    source: &'static str,
    target: &'static str,
    /// The node the proxied client logs in through.
    proxy: &'static str,
    _dir: tempfile::TempDir,
}

impl Scene {
    /// Two users on n1, n2 and n3 empty; the move `kind` makes is chosen here.
    async fn migration(kind: Kind) -> Scene {
        let Env {
            ircd,
            db,
            store,
            users,
            w,
            n1,
            n2,
            n3,
            _dir,
        } = setup(2, InspOpts::default(), 600.0, 10).await;
        let (user, target) = match kind {
            Kind::Rebalance => {
                let plan = super::rebalance::dry_run(&db, &store, &["--max-moves", "1"]).await;
                assert_eq!(plan.len(), 1, "{plan:?}");
                let (uid, to) = plan.into_iter().next().unwrap();
                let user = users.iter().find(|(u, _)| *u == uid).unwrap().clone();
                (user, if to == "n2" { "n2" } else { "n3" })
            }
            _ => (users[0].clone(), "n2"),
        };
        Scene {
            nodes: BTreeMap::from([("n1", n1), ("n2", n2), ("n3", n3)]),
            ircd,
            db,
            store,
            w,
            users,
            user,
            source: "n1",
            target,
            proxy: if target == "n2" { "n3" } else { "n2" },
            _dir,
        }
    }

    /// n1 and n2 each hold one session of the network (one per source address, in
    /// Ferry's limits), and a third user waits for a slot on one of them; n3 starts
    /// later with room (see [`Scene::start_move`]).
    async fn spill() -> Scene {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let db = TestDb::new(Backend::Postgres).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&db.url).await.unwrap();
        store
            .set_network_limits(&NetworkLimits::new("127.0.0.1", 1, 600.0, 10))
            .await
            .unwrap();
        let mut w = watcher(&ircd).await;
        let n1 = NodeProc::start_with(&db, dir.path(), "n1", "127.0.0.2", &SPILL_FAST);
        let n2 = NodeProc::start_with(&db, dir.path(), "n2", "127.0.0.3", &SPILL_FAST);
        wait_nodes(&store, &[&n1, &n2]).await;
        // One at a time, so that each is placed where the previous left room: a1 and
        // b1 connect, one on each node; c1 finds both full and waits.
        let mut users = Vec::new();
        for prefix in ["a", "b", "c"] {
            users.extend(super::placement::users_named(&store, &ircd, prefix, 1).await);
            if prefix != "c" {
                wait_exactly_once(&mut w, &users, Duration::from_secs(60)).await;
            }
        }
        let user = users[2].clone();
        let source = loop_owner(&store, user.0, |o| o.is_some()).await;
        let source = if source == "n1" { "n1" } else { "n2" };
        let nodes = BTreeMap::from([("n1", n1), ("n2", n2)]);
        // The user runs on its node, waiting for a slot there.
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::placement::metric(&nodes[source].http, "ferry_users_waiting_for_slot").await
            != 1.0
        {
            assert!(
                Instant::now() < deadline,
                "c1 does not wait on {source}: {:?}",
                per_user(&names(&mut w).await)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            per_user(&names(&mut w).await).len(),
            2,
            "c1 is not connected"
        );
        Scene {
            nodes,
            ircd,
            db,
            store,
            w,
            users,
            user,
            source,
            target: "n3",
            proxy: if source == "n1" { "n2" } else { "n1" },
            _dir: dir,
        }
    }

    /// Starts the move; [`Mover::done`] returns once it is over.
    fn start_move(&mut self, kind: Kind) -> Mover {
        let cli = |args: &[&str]| Mover::Cli(spawn_cli(&self.db, args));
        match kind {
            Kind::Move => cli(&[
                "migrate",
                "move",
                &self.user.1,
                "--to",
                self.target,
                "--yes",
            ]),
            Kind::Drain => cli(&["migrate", "drain", "n1", "--to", self.target, "--yes"]),
            Kind::Rebalance => cli(&["migrate", "rebalance", "--max-moves", "1", "--yes"]),
            Kind::Spill => {
                let n3 = NodeProc::start_with(
                    &self.db,
                    self._dir.path(),
                    "n3",
                    "127.0.0.4",
                    &SPILL_FAST,
                );
                self.nodes.insert("n3", n3);
                Mover::Spill
            }
        }
    }
}

/// Spill after 2 s of waiting for a slot.
const SPILL_FAST: [&str; 2] = ["--spill-after-seconds", "2"];

/// A move under way.
enum Mover {
    Cli(tokio::process::Child),
    Spill,
}

impl Mover {
    /// Waits until the user runs on the target and is back in the channel.
    async fn done(self, s: &mut Scene) {
        match self {
            Mover::Cli(cli) => {
                let out = tokio::time::timeout(Duration::from_secs(180), cli.wait_with_output())
                    .await
                    .expect("the migration ends")
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Mover::Spill => {
                loop_owner(&s.store, s.user.0, |o| o == Some("n3")).await;
            }
        }
        let owner = s.store.owner(s.user.0).await.unwrap().unwrap();
        assert_eq!(owner.node_id.as_deref(), Some(s.target), "the user moved");
        // Back in the channel: the server shows every user once (and the talker).
        let want: BTreeMap<String, usize> = s.users.iter().map(|(_, n)| (n.clone(), 1)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut got = per_user(&names(&mut s.w).await);
            got.remove("bob");
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "not every user once: {got:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Polls the user's owner until `pred` holds (bounded); returns it.
async fn loop_owner(store: &Store, user: UserId, pred: impl Fn(Option<&str>) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = store.owner(user).await.unwrap().unwrap();
        if pred(o.node_id.as_deref()) {
            return o.node_id.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "owner stays {:?}", o.node_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client of `user` logged in on the node at `irc` as `user@client/test`.
async fn login(irc: &str, user: &str, client: &str) -> TestClient {
    let mut c = TestClient::connect(irc).await;
    c.send(format!("PASS {user}@{client}/test:secret")).await;
    c.register(user).await;
    c
}

/// Reads `c` until `pred` matches, keeping every line; fails on a close or after 90 s.
async fn until(c: &mut TestClient, seen: &mut Vec<Line>, what: &str, pred: impl Fn(&Line) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Ok(Some(l)) => {
                let done = pred(&l);
                seen.push(l);
                if done {
                    return;
                }
            }
            Ok(None) => panic!("closed while waiting for {what}: {}", c.transcript()),
            Err(()) => panic!("timed out waiting for {what}: {}", c.transcript()),
        }
    }
}

fn said(i: usize) -> impl Fn(&Line) -> bool {
    move |l: &Line| l.is("PRIVMSG") && l.last_str() == format!("line {i}")
}

/// Lines 0–4 before the move, 5–24 while it runs (every 150 ms), 25–29 after it.
const BEFORE: std::ops::Range<usize> = 0..5;
const DURING: std::ops::Range<usize> = 5..25;
const AFTER: std::ops::Range<usize> = 25..30;

/// The scenario, for one kind of move.
pub(crate) async fn clients_follow(kind: Kind) {
    let mut s = match kind {
        Kind::Spill => Scene::spill().await,
        _ => Scene::migration(kind).await,
    };
    let name = s.user.1.clone();
    println!(
        "FOLLOW {kind:?}: {name} moves {} → {}, proxied through {}",
        s.source, s.target, s.proxy
    );
    let mut clients = [
        (
            "direct",
            login(&s.nodes[s.source].irc, &name, "direct").await,
            Vec::new(),
        ),
        (
            "proxied",
            login(&s.nodes[s.proxy].irc, &name, "proxied").await,
            Vec::new(),
        ),
    ];
    let mut bob = TestClient::connect(&s.ircd.addr()).await;
    bob.register("bob").await;
    bob.join(CHAN).await;
    for i in BEFORE {
        bob.send(format!("PRIVMSG {CHAN} :line {i}")).await;
    }
    bob.roundtrip().await;
    for (_, c, seen) in &mut clients {
        if kind == Kind::Spill {
            until(c, seen, "the welcome's end", |l| l.is("376") || l.is("422")).await;
        } else {
            until(c, seen, "line 4 before the move", said(4)).await;
        }
    }
    let marks = clients.each_ref().map(|(_, _, seen)| seen.len());

    let mover = s.start_move(kind);
    let talker = tokio::spawn(async move {
        let mut at = BTreeMap::new();
        for i in DURING {
            bob.send(format!("PRIVMSG {CHAN} :line {i}")).await;
            at.insert(i, chrono::Utc::now());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        (bob, at)
    });
    mover.done(&mut s).await;
    let (mut bob, said_at) = talker.await.unwrap();
    for i in AFTER {
        bob.send(format!("PRIVMSG {CHAN} :line {i}")).await;
    }
    bob.roundtrip().await;

    for ((who, c, seen), mark) in clients.iter_mut().zip(marks) {
        until(c, seen, "line 29 after the move", said(AFTER.end - 1)).await;
        // Still a working session, through to the new owner.
        c.roundtrip().await;
        let ctx = || format!("{kind:?}, {who}: {}", c.transcript());
        assert!(!seen.iter().any(|l| l.is("ERROR")), "no ERROR: {}", ctx());
        // What the client has is not sent again: the welcome, and (a user that was
        // in the channel) its JOIN and names and the owner's notices about the
        // network coming up on the target. A spilled user was never connected: the
        // channel, those notices and the network's ISUPPORT (a `005` of what changed
        // once it is known) are news to its clients.
        let again: Vec<&Line> = seen[mark..]
            .iter()
            .filter(|l| {
                ["001", "376"].iter().any(|n| l.is(n))
                    || (kind != Kind::Spill
                        && (l.is("005")
                            || (l.is("JOIN") && l.nick() == name)
                            || l.is("353")
                            || l.is("366")
                            || (l.is("NOTICE") && l.nick() == "ferry")))
            })
            .collect();
        assert!(
            again.is_empty(),
            "nothing it has again ({again:?}): {}",
            ctx()
        );
        let texts: Vec<String> = seen
            .iter()
            .filter(|l| l.is("PRIVMSG"))
            .map(|l| l.last_str())
            .collect();
        let times = |i: usize| texts.iter().filter(|x| **x == format!("line {i}")).count();
        for i in BEFORE.chain(DURING).chain(AFTER) {
            assert!(
                times(i) <= 1,
                "line {i} arrived {} times: {}",
                times(i),
                ctx()
            );
        }
        for i in AFTER {
            assert_eq!(
                times(i),
                1,
                "line {i}, said after the move, is missing: {}",
                ctx()
            );
        }
        if kind == Kind::Spill {
            // Not in the channel before the spill: nothing of it before then.
            assert_eq!(BEFORE.map(times).sum::<usize>(), 0, "{}", ctx());
            assert!(
                seen.iter().any(|l| l.is("JOIN") && l.nick() == name),
                "the client learns of the channel it is in now: {}",
                ctx()
            );
        } else {
            for i in BEFORE {
                assert_eq!(times(i), 1, "line {i}, said before the move: {}", ctx());
            }
            // A line said during the move is missing only where the gap marker's
            // window (the user off the network) covers when it was said.
            let gaps: Vec<_> = seen
                .iter()
                .filter(|l| l.is("NOTICE") && l.nick() == "*ferry*")
                .filter_map(|l| super::partition::window_in(&l.last_str(), chrono::Utc::now()))
                .collect();
            let second = chrono::Duration::seconds(1);
            let missing: Vec<usize> = DURING.filter(|i| times(*i) == 0).collect();
            for i in &missing {
                let at = said_at[i];
                assert!(
                    gaps.iter()
                        .any(|(f, t)| *f - second <= at && at <= *t + second),
                    "line {i} (said at {at}) is missing and no gap marker covers it \
                     ({gaps:?}): {}",
                    ctx()
                );
            }
            let missing = missing.len();
            println!(
                "FOLLOW {kind:?} {who}: {missing} lines in the window covered by the gap marker"
            );
        }
    }
    // Every user on the network exactly once (bob leaves first).
    bob.send(format!("PART {CHAN}")).await;
    bob.roundtrip().await;
    wait_exactly_once(&mut s.w, &s.users, Duration::from_secs(60)).await;
    let logs: Vec<String> = s.nodes.values().map(NodeProc::log).collect();
    for log in &logs {
        assert!(!log.contains("panicked"), "{log}");
        assert!(!log.contains("client could not follow"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_clients_follow_a_drain_on_the_same_socket() {
    clients_follow(Kind::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_clients_follow_a_rebalance_on_the_same_socket() {
    clients_follow(Kind::Rebalance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_clients_follow_a_spill_on_the_same_socket() {
    clients_follow(Kind::Spill).await;
}
