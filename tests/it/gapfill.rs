//! Gap fill against a history server that answers as Ergo does (`HistoryServer`):
//! `draft/event-playback` is asked for where offered and the window's events are
//! stored as themselves; without it, HistServ's stand-ins are never stored as
//! conversation; a line already stored (it arrived live at the window's edge, or an
//! earlier overlapping fill stored it) is not stored again, by msgid or, without
//! msgids, by time and bytes; two identical lines said twice stay two lines.
//!
//! The window is given to the actor as a migration's adopt gives it
//! (`UserHandle::gap_marker(text, from, to)`), so its bounds are exact.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry::admin::NetworkSpec;
use ferry::store::{HistoryQuery, StoredMessage, UserId};
use ferry::user::UserHandle;

use crate::fixtures::client::{Line, TestClient};
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::history::{Delivery, HistoryOpts, HistoryServer, ItemKind};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::fixtures::relay::TcpRelay;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Alice on Ferry, connected to `server` and in `#c`.
async fn alice_on(server: &HistoryServer, backend: Backend) -> (Ferry, UserId, UserHandle) {
    alice_in(server, backend, &["#c"]).await
}

/// Alice on Ferry, connected to `server` and in `chans`.
async fn alice_in(
    server: &HistoryServer,
    backend: Backend,
    chans: &[&str],
) -> (Ferry, UserId, UserHandle) {
    let ferry = Ferry::start(backend).await;
    let user = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            user,
            NetworkSpec {
                name: "hist".into(),
                addr: server.addr(),
                nick: "alice".into(),
                channels: chans.iter().map(|c| c.to_string()).collect(),
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(user, "hist", chans.len()).await;
    for chan in chans {
        server.wait_joined(chan, "alice").await;
    }
    let handle = ferry.services().users.get(user).expect("alice runs");
    (ferry, user, handle)
}

/// Alice's buffer `buf`, oldest first.
async fn stored_in(ferry: &Ferry, user: UserId, buf: &str) -> Vec<StoredMessage> {
    ferry
        .store()
        .history(&HistoryQuery {
            user,
            buffer_key: Some(buf.as_bytes().to_vec()),
            limit: 1000,
            ..HistoryQuery::default()
        })
        .await
        .unwrap()
}

/// Waits until a PRIVMSG `text` is stored in `#c`, then returns the buffer. Fill
/// records are queued in the answer's order and committed in queue order, so once
/// the answer's last line is there, everything the fill stored before it is too.
async fn wait_stored(ferry: &Ferry, user: UserId, text: &str) -> Vec<StoredMessage> {
    wait_stored_in(ferry, user, "#c", text).await
}

/// [`wait_stored`] in buffer `buf`.
async fn wait_stored_in(ferry: &Ferry, user: UserId, buf: &str, text: &str) -> Vec<StoredMessage> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let lines = stored_in(ferry, user, buf).await;
        if lines
            .iter()
            .any(|m| m.command == "PRIVMSG" && m.text == text)
        {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} never stored: {lines:#?}"
        );
        // Polling the store: the fill has no other outside sign of being done.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now, in whole milliseconds (what server-time and the store keep).
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn ms(t: DateTime<Utc>, n: i64) -> DateTime<Utc> {
    t + chrono::Duration::milliseconds(n)
}

/// The window's events as `HistoryServer` records them: bob joins, speaks, renames,
/// parts; carol quits; bob2 says `end` (the last line of the window).
fn events_in_window(server: &HistoryServer, from: DateTime<Utc>) {
    let at = |n| Some(ms(from, n));
    let h = Delivery::HistoryOnly;
    server.inject("#c", "bob", ItemKind::Join, at(10), h);
    server.say_at("#c", "bob", "hello", ms(from, 20));
    server.inject("#c", "bob", ItemKind::Nick("bob2".into()), at(30), h);
    server.inject("#c", "bob2", ItemKind::Part(b"later".to_vec()), at(40), h);
    server.inject(
        "#c",
        "carol",
        ItemKind::Quit(b"Quit: bye".to_vec()),
        at(50),
        h,
    );
    server.say_at("#c", "bob2", "end", ms(from, 60));
}

fn cap_req(server: &HistoryServer) -> String {
    server
        .received("alice")
        .iter()
        .find(|l| l.is("CAP") && l.param_str(0) == "REQ")
        .map(Line::last_str)
        .expect("alice asked for caps")
}

/// What was stored in the window, as (command, sender, text).
fn window(lines: &[StoredMessage], from: DateTime<Utc>) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|m| m.time > from)
        .map(|m| (m.command.clone(), m.sender.clone(), m.text.clone()))
        .collect()
}

