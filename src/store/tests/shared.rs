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
    last_message_at_moves_in_steps,
    writer_waits_for_a_shared_lines_other_rows,
    writer_waits_for_a_confirmed_row_on_its_way,
    writer_cuts_a_full_batch_until_its_cap,
    writer_keeps_a_settled_lines_rows_together_across_a_cut,
    retention_collects_unused_audiences,
    targets_read_each_audience_without_a_sort,
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

/// The writer rewrites a buffer row only when it is new or its `last_message_at`
/// moves forward by a step; readers stay exact: TARGETS allows for the step, the
/// exact buffer list reads the newest line (per-user row or shared event).
async fn last_message_at_moves_in_steps(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let k = stream("#a");
    let at = |secs| t0() + Duration::seconds(secs);
    let stored = |key: &'static str| async move {
        let b = s.buffers(n).await.unwrap();
        b.into_iter()
            .find(|b| b.key == key.as_bytes())
            .unwrap()
            .last_message_at
    };
    let exact = |key: &'static str| async move {
        let b = s.buffers_exact(n).await.unwrap();
        b.into_iter()
            .find(|b| b.key == key.as_bytes())
            .unwrap()
            .last_message_at
    };
    let step = LAST_MESSAGE_AT_STEP_MS / 1000;

    s.insert_messages(&[msg(u, 1, n, "#a", 100, "x", "1")])
        .await
        .unwrap();
    assert_eq!(stored("#a").await, Some(at(100)));
    // Within a step: #a's row is not rewritten (its id is looked up), while the new
    // #b in the same batch is inserted.
    s.insert_messages(&[
        msg(u, 2, n, "#a", 130, "x", "2"),
        msg(u, 3, n, "#b", 131, "x", "3"),
    ])
    .await
    .unwrap();
    assert_eq!(stored("#a").await, Some(at(100)));
    assert_eq!(stored("#b").await, Some(at(131)));
    assert_eq!(exact("#a").await, Some(at(130)));
    assert_eq!(exact("#b").await, Some(at(131)));
    // TARGETS from just before the newest line still lists the buffer.
    assert_eq!(
        s.targets(u, n, at(129), at(1000), 10).await.unwrap(),
        vec![(b"#b".to_vec(), at(131)), (b"#a".to_vec(), at(130))]
    );
    // A shared event, still within the step of #a's stored time.
    s.insert_messages(&[on(&k, msg(u, 4, n, "#a", 150, "x", "4"))])
        .await
        .unwrap();
    assert_eq!(stored("#a").await, Some(at(100)));
    assert_eq!(exact("#a").await, Some(at(150)));
    assert_eq!(
        s.targets(u, n, at(149), at(1000), 10).await.unwrap(),
        vec![(b"#a".to_vec(), at(150))]
    );
    // A full step later the row is written; an older line never moves it back.
    s.insert_messages(&[msg(u, 5, n, "#a", 100 + step, "x", "5")])
        .await
        .unwrap();
    assert_eq!(stored("#a").await, Some(at(100 + step)));
    s.insert_messages(&[msg(u, 6, n, "#a", 50, "x", "6")])
        .await
        .unwrap();
    assert_eq!(stored("#a").await, Some(at(100 + step)));
    assert_eq!(exact("#a").await, Some(at(100 + step)));
    assert!(s
        .targets(u, n, at(100 + step + 1), at(10_000), 10)
        .await
        .unwrap()
        .is_empty());
    // A buffer created without lines (no time yet) takes its first line's time.
    s.set_channel(n, b"#c", b"#c", true, None).await.unwrap();
    assert_eq!(stored("#c").await, None);
    s.insert_messages(&[msg(u, 7, n, "#c", 200, "x", "7")])
        .await
        .unwrap();
    assert_eq!(stored("#c").await, Some(at(200)));
    // Every line went to its buffer, none twice.
    let lines = s.history(&in_buffer(u, n, "#a")).await.unwrap();
    assert_eq!(
        lines.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 4, 5, 6]
    );
    assert_eq!(s.history(&in_buffer(u, n, "#b")).await.unwrap().len(), 1);
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
    // One buffer in two audiences ({a, b} and {a}), read per audience.
    assert_eq!(
        seqs(&s.history(&in_buffer(a, na, "#chan")).await.unwrap()),
        [10, 11, 12, 13, 14, 15, 16]
    );
    let newest_in = HistoryQuery {
        newest_first: true,
        limit: 3,
        ..in_buffer(a, na, "#chan")
    };
    assert_eq!(seqs(&s.history(&newest_in).await.unwrap()), [16, 15, 14]);
    let window = HistoryQuery {
        after: Some(10),
        before: Some(15),
        from: Some(t0() + Duration::seconds(12)),
        ..in_buffer(a, na, "#chan")
    };
    assert_eq!(seqs(&s.history(&window).await.unwrap()), [12, 13, 14]);
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
        // The partial {a} the first batch wrote is gone with its member row once
        // no event refers to it: only {a, b} is left.
        assert_eq!(count(s, "audiences").await, 1, "{{a, b}}");
        assert_eq!(count(s, "audience_members").await, 2);
        // Retried batches: the same result.
        s.insert_messages(&second).await.unwrap();
        s.insert_messages(&first).await.unwrap();
    }
    assert_eq!(s.body_count().await.unwrap(), 2);

    // {a} again (interned anew: the cache forgot the deleted one), for a line only
    // alice got and one bob confirms later: widening the second leaves {a} in place,
    // since the first still refers to it.
    let only_a = [
        on(&k, msg(a, 22, na, "#chan", 3, "carol", "mine")),
        on(&k, msg(a, 23, na, "#chan", 4, "carol", "late")),
    ];
    s.insert_messages(&only_a).await.unwrap();
    s.insert_messages(&[on(&k, msg(b, 23, nb, "#chan", 4, "carol", "late"))])
        .await
        .unwrap();
    assert_eq!(count(s, "audiences").await, 2, "{{a}} and {{a, b}}");
    assert_eq!(count(s, "audience_members").await, 3);
    assert_eq!(
        seqs(&s.history(&hq(a, 100)).await.unwrap()),
        [20, 21, 22, 23]
    );
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [20, 21, 23]);
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
        seqs(&s.history(&in_buffer(c, nc, "#r")).await.unwrap()),
        [7, 8, 9, 10]
    );
    assert_eq!(
        seqs(&s.history(&in_buffer(a, na, "#r")).await.unwrap()),
        [8, 9, 10]
    );
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

