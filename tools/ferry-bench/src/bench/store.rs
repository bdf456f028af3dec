//! Benchmark 7: store growth per delivery. All N users in one channel, each with an
//! attached client (the throughput benchmark's scenario); speakers on the ircd send M
//! lines; the store's size is read before and after the measured window, once Ferry
//! has settled (its `/metrics`: every line handed to the writer committed), and the
//! growth is divided by the deliveries (N × M). Ferry on SQLite and on PostgreSQL (a
//! scratch database on `FERRY_BENCH_POSTGRES`, dropped afterwards).
//!
//! - SQLite: `page_count × page_size` (the database as of its last commit, WAL
//!   included), read through a read-only connection while the node runs; per table
//!   and index from the `dbstat` virtual table. After the node stopped, the file
//!   (main + WAL after `PRAGMA wal_checkpoint(TRUNCATE)`) as a cross-check.
//! - PostgreSQL: `pg_database_size` after `CHECKPOINT`; per table `pg_table_size`
//!   (heap, TOAST, free-space and visibility maps) and per index `pg_relation_size`;
//!   WAL generated in the window as the difference of `pg_current_wal_lsn()`, with
//!   `pg_stat_wal`'s records and full-page images. WAL is the server's, not the
//!   database's: other databases' row changes in the window (`pg_stat_database`) are
//!   reported next to it, to show whether it is clean.
//!
//! Bytes do not depend on the machine's load; the run reports no time figures.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use tokio_util::sync::CancellationToken;

use super::scratch::Scratch;
use super::throughput::{join_speakers, send_lines};
use super::{attach_all, round2, settle, settle_limit, Ctx, Section, Target};
use crate::bouncer::{wait_members, wait_members_below, Bouncer, FerryOpts, Layout};
use crate::ircd::Ircd;
use crate::loadgen::Recorder;

const CHANNEL: &str = "#store";

/// One table or index.
#[derive(Clone, Debug, serde::Serialize)]
struct Rel {
    /// The table it belongs to (itself for a table).
    table: String,
    /// `table` or `index` (SQLite: a `WITHOUT ROWID` table is its primary key's
    /// B-tree; FTS5's shadow tables count as the virtual table's).
    kind: &'static str,
    bytes: i64,
}

/// The store's size at one moment.
#[derive(Clone, Debug, Default)]
struct StoreSize {
    /// SQLite: `page_count × page_size`; PostgreSQL: `pg_database_size`.
    total: i64,
    rels: BTreeMap<String, Rel>,
    messages: i64,
    bodies: i64,
    /// SQLite: free pages in bytes (part of `total`, in no relation).
    free: Option<i64>,
    /// SQLite: the WAL file's size when read (not part of `total`).
    wal_file: Option<i64>,
}

/// PostgreSQL's WAL at one moment. `lsn` is exact; the others are cumulative
/// statistics, which backends flush at most once a second and idle ones after 10 s
/// (PostgreSQL 15), so [`STATS_FLUSH`] is waited out before reading them.
#[derive(Clone, Copy, Debug)]
struct Wal {
    /// `pg_current_wal_lsn()` in bytes: WAL written by the whole server.
    lsn: i64,
    /// `pg_stat_wal.wal_records` and `wal_fpi` (full-page images), server-wide.
    records: i64,
    fpi: i64,
    /// Inserted + updated + deleted rows of every other database (`pg_stat_database`):
    /// non-zero means the WAL figures include someone else's writes.
    other_changes: i64,
}

/// Longer than PostgreSQL's idle statistics flush interval (10 s).
const STATS_FLUSH: Duration = Duration::from_secs(11);

enum Probe {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Probe {
    fn new(url: &str) -> Probe {
        match url.strip_prefix("sqlite://") {
            Some(path) => Probe::Sqlite(path.into()),
            None => Probe::Postgres(url.to_string()),
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            Probe::Sqlite(_) => "sqlite",
            Probe::Postgres(_) => "postgres",
        }
    }