fn row(c: &str, s: &str, t: &str) -> (String, String, String) {
    (c.into(), s.into(), t.into())
}

#[tokio::test]
async fn gap_fill_asks_for_event_playback_and_stores_the_events_without_relaying_them() {
    let server = HistoryServer::ergo().await;
    let (ferry, user, handle) = alice_on(&server, Backend::Sqlite).await;
    assert!(
        cap_req(&server)
            .split(' ')
            .any(|c| c == "draft/event-playback"),
        "offered, so asked for: {}",
        cap_req(&server)
    );
    let mut client = ferry.client("alice", "hist", "secret", &[]).await;
    client.roundtrip().await;
    let from = now_ms();
    events_in_window(&server, from);
    let marked = handle
        .gap_marker("gap".into(), from, ms(from, 1000))
        .await
        .unwrap();
    assert_eq!(marked, ["hist:chathistory"]);
    let lines = wait_stored(&ferry, user, "end").await;
    assert_eq!(
        window(&lines, from),
        [
            row("JOIN", "bob", ""),
            row("PRIVMSG", "bob", "hello"),
            row("NICK", "bob", "bob2"),
            row("PART", "bob2", "later"),
            row("QUIT", "carol", "Quit: bye"),
            row("PRIVMSG", "bob2", "end"),
        ]
    );
    // Each with the server's own msgid and time.
    let history = server.history("#c");
    for m in lines.iter().filter(|m| m.time > from) {
        let item = history
            .iter()
            .find(|i| Some(&i.msgid) == m.msgid.as_ref())
            .unwrap_or_else(|| panic!("{m:?} has the server's msgid"));
        assert_eq!(item.time, m.time);
    }
    // The attached client gets the conversation, not the past events: they would
    // change the member list it has now.
    let mut got = Vec::new();
    loop {
        let l = client.expect("the filled lines", |_| true).await;
        let end = l.is("PRIVMSG") && l.last_str() == "end";
        got.push(l);
        if end {
            break;
        }
    }
    let events: Vec<String> = got
        .iter()
        .filter(|l| ["JOIN", "PART", "QUIT", "NICK"].iter().any(|c| l.is(c)))
        .map(Line::raw_str)
        .collect();
    assert!(events.is_empty(), "past events relayed: {events:?}");
    assert!(got
        .iter()
        .any(|l| l.is("PRIVMSG") && l.last_str() == "hello"));
}

/// One QUIT (one msgid) replayed in the fills of two channels is stored in each: a
/// msgid is known per buffer, not per network.
#[tokio::test]
async fn gap_fill_stores_a_quit_in_every_channel_it_was_in() {
    let server = HistoryServer::ergo().await;
    let (ferry, user, handle) = alice_in(&server, Backend::Sqlite, &["#c", "#d"]).await;
    let from = now_ms();
    let quit = server.quit_at(&["#c", "#d"], "carol", "Quit: bye", ms(from, 10));
    server.say_at("#c", "bob", "end", ms(from, 20));
    server.say_at("#d", "bob", "end", ms(from, 20));
    handle
        .gap_marker("gap".into(), from, ms(from, 1000))
        .await
        .unwrap();
    for buf in ["#c", "#d"] {
        let lines = wait_stored_in(&ferry, user, buf, "end").await;
        let quits: Vec<Option<&str>> = lines
            .iter()
            .filter(|m| m.command == "QUIT" && m.sender == "carol")
            .map(|m| m.msgid.as_deref())
            .collect();
        assert_eq!(quits, [Some(quit.msgid.as_str())], "carol's QUIT in {buf}");
    }
}