/// Audiences that still have members but no events any more (membership churn in a
/// big channel leaves one per change) are deleted by the retention pass with their
/// member rows; ones the writer's cache holds are kept. A batch that would reuse a
/// cached id of an audience collected meanwhile (by another node, which does not
/// know this cache) fails and succeeds on retry: no event ever points at a deleted
/// audience.
async fn retention_collects_unused_audiences(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let k = stream("#r");
    let both = |i: i64, secs: i64| {
        [
            on(&k, msg(a, i, na, "#r", secs, "x", &format!("m{i}"))),
            on(&k, msg(b, i, nb, "#r", secs, "x", &format!("m{i}"))),
        ]
    };
    // {alice, bob} then {alice} (bob left): two audiences, three member rows.
    s.insert_messages(&both(1, 1)).await.unwrap();
    s.insert_messages(&[on(&k, msg(a, 2, na, "#r", 2, "x", "m2"))])
        .await
        .unwrap();
    assert_eq!(count(s, "audiences").await, 2);
    assert_eq!(count(s, "audience_members").await, 3);
    // Both keep a day; a day later every event is gone, the audiences are not.
    for u in [a, b] {
        s.set_retention(
            u,
            Retention {
                max_age_days: Some(1),
                max_messages: None,
            },
        )
        .await
        .unwrap();
    }
    let later = |secs| t0() + Duration::days(1) + Duration::seconds(secs);
    s.enforce_retention(later(10)).await.unwrap();
    assert_eq!(count(s, "events").await, 0);
    assert_eq!(
        count(s, "audiences").await,
        2,
        "the writer's cache holds both"
    );
    // Once the cache no longer holds them (it starts over, or a restart), they go.
    s.db.forget_shared();
    s.enforce_retention(later(10)).await.unwrap();
    assert_eq!(count(s, "audiences").await, 0);
    assert_eq!(count(s, "audience_members").await, 0);
    // New lines intern the audience again.
    s.insert_messages(&both(3, 20)).await.unwrap();
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [3]);

    // Its event goes; another node's retention pass (which does not know this
    // node's cache) collects the audience this node still has cached.
    s.enforce_retention(later(30)).await.unwrap();
    assert_eq!(count(s, "events").await, 0);
    assert_eq!(count(s, "audiences").await, 1, "cached here");
    let elsewhere = super::super::shared::SharedCache::default();
    let mut tx = s.db.begin().await.unwrap();
    let (gone, _) = super::super::shared::collect_audiences(&mut tx.conn(), &elsewhere, 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(gone, 1);
    // The next batch's stale cached id is caught; the retry interns the audience
    // afresh, as the writer's does.
    let batch = both(4, 40);
    let first = s.insert_messages(&batch).await;
    assert!(
        matches!(first, Err(StoreError::Raced(_))),
        "a stale audience id must not be used: {first:?}"
    );
    assert_eq!(
        count(s, "events").await,
        0,
        "the failed batch wrote nothing"
    );
    s.insert_messages(&batch).await.unwrap();
    let dangling: i64 =
        s.db.query(
            "SELECT COUNT(*) FROM events e \
             WHERE NOT EXISTS (SELECT 1 FROM audiences au WHERE au.id = e.audience_id)",
        )
        .fetch_scalar()
        .await
        .unwrap();
    assert_eq!(dangling, 0);
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [4]);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [4]);
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

