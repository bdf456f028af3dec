//! The in-place upgrade with many users at once: the new process resumes parked users
//! side by side (a start guard per user, their rows read in one go), so this checks
//! that doing so loses, duplicates or disturbs nothing, for every user.

use std::time::{Duration, Instant};

use ferry::store::Store;

use super::cluster::{create_users, wait_exactly_once, CHAN};
use super::fixtures::ferry::{Backend, TestDb};
use super::fixtures::ircd::{InspOpts, Ircd};
use super::upgrade::{
    assert_each_once, attach_raw, channel_backlog, count, healthz_version, old_process_exits,
    read_until, start_talker, start_watched_with, talker_in_chan, upgrade_while_talking, wait_said,
    NEW,
};

/// Users, each with one plaintext network in [`CHAN`] and one raw IRC client attached.
const USERS: usize = 50;
/// Numbered lines a talker says in the channel, one every [`PACE`], around the upgrade.
const LINES: usize = 150;
const PACE: Duration = Duration::from_millis(40);

/// 50 users, each with an attached raw IRC client, while a talker says numbered
/// lines throughout `ferry upgrade`: every upstream and client moves (none
/// reconnects), all 50 users are resumed, the channel sees no QUIT/PART/JOIN of any
/// of them, every client keeps its socket and gets every line exactly once with
/// nothing said again (no welcome, no burst), every user's store has every line
/// once, and each client's position (carried, not saved at the barrier) is saved by
/// the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_resume_in_parallel_without_anyone_noticing() {
    many_users_move(&[]).await;
}

/// The same, the users moving in batches of 10 (`FERRY_UPGRADE_BATCH`): while the
/// channel's users are split between the two processes both give its lines ids, and
/// still every line is stored once for every user (the new process's id clock starts
/// above the old one's: before, a line of one process and another of the other
/// became one event and a line was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_move_in_batches_without_anyone_noticing() {
    many_users_move(&[(ferry::upgrade::BATCH_ENV, "10")]).await;
}

async fn many_users_move(env: &[(&str, &str)]) {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let users = create_users(&store, &ircd, USERS).await;
    let (mut node, mut w) = start_watched_with(
        &db,
        dir.path(),
        &ircd,
        &users,
        Duration::from_secs(120),
        env,
    )
    .await;
    let mut clients = Vec::new();
    for (_, name) in &users {
        clients.push(attach_raw(&node.irc, name).await);
    }
    let mark = w.transcript().len();
    let t = talker_in_chan(&ircd).await;
    let (said, talker) = start_talker(t, LINES, PACE);
    wait_said(&said, 10).await;
    let (report, said_at_upgrade, _kill) =
        upgrade_while_talking(&node, dir.path(), &said, LINES, &format!("{USERS} users")).await;
    assert_eq!(report["moved"]["upstream"], USERS, "{report}");
    assert_eq!(report["moved"]["irc_client"], USERS, "{report}");
    assert_eq!(report["reconnected"]["upstream"], 0, "{report}");
    assert_eq!(report["reconnected"]["clients"], 0, "{report}");
    old_process_exits(&mut node).await;
    // The new process resumed every parked user, batch by batch (its summary line
    // says how many).
    let log = node.log();
    let summary = log
        .lines()
        .rfind(|l| l.contains("upgrade: every batch resumed"))
        .unwrap_or_else(|| panic!("no resume summary in the log:\n{log}"));
    assert!(
        summary.contains(&format!("users={USERS} ")),
        "not every user resumed: {summary}"
    );
    assert_eq!(healthz_version(&node.http).await, NEW);
    talker.await.unwrap();
    let last = format!("n {LINES}");
    // Every client kept its socket, got every line once and was told nothing again.
    for (c, (_, name)) in clients.iter_mut().zip(&users) {
        let seen = read_until(c, &last).await;
        for i in 1..=LINES {
            let t = format!("n {i}");
            let n = seen
                .iter()
                .filter(|l| l.is("PRIVMSG") && l.last_str() == t)
                .count();
            assert_eq!(
                n,
                1,
                "{name}'s client got {t:?} {n} times: {}",
                c.transcript()
            );
        }
        let again: Vec<String> = seen
            .iter()
            .filter(|l| {
                l.is("001") || l.is("ERROR") || l.is("353") || (l.is("JOIN") && l.nick() == *name)
            })
            .map(|l| l.raw_str())
            .collect();
        assert!(
            again.is_empty(),
            "{name}'s client was told again: {again:?}"
        );
    }
    // Each moved client still speaks through the new process.
    for (c, (_, name)) in clients.iter_mut().zip(&users) {
        c.send(format!("PRIVMSG {CHAN} :from {name}")).await;
    }
    let mut waiting: std::collections::BTreeSet<String> =
        users.iter().map(|(_, n)| n.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.recv_timeout(left).await {
            Ok(Some(l)) if l.is("PRIVMSG") && l.last_str() == format!("from {}", l.nick()) => {
                waiting.remove(&l.nick());
            }
            Ok(Some(_)) => {}
            _ => panic!(
                "the moved clients of {waiting:?} said nothing: {}",
                w.transcript()
            ),
        }
    }
    // Nobody left or came back: every user is in the channel exactly once, and the
    // channel saw no QUIT/PART/JOIN of any of them.
    wait_exactly_once(&mut w, &users, Duration::from_secs(30)).await;
    let watched = &w.transcript()[mark..];
    let noticed: Vec<&str> = watched
        .lines()
        .filter(|l| {
            users.iter().any(|(_, n)| l.contains(&format!(":{n}!")))
                && [" QUIT", " JOIN ", " PART "].iter().any(|c| l.contains(c))
        })
        .collect();
    assert!(noticed.is_empty(), "the channel noticed: {noticed:?}");
    // Every user's store has every line once, and its client's position is saved up
    // to at least the last line (the new process saves the carried position).
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, name) in &users {
        let backlog = loop {
            let b = channel_backlog(&store, *id).await;
            if count(&b, &last) > 0 {
                break b;
            }
            assert!(Instant::now() < deadline, "{name}: {last:?} never stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_each_once(&backlog, "n", LINES);
        let before = backlog
            .iter()
            .find(|m| m.text == format!("n {said_at_upgrade}"))
            .map(|m| m.seq)
            .unwrap();
        let network = store.networks(*id).await.unwrap()[0].id;
        loop {
            let saved = store.client_position(network, "default").await.unwrap();
            if saved.is_some_and(|s| s >= before) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s client position is {saved:?}, not at line {said_at_upgrade} ({before})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
