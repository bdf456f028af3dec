//! Store tests of the limiter's tables, on both backends.

use super::*;

both!(
    network_limits,
    session_counts,
    users_by_recent_activity,
    placed_networks,
    connect_budget_is_shared,
    upgrade_to_placement_keeps_limits_and_nodes,
);

fn limits(key: &str) -> NetworkLimits {
    NetworkLimits {
        updated_at: t0(),
        ..NetworkLimits::new(key, 4, 2.5, 3)
    }
}

async fn network_limits(t: Ctx) {
    let s = &t.store;
    assert!(s.network_limits().await.unwrap().is_empty());
    s.set_network_limits(&limits("Libera.Chat")).await.unwrap();
    let mut oftc = limits("irc.oftc.net");
    oftc.messages_per_second = Some(0.5);
    oftc.message_burst = Some(5);
    oftc.sessions_total = Some(100);
    oftc.connects_per_minute_total = Some(7.5);
    s.set_network_limits(&oftc).await.unwrap();
    let got = s.network_limits().await.unwrap();
    // Keys are stored lowercased and listed in order; every column round-trips.
    assert_eq!(got, vec![oftc.clone(), limits("libera.chat")]);

    // Setting again replaces.
    let mut changed = limits("LIBERA.CHAT");
    changed.sessions_per_ip = 10;
    changed.updated_at = t0() + Duration::seconds(5);
    s.set_network_limits(&changed).await.unwrap();
    let got = s.network_limits().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].sessions_per_ip, 10);
    assert_eq!(got[1].updated_at, t0() + Duration::seconds(5));

    assert!(s.delete_network_limits("Libera.chat").await.unwrap());
    assert!(!s.delete_network_limits("libera.chat").await.unwrap());
    assert_eq!(s.network_limits().await.unwrap(), vec![oftc]);
}

async fn session_counts(t: Ctx) {
    let s = &t.store;
    let c = |k: &str, ip: &str, n| (k.to_string(), ip.to_string(), n);
    s.report_session_counts("n1", &[c("a", "127.0.0.2", 3), c("a", "", 1)], t0())
        .await
        .unwrap();
    s.report_session_counts("n2", &[c("a", "127.0.0.2", 5)], t0())
        .await
        .unwrap();
    let all = s.session_counts().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        (
            all[0].node_id.as_str(),
            all[0].source_ip.as_str(),
            all[0].sessions
        ),
        ("n1", "", 1)
    );
    assert_eq!(all[2].sessions, 5);
    assert_eq!(all[2].updated_at, t0());
    // A report replaces all of the node's rows; other nodes' stay.
    let later = t0() + Duration::seconds(3);
    s.report_session_counts("n1", &[c("b", "127.0.0.3", 2)], later)
        .await
        .unwrap();
    let all = s.session_counts().await.unwrap();
    let n1: Vec<_> = all.iter().filter(|r| r.node_id == "n1").collect();
    assert_eq!(n1.len(), 1);
    assert_eq!(
        (n1[0].key.as_str(), n1[0].sessions, n1[0].updated_at),
        ("b", 2, later)
    );
    s.report_session_counts("n1", &[], later).await.unwrap();
    assert_eq!(s.session_counts().await.unwrap().len(), 1);
}

async fn users_by_recent_activity(t: Ctx) {
    let s = &t.store;
    let (a, an) = user_and_net(s, "a").await;
    let (b, bn) = user_and_net(s, "b").await;
    let (c, _) = user_and_net(s, "c").await;
    let (d, dn) = user_and_net(s, "d").await;
    // d spoke most recently, then a, then b; c never.
    s.insert_messages(&[
        msg(a, 1, an, "#x", 20, "z", "1"),
        msg(b, 1, bn, "#x", 10, "z", "2"),
        msg(d, 1, dn, "#x", 30, "z", "3"),
        msg(a, 2, an, "#y", 5, "z", "4"),
    ])
    .await
    .unwrap();
    let order: Vec<UserId> = s
        .users_by_recent_activity()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(order, vec![d, a, b, c]);
}

async fn placed_networks(t: Ctx) {
    let s = &t.store;
    let (a, _) = user_and_net(s, "a").await;
    let (b, _) = user_and_net(s, "b").await;
    let off = s.create_network(b, &net("off")).await.unwrap();
    s.update_network(off.id, &net("off"), false).await.unwrap();
    s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let got = s.placed_networks().await.unwrap();
    // Enabled networks only, with their user's owner (none for b).
    assert_eq!(
        got,
        vec![
            PlacedNetwork {
                user_id: a,
                node_id: Some("n1".into()),
                addr: "irc.example.org:6697".into(),
                name: "libera".into(),
            },
            PlacedNetwork {
                user_id: b,
                node_id: None,
                addr: "irc.example.org:6697".into(),
                name: "libera".into(),
            },
        ]
    );
}

/// Two stores on one database (two nodes) share one bucket: together they take no
/// more than its burst at once, and the next token comes after the refill.
async fn connect_budget_is_shared(t: Ctx) {
    let s1 = &t.store;
    let s2 = Store::open(&t.url).await.unwrap();
    // 60 a minute (one a second) after a burst of 2.
    assert_eq!(s1.take_connect_token("net", 60.0, 2).await.unwrap(), None);
    assert_eq!(s2.take_connect_token("net", 60.0, 2).await.unwrap(), None);
    let wait = s1
        .take_connect_token("net", 60.0, 2)
        .await
        .unwrap()
        .expect("the burst is spent");
    assert!(wait <= std::time::Duration::from_millis(1000), "{wait:?}");
    assert!(s2
        .take_connect_token("net", 60.0, 2)
        .await
        .unwrap()
        .is_some());
    // Another key has a bucket of its own.
    assert_eq!(s2.take_connect_token("other", 60.0, 1).await.unwrap(), None);
    // After the refill, one more (and only one).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(s2.take_connect_token("net", 60.0, 2).await.unwrap(), None);
    assert!(s1
        .take_connect_token("net", 60.0, 2)
        .await
        .unwrap()
        .is_some());
    s2.close().await;
}

/// A store from before migration 0015: limits and node rows survive the upgrade,
/// the new columns read as empty, and the budget table works.
async fn upgrade_to_placement_keeps_limits_and_nodes(t: Ctx) {
    let s = &t.store;
    s.set_network_limits(&limits("libera.chat")).await.unwrap();
    s.close().await;
    let downgrade = [
        "DROP TABLE connect_budget",
        "ALTER TABLE network_limits DROP COLUMN connects_per_minute_total",
        "ALTER TABLE nodes DROP COLUMN key_load",
        "DELETE FROM _sqlx_migrations WHERE version = 15",
    ];
    t.run_raw(&downgrade).await;
    let s = Store::open(&t.url).await.unwrap();
    assert!(s.schema_version().await.unwrap() >= 15);
    assert_eq!(
        s.network_limits().await.unwrap(),
        vec![limits("libera.chat")]
    );
    assert_eq!(
        s.take_connect_token("libera.chat", 1.0, 1).await.unwrap(),
        None
    );
    s.close().await;
}
