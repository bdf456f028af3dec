//! The upgrade to migration 0016 (fewer B-trees per message), on both backends: a
//! store written by schema 0015 keeps every message and its id, and reads them
//! through the new keys.

use sqlx::Connection;

use super::*;

/// The names of the indexes on `messages` (SQLite's automatic ones included).
async fn message_indexes(kind: Kind, url: &str) -> Vec<String> {
    let q = match kind {
        Kind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' \
             ORDER BY name"
        }
        Kind::Postgres => {
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'messages' \
             ORDER BY indexname"
        }
    };
    match kind {
        Kind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let v = sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap();
            c.close().await.unwrap();
            v
        }
        Kind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let v = sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap();
            c.close().await.unwrap();
            v
        }
    }
}

/// Schema 0015's rows: users `old` (two networks: `#a` and `#b` on `one`, `#c` on
/// `two`) and `other` (one network, the same seqs), bodies shared between them.
fn old_rows(kind: Kind) -> Vec<String> {
    let blob = |s: &str| match kind {
        Kind::Sqlite => format!("CAST('{s}' AS BLOB)"),
        Kind::Postgres => format!("convert_to('{s}', 'UTF8')"),
    };
    let fals = match kind {
        Kind::Sqlite => "0",
        Kind::Postgres => "FALSE",
    };
    let t = to_ms(t0());
    let mut q = vec![
        format!(
            "INSERT INTO users (name, password_hash, is_admin, created_at) VALUES \
             ('old', 'h', {fals}, 1), ('other', 'h', {fals}, 1)"
        ),
        "INSERT INTO networks (user_id, name, addr, nick, created_at) \
         SELECT id, 'one', 'irc.example.org:6697', 'n', 1 FROM users"
            .to_owned(),
        "INSERT INTO networks (user_id, name, addr, nick, created_at) \
         SELECT id, 'two', 'irc.example.org:6697', 'n', 1 FROM users WHERE name = 'old'"
            .to_owned(),
    ];
    for (net, buf) in [("one", "#a"), ("one", "#b"), ("two", "#c")] {
        q.push(format!(
            "INSERT INTO buffers (network_id, key, name, kind, last_message_at) \
             SELECT id, {b}, {b}, 'channel', {t} FROM networks WHERE name = '{net}'",
            b = blob(buf)
        ));
    }
    for word in ["alpha", "beta", "gamma"] {
        q.push(format!(
            "INSERT INTO bodies (hash, raw, text) VALUES ({h}, {r}, '{word} line')",
            h = blob(&format!("hash-of-{word}")),
            r = blob(&format!("PRIVMSG #x :{word} line")),
        ));
    }
    // seq, network, buffer, body word: both users get seqs 1..=4 in `one`; `old` also
    // gets 5 and 6 in `two`.
    let lines = [
        (1, "one", "#a", "alpha"),
        (2, "one", "#b", "beta"),
        (3, "one", "#a", "gamma"),
        (4, "one", "#b", "alpha"),
        (5, "two", "#c", "beta"),
        (6, "two", "#c", "alpha"),
    ];
    for (seq, net, buf, word) in lines {
        let users = if net == "one" {
            "('old', 'other')"
        } else {
            "('old')"
        };
        q.push(format!(
            "INSERT INTO messages (user_id, seq, network_id, buffer_id, time, sender, command, \
             msgid, body_id, epoch) \
             SELECT u.id, {seq}, n.id, b.id, {time}, 'nick{seq}', 'PRIVMSG', 'id{seq}', bo.id, 7 \
             FROM users u JOIN networks n ON n.user_id = u.id AND n.name = '{net}' \
             JOIN buffers b ON b.network_id = n.id AND b.key = {key} \
             JOIN bodies bo ON bo.text = '{word} line' WHERE u.name IN {users}",
            time = t + seq * 1000,
            key = blob(buf),
        ));
    }
    q
}

