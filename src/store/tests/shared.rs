//! Shared channel lines stored once (migration 0018), on both backends: rows of one
//! (stream, seq) are one event, each user reads exactly their own lines, audiences
//! widen on late confirmations, and deletion keeps an event while anyone sees it.

use std::sync::Arc;

use super::*;

both!(
    shared_line_is_stored_once,
    late_confirmation_widens_the_audience,
    retention_keeps_shared_events_while_seen,
    removal_keeps_shared_events_while_seen,
    fenced_insert_drops_only_the_lost_confirmation,
    upgrade_keeps_messages_and_reads_both,
    shared_reads_use_indexes,
);

fn stream(channel: &str) -> Arc<StreamKey> {
    Arc::new(StreamKey {
        node: "n1".into(),
        server: "irc.example.org:6697".into(),
        channel: channel.as_bytes().to_vec(),
    })
}

/// `msg(...)` in `key`'s stream.
fn on(key: &Arc<StreamKey>, mut m: NewMessage) -> NewMessage {
    m.stream = Some(key.clone());
    m
}

async fn count(s: &Store, table: &str) -> i64 {
    s.db.query(format!("SELECT COUNT(*) FROM {table}"))
        .fetch_scalar()
        .await
        .unwrap()
}

fn in_buffer(user: UserId, network: NetworkId, key: &str) -> HistoryQuery {
    HistoryQuery {
        user,
        network: Some(network),
        buffer_key: Some(key.as_bytes().to_vec()),
        limit: 100,
        ..Default::default()
    }
}

/// Two users' rows of the same lines: one event each; every reader shows each user
/// exactly their own lines (a line only one of them got, their own per-user line).
async fn shared_line_is_stored_once(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let k = stream("#chan");
    let mut batch = Vec::new();
    for (seq, text) in [(10, "hello one"), (11, "hello two"), (12, "hello three")] {
        batch.push(on(&k, msg(a, seq, na, "#chan", seq, "carol", text)));
        batch.push(on(&k, msg(b, seq, nb, "#chan", seq, "carol", text)));
    }
    // Alice's own line (per user) and a line only alice's connection got.
    batch.push(msg(a, 13, na, "#chan", 13, "alice", "hello mine"));
    batch.push(on(&k, msg(a, 14, na, "#chan", 14, "carol", "hello secret")));
    // Two identical lines with different ids: two events.
    for seq in [15, 16] {
        let mut ma = on(&k, msg(a, seq, na, "#chan", 15, "carol", "again"));
        let mut mb = on(&k, msg(b, seq, nb, "#chan", 15, "carol", "again"));
        ma.msgid = None;
        mb.msgid = None;
        batch.push(ma);
        batch.push(mb);
    }
    s.insert_messages(&batch).await.unwrap();
    assert_eq!(count(s, "events").await, 6);
    assert_eq!(count(s, "messages").await, 1);
    assert_eq!(count(s, "audiences").await, 2, "{{a, b}} and {{a}}");
    assert_eq!(count(s, "audience_members").await, 3);
    assert_eq!(count(s, "streams").await, 1);
    assert_eq!(s.body_count().await.unwrap(), 6);

    let ha = s.history(&hq(a, 100)).await.unwrap();
    assert_eq!(seqs(&ha), [10, 11, 12, 13, 14, 15, 16]);
    assert_eq!(ha[0].text, "hello one");
    assert_eq!(ha[0].network_id, na);
    let hb = s.history(&hq(b, 100)).await.unwrap();
    assert_eq!(seqs(&hb), [10, 11, 12, 15, 16]);
    assert_eq!(hb[0].network_id, nb);
    assert_eq!(hb[3].raw, hb[4].raw);
    assert_eq!(
        seqs(&s.history(&in_buffer(b, nb, "#chan")).await.unwrap()),
        [10, 11, 12, 15, 16]
    );
    // Paging across both sources, both directions.
    let newest = HistoryQuery {
        newest_first: true,
        limit: 3,
        ..hq(a, 3)
    };
    assert_eq!(seqs(&s.history(&newest).await.unwrap()), [16, 15, 14]);
    let page = HistoryQuery {
        after: Some(11),
        limit: 3,
        ..hq(a, 3)
    };
    assert_eq!(seqs(&s.history(&page).await.unwrap()), [12, 13, 14]);
    let before = HistoryQuery {
        before: Some(13),
        newest_first: true,
        ..in_buffer(b, nb, "#chan")
    };
    assert_eq!(seqs(&s.history(&before).await.unwrap()), [12, 11, 10]);

    assert_eq!(
        seqs(&s.search(&sq(a, "hello")).await.unwrap()),
        [14, 13, 12, 11, 10]
    );
    assert_eq!(
        seqs(&s.search(&sq(b, "hello")).await.unwrap()),
        [12, 11, 10]
    );
    assert!(s.search(&sq(b, "secret")).await.unwrap().is_empty());
    assert!(s.search(&sq(b, "mine")).await.unwrap().is_empty());

    let far = t0() + Duration::days(1);
    let tb = s.targets(b, nb, t0(), far, 10).await.unwrap();
    assert_eq!(tb, [(b"#chan".to_vec(), t0() + Duration::seconds(15))]);
    let ta = s
        .targets(a, na, t0(), t0() + Duration::seconds(14), 10)
        .await
        .unwrap();
    assert_eq!(ta, [(b"#chan".to_vec(), t0() + Duration::seconds(14))]);
    let ta = s
        .targets(a, na, t0(), t0() + Duration::seconds(13), 10)
        .await
        .unwrap();
    assert_eq!(ta, [(b"#chan".to_vec(), t0() + Duration::seconds(13))]);

    let ub = s.unread_counts(b, nb, "bob").await.unwrap();
    assert_eq!(ub.len(), 1);
    assert_eq!((ub[0].unread, ub[0].chat), (5, 5));
    s.set_read_marker(na, b"#chan", 12).await.unwrap();
    let ua = s.unread_counts(a, na, "carol").await.unwrap();
    assert_eq!(ua[0].unread, 4, "13 (own), 14, 15, 16");
    assert_eq!(ua[0].chat, 1, "carol's own lines are not chat: alice's 13");

    assert_eq!(s.last_seq(a).await.unwrap(), 16);
    assert_eq!(s.last_seq(b).await.unwrap(), 16);
    assert_eq!(s.seq_base(b).await.unwrap(), 16);
}

