//! Store tests of the Web Push tables, on both backends, and the upgrade of a store
//! made before them (migration 0008).

use super::*;

both!(
    push_vapid_key_is_made_once,
    push_subscriptions_per_user,
    push_settings_and_mutes
);

async fn push_vapid_key_is_made_once(t: Ctx) {
    let s = &t.store;
    let first = s.vapid_key(|| "key-one".into()).await.unwrap();
    assert_eq!(first, "key-one");
    // Later calls (another node, a restart) read the stored key; the generator is
    // not called, and a racing node's key does not replace it.
    let again = s
        .vapid_key(|| panic!("a second key must not be made"))
        .await
        .unwrap();
    assert_eq!(again, "key-one");
    let other = Store::open(&t.url).await.unwrap();
    assert_eq!(
        other.vapid_key(|| "key-two".into()).await.unwrap(),
        "key-one"
    );
    other.close().await;

    // Concurrent first calls on an empty table agree on one key.
    s.db.query("DELETE FROM push_vapid")
        .execute()
        .await
        .unwrap();
    let calls = (0..8).map(|i| {
        let s = s.clone();
        async move { s.vapid_key(move || format!("racer-{i}")).await.unwrap() }
    });
    let keys = futures::future::join_all(calls).await;
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
}

async fn push_subscriptions_per_user(t: Ctx) {
    let s = &t.store;
    let (alice, _) = user_and_net(s, "alice").await;
    let (bob, _) = user_and_net(s, "bob").await;
    let ep = "https://push.example/s/1";
    assert!(s
        .add_push_subscription(alice, ep, "p1", "a1", false)
        .await
        .unwrap());
    assert!(s
        .add_push_subscription(alice, "https://push.example/s/2", "p2", "a2", true)
        .await
        .unwrap());
    // The same endpoint for another user is that user's own row.
    assert!(s
        .add_push_subscription(bob, ep, "pb", "ab", false)
        .await
        .unwrap());
    // Registering again renews the keys, no second row.
    assert!(!s
        .add_push_subscription(alice, ep, "p1-new", "a1-new", false)
        .await
        .unwrap());
    let subs = s.push_subscriptions(alice).await.unwrap();
    assert_eq!(
        subs.iter()
            .map(|x| (
                x.endpoint.as_str(),
                x.p256dh.as_str(),
                x.auth.as_str(),
                x.irc
            ))
            .collect::<Vec<_>>(),
        vec![
            (ep, "p1-new", "a1-new", false),
            ("https://push.example/s/2", "p2", "a2", true)
        ]
    );
    assert_eq!(s.push_subscription_count().await.unwrap(), 3);

    // Deleting is per user.
    assert!(s.delete_push_subscription(alice, ep).await.unwrap());
    assert!(!s.delete_push_subscription(alice, ep).await.unwrap());
    assert_eq!(s.push_subscriptions(bob).await.unwrap()[0].p256dh, "pb");
    assert!(matches!(
        s.add_push_subscription(9999, ep, "p", "a", false).await,
        Err(StoreError::NotFound(_))
    ));

    // Deleting a user deletes their subscriptions.
    s.delete_user(bob).await.unwrap();
    assert_eq!(s.push_subscription_count().await.unwrap(), 1);
}

async fn push_settings_and_mutes(t: Ctx) {
    let s = &t.store;
    let (alice, libera) = user_and_net(s, "alice").await;
    let (bob, bobnet) = user_and_net(s, "bob").await;
    assert_eq!(
        s.push_settings(alice).await.unwrap(),
        PushSettings::default()
    );
    let set = PushSettings {
        keywords: vec![
            " ferry ".into(),
            "".into(),
            "çava\nrelease".into(),
            "日本".into(),
        ],
        irc_is_active: true,
    };
    s.set_push_settings(alice, &set).await.unwrap();
    assert_eq!(
        s.push_settings(alice).await.unwrap(),
        PushSettings {
            keywords: vec![
                "ferry".into(),
                "çava".into(),
                "release".into(),
                "日本".into()
            ],
            irc_is_active: true,
        }
    );
    s.set_push_settings(alice, &PushSettings::default())
        .await
        .unwrap();
    assert_eq!(
        s.push_settings(alice).await.unwrap(),
        PushSettings::default()
    );
    assert_eq!(s.push_settings(bob).await.unwrap(), PushSettings::default());

    s.set_push_muted(libera, b"#rust", true).await.unwrap();
    s.set_push_muted(libera, b"#rust", true).await.unwrap();
    s.set_push_muted(libera, b"bob", true).await.unwrap();
    s.set_push_muted(bobnet, b"#other", true).await.unwrap();
    assert_eq!(
        s.push_mutes(alice).await.unwrap(),
        vec![(libera, b"#rust".to_vec()), (libera, b"bob".to_vec())]
    );
    s.set_push_muted(libera, b"bob", false).await.unwrap();
    assert_eq!(
        s.push_mutes(alice).await.unwrap(),
        vec![(libera, b"#rust".to_vec())]
    );
    assert_eq!(
        s.push_mutes(bob).await.unwrap(),
        vec![(bobnet, b"#other".to_vec())]
    );
    assert!(matches!(
        s.set_push_muted(9999, b"#x", true).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn upgrade_to_push(kind: Kind, url: &str) {
    migrate_up_to(
        kind,
        url,
        7,
        &[
            "INSERT INTO users (name, password_hash, is_admin, created_at) \
             VALUES ('old', 'hash', FALSE, 1)",
            "INSERT INTO networks (user_id, name, addr, nick, created_at) \
             VALUES (1, 'libera', 'irc.example:6697', 'old', 1)",
        ],
    )
    .await;
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    let old = s.user_by_name("old").await.unwrap().expect("kept");
    let net = s.networks(old.id).await.unwrap();
    assert_eq!(net.len(), 1, "networks kept");
    assert_eq!(
        s.push_settings(old.id).await.unwrap(),
        PushSettings::default()
    );
    assert!(s
        .add_push_subscription(old.id, "https://push.example/x", "p", "a", false)
        .await
        .unwrap());
    s.set_push_muted(net[0].id, b"#a", true).await.unwrap();
    assert_eq!(s.vapid_key(|| "k".into()).await.unwrap(), "k");
    s.close().await;
}

#[tokio::test]
async fn push_upgrade_from_0007_sqlite() {
    on_empty_db(Kind::Sqlite, |url| async move {
        upgrade_to_push(Kind::Sqlite, &url).await
    })
    .await;
}

#[tokio::test]
async fn push_upgrade_from_0007_postgres() {
    on_empty_db(Kind::Postgres, |url| async move {
        upgrade_to_push(Kind::Postgres, &url).await
    })
    .await;
}
