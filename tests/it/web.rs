//! The web client in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/*.mjs`) against an in-process Ferry connected to a real InspIRCd.
//! These tests play the other people on IRC and pull the server's levers (drop the
//! socket, move the session, write a gap marker) when a script asks, over the
//! script's stdio: it prints `REQ <action> <arg>` and waits for `OK`.
//!
//! - `chromium_logs_in_chats_searches_and_survives_a_drop` (`web.mjs`): the tour.
//! - `chromium_renders_irc_formatting_readably_and_safely` (`everyday.mjs formatting`).
//! - `chromium_runs_everyday_commands_and_shows_replies_in_place` (`everyday.mjs commands`).
//! - `chromium_phone_members_unread_plurals_and_live_gap` (`everyday.mjs phone`).
//! - `chromium_service_worker_shows_pushes_and_opens_the_buffer` (`push.mjs`).
//! - `chromium_shows_each_networks_state_and_the_motd` (`netstate.mjs`).
//! - `chromium_detaches_and_attaches_a_channel_on_a_phone` (`detach.mjs`).
//! - `chromium_user_adds_a_network_and_changes_the_password_{desktop,phone}`
//!   (`account.mjs`).
//! - `chromium_signs_up_with_an_invite_{desktop,phone}` (`invite.mjs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::config::NodeConfig;
use ferry::services::Control;
use ferry::store::UserId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};
use crate::fixtures::relay::TcpRelay;

const CHANNEL: &str = "#ferry";
const PASSWORD: &str = "correct horse";

/// Lines of the seeded backlog, for a screenshot that looks like a conversation.
const CHATTER: &[&str] = &[
    "morning all",
    "did anyone try the new release?",
    "yes, the reconnect is much smoother now",
    "I moved my bouncer to the new box last night, nobody noticed",
    "that's the whole point :)",
    "see https://example.org/notes for the changelog",
];

/// Alice on Ferry (the browser's user, op in `#ferry`), with bob and carol in the
/// channel.
struct World {
    ircd: Ircd,
    ferry: Ferry,
    alice: UserId,
    bob: TestClient,
    carol: TestClient,
    /// Other people and clients a scenario made (kept so they stay connected).
    others: Vec<TestClient>,
    /// A relay to the server that a scenario holds connections in (`restore` lets
    /// them through).
    relay: Option<TcpRelay>,
}

impl World {
    async fn new() -> World {
        World::with_config(|_| {}).await
    }

    /// As `new`, on a node whose settings `tweak` adjusts.
    async fn with_config(tweak: impl FnOnce(&mut NodeConfig)) -> World {
        let ircd = Ircd::inspircd(InspOpts::default()).await;
        let ferry = Ferry::start_on(TestDb::new(Backend::Sqlite).await, tweak).await;
        let alice = ferry.add_user("alice", PASSWORD).await;
        ferry
            .add_network(
                alice,
                NetworkSpec {
                    name: "testnet".into(),
                    addr: ircd.addr(),
                    nick: "alice".into(),
                    channels: vec![CHANNEL.into()],
                    ..NetworkSpec::default()
                },
            )
            .await;
        // Alice joins first, so she is the channel's operator.
        ferry.wait_connected(alice, "testnet", 1).await;
        let mut bob = TestClient::connect(&ircd.addr()).await;
        bob.register("bob").await;
        bob.join(CHANNEL).await;
        let mut carol = TestClient::connect(&ircd.addr()).await;
        carol.register("carol").await;
        carol.join(CHANNEL).await;
        World {
            ircd,
            ferry,
            alice,
            bob,
            carol,
            others: Vec::new(),
            relay: None,
        }
    }

    /// Backlog: 250 lines, one of them the search target. A round trip whenever the
    /// speaker changes keeps the lines in order across the two connections.
    async fn seed_backlog(&mut self) {
        for i in 0..250 {
            if i % 3 == 0 {
                self.bob.roundtrip().await;
            } else if i % 3 == 1 {
                self.carol.roundtrip().await;
            }
            let who = if i % 3 == 0 {
                &mut self.carol
            } else {
                &mut self.bob
            };
            who.send(format!(
                "PRIVMSG {CHANNEL} :backlog {i}: {}",
                CHATTER[i % CHATTER.len()]
            ))
            .await;
            if i == 120 {
                who.send(format!("PRIVMSG {CHANNEL} :a needle in the haystack"))
                    .await;
            }
        }
        self.bob.roundtrip().await;
        self.carol.roundtrip().await;
        self.ferry
            .services()
            .users
            .get(self.alice)
            .unwrap()
            .flush()
            .await
            .unwrap();
    }