/// A confirmation in a later batch widens the stored event's audience; retrying
/// either batch changes nothing, and never narrows it.
async fn late_confirmation_widens_the_audience(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let k = stream("#chan");
    let first = [on(&k, msg(a, 20, na, "#chan", 1, "carol", "early"))];
    let second = [
        on(&k, msg(b, 20, nb, "#chan", 1, "carol", "early")),
        on(&k, msg(a, 21, na, "#chan", 2, "carol", "next")),
        on(&k, msg(b, 21, nb, "#chan", 2, "carol", "next")),
    ];
    s.insert_messages(&first).await.unwrap();
    assert!(s.history(&hq(b, 100)).await.unwrap().is_empty());
    s.insert_messages(&second).await.unwrap();
    for _ in 0..2 {
        assert_eq!(count(s, "events").await, 2);
        assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [20, 21]);
        assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [20, 21]);
        assert_eq!(count(s, "audiences").await, 2, "{{a}} and {{a, b}}");
        assert_eq!(count(s, "audience_members").await, 3);
        // Retried batches: the same result.
        s.insert_messages(&second).await.unwrap();
        s.insert_messages(&first).await.unwrap();
    }
    assert_eq!(s.body_count().await.unwrap(), 2);
}

/// Three users share ten lines: retention by count and by age hides lines per user,
/// and deletes an event (and its body) only once no member shows it.
async fn retention_keeps_shared_events_while_seen(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let (c, nc) = user_and_net(s, "carol").await;
    let k = stream("#r");
    let batch: Vec<NewMessage> = (1..=10)
        .flat_map(|i| {
            [
                on(&k, msg(a, i, na, "#r", i, "x", &format!("m{i}"))),
                on(&k, msg(b, i, nb, "#r", i, "x", &format!("m{i}"))),
                on(&k, msg(c, i, nc, "#r", i, "x", &format!("m{i}"))),
            ]
        })
        .collect();
    s.insert_messages(&batch).await.unwrap();
    let keep = |n| Retention {
        max_age_days: None,
        max_messages: Some(n),
    };
    s.set_retention(a, keep(3)).await.unwrap();
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 7);
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [8, 9, 10]);
    assert_eq!(s.history(&hq(b, 100)).await.unwrap().len(), 10);
    assert_eq!(count(s, "events").await, 10);
    assert_eq!(s.body_count().await.unwrap(), 10);
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 0, "idempotent");
    // Alice's newest id stays what new ids must be above.
    assert_eq!(s.last_seq(a).await.unwrap(), 10);

    s.set_retention(b, keep(5)).await.unwrap();
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 5);
    assert_eq!(
        seqs(&s.history(&hq(b, 100)).await.unwrap()),
        [6, 7, 8, 9, 10]
    );
    assert_eq!(count(s, "events").await, 10, "carol sees them all");

    // By age: carol keeps a day; it is now a day and 7 s after the first line.
    s.set_retention(
        c,
        Retention {
            max_age_days: Some(1),
            max_messages: None,
        },
    )
    .await
    .unwrap();
    let now = t0() + Duration::days(1) + Duration::seconds(7);
    assert_eq!(s.enforce_retention(now).await.unwrap(), 6);
    assert_eq!(seqs(&s.history(&hq(c, 100)).await.unwrap()), [7, 8, 9, 10]);
    assert_eq!(
        seqs(&s.history(&hq(b, 100)).await.unwrap()),
        [6, 7, 8, 9, 10]
    );
    assert_eq!(count(s, "events").await, 5, "1..5 seen by nobody");
    assert_eq!(s.body_count().await.unwrap(), 5);
    assert_eq!(seqs(&s.search(&sq(b, "m6")).await.unwrap()), [6]);
    assert!(s.search(&sq(c, "m6")).await.unwrap().is_empty());
    // New lines after retention are seen again.
    s.insert_messages(&[
        on(&k, msg(a, 11, na, "#r", 11, "x", "m11")),
        on(&k, msg(c, 11, nc, "#r", 11, "x", "m11")),
    ])
    .await
    .unwrap();
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [8, 9, 10, 11]);
}