async fn upgrade_to_message_indexes(kind: Kind, url: &str) {
    let rows = old_rows(kind);
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    migrate_up_to(kind, url, 15, &rows).await;
    let before = message_indexes(kind, url).await;
    assert!(
        before.iter().any(|i| i == "messages_user_time"),
        "{before:?}"
    );

    let s = Store::open(url).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    let after = message_indexes(kind, url).await;
    for gone in ["messages_network_seq", "messages_user_time"] {
        assert!(!after.iter().any(|i| i == gone), "{gone} left: {after:?}");
    }
    assert!(after.iter().any(|i| i == "messages_body"), "{after:?}");

    let old = s.user_by_name("old").await.unwrap().unwrap().id;
    let other = s.user_by_name("other").await.unwrap().unwrap().id;
    let nets = s.networks(old).await.unwrap();
    let one = nets.iter().find(|n| n.name == "one").unwrap().id;
    let two = nets.iter().find(|n| n.name == "two").unwrap().id;
    let page = |user, network, key: Option<&str>| HistoryQuery {
        user,
        network,
        buffer_key: key.map(|k| k.as_bytes().to_vec()),
        limit: 100,
        ..HistoryQuery::default()
    };
    let seqs = |rows: Vec<StoredMessage>| rows.iter().map(|m| m.seq).collect::<Vec<_>>();

    // Every message kept, with its id, time, sender, network and body.
    let all = s.history(&page(old, None, None)).await.unwrap();
    assert_eq!(seqs(all.clone()), vec![1, 2, 3, 4, 5, 6]);
    let words = ["alpha", "beta", "gamma", "alpha", "beta", "alpha"];
    for (m, w) in all.iter().zip(words) {
        assert_eq!(m.text, format!("{w} line"));
        assert_eq!(m.time, t0() + Duration::seconds(m.seq));
        assert_eq!(m.sender, format!("nick{}", m.seq));
        assert_eq!(m.msgid.as_deref(), Some(&*format!("id{}", m.seq)));
        assert_eq!(m.network_id, if m.seq <= 4 { one } else { two });
    }
    let theirs = s.history(&page(other, None, None)).await.unwrap();
    assert_eq!(seqs(theirs), vec![1, 2, 3, 4]);
    assert_eq!(s.last_seq(old).await.unwrap(), 6);
    assert_eq!(s.last_seq(other).await.unwrap(), 4);

    // Through the new keys: a buffer, a network, search, targets.
    let a = s.history(&page(old, Some(one), Some("#a"))).await.unwrap();
    assert_eq!(seqs(a), vec![1, 3]);
    let net_two = s.history(&page(old, Some(two), None)).await.unwrap();
    assert_eq!(seqs(net_two), vec![5, 6]);
    let found = s
        .search(&SearchQuery {
            user: old,
            text: "alpha".into(),
            limit: 10,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(seqs(found), vec![6, 4, 1]);
    let targets = s
        .targets(old, one, t0(), t0() + Duration::seconds(100), 10)
        .await
        .unwrap();
    assert_eq!(
        targets,
        vec![
            (b"#b".to_vec(), t0() + Duration::seconds(4)),
            (b"#a".to_vec(), t0() + Duration::seconds(3)),
        ]
    );

    // New lines are stored after the old ones; a seq already used is still refused
    // (one id per user), whatever the buffer.
    s.insert_messages(&[
        msg(old, 7, one, "#a", 7, "nick7", "delta line"),
        msg(old, 3, two, "#c", 50, "intruder", "not stored"),
    ])
    .await
    .unwrap();
    let all = s.history(&page(old, None, None)).await.unwrap();
    assert_eq!(seqs(all.clone()), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(all[2].text, "gamma line");
    assert_eq!(all[6].text, "delta line");
    s.close().await;
}

#[tokio::test]
async fn message_indexes_upgrade_from_0015_sqlite() {
    on_empty_db(Kind::Sqlite, |url| async move {
        upgrade_to_message_indexes(Kind::Sqlite, &url).await
    })
    .await;
}

#[tokio::test]
async fn message_indexes_upgrade_from_0015_postgres() {
    on_empty_db(Kind::Postgres, |url| async move {
        upgrade_to_message_indexes(Kind::Postgres, &url).await
    })
    .await;
}
