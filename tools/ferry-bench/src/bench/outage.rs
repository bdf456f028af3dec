//! The outage benchmark: riding out a store outage. How many lines per second a node's writer
//! can hold while the store is away (memory, then the spill file), and how long it
//! takes to write them back once the store returns.
//!
//! In process, on Ferry's own writer (`store::Writer::spawn_fenced`) and a scratch
//! store (SQLite and PostgreSQL), with N users owned by one node: the node's lease is
//! put in the riding-out state (what the heartbeat does when the store stops answering
//! and no peer can adopt), M lines spread over the users are offered as fast as the
//! writer takes them (the intake rate is the ceiling on lines per second of outage a
//! node holds without pushing back on its actors), then the lease is renewed (the
//! store is back) and the time until every held line is committed is the write-back.
//! Memory holds a quarter of the lines, the spill file the rest, so both paths are
//! measured. Detecting the outage and the lease's lapse are not part of the figures
//! (they are the lease's length, by design).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use ferry::lease::Lease;
use ferry::store::{NewMessage, OutageConfig, Store, UserId, Writer, WriterConfig, WriterFence};

use super::scratch::Scratch;
use super::{ms, round2, Ctx, Section, Target};

const NODE: &str = "bench-node";

/// Users and lines: quick runs stay small.
fn sizes(ctx: &Ctx) -> (usize, usize) {
    if ctx.sizes.quick {
        (ctx.sizes.store_users[0].max(2), 2_000)
    } else {
        (1_000, 200_000)
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let (users, lines) = sizes(ctx);
    let mut rows = Vec::new();
    let mut md = String::from(
        "| backend | users | lines | intake lines/s | spilled bytes | write-back | write-back lines/s | gap lines |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut backends = Vec::new();
    if ctx.sizes.sqlite {
        backends.push("sqlite");
    }
    if ctx.sizes.postgres {
        backends.push("postgres");
    }
    for backend in backends {
        let scratch = Scratch::new(backend, &ctx.postgres_admin_url)
            .await
            .with_context(|| format!("scratch {backend} store"))?;
        let result = one(&scratch.url, users, lines).await;
        scratch.drop_db().await;
        let r = result.with_context(|| format!("outage on {backend}"))?;
        md.push_str(&format!(
            "| {backend} | {users} | {lines} | {} | {} | {} ms | {} | {} |\n",
            r["intake_lines_per_sec"],
            r["spill_bytes"],
            r["write_back_ms"],
            r["write_back_lines_per_sec"],
            r["gap_lines"],
        ));
        let mut r = r;
        r["backend"] = json!(backend);
        rows.push(r);
    }
    let targets = vec![Target {
        name: "outage: nothing lost".into(),
        target: "every line held is written back (no gap while the buffer has room)".into(),
        measured: rows
            .iter()
            .map(|r| {
                format!(
                    "{}: {} of {}",
                    r["backend"].as_str().unwrap_or("?"),
                    r["stored"],
                    r["lines"]
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        met: Some(rows.iter().all(|r| r["stored"] == r["lines"])),
    }];
    Ok(Section {
        name: "outage",
        json: json!({ "rows": rows }),
        markdown: md,
        targets,
    })
}

async fn one(url: &str, users: usize, lines: usize) -> anyhow::Result<Value> {
    let store = Store::open(url).await?;
    let mut ids: Vec<(UserId, i64, i64)> = Vec::with_capacity(users);
    for i in 0..users {
        let u = store.create_user(&format!("o{i}"), "x", false).await?;
        let spec = ferry::admin::NetworkSpec {
            name: "net".into(),
            addr: "127.0.0.1:6667".into(),
            nick: format!("o{i}"),
            ..ferry::admin::NetworkSpec::default()
        };
        let n = store
            .create_network(
                u.id,
                &spec
                    .to_new_network()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            )
            .await?;
        let epoch = store
            .assign_user(u.id, Some(NODE), 0)
            .await?
            .context("claiming a user")?;
        ids.push((u.id, n.id, epoch));
    }
    let spill = tempfile::tempdir()?;
    let cfg = WriterConfig {
        outage: OutageConfig {
            memory_lines: (lines / 4).max(1),
            spill_bytes: 1 << 34,
            spill_path: Some(spill.path().join("bench.spill")),
            ..OutageConfig::default()
        },
        ..WriterConfig::default()
    };
    // Riding out: the lease lapsed while the store was away.
    let lease = Lease::new();
    // A lease renewed into the past holds until 1 µs after it was made.
    tokio::time::sleep(Duration::from_millis(2)).await;
    lease.renew(
        Instant::now() - Duration::from_secs(2),
        Duration::from_secs(1),
    );
    lease.ride_out();
    let (lost, _lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (writer, task) = Writer::spawn_fenced(
        store.clone(),
        cfg,
        shutdown.clone(),
        WriterFence {
            node: NODE.into(),
            lease: lease.clone(),
            lost,
        },
    );
    let started = chrono::Utc::now();
    let t = Instant::now();
    for i in 0..lines {
        let (user, network, epoch) = ids[i % users];
        let seq = (i / users + 1) as i64;
        let time = started + chrono::Duration::milliseconds(i as i64);
        let raw = format!(":speaker!s@h PRIVMSG #outage :line {i} of the outage benchmark");
        writer
            .write(NewMessage {
                user_id: user,
                seq,
                network_id: network,
                buffer: b"#outage".to_vec(),
                buffer_key: b"#outage".to_vec(),
                time,
                sender: "speaker".into(),
                command: "PRIVMSG".into(),
                raw: raw.clone().into(),
                text: format!("line {i} of the outage benchmark"),
                msgid: None,
                epoch,
                stream: None,
            })
            .await?;
    }
    // Every line taken into the outage buffer.
    let deadline = Instant::now() + Duration::from_secs(600);
    while (writer.metrics().held_lines.get() as usize) < lines {
        anyhow::ensure!(Instant::now() < deadline, "lines never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let intake = t.elapsed();
    let spill_bytes = writer.metrics().spill_bytes.get();
    // The store is back.
    let t = Instant::now();
    lease.renew(Instant::now(), Duration::from_secs(3600));
    writer.flush().await?;
    let write_back = t.elapsed();
    let gap_lines = writer.metrics().gap_lines.get();
    shutdown.cancel();
    let _ = task.await;
    let mut stored = 0;
    for (user, _, _) in &ids {
        stored += store.last_seq(*user).await?;
    }
    store.close().await;
    Ok(json!({
        "users": users,
        "lines": lines,
        "stored": stored,
        "intake_ms": ms(intake),
        "intake_lines_per_sec": round2(lines as f64 / intake.as_secs_f64()),
        "spill_bytes": spill_bytes,
        "spill_bytes_per_line": round2(spill_bytes as f64 / (lines - lines / 4).max(1) as f64),
        "write_back_ms": ms(write_back),
        "write_back_lines_per_sec": round2(lines as f64 / write_back.as_secs_f64()),
        "gap_lines": gap_lines,
    }))
}