    /// The sizes now (PostgreSQL: after a `CHECKPOINT`).
    async fn sizes(&self) -> anyhow::Result<StoreSize> {
        match self {
            Probe::Sqlite(path) => sqlite_sizes(path).await,
            Probe::Postgres(url) => pg_sizes(url).await,
        }
    }

    /// PostgreSQL: the server's WAL position and counters, and the row changes of
    /// the other databases so far.
    async fn wal(&self) -> anyhow::Result<Option<Wal>> {
        let Probe::Postgres(url) = self else {
            return Ok(None);
        };
        let mut c = sqlx::PgConnection::connect(url).await?;
        let row = sqlx::query(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
                    (SELECT wal_records FROM pg_stat_wal)::bigint,
                    (SELECT wal_fpi FROM pg_stat_wal)::bigint,
                    (SELECT coalesce(sum(tup_inserted + tup_updated + tup_deleted), 0)::bigint
                       FROM pg_stat_database WHERE datname IS DISTINCT FROM current_database())",
        )
        .fetch_one(&mut c)
        .await?;
        c.close().await?;
        Ok(Some(Wal {
            lsn: row.try_get(0)?,
            records: row.try_get(1)?,
            fpi: row.try_get(2)?,
            other_changes: row.try_get(3)?,
        }))
    }
}

async fn sqlite_sizes(path: &std::path::Path) -> anyhow::Result<StoreSize> {
    use sqlx::sqlite::SqliteConnectOptions;
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut c)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut c)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut c)
        .await?;
    let schema: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, type, tbl_name FROM sqlite_master")
            .fetch_all(&mut c)
            .await?;
    let virtuals: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'",
    )
    .fetch_all(&mut c)
    .await?;
    let stat: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
            .fetch_all(&mut c)
            .await
            .context("dbstat (SQLITE_ENABLE_DBSTAT_VTAB)")?;
    let mut rels = BTreeMap::new();
    for (name, bytes) in stat {
        let entry = schema.iter().find(|(n, _, _)| *n == name);
        let (table, kind) = match entry {
            Some((_, ty, tbl)) if ty == "index" => (tbl.clone(), "index"),
            _ => {
                // FTS5 keeps its data in shadow tables named after the virtual table.
                let owner = virtuals
                    .iter()
                    .find(|v| name.starts_with(&format!("{v}_")))
                    .cloned();
                (owner.unwrap_or_else(|| name.clone()), "table")
            }
        };
        rels.insert(name, Rel { table, kind, bytes });
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut c)
        .await?;
    let bodies: i64 = sqlx::query_scalar("SELECT count(*) FROM bodies")
        .fetch_one(&mut c)
        .await?;
    c.close().await?;
    let wal_file = std::fs::metadata(wal_path(path))
        .map(|m| m.len() as i64)
        .ok();
    Ok(StoreSize {
        total: pages * page_size,
        rels,
        messages,
        bodies,
        free: Some(free * page_size),
        wal_file,
    })
}

fn wal_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

async fn pg_sizes(url: &str) -> anyhow::Result<StoreSize> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CHECKPOINT").execute(&mut c).await?;
    let total: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut c)
        .await?;
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relkind = 'i', coalesce(t.relname, c.relname)::text,
                CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid)
                     ELSE pg_table_size(c.oid) END
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_index i ON i.indexrelid = c.oid
           LEFT JOIN pg_class t ON t.oid = i.indrelid
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i', 'm', 'p')",
    )
    .fetch_all(&mut c)
    .await?;
    let mut rels = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let index: bool = r.try_get(1)?;
        rels.insert(
            name,
            Rel {
                table: r.try_get(2)?,
                kind: if index { "index" } else { "table" },
                bytes: r.try_get(3)?,
            },
        );
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut c)
        .await?;
    let bodies: i64 = sqlx::query_scalar("SELECT count(*) FROM bodies")
        .fetch_one(&mut c)
        .await?;
    c.close().await?;
    Ok(StoreSize {
        total,
        rels,
        messages,
        bodies,
        free: None,
        wal_file: None,
    })
}