#[tokio::test]
async fn gap_fill_without_event_playback_never_stores_histserv_lines() {
    let server = HistoryServer::start(HistoryOpts::without_cap("draft/event-playback")).await;
    let (ferry, user, handle) = alice_on(&server, Backend::Sqlite).await;
    assert!(!cap_req(&server).contains("event-playback"));
    let from = now_ms();
    events_in_window(&server, from);
    handle
        .gap_marker("gap".into(), from, ms(from, 1000))
        .await
        .unwrap();
    // The server did send the stand-ins (this is the case under test).
    let chathistory = server
        .wait_received("alice", "CHATHISTORY", |l| l.is("CHATHISTORY"))
        .await;
    assert_eq!(chathistory.param_str(0), "BETWEEN");
    let lines = wait_stored(&ferry, user, "end").await;
    assert_eq!(
        window(&lines, from),
        [
            row("PRIVMSG", "bob", "hello"),
            row("PRIVMSG", "bob2", "end")
        ],
        "only what people said; no HistServ line"
    );
    assert!(lines
        .iter()
        .all(|m| !m.sender.eq_ignore_ascii_case("HistServ")
            && !m.msgid.as_deref().unwrap_or_default().starts_with('_')));
}

/// A `chathistory` batch the server sends unasked (Ergo's autoreplay on JOIN) is
/// history, not live: its replayed QUIT, NICK and our own JOIN change no member list
/// and are not relayed; what the backlog holds is not stored (nor relayed) again; what
/// it lacks is stored, its conversation relayed as a fill's is.
#[tokio::test]
async fn an_unasked_chathistory_batch_is_history_and_never_live() {
    let server = HistoryServer::ergo().await;
    let (ferry, user, _handle) = alice_on(&server, Backend::Sqlite).await;
    server.inject("#c", "carol", ItemKind::Join, None, Delivery::Live);
    server.inject("#c", "bob", ItemKind::Join, None, Delivery::Live);
    server.say("#c", "bob", "hello");
    wait_stored(&ferry, user, "hello").await;
    let mut client = ferry.client("alice", "hist", "secret", &[]).await;
    client.roundtrip().await;
    let from = now_ms();
    let h = Delivery::HistoryOnly;
    let quit = ItemKind::Quit(b"Quit: bye".to_vec());
    server.inject("#c", "carol", quit, Some(ms(from, 10)), h);
    server.inject(
        "#c",
        "bob",
        ItemKind::Nick("bob2".into()),
        Some(ms(from, 20)),
        h,
    );
    server.say_at("#c", "bob2", "missed", ms(from, 30));
    assert!(server.replay_to("alice", "#c"));
    // A live line after the batch: once the client has it, it had the batch's too.
    server.say("#c", "dave", "after");
    let mut got = Vec::new();
    loop {
        let l = client.expect("the lines up to `after`", |_| true).await;
        let end = l.is("PRIVMSG") && l.last_str() == "after";
        got.push(l);
        if end {
            break;
        }
    }
    let relayed: Vec<String> = got
        .iter()
        .filter(|l| {
            ["JOIN", "PART", "QUIT", "NICK", "PRIVMSG"]
                .iter()
                .any(|c| l.is(c))
        })
        .map(Line::raw_str)
        .collect();
    assert_eq!(relayed.len(), 2, "only `missed` and `after`: {relayed:?}");
    assert!(relayed[0].ends_with(" missed"), "{relayed:?}");
    // Stored once each: the live ones by their msgids, the new ones from the batch.
    let lines = wait_stored(&ferry, user, "after").await;
    let count = |cmd: &str, sender: &str| {
        lines
            .iter()
            .filter(|m| m.command == cmd && m.sender == sender)
            .count()
    };
    for (cmd, sender) in [
        ("JOIN", "alice"),
        ("JOIN", "carol"),
        ("JOIN", "bob"),
        ("PRIVMSG", "bob"),
        ("QUIT", "carol"),
        ("NICK", "bob"),
        ("PRIVMSG", "bob2"),
    ] {
        assert_eq!(count(cmd, sender), 1, "{cmd} from {sender}: {lines:#?}");
    }
    // The member list is still the live one: carol here, bob not renamed.
    let mut second = ferry.client("alice", "hist", "secret", &[]).await;
    let names = second
        .expect("NAMES #c in the burst", |l| {
            l.is("353") && l.param_str(2) == "#c"
        })
        .await
        .last_str();
    let names: Vec<&str> = names
        .split(' ')
        .map(|n| n.trim_start_matches(['@', '+']))
        .collect();
    assert!(names.contains(&"carol"), "{names:?}");
    assert!(
        names.contains(&"bob") && !names.contains(&"bob2"),
        "{names:?}"
    );
}