/// PostgreSQL's plan of `q` (with `$1` = 1) when sequential scans are a last
/// resort: a scan left in it means no index serves the query.
async fn pg_plan(s: &Store, q: &str) -> String {
    let mut tx = s.db.begin().await.unwrap();
    tx.query("SET LOCAL enable_seqscan = off")
        .execute()
        .await
        .unwrap();
    let rows: Vec<String> = tx
        .query(format!("EXPLAIN {q}"))
        .bind(1i64)
        .fetch_column()
        .await
        .unwrap();
    rows.join("\n")
}

/// The shared-line reads go through indexes, never a scan of `events` or of
/// `audience_members` (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with
/// sequential scans disabled, since on an empty table it would scan anyway).
async fn shared_reads_use_indexes(t: Ctx) {
    let s = &t.store;
    // Some history, with statistics, so the plans are the ones of a used store.
    let mut who = Vec::new();
    for u in 0..4 {
        who.push(user_and_net(s, &format!("u{u}")).await);
    }
    let k = stream("#p");
    let mut batch = Vec::new();
    for i in 1..=500 {
        for (j, &(u, n)) in who.iter().enumerate() {
            // The last user leaves halfway: a second audience.
            if j < 3 || i < 250 {
                batch.push(on(&k, msg(u, i, n, "#p", i, "x", &format!("p{i}"))));
            }
            batch.push(msg(u, 1000 + i, n, "#own", i, "x", &format!("o{i}")));
        }
    }
    s.insert_messages(&batch).await.unwrap();
    if t.kind == Kind::Postgres {
        s.db.query("ANALYZE").execute().await.unwrap();
    }
    if t.kind == Kind::Postgres {
        for q in [
            "SELECT seq FROM shared_lines m WHERE m.buffer_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
                .to_owned(),
            "SELECT seq FROM shared_lines m WHERE m.user_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
                .to_owned(),
            "SELECT seq FROM shared_lines m WHERE m.body_id = $1".to_owned(),
            "SELECT seq FROM lines WHERE user_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET 5"
                .to_owned(),
            format!("SELECT {}", super::super::backlog::LAST_SEQ),
            super::super::users::buffers_exact_sql(),
        ] {
            let p = pg_plan(s, &q).await;
            if q.contains("newest_event") {
                assert!(!p.contains("Sort"), "{q}\n{p}");
            }
            assert!(!p.contains("Seq Scan on events"), "{q}\n{p}");
            if q.contains("m.seq > 5") {
                assert!(p.contains("audience_id = am.audience_id"), "{q}\n{p}");
            }
            assert!(!p.contains("Seq Scan on audience_members"), "{q}\n{p}");
            assert!(!p.contains("Seq Scan on messages"), "{q}\n{p}");
            eprintln!("{q}\n{p}\n");
        }
        return;
    }
    for q in [
        "SELECT seq FROM shared_lines m WHERE m.buffer_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
            .to_owned(),
        "SELECT seq FROM shared_lines m WHERE m.user_id = $1 AND m.seq > 5 ORDER BY seq LIMIT 10"
            .to_owned(),
        "SELECT seq FROM shared_lines m WHERE m.body_id = $1".to_owned(),
        "SELECT seq FROM lines WHERE user_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET 5".to_owned(),
        format!("SELECT {}", super::super::backlog::LAST_SEQ),
        super::super::users::buffers_exact_sql(),
        // The insert's look-up of the ids of buffers whose row it did not rewrite.
        "SELECT b.network_id, b.key, b.id FROM (VALUES ($1, 'a'), (1, 'b')) v \
         JOIN buffers b ON b.network_id = v.column1 AND b.key = v.column2"
            .to_owned(),
        // A buffer's page, per audience (`Store::shared_history_per_audience`): no sort.
        "SELECT m.id AS seq, b.network_id, bo.raw FROM events m JOIN buffers b ON b.id = $1 \
         JOIN bodies bo ON bo.id = m.body_id WHERE m.audience_id = 1 AND m.id >= 0 \
         AND m.id < 400 ORDER BY m.audience_id DESC, m.id DESC LIMIT 10"
            .to_owned(),
        // The insert's look-up of events stored already.
        "SELECT e.stream_id, e.id, e.audience_id FROM (VALUES ($1, 2), (1, 3)) v \
         JOIN events e ON e.stream_id = v.column1 AND e.id = v.column2"
            .to_owned(),
    ] {
        let p = plan(s, &q).await;
        if q.contains("newest_event") {
            assert!(!p.contains("TEMP B-TREE"), "{q}\n{p}");
        }
        if q.contains("m.audience_id = 1") {
            assert!(p.contains("events_audience"), "{q}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{q}\n{p}");
        }
        assert!(!p.contains("SCAN e"), "{q}\n{p}");
        assert!(!p.contains("SCAN am"), "{q}\n{p}");
        assert!(!p.contains("SCAN events"), "{q}\n{p}");
        assert!(!p.contains("SCAN messages"), "{q}\n{p}");
        eprintln!("{q}\n{p}\n");
    }
}

