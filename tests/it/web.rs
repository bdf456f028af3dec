//! The web client in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/web.mjs`) against an in-process Ferry connected to a real
//! InspIRCd. This test plays the other people on IRC and pulls the server's levers
//! (drop the socket, move the session) when the script asks, over the script's stdio.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::services::Control;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry};
use crate::fixtures::ircd::{InspOpts, Ircd};

const CHANNEL: &str = "#ferry";

/// Lines of the seeded backlog, for a screenshot that looks like a conversation.
const CHATTER: &[&str] = &[
    "morning all",
    "did anyone try the new release?",
    "yes, the reconnect is much smoother now",
    "I moved my bouncer to the new box last night, nobody noticed",
    "that's the whole point :)",
    "see https://example.org/notes for the changelog",
];

#[tokio::test]
async fn chromium_logs_in_chats_searches_and_survives_a_drop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and tests/browser/node_modules: run scripts/test-deps.sh"
    );

    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let ferry = Ferry::start(Backend::Sqlite).await;
    let alice = ferry.add_user("alice", "correct horse").await;
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
    ferry.wait_connected(alice, "testnet", 1).await;
    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join(CHANNEL).await;
    let mut carol = TestClient::connect(&ircd.addr()).await;
    carol.register("carol").await;
    carol.join(CHANNEL).await;

    // Backlog: 250 lines, one of them the search target. A round trip whenever the
    // speaker changes keeps the lines in order across the two connections.
    for i in 0..250 {
        if i % 3 == 0 {
            bob.roundtrip().await;
        } else if i % 3 == 1 {
            carol.roundtrip().await;
        }
        let who = if i % 3 == 0 { &mut carol } else { &mut bob };
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
    bob.roundtrip().await;
    carol.roundtrip().await;
    ferry
        .services()
        .users
        .get(alice)
        .unwrap()
        .flush()
        .await
        .unwrap();

    let url = ferry.http_url();
    // The same node under another host name stands in for another node: following
    // `moved` means a new origin, so the client must use its token.
    let moved = format!("{}/ws", url.replace("http://127.0.0.1", "ws://localhost"));
    // `FERRY_UPDATE_SCREENSHOT=1` refreshes the README's screenshot; else it goes to
    // a temporary file so a test run leaves the tree clean.
    let shots = tempfile::tempdir().unwrap();
    let screenshot = if std::env::var_os("FERRY_UPDATE_SCREENSHOT").is_some() {
        root.join("docs/screenshot.png")
    } else {
        shots.path().join("screenshot.png")
    };
    let mut child = Command::new("node")
        .arg("web.mjs")
        .current_dir(&browser_dir)
        .env("FERRY_URL", &url)
        .env("FERRY_USER", "alice")
        .env("FERRY_PASSWORD", "correct horse")
        .env("FERRY_CHANNEL", CHANNEL)
        .env("FERRY_MOVED_URL", &moved)
        .env("FERRY_SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = Vec::new();
    let sockets = ferry.services().sockets.clone();

    let run = async {
        while let Some(line) = out.next_line().await.unwrap() {
            transcript.push(line.clone());
            let Some(req) = line.strip_prefix("REQ ") else {
                continue;
            };
            let (action, arg) = req.split_once(' ').unwrap_or((req, ""));
            match action {
                "say" => {
                    bob.send(format!("PRIVMSG {CHANNEL} :{arg}")).await;
                    bob.roundtrip().await;
                }
                "say-many" => {
                    for i in 1..=3 {
                        carol.send(format!("PRIVMSG {CHANNEL} :{arg} {i}")).await;
                    }
                    carol.roundtrip().await;
                }
                "expect" => {
                    bob.expect(&format!("alice says {arg:?}"), |l| {
                        l.is("PRIVMSG") && l.nick() == "alice" && l.last_str() == arg
                    })
                    .await;
                }
                "churn" => {
                    for nick in ["dave", "erin"] {
                        let mut c = TestClient::connect(&ircd.addr()).await;
                        c.register(nick).await;
                        c.join(CHANNEL).await;
                        c.send(format!("PART {CHANNEL} :bye")).await;
                        c.roundtrip().await;
                    }
                    bob.roundtrip().await;
                }
                "gap" => {
                    let to = chrono::Utc::now();
                    let from = to - chrono::Duration::milliseconds(1200);
                    let text = format!(
                        "[gap] Ferry moved this session between nodes: messages from {} to {} (1200 ms) may be missing",
                        from.format("%H:%M:%S%.3f"),
                        to.format("%H:%M:%S%.3f")
                    );
                    let marked = ferry
                        .services()
                        .users
                        .get(alice)
                        .unwrap()
                        .gap_marker(text, from, to)
                        .await
                        .unwrap();
                    assert_eq!(marked, ["testnet"], "InspIRCd offers no CHATHISTORY");
                }
                "drop" => assert_eq!(sockets.control(alice, Control::Drop), 1),
                "moved" => assert_eq!(sockets.control(alice, Control::Moved(arg.to_owned())), 1),
                other => panic!("unknown request {other}"),
            }
            stdin.write_all(b"OK\n").await.unwrap();
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .unwrap_or_else(|_| panic!("the browser test timed out:\n{}", transcript.join("\n")));
    let log = transcript.join("\n");
    eprintln!("{log}");
    assert!(status.success(), "browser test failed:\n{log}");
    assert!(log.contains("BROWSER OK"), "{log}");
}