/// A line of the window that also arrives live, while the fill is in flight (the
/// window's edge), is stored once; two identical lines said twice in the window are
/// both kept.
async fn gap_fill_skips_the_edge_line_that_arrived_live(backend: Backend) {
    let server = HistoryServer::ergo().await;
    let (ferry, user, handle) = alice_on(&server, backend).await;
    let from = now_ms();
    server.say_at("#c", "bob", "same words", ms(from, 10));
    server.say_at("#c", "bob", "same words", ms(from, 20));
    // Live, and in the window: Ferry stores it as it arrives, right before the
    // answer, so it is still in the backlog writer's queue when the answer comes.
    server.say_when_asked("#c", "bob", "edge");
    let to = ms(now_ms(), 500);
    server.say_at("#c", "bob", "end", ms(to, -1));
    handle.gap_marker("gap".into(), from, to).await.unwrap();
    let lines = wait_stored(&ferry, user, "end").await;
    assert_once(
        &lines,
        &["edge", "end", "same words", "same words"],
        "the edge line once, both identical lines kept",
    );
}

/// A second fill over an overlapping window (a move's own fill after the one at
/// registration), asked for at once, stores only what the first did not.
async fn gap_fill_over_a_filled_window_stores_nothing_twice(backend: Backend) {
    let server = HistoryServer::ergo().await;
    let (ferry, user, handle) = alice_on(&server, backend).await;
    let from = now_ms();
    server.say_at("#c", "bob", "same words", ms(from, 10));
    server.say_at("#c", "bob", "same words", ms(from, 20));
    server.say_at("#c", "bob", "end", ms(from, 30));
    server.say_at("#c", "bob", "end2", ms(from, 40));
    handle
        .gap_marker("gap".into(), from, ms(from, 35))
        .await
        .unwrap();
    handle
        .gap_marker("gap".into(), from, ms(from, 1000))
        .await
        .unwrap();
    let lines = wait_stored(&ferry, user, "end2").await;
    assert_once(
        &lines,
        &["end", "end2", "same words", "same words"],
        "each message once, both identical lines kept",
    );
}

/// The PRIVMSGs stored are `want` (in any order), with no msgid twice and no marker.
fn assert_once(lines: &[StoredMessage], want: &[&str], what: &str) {
    let texts: Vec<&str> = lines
        .iter()
        .filter(|m| m.command == "PRIVMSG")
        .map(|m| m.text.as_str())
        .collect();
    let mut sorted = texts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "{what}: {texts:?}");
    let mut ids: Vec<&str> = lines.iter().filter_map(|m| m.msgid.as_deref()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no msgid stored twice");
    assert!(
        lines.iter().all(|m| m.command != "GAP"),
        "filled, no marker"
    );
}

/// Without `message-tags` there are no msgids: a line is the stored one only with the
/// same time and bytes, and each stored line stands for one line of the answer.
async fn gap_fill_without_msgids_matches_time_and_bytes(backend: Backend) {
    let mut opts = HistoryOpts::default();
    opts.caps.retain(|c| c != "message-tags");
    let server = HistoryServer::start(opts).await;
    let (ferry, user, handle) = alice_on(&server, backend).await;
    let from = now_ms();
    let twin = ms(from, 10);
    // Said live at `twin`, and stored so; then the same words from the same person
    // at the same millisecond again (only in the history): two messages.
    let twin_kind = || ItemKind::Privmsg(b"twin".to_vec());
    server.inject("#c", "bob", twin_kind(), Some(twin), Delivery::Live);
    let first = wait_stored(&ferry, user, "twin").await;
    assert!(first.iter().all(|m| m.msgid.is_none()));
    server.inject("#c", "bob", twin_kind(), Some(twin), Delivery::HistoryOnly);
    server.say_at("#c", "bob", "twin", ms(from, 20));
    server.say_at("#c", "bob", "end", ms(from, 30));
    handle
        .gap_marker("gap".into(), from, ms(from, 1000))
        .await
        .unwrap();
    let lines = wait_stored(&ferry, user, "end").await;
    let twins: Vec<i64> = lines
        .iter()
        .filter(|m| m.command == "PRIVMSG" && m.text == "twin")
        .map(|m| (m.time - from).num_milliseconds())
        .collect();
    assert_eq!(twins, [10, 10, 20], "the live one once, the other two kept");
}