/// TARGETS reads a buffer's shared events per audience, each from the newest end
/// of `events_audience`, never sorting the buffer's shared lines (as reading the
/// `shared_lines` view would), and still finds the newest line across audiences.
async fn targets_read_each_audience_without_a_sort(t: Ctx) {
    let s = &t.store;
    let mut who = Vec::new();
    for u in 0..3 {
        who.push(user_and_net(s, &format!("u{u}")).await);
    }
    let k = stream("#p");
    let mut batch = Vec::new();
    for i in 1..=300 {
        for (j, &(u, n)) in who.iter().enumerate() {
            // The last user leaves at 100 and is back at 200: three audiences.
            if j < 2 || !(100..200).contains(&i) {
                batch.push(on(&k, msg(u, i, n, "#p", i, "x", &format!("p{i}"))));
            }
        }
    }
    s.insert_messages(&batch).await.unwrap();
    let (u0, n0) = who[0];
    let (u2, n2) = who[2];
    let at = |secs| t0() + Duration::seconds(secs);
    assert_eq!(
        s.targets(u0, n0, at(0), at(1000), 10).await.unwrap(),
        vec![(b"#p".to_vec(), at(300))]
    );
    // The newest of u2's lines before 150 is in its first audience.
    assert_eq!(
        s.targets(u2, n2, at(0), at(150), 10).await.unwrap(),
        vec![(b"#p".to_vec(), at(99))]
    );
    assert!(s
        .targets(u2, n2, at(120), at(180), 10)
        .await
        .unwrap()
        .is_empty());
    let q = super::super::backlog::TARGETS_SHARED
        .replace("$2", "1")
        .replace("$3", "0")
        .replace("$4", "9999999999999")
        .replace("$5", "0");
    // The check can tell: the newest line through the view is a sort.
    let view = "SELECT (SELECT m.seq FROM shared_lines m WHERE m.buffer_id = $1 \
                AND m.time >= 0 ORDER BY m.seq DESC LIMIT 1)";
    if t.kind == Kind::Postgres {
        s.db.query("ANALYZE").execute().await.unwrap();
        assert!(pg_plan(s, view).await.contains("Sort"));
        let p = pg_plan(s, &q).await;
        assert!(!p.contains("Sort"), "{q}\n{p}");
        assert!(p.contains("events_audience"), "{q}\n{p}");
        assert!(!p.contains("Seq Scan on events"), "{q}\n{p}");
    } else {
        assert!(plan(s, view).await.contains("TEMP B-TREE"));
        let p = plan(s, &q).await;
        assert!(!p.contains("TEMP B-TREE"), "{q}\n{p}");
        assert!(p.contains("events_audience"), "{q}\n{p}");
        assert!(!p.contains("SCAN e"), "{q}\n{p}");
    }
}

