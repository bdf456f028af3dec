//! Benchmark 4: search latency on a large backlog, SQLite and PostgreSQL.
//!
//! One user with one network and 50 channels; messages from 500 senders (Zipf) with
//! chat-like text (Zipf words over a 20,000-word vocabulary) are bulk-loaded through
//! `Store::insert_messages` in batches of 10,000 — the same path the group-commit
//! writer uses, so bodies, thin rows and the full-text index are all written. Then
//! queries of common, middling, rare and two-word terms (limit 50, like one page of the
//! web client) are timed. A single user holding every message is the worst case for a
//! per-user search.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use ferry::store::{NewMessage, NewNetwork, SearchQuery, Store, TlsVerify};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::scratch::Scratch;
use super::{round2, Ctx, Section, Target};
use crate::percentile;
use crate::words::{pick, zipf_weights, Words};

const BATCH: usize = 10_000;
const CHANNELS: usize = 50;
const SENDERS: usize = 500;

/// Names a PostgreSQL database URL to load once and keep (`FERRY_BENCH_SEARCH_PG=url`):
/// the first run creates nothing and loads into it (the database must exist and be
/// empty), later runs find the bench user there and only query. The same messages are
/// generated either way, so the query mix is the same as with a fresh scratch database.
/// Meant for iterating on the search SQL at 10 million messages without reloading.
const KEEP_PG_ENV: &str = "FERRY_BENCH_SEARCH_PG";

async fn one(backend: &str, size: u64, queries: usize, admin: &str) -> anyhow::Result<Value> {
    if backend == "postgres" {
        if let Ok(url) = std::env::var(KEEP_PG_ENV) {
            eprintln!("search: using kept database {url} ({KEEP_PG_ENV})");
            return load_and_query(&url, backend, size, queries).await;
        }
    }
    let scratch = Scratch::new(backend, admin).await?;
    let r = load_and_query(&scratch.url, backend, size, queries).await;
    scratch.drop_db().await;
    r
}

