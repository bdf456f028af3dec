//! Secrets at rest (issue 14): private file modes, SASL passwords sealed with a key
//! outside the store (surviving a restart and a key rotation, refused with the wrong
//! key), the admin token stored as a hash, `--sasl-password-stdin`, and read-only
//! commands that never create a store.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry::admin::NetworkSpec;
use ferry::secrets::KeySource;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fixtures::cli::{self, CliOut as Output, BIN};
use crate::fixtures::ferry::{Backend, Ferry, TestDb};
use crate::fixtures::ircd::{InspOpts, Ircd};

const PASSWORD: &str = "hunter22sealed";

/// Runs `ferry ARGS` in `cwd` with `stdin`.
async fn ferry_in(cwd: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .args(args)
        .env_remove("FERRY_SECRET_KEY")
        .env_remove("FERRY_SECRET_KEY_FILE")
        .env_remove("FERRY_DATABASE");
    cli::run(cmd, stdin, Duration::from_secs(60)).await
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Whether `needle` occurs in any of the SQLite files of `db` (the file, -wal, -shm).
fn in_sqlite_files(db: &Path, needle: &str) -> bool {
    ["", "-wal", "-shm"].iter().any(|suffix| {
        let f = format!("{}{suffix}", db.display());
        std::fs::read(&f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

async fn logged_in_as(ferry: &Ferry, account: &str) {
    let mut c = ferry.client("alice", "test", "secret", &[]).await;
    c.send("WHOIS alice").await;
    let l = c
        .expect("330 logged in as", |l| l.is("330") || l.is("318"))
        .await;
    assert!(l.is("330"), "not logged in: {}", l.raw_str());
    assert_eq!(l.param_str(2), account);
}

/// `ferry secrets rotate` with the real binary.
async fn rotate(cwd: &Path, url: &str, old: &Path, new: &Path) -> Output {
    ferry_in(
        cwd,
        &[
            "--database",
            url,
            "--secret-key-file",
            old.to_str().unwrap(),
            "--json",
            "secrets",
            "rotate",
            "--new-key-file",
            new.to_str().unwrap(),
        ],
        "",
    )
    .await
}

/// The stored SASL password is sealed (not in the store's files or row as text); the
/// network still logs in to a real InspIRCd + Anope after a restart and after
/// `ferry secrets rotate`; the old key is then refused with a clear error.
async fn sealed_sasl(backend: Backend) {
    let ircd = Ircd::inspircd(InspOpts {
        services: true,
        ..InspOpts::default()
    })
    .await;
    ircd.register_account("alice", PASSWORD).await;
    let db = TestDb::new(backend).await;
    let mut ferry = Ferry::start_on(db.clone(), |_| {}).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            id,
            NetworkSpec {
                name: "test".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                channels: vec!["#ferry".into()],
                sasl: Some(format!("alice:{PASSWORD}")),
                ..NetworkSpec::default()
            },
        )
        .await;
    ferry.wait_connected(id, "test", 1).await;
    logged_in_as(&ferry, "alice").await;

    let network = ferry.store().networks(id).await.unwrap().remove(0).id;
    let (plain, sealed) = ferry.store().raw_sasl_for_tests(network).await.unwrap();
    assert_eq!(plain, None);
    assert!(!sealed.unwrap().contains(PASSWORD));
    if backend == Backend::Sqlite {
        let path = db.url.strip_prefix("sqlite://").unwrap();
        assert!(!in_sqlite_files(Path::new(path), PASSWORD));
    }

    // A restart opens it again.
    ferry.restart().await;
    ferry.wait_connected(id, "test", 1).await;
    logged_in_as(&ferry, "alice").await;

    // Rotation with the real binary, nodes stopped (a running one is refused).
    let keys = tempfile::tempdir().unwrap();
    let new_key = keys.path().join("new.key");
    let old_key = db.key_file();
    let o = rotate(keys.path(), &db.url, &old_key, &new_key).await;
    assert!(
        !o.ok && o.stderr.contains("is running"),
        "rotating under a running node: {}",
        o.stderr
    );
    ferry.stop().await;
    let o = rotate(keys.path(), &db.url, &old_key, &new_key).await;
    assert!(o.ok, "{}", o.stderr);
    let report: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(report["resealed"], 1, "{report}");
    assert_eq!(mode(&new_key), 0o600);

    // The old key no longer opens the store's secrets: the node refuses to start.
    let err = ferry::server::Server::start(ferry.config.clone())
        .await
        .err()
        .expect("a node with the old key does not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("was sealed with secret key"), "{msg}");

    // With the new key it logs in as before.
    ferry.config.secret_key = KeySource::File(new_key.clone());
    ferry.restart().await;
    ferry.wait_connected(id, "test", 1).await;
    logged_in_as(&ferry, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_sasl_survives_restart_and_rotation_sqlite() {
    sealed_sasl(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_sasl_survives_restart_and_rotation_postgres() {
    sealed_sasl(Backend::Postgres).await;
}

/// A store an older Ferry left with the SASL password in plaintext (as migration
/// 0009 finds it): the node seals it at start, leaves no copy in the SQLite files,
/// and still logs in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_seals_plaintext_secrets_of_an_upgraded_store_at_start() {
    let ircd = Ircd::inspircd(InspOpts {
        services: true,
        ..InspOpts::default()
    })
    .await;
    ircd.register_account("alice", PASSWORD).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut ferry = Ferry::start_on(db.clone(), |_| {}).await;
    let id = ferry.add_user("alice", "secret").await;
    ferry
        .add_network(
            id,
            NetworkSpec {
                name: "test".into(),
                addr: ircd.addr(),
                nick: "alice".into(),
                sasl: Some("alice:placeholder".into()),
                ..NetworkSpec::default()
            },
        )
        .await;
    let network = ferry.store().networks(id).await.unwrap().remove(0).id;
    ferry.stop().await;
    let old = ferry::store::Store::open(&db.url).await.unwrap();
    old.store_plaintext_sasl_for_tests(network, PASSWORD)
        .await
        .unwrap();
    old.close().await;
    let path = db.url.strip_prefix("sqlite://").unwrap().to_owned();
    assert!(
        in_sqlite_files(Path::new(&path), PASSWORD),
        "the setup wrote it"
    );

    ferry.restart().await;
    let (plain, sealed) = ferry.store().raw_sasl_for_tests(network).await.unwrap();
    assert_eq!(plain, None);
    assert!(sealed.is_some_and(|s| !s.contains(PASSWORD)));
    assert!(!in_sqlite_files(Path::new(&path), PASSWORD));
    ferry.wait_connected(id, "test", 0).await;
    logged_in_as(&ferry, "alice").await;
}

/// The admin token is not in the store, only its hash; the admin API takes the token
/// the CLI derives with the key, and not what the store holds.
async fn admin_token_is_stored_as_a_hash(backend: Backend) {
    let ferry = Ferry::start(backend).await;
    ferry.add_user("alice", "secret").await;
    let token = &ferry.services().node.admin_token.token;
    let nodes = ferry.store().nodes().await.unwrap();
    let stored = &nodes[0].admin_token;
    assert!(!stored.contains(token.as_str()), "{stored}");
    let http = reqwest::Client::new();
    let get = |bearer: String| {
        http.get(format!("{}/api/admin/users", ferry.http_url()))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(get(token.clone()).await.unwrap().status(), 200);
    assert_eq!(get(stored.clone()).await.unwrap().status(), 401);

    // The CLI reaches the node with the key file; without it, it says why.
    let dir = tempfile::tempdir().unwrap();
    let key = ferry.db.key_file();
    let o = ferry_in(
        dir.path(),
        &[
            "--database",
            &ferry.db.url,
            "--secret-key-file",
            key.to_str().unwrap(),
            "--json",
            "user",
            "list",
        ],
        "",
    )
    .await;
    assert!(o.ok, "{}", o.stderr);
    let users: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["running"], true, "answered by the running node");
    let o = ferry_in(
        dir.path(),
        &[
            "--database",
            &ferry.db.url,
            "--secret-key-file",
            dir.path().join("none.key").to_str().unwrap(),
            "user",
            "list",
        ],
        "",
    )
    .await;
    assert!(
        !o.ok && o.stderr.contains("no secret key was given"),
        "{}",
        o.stderr
    );

    // A second node with a key of its own does not join.
    let mut other = crate::fixtures::ferry::test_config(&ferry.db);
    other.secret_key = KeySource::File(dir.path().join("other.key"));
    let err = ferry::server::Server::start(other)
        .await
        .err()
        .expect("a node with another key does not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("runs with secret key"), "{msg}");
}

on_both_backends!(admin_token_is_stored_as_a_hash);

/// The data directory is 0700; the database, its -wal and -shm and the key file
/// 0600, also when an older Ferry left them wider (tightened, with a warning).
#[tokio::test]
async fn store_files_are_private_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let o = ferry_in(dir.path(), &["user", "add", "alice"], "secret-pw\n").await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ferry.db")), 0o600);
    // As an older Ferry left them.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("ferry.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let log = dir.path().join("serve.log");
    let mut serve = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--http", "127.0.0.1:0", "--irc", "127.0.0.1:0"])
        .env_remove("FERRY_SECRET_KEY")
        .env_remove("FERRY_SECRET_KEY_FILE")
        .env_remove("FERRY_DATABASE")
        .env("FERRY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve prints its addresses")
        .unwrap()
        .expect("a banner line");
    assert_eq!(mode(&data), 0o700);
    for f in ["ferry.db", "ferry.db-wal", "ferry.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let key = dir.path().join("ferry-data.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("tightening to 700"), "{log}");
    assert!(log.contains("tightening to 600"), "{log}");
    serve.kill().await.unwrap();
}

/// `--sasl ACCOUNT --sasl-password-stdin` / `--sasl-password-file`: the password
/// never on the command line, and stored sealed.
#[tokio::test]
async fn sasl_password_from_stdin_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = ferry_in(dir.path(), &["user", "add", "alice"], "secret-pw\n").await;
    assert!(o.ok, "{}", o.stderr);
    let add = |name: &'static str, extra: Vec<String>, stdin: &'static str| {
        let cwd = dir.path().to_owned();
        async move {
            let mut args: Vec<String> = [
                "network",
                "add",
                "--user",
                "alice",
                "--name",
                name,
                "--addr",
                "127.0.0.1:1",
                "--nick",
                "alice",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ferry_in(&cwd, &args, stdin).await
        }
    };
    let o = add(
        "stdin",
        vec![
            "--sasl".into(),
            "alice".into(),
            "--sasl-password-stdin".into(),
        ],
        "pw-from-stdin-42\n",
    )
    .await;
    assert!(o.ok, "{}", o.stderr);
    let file = dir.path().join("pw");
    std::fs::write(&file, "pw-from-file-42\n").unwrap();
    let o = add(
        "file",
        vec![
            "--sasl".into(),
            "alice".into(),
            "--sasl-password-file".into(),
            file.display().to_string(),
        ],
        "",
    )
    .await;
    assert!(o.ok, "{}", o.stderr);
    // Both given: refused, nothing added.
    let o = add(
        "both",
        vec![
            "--sasl".into(),
            "alice:x".into(),
            "--sasl-password-stdin".into(),
        ],
        "y\n",
    )
    .await;
    assert!(
        !o.ok && o.stderr.contains("only the ACCOUNT"),
        "{}",
        o.stderr
    );

    let data = dir.path().join("ferry-data");
    let db = data.join("ferry.db");
    let key = ferry::secrets::SecretKey::load(&dir.path().join("ferry-data.key")).unwrap();
    let store = ferry::store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
        .with_secret_key(key);
    let user = store.user_by_name("alice").await.unwrap().unwrap();
    let nets = store.networks(user.id).await.unwrap();
    let pw = |name: &str| match &nets.iter().find(|n| n.name == name).unwrap().sasl {
        Some(ferry::store::Sasl::Plain { username, password }) => {
            (username.clone(), password.clone())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(nets.len(), 2);
    assert_eq!(pw("stdin"), ("alice".into(), "pw-from-stdin-42".into()));
    assert_eq!(pw("file"), ("alice".into(), "pw-from-file-42".into()));
    store.close().await;
    assert!(!in_sqlite_files(&db, "pw-from-"));
}

/// Read-only commands in a directory without a store fail clearly and create
/// nothing (no `ferry-data`, no key file).
#[tokio::test]
async fn read_only_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 6] = [
        &["search", "--user", "alice", "hello"],
        &["user", "list"],
        &["network", "list", "--user", "alice"],
        &["node", "list"],
        &["limits", "list"],
        &["migrate", "status"],
    ];
    for args in commands {
        let o = ferry_in(dir.path(), args, "").await;
        assert!(!o.ok, "{args:?} succeeded: {}", o.stdout);
        assert!(
            o.stderr.contains("no Ferry store at"),
            "{args:?}: {}",
            o.stderr
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "created {left:?}");
}