/// Bytes the store holds for `lines` shared lines each delivered to `users` users,
/// inserted as the writer would (each batch: every user's row of 10 lines), shared
/// (`true`: events) or per user (`false`: today's `messages` rows). SQLite: the
/// file's pages; PostgreSQL: tables with their indexes and TOAST.
async fn store_bytes(t: &Ctx, users: i64, lines: i64, shared: bool) -> i64 {
    let s = &t.store;
    let mut who = Vec::new();
    for u in 0..users {
        who.push(user_and_net(s, &format!("u{u}")).await);
    }
    // Buffers and users exist before measuring (they are not per delivery).
    s.insert_messages(
        &who.iter()
            .map(|&(u, n)| msg(u, 1, n, "#big", 0, "x", "hello"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let size = || async {
        match t.kind {
            Kind::Sqlite => {
                s.db.query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute()
                    .await
                    .unwrap();
                let pages: i64 =
                    s.db.query("PRAGMA page_count")
                        .fetch_scalar()
                        .await
                        .unwrap();
                let size: i64 = s.db.query("PRAGMA page_size").fetch_scalar().await.unwrap();
                pages * size
            }
            Kind::Postgres => {
                s.db.query("VACUUM ANALYZE").execute().await.unwrap();
                s.db.query(
                    "SELECT SUM(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
                     JOIN pg_namespace ns ON ns.oid = c.relnamespace \
                     WHERE ns.nspname = 'public' AND c.relkind IN ('r', 'm')",
                )
                .fetch_scalar()
                .await
                .unwrap()
            }
        }
    };
    let before = size().await;
    let started = std::time::Instant::now();
    let k = stream("#big");
    for chunk in (0..lines).collect::<Vec<i64>>().chunks(10) {
        let mut batch = Vec::new();
        for &i in chunk {
            for &(u, n) in &who {
                let mut m = msg(
                    u,
                    100 + i,
                    n,
                    "#big",
                    i,
                    "speaker",
                    &format!("line {i} of the channel"),
                );
                if shared {
                    m.stream = Some(k.clone());
                }
                batch.push(m);
            }
        }
        s.insert_messages(&batch).await.unwrap();
    }
    eprintln!(
        "INSERT {} shared={shared} users={users}: {:.1} µs per delivery (debug build)",
        if t.kind == Kind::Sqlite {
            "sqlite"
        } else {
            "postgres"
        },
        started.elapsed().as_secs_f64() * 1e6 / (users * lines) as f64
    );
    let after = size().await;
    if t.kind == Kind::Postgres {
        let rels: Vec<(String, i64)> =
            s.db.query(
                "SELECT c.relname::text, pg_total_relation_size(c.oid)::bigint FROM pg_class c \
                 JOIN pg_namespace ns ON ns.oid = c.relnamespace \
                 WHERE ns.nspname = 'public' AND c.relkind = 'r' \
                 ORDER BY 2 DESC LIMIT 8",
            )
            .fetch_all()
            .await
            .unwrap();
        eprintln!("RELATIONS shared={shared} users={users}: {rels:?}");
    }
    after - before
}

async fn report_bytes(kind: Kind, users: i64) {
    let lines = 300;
    let mut got = Vec::new();
    for shared in [false, true] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        run(kind, move |t| async move {
            let _ = tx.send(store_bytes(&t, users, lines, shared).await);
        })
        .await;
        got.push(rx.await.unwrap());
    }
    let per = |b: i64| b as f64 / (users * lines) as f64;
    eprintln!(
        "BYTES {} users={users} lines={lines}: per-user rows {} B ({:.1} B/delivery), \
         shared {} B ({:.2} B/delivery), ratio 1/{:.0}",
        if kind == Kind::Sqlite {
            "sqlite"
        } else {
            "postgres"
        },
        got[0],
        per(got[0]),
        got[1],
        per(got[1]),
        got[0] as f64 / got[1].max(1) as f64
    );
}

/// Store-level bytes per delivery, before (per-user rows) and after (shared events):
/// `cargo nextest run --run-ignored only --no-capture -E 'test(/bytes_per_delivery/)'`.
mod bytes_per_delivery {
    use super::*;

    #[tokio::test]
    #[ignore]
    async fn sqlite_300() {
        report_bytes(Kind::Sqlite, 300).await
    }
    #[tokio::test]
    #[ignore]
    async fn sqlite_1000() {
        report_bytes(Kind::Sqlite, 1000).await
    }
    #[tokio::test]
    #[ignore]
    async fn postgres_300() {
        report_bytes(Kind::Postgres, 300).await
    }
    #[tokio::test]
    #[ignore]
    async fn postgres_1000() {
        report_bytes(Kind::Postgres, 1000).await
    }
}

/// The writer's view of which events are settled, set by the test.
struct Bound(std::sync::atomic::AtomicI64);

impl Settle for Bound {
    fn settled_below(&self, _: &StreamKey) -> Seq {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A writer that commits within 5 ms, told that every stream is settled below `at`
/// (change it through the returned `Bound`).
fn writer_settled_below(
    s: &Store,
    at: Seq,
) -> (
    Writer,
    tokio::task::JoinHandle<()>,
    CancellationToken,
    Arc<Bound>,
) {
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_delay: std::time::Duration::from_millis(5),
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    let bound = Arc::new(Bound(std::sync::atomic::AtomicI64::new(at)));
    w.settle_with(bound.clone());
    (w, handle, shutdown, bound)
}

/// Waits until the writer committed `n` messages in all.
async fn committed(w: &Writer, n: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while w.stats().messages < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} messages not committed: {:?}",
            w.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A batch is cut before a shared line whose other rows may still come, so the line
/// is stored once with its whole audience (never a partial one widened later); what
/// is committed is always a prefix of what arrived; a flush commits everything.
async fn writer_waits_for_a_shared_lines_other_rows(t: Ctx) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let k = stream("#w");
    let (w, handle, shutdown, bound) = writer_settled_below(s, 20);
    let line = |u, n, seq, text| on(&k, msg(u, seq, n, "#w", seq, "carol", text));

    // 19 is settled, 20 is not: 19 is committed, 20 and alice's own line after it
    // wait (a prefix of what arrived is what the store shows).
    w.write(line(a, na, 19, "settled")).await.unwrap();
    w.write(line(a, na, 20, "pending")).await.unwrap();
    w.write(msg(a, 21, na, "bob", 21, "bob", "a query"))
        .await
        .unwrap();
    committed(&w, 1).await;
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [19]);
    assert_eq!(count(s, "events").await, 1);
    // Bob's row of 20 arrives and the line settles: one event, audience {a, b},
    // written once.
    w.write(line(b, nb, 20, "pending")).await.unwrap();
    bound.0.store(Seq::MAX, SeqCst);
    committed(&w, 4).await;
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [19, 20, 21]);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [20]);
    assert_eq!(count(s, "events").await, 2);
    assert_eq!(count(s, "audiences").await, 2, "{{a}} and {{a, b}}");
    assert_eq!(count(s, "audience_members").await, 3);

    // Nothing settled, but someone flushes: everything is committed at once.
    bound.0.store(0, SeqCst);
    w.write(line(a, na, 30, "flushed")).await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(
        seqs(&s.history(&hq(a, 100)).await.unwrap()),
        [19, 20, 21, 30]
    );
    // Held back with nothing else arriving: committed once it settles.
    w.write(line(b, nb, 31, "later")).await.unwrap();
    bound.0.store(Seq::MAX, SeqCst);
    committed(&w, 6).await;
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [20, 31]);
    shutdown.cancel();
    handle.await.unwrap();
}

