//! Store tests; each runs once on SQLite and once on PostgreSQL, in its own database.

use std::future::Future;

use bytes::Bytes;
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// What a test gets: a fresh store, and the URL it was opened with.
struct Ctx {
    store: Store,
    url: String,
    kind: Kind,
}

impl Ctx {
    /// Runs `queries` on a connection of its own, outside the store (to take a store
    /// back to an older schema for an upgrade test).
    async fn run_raw(&self, queries: &[&str]) {
        match self.kind {
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                for q in queries {
                    sqlx::query(q).execute(&mut c).await.unwrap();
                }
                c.close().await.unwrap();
            }
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                for q in queries {
                    sqlx::query(q).execute(&mut c).await.unwrap();
                }
                c.close().await.unwrap();
            }
        }
    }
}

/// A store at `url` migrated only up to `version` (an older Ferry's), with
/// `inserts` run on it: the start of an upgrade test.
async fn migrate_up_to(kind: Kind, url: &str, version: i64, inserts: &[&str]) {
    let dir = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    };
    let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(&path))
        .await
        .unwrap();
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .iter()
            .filter(|m| m.version <= version)
            .cloned()
            .collect(),
    );
    match kind {
        Kind::Sqlite => {
            let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            let mut c = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true))
                .await
                .unwrap();
            migrator.run_direct(&mut c).await.unwrap();
            for q in inserts {
                sqlx::query(q).execute(&mut c).await.unwrap();
            }
            c.close().await.unwrap();
        }
        Kind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            migrator.run_direct(&mut c).await.unwrap();
            for q in inserts {
                sqlx::query(q).execute(&mut c).await.unwrap();
            }
            c.close().await.unwrap();
        }
    }
}

/// Runs `f` with the URL of an empty SQLite file or PostgreSQL database of its own
/// (not migrated), and cleans up, even when `f` panics.
async fn on_empty_db<F, Fut>(kind: Kind, f: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("old.db").display());
            let result = tokio::spawn(f(url)).await;
            drop(dir);
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Kind::Postgres => {
            let admin = pg_admin_url();
            let name = format!("ferry_test_{:016x}", rand::random::<u64>());
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let result = tokio::spawn(f(pg_url_for(&admin, &name))).await;
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

fn pg_admin_url() -> String {
    std::env::var("FERRY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `admin` with its database name replaced by `db`.
fn pg_url_for(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// Runs `f` on a fresh store of the given kind and cleans up, even when `f` panics.
async fn run<F, Fut>(kind: Kind, f: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("data/ferry.db").display());
            let store = Store::open(&url)
                .await
                .unwrap()
                .with_secret_key(crate::secrets::SecretKey::generate());
            let result = tokio::spawn(f(Ctx { store, url, kind })).await;
            drop(dir);
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Kind::Postgres => {
            let admin = pg_admin_url();
            let name = format!("ferry_test_{:016x}", rand::random::<u64>());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to FERRY_TEST_POSTGRES");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = pg_url_for(&admin, &name);
            let result = match Store::open(&url).await {
                Ok(store) => {
                    let store = store.with_secret_key(crate::secrets::SecretKey::generate());
                    let closer = store.clone();
                    let r = tokio::spawn(f(Ctx { store, url, kind })).await;
                    closer.close().await;
                    r.map_err(|e| e.into_panic())
                }
                Err(e) => Err(Box::new(format!("open: {e}")) as Box<dyn std::any::Any + Send>),
            };
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// Declares `#[tokio::test]`s `NAME::sqlite` and `NAME::postgres` for `async fn NAME(Ctx)`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::run(super::Kind::Sqlite, super::$name).await
            }
            #[tokio::test]
            async fn postgres() {
                super::run(super::Kind::Postgres, super::$name).await
            }
        }
    )*};
}

both!(
    open_and_schema,
    users,
    networks,
    channels_and_read_markers,
    history_paging,
    identical_lines_share_a_body,
    bytes_round_trip,
    search,
    search_is_per_user,
    search_finds_old_hits_in_order,
    targets,
    client_positions,
    client_positions_together,
    retention_by_age,
    retention_by_count,
    dropped_network_messages,
    writer_batches,
    writer_drains_on_shutdown,
    writer_wakes_for_a_flush_and_a_full_batch,
    writer_keeps_messages_while_db_fails,
    writer_holds_lines_while_riding_out,
    held_lines_survive_a_stop_and_are_replayed_once,
    nodes,
    sessions,
    ownership_compare_and_set,
    fencing_rejects_stale_epochs,
    adoptable_after_lease_and_margin,
    sealed_secrets,
    upgrade_seals_plaintext_secrets,
    away_settings_and_detached_channels,
    upgrade_adds_away_and_detached_defaults,
    upgrade_adds_seq_floor,
);

// Declared after `both!` so it can use the macro.
mod indexes;
mod invites;
mod limits;
mod push;
mod shared;

// ---- helpers ----

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

fn net(name: &str) -> NewNetwork {
    NewNetwork {
        name: name.into(),
        addr: "irc.example.org:6697".into(),
        tls: true,
        tls_verify: TlsVerify::Verify,
        nick: "ferry".into(),
        username: None,
        realname: None,
        sasl: None,
        source_ip: None,
        channels: vec![],
    }
}

/// A PRIVMSG to `buffer` at `t0 + secs`; identical arguments give identical raw bytes.
fn msg(
    user: UserId,
    seq: Seq,
    network: NetworkId,
    buffer: &str,
    secs: i64,
    sender: &str,
    text: &str,
) -> NewMessage {
    let time = t0() + Duration::seconds(secs);
    let raw = format!(
        "@time={} :{sender}!u@h PRIVMSG {buffer} :{text}",
        time.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    NewMessage {
        user_id: user,
        seq,
        network_id: network,
        buffer: buffer.as_bytes().to_vec(),
        buffer_key: buffer.to_ascii_lowercase().into_bytes(),
        time,
        sender: sender.into(),
        command: "PRIVMSG".into(),
        raw: Bytes::from(raw),
        text: text.into(),
        msgid: Some(format!("id-{secs}")),
        epoch: 0,
        stream: None,
    }
}

async fn user_and_net(s: &Store, name: &str) -> (UserId, NetworkId) {
    let u = s.create_user(name, "hash", false).await.unwrap();
    let n = s.create_network(u.id, &net("libera")).await.unwrap();
    (u.id, n.id)
}

fn seqs(v: &[StoredMessage]) -> Vec<Seq> {
    v.iter().map(|m| m.seq).collect()
}

fn hq(user: UserId, limit: i64) -> HistoryQuery {
    HistoryQuery {
        user,
        limit,
        ..Default::default()
    }
}

fn sq(user: UserId, text: &str) -> SearchQuery {
    SearchQuery {
        user,
        text: text.into(),
        limit: 100,
        ..Default::default()
    }
}

// ---- tests ----

/// The highest migration version shipped (both backends must agree), so adding a
/// migration does not mean editing this test.
fn latest_migration() -> i64 {
    let max = |dir: &str| {
        std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.split('_').next()?.parse::<i64>().ok()
            })
            .max()
            .unwrap()
    };
    let (sqlite, postgres) = (max("sqlite"), max("postgres"));
    assert_eq!(sqlite, postgres, "both backends have the same migrations");
    sqlite
}

async fn open_and_schema(t: Ctx) {
    let s = &t.store;
    assert_eq!(
        s.backend(),
        if t.kind == Kind::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    s.ping().await.unwrap();
    let latest = latest_migration();
    assert!(latest >= 3, "0003_cluster is applied");
    assert_eq!(s.schema_version().await.unwrap(), latest);

    // Opening again is a no-op migration.
    let again = Store::open(&t.url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), latest);
    again.close().await;

    assert!(matches!(
        Store::open("mysql://x/y").await,
        Err(StoreError::BadUrl(_))
    ));

    // A database migrated by a newer Ferry is refused.
    let insert =
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                  VALUES ($1, $2, $3, $4, $5)";
    match t.kind {
        Kind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
            sqlx::query(insert)
                .bind(9999i64)
                .bind("future")
                .bind(true)
                .bind(vec![0u8])
                .bind(0i64)
                .execute(&mut c)
                .await
                .unwrap();
        }
        Kind::Postgres => {
            let mut c = sqlx::PgConnection::connect(&t.url).await.unwrap();
            sqlx::query(insert)
                .bind(9999i64)
                .bind("future")
                .bind(true)
                .bind(vec![0u8])
                .bind(0i64)
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    match Store::open(&t.url).await {
        Err(StoreError::SchemaTooNew {
            found: 9999,
            supported,
        }) if supported == latest => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a database from the future"),
    }
}

#[tokio::test]
async fn sqlite_plain_path_creates_parent_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/ferry.db");
    let s = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(s.backend(), "sqlite");
    s.create_user("alice", "h", false).await.unwrap();
    s.close().await;
    assert!(path.exists());
    let s = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert!(s.user_by_name("alice").await.unwrap().is_some());
}

#[test]
fn fts5_queries_are_quoted() {
    use super::sqlite::fts5_query;
    assert_eq!(
        fts5_query("hello world").as_deref(),
        Some("\"hello\" AND \"world\"")
    );
    assert_eq!(fts5_query("\"foo").as_deref(), Some("\"\"\"foo\""));
    assert_eq!(fts5_query("a AND (").as_deref(), Some("\"a\" AND \"AND\""));
    assert_eq!(fts5_query("  ( ) * "), None);
}