    async fn person(&mut self, nick: &str) -> &mut TestClient {
        match nick {
            "bob" => &mut self.bob,
            "carol" => &mut self.carol,
            _ => self
                .others
                .iter_mut()
                .find(|c| c.nick() == nick)
                .unwrap_or_else(|| panic!("nobody called {nick}")),
        }
    }

    /// Carries out one request of the script; returns what to answer after `OK`.
    async fn act(&mut self, action: &str, arg: &str) -> String {
        match action {
            "say" => {
                self.bob.send(format!("PRIVMSG {CHANNEL} :{arg}")).await;
                self.bob.roundtrip().await;
            }
            // The text as a JSON string: it may hold IRC formatting codes.
            "say-json" => {
                let text: String = serde_json::from_str(arg).expect("a JSON string");
                self.bob.send(format!("PRIVMSG {CHANNEL} :{text}")).await;
                self.bob.roundtrip().await;
            }
            "say-many" => {
                for i in 1..=3 {
                    self.carol
                        .send(format!("PRIVMSG {CHANNEL} :{arg} {i}"))
                        .await;
                }
                self.carol.roundtrip().await;
            }
            "expect" => {
                self.bob
                    .expect(&format!("alice says {arg:?}"), |l| {
                        l.is("PRIVMSG") && l.nick() == "alice" && l.last_str() == arg
                    })
                    .await;
            }
            // `<nick> <COMMAND> [last parameter]`: that person receives the line.
            "expect-line" => {
                let mut words = arg.splitn(3, ' ');
                let (nick, command) = (words.next().unwrap(), words.next().unwrap());
                let last = words.next();
                self.person(nick)
                    .await
                    .expect(&format!("{nick} gets {command} {last:?}"), |l| {
                        l.is(command) && (last.is_none() || last == Some(l.last_str().as_str()))
                    })
                    .await;
            }
            // A person who is not in the channel (yet).
            "connect" => {
                let mut c = TestClient::connect(&self.ircd.addr()).await;
                c.register(arg).await;
                self.others.push(c);
            }
            // `<nick> <raw line>`: that person sends a line.
            "send" => {
                let (nick, line) = arg.split_once(' ').unwrap();
                let c = self.person(nick).await;
                c.send(line).await;
                c.roundtrip().await;
            }
            // An IRC client of alice's sends a line (its replies reach every client).
            "irc-client" => {
                // The password has a space: the PASS parameter is a trailing one.
                let mut c = TestClient::connect(&self.ferry.irc_addr()).await;
                c.send(format!("PASS :alice/testnet:{PASSWORD}")).await;
                c.register("alice").await;
                c.send(arg).await;
                c.roundtrip().await;
                self.others.push(c);
            }
            "churn" => {
                for nick in ["dave", "erin"] {
                    let mut c = TestClient::connect(&self.ircd.addr()).await;
                    c.register(nick).await;
                    c.join(CHANNEL).await;
                    c.send(format!("PART {CHANNEL} :bye")).await;
                    c.roundtrip().await;
                }
                self.bob.roundtrip().await;
            }
            "gap" => {
                let to = chrono::Utc::now();
                let from = to - chrono::Duration::milliseconds(1200);
                let text = format!(
                    "[gap] Ferry moved this session between nodes: messages from {} to {} (1200 ms) may be missing",
                    from.format("%H:%M:%S%.3f"),
                    to.format("%H:%M:%S%.3f")
                );
                let marked = self
                    .ferry
                    .services()
                    .users
                    .get(self.alice)
                    .unwrap()
                    .gap_marker(text, from, to)
                    .await
                    .unwrap();
                assert_eq!(marked, ["testnet"], "InspIRCd offers no CHATHISTORY");
            }
            "drop" => assert_eq!(
                self.ferry
                    .services()
                    .sockets
                    .control(self.alice, Control::Drop),
                1
            ),
            "moved" => assert_eq!(
                self.ferry
                    .services()
                    .sockets
                    .control(self.alice, Control::Moved(arg.to_owned())),
                1
            ),
            // Moved to a node that is gone by the time the client gets there (a
            // failover after a move): a port nobody listens on.
            "moved-dead" => {
                let port = {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap().port()
                };
                let url = format!("ws://127.0.0.1:{port}/ws");
                assert_eq!(
                    self.ferry
                        .services()
                        .sockets
                        .control(self.alice, Control::Moved(url.clone())),
                    1
                );
                return url;
            }
            // Alice's push subscriptions in the store: their endpoints, one a word.
            "push-subs" => {
                let subs = self
                    .ferry
                    .store()
                    .push_subscriptions(self.alice)
                    .await
                    .unwrap();
                return subs
                    .iter()
                    .map(|s| s.endpoint.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            // The relay forwards again: the connections it held are reset.
            "restore" => self.relay.as_ref().expect("a relay").restore(),
            other => panic!("unknown request {other}"),
        }
        String::new()
    }
}

/// What a browser script asks of its test: a `REQ action arg` line, answered with
/// `OK` and what this returns.
pub(super) trait BrowserRequests {
    fn act(&mut self, action: &str, arg: &str) -> impl std::future::Future<Output = String>;
}

impl BrowserRequests for World {
    fn act(&mut self, action: &str, arg: &str) -> impl std::future::Future<Output = String> {
        World::act(self, action, arg)
    }
}

/// Answers the requests of the browser script `child` (its stdin and stdout piped)
/// through `world` until it exits, within 240 s (else panics with its transcript):
/// its exit status and transcript, which is also printed.
pub(super) async fn drive_browser(
    mut child: tokio::process::Child,
    world: &mut impl BrowserRequests,
) -> (std::process::ExitStatus, String) {
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = Vec::new();
    let run = async {
        while let Some(line) = out.next_line().await.unwrap() {
            transcript.push(line.clone());
            let Some(req) = line.strip_prefix("REQ ") else {
                continue;
            };
            let (action, arg) = req.split_once(' ').unwrap_or((req, ""));
            let answer = world.act(action, arg).await;
            stdin
                .write_all(format!("OK {answer}\n").as_bytes())
                .await
                .unwrap();
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .unwrap_or_else(|_| panic!("the browser test timed out:\n{}", transcript.join("\n")));
    let log = transcript.join("\n");
    eprintln!("{log}");
    (status, log)
}

/// Runs `script` (with `args`) in `tests/browser` against `world` until it prints
/// `BROWSER OK`; panics with its transcript otherwise.
async fn run_browser(world: &mut World, script: &str, args: &[&str], env: &[(&str, String)]) {
    let browser_dir = root().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and tests/browser/node_modules: run scripts/test-deps.sh"
    );
    let child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&browser_dir)
        .env("FERRY_URL", world.ferry.http_url())
        .env("FERRY_USER", "alice")
        .env("FERRY_PASSWORD", PASSWORD)
        .env("FERRY_CHANNEL", CHANNEL)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let (status, log) = drive_browser(child, world).await;
    assert!(status.success(), "browser test failed:\n{log}");
    assert!(log.contains("BROWSER OK"), "{log}");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where a screenshot goes: `FERRY_UPDATE_SCREENSHOT=1` refreshes the README's
/// (`docs/<name>`); else a temporary file, so a test run leaves the tree clean
/// (`FERRY_SCREENSHOT_DIR` keeps them for a look).
fn screenshot(dir: &tempfile::TempDir, name: &str, readme: bool) -> String {
    if readme && std::env::var_os("FERRY_UPDATE_SCREENSHOT").is_some() {
        return root().join("docs").join(name).display().to_string();
    }
    let dir = std::env::var_os("FERRY_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().to_owned());
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn chromium_logs_in_chats_searches_and_survives_a_drop() {
    let mut world = World::new().await;
    world.seed_backlog().await;
    // The same node under another host name stands in for another node: following
    // `moved` means a new origin, so the client must use its token.
    let moved = format!(
        "{}/ws",
        world
            .ferry
            .http_url()
            .replace("http://127.0.0.1", "ws://localhost")
    );
    let shots = tempfile::tempdir().unwrap();
    let env = [
        ("FERRY_MOVED_URL", moved),
        (
            "FERRY_SCREENSHOT",
            screenshot(&shots, "screenshot.png", true),
        ),
        (
            "FERRY_SCREENSHOT_PHONE",
            screenshot(&shots, "screenshot-phone.png", false),
        ),
    ];
    run_browser(&mut world, "web.mjs", &[], &env).await;
}

/// Finding 13: mIRC formatting (bold, italics, underline, strikethrough, monospace,
/// reverse, reset, colours 0–98 and hex) is rendered with the right styles, every
/// colour and nick readable on the light and the dark theme, and a hostile line
/// stays text (no element, no script, no CSP violation).
#[tokio::test]
async fn chromium_renders_irc_formatting_readably_and_safely() {
    let mut world = World::new().await;
    let shots = tempfile::tempdir().unwrap();
    let env = [(
        "FERRY_SCREENSHOT",
        screenshot(&shots, "formatting.png", false),
    )];
    run_browser(&mut world, "everyday.mjs", &["formatting"], &env).await;
}

/// Finding 14: /whois, /mode, /kick, /ban, /op, /deop, /voice, /devoice, /invite,
/// /away, /back, /list, /raw, /quote, /motd, /topic: each reaches IRC, and its reply
/// shows where it was typed (or in the network's buffer, with errors and notices
/// that belong to no channel).
#[tokio::test]
async fn chromium_runs_everyday_commands_and_shows_replies_in_place() {
    let mut world = World::new().await;
    let shots = tempfile::tempdir().unwrap();
    let env = [(
        "FERRY_SCREENSHOT",
        screenshot(&shots, "commands.png", false),
    )];
    run_browser(&mut world, "everyday.mjs", &["commands"], &env).await;
}

/// Finding 15: on a 390×844 phone the member list opens from a button; one's own
/// join counts as nothing unread (live and after a reload); "1 member", "1 result";
/// a gap marker shows live even after the session was moved to a node that died.
#[tokio::test]
async fn chromium_phone_members_unread_plurals_and_live_gap() {
    let mut world = World::new().await;
    world
        .bob
        .send(format!(
            "PRIVMSG {CHANNEL} :the word xylophone is said once"
        ))
        .await;
    world.bob.roundtrip().await;
    let shots = tempfile::tempdir().unwrap();
    let env = [(
        "FERRY_SCREENSHOT_PHONE",
        screenshot(&shots, "members-phone.png", false),
    )];
    run_browser(&mut world, "everyday.mjs", &["phone"], &env).await;
}

/// Issue 12: the service worker is served from the web root under the CSP; a push
/// delivered through the DevTools protocol (the documented JSON payload) shows a
/// notification with the sender and the text, a burst replaces it, and its click
/// routine opens the buffer (a private one that did not exist yet too); the settings
/// toggle and the per-buffer mute switch reach the server; a hidden tab without a
/// push subscription notifies a private message and not a plain line.
#[tokio::test]
async fn chromium_service_worker_shows_pushes_and_opens_the_buffer() {
    let mut world = World::new().await;
    run_browser(&mut world, "push.mjs", &[], &[]).await;
}

/// Issue 11, item 5: on a phone, the header's switch detaches the channel (marked in
/// the sidebar, its lines stored but not shown live) and attaches it again (what was
/// said meanwhile loads); a mention attaches it by itself; the mark survives a reload.
#[tokio::test]
async fn chromium_detaches_and_attaches_a_channel_on_a_phone() {
    let mut world = World::new().await;
    run_browser(&mut world, "detach.mjs", &[], &[]).await;
    let handle = world.ferry.services().users.get(world.alice).unwrap();
    assert!(handle.flush().await.unwrap());
    let found = world
        .ferry
        .store()
        .search(&ferry::store::SearchQuery {
            user: world.alice,
            text: "said while you were away".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "the detached line is in the backlog");
    let net = world
        .ferry
        .store()
        .network_by_name(world.alice, "testnet")
        .await
        .unwrap()
        .unwrap();
    let buffers = world.ferry.store().buffers(net.id).await.unwrap();
    assert!(buffers.iter().any(|b| b.detached), "the flag is stored");
}

/// Issue 18, finding 5 (and the MOTD at connect): the sidebar and the network's
/// buffer say what each network is doing. `broken` speaks TLS to InspIRCd's
/// plaintext port: the handshake's error and the next attempt show. `stalled`
/// goes through a relay that holds its connection unanswered: registering. The
/// connected network's buffer starts with its MOTD, again after a reload; when the
/// relay lets `stalled` through, its fresh registration's MOTD shows live.
#[tokio::test]
async fn chromium_shows_each_networks_state_and_the_motd() {
    let mut world = World::with_config(|cfg| {
        // Each stage of `broken` lasts long enough to be seen: the handshake's 2 s,
        // then 3–6 s backing off.
        cfg.user.tls_timeout = Duration::from_secs(2);
        cfg.user.backoff_min = Duration::from_secs(3);
        cfg.user.backoff_max = Duration::from_secs(6);
        // `stalled` stays in its first registering attempt for the whole test, however
        // slow Chromium: neither the registration timeout nor the keepalive (which
        // PINGs a silent server) may end it.
        cfg.user.register_timeout = Duration::from_secs(180);
        cfg.user.ping_interval = Duration::from_secs(180);
        cfg.user.ping_timeout = Duration::from_secs(180);
    })
    .await;
    let relay = TcpRelay::start(world.ircd.addr().parse().unwrap()).await;
    relay.cut_blackhole();
    for (name, addr, tls) in [
        ("broken", world.ircd.addr(), true),
        ("stalled", relay.addr().to_string(), false),
    ] {
        world
            .ferry
            .add_network(
                world.alice,
                NetworkSpec {
                    name: name.into(),
                    addr,
                    tls,
                    tls_verify: tls.then(|| "insecure".into()),
                    nick: "alice".into(),
                    ..NetworkSpec::default()
                },
            )
            .await;
    }
    world.relay = Some(relay);
    run_browser(&mut world, "netstate.mjs", &[], &[]).await;
}

/// Issue 11: a user without networks adds one from the web client and sees it connect
/// (the IRC server sees its JOIN), leaves and joins a channel, disconnects and
/// connects it, removes it after a confirmation, changes the password and logs in
/// again with the new one; errors show next to the form they belong to.
async fn account_tour(scenario: &str) {
    let mut world = World::new().await;
    let dora = world.ferry.add_user("dora", PASSWORD).await;
    let shots = tempfile::tempdir().unwrap();
    let env = [
        (
            "FERRY_SCREENSHOT",
            screenshot(&shots, &format!("account-{scenario}.png"), false),
        ),
        ("FERRY_USER", "dora".to_owned()),
        ("FERRY_IRCD", world.ircd.addr()),
        ("FERRY_NEW_PASSWORD", "a new battery staple".to_owned()),
    ];
    run_browser(&mut world, "account.mjs", &[scenario], &env).await;
    let store = world.ferry.store();
    assert!(store.networks(dora).await.unwrap().is_empty());
}

#[tokio::test]
async fn chromium_user_adds_a_network_and_changes_the_password_desktop() {
    account_tour("desktop").await;
}

/// The same on a 390×844 phone: the dialog fills the screen and nothing overflows.
#[tokio::test]
async fn chromium_user_adds_a_network_and_changes_the_password_phone() {
    account_tour("phone").await;
}

/// Issue 11: `ferry user invite` prints a URL; a person opens it, chooses a name and a
/// password and lands logged in; the link works once.
async fn invite_tour(scenario: &str) {
    let mut world = World::with_config(|c| c.accounts.invites = true).await;
    let f = &world.ferry;
    let mut cmd = Command::new(crate::fixtures::cli::BIN);
    cmd.arg("--database")
        .arg(&f.db.url)
        .arg("--secret-key-file")
        .arg(f.db.key_file())
        .args(["user", "invite", "--expires", "1h"])
        .env("FERRY_LOG", "warn");
    let out = crate::fixtures::cli::run(cmd, "", Duration::from_secs(60)).await;
    assert!(out.ok, "{}", out.stderr);
    let url = out.stdout.trim().to_owned();
    assert!(
        url.starts_with(&format!("{}/#invite=", f.http_url())),
        "{url}"
    );
    let name = format!("newbie-{scenario}");
    let env = [
        ("FERRY_INVITE_URL", url),
        ("FERRY_NEW_USER", name.clone()),
        ("FERRY_TAKEN_USER", "alice".to_owned()),
    ];
    run_browser(&mut world, "invite.mjs", &[scenario], &env).await;
    let user = world.ferry.store().user_by_name(&name).await.unwrap();
    assert!(user.is_some_and(|u| !u.is_admin), "the account exists");
}

#[tokio::test]
async fn chromium_signs_up_with_an_invite_desktop() {
    invite_tour("desktop").await;
}

/// The same on a 390×844 phone: the form fits the screen.
#[tokio::test]
async fn chromium_signs_up_with_an_invite_phone() {
    invite_tour("phone").await;
}