on_both_backends!(
    gap_fill_skips_the_edge_line_that_arrived_live,
    gap_fill_over_a_filled_window_stores_nothing_twice,
    gap_fill_without_msgids_matches_time_and_bytes,
);

/// The `from` of a `[gap] … messages from <from> to …` marker's text.
fn marker_from(text: &str) -> DateTime<Utc> {
    let from = text
        .split("messages from ")
        .nth(1)
        .and_then(|t| t.split(" to ").next())
        .unwrap_or_else(|| panic!("no window in {text:?}"));
    chrono::NaiveDateTime::parse_from_str(from, "%Y-%m-%d %H:%M:%S%.3f")
        .unwrap_or_else(|e| panic!("{from:?}: {e}"))
        .and_utc()
}

/// A connection that dies silently is noticed only at the ping timeout; what was
/// said between its last line and then is missing too, so the window starts at the
/// last line read (InspIRCd, which has no history: the marker shows the window).
#[tokio::test]
async fn the_gap_window_starts_at_the_last_line_read() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let relay = TcpRelay::start(ircd.addr().parse().unwrap()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let ferry = Ferry::start_on(db, |c| {
        c.user.ping_interval = Duration::from_secs(2);
        c.user.ping_timeout = Duration::from_secs(2);
    })
    .await;
    let user = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            user,
            NetworkSpec {
                name: "test".into(),
                addr: relay.addr().to_string(),
                nick: "alice".into(),
                channels: vec!["#c".into()],
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(user, "test", 1).await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#c").await;
    let mut client = ferry.client("alice", "test", "secret", &[]).await;
    bob.send("PRIVMSG #c :before").await;
    client
        .expect("before", |l| l.is("PRIVMSG") && l.last_str() == "before")
        .await;
    // The connection goes quiet without closing; bob speaks into the void.
    relay.stall();
    let lost_at = Utc::now();
    bob.send("PRIVMSG #c :lost").await;
    bob.roundtrip().await;
    client
        .expect("disconnect notice", |l| {
            l.is("NOTICE") && l.last_str().contains("Disconnected")
        })
        .await;
    relay.restore();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let marker = loop {
        let lines = stored_in(&ferry, user, "#c").await;
        if let Some(m) = lines.into_iter().find(|m| m.command == "GAP") {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no gap marker");
        // Polling the store: the marker has no other outside sign.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let from = marker_from(&marker.text);
    assert!(
        from <= lost_at,
        "the window ({from}) must start no later than `lost` was said ({lost_at}): {}",
        marker.text
    );
}

/// Lines said after registration but before our JOIN reach no live stream; the
/// server serves a channel's history only once we are back in it: the window ends,
/// and is filled, at the channel's rejoin (here the server holds the JOIN a while).
#[tokio::test]
async fn the_gap_window_ends_at_the_channels_rejoin() {
    let server = HistoryServer::ergo().await;
    let (ferry, user, handle) = alice_on(&server, Backend::Sqlite).await;
    server.say("#c", "bob", "before");
    wait_stored(&ferry, user, "before").await;
    server.hold_joins("alice");
    assert!(server.disconnect("alice", "Ping timeout"));
    server.wait_join_held("alice").await;
    // The actor has handled the registration (it answers one event at a time).
    handle.status().await.unwrap();
    server.say("#c", "bob", "between");
    server.release_joins();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let lines = loop {
        let lines = stored_in(&ferry, user, "#c").await;
        if lines
            .iter()
            .any(|m| m.command == "GAP" || m.text == "between")
        {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:#?}");
        // Polling the store: the fill has no other outside sign of being done.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said: Vec<(&str, &str)> = lines
        .iter()
        .filter(|m| m.command == "PRIVMSG" || m.command == "GAP")
        .map(|m| (m.command.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        said,
        [("PRIVMSG", "before"), ("PRIVMSG", "between")],
        "filled at the rejoin, `before` once, no marker"
    );
}