async fn users(t: Ctx) {
    let s = &t.store;
    let before = Utc::now() - Duration::seconds(5);
    let alice = s.create_user("alice", "h1", true).await.unwrap();
    let bob = s.create_user("bob", "h2", false).await.unwrap();
    assert!(alice.is_admin && !bob.is_admin);
    assert!(alice.created_at >= before);
    assert_eq!(alice.retention, Retention::default());
    assert!(matches!(
        s.create_user("alice", "x", false).await,
        Err(StoreError::Conflict(_))
    ));

    assert_eq!(s.user(alice.id).await.unwrap().unwrap().name, "alice");
    assert_eq!(s.user_by_name("bob").await.unwrap().unwrap().id, bob.id);
    assert!(s.user_by_name("carol").await.unwrap().is_none());
    let names: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    s.set_password(bob.id, "h3").await.unwrap();
    let r = Retention {
        max_age_days: Some(30),
        max_messages: Some(1000),
    };
    s.set_retention(bob.id, r).await.unwrap();
    let b = s.user(bob.id).await.unwrap().unwrap();
    assert_eq!(b.password_hash, "h3");
    assert_eq!(b.retention, r);
    assert!(matches!(
        s.set_password(9999, "x").await,
        Err(StoreError::NotFound(_))
    ));

    // Deleting cascades to everything below the user.
    let n = s.create_network(bob.id, &net("libera")).await.unwrap();
    s.insert_messages(&[msg(bob.id, 1, n.id, "#rust", 0, "x", "hi")])
        .await
        .unwrap();
    s.set_client_position(n.id, "laptop", 1).await.unwrap();
    s.delete_user(bob.id).await.unwrap();
    assert!(s.user(bob.id).await.unwrap().is_none());
    assert!(s.network(n.id).await.unwrap().is_none());
    assert!(s.buffers(n.id).await.unwrap().is_empty());
    assert_eq!(s.last_seq(bob.id).await.unwrap(), 0);
    assert_eq!(s.client_position(n.id, "laptop").await.unwrap(), None);
    assert!(matches!(
        s.delete_user(bob.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.list_users().await.unwrap().len(), 1);
}

async fn networks(t: Ctx) {
    let s = &t.store;
    let u = s.create_user("alice", "h", false).await.unwrap();
    let pin = "ab".repeat(32);
    let new = NewNetwork {
        name: "libera".into(),
        addr: "irc.libera.chat:6697".into(),
        tls: true,
        tls_verify: TlsVerify::Pin(pin.clone()),
        nick: "alice".into(),
        username: Some("al".into()),
        realname: Some("Alice A.".into()),
        sasl: Some(Sasl::Plain {
            username: "alice".into(),
            password: "secret".into(),
        }),
        source_ip: Some("127.0.0.2".into()),
        channels: vec![
            (b"#Rust".to_vec(), b"#rust".to_vec(), None),
            (
                b"#secret".to_vec(),
                b"#secret".to_vec(),
                Some(b"k3y".to_vec()),
            ),
        ],
    };
    let n = s.create_network(u.id, &new).await.unwrap();
    assert_eq!(n.user_id, u.id);
    assert_eq!(n.tls_verify, TlsVerify::Pin(pin));
    assert_eq!(n.sasl, new.sasl);
    assert_eq!(n.username.as_deref(), Some("al"));
    assert_eq!(n.realname.as_deref(), Some("Alice A."));
    assert_eq!(n.source_ip.as_deref(), Some("127.0.0.2"));
    assert!(n.enabled && n.tls);
    assert!(matches!(
        s.create_network(u.id, &new).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_network(9999, &net("x")).await,
        Err(StoreError::NotFound(_))
    ));

    let bufs = s.buffers(n.id).await.unwrap();
    assert_eq!(bufs.len(), 2);
    assert_eq!(bufs[0].name, b"#Rust");
    assert_eq!(bufs[0].key, b"#rust");
    assert_eq!(bufs[0].kind, BufferKind::Channel);
    assert!(bufs[0].joined && bufs[1].joined);
    assert_eq!(bufs[1].chan_key.as_deref(), Some(&b"k3y"[..]));

    let other = NewNetwork {
        tls: false,
        tls_verify: TlsVerify::Insecure,
        sasl: Some(Sasl::External {
            cert_path: "/etc/ferry/cert.pem".into(),
        }),
        ..net("oftc")
    };
    let o = s.create_network(u.id, &other).await.unwrap();
    let o = s.network(o.id).await.unwrap().unwrap();
    assert_eq!(o.tls_verify, TlsVerify::Insecure);
    assert_eq!(o.sasl, other.sasl);
    assert!(!o.tls);
    assert!(o.username.is_none());

    let names: Vec<String> = s
        .networks(u.id)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["libera", "oftc"]);
    assert_eq!(
        s.network_by_name(u.id, "oftc").await.unwrap().unwrap().id,
        o.id
    );
    assert!(s.network_by_name(u.id, "efnet").await.unwrap().is_none());

    s.set_network_nick(n.id, "alice_").await.unwrap();
    assert_eq!(s.network(n.id).await.unwrap().unwrap().nick, "alice_");

    s.delete_network(o.id).await.unwrap();
    assert!(s.network(o.id).await.unwrap().is_none());
    assert!(matches!(
        s.delete_network(o.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.networks(u.id).await.unwrap().len(), 1);
}

async fn channels_and_read_markers(t: Ctx) {
    let s = &t.store;
    let (_, n) = user_and_net(s, "alice").await;
    s.set_channel(n, b"#Rust", b"#rust", true, Some(b"key"))
        .await
        .unwrap();
    s.set_channel(n, b"#RUST", b"#rust", false, None)
        .await
        .unwrap();
    s.set_channel(n, b"bob", b"bob", false, None).await.unwrap();
    let bufs = s.buffers(n).await.unwrap();
    assert_eq!(bufs.len(), 2);
    let rust = &bufs[0];
    assert_eq!(
        (rust.name.as_slice(), rust.key.as_slice()),
        (&b"#RUST"[..], &b"#rust"[..])
    );
    assert!(!rust.joined);
    assert_eq!(rust.chan_key, None);
    assert_eq!(rust.read_marker, 0);
    assert_eq!(bufs[1].kind, BufferKind::Query);
    for (name, kind) in [
        ("&local", BufferKind::Channel),
        ("!chan", BufferKind::Channel),
        ("+chan", BufferKind::Channel),
    ] {
        assert_eq!(BufferKind::of(name.as_bytes()), kind);
    }

    s.set_read_marker(n, b"#rust", 10).await.unwrap();
    s.set_read_marker(n, b"#rust", 5).await.unwrap();
    let read = |bufs: Vec<Buffer>, key: &[u8]| {
        bufs.into_iter().find(|b| b.key == key).unwrap().read_marker
    };
    assert_eq!(read(s.buffers(n).await.unwrap(), b"#rust"), 10);
    s.set_read_marker(n, b"#rust", 12).await.unwrap();
    assert_eq!(read(s.buffers(n).await.unwrap(), b"#rust"), 12);
    // set_channel does not reset the marker.
    s.set_channel(n, b"#rust", b"#rust", true, None)
        .await
        .unwrap();
    assert_eq!(read(s.buffers(n).await.unwrap(), b"#rust"), 12);
    // A marker on a buffer not seen yet creates it.
    s.set_read_marker(n, b"carol", 3).await.unwrap();
    assert_eq!(read(s.buffers(n).await.unwrap(), b"carol"), 3);
    assert!(matches!(
        s.set_channel(9999, b"#x", b"#x", true, None).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn history_paging(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let (_, n2) = {
        let o = s.create_network(u, &net("oftc")).await.unwrap();
        (u, o.id)
    };
    // seq 1..=40: odd in #a, even in #b, at t0 + seq seconds; 41..=45 on another network.
    let mut batch: Vec<NewMessage> = (1..=40)
        .map(|i| {
            msg(
                u,
                i,
                n,
                if i % 2 == 1 { "#a" } else { "#B" },
                i,
                "bob",
                &format!("line {i}"),
            )
        })
        .collect();
    batch.extend((41..=45).map(|i| msg(u, i, n2, "#a", i, "bob", &format!("other {i}"))));
    s.insert_messages(&batch).await.unwrap();
    assert_eq!(s.last_seq(u).await.unwrap(), 45);

    // Oldest first, paging forward with `after`.
    let p1 = s
        .history(&HistoryQuery {
            network: Some(n),
            ..hq(u, 15)
        })
        .await
        .unwrap();
    assert_eq!(seqs(&p1), (1..=15).collect::<Vec<_>>());
    let p2 = s
        .history(&HistoryQuery {
            network: Some(n),
            after: Some(15),
            ..hq(u, 100)
        })
        .await
        .unwrap();
    assert_eq!(seqs(&p2), (16..=40).collect::<Vec<_>>());
    assert_eq!(p1[0].buffer, b"#a");
    assert_eq!(p1[1].buffer, b"#B");
    assert_eq!(p1[0].text, "line 1");
    assert_eq!(p1[0].time, t0() + Duration::seconds(1));
    assert_eq!(p1[0].msgid.as_deref(), Some("id-1"));
    assert_eq!(p1[0].raw, batch[0].raw);
    assert_eq!(p1[0].network_id, n);

    // Newest first, paging back with `before`.
    let q = HistoryQuery {
        buffer_key: Some(b"#b".to_vec()),
        network: Some(n),
        newest_first: true,
        ..hq(u, 5)
    };
    let b1 = s.history(&q).await.unwrap();
    assert_eq!(seqs(&b1), [40, 38, 36, 34, 32]);
    let b2 = s
        .history(&HistoryQuery {
            before: Some(32),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(seqs(&b2), [30, 28, 26, 24, 22]);

    // Both bounds.
    let mid = s
        .history(&HistoryQuery {
            after: Some(10),
            before: Some(14),
            ..hq(u, 100)
        })
        .await
        .unwrap();
    assert_eq!(seqs(&mid), [11, 12, 13]);

    // Time bounds are inclusive.
    let tq = HistoryQuery {
        from: Some(t0() + Duration::seconds(20)),
        to: Some(t0() + Duration::seconds(23)),
        ..hq(u, 100)
    };
    assert_eq!(seqs(&s.history(&tq).await.unwrap()), [20, 21, 22, 23]);
    assert_eq!(
        seqs(
            &s.history(&HistoryQuery {
                newest_first: true,
                ..tq
            })
            .await
            .unwrap()
        ),
        [23, 22, 21, 20]
    );

    // Buffer key without network: both networks' #a.
    let all_a = s
        .history(&HistoryQuery {
            buffer_key: Some(b"#a".to_vec()),
            ..hq(u, 1000)
        })
        .await
        .unwrap();
    assert_eq!(all_a.len(), 25);
    let net2 = s
        .history(&HistoryQuery {
            network: Some(n2),
            ..hq(u, 1000)
        })
        .await
        .unwrap();
    assert_eq!(seqs(&net2), (41..=45).collect::<Vec<_>>());

    assert!(s.history(&hq(u, 0)).await.unwrap().is_empty());
    assert!(s.history(&hq(u + 1000, 10)).await.unwrap().is_empty());

    let b = s.buffers(n).await.unwrap();
    assert_eq!(b[0].key, b"#a");
    assert_eq!(b[0].last_message_at, Some(t0() + Duration::seconds(39)));
    assert_eq!(b[1].name, b"#B");
    assert_eq!(b[1].last_message_at, Some(t0() + Duration::seconds(40)));

    // Re-inserting a stored (user, seq) is a no-op, so retried batches are safe.
    s.insert_messages(&batch[..3]).await.unwrap();
    assert_eq!(s.history(&hq(u, 1000)).await.unwrap().len(), 45);
}

async fn identical_lines_share_a_body(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let line = |u, seq, n| NewMessage {
        msgid: Some("same".into()),
        ..msg(u, seq, n, "#rust", 5, "carol", "hello")
    };
    // The same line twice for alice (e.g. a repeated message) and once for bob.
    s.insert_messages(&[line(a, 1, na), line(a, 2, na), line(b, 1, nb)])
        .await
        .unwrap();
    assert_eq!(s.body_count().await.unwrap(), 1);
    assert_eq!(seqs(&s.history(&hq(a, 10)).await.unwrap()), [1, 2]);
    assert_eq!(seqs(&s.history(&hq(b, 10)).await.unwrap()), [1]);
    // A later batch with the same line reuses the body.
    s.insert_messages(&[line(b, 2, nb)]).await.unwrap();
    assert_eq!(s.body_count().await.unwrap(), 1);
    s.insert_messages(&[msg(b, 3, nb, "#rust", 6, "carol", "hello")])
        .await
        .unwrap();
    assert_eq!(s.body_count().await.unwrap(), 2);
}

async fn bytes_round_trip(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let latin1: &[u8] = b":bob!u@h PRIVMSG #caf\xe9 :\xe9t\xe9";
    let m = NewMessage {
        buffer: b"#caf\xe9".to_vec(),
        buffer_key: b"#caf\xe9".to_vec(),
        raw: Bytes::from_static(latin1),
        text: "été".into(),
        ..msg(u, 1, n, "#x", 1, "bob", "")
    };
    let with_nul = NewMessage {
        raw: Bytes::from_static(b":bob!u@h PRIVMSG #caf\xe9 :a\x00b"),
        text: "a\0b nulled".into(),
        seq: 2,
        ..m.clone()
    };
    let raw_only = NewMessage {
        raw: Bytes::from_static(b"\xe9t\xe9"),
        text: "x".into(),
        seq: 3,
        ..m.clone()
    };
    s.insert_messages(&[m, with_nul, raw_only]).await.unwrap();
    let h = s.history(&hq(u, 10)).await.unwrap();
    assert_eq!(h[0].raw, Bytes::from_static(latin1));
    assert_eq!(h[0].buffer, b"#caf\xe9");
    assert_eq!(h[0].text, "été");
    assert_eq!(
        h[1].raw,
        Bytes::from_static(b":bob!u@h PRIVMSG #caf\xe9 :a\x00b")
    );
    let expected = if t.kind == Kind::Sqlite {
        "a\0b nulled"
    } else {
        "ab nulled"
    };
    assert_eq!(h[1].text, expected);
    assert_eq!(h[2].raw, Bytes::from_static(b"\xe9t\xe9"));
    let bufs = s.buffers(n).await.unwrap();
    assert_eq!(bufs[0].name, b"#caf\xe9");
    let found = s.search(&sq(u, "nulled")).await.unwrap();
    assert_eq!(seqs(&found), [2]);
    assert_eq!(seqs(&s.search(&sq(u, "été")).await.unwrap()), [1]);
}

async fn search(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let n2 = s.create_network(u, &net("oftc")).await.unwrap().id;
    s.insert_messages(&[
        msg(u, 1, n, "#rust", 10, "Bob", "the borrow checker is happy"),
        msg(u, 2, n, "#rust", 20, "carol", "Borrow checker errors again"),
        msg(u, 3, n, "#go", 30, "bob", "no borrow checker here"),
        msg(u, 4, n2, "#rust", 40, "bob", "borrow checker on oftc"),
        msg(u, 5, n, "#rust", 50, "bob", "unrelated line"),
        msg(
            u,
            6,
            n,
            "#rust",
            60,
            "dave",
            "quotes \"borrow\" and (parens) AND more",
        ),
    ])
    .await
    .unwrap();

    // All terms must match, case-insensitively; newest first.
    assert_eq!(
        seqs(&s.search(&sq(u, "borrow checker")).await.unwrap()),
        [4, 3, 2, 1]
    );
    assert_eq!(seqs(&s.search(&sq(u, "CHECKER happy")).await.unwrap()), [1]);
    assert_eq!(
        seqs(&s.search(&sq(u, "borrow")).await.unwrap()),
        [6, 4, 3, 2, 1]
    );
    assert!(s
        .search(&sq(u, "nothing-like-this"))
        .await
        .unwrap()
        .is_empty());

    // Hostile query syntax never errors.
    for q in [
        "\"foo",
        "a AND (",
        "borrow AND (",
        "*",
        "NEAR(a b)",
        "-borrow",
        "text:borrow",
        "'",
        "\\",
        "\"\"",
        "((",
        "^x",
        "borrow OR",
        "a:b:c",
        "  ",
        "",
        "\u{0}",
    ] {
        s.search(&sq(u, q))
            .await
            .unwrap_or_else(|e| panic!("query {q:?}: {e}"));
    }
    assert_eq!(
        seqs(&s.search(&sq(u, "\"borrow\" (parens)")).await.unwrap()),
        [6]
    );

    // Filters.
    let f = |q: SearchQuery| async move { seqs(&s.search(&q).await.unwrap()) };
    assert_eq!(
        f(SearchQuery {
            network: Some(n2),
            ..sq(u, "borrow")
        })
        .await,
        [4]
    );
    assert_eq!(
        f(SearchQuery {
            network: Some(n),
            buffer_key: Some(b"#rust".to_vec()),
            ..sq(u, "borrow")
        })
        .await,
        [6, 2, 1]
    );
    assert_eq!(
        f(SearchQuery {
            sender: Some("BOB".into()),
            ..sq(u, "borrow")
        })
        .await,
        [4, 3, 1]
    );
    assert_eq!(
        f(SearchQuery {
            from: Some(t0() + Duration::seconds(20)),
            to: Some(t0() + Duration::seconds(40)),
            ..sq(u, "borrow")
        })
        .await,
        [4, 3, 2]
    );
    assert_eq!(
        f(SearchQuery {
            before: Some(4),
            limit: 2,
            ..sq(u, "borrow")
        })
        .await,
        [3, 2]
    );
    assert!(f(SearchQuery {
        limit: 0,
        ..sq(u, "borrow")
    })
    .await
    .is_empty());
    let hit = &s.search(&sq(u, "happy")).await.unwrap()[0];
    assert_eq!(
        (hit.sender.as_str(), hit.buffer.as_slice()),
        ("Bob", &b"#rust"[..])
    );
}

/// Hits far older than the newest bodies, and more hits than one round takes
/// (PostgreSQL searches the newest body ids first and widens; a store test's first
/// window is 4 bodies), still come back complete, newest first, and page by `before`.
async fn search_finds_old_hits_in_order(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let mut batch = vec![
        msg(u, 1, n, "#old", 1, "bob", "ancient needle"),
        msg(u, 2, n, "#old", 2, "bob", "hay in old"),
    ];
    // 300 lines in #busy that all say "hay", then 100 lines of filler.
    for i in 0..400 {
        let text = if i < 300 {
            format!("hay {i}")
        } else {
            format!("filler {i}")
        };
        batch.push(msg(u, 3 + i, n, "#busy", 3 + i, "carol", &text));
    }
    s.insert_messages(&batch).await.unwrap();

    // Behind 400 newer bodies.
    assert_eq!(seqs(&s.search(&sq(u, "needle")).await.unwrap()), [1]);
    // The filter leaves one old row of a word 300 newer bodies also match.
    let old_hay = SearchQuery {
        buffer_key: Some(b"#old".to_vec()),
        limit: 10,
        ..sq(u, "hay")
    };
    assert_eq!(seqs(&s.search(&old_hay).await.unwrap()), [2]);
    let hay = s.search(&sq(u, "hay")).await.unwrap();
    assert_eq!(seqs(&hay), (203..=302).rev().collect::<Vec<Seq>>());
    // Paging past everything the first rounds see.
    let page = s
        .search(&SearchQuery {
            before: Some(10),
            limit: 5,
            ..sq(u, "hay")
        })
        .await
        .unwrap();
    assert_eq!(seqs(&page), [9, 8, 7, 6, 5]);
    let last = s
        .search(&SearchQuery {
            before: Some(5),
            ..sq(u, "hay")
        })
        .await
        .unwrap();
    assert_eq!(seqs(&last), [4, 3, 2]);
}

async fn search_is_per_user(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    // Both see the same channel line (one shared body); alice also has a private one.
    s.insert_messages(&[
        msg(a, 1, na, "#rust", 1, "carol", "shared secret sauce"),
        msg(b, 1, nb, "#rust", 1, "carol", "shared secret sauce"),
        msg(a, 2, na, "dave", 2, "dave", "private secret"),
    ])
    .await
    .unwrap();
    assert_eq!(s.body_count().await.unwrap(), 2);
    let hits = s.search(&sq(b, "secret")).await.unwrap();
    assert_eq!(seqs(&hits), [1]);
    assert!(hits.iter().all(|m| m.network_id == nb));
    assert_eq!(seqs(&s.search(&sq(a, "secret")).await.unwrap()), [2, 1]);
    assert!(s.search(&sq(b, "private")).await.unwrap().is_empty());
    // Even naming alice's network does not leak her rows to bob.
    assert!(s
        .search(&SearchQuery {
            network: Some(na),
            ..sq(b, "secret")
        })
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .history(&HistoryQuery {
            network: Some(na),
            ..hq(b, 10)
        })
        .await
        .unwrap()
        .is_empty());
}

async fn targets(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let (v, nv) = user_and_net(s, "bob").await;
    s.insert_messages(&[
        msg(u, 1, n, "#a", 10, "x", "1"),
        msg(u, 2, n, "#b", 20, "x", "2"),
        msg(u, 3, n, "#a", 30, "x", "3"),
        msg(u, 4, n, "carol", 40, "carol", "4"),
        msg(u, 5, n, "#c", 100, "x", "5"),
        msg(v, 1, nv, "#z", 35, "x", "6"),
    ])
    .await
    .unwrap();
    let at = |s| t0() + Duration::seconds(s);
    let got = s.targets(u, n, at(0), at(50), 10).await.unwrap();
    assert_eq!(
        got,
        vec![
            (b"carol".to_vec(), at(40)),
            (b"#a".to_vec(), at(30)),
            (b"#b".to_vec(), at(20))
        ]
    );
    // The window bounds which messages count, and limit applies.
    let got = s.targets(u, n, at(15), at(25), 10).await.unwrap();
    assert_eq!(got, vec![(b"#b".to_vec(), at(20))]);
    assert_eq!(s.targets(u, n, at(0), at(1000), 2).await.unwrap().len(), 2);
    assert!(s
        .targets(u, nv, at(0), at(1000), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn client_positions(t: Ctx) {
    let s = &t.store;
    let (_, n) = user_and_net(s, "alice").await;
    assert_eq!(s.client_position(n, "laptop").await.unwrap(), None);
    s.set_client_position(n, "laptop", 5).await.unwrap();
    s.set_client_position(n, "laptop", 3).await.unwrap();
    assert_eq!(s.client_position(n, "laptop").await.unwrap(), Some(5));
    s.set_client_position(n, "laptop", 9).await.unwrap();
    s.set_client_position(n, "phone", 1).await.unwrap();
    assert_eq!(s.client_position(n, "laptop").await.unwrap(), Some(9));
    assert_eq!(s.client_position(n, "phone").await.unwrap(), Some(1));
    assert!(matches!(
        s.set_client_position(9999, "x", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn client_positions_together(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (_, gone) = user_and_net(s, "bob").await;
    let e1 = s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let stale = Fence {
        user: a,
        node: "n1".into(),
        epoch: e1,
    };
    let e2 = s.assign_user(a, Some("n2"), e1).await.unwrap().unwrap();
    let live = Fence {
        user: a,
        node: "n2".into(),
        epoch: e2,
    };
    s.delete_network(gone).await.unwrap();
    // One transaction: the owner's rows are written, a stale owner's and a deleted
    // network's are skipped without failing the rest; positions only move forward.
    s.set_client_position(na, "laptop", 9).await.unwrap();
    let wrote = s
        .set_client_positions_fenced(&[
            (live.clone(), na, "laptop".into(), 4),
            (stale.clone(), na, "phone".into(), 7),
            (live.clone(), gone, "laptop".into(), 3),
            (live.clone(), na, "tablet".into(), 5),
        ])
        .await
        .unwrap();
    assert_eq!(wrote, [false, false, false, true]);
    assert_eq!(s.client_position(na, "laptop").await.unwrap(), Some(9));
    assert_eq!(s.client_position(na, "phone").await.unwrap(), None);
    assert_eq!(s.client_position(na, "tablet").await.unwrap(), Some(5));

    // The node's positions: many clients noted, written in chunks by one flush;
    // the newest noted position per client wins.
    let p = Positions::new(s.clone(), crate::lease::Lease::forever());
    let clients = super::positions::CHUNK + 88;
    for i in 0..clients {
        p.note(&live, na, &format!("c{i}"), 1);
        p.note(&live, na, &format!("c{i}"), 10 + i as i64);
        p.note(&live, na, &format!("c{i}"), 2);
    }
    assert_eq!(p.pending(), clients);
    assert_eq!(p.flush().await.unwrap(), clients);
    assert_eq!(p.pending(), 0);
    let st = p.stats();
    assert_eq!((st.batches, st.rows, st.errors), (2, clients as u64, 0));
    for i in [0, clients / 2, clients - 1] {
        assert_eq!(
            s.client_position(na, &format!("c{i}")).await.unwrap(),
            Some(10 + i as i64)
        );
    }
    // Saved at once (a client closing): what was noted up to there is not written
    // again; a newer noted one is.
    p.note(&live, na, "c0", 2000);
    assert!(p.save_now(&live, na, "c0", 2000).await.unwrap());
    assert_eq!(p.pending(), 0);
    p.note(&live, na, "c1", 3000);
    assert!(p.save_now(&live, na, "c1", 2500).await.unwrap());
    assert_eq!(p.pending(), 1);
    p.flush().await.unwrap();
    assert_eq!(s.client_position(na, "c1").await.unwrap(), Some(3000));
    // A stale owner's noted position is dropped, not retried.
    p.note(&stale, na, "c2", 9999);
    assert_eq!(p.flush().await.unwrap(), 1);
    assert_eq!(p.pending(), 0);
    assert_eq!(
        s.client_position(na, "c2").await.unwrap(),
        Some(10 + 2),
        "fenced"
    );
    // A store gone away: the flush fails and keeps what it took, newest first.
    let broken = Store::open(&t.url).await.unwrap();
    broken.close().await;
    let p = Positions::new(broken, crate::lease::Lease::forever());
    p.note(&live, na, "c3", 50_000);
    assert!(p.flush().await.is_err());
    p.note(&live, na, "c3", 40_000);
    assert_eq!(p.pending(), 1);
    assert_eq!(p.stats().errors, 1);
}

async fn retention_by_age(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let day = 86_400;
    s.insert_messages(&[
        msg(a, 1, na, "#r", 0, "x", "ancient shared"),
        msg(a, 2, na, "#r", 1, "x", "ancient private"),
        msg(a, 3, na, "#r", 9 * day, "x", "recent"),
        msg(b, 1, nb, "#r", 0, "x", "ancient shared"),
    ])
    .await
    .unwrap();
    assert_eq!(s.body_count().await.unwrap(), 3);
    let now = t0() + Duration::seconds(10 * day);
    // Nobody has a limit yet.
    assert_eq!(s.enforce_retention(now).await.unwrap(), 0);
    s.set_retention(
        a,
        Retention {
            max_age_days: Some(7),
            max_messages: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.enforce_retention(now).await.unwrap(), 2);
    assert_eq!(seqs(&s.history(&hq(a, 10)).await.unwrap()), [3]);
    // Bob keeps his copy of the shared line; alice's private body is collected.
    assert_eq!(seqs(&s.history(&hq(b, 10)).await.unwrap()), [1]);
    assert_eq!(s.body_count().await.unwrap(), 2);
    assert!(s.search(&sq(a, "ancient")).await.unwrap().is_empty());
    assert_eq!(seqs(&s.search(&sq(b, "ancient")).await.unwrap()), [1]);
    // Bob's deletion frees the last body reference.
    s.delete_user(b).await.unwrap();
    assert_eq!(s.enforce_retention(now).await.unwrap(), 0);
    assert_eq!(s.body_count().await.unwrap(), 1);
    // New lines with a collected body's bytes get a new body.
    s.insert_messages(&[msg(a, 4, na, "#r", 0, "x", "ancient private")])
        .await
        .unwrap();
    assert_eq!(seqs(&s.search(&sq(a, "ancient")).await.unwrap()), [4]);
}

async fn retention_by_count(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let batch: Vec<NewMessage> = (1..=20)
        .flat_map(|i| {
            [
                msg(a, i, na, "#r", i, "x", &format!("m{i}")),
                msg(b, i, nb, "#r", i, "x", &format!("m{i}")),
            ]
        })
        .collect();
    s.insert_messages(&batch).await.unwrap();
    assert_eq!(s.body_count().await.unwrap(), 20);
    s.set_retention(
        a,
        Retention {
            max_age_days: None,
            max_messages: Some(5),
        },
    )
    .await
    .unwrap();
    s.set_retention(
        b,
        Retention {
            max_age_days: None,
            max_messages: Some(100),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 15);
    assert_eq!(
        seqs(&s.history(&hq(a, 100)).await.unwrap()),
        [16, 17, 18, 19, 20]
    );
    assert_eq!(s.history(&hq(b, 100)).await.unwrap().len(), 20);
    assert_eq!(s.body_count().await.unwrap(), 20);
    s.set_retention(
        b,
        Retention {
            max_age_days: None,
            max_messages: Some(10),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 10);
    assert_eq!(s.body_count().await.unwrap(), 10);
    // Idempotent.
    assert_eq!(s.enforce_retention(t0()).await.unwrap(), 0);
    assert_eq!(s.last_seq(a).await.unwrap(), 20);
}

async fn dropped_network_messages(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, _) = user_and_net(s, "bob").await;
    // A network that is gone, and one that is not bob's: skipped, the rest stored.
    s.insert_messages(&[
        msg(a, 1, 9999, "#r", 1, "x", "gone"),
        msg(b, 1, na, "#r", 1, "x", "wrong owner"),
        msg(a, 2, na, "#r", 2, "x", "ok"),
    ])
    .await
    .unwrap();
    assert_eq!(seqs(&s.history(&hq(a, 10)).await.unwrap()), [2]);
    assert!(s.history(&hq(b, 10)).await.unwrap().is_empty());
}

async fn writer_batches(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_batch: 2048,
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    let mut tasks = Vec::new();
    for (u, n) in [(a, na), (b, nb)] {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            for i in 1..=5000 {
                let chan = if i % 3 == 0 { "#one" } else { "#two" };
                w.write(msg(u, i, n, chan, i, "x", &format!("line {}", i % 100)))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    w.flush().await.unwrap();
    assert_eq!(s.last_seq(a).await.unwrap(), 5000);
    assert_eq!(s.last_seq(b).await.unwrap(), 5000);
    assert_eq!(s.history(&hq(a, 10_000)).await.unwrap().len(), 5000);
    assert_eq!(seqs(&s.history(&hq(b, 3)).await.unwrap()), [1, 2, 3]);
    let stats = w.stats();
    assert_eq!(stats.messages, 10_000);
    assert!(stats.batches >= 5, "batches are at most 2048: {stats:?}");
    assert!(
        stats.batches <= 200,
        "expected far fewer batches than messages: {stats:?}"
    );
    assert_eq!((stats.errors, stats.dropped), (0, 0));
    // A flush with nothing pending resolves at once.
    w.flush().await.unwrap();
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(
        w.write(msg(a, 5001, na, "#one", 1, "x", "late")).await,
        Err(WriterClosed)
    );
    assert_eq!(w.flush().await, Err(WriterClosed));
}

async fn writer_drains_on_shutdown(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_batch: 10,
        max_delay: std::time::Duration::from_secs(3600),
        queue: 1000,
        outage: OutageConfig::default(),
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    for i in 1..=105 {
        w.write(msg(a, i, na, "#r", i, "x", "drain")).await.unwrap();
    }
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(s.last_seq(a).await.unwrap(), 105);
    assert_eq!(s.history(&hq(a, 1000)).await.unwrap().len(), 105);
    assert_eq!(w.stats().messages, 105);
}

/// The writer gathering a batch sleeps until its deadline instead of waking per
/// message; a flush and a batch's worth of queued messages still wake it (with an
/// hour's deadline, only the wake-ups can commit within the test).
async fn writer_wakes_for_a_flush_and_a_full_batch(t: Ctx) {
    use std::time::Duration as Std;
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let shutdown = CancellationToken::new();
    let cfg = WriterConfig {
        max_batch: 10,
        max_delay: Std::from_secs(3600),
        queue: 1000,
        outage: OutageConfig::default(),
        ..WriterConfig::default()
    };
    let (w, handle) = Writer::spawn(s.clone(), cfg, shutdown.clone());
    for i in 1..=3 {
        w.write(msg(a, i, na, "#w", i, "x", "flushed"))
            .await
            .unwrap();
    }
    tokio::time::timeout(Std::from_secs(60), w.flush())
        .await
        .expect("a flush wakes the writer")
        .unwrap();
    assert_eq!(s.last_seq(a).await.unwrap(), 3);
    // A batch's worth queued while the writer sleeps, nobody flushing: committed
    // without the deadline. First one line, taken into the next batch...
    w.write(msg(a, 4, na, "#w", 4, "x", "full")).await.unwrap();
    let taken = async {
        while w.queued() > 0 {
            tokio::time::sleep(Std::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Std::from_secs(60), taken)
        .await
        .unwrap();
    // ... then the rest of a batch.
    for i in 5..=13 {
        w.write(msg(a, i, na, "#w", i, "x", "full")).await.unwrap();
    }
    let committed = async {
        while w.stats().messages < 13 {
            tokio::time::sleep(Std::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Std::from_secs(60), committed)
        .await
        .expect("a full batch wakes the writer");
    assert_eq!(s.last_seq(a).await.unwrap(), 13);
    shutdown.cancel();
    handle.await.unwrap();
}

async fn writer_keeps_messages_while_db_fails(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    // A store whose pool is closed fails every write, like a database gone away.
    let broken = Store::open(&t.url).await.unwrap();
    broken.close().await;
    let shutdown = CancellationToken::new();
    let (w, handle) = Writer::spawn(broken, WriterConfig::default(), shutdown.clone());
    for i in 1..=3 {
        w.write(msg(a, i, na, "#r", i, "x", "kept")).await.unwrap();
    }
    let flush = tokio::spawn({
        let w = w.clone();
        async move { w.flush().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Still retrying, nothing dropped, the flush still waits.
    assert!(!flush.is_finished());
    let stats = w.stats();
    assert!(stats.errors >= 2, "{stats:?}");
    assert_eq!((stats.dropped, stats.messages), (0, 0));
    // Only shutdown makes it give up, and it says so.
    shutdown.cancel();
    assert_eq!(flush.await.unwrap(), Err(WriterClosed));
    handle.await.unwrap();
    assert_eq!(w.stats().dropped, 3);
    assert_eq!(s.last_seq(a).await.unwrap(), 0);
}

/// Riding out a store outage the fenced writer holds every line (memory, then the
/// spill file), writes them back in order with their ids and times once the lease is
/// renewed, and drops what it holds once the lease is lost.
async fn writer_holds_lines_while_riding_out(t: Ctx) {
    use std::time::{Duration as Std, Instant};
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let epoch = s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let lease = crate::lease::Lease::new();
    // A lease renewed into the past holds until 1 µs after it was made.
    tokio::time::sleep(Std::from_millis(2)).await;
    let lapse =
        |l: &crate::lease::Lease| l.renew(Instant::now() - Std::from_secs(2), Std::from_secs(1));
    lapse(&lease);
    lease.ride_out();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        outage: OutageConfig {
            memory_lines: 2,
            spill_bytes: 1 << 20,
            spill_path: Some(dir.path().join("w.spill")),
            ..OutageConfig::default()
        },
        ..WriterConfig::default()
    };
    let (lost, _lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (w, handle) = Writer::spawn_fenced(
        s.clone(),
        cfg,
        shutdown.clone(),
        WriterFence {
            node: "n1".into(),
            lease: lease.clone(),
            lost,
        },
    );
    let line = |i: i64| {
        let mut m = msg(a, i, na, "#r", i, "x", &format!("l{i}"));
        m.epoch = epoch;
        m
    };
    for i in 1..=5 {
        w.write(line(i)).await.unwrap();
    }
    let flush = tokio::spawn({
        let w = w.clone();
        async move { w.flush().await }
    });
    let deadline = Instant::now() + Std::from_secs(30);
    while w.metrics().held_lines.get() < 5 {
        assert!(Instant::now() < deadline, "lines never held");
        tokio::time::sleep(Std::from_millis(20)).await;
    }
    assert!(!flush.is_finished(), "a flush waits for the store");
    assert!(w.metrics().spill_bytes.get() > 0, "3 lines spilled");
    assert_eq!(s.last_seq(a).await.unwrap(), 0, "nothing written meanwhile");
    assert_eq!(w.stats().fenced, 0, "held, not fenced");

    // The store is back: the heartbeat renews the lease.
    lease.renew(Instant::now(), Std::from_secs(60));
    assert_eq!(flush.await.unwrap(), Ok(()));
    let got = s.history(&hq(a, 100)).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.text, format!("l{}", i + 1));
        assert_eq!(
            m.time,
            t0() + Duration::seconds(i as i64 + 1),
            "original time"
        );
    }
    assert_eq!(w.metrics().held_lines.get(), 0);
    assert_eq!(w.metrics().spill_bytes.get(), 0);

    // The lease is lost (not riding out): nothing more is written.
    lapse(&lease);
    w.write(line(6)).await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(w.stats().fenced, 1);
    assert_eq!(s.last_seq(a).await.unwrap(), 5);
    shutdown.cancel();
    handle.await.unwrap();
}

/// A node that stops with the store away keeps its held lines in the spill file;
/// the next start writes them back once, with their ids, and sets aside the lines of
/// a user another node adopted meanwhile (their ids may be taken).
async fn held_lines_survive_a_stop_and_are_replayed_once(t: Ctx) {
    use std::time::{Duration as Std, Instant};
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let ea = s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let eb = s.assign_user(b, Some("n1"), 0).await.unwrap().unwrap();
    let lease = crate::lease::Lease::new();
    tokio::time::sleep(Std::from_millis(2)).await;
    lease.renew(Instant::now() - Std::from_secs(2), Std::from_secs(1));
    lease.ride_out();
    let dir = tempfile::tempdir().unwrap();
    let outage = OutageConfig {
        memory_lines: 2,
        spill_bytes: 1 << 20,
        spill_path: Some(dir.path().join("n1.spill")),
        node: "n1".into(),
        store: "test".into(),
    };
    let (lost, _lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (w, handle) = Writer::spawn_fenced(
        s.clone(),
        WriterConfig {
            outage: outage.clone(),
            ..WriterConfig::default()
        },
        shutdown.clone(),
        WriterFence {
            node: "n1".into(),
            lease: lease.clone(),
            lost,
        },
    );
    let line = |u: UserId, n: NetworkId, e: i64, i: i64| {
        let mut m = msg(u, i, n, "#r", i, "x", &format!("l{i}"));
        m.epoch = e;
        m
    };
    for i in 1..=4 {
        w.write(line(a, na, ea, i)).await.unwrap();
    }
    for i in 1..=2 {
        w.write(line(b, nb, eb, i)).await.unwrap();
    }
    let deadline = Instant::now() + Std::from_secs(30);
    while w.metrics().held_lines.get() < 6 {
        assert!(Instant::now() < deadline, "lines never held");
        tokio::time::sleep(Std::from_millis(20)).await;
    }
    // A clean stop with the store away: kept, not dropped.
    shutdown.cancel();
    handle.await.unwrap();
    assert_eq!(w.stats().dropped, 0);
    assert!(outage::spill_pending(&outage));
    assert_eq!(s.last_seq(a).await.unwrap(), 0, "nothing written meanwhile");

    // Meanwhile another node took bob over (a failover: n1 never released him). It
    // reserved ids above his stored lines, so his held lines keep their ids and land
    // before anything the new owner numbers.
    s.adopt_user(b, "n2", eb).await.unwrap().unwrap();
    let floor = s.seq_floor(b).await.unwrap();
    assert_eq!(
        floor,
        crate::store::SEQ_RESERVE,
        "nothing of bob's was stored"
    );
    assert_eq!(
        s.seq_base(b).await.unwrap(),
        floor - 1,
        "n2 numbers from the floor"
    );
    let r = outage::replay(s, &outage).await.unwrap();
    assert_eq!(
        r,
        outage::Replayed {
            lines: 6,
            gaps: 0,
            set_aside: 0
        }
    );
    let got = s.history(&hq(a, 100)).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert_eq!(got[0].text, "l1");
    assert_eq!(got[3].time, t0() + Duration::seconds(4), "original time");
    assert_eq!(seqs(&s.history(&hq(b, 100)).await.unwrap()), vec![1, 2]);
    assert_eq!(
        s.seq_base(b).await.unwrap(),
        floor - 1,
        "the floor still holds"
    );
    // A clean release and claim, or a planned hand-over, reserves nothing; nor
    // does adopting a released user.
    let ea2 = s.owner(a).await.unwrap().unwrap().epoch;
    let ea3 = s.assign_user(a, None, ea2).await.unwrap().unwrap();
    s.adopt_user(a, "n2", ea3).await.unwrap().unwrap();
    s.assign_user(a, Some("n1"), ea3 + 1)
        .await
        .unwrap()
        .unwrap();
    s.assign_user(a, Some("n2"), ea3 + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.seq_floor(a).await.unwrap(), 0);
    assert_eq!(s.seq_base(a).await.unwrap(), 4);
    // A take-over from a node that still held the user reserves.
    s.adopt_user(a, "n1", ea3 + 3).await.unwrap().unwrap();
    let ea = ea3 + 4;
    assert_eq!(
        s.seq_floor(a).await.unwrap(),
        4 + crate::store::SEQ_RESERVE,
        "a take-over reserves above the newest stored line"
    );

    // An adopter without a reservation (an older node): the held lines of a user it
    // took over cannot keep their ids; they are set aside, not written.
    let mut held = outage::Held::new(outage.clone());
    held.push((5..=6).map(|i| line(b, nb, eb, i)));
    drop(held);
    let r = outage::replay(s, &outage).await.unwrap();
    assert_eq!(
        r,
        outage::Replayed {
            lines: 2,
            gaps: 0,
            set_aside: 0
        },
        "below the floor: written"
    );
    t.run_raw(&["UPDATE user_owners SET seq_floor = 0"]).await;
    let mut held = outage::Held::new(outage.clone());
    held.push((7..=8).map(|i| line(b, nb, eb, i)));
    drop(held);
    let r = outage::replay(s, &outage).await.unwrap();
    assert_eq!(
        r,
        outage::Replayed {
            lines: 0,
            gaps: 0,
            set_aside: 2
        }
    );
    assert_eq!(
        seqs(&s.history(&hq(b, 100)).await.unwrap()),
        vec![1, 2, 5, 6]
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("set-aside"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = outage::read_spill(&dir.path().join(&aside[0])).unwrap();
    assert_eq!(
        kept.lines.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 8]
    );
    assert!(!outage::spill_pending(&outage), "the spill file is emptied");
    assert_eq!(
        outage::replay(s, &outage).await.unwrap(),
        outage::Replayed::default()
    );

    // A replay cut short (a crash after a first part was stored) is done again:
    // what was stored is skipped by its id, the rest lands once.
    let mut held = outage::Held::new(outage.clone());
    held.push((5..=8).map(|i| line(a, na, ea, i)));
    drop(held);
    s.insert_messages(&[line(a, na, ea, 5), line(a, na, ea, 6)])
        .await
        .unwrap();
    let r = outage::replay(s, &outage).await.unwrap();
    assert_eq!(r.lines, 4);
    let got = s.history(&hq(a, 100)).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6, 7, 8]);

    // A file of another node is refused and kept.
    let mut held = outage::Held::new(OutageConfig {
        node: "n9".into(),
        ..outage.clone()
    });
    held.push([line(a, na, ea, 9)]);
    drop(held);
    let e = outage::replay(s, &outage).await.unwrap_err();
    assert!(e.to_string().contains("belongs to node \"n9\""), "{e}");
    assert!(outage::spill_pending(&outage));
    assert_eq!(s.last_seq(a).await.unwrap(), 8);
}

async fn nodes(t: Ctx) {
    let s = &t.store;
    let started = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    let node = |id: &str| NodeRecord {
        id: id.into(),
        admin_url: format!("http://127.0.0.1:9000/{id}"),
        admin_token: "tok".into(),
        http_addr: "127.0.0.1:8080".into(),
        irc_addr: "127.0.0.1:6667".into(),
        version: "0.1.0".into(),
        state: "running".into(),
        started_at: started,
        heartbeat_at: DateTime::<Utc>::MIN_UTC,
        source_ips: vec!["127.0.0.2".into(), "127.0.0.3".into()],
        schema_version: 3,
        config_fingerprint: "abc".into(),
        fd_limit: 1024,
        fd_budget: 900,
        health: NodeHealth::default(),
        lease_expires_at: DateTime::<Utc>::MIN_UTC,
    };
    let lease = std::time::Duration::from_secs(10);
    let before = Utc::now() - Duration::seconds(5);
    s.register_node(&node("n1"), lease).await.unwrap();
    s.register_node(&node("n2"), lease).await.unwrap();
    s.register_node(
        &NodeRecord {
            state: "draining".into(),
            ..node("n1")
        },
        lease,
    )
    .await
    .unwrap();
    let list = s.nodes().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, "n1");
    assert_eq!(list[0].state, "draining");
    assert_eq!(list[0].started_at, started);
    assert_eq!(list[0].admin_url, "http://127.0.0.1:9000/n1");
    assert!(list[0].heartbeat_at >= before);
    let hb = list[1].heartbeat_at;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let health = NodeHealth {
        users: 2,
        sessions: 3,
        sessions_per_network: [("irc.example:6667".to_owned(), 3)].into(),
        sessions_per_ip: [("127.0.0.2".to_owned(), 3)].into(),
        loop_lag_ms: 4,
        rss_bytes: 5,
        key_load: [(
            "irc.example".to_owned(),
            KeyLoad {
                held: 3,
                waiting: 2,
            },
        )]
        .into(),
    };
    assert!(s.heartbeat_node("n2", &health, lease).await.unwrap());
    let n2 = s.nodes().await.unwrap().remove(1);
    assert!(n2.heartbeat_at > hb);
    assert_eq!(n2.health, health);
    assert_eq!(n2.source_ips, ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(
        (n2.fd_limit, n2.fd_budget, n2.schema_version),
        (1024, 900, 3)
    );
    let left = n2.lease_expires_at - Utc::now();
    assert!(
        left > Duration::seconds(8) && left <= Duration::seconds(11),
        "{left}"
    );
    // Unknown (or dead) nodes are told to register again.
    assert!(!s.heartbeat_node("n3", &health, lease).await.unwrap());
    s.set_node_state("n2", node_state::DEAD).await.unwrap();
    assert!(!s.heartbeat_node("n2", &health, lease).await.unwrap());
    s.remove_node("n1").await.unwrap();
    let ids: Vec<String> = s.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["n2"]);
}

async fn ownership_compare_and_set(t: Ctx) {
    let s = &t.store;
    let (a, _) = user_and_net(s, "alice").await;
    let o = s.owner(a).await.unwrap().unwrap();
    assert_eq!(
        (o.node_id.as_deref(), o.epoch),
        (None, 0),
        "new users are unowned"
    );
    assert_eq!(s.assign_user(a, Some("n1"), 0).await.unwrap(), Some(1));
    // A second claim with the same expected epoch loses.
    assert_eq!(s.assign_user(a, Some("n2"), 0).await.unwrap(), None);
    assert_eq!(
        s.owner(a).await.unwrap().unwrap().node_id.as_deref(),
        Some("n1")
    );
    assert_eq!(s.assign_user(a, Some("n2"), 1).await.unwrap(), Some(2));
    let owned: Vec<_> = s.owned_users("n2").await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(
        (owned[0].user_id, owned[0].epoch, &owned[0].user_name[..]),
        (a, 2, "alice")
    );
    assert!(s.owned_users("n1").await.unwrap().is_empty());
    // The one-row summary matches the owner rows.
    let (b, _) = user_and_net(s, "bob").await;
    assert_eq!(s.assign_user(b, Some("n2"), 0).await.unwrap(), Some(1));
    assert_eq!(
        s.owned_fingerprint("n2").await.unwrap(),
        OwnedFingerprint {
            count: 2,
            epochs: 3,
            users: a + b
        }
    );
    assert_eq!(
        s.owned_fingerprint("n1").await.unwrap(),
        OwnedFingerprint::default()
    );
    assert_eq!(s.assign_user(b, None, 1).await.unwrap(), Some(2));
    assert_eq!(s.release_node_users("n2").await.unwrap(), 1);
    let o = s.owner(a).await.unwrap().unwrap();
    assert_eq!((o.node_id, o.epoch), (None, 3));
    assert_eq!(
        s.assign_user(9999, Some("n1"), 0).await.unwrap(),
        None,
        "no such user"
    );
    assert!(s.owner(9999).await.unwrap().is_none());
}

async fn fencing_rejects_stale_epochs(t: Ctx) {
    let s = &t.store;
    let (a, na) = user_and_net(s, "alice").await;
    let (b, nb) = user_and_net(s, "bob").await;
    let ea = s.assign_user(a, Some("n1"), 0).await.unwrap().unwrap();
    let eb = s.assign_user(b, Some("n1"), 0).await.unwrap().unwrap();
    let with = |mut m: NewMessage, e| {
        m.epoch = e;
        m
    };
    // Alice moves to n2: n1's batch keeps bob's message and refuses alice's.
    let ea2 = s.assign_user(a, Some("n2"), ea).await.unwrap().unwrap();
    let lost = s
        .insert_messages_fenced(
            "n1",
            &[
                with(msg(a, 1, na, "#c", 0, "x", "stale"), ea),
                with(msg(b, 1, nb, "#c", 0, "x", "fine"), eb),
            ],
        )
        .await
        .unwrap();
    assert_eq!(lost, [a]);
    assert_eq!(
        s.last_seq(a).await.unwrap(),
        0,
        "nothing of the stale epoch is stored"
    );
    assert_eq!(s.last_seq(b).await.unwrap(), 1);
    // The right node with the wrong epoch is refused too; the owner writes.
    let stale_epoch_same_node = s
        .insert_messages_fenced("n2", &[with(msg(a, 1, na, "#c", 0, "x", "old"), ea)])
        .await
        .unwrap();
    assert_eq!(stale_epoch_same_node, [a]);
    assert!(s
        .insert_messages_fenced("n2", &[with(msg(a, 1, na, "#c", 0, "x", "new"), ea2)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.last_seq(a).await.unwrap(), 1);

    // Other actor writes are fenced the same way.
    let stale = Fence {
        user: a,
        node: "n1".into(),
        epoch: ea,
    };
    let live = Fence {
        user: a,
        node: "n2".into(),
        epoch: ea2,
    };
    assert!(!s
        .set_channel_fenced(&stale, na, b"#x", b"#x", true, None)
        .await
        .unwrap());
    assert!(s.buffers(na).await.unwrap().iter().all(|b| b.key != b"#x"));
    assert!(s
        .set_channel_fenced(&live, na, b"#x", b"#x", true, None)
        .await
        .unwrap());
    assert!(s
        .buffers(na)
        .await
        .unwrap()
        .iter()
        .any(|b| b.key == b"#x" && b.joined));
    assert!(!s
        .set_network_nick_fenced(&stale, na, "stale")
        .await
        .unwrap());
    assert!(s
        .set_network_nick_fenced(&live, na, "alice2")
        .await
        .unwrap());
    assert_eq!(s.network(na).await.unwrap().unwrap().nick, "alice2");
    assert!(!s
        .set_client_position_fenced(&stale, na, "laptop", 5)
        .await
        .unwrap());
    assert_eq!(s.client_position(na, "laptop").await.unwrap(), None);
    assert!(s
        .set_client_position_fenced(&live, na, "laptop", 5)
        .await
        .unwrap());
    assert_eq!(s.client_position(na, "laptop").await.unwrap(), Some(5));
    // The detached flag: the stale owner writes nothing, the live one does; a buffer
    // that does not exist is an error, not a fence.
    assert!(!s
        .set_detached_fenced(&stale, na, b"#x", true, Some(ReattachOn::None))
        .await
        .unwrap());
    let x = |bs: Vec<crate::store::Buffer>| bs.into_iter().find(|b| b.key == b"#x").unwrap();
    let b = x(s.buffers(na).await.unwrap());
    assert!(!b.detached);
    assert_eq!(b.reattach_on, ReattachOn::Highlight);
    assert!(s
        .set_detached_fenced(&live, na, b"#x", true, Some(ReattachOn::None))
        .await
        .unwrap());
    let b = x(s.buffers(na).await.unwrap());
    assert!(b.detached);
    assert_eq!(b.reattach_on, ReattachOn::None);
    assert!(!s
        .set_detached_fenced(&stale, na, b"#x", false, None)
        .await
        .unwrap());
    assert!(x(s.buffers(na).await.unwrap()).detached);
    assert!(matches!(
        s.set_detached_fenced(&live, na, b"#nowhere", true, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn adoptable_after_lease_and_margin(t: Ctx) {
    let s = &t.store;
    let (a, _) = user_and_net(s, "alice").await;
    let (b, _) = user_and_net(s, "bob").await;
    let rec = |id: &str| NodeRecord {
        id: id.into(),
        admin_url: String::new(),
        admin_token: String::new(),
        http_addr: String::new(),
        irc_addr: String::new(),
        version: "0".into(),
        state: node_state::ACTIVE.into(),
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
        source_ips: Vec::new(),
        schema_version: 3,
        config_fingerprint: String::new(),
        fd_limit: 1024,
        fd_budget: 900,
        health: NodeHealth::default(),
        lease_expires_at: Utc::now(),
    };
    let short = std::time::Duration::from_millis(1);
    s.register_node(&rec("gone"), short).await.unwrap();
    s.register_node(&rec("live"), std::time::Duration::from_secs(60))
        .await
        .unwrap();
    s.assign_user(a, Some("gone"), 0).await.unwrap().unwrap();
    s.assign_user(b, Some("live"), 0).await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // A lapsed node keeps its users until a failover round declares it dead.
    let margin = std::time::Duration::from_secs(30);
    let zero = std::time::Duration::ZERO;
    assert!(s.adoptable_users().await.unwrap().is_empty());
    assert!(!s.adoption_pending().await.unwrap());
    assert!(s.lapsed_nodes(margin).await.unwrap().is_empty());
    assert_eq!(s.lapsed_nodes(zero).await.unwrap(), ["gone"]);
    // Its heartbeat is stale: a failover round asks it whether it fenced.
    let suspects: Vec<String> = s
        .suspect_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(suspects, ["gone"]);
    assert_eq!(s.live_active_nodes().await.unwrap(), ["live"]);
    // Declaring it dead is a compare-and-set on the lease seen, past the margin.
    let gone = s.nodes().await.unwrap().remove(0);
    assert_eq!(gone.id, "gone");
    assert!(!s
        .mark_node_dead("gone", gone.lease_expires_at, margin)
        .await
        .unwrap());
    let other = gone.lease_expires_at - chrono::Duration::milliseconds(1);
    assert!(!s.mark_node_dead("gone", other, zero).await.unwrap());
    assert!(!s
        .mark_node_dead("live", s.nodes().await.unwrap()[1].lease_expires_at, zero)
        .await
        .unwrap());
    assert!(s
        .mark_node_dead("gone", gone.lease_expires_at, zero)
        .await
        .unwrap());
    assert_eq!(s.nodes().await.unwrap()[0].state, node_state::DEAD);
    // A node that lapsed but was never declared dead renews its lease.
    s.register_node(&rec("kept"), short).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(s
        .heartbeat_node(
            "kept",
            &NodeHealth::default(),
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap());
    assert!(s.node_is_live("kept").await.unwrap());
    // A dead node's heartbeat is refused: it registers again with nothing.
    assert!(!s
        .heartbeat_node(
            "gone",
            &NodeHealth::default(),
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap());
    let ids: Vec<UserId> = s
        .adoptable_users()
        .await
        .unwrap()
        .iter()
        .map(|o| o.user_id)
        .collect();
    assert_eq!(ids, [a]);
    // Once its user is adopted, nothing is pending.
    assert!(s.adoption_pending().await.unwrap());
    s.assign_user(a, Some("live"), 1).await.unwrap().unwrap();
    assert!(!s.adoption_pending().await.unwrap());
    // An unowned user is pending.
    s.release_node_users("live").await.unwrap();
    assert!(s.adoption_pending().await.unwrap());
}

#[test]
fn pg_urls() {
    assert_eq!(
        pg_url_for("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        pg_url_for("postgres://h:1/db?sslmode=disable", "x"),
        "postgres://h:1/x?sslmode=disable"
    );
    assert_eq!(pg_url_for("postgres://h", "x"), "postgres://h/x");
}

async fn sessions(t: Ctx) {
    let s = &t.store;
    let alice = s.create_user("alice", "h", false).await.unwrap();
    let ttl = chrono::Duration::days(30);
    let life = chrono::Duration::days(90);
    let (a, b) = ([1u8; 32], [2u8; 32]);
    s.create_session(alice.id, &a, t0(), ttl).await.unwrap();
    s.create_session(alice.id, &b, t0(), chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert!(matches!(
        s.create_session(9999, &[3u8; 32], t0(), ttl).await,
        Err(StoreError::NotFound(_))
    ));

    // Used within a minute: valid, not rewritten.
    let soon = t0() + chrono::Duration::seconds(30);
    assert_eq!(
        s.use_session(&a, soon, ttl, life).await.unwrap(),
        Some(alice.id)
    );
    assert_eq!(s.session(&a).await.unwrap().unwrap().last_used_at, t0());
    // Later: the expiry slides.
    let later = t0() + chrono::Duration::days(10);
    assert_eq!(
        s.use_session(&a, later, ttl, life).await.unwrap(),
        Some(alice.id)
    );
    let row = s.session(&a).await.unwrap().unwrap();
    assert_eq!((row.last_used_at, row.expires_at), (later, later + ttl));
    // `b` expired after a minute unused.
    assert_eq!(s.use_session(&b, later, ttl, life).await.unwrap(), None);
    assert_eq!(s.delete_expired_sessions(later).await.unwrap(), 1);
    assert!(s.session(&b).await.unwrap().is_none());
    assert_eq!(
        s.use_session(&[9u8; 32], later, ttl, life).await.unwrap(),
        None
    );

    s.delete_session(&a).await.unwrap();
    assert_eq!(s.use_session(&a, later, ttl, life).await.unwrap(), None);
    s.delete_session(&a).await.unwrap();

    // The absolute lifetime: sliding stops at created + lifetime, and then it ends.
    s.create_session(alice.id, &a, t0(), ttl).await.unwrap();
    let life = chrono::Duration::days(12);
    assert_eq!(
        s.use_session(&a, later, ttl, life).await.unwrap(),
        Some(alice.id)
    );
    let row = s.session(&a).await.unwrap().unwrap();
    assert_eq!(
        row.expires_at,
        t0() + life,
        "never slides past the lifetime"
    );
    let past = t0() + life + chrono::Duration::seconds(1);
    assert_eq!(s.use_session(&a, past, ttl, life).await.unwrap(), None);

    // A password change ends every other session of the user.
    let c = [4u8; 32];
    s.create_session(alice.id, &b, t0(), ttl).await.unwrap();
    s.create_session(alice.id, &c, t0(), ttl).await.unwrap();
    assert_eq!(s.delete_user_sessions(alice.id, Some(&c)).await.unwrap(), 2);
    assert!(s.session(&a).await.unwrap().is_none());
    assert!(s.session(&c).await.unwrap().is_some());
    assert_eq!(s.delete_user_sessions(alice.id, None).await.unwrap(), 1);
    s.delete_session(&a).await.unwrap();

    // Sessions go with their user.
    s.create_session(alice.id, &a, t0(), ttl).await.unwrap();
    s.delete_user(alice.id).await.unwrap();
    assert!(s.session(&a).await.unwrap().is_none());
}

fn sasl_network(password: &str) -> NewNetwork {
    NewNetwork {
        name: "libera".into(),
        addr: "irc.libera.chat:6697".into(),
        tls: true,
        tls_verify: TlsVerify::Verify,
        nick: "alice".into(),
        username: None,
        realname: None,
        sasl: Some(Sasl::Plain {
            username: "alice".into(),
            password: password.into(),
        }),
        source_ip: None,
        channels: vec![],
    }
}

/// A SASL password is stored sealed; it opens with the key only; a rotation reseals it.
async fn sealed_secrets(t: Ctx) {
    use crate::secrets::{SecretError, SecretKey};
    let s = &t.store;
    let u = s.create_user("alice", "h", false).await.unwrap();
    let n = s
        .create_network(u.id, &sasl_network("pw-sealed-0xC0FFEE"))
        .await
        .unwrap();
    let (plain, sealed) = s.raw_sasl_for_tests(n.id).await.unwrap();
    assert_eq!(plain, None);
    let sealed = sealed.expect("sealed");
    assert!(!sealed.contains("pw-sealed"), "{sealed}");
    assert!(sealed.starts_with(&format!("v1:{}:", s.secret_key().unwrap().id())));
    let got = s.network(n.id).await.unwrap().unwrap();
    assert_eq!(got.sasl, sasl_network("pw-sealed-0xC0FFEE").sasl);

    // Without the key, or with another one: an error, never a wrong password.
    let bare = Store::open(&t.url).await.unwrap();
    assert!(matches!(
        bare.network(n.id).await,
        Err(StoreError::Secret(SecretError::NoKey { .. }))
    ));
    assert!(matches!(
        bare.create_network(
            u.id,
            &NewNetwork {
                name: "x".into(),
                ..sasl_network("p")
            }
        )
        .await,
        Err(StoreError::Secret(SecretError::NoKey { .. }))
    ));
    let other = bare.clone().with_secret_key(SecretKey::generate());
    assert!(matches!(
        other.networks(u.id).await,
        Err(StoreError::Secret(SecretError::WrongKey { .. }))
    ));
    assert!(matches!(
        other.seal_secrets().await,
        Err(StoreError::Secret(SecretError::WrongKey { .. }))
    ));

    // Rotation: all values under the new key; the old one no longer opens them.
    let new = SecretKey::generate();
    assert_eq!(s.rotate_secrets(&new).await.unwrap(), 1);
    assert!(s.network(n.id).await.is_err());
    let rotated = bare.clone().with_secret_key(new);
    assert_eq!(
        rotated.network(n.id).await.unwrap().unwrap().sasl,
        sasl_network("pw-sealed-0xC0FFEE").sasl
    );
    assert_eq!(
        rotated.seal_secrets().await.unwrap(),
        SecretsReport {
            sealed_now: 0,
            already_sealed: 1
        }
    );
    bare.close().await;
}

/// A store from before migration 0009 holding a plaintext SASL password: opened by
/// this Ferry, migrated, and sealed at the first start; nothing of it left in plain.
async fn upgrade_seals_plaintext_secrets(t: Ctx) {
    let s = &t.store;
    let u = s.create_user("alice", "h", false).await.unwrap();
    let n = s
        .create_network(u.id, &sasl_network("placeholder"))
        .await
        .unwrap();
    let key = s.secret_key().unwrap().clone();
    s.close().await;
    // Back to schema 0007/0008: no `sasl_sealed`, the password in plaintext.
    let downgrade = [
        "UPDATE networks SET sasl_password = 'old-plain-pw-0xBEEF'",
        "ALTER TABLE networks DROP COLUMN sasl_sealed",
        "DELETE FROM _sqlx_migrations WHERE version = 9",
    ];
    t.run_raw(&downgrade).await;
    let s = Store::open(&t.url).await.unwrap().with_secret_key(key);
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    // Readable before the pass (a CLI on a store no node has started yet).
    let before = s.network(n.id).await.unwrap().unwrap();
    assert_eq!(before.sasl, sasl_network("old-plain-pw-0xBEEF").sasl);
    let report = s.seal_secrets().await.unwrap();
    assert_eq!(report.sealed_now, 1);
    assert_eq!(s.seal_secrets().await.unwrap().sealed_now, 0, "idempotent");
    let (plain, sealed) = s.raw_sasl_for_tests(n.id).await.unwrap();
    assert_eq!(plain, None);
    assert!(!sealed.unwrap().contains("old-plain-pw"));
    assert_eq!(
        s.network(n.id).await.unwrap().unwrap().sasl,
        sasl_network("old-plain-pw-0xBEEF").sasl
    );
    if t.kind == Kind::Sqlite {
        s.close().await;
        let path = t.url.strip_prefix("sqlite://").unwrap();
        for f in [path.to_owned(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&f) {
                assert!(
                    !bytes.windows(11).any(|w| w == b"old-plain-p"),
                    "plaintext left in {f}"
                );
            }
        }
    }
}

/// Auto-away settings and detached channels (migration 0011): stored, read back,
/// refused for what does not exist.
async fn away_settings_and_detached_channels(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    assert_eq!(s.away_settings(u).await.unwrap(), AwaySettings::default());
    let mine = AwaySettings {
        auto_away: false,
        away_message: Some("on a boat".into()),
    };
    s.set_away_settings(u, &mine).await.unwrap();
    assert_eq!(s.away_settings(u).await.unwrap(), mine);
    assert!(matches!(
        s.away_settings(u + 999).await,
        Err(StoreError::NotFound(_))
    ));

    s.set_channel(n, b"#Rust", b"#rust", true, None)
        .await
        .unwrap();
    let b = &s.buffers(n).await.unwrap()[0];
    assert!(!b.detached);
    assert_eq!(b.reattach_on, ReattachOn::Highlight);
    s.set_detached(n, b"#rust", true, Some(ReattachOn::Message))
        .await
        .unwrap();
    let b = &s.buffers(n).await.unwrap()[0];
    assert!(b.detached && b.joined);
    assert_eq!(b.reattach_on, ReattachOn::Message);
    // Attached again: what attaches it by itself stays as set.
    s.set_detached(n, b"#rust", false, None).await.unwrap();
    let b = &s.buffers(n).await.unwrap()[0];
    assert!(!b.detached);
    assert_eq!(b.reattach_on, ReattachOn::Message);
    // A membership change keeps the flag.
    s.set_detached(n, b"#rust", true, None).await.unwrap();
    s.set_channel(n, b"#rust", b"#rust", true, Some(b"k"))
        .await
        .unwrap();
    assert!(s.buffers(n).await.unwrap()[0].detached);
    assert!(matches!(
        s.set_detached(n, b"#nowhere", true, None).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A store from before migration 0011, with a user and a channel: opened by this
/// Ferry, migrated; the user has auto-away on with the default text, the channel is
/// attached and reattaches on highlight.
async fn upgrade_adds_away_and_detached_defaults(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    s.set_channel(n, b"#old", b"#old", true, None)
        .await
        .unwrap();
    let key = s.secret_key().unwrap().clone();
    s.close().await;
    let downgrade = [
        "ALTER TABLE users DROP COLUMN auto_away",
        "ALTER TABLE users DROP COLUMN away_message",
        "ALTER TABLE buffers DROP COLUMN detached",
        "ALTER TABLE buffers DROP COLUMN reattach_on",
        "DELETE FROM _sqlx_migrations WHERE version = 11",
    ];
    t.run_raw(&downgrade).await;
    let s = Store::open(&t.url).await.unwrap().with_secret_key(key);
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    assert_eq!(s.away_settings(u).await.unwrap(), AwaySettings::default());
    let b = &s.buffers(n).await.unwrap()[0];
    assert!(b.joined && !b.detached);
    assert_eq!(b.reattach_on, ReattachOn::Highlight);
    s.set_detached(n, b"#old", true, None).await.unwrap();
    assert!(s.buffers(n).await.unwrap()[0].detached);
    s.close().await;
}

/// A store from before migration 0017: owners keep their epochs, nobody has a floor,
/// and a take-over afterwards reserves ids as on a new store.
async fn upgrade_adds_seq_floor(t: Ctx) {
    let s = &t.store;
    let (u, n) = user_and_net(s, "alice").await;
    let e = s.assign_user(u, Some("n1"), 0).await.unwrap().unwrap();
    s.insert_messages(&[msg(u, 7, n, "#r", 1, "x", "old line")])
        .await
        .unwrap();
    let key = s.secret_key().unwrap().clone();
    s.close().await;
    let downgrade = [
        "ALTER TABLE user_owners DROP COLUMN seq_floor",
        "DELETE FROM _sqlx_migrations WHERE version = 17",
    ];
    t.run_raw(&downgrade).await;
    let s = Store::open(&t.url).await.unwrap().with_secret_key(key);
    assert_eq!(s.schema_version().await.unwrap(), latest_migration());
    assert_eq!(s.owner(u).await.unwrap().unwrap().epoch, e);
    assert_eq!(s.seq_floor(u).await.unwrap(), 0);
    assert_eq!(s.seq_base(u).await.unwrap(), 7);
    s.adopt_user(u, "n2", e).await.unwrap().unwrap();
    assert_eq!(s.seq_base(u).await.unwrap(), 7 + SEQ_RESERVE - 1);
    s.close().await;
}
