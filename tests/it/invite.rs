//! Operator conveniences (issue 11, item 4): invite links — `ferry user invite` from
//! the real binary against a running node, sign-up over `/api/invites/{token}` on
//! SQLite and PostgreSQL — and the ident responder, asked by real InspIRCd.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::Utc;
use ferry::admin::NetworkSpec;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::fixtures::cli::{self, CliOut, BIN};
use crate::fixtures::client::TestClient;
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};

on_both_backends!(
    invite_signs_up_once,
    expired_invite_is_refused,
    disabled_invites_are_refused_clearly,
    concurrent_sign_ups_one_wins,
);

/// `ferry user invite` and `args` on the node's store and key (the CLI finds the
/// running node in the store's node list and calls its admin API).
async fn ferry_cli(f: &Ferry, args: &[&str]) -> CliOut {
    let mut cmd = Command::new(BIN);
    cmd.arg("--database")
        .arg(&f.db.url)
        .arg("--secret-key-file")
        .arg(f.db.key_file())
        .args(args)
        .env("FERRY_LOG", "warn");
    cli::run(cmd, "", Duration::from_secs(60)).await
}

async fn start(backend: Backend, invites: bool) -> Ferry {
    let db = TestDb::new(backend).await;
    Ferry::start_on(db, |c| c.accounts.invites = invites).await
}

/// The token of an invite URL printed by the CLI, checking the URL's form.
fn token_of(f: &Ferry, out: &CliOut) -> String {
    assert!(out.ok, "ferry user invite failed: {}", out.stderr);
    let url = out.stdout.trim();
    let prefix = format!("{}/#invite=", f.http_url());
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url:?} is not {prefix}<token>"));
    assert_eq!(token.len(), 64, "{token}");
    token.to_owned()
}

