//! The limiter against a real InspIRCd with per-IP limits (`localmax`) and a connect
//! throttle (`connflood`, bootwait 0): Ferry paces and spreads its connects so the
//! server never rejects one, on first connect and on a node restart; `ferry limits`
//! changes take effect on running nodes.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::store::{NetworkLimits, UserId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{ConnFlood, InspOpts, Ircd};

const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const IP3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
/// The watcher's address: neither Ferry's nor the probe's.
const IP5: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5));
/// The ircd listens on 127.0.0.1, so that is the limiter key of its networks.
const KEY: &str = "127.0.0.1";

fn spec(addr: &str, nick: &str) -> NetworkSpec {
    NetworkSpec {
        name: "test".into(),
        addr: addr.into(),
        tls: false,
        tls_verify: None,
        nick: nick.into(),
        username: None,
        realname: None,
        sasl: None,
        sasl_cert: None,
        source_ip: None,
        channels: vec![],
    }
}

fn limits(per_ip: u32, cpm: f64, burst: u32) -> NetworkLimits {
    NetworkLimits::new(KEY, per_ip, cpm, burst)
}

/// Creates `n` users `u0…` with one network each on `addr` (straight in the store:
/// password hashing would dominate the test) and starts them in order.
async fn add_users(f: &Ferry, n: usize, addr: &str) -> Vec<UserId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let name = format!("u{i}");
        let u = f.store().create_user(&name, "x", false).await.unwrap();
        f.store()
            .create_network(u.id, &spec(addr, &name).to_new_network().unwrap())
            .await
            .unwrap();
        f.services().users.start(u.id, &name).await.unwrap();
        ids.push(u.id);
    }
    ids
}

/// Waits (generously) until every user's network is registered upstream.
async fn wait_all_connected(f: &Ferry, users: &[UserId]) {
    for u in users {
        f.wait_connected(*u, "test", 0).await;
    }
}

/// Ferry's own count of classified rejections, from the limiter's feedback.
fn assert_no_rejections(f: &Ferry, ircd: &Ircd) {
    let stats = f.services().limiter.stats();
    assert_eq!(
        (stats.throttled, stats.too_many_connections),
        (0, 0),
        "Ferry saw rejections: {stats:?}"
    );
    let log = ircd.log();
    for text in ["Throttled", "No more connections"] {
        assert!(
            !log.contains(text),
            "the server rejected a connect ({text}):\n{log}"
        );
    }
}