/// Network and user removal delete a shared event once its last member is gone, and
/// its body only then; a buffer created afterwards sees none of the old lines.
async fn removal_keeps_shared_events_while_seen(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let k = stream("#r");
    let mut batch: Vec<NewMessage> = (1..=3)
        .flat_map(|i| {
            [
                on(&k, msg(a, i, na, "#r", i, "x", &format!("m{i}"))),
                on(&k, msg(b, i, nb, "#r", i, "x", &format!("m{i}"))),
            ]
        })
        .collect();
    batch.push(on(&k, msg(a, 4, na, "#r", 4, "x", "only alice")));
    s.insert_messages(&batch).await.unwrap();
    s.delete_network(na).await.unwrap();
    assert_eq!(count(s, "events").await, 3);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [1, 2, 3]);
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 0);
    assert_eq!(
        s.body_count().await.unwrap(),
        3,
        "only alice's line's body is gone"
    );

    // A new user's buffer (SQLite may reuse the deleted buffer's id) joins the stream.
    let (c, nc) = user_and_net(s, "carol").await;
    s.insert_messages(&[
        on(&k, msg(b, 5, nb, "#r", 5, "x", "m5")),
        on(&k, msg(c, 5, nc, "#r", 5, "x", "m5")),
    ])
    .await
    .unwrap();
    assert_eq!(seqs(&s.history(&hq(c, 100)).await.unwrap()), [5]);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [1, 2, 3, 5]);

    s.delete_user(b).await.unwrap();
    assert_eq!(count(s, "events").await, 1, "carol still sees 5");
    s.enforce_retention(t0()).await.unwrap();
    assert_eq!(s.body_count().await.unwrap(), 1);
    s.delete_user(c).await.unwrap();
    assert_eq!(count(s, "events").await, 0);
    assert_eq!(count(s, "audiences").await, 0);
    assert_eq!(count(s, "audience_members").await, 0);
    s.enforce_retention(t0()).await.unwrap();
    assert_eq!(s.body_count().await.unwrap(), 0);
}

/// A fenced batch drops the confirmation of a user whose owner changed, and keeps
/// the others' rows of the same event.
async fn fenced_insert_drops_only_the_lost_confirmation(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let ea = s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let eb = s.assign_user(b, Some("n1"), 0).await.unwrap().unwrap();
    s.assign_user(b, Some("n2"), eb).await.unwrap().unwrap();
    let k = stream("#c");
    let with = |mut m: NewMessage, e| {
        m.epoch = e;
        m
    };
    let lost = s
        .insert_messages_fenced(
            "n1",
            &[
                with(on(&k, msg(a, 30, na, "#c", 1, "x", "line")), ea),
                with(on(&k, msg(b, 30, nb, "#c", 1, "x", "line")), eb),
            ],
        )
        .await
        .unwrap();
    assert_eq!(lost, [b]);
    assert_eq!(count(s, "events").await, 1);
    assert_eq!(count(s, "audience_members").await, 1);
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [30]);
    assert!(s.history(&hq(b, 100)).await.unwrap().is_empty());
    assert_eq!(s.last_seq(b).await.unwrap(), 0);
}

