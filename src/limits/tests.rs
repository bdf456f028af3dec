//! Limiter unit tests, on tokio's paused clock: waits are exact and instant.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::{timeout, Instant};

use super::*;
use crate::limits::Kind;
use crate::store::{NetworkLimits, SessionCount};

const ADDR: &str = "irc.test:6667";
const KEY: &str = "irc.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn target(label: &str) -> Target {
    Target {
        addr: ADDR.into(),
        network_name: "test".into(),
        label: label.into(),
    }
}

fn limits(per_ip: u32, cpm: f64, burst: u32) -> NetworkLimits {
    NetworkLimits::new(KEY, per_ip, cpm, burst)
}

fn limiter(l: Option<NetworkLimits>) -> Arc<Limiter> {
    let lim = Limiter::new(Defaults {
        throttle_backoff: Duration::from_secs(60),
        full_backoff: Duration::from_secs(30),
        ..Defaults::default()
    });
    lim.set_limits(l.into_iter().collect());
    lim
}

/// Whether `fut` is still waiting after `secs` seconds of (paused) time.
async fn still_waiting<F: std::future::Future>(secs: u64, fut: F) -> bool {
    timeout(Duration::from_secs(secs), fut).await.is_err()
}

#[tokio::test(start_paused = true)]
async fn slots_are_held_until_the_permit_drops() {
    let lim = limiter(Some(limits(2, 6000.0, 100)));
    let a = lim.acquire(&target("a"), None, &[ip(2)]).await;
    let _b = lim.acquire(&target("b"), None, &[ip(2)]).await;
    assert_eq!(a.source(), Some(ip(2)));
    assert_eq!(a.key(), KEY);
    assert_eq!(
        lim.local_counts(),
        vec![IpCount {
            key: KEY.into(),
            source: Some(ip(2)),
            sessions: 2
        }]
    );
    // The third waits as long as both slots are held…
    assert!(still_waiting(3600, lim.acquire(&target("c"), None, &[ip(2)])).await);
    // …and the abandoned wait left the queue: after a release the next one goes at once.
    assert_eq!(lim.waiting(KEY), 0);
    drop(a);
    let t0 = Instant::now();
    let c = lim.acquire(&target("c"), None, &[ip(2)]).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(c.source(), Some(ip(2)));
    assert_eq!(lim.stats().granted, 3);
}