#[tokio::test]
async fn many_users_spread_over_two_source_ips_without_rejections() {
    // Six sessions per IP; the server throttles the 8th registration within ~3 s
    // (connflood counts server-wide, in whole seconds).
    let ircd = Ircd::inspircd(InspOpts {
        localmax: Some(6),
        connflood: Some(ConnFlood {
            period_secs: 2,
            maxconns: 8,
        }),
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let f = Ferry::start_on(db, |c| c.user.source_ips = vec![IP2, IP3]).await;
    // Matching limits: 6 per IP, one connect per 3 s per IP after 1: at most
    // 2 × (1 + 3 s / 3 s) = 4 registrations in any 3-second window, below 7.
    f.store()
        .set_network_limits(&limits(6, 20.0, 1))
        .await
        .unwrap();
    f.services().reload_limits().await.unwrap();

    let started = tokio::time::Instant::now();
    let users = add_users(&f, 12, &ircd.addr()).await;
    wait_all_connected(&f, &users).await;
    let took = started.elapsed();

    assert_no_rejections(&f, &ircd);
    let counts = f.services().limiter.local_counts();
    let on = |ip| {
        counts
            .iter()
            .find(|c| c.key == KEY && c.source == Some(ip))
            .map_or(0, |c| c.sessions)
    };
    assert_eq!((on(IP2), on(IP3)), (6, 6), "{counts:?}");
    // No upstream task met a rejection either (these counters are per connection).
    for u in &users {
        let status = f.services().users.get(*u).unwrap().status().await.unwrap();
        assert!(matches!(status[0].state, ferry::user::ConnState::Connected));
    }
    // The limits' bound: 5 paced connects per IP after the burst, 3 s apart.
    let grants = f.services().limiter.grants(KEY);
    assert_eq!(grants.len(), 12);
    let span = grants.last().unwrap().at - grants[0].at;
    assert!(span >= Duration::from_secs(15), "{span:?}");
    println!("12 users over 2 IPs: connect span {span:?}, all registered after {took:?}");
}

#[tokio::test]
async fn node_restart_reconnects_paced_and_most_recently_active_first() {
    const N: usize = 200;
    const RATE: f64 = 600.0; // connects per minute: one per 100 ms
    const BURST: u32 = 10;
    // The server throttles the 45th registration in a ~3 s window; the limits allow
    // at most 10 + 3 s × 10/s = 40 in it.
    let ircd = Ircd::inspircd(InspOpts {
        connflood: Some(ConnFlood {
            period_secs: 2,
            maxconns: 45,
        }),
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Postgres).await;
    let mut f = Ferry::start_on(db, |c| c.user.source_ips = vec![IP2]).await;
    f.store()
        .set_network_limits(&limits(1000, RATE, BURST))
        .await
        .unwrap();
    f.services().reload_limits().await.unwrap();

    let users = add_users(&f, N, &ircd.addr()).await;
    wait_all_connected(&f, &users).await;
    assert_no_rejections(&f, &ircd);

    // Three users get a message, in this order: after the restart they are the
    // most recently active, newest first.
    let mut watcher = TestClient::connect_from(&ircd.addr(), IP5).await;
    watcher.register("watcher").await;
    for i in [150, 100, 50] {
        watcher.send(format!("PRIVMSG u{i} :hello")).await;
        watcher.roundtrip().await;
        let h = f.services().users.get(users[i]).unwrap();
        // Wait until the actor stored it (the flush covers what it has seen).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            h.flush().await.unwrap();
            let last = f
                .store()
                .users_by_recent_activity()
                .await
                .unwrap()
                .first()
                .map(|u| u.name.clone());
            if last.as_deref() == Some(&format!("u{i}")) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "u{i} never stored the message"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let restarting = tokio::time::Instant::now();
    f.restart().await;
    let started_again = restarting.elapsed();
    wait_all_connected(&f, &users).await;
    let reconnected = restarting.elapsed();
    assert_no_rejections(&f, &ircd);

    let grants = f.services().limiter.grants(KEY);
    assert_eq!(grants.len(), N, "one connect per user, no retries");
    let first: Vec<&str> = grants[..3].iter().map(|g| g.label.as_str()).collect();
    assert_eq!(first, ["u50/test", "u100/test", "u150/test"]);
    // Measured from Ferry's own grant timestamps, so a loaded machine that
    // registers slowly does not change the figure being checked.
    let span = (grants[N - 1].at - grants[0].at).as_secs_f64();
    let bound = (N as f64 - f64::from(BURST)) * 60.0 / RATE;
    println!(
        "restart of {N} users: connect span {span:.2} s (bound {bound:.2} s), \
         node start {started_again:?}, all registered {reconnected:?}"
    );
    assert!(
        (span - bound).abs() <= bound * 0.10,
        "connect span {span:.2} s is not within 10% of {bound:.2} s"
    );
}

// ---- the real binary ----

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

async fn ferry(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ferry command finishes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The states of alice's networks, by name, as `ferry --json network list` shows them.
async fn states(data: &std::path::Path) -> Vec<(String, String)> {
    let (ok, out, err) = ferry(data, &["--json", "network", "list", "--user", "alice"], "").await;
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut v: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["live"]["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn limits_cli_changes_take_effect_without_a_restart() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = ferry(&data, &["user", "add", "alice"], "secret\n").await;
    assert!(ok, "{err}");

    // With no node running, `limits` acts on the store.
    let (ok, out, err) = ferry(
        &data,
        &[
            "limits",
            "set",
            "127.0.0.1",
            "--sessions-per-ip",
            "1",
            "--connects-per-minute",
            "600",
            "--burst",
            "5",
        ],
        "",
    )
    .await;
    assert!(ok && out.contains("set limits for 127.0.0.1"), "{out}{err}");
    let (ok, _, err) = ferry(
        &data,
        &[
            "limits",
            "set",
            "x",
            "--sessions-per-ip",
            "0",
            "--connects-per-minute",
            "1",
        ],
        "",
    )
    .await;
    assert!(!ok && err.contains("--sessions-per-ip"), "{err}");

    let mut serve = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--irc",
            "127.0.0.1:0",
            "--source-ip",
            "127.0.0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve prints its addresses")
        .unwrap()
        .expect("a banner line");

    // Two networks on one server from one source IP with one slot: one waits.
    let addr = ircd.addr();
    for (name, nick) in [("a", "alice1"), ("b", "alice2")] {
        let (ok, _, err) = ferry(
            &data,
            &[
                "network", "add", "--user", "alice", "--name", name, "--addr", &addr, "--nick",
                nick,
            ],
            "",
        )
        .await;
        assert!(ok, "{err}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = states(&data).await;
        if s.iter().filter(|(_, st)| st == "connected").count() == 1 {
            assert!(s.iter().any(|(_, st)| st == "connecting"), "{s:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It keeps waiting (longer than the node's 5 s reload interval).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = states(&data).await;
    assert_eq!(
        s.iter().filter(|(_, st)| st == "connected").count(),
        1,
        "{s:?}"
    );

    // Through the running node: two slots; the waiting network connects at once.
    let (ok, out, err) = ferry(
        &data,
        &[
            "limits",
            "set",
            "127.0.0.1",
            "--sessions-per-ip",
            "2",
            "--connects-per-minute",
            "600",
            "--burst",
            "5",
            "--messages-per-second",
            "2",
        ],
        "",
    )
    .await;
    assert!(ok, "{out}{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = states(&data).await;
        if s.iter().all(|(_, st)| st == "connected") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (ok, out, err) = ferry(&data, &["limits", "list"], "").await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("127.0.0.1"))
        .expect(&out);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["2", "600", "5", "2"], "{out}");
    let (ok, out, err) = ferry(&data, &["--json", "limits", "list"], "").await;
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sessions_per_ip"], 2);

    let (ok, _, err) = ferry(&data, &["limits", "remove", "127.0.0.1"], "").await;
    assert!(ok, "{err}");
    let (ok, out, _) = ferry(&data, &["--json", "limits", "list"], "").await;
    assert!(ok && out.trim() == "[]", "{out}");
    let (ok, _, err) = ferry(&data, &["limits", "remove", "127.0.0.1"], "").await;
    assert!(!ok && err.contains("no limits"), "{err}");

    let pid = serve.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(30), serve.wait()).await;
}

#[tokio::test]
async fn limits_set_on_one_node_reach_another_without_a_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Ferry::start_on(db.clone(), |_| {}).await;
    let b = Ferry::start_on(db, |_| {}).await;
    // Through node a's admin API, as the CLI does.
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/api/admin/limits/Irc.Example.org", a.http_url()))
        .bearer_auth(&a.services().node.admin_token)
        .json(&serde_json::json!({ "sessions_per_ip": 3, "connects_per_minute": 4, "burst": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Node a applied it at once.
    assert_eq!(a.services().limiter.limits().len(), 1);
    assert_eq!(
        a.services().limiter.key_for("irc.example.org:6697", "x"),
        "irc.example.org"
    );
    // Node b picks it up from the store within its reload interval (1 s in tests).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while b.services().limiter.limits().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.services().limiter.limits()[0].sessions_per_ip, 3);
    // A bad value is refused with the setting's name.
    let resp = http
        .put(format!("{}/api/admin/limits/x", a.http_url()))
        .bearer_auth(&a.services().node.admin_token)
        .json(&serde_json::json!({ "sessions_per_ip": 3, "connects_per_minute": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("--connects-per-minute"));
    let resp = http
        .delete(format!("{}/api/admin/limits/irc.example.org", a.http_url()))
        .bearer_auth(&a.services().node.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !b.services().limiter.limits().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b kept the removed limits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