/// SQLite, after the node stopped: checkpoints the WAL into the main file (TRUNCATE)
/// and returns main file + WAL in bytes.
async fn sqlite_file_after_checkpoint(path: &std::path::Path) -> anyhow::Result<i64> {
    use sqlx::sqlite::SqliteConnectOptions;
    let opts = SqliteConnectOptions::new().filename(path);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut c)
        .await?;
    c.close().await?;
    if busy != 0 {
        bail!("wal_checkpoint(TRUNCATE) was busy: is the node still running?");
    }
    let main = std::fs::metadata(path)?.len() as i64;
    let wal = std::fs::metadata(wal_path(path)).map_or(0, |m| m.len() as i64);
    Ok(main + wal)
}

/// One measured run.
struct Run {
    json: Value,
    row: String,
    rel_rows: String,
    per_delivery: f64,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let ircd = Ircd::start("irc.bench").await?;
    let mut backends = Vec::new();
    if ctx.sizes.sqlite {
        backends.push("sqlite");
    }
    if ctx.sizes.postgres {
        backends.push("postgres");
    }
    let mut md = format!(
        "Lines offered at {} per second (`--throughput-rate`).\n\n",
        ctx.sizes.throughput_rate
    );
    md.push_str(
        "| backend | users | lines | deliveries | stored rows: messages / bodies | store before → after (MiB) | growth (bytes) | **bytes / delivery** | WAL bytes / delivery | WAL records / full-page images per delivery | other databases' row changes in the window | file after stop + checkpoint (MiB) | settled before / after (s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rel_md = String::from(
        "| backend | users | relation | of table | kind | before → after (KiB) | growth (bytes) | bytes / delivery | share of growth |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &n in &ctx.sizes.store_users {
        for &backend in &backends {
            eprintln!("store: {backend}, {n} users");
            let scratch = if backend == "postgres" {
                Some(
                    Scratch::new("postgres", &ctx.postgres_admin_url)
                        .await
                        .context("a scratch PostgreSQL database (FERRY_BENCH_POSTGRES)")?,
                )
            } else {
                None
            };
            let r = one(ctx, &ircd, scratch.as_ref().map(|s| s.url.clone()), n).await;
            if let Some(s) = &scratch {
                s.drop_db().await;
            }
            match r {
                Ok(r) => {
                    md.push_str(&r.row);
                    rel_md.push_str(&r.rel_rows);
                    rows.push(r.json);
                    targets.push(Target {
                        name: format!(
                            "store growth per delivery, {backend}, {n} users in one channel"
                        ),
                        target: "issue 10: ≤ 1/50 of the before figure (docs/benchmarks.md §9)"
                            .into(),
                        measured: format!("{:.1} bytes per delivery", r.per_delivery),
                        met: None,
                    });
                }
                Err(e) => {
                    // One failed run must not lose the others.
                    eprintln!("store: {backend} {n}: {e:#}");
                    md.push_str(&format!(
                        "| {backend} | {n} | failed: {e} | | | | | | | | | | |\n"
                    ));
                    rows.push(json!({"backend": backend, "users": n, "error": format!("{e:#}")}));
                }
            }
        }
    }
    md.push_str("\nWhere the growth went (relations that grew or shrank):\n\n");
    md.push_str(&rel_md);
    Ok(Section {
        name: "store",
        json: json!({ "rate": ctx.sizes.throughput_rate, "rows": rows }),
        markdown: md,
        targets,
    })
}