/// The node's streams, counting how often the writer asks them.
struct Asked {
    streams: crate::user::Streams,
    asked: std::sync::atomic::AtomicU64,
}

impl Settle for Asked {
    fn settled_below(&self, key: &StreamKey) -> Seq {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.streams.settled_below(key)
    }
}

/// An event a connection confirmed waits for that connection's row even when every
/// cursor moved past it and it is older than the matching window: the row is on its
/// way (its actor has not queued it yet), and committing without it would store a
/// partial audience, widened by a later batch.
async fn writer_waits_for_a_confirmed_row_on_its_way(t: Ctx) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    // No age grace at all; lines with a msgid still match for a minute.
    let limits = crate::user::streams::Limits {
        window: std::time::Duration::ZERO,
        ..Default::default()
    };
    let clock = Arc::new(crate::user::SeqClock::new());
    let asked = Arc::new(Asked {
        streams: crate::user::Streams::with_limits("n1", clock, limits),
        asked: Default::default(),
    });
    let st = asked.streams.open("irc.example.org:6697", b"#w".to_vec());
    let k = st.key().clone();
    st.enter(na);
    st.enter(nb);
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_delay: std::time::Duration::from_millis(5),
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    w.settle_with(asked.clone());

    let raw = msg(a, 1, na, "#w", 1, "carol", "hi").raw;
    let (x, handing_a) = st.line(na, &raw, true, 0);
    let (y, handing_b) = st.line(nb, &raw, true, 0);
    assert_eq!(x, y, "one event");
    w.write(on(&k, msg(a, x, na, "#w", 1, "carol", "hi")))
        .await
        .unwrap();
    drop(handing_a);
    // The writer holds alice's row and asks again on its tick; bob's is not queued.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while asked.asked.load(SeqCst) < 3 && w.stats().messages == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(w.stats().messages, 0, "committed without bob's row");
    w.write(on(&k, msg(b, x, nb, "#w", 1, "carol", "hi")))
        .await
        .unwrap();
    drop(handing_b);
    committed(&w, 2).await;
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [x]);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [x]);
    assert_eq!(count(s, "events").await, 1);
    assert_eq!(count(s, "audiences").await, 1, "one audience, written once");
    assert_eq!(count(s, "audience_members").await, 2);
    assert_eq!(s.events_widened(), 0);
    shutdown.cancel();
    handle.await.unwrap();
}