async fn get(f: &Ferry, token: &str) -> (StatusCode, Value) {
    let r = reqwest::get(format!("{}/api/invites/{token}", f.http_url()))
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn sign_up(f: &Ferry, token: &str, name: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/invites/{token}", f.http_url()))
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn invite_signs_up_once(backend: Backend) {
    let f = start(backend, true).await;
    let out = ferry_cli(&f, &["user", "invite", "--expires", "2h"]).await;
    let token = token_of(&f, &out);
    assert!(out.stderr.contains("one-time"), "{}", out.stderr);

    let (status, offer) = get(&f, &token).await;
    assert_eq!(status, StatusCode::OK, "{offer}");
    assert_eq!(offer["admin"], false);

    // The rules of `ferry user add`: a bad name is refused and costs nothing.
    let (status, code) = error_code(sign_up(&f, &token, "bad/name", "pw").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // A taken name: 409, and the invite stays usable.
    f.add_user("taken", "pw").await;
    let (status, code) = error_code(sign_up(&f, &token, "taken", "pw").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "conflict"));

    let r = sign_up(&f, &token, "newbie", "newbie-pw").await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.starts_with("ferry_session="), "{cookie}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["name"], "newbie");
    assert_eq!(body["user"]["admin"], false);
    // Logged in: the session works, and so does the password.
    let me: Value = reqwest::Client::new()
        .get(format!("{}/api/me", f.http_url()))
        .bearer_auth(body["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "newbie", "{me}");
    assert!(!f.api_token("newbie", "newbie-pw").await.is_empty());
    let user = f.store().user_by_name("newbie").await.unwrap().unwrap();
    assert!(
        f.services().users.get(user.id).is_some(),
        "the node runs the new user"
    );

    // One use only.
    let (status, code) = error_code(sign_up(&f, &token, "second", "second-pw").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "invite_invalid")
    );
    assert_eq!(get(&f, &token).await.0, StatusCode::NOT_FOUND);
    assert!(f.store().user_by_name("second").await.unwrap().is_none());

    // An admin invite makes an admin; `--json` for scripts.
    let out = ferry_cli(&f, &["--json", "user", "invite", "--admin"]).await;
    assert!(out.ok, "{}", out.stderr);
    let row: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(row["admin"], true);
    let token = row["token"].as_str().unwrap();
    let r = sign_up(&f, token, "boss", "boss-pw").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        f.store()
            .user_by_name("boss")
            .await
            .unwrap()
            .unwrap()
            .is_admin
    );
}

async fn expired_invite_is_refused(backend: Backend) {
    let f = start(backend, true).await;
    // An invite that expired a minute ago (written as `invite::create` writes it).
    let token = "ab".repeat(32);
    let now = Utc::now();
    f.store()
        .create_invite(
            &ferry::invite::token_hash(&token),
            false,
            now - chrono::Duration::hours(1),
            now - chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    let (status, body) = get(&f, &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invite_invalid");
    let (status, code) = error_code(sign_up(&f, &token, "late", "late-pw").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "invite_invalid")
    );
    assert!(f.store().user_by_name("late").await.unwrap().is_none());

    // A bad expiry is refused by the CLI before anything is made.
    let out = ferry_cli(&f, &["user", "invite", "--expires", "soon"]).await;
    assert!(
        !out.ok && out.stderr.contains("invalid duration"),
        "{}",
        out.stderr
    );
}

async fn disabled_invites_are_refused_clearly(backend: Backend) {
    let mut f = start(backend, false).await;
    // Through the running node.
    let out = ferry_cli(&f, &["user", "invite"]).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("invites are disabled") && out.stderr.contains("[accounts] invites"),
        "{}",
        out.stderr
    );
    let (status, body) = get(&f, &"ab".repeat(32)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invites_disabled");
    let (status, code) = error_code(sign_up(&f, &"ab".repeat(32), "x", "pw").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "invites_disabled")
    );

    // With no node running, the CLI reads the config file given to it.
    f.stop().await;
    let out = ferry_cli(&f, &["user", "invite"]).await;
    assert!(
        !out.ok && out.stderr.contains("invites are disabled"),
        "{}",
        out.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ferry.toml");
    std::fs::write(
        &conf,
        "[serve]\nadvertise_http = \"https://chat.example\"\n[accounts]\ninvites = true\n",
    )
    .unwrap();
    let out = ferry_cli(&f, &["--config", conf.to_str().unwrap(), "user", "invite"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .trim()
            .starts_with("https://chat.example/#invite="),
        "{}",
        out.stdout
    );
}

async fn concurrent_sign_ups_one_wins(backend: Backend) {
    let f = start(backend, true).await;
    let token = token_of(&f, &ferry_cli(&f, &["user", "invite"]).await);
    let racers = (0..4).map(|i| {
        let f = &f;
        let token = token.clone();
        async move {
            let r = sign_up(f, &token, &format!("racer{i}"), "racer-pw").await;
            (i, r.status())
        }
    });
    let results = futures::future::join_all(racers).await;
    let won: Vec<usize> = results
        .iter()
        .filter(|(_, s)| *s == StatusCode::OK)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(won.len(), 1, "exactly one sign-up wins: {results:?}");
    for (_, s) in &results {
        assert!(
            *s == StatusCode::OK || *s == StatusCode::NOT_FOUND,
            "the others are told the invite is used: {results:?}"
        );
    }
    let users: Vec<String> = f
        .store()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .filter(|n| n.starts_with("racer"))
        .collect();
    assert_eq!(users, vec![format!("racer{}", won[0])]);
}

/// Guessing tokens is throttled like guessing passwords.
#[tokio::test]
async fn guessing_invite_tokens_is_throttled() {
    let f = start(Backend::Sqlite, true).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let (status, _) = get(&f, &format!("{i:064x}")).await;
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(statuses[0] == StatusCode::NOT_FOUND);
}

/// A loopback address of this test's own (127.x.y.z), so port 113 on it is ours.
fn own_loopback() -> Ipv4Addr {
    let r: u32 = rand::random();
    Ipv4Addr::new(
        127,
        100 + (r % 100) as u8,
        (r >> 8) as u8,
        ((r >> 16) as u8).max(2),
    )
}

/// InspIRCd asks our ident responder about each upstream connection and shows the
/// user's ident name (no `~`); a query about anything else gets `NO-USER`.
///
/// InspIRCd 3 always asks port 113 of the client's address, so the node binds the
/// responder to 113 on a loopback address of the test's own and connects upstream
/// from that address (binding 113 needs root, as the test runner is).
#[tokio::test]
async fn inspircd_sees_each_users_ident() {
    let ip = own_loopback();
    let ircd = Ircd::inspircd(InspOpts {
        ident: true,
        ..InspOpts::default()
    })
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let f = Ferry::start_on(db, |c| {
        c.ident.listen = Some(std::net::SocketAddr::new(IpAddr::V4(ip), 113));
        c.user.source_ips = vec![IpAddr::V4(ip)];
    })
    .await;
    let ident_addr = f.running().bound.ident.expect("ident listener");

    let mut watcher = TestClient::connect(&ircd.addr()).await;
    watcher.register("watcher").await;
    for (user, nick) in [("alice", "alicenick"), ("carolinetester", "carolnick")] {
        let id = f.add_user(user, "pw").await;
        f.add_network(
            id,
            NetworkSpec {
                name: "test".into(),
                addr: ircd.addr(),
                nick: nick.into(),
                ..NetworkSpec::default()
            },
        )
        .await;
        f.wait_connected(id, "test", 0).await;
        watcher.send(format!("WHOIS {nick}")).await;
        let whois = watcher
            .expect("311 RPL_WHOISUSER", |l| {
                l.is("311") && l.param_str(1) == nick
            })
            .await;
        assert_eq!(
            whois.param_str(2),
            ferry::ident::ident_name(user),
            "the network sees {user}'s ident name: {}",
            whois.raw_str()
        );
        assert_eq!(whois.param_str(3), ip.to_string());
    }
    assert_eq!(ferry::ident::ident_name("carolinetester").len(), 10);

    // Any other port pair: NO-USER.
    let mut s = tokio::net::TcpStream::connect(ident_addr).await.unwrap();
    s.write_all(b"1, 6667\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(answer, "1, 6667 : ERROR : NO-USER\r\n");
}