/// A store written by schema 0017 (every line a row of `messages`) upgraded to 0018:
/// every message keeps its id, order and content, and reads merge with new shared
/// lines.
async fn upgrade_keeps_messages_and_reads_both(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let old: Vec<NewMessage> = (1..=6)
        .flat_map(|i| {
            [
                msg(
                    a,
                    i * 2,
                    na,
                    if i % 2 == 0 { "#x" } else { "#y" },
                    i,
                    "x",
                    &format!("old{i}"),
                ),
                msg(b, i, nb, "#x", i, "x", &format!("old{i}")),
            ]
        })
        .collect();
    s.insert_messages(&old).await.unwrap();
    let before_a = s.history(&hq(a, 100)).await.unwrap();
    let before_b = s.history(&hq(b, 100)).await.unwrap();
    let key = s.secret_key().unwrap().clone();
    s.close().await;
    t.run_raw(&[
        "DROP VIEW lines",
        "DROP VIEW shared_lines",
        "DROP TABLE events",
        "DROP TABLE audience_members",
        "DROP TABLE audiences",
        "DROP TABLE streams",
        "ALTER TABLE buffers DROP COLUMN shared_from",
        "DELETE FROM _sqlx_migrations WHERE version = 18",
    ])
    .await;
    let s = Store::open(&t.url).await.unwrap().with_secret_key(key);
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    assert_eq!(s.history(&hq(a, 100)).await.unwrap(), before_a);
    assert_eq!(s.history(&hq(b, 100)).await.unwrap(), before_b);
    assert_eq!(seqs(&before_a), [2, 4, 6, 8, 10, 12]);
    assert_eq!(s.last_seq(a).await.unwrap(), 12);
    let k = stream("#x");
    s.insert_messages(&[
        on(&k, msg(a, 13, na, "#x", 13, "x", "new shared")),
        on(&k, msg(b, 13, nb, "#x", 13, "x", "new shared")),
    ])
    .await
    .unwrap();
    assert_eq!(
        seqs(&s.history(&in_buffer(a, na, "#x")).await.unwrap()),
        [4, 8, 12, 13]
    );
    assert_eq!(
        seqs(&s.history(&hq(b, 100)).await.unwrap()),
        [1, 2, 3, 4, 5, 6, 13]
    );
    assert_eq!(seqs(&s.search(&sq(b, "shared")).await.unwrap()), [13]);
    assert_eq!(s.last_seq(b).await.unwrap(), 13);
    s.close().await;
}

async fn plan(s: &Store, q: &str) -> String {
    let rows: Vec<(i64, i64, i64, String)> =
        s.db.query(format!("EXPLAIN QUERY PLAN {q}"))
            .bind(1i64)
            .fetch_all()
            .await
            .unwrap();
    rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
}

/// The shared-line reads go through indexes, never a scan of `events` or of
/// `audience_members` (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's plans depend on
/// statistics and are in docs/benchmarks.md).
async fn shared_reads_use_indexes(t: Ctx) {
    if t.kind != Kind::Sqlite {
        return;
    }
    let s = &t.store;
    for q in [
        "SELECT seq FROM shared_lines m WHERE m.buffer_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
            .to_owned(),
        "SELECT seq FROM shared_lines m WHERE m.user_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
            .to_owned(),
        "SELECT seq FROM shared_lines m WHERE m.body_id = $1".to_owned(),
        "SELECT seq FROM lines WHERE user_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET 5".to_owned(),
        format!("SELECT {}", super::super::backlog::LAST_SEQ),
    ] {
        let p = plan(s, &q).await;
        assert!(!p.contains("SCAN e"), "{q}\n{p}");
        assert!(!p.contains("SCAN am"), "{q}\n{p}");
        assert!(!p.contains("SCAN events"), "{q}\n{p}");
        assert!(!p.contains("SCAN messages"), "{q}\n{p}");
        eprintln!("{q}\n{p}\n");
    }
}
