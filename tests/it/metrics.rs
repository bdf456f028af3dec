//! `/metrics` from values kept as things change: gauges follow a real connection,
//! client and disconnect; histograms fill with traffic; a scrape asks no actor. And
//! `GET /api/admin/health`, the typed figures the migration driver reads.

use std::time::{Duration, Instant};

use ferry::admin::NetworkSpec;
use ferry::user::UserHandle;

use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(gauges_and_histograms_follow_a_real_session);

async fn scrape(ferry: &Ferry) -> String {
    let r = reqwest::get(format!("{}/metrics", ferry.http_url()))
        .await
        .unwrap();
    assert!(r.status().is_success());
    r.text().await.unwrap()
}

/// The value of the sample `name` (with its labels, exactly as written).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Scrapes until `name` reads `want` (the actors update the gauges as events
/// happen; this waits for that event, up to a minute).
async fn wait_for(ferry: &Ferry, name: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(ferry).await;
        if value(&text, name) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gauges_and_histograms_follow_a_real_session(backend: Backend) {
    let mut ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(backend).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            id,
            NetworkSpec {
                name: "test".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                channels: vec!["#m".into()],
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(id, "test", 1).await;
    let text = wait_for(&ferry, "ferry_upstreams{state=\"connected\"}", 1.0).await;
    assert_eq!(value(&text, "ferry_users_running"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "ferry_downstream_clients"),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "ferry_upstream_connect_seconds_count").unwrap() >= 1.0,
        "{text}"
    );

    // A client attaches: counted; a line from the network reaches it: the relay
    // latency and the writer's commit are measured.
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    wait_for(&ferry, "ferry_downstream_clients", 1.0).await;
    let mut bob = crate::fixtures::client::TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#m").await;
    bob.send("PRIVMSG #m :measured").await;
    c.expect("bob's line", |l| {
        l.is("PRIVMSG") && l.last_str() == "measured"
    })
    .await;
    ferry.services().writer.flush().await.unwrap();
    let text = scrape(&ferry).await;
    assert!(
        value(&text, "ferry_relay_latency_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "ferry_relay_latency_seconds_bucket{le=\"+Inf\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "ferry_store_batch_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(text.contains("# TYPE ferry_relay_latency_seconds histogram"));
    // Read by ferry-bench under this name; the store keeps it.
    assert!(
        value(&text, "ferry_store_events_widened_total").is_some(),
        "{text}"
    );

    // A scrape asks no actor: a user whose actor never reads its queue does not slow
    // it down, and finds nothing sent to it afterwards.
    let mute = ferry::admin::create_user(
        ferry.store(),
        &ferry.services().guard,
        "mute",
        "secret",
        false,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    ferry
        .services()
        .users
        .insert(UserHandle::for_test(mute.id, "mute", tx));
    let started = Instant::now();
    let text = scrape(&ferry).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a scrape took {:?}",
        started.elapsed()
    );
    assert_eq!(value(&text, "ferry_users_running"), Some(2.0), "{text}");
    assert!(rx.try_recv().is_err(), "the scrape messaged an actor");
    assert!(ferry.services().users.drop_user(mute.id));
    wait_for(&ferry, "ferry_users_running", 1.0).await;

    // The network goes away: the gauge follows; it comes back: connected again.
    ircd.kill();
    wait_for(&ferry, "ferry_upstreams{state=\"connected\"}", 0.0).await;
    ircd.restart().await;
    wait_for(&ferry, "ferry_upstreams{state=\"connected\"}", 1.0).await;
    let text = scrape(&ferry).await;
    assert!(
        value(&text, "ferry_upstream_connect_seconds_count").unwrap() >= 2.0,
        "{text}"
    );

    // The client leaves: no longer counted.
    drop(c);
    wait_for(&ferry, "ferry_downstream_clients", 0.0).await;

    // The migration driver's typed view of the same figures: admin only.
    let url = format!("{}/api/admin/health", ferry.http_url());
    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    let signals: ferry::migrate::Signals = http
        .get(&url)
        .bearer_auth(&ferry.services().node.admin_token.token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signals.users, 1, "{signals:?}");
    assert_eq!(signals.rejections, 0, "{signals:?}");
    assert!(signals.rss_bytes > 0, "{signals:?}");
    assert!(signals.mem_available.is_some(), "{signals:?}");
}