/// A full batch is cut before an unsettled shared line too (it used to be committed
/// whole, its lines with partial audiences); rows keep arriving behind it until a
/// full batch and `hold` more are pending (not a full queue: `hold` is bigger here),
/// and then everything is committed, so the actors whose rows hold the line back can
/// queue them.
async fn writer_cuts_a_full_batch_until_its_cap(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let k = stream("#w");
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_batch: 4,
        queue: 4,
        hold: 8,
        max_delay: std::time::Duration::from_secs(1),
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    w.settle_with(Arc::new(Bound(std::sync::atomic::AtomicI64::new(20))));
    let line = |seq| on(&k, msg(a, seq, na, "#w", seq, "carol", "shared"));
    let own = |seq| msg(a, seq, na, "bob", seq, "bob", "a query");

    // 19 settled, 20 not; a full batch behind it.
    w.write_all(vec![line(19), line(20), own(21), own(22), own(23)])
        .await
        .unwrap();
    committed(&w, 1).await;
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [19]);
    // Twelve pending (a full batch and `hold` more): committed whole, in one batch
    // (at a full batch and a full queue, eight, it would have been two).
    w.write_all((24..=31).map(own).collect()).await.unwrap();
    committed(&w, 13).await;
    assert_eq!(
        seqs(&s.history(&hq(a, 100)).await.unwrap()),
        (19..=31).collect::<Vec<_>>()
    );
    assert_eq!(w.stats().batches, 2, "{:?}", w.stats());
    shutdown.cancel();
    handle.await.unwrap();
}