async fn one(ctx: &Ctx, ircd: &Ircd, database: Option<String>, n: usize) -> anyhow::Result<Run> {
    let m = ctx.sizes.store_messages;
    let addr = ircd.addr();
    let layout = Layout::all_in(n, &[CHANNEL]);
    let channels = vec![CHANNEL.to_string()];
    let mut b = Bouncer::ferry_opts(
        &ctx.ferry_bin,
        &addr,
        &layout,
        &FerryOpts {
            database,
            ..FerryOpts::default()
        },
    )
    .await?;
    let probe = Probe::new(&b.store_url());
    let backend = probe.backend();
    wait_members(&addr, &channels, n, Duration::from_secs(120 + 2 * n as u64)).await?;
    let rec = Recorder::new(false);
    let cancel = CancellationToken::new();
    let readers = attach_all(&b, n, &rec, &cancel).await?;
    let speakers = join_speakers(ctx, &addr, CHANNEL).await?;
    // Attach bursts, playback and the speakers' JOINs: stored before the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let limit = settle_limit();
    let settled_before = settle(&b, limit).await;
    if settled_before.is_none() {
        bail!(
            "Ferry did not settle within {} s before the window",
            limit.as_secs()
        );
    }
    let before = probe.sizes().await?;
    // The quick (smoke) size does not wait: its WAL counters may then be short.
    if backend == "postgres" && !ctx.sizes.quick {
        tokio::time::sleep(STATS_FLUSH).await;
    }
    let wal0 = probe.wal().await?;
    let probes0 = rec.probes.load(Ordering::Relaxed);
    let stored0 = b
        .ferry_metric("ferry_store_write_messages_total")
        .await
        .unwrap_or(0.0);
    let widened0 = b.ferry_metric("ferry_store_events_widened_total").await;
    eprintln!("store: {backend}, {n} users: measuring");
    send_lines(ctx, &speakers, CHANNEL, m).await?;
    let expected = (n * m) as u64;
    // Generous: the machine may be loaded; bounded all the same.
    let wait = Duration::from_secs(120 + (m as f64 / ctx.sizes.throughput_rate) as u64)
        + Duration::from_millis(expected / 2);
    crate::poll(wait, Duration::from_millis(50), || async {
        (rec.probes.load(Ordering::Relaxed) - probes0 >= expected).then_some(())
    })
    .await;
    let delivered = rec.probes.load(Ordering::Relaxed) - probes0;
    let stored = crate::poll(wait, Duration::from_millis(100), || async {
        let v = b.ferry_metric("ferry_store_write_messages_total").await? - stored0;
        (v >= expected as f64).then_some(v)
    })
    .await;
    let settled_after = settle(&b, limit).await;
    if backend == "postgres" && !ctx.sizes.quick {
        tokio::time::sleep(STATS_FLUSH).await;
    }
    let wal1 = probe.wal().await?;
    let after = probe.sizes().await?;
    let widened = b
        .ferry_metric("ferry_store_events_widened_total")
        .await
        .map(|w| w - widened0.unwrap_or(0.0));
    eprintln!("store: {backend}, {n} users: measured");
    if let Some(w) = widened {
        eprintln!("store: {backend}, {n} users: {w:.0} shared lines widened in the window");
    }
    let dropped = rec.closed.load(Ordering::Relaxed);
    cancel.cancel();
    for r in readers {
        let _ = r.await;
    }
    for w in &speakers {
        let _ = w.send("QUIT").await;
    }
    b.stop(Duration::from_secs(30)).await;
    let file_after = match &probe {
        Probe::Sqlite(path) => Some(sqlite_file_after_checkpoint(path).await?),
        Probe::Postgres(_) => None,
    };
    drop(b);
    wait_members_below(&addr, &channels, 0, Duration::from_secs(30)).await;
    let Some(stored) = stored else {
        bail!("Ferry stored fewer than the {expected} deliveries within {wait:?}");
    };
    if settled_after.is_none() {
        bail!(
            "Ferry did not settle within {} s after the window",
            limit.as_secs()
        );
    }

    let deliveries = expected as f64;
    let growth = after.total - before.total;
    let per_delivery = growth as f64 / deliveries;
    let wal = match (wal0, wal1) {
        (Some(a), Some(b)) => Some(Wal {
            lsn: b.lsn - a.lsn,
            records: b.records - a.records,
            fpi: b.fpi - a.fpi,
            other_changes: b.other_changes - a.other_changes,
        }),
        _ => None,
    };
    let mib = |b: i64| b as f64 / 1_048_576.0;
    let row = format!(
        "| {backend} | {n} | {m} | {expected} | {} / {} | {:.2} → {:.2} | {growth} | **{per_delivery:.1}** | {} | {} | {} | {} | {:.1} / {:.1} |\n",
        after.messages - before.messages,
        after.bodies - before.bodies,
        mib(before.total),
        mib(after.total),
        wal.map_or("–".into(), |w| format!("{:.1}", w.lsn as f64 / deliveries)),
        wal.map_or("–".into(), |w| format!(
            "{:.2} / {:.4}",
            w.records as f64 / deliveries,
            w.fpi as f64 / deliveries
        )),
        wal.map_or("–".into(), |w| w.other_changes.to_string()),
        file_after.map_or("–".into(), |f| format!("{:.2}", mib(f))),
        settled_before.unwrap_or(0.0),
        settled_after.unwrap_or(0.0),
    );
    // Per relation, biggest growth first; free pages (SQLite) as a pseudo-relation.
    let mut rels: Vec<(String, Rel, i64, i64)> = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        before.rels.keys().chain(after.rels.keys()).collect();
    for name in names {
        let b0 = before.rels.get(name).map_or(0, |r| r.bytes);
        let r1 = after.rels.get(name).or(before.rels.get(name)).cloned();
        let b1 = after.rels.get(name).map_or(0, |r| r.bytes);
        if let Some(r) = r1 {
            rels.push((name.clone(), r, b0, b1));
        }
    }
    if let (Some(f0), Some(f1)) = (before.free, after.free) {
        rels.push((
            "(free pages)".into(),
            Rel {
                table: "–".into(),
                kind: "free",
                bytes: f1,
            },
            f0,
            f1,
        ));
    }
    rels.sort_by_key(|(name, _, b0, b1)| (-(b1 - b0), name.clone()));
    let mut rel_rows = String::new();
    let mut rel_json = Vec::new();
    let mut by_table: BTreeMap<String, i64> = BTreeMap::new();
    for (name, r, b0, b1) in &rels {
        let g = b1 - b0;
        *by_table.entry(r.table.clone()).or_default() += g;
        rel_json.push(json!({
            "relation": name, "table": r.table, "kind": r.kind, "bytes_before": b0,
            "bytes_after": b1, "growth_bytes": g, "bytes_per_delivery": round2(g as f64 / deliveries),
        }));
        if g != 0 {
            rel_rows.push_str(&format!(
                "| {backend} | {n} | {name} | {} | {} | {:.0} → {:.0} | {g} | {:.1} | {:.1}% |\n",
                r.table,
                r.kind,
                *b0 as f64 / 1024.0,
                *b1 as f64 / 1024.0,
                g as f64 / deliveries,
                if growth != 0 {
                    g as f64 * 100.0 / growth as f64
                } else {
                    0.0
                },
            ));
        }
    }
    let json = json!({
        "backend": backend, "users": n, "lines": m, "deliveries": expected, "delivered": delivered,
        "stored": stored, "clients_dropped": dropped,
        "messages_rows_added": after.messages - before.messages,
        "bodies_rows_added": after.bodies - before.bodies,
        "store_bytes_before": before.total, "store_bytes_after": after.total,
        "growth_bytes": growth, "bytes_per_delivery": round2(per_delivery),
        "wal_bytes": wal.map(|w| w.lsn),
        "wal_bytes_per_delivery": wal.map(|w| round2(w.lsn as f64 / deliveries)),
        "wal_records": wal.map(|w| w.records),
        "wal_full_page_images": wal.map(|w| w.fpi),
        "other_databases_row_changes": wal.map(|w| w.other_changes),
        "sqlite_wal_file_bytes_before": before.wal_file, "sqlite_wal_file_bytes_after": after.wal_file,
        "file_bytes_after_checkpoint": file_after,
        "settle_secs_before": settled_before.map(round2), "settle_secs_after": settled_after.map(round2),
        "tables": by_table.iter().map(|(t, g)| json!({
            "table": t, "growth_bytes": g, "bytes_per_delivery": round2(*g as f64 / deliveries),
        })).collect::<Vec<_>>(),
        "relations": rel_json,
    });
    Ok(Run {
        json,
        row,
        rel_rows,
        per_delivery,
    })
}
