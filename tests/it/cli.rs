//! The `ferry` binary as an operator uses it: admin commands against a
//! running `ferry serve` sharing the data directory.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fixtures::cli::{self, CliOut as Output, BIN};
use crate::fixtures::client::TestClient;
use crate::fixtures::ircd::{InspOpts, Ircd};

async fn ferry(dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(dir).args(args);
    cli::run(cmd, stdin, Duration::from_secs(60)).await
}

#[tokio::test]
async fn admin_commands_reach_a_running_node() {
    let ircd = Ircd::inspircd(InspOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Before any node runs, commands act on the store directly.
    let out = ferry(&data, &["user", "add", "alice"], "secret\n").await;
    assert!(
        !out.ok && out.stderr.contains("at least 8"),
        "a short password is refused: {}",
        out.stderr
    );
    let out = ferry(&data, &["user", "add", "alice"], "secret-pw\n").await;
    assert!(out.ok, "{}", out.stderr);
    let out = ferry(&data, &["user", "add", "bad/name"], "secret-pw\n").await;
    assert!(
        !out.ok && out.stderr.contains("invalid user name"),
        "{}",
        out.stderr
    );

    let mut serve = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--http", "127.0.0.1:0", "--irc", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve prints its addresses")
        .unwrap()
        .expect("a banner line");
    let irc = banner
        .split("irc ")
        .nth(1)
        .expect("irc address in banner")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let mut bob = TestClient::connect(&ircd.addr()).await;
    bob.register("bob").await;
    bob.join("#ferry").await;

    // Added while running: the node connects it at once, no restart.
    let addr = ircd.addr();
    let out = ferry(
        &data,
        &[
            "network",
            "add",
            "--user",
            "alice",
            "--name",
            "test",
            "--addr",
            &addr,
            "--nick",
            "alice",
            "--channels",
            "#ferry,#rust",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    bob.expect("alice joins", |l| l.is("JOIN") && l.nick() == "alice")
        .await;

    let out = ferry(&data, &["network", "list", "--user", "alice"], "").await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("test") && out.stdout.contains("connected"),
        "{}",
        out.stdout
    );

    // A client logs in through the listener the banner named.
    let mut c = TestClient::connect(&irc).await;
    c.send("PASS alice/test:secret-pw").await;
    c.send("NICK alice").await;
    c.send("USER alice 0 * :alice").await;
    c.expect("001", |l| l.is("001")).await;
    bob.send("PRIVMSG #ferry :hello from bob").await;
    c.expect("relayed", |l| {
        l.is("PRIVMSG") && l.last_str() == "hello from bob"
    })
    .await;

    // The backlog writer commits within milliseconds; allow a loaded machine time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = ferry(&data, &["search", "--user", "alice", "hello"], "").await;
        assert!(out.ok, "{}", out.stderr);
        if out.stdout.contains("<bob> hello from bob") {
            assert!(out.stdout.contains("#ferry"), "{}", out.stdout);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "search never found the message: {}",
            out.stdout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = ferry(
        &data,
        &[
            "user",
            "retention",
            "alice",
            "--days",
            "30",
            "--messages",
            "100000",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let out = ferry(&data, &["user", "retention", "alice", "--days", "0"], "").await;
    assert!(
        !out.ok && out.stderr.contains("at least 1"),
        "{}",
        out.stderr
    );
    let store = ferry::store::Store::open(&format!("sqlite://{}", data.join("ferry.db").display()))
        .await
        .unwrap();
    let user = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(user.retention.max_age_days, Some(30));
    assert_eq!(user.retention.max_messages, Some(100_000));

    let out = ferry(&data, &["user", "remove", "alice"], "").await;
    assert!(!out.ok && out.stderr.contains("--yes"), "{}", out.stderr);

    // SIGTERM: a clean shutdown QUITs upstream.
    let pid = serve.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    bob.expect("alice quits", |l| l.is("QUIT") && l.nick() == "alice")
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