/// The cut is by position: rows of a settled line that came after the first
/// unsettled row join the batch with the line's other rows (one audience, written
/// once), unless their user has an earlier row left behind, whose history must not
/// show a later line before an earlier one.
async fn writer_keeps_a_settled_lines_rows_together_across_a_cut(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let (c, nc) = user_and_net(s, "carol").await;
    let k = stream("#w");
    let (w, handle, shutdown, bound) = writer_settled_below(s, 20);
    let line = |u, n, seq| on(&k, msg(u, seq, n, "#w", seq, "dave", &format!("l{seq}")));

    // 19 is settled, 20 is not: carol's row of 19 came after bob's of 20.
    w.write_all(vec![line(a, na, 19), line(b, nb, 20), line(c, nc, 19)])
        .await
        .unwrap();
    committed(&w, 2).await;
    assert_eq!(seqs(&s.history(&hq(c, 100)).await.unwrap()), [19]);
    assert!(s.history(&hq(b, 100)).await.unwrap().is_empty());
    assert_eq!(s.events_widened(), 0, "19 written once, with both rows");

    // 29 is settled too, but carol's row of it comes after a row of hers that waits
    // (behind bob's unsettled 30): it waits with it.
    bound.0.store(30, std::sync::atomic::Ordering::SeqCst);
    w.write_all(vec![
        line(a, na, 29),
        line(b, nb, 30),
        msg(c, 28, nc, "dave", 28, "dave", "a query"),
        line(c, nc, 29),
    ])
    .await
    .unwrap();
    committed(&w, 4).await;
    assert_eq!(seqs(&s.history(&hq(a, 100)).await.unwrap()), [19, 29]);
    assert_eq!(seqs(&s.history(&hq(c, 100)).await.unwrap()), [19]);
    bound.0.store(Seq::MAX, std::sync::atomic::Ordering::SeqCst);
    committed(&w, 7).await;
    assert_eq!(seqs(&s.history(&hq(c, 100)).await.unwrap()), [19, 28, 29]);
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), [20, 30]);
    // The price of carol's order: 29 written without her, then widened.
    assert_eq!(s.events_widened(), 1);
    shutdown.cancel();
    handle.await.unwrap();
}
