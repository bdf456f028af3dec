//! Store tests of invite links (migration 0010), on both backends, and the upgrade of
//! a store made before them.

use super::*;

both!(invites_are_used_once, invites_race_one_winner);

async fn invites_are_used_once(t: Ctx) {
    let s = &t.store;
    let now = Utc::now();
    let token = [7u8; 32];
    s.create_invite(&token, true, now, now + Duration::hours(1))
        .await
        .unwrap();
    let inv = s.invite(&token).await.unwrap().expect("stored");
    assert!(inv.admin && inv.usable(now) && inv.used_at.is_none());
    assert!(s.invite(&[8u8; 32]).await.unwrap().is_none());

    // A taken name rolls back: the invite stays open.
    s.create_user("taken", "h", false).await.unwrap();
    assert!(matches!(
        s.redeem_invite(&token, now, "taken", "h").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.invite(&token).await.unwrap().unwrap().usable(now));

    let user = s
        .redeem_invite(&token, now, "newbie", "hash")
        .await
        .unwrap()
        .expect("first use");
    assert!(user.is_admin, "the invite's admin flag");
    assert_eq!(s.user_by_name("newbie").await.unwrap().unwrap().id, user.id);
    let inv = s.invite(&token).await.unwrap().unwrap();
    assert_eq!(inv.used_by.as_deref(), Some("newbie"));
    assert!(!inv.usable(now));
    assert!(s
        .redeem_invite(&token, now, "second", "hash")
        .await
        .unwrap()
        .is_none());
    assert!(s.user_by_name("second").await.unwrap().is_none());

    // Expired: refused, and cleaned up.
    let old = [9u8; 32];
    s.create_invite(
        &old,
        false,
        now - Duration::hours(2),
        now - Duration::hours(1),
    )
    .await
    .unwrap();
    assert!(!s.invite(&old).await.unwrap().unwrap().usable(now));
    assert!(s
        .redeem_invite(&old, now, "late", "hash")
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.delete_expired_invites(now).await.unwrap(), 1);
    assert!(s.invite(&old).await.unwrap().is_none());
}

async fn invites_race_one_winner(t: Ctx) {
    let s = &t.store;
    let now = Utc::now();
    let token = [1u8; 32];
    s.create_invite(&token, false, now, now + Duration::hours(1))
        .await
        .unwrap();
    let racers = (0..8).map(|i| {
        let s = s.clone();
        async move {
            s.redeem_invite(&token, now, &format!("racer{i}"), "h")
                .await
        }
    });
    let results = futures::future::join_all(racers).await;
    let won: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.expect("no error"))
        .collect();
    assert_eq!(won.len(), 1, "exactly one sign-up wins");
    let users: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .filter(|n| n.starts_with("racer"))
        .collect();
    assert_eq!(users, vec![won[0].name.clone()]);
}

async fn upgrade_to_invites(kind: Kind, url: &str) {
    migrate_up_to(
        kind,
        url,
        9,
        &[
            "INSERT INTO users (name, password_hash, is_admin, created_at) \
             VALUES ('old', 'hash', FALSE, 1)",
        ],
    )
    .await;
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    assert!(s.user_by_name("old").await.unwrap().is_some(), "users kept");
    let now = Utc::now();
    s.create_invite(&[3u8; 32], false, now, now + Duration::hours(1))
        .await
        .unwrap();
    let u = s.redeem_invite(&[3u8; 32], now, "new", "h").await.unwrap();
    assert!(u.is_some_and(|u| !u.is_admin));
    s.close().await;
}

#[tokio::test]
async fn invites_upgrade_from_0009_sqlite() {
    on_empty_db(Kind::Sqlite, |url| async move {
        upgrade_to_invites(Kind::Sqlite, &url).await
    })
    .await;
}

#[tokio::test]
async fn invites_upgrade_from_0009_postgres() {
    on_empty_db(Kind::Postgres, |url| async move {
        upgrade_to_invites(Kind::Postgres, &url).await
    })
    .await;
}