async fn load_and_query(
    url: &str,
    backend: &str,
    size: u64,
    queries: usize,
) -> anyhow::Result<Value> {
    let store = Store::open(url).await?;
    // A kept database (see `KEEP_PG_ENV`) that already holds the load: query only.
    let loaded = store.user_by_name("searcher").await?;
    let user = match &loaded {
        Some(u) => u.clone(),
        None => store.create_user("searcher", "x", false).await?,
    };
    let net = if loaded.is_some() {
        store
            .network_by_name(user.id, "bench")
            .await?
            .ok_or_else(|| anyhow::anyhow!("kept database has no bench network"))?
    } else {
        store
            .create_network(
                user.id,
                &NewNetwork {
                    name: "bench".into(),
                    addr: "127.0.0.1:6667".into(),
                    tls: false,
                    tls_verify: TlsVerify::Verify,
                    nick: "searcher".into(),
                    username: None,
                    realname: None,
                    sasl: None,
                    source_ip: None,
                    channels: Vec::new(),
                },
            )
            .await?
    };
    let words = Words::new(20_000, 1.0);
    let chan_w = zipf_weights(CHANNELS, 1.0);
    let sender_w = zipf_weights(SENDERS, 0.8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let t_start = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("valid time");
    let t0 = Instant::now();
    let mut seq = 0u64;
    let mut last_report = Instant::now();
    while seq < size {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min((size - seq) as usize) {
            seq += 1;
            let c = pick(&chan_w, &mut rng);
            let s = pick(&sender_w, &mut rng);
            let text = words.sentence(&mut rng);
            let buffer = format!("#chan{c}").into_bytes();
            let time =
                t_start + chrono::Duration::milliseconds(seq as i64 * 700 + rng.gen_range(0..500));
            let raw = format!(":nick{s}!u@host{s} PRIVMSG #chan{c} :{text}");
            batch.push(NewMessage {
                user_id: user.id,
                seq: seq as i64,
                network_id: net.id,
                buffer_key: buffer.clone(),
                buffer,
                time,
                sender: format!("nick{s}"),
                command: "PRIVMSG".into(),
                raw: Bytes::from(raw),
                text,
                msgid: None,
                // Bulk loading bypasses the node: no owner to fence against.
                epoch: 0,
                stream: None,
            });
        }
        if loaded.is_none() {
            store.insert_messages(&batch).await?;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "search: {backend}: loaded {seq}/{size} ({:.0} msg/s)",
                seq as f64 / t0.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    // As the node's hourly job does: planner statistics after a bulk load.
    if loaded.is_none() {
        store.optimize().await?;
    }
    let load_secs = t0.elapsed().as_secs_f64();

    // Query mix: 40% a common word (ranks 30–300), 30% middling (300–3,000), 20% rare
    // (3,000–20,000), 10% two words (common + middling).
    let mut times = Vec::with_capacity(queries);
    let mut hits = 0usize;
    let mut by_kind: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    // Bounded in time too: stop after two minutes of querying.
    let q_start = Instant::now();
    for q in 0..queries {
        if q > 0 && q_start.elapsed() > Duration::from_secs(120) {
            break;
        }
        let x = rng.gen::<f64>();
        let (kind, text) = if x < 0.4 {
            ("common", words.rank(rng.gen_range(30..300)).to_string())
        } else if x < 0.7 {
            (
                "middling",
                words.rank(rng.gen_range(300..3_000)).to_string(),
            )
        } else if x < 0.9 {
            (
                "rare",
                words.rank(rng.gen_range(3_000..words.len())).to_string(),
            )
        } else {
            (
                "two words",
                format!(
                    "{} {}",
                    words.rank(rng.gen_range(30..300)),
                    words.rank(rng.gen_range(300..3_000))
                ),
            )
        };
        let sq = SearchQuery {
            user: user.id,
            text,
            limit: 50,
            ..SearchQuery::default()
        };
        let t = Instant::now();
        let res = store.search(&sq).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        hits += res.len();
        times.push(ms);
        by_kind.entry(kind).or_default().push(ms);
        let _ = q;
    }
    store.close().await;
    times.sort_by(f64::total_cmp);
    let kinds: serde_json::Map<String, Value> = by_kind
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k.to_string(), json!({"n": v.len(), "p50_ms": round2(percentile(&v, 50.0)), "p95_ms": round2(percentile(&v, 95.0))}))
        })
        .collect();
    Ok(json!({
        "backend": backend, "messages": size, "load_secs": round2(load_secs),
        "load_msgs_per_sec": round2(size as f64 / load_secs), "queries": times.len(),
        "p50_ms": round2(percentile(&times, 50.0)), "p95_ms": round2(percentile(&times, 95.0)),
        "max_ms": round2(times.last().copied().unwrap_or(0.0)),
        "mean_hits": round2(hits as f64 / times.len().max(1) as f64), "by_kind": kinds,
    }))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let mut backends = Vec::new();
    if ctx.sizes.sqlite {
        backends.push("sqlite");
    }
    if ctx.sizes.postgres {
        backends.push("postgres");
    }
    let mut md = String::from(
        "| backend | messages | load time (s) | load msg/s | queries | p50 (ms) | p95 (ms) | max (ms) | mean hits |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &size in &ctx.sizes.search_messages {
        for &backend in &backends {
            eprintln!("search: {backend}, {size} messages");
            let r = one(
                backend,
                size,
                ctx.sizes.search_queries,
                &ctx.postgres_admin_url,
            )
            .await?;
            md.push_str(&format!(
                "| {backend} | {size} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["load_secs"],
                r["load_msgs_per_sec"],
                r["queries"],
                r["p50_ms"],
                r["p95_ms"],
                r["max_ms"],
                r["mean_hits"]
            ));
            let p95 = r["p95_ms"].as_f64().unwrap_or(f64::NAN);
            targets.push(Target {
                name: format!("search p95, {backend}, {size} messages (target is for 10 million)"),
                target: "≤ 50 ms".into(),
                measured: format!("{p95:.2} ms"),
                met: Some(p95 <= 50.0),
            });
            rows.push(r);
        }
    }
    Ok(Section {
        name: "search",
        json: json!({ "rows": rows }),
        markdown: md,
        targets,
    })
}