#[tokio::test(start_paused = true)]
async fn queue_is_fifo_per_key() {
    let lim = limiter(Some(limits(1, 6000.0, 100)));
    let held = lim.acquire(&target("first"), None, &[ip(2)]).await;
    // Tickets taken in this order are served in this order, whatever order their
    // tasks start waiting in.
    let tickets: Vec<Ticket> = ["t1", "t2", "t3"]
        .iter()
        .map(|l| lim.enqueue(&target(l)))
        .collect();
    let mut tasks = Vec::new();
    for t in tickets.into_iter().rev() {
        tasks.push(tokio::spawn(async move {
            let p = t.acquire(None, &[ip(2)]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(p);
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(lim.waiting(KEY), 3);
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    let order: Vec<String> = lim.grants(KEY).into_iter().map(|g| g.label).collect();
    assert_eq!(order, ["first", "t1", "t2", "t3"]);
}

#[tokio::test(start_paused = true)]
async fn gcra_paces_connects_after_the_burst() {
    // 30 per minute (one per 2 s) after a burst of 3.
    let lim = limiter(Some(limits(1000, 30.0, 3)));
    let t0 = Instant::now();
    let mut permits = Vec::new();
    for i in 0..10 {
        permits.push(lim.acquire(&target(&i.to_string()), None, &[ip(2)]).await);
    }
    let at: Vec<Duration> = lim.grants(KEY).iter().map(|g| g.at - t0).collect();
    let s = Duration::from_secs;
    assert_eq!(&at[..3], &[s(0), s(0), s(0)]);
    for (i, d) in at.iter().enumerate().skip(3) {
        assert_eq!(*d, s(2 * (i as u64 - 2)), "connect {i}");
    }
    // Each source IP has its own bucket: a second IP bursts again at once.
    let other = lim.acquire(&target("x"), None, &[ip(3)]).await;
    assert_eq!(other.source(), Some(ip(3)));
    assert_eq!(t0.elapsed(), s(14));
}

#[tokio::test(start_paused = true)]
async fn throttled_backs_off_the_whole_source_ip() {
    let lim = limiter(Some(limits(10, 6000.0, 100)));
    let p = lim.acquire(&target("a"), None, &[ip(2)]).await;
    p.report(Kind::Throttled);
    drop(p);
    assert_eq!(lim.stats().throttled, 1);
    // Nobody connects from that IP to that network until the back-off is over…
    let t0 = Instant::now();
    let q = lim.acquire(&target("b"), None, &[ip(2)]).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(60));
    drop(q);
    // …while another IP is used at once when there is one.
    let p = lim
        .acquire(&target("c"), Some(ip(2)), &[ip(2), ip(3)])
        .await;
    p.report(Kind::Throttled);
    drop(p);
    let t1 = Instant::now();
    let q = lim
        .acquire(&target("d"), Some(ip(2)), &[ip(2), ip(3)])
        .await;
    assert_eq!((q.source(), t1.elapsed()), (Some(ip(3)), Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn too_many_connections_marks_the_ip_full() {
    let lim = limiter(Some(limits(10, 6000.0, 100)));
    let a = lim
        .acquire(&target("a"), Some(ip(2)), &[ip(2), ip(3)])
        .await;
    assert_eq!(a.source(), Some(ip(2)));
    a.report(Kind::TooManyConnections);
    drop(a);
    assert_eq!(lim.stats().too_many_connections, 1);
    // ip 2 has more free slots but is full for a while: the next ones go to ip 3.
    let b = lim
        .acquire(&target("b"), Some(ip(2)), &[ip(2), ip(3)])
        .await;
    let c = lim
        .acquire(&target("c"), Some(ip(2)), &[ip(2), ip(3)])
        .await;
    assert_eq!((b.source(), c.source()), (Some(ip(3)), Some(ip(3))));
    // Only ip 2 allowed: it waits out the full period.
    let t0 = Instant::now();
    let d = lim.acquire(&target("d"), Some(ip(2)), &[ip(2)]).await;
    assert_eq!(
        (d.source(), t0.elapsed()),
        (Some(ip(2)), Duration::from_secs(30))
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_spread_over_source_ips() {
    let lim = limiter(Some(limits(3, 6000.0, 100)));
    let ips = [ip(2), ip(3)];
    let mut permits = Vec::new();
    for i in 0..6u8 {
        // Every user prefers ip 2; most free slots wins over preference.
        permits.push(
            lim.acquire(&target(&i.to_string()), Some(ips[0]), &ips)
                .await,
        );
    }
    let on = |x| permits.iter().filter(|p| p.source() == Some(x)).count();
    assert_eq!((on(ip(2)), on(ip(3))), (3, 3));
    // The first goes to the preferred IP (a tie), the second to the emptier one.
    assert_eq!(permits[0].source(), Some(ip(2)));
    assert_eq!(permits[1].source(), Some(ip(3)));
    assert!(still_waiting(3600, lim.acquire(&target("7"), None, &ips)).await);
}

#[tokio::test(start_paused = true)]
async fn defaults_without_configuration() {
    let lim = limiter(None);
    // No slot or connect caps…
    let t0 = Instant::now();
    let mut permits = Vec::new();
    for i in 0..500 {
        permits.push(lim.acquire(&target(&i.to_string()), None, &[]).await);
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(permits[0].source(), None);
    // …but flood control: one line a second after ten.
    assert_eq!(
        (permits[0].messages_per_second, permits[0].message_burst),
        (1.0, 10)
    );
    assert_eq!(lim.flood(KEY), (1.0, 10));
    // A configured rate wins; what it leaves out stays the default.
    let mut l = limits(1000, 6000.0, 10);
    l.messages_per_second = Some(4.0);
    lim.set_limits(vec![l]);
    assert_eq!(lim.flood(KEY), (4.0, 10));
    let p = lim.acquire(&target("x"), None, &[]).await;
    assert_eq!((p.messages_per_second, p.message_burst), (4.0, 10));
}

#[tokio::test(start_paused = true)]
async fn reload_applies_to_waiters() {
    let lim = limiter(Some(limits(1, 6000.0, 100)));
    let _held = lim.acquire(&target("a"), None, &[ip(2)]).await;
    let waiter = {
        let lim = lim.clone();
        tokio::spawn(async move { lim.acquire(&target("b"), None, &[ip(2)]).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiter.is_finished());
    // Raising the slot count lets the waiter through without any release.
    lim.set_limits(vec![limits(2, 6000.0, 100)]);
    let p = timeout(Duration::from_millis(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.source(), Some(ip(2)));
    // Removing the limits removes the caps.
    lim.set_limits(vec![]);
    let _c = timeout(
        Duration::from_millis(1),
        lim.acquire(&target("c"), None, &[ip(2)]),
    )
    .await
    .unwrap();
    assert!(lim.limits().is_empty());
}

#[tokio::test(start_paused = true)]
async fn keys_follow_the_configured_rule() {
    let mut parent = limits(1, 6000.0, 100);
    parent.key = "Test".into();
    let lim = limiter(Some(parent));
    assert_eq!(lim.key_for("irc.test:6667", "x"), "test");
    assert_eq!(lim.key_for("eu.irc.test:6667", "x"), "test");
    assert_eq!(lim.key_for("127.0.0.1:6667", "test"), "test");
    assert_eq!(lim.key_for("127.0.0.1:6667", "other"), "127.0.0.1");
    // Two hosts under one parent domain share its slots.
    let t = |addr: &str| Target {
        addr: addr.into(),
        network_name: "n".into(),
        label: "l".into(),
    };
    let _a = lim.acquire(&t("a.irc.test:6667"), None, &[ip(2)]).await;
    assert!(still_waiting(60, lim.acquire(&t("b.irc.test:6667"), None, &[ip(2)])).await);
}

#[tokio::test(start_paused = true)]
async fn sessions_total_counts_other_nodes() {
    let mut l = limits(10, 6000.0, 100);
    l.sessions_total = Some(3);
    let lim = limiter(Some(l));
    let now = Utc::now();
    let row = |node: &str, n, age_secs| SessionCount {
        node_id: node.into(),
        key: KEY.into(),
        source_ip: "127.0.0.9".into(),
        sessions: n,
        updated_at: now - chrono::Duration::seconds(age_secs),
    };
    // Our own row is ignored (we count ourselves live), a stale one too.
    lim.set_remote_counts(
        "me",
        &[row("n2", 2, 1), row("me", 5, 1), row("dead", 9, 3600)],
        now,
    );
    let a = lim.acquire(&target("a"), None, &[ip(2)]).await;
    assert!(still_waiting(60, lim.acquire(&target("b"), None, &[ip(2)])).await);
    // The other node's sessions went away: room for two more.
    lim.set_remote_counts("me", &[row("n2", 0, 0)], now);
    let _b = lim.acquire(&target("b"), None, &[ip(2)]).await;
    let _c = lim.acquire(&target("c"), None, &[ip(3)]).await;
    assert!(still_waiting(60, lim.acquire(&target("d"), None, &[ip(2)])).await);
    drop(a);
    let _d = timeout(
        Duration::from_millis(1),
        lim.acquire(&target("d"), None, &[ip(2)]),
    )
    .await
    .unwrap();
}

/// The cluster's connect budget (`connects_per_minute_total`), taken from a store two
/// limiters (two nodes) share: each alone may connect 6,000 a minute, together only 60
/// (after a burst of 2), so the third connect waits for the refill whichever node
/// makes it. On the real clock: the bucket refills by the database's clock.
#[tokio::test]
async fn the_cluster_budget_is_shared_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("b.db").display());
    let store = crate::store::Store::open(&url).await.unwrap();
    let l = NetworkLimits {
        connects_per_minute_total: Some(60.0),
        ..limits(10, 6000.0, 2)
    };
    let (a, b) = (limiter(Some(l.clone())), limiter(Some(l)));
    a.set_budget_store(store.clone());
    b.set_budget_store(store.clone());
    let started = std::time::Instant::now();
    let _p1 = a.acquire(&target("a1"), None, &[ip(2)]).await;
    let _p2 = b.acquire(&target("b1"), None, &[ip(3)]).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    // The burst is spent: the third waits about a second, on either node.
    let _p3 = b.acquire(&target("b2"), None, &[ip(3)]).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A limiter without the store does not enforce it (a limiter on its own).
    let free = limiter(Some(NetworkLimits {
        connects_per_minute_total: Some(60.0),
        ..limits(10, 6000.0, 2)
    }));
    let t = std::time::Instant::now();
    for i in 0..3 {
        let _ = free
            .acquire(&target(&format!("f{i}")), None, &[ip(4)])
            .await;
    }
    assert!(t.elapsed() < Duration::from_millis(500));
    store.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_draining_node_grants_only_moves() {
    let lim = limiter(Some(limits(1, 6000.0, 100)));
    let held = lim.acquire(&target("held"), None, &[ip(2)]).await;
    // A user of this node waits for the slot; then the node starts draining.
    let waiting = lim.enqueue(&target("waiting"));
    lim.set_draining(true);
    assert!(lim.is_draining());
    let waiting = tokio::spawn(async move { waiting.acquire(None, &[ip(2)]).await });
    // A failed move handed back queues behind it, and goes first once the slot frees.
    let handed_back = lim.enqueue_for_move(&target("handed-back"));
    drop(held);
    let p = timeout(Duration::from_secs(1), handed_back.acquire(None, &[ip(2)]))
        .await
        .expect("a move's connect goes while the node drains");
    assert_eq!(p.source(), Some(ip(2)));
    // The slot frees again: the waiting user still does not connect.
    drop(p);
    tokio::task::yield_now().await;
    assert_eq!(lim.waiting(KEY), 1);
    assert!(!waiting.is_finished());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!waiting.is_finished());
    let labels: Vec<String> = lim.grants(KEY).into_iter().map(|g| g.label).collect();
    assert_eq!(labels, ["held", "handed-back"]);
    // The drain ends (aborted): it connects at once, in its old place.
    lim.set_draining(false);
    let p = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("granted once the drain ends")
        .unwrap();
    assert_eq!(p.source(), Some(ip(2)));
    assert_eq!(lim.waiting(KEY), 0);
}

#[tokio::test(start_paused = true)]
async fn a_draining_node_keeps_the_queue_order_of_moves() {
    let lim = limiter(Some(limits(1, 6000.0, 100)));
    let held = lim.acquire(&target("user"), None, &[ip(2)]).await;
    lim.set_draining(true);
    let first = lim.enqueue_for_move(&target("move-1"));
    let second = lim.enqueue_for_move(&target("move-2"));
    let second = tokio::spawn(async move { second.acquire(None, &[ip(2)]).await });
    let first = tokio::spawn(async move { first.acquire(None, &[ip(2)]).await });
    drop(held);
    let p1 = timeout(Duration::from_secs(1), first)
        .await
        .unwrap()
        .unwrap();
    tokio::task::yield_now().await;
    assert!(!second.is_finished());
    drop(p1);
    timeout(Duration::from_secs(1), second)
        .await
        .unwrap()
        .unwrap();
    let labels: Vec<String> = lim.grants(KEY).into_iter().map(|g| g.label).collect();
    assert_eq!(labels, ["user", "move-1", "move-2"]);
}

/// What `f` logs (warnings and up), as text.
fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || out.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (r, text)
}

/// A live connection taken over (a park's resume, an in-place upgrade) is counted at
/// once on its (key, source IP): no queue, no grant, no connect token — and its permit
/// frees the slot when dropped, as any other.
#[tokio::test(start_paused = true)]
async fn adopt_counts_a_live_connection_at_once() {
    // Two slots; one connect a minute, no burst beyond one.
    let lim = limiter(Some(limits(2, 1.0, 1)));
    // Even while the node drains: the connection exists, nothing is dialled.
    lim.set_draining(true);
    let adopted = lim.adopt(KEY, Some(ip(2)), "alice/test");
    lim.set_draining(false);
    assert_eq!((adopted.key(), adopted.source()), (KEY, Some(ip(2))));
    assert_eq!(
        lim.local_counts(),
        vec![IpCount {
            key: KEY.into(),
            source: Some(ip(2)),
            sessions: 1
        }]
    );
    assert_eq!(lim.key_load().get(KEY), Some(&(1, 0)));
    let stats = lim.stats();
    assert_eq!(
        (stats.granted, stats.adopted, stats.adopted_over_limit),
        (0, 1, 0)
    );
    assert!(lim.grants(KEY).is_empty(), "an adoption is not a connect");
    // No connect token was spent: the next connect goes at once…
    let t0 = Instant::now();
    let p = lim.acquire(&target("b"), None, &[ip(2)]).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // …and both slots are taken now: a third waits.
    assert!(still_waiting(3600, lim.acquire(&target("c"), None, &[ip(2)])).await);
    drop(adopted);
    assert_eq!(lim.local_counts()[0].sessions, 1);
    drop(p);
    assert!(lim.local_counts().is_empty());
    assert_eq!(lim.key_load().get(KEY), None);
}

/// The adopted session's address gets the key's connect bucket, as a connect's would:
/// the next connects from it are paced.
#[tokio::test(start_paused = true)]
async fn adopt_keeps_connects_from_that_address_paced() {
    // 30 a minute (one per 2 s) after a burst of one.
    let lim = limiter(Some(limits(10, 30.0, 1)));
    let _adopted = lim.adopt(KEY, Some(ip(2)), "alice/test");
    let t0 = Instant::now();
    let _a = lim.acquire(&target("a"), None, &[ip(2)]).await;
    let _b = lim.acquire(&target("b"), None, &[ip(2)]).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // The flood settings of the key come with the permit.
    let mut l = limits(10, 30.0, 1);
    l.messages_per_second = Some(3.0);
    l.message_burst = Some(7);
    lim.set_limits(vec![l]);
    let p = lim.adopt(KEY, None, "bob/test");
    assert_eq!((p.messages_per_second, p.message_burst), (3.0, 7));
}

/// A connection adopted where the address is full already is counted anyway (it is
/// the truth), logged and counted as over the limit; tickets waiting for a slot see
/// it taken and go only once the count is below the limit again.
#[tokio::test(start_paused = true)]
async fn adopt_over_the_limit_is_counted_and_logged() {
    let lim = limiter(Some(limits(1, 6000.0, 100)));
    let held = lim.acquire(&target("held"), None, &[ip(2)]).await;
    let waiter = {
        let lim = lim.clone();
        tokio::spawn(async move { lim.acquire(&target("waiter"), None, &[ip(2)]).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lim.waiting(KEY), 1);
    let (adopted, logged) = warnings_of(|| lim.adopt(KEY, Some(ip(2)), "alice/test"));
    assert!(
        logged.contains("over its session limit") && logged.contains("alice/test"),
        "{logged:?}"
    );
    assert_eq!(lim.local_counts()[0].sessions, 2);
    assert_eq!(lim.key_load().get(KEY), Some(&(2, 1)));
    assert_eq!(lim.stats().adopted_over_limit, 1);
    // One slot frees: still one session on a one-slot address, the waiter waits.
    drop(held);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!waiter.is_finished());
    // The adopted connection ends: its slot goes to the waiter at once.
    drop(adopted);
    let p = timeout(Duration::from_millis(1), waiter)
        .await
        .expect("granted when the adopted session ends")
        .unwrap();
    assert_eq!(p.source(), Some(ip(2)));
    assert_eq!(lim.local_counts()[0].sessions, 1);
    // Within the limit, nothing is logged as over.
    drop(p);
    let (_ok, logged) = warnings_of(|| lim.adopt(KEY, Some(ip(2)), "bob/test"));
    assert!(logged.is_empty(), "{logged:?}");
    assert_eq!(lim.stats().adopted, 2);
    assert_eq!(lim.stats().adopted_over_limit, 1);
}

/// Adopted sessions count toward the cluster cap (`sessions_total`), and one over it
/// is logged.
#[tokio::test(start_paused = true)]
async fn adopt_counts_toward_sessions_total() {
    let mut l = limits(10, 6000.0, 100);
    l.sessions_total = Some(2);
    let lim = limiter(Some(l));
    let _a = lim.adopt(KEY, Some(ip(2)), "a/test");
    let _b = lim.adopt(KEY, Some(ip(3)), "b/test");
    assert!(still_waiting(60, lim.acquire(&target("c"), None, &[ip(4)])).await);
    let (_c, logged) = warnings_of(|| lim.adopt(KEY, Some(ip(4)), "c/test"));
    assert!(logged.contains("session cap"), "{logged:?}");
    assert_eq!(lim.stats().adopted_over_limit, 1);
}

/// An adoption takes no token of the cluster's connect budget: with a budget of one
/// connect (burst 1), adopting sessions leaves it for the next real connect.
#[tokio::test]
async fn adopt_takes_no_cluster_budget_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("b.db").display());
    let store = crate::store::Store::open(&url).await.unwrap();
    let lim = limiter(Some(NetworkLimits {
        connects_per_minute_total: Some(6.0),
        ..limits(10, 6000.0, 1)
    }));
    lim.set_budget_store(store.clone());
    let _adopted: Vec<Permit> = (0..3)
        .map(|i| lim.adopt(KEY, Some(ip(2)), &format!("u{i}")))
        .collect();
    let _p = timeout(
        Duration::from_secs(5),
        lim.acquire(&target("a"), None, &[ip(3)]),
    )
    .await
    .expect("the budget's one token is still there");
    // The budget is enforced: the next connect waits for the refill (10 s).
    assert!(timeout(
        Duration::from_millis(500),
        lim.acquire(&target("b"), None, &[ip(3)])
    )
    .await
    .is_err());
    assert_eq!(
        lim.local_counts().iter().map(|c| c.sessions).sum::<u32>(),
        4
    );
    store.close().await;
}
