//! A CI-sized run of the benchmark suite (`ferry-bench all --quick`, made smaller
//! still): asserts only that it runs and produces figures — every benchmark, IRC and
//! websocket latency rows, the restart's and the migration's bound and ratio, the
//! store's sizes on both backends. Performance is judged from the report
//! (`docs/benchmarks.md`), never by timing assertions here.
//!
//! ZNC runs in the throughput benchmark only (each ZNC start costs ~40 s: it joins
//! channels from a 30-second timer); the suite fails clearly if ZNC is missing
//! (`scripts/test-deps.sh` installs it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `ferry-bench`, built next to `ferry` (it is a default workspace member).
fn bench_bin() -> PathBuf {
    let ferry = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let p = ferry.with_file_name("ferry-bench");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p ferry-bench` (cargo nextest run --workspace does)",
        p.display()
    );
    p
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

#[test]
fn quick_suite_produces_figures() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(bench_bin())
        .args([
            "all",
            "--quick",
            "--memory-users",
            "4",
            "--idle-secs",
            "1",
            "--throughput-users",
            "4",
            "--throughput-messages",
            "40",
            "--fanout-users",
            "4",
            "--latency-samples",
            "20",
            "--search-messages",
            "3000",
            "--restart-users",
            "4",
            // Burst 1 on each of 2 source IPs, then 1 connect/s per IP: a 1 s bound.
            "--restart-connects-per-minute",
            "60",
            "--restart-burst",
            "1",
            "--migration-users",
            "4",
            "--migration-connects-per-minute",
            "60",
            "--migration-burst",
            "1",
            "--store-users",
            "4",
            "--store-messages",
            "20",
            "--upgrade-users",
            "4",
            "--znc-users-per-process",
            "4",
            "--znc-in",
            "throughput",
        ])
        .arg("--out")
        .arg(out.path())
        .arg("--ferry-bin")
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-bench");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry-bench --quick did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "ferry-bench failed ({status}):\n{stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("latest.json")).unwrap()).unwrap();
    assert!(out.path().join("report.md").exists());
    let b = &json["benchmarks"];

    let mem = b["memory"]["rows"].as_array().expect("memory rows");
    assert!(!mem.is_empty());
    for r in mem.iter().filter(|r| r.get("rss_bytes").is_some()) {
        assert!(num(r, "rss_bytes") > 0.0, "{r}");
    }

    let thr = b["throughput"]["rows"].as_array().expect("throughput rows");
    assert_eq!(thr.len(), 2, "ferry and znc: {thr:?}");
    for r in thr {
        assert!(num(r, "delivered") > 0.0, "{r}");
        assert!(num(r, "deliveries_per_sec") > 0.0, "{r}");
        // CPU time comes from /proc in 10 ms ticks: a quick run's few hundred
        // deliveries may cost ZNC less than one tick. Present, not negative.
        assert!(num(r, "cpu_ms_per_1000_deliveries") >= 0.0, "{r}");
    }

    let lat = b["latency"]["rows"].as_array().expect("latency rows");
    assert!(!lat.is_empty());
    for r in lat {
        assert!(num(r, "samples") > 0.0, "{r}");
        assert!(num(r, "end_to_end_p50_ms") > 0.0, "{r}");
    }
    for client in ["irc", "websocket"] {
        for scenario in ["one user", "fan-out"] {
            assert!(
                lat.iter()
                    .any(|r| r["client"] == client && r["scenario"] == scenario),
                "no {client} {scenario} row: {lat:?}"
            );
        }
    }

    let search = b["search"]["rows"].as_array().expect("search rows");
    assert_eq!(search.len(), 2, "sqlite and postgres: {search:?}");
    for r in search {
        assert!(num(r, "load_secs") > 0.0, "{r}");
        assert!(num(r, "p95_ms") > 0.0, "{r}");
    }

    let restart = &b["restart"];
    assert_eq!(num(restart, "users"), 4.0);
    assert!(num(restart, "all_registered_secs") > 0.0, "{restart}");
    assert!(num(restart, "all_joined_secs") > 0.0, "{restart}");
    assert!(num(restart, "limit_bound_secs") > 0.0, "{restart}");
    assert!(num(restart, "ratio_to_bound") > 0.0, "{restart}");
    assert!(num(restart, "rejections") >= 0.0, "{restart}");

    let mig = &b["migration"];
    assert_eq!(num(mig, "users"), 4.0);
    assert_eq!(num(mig, "moved"), 4.0, "{mig}");
    assert!(num(mig, "drain_secs") > 0.0, "{mig}");
    assert!(num(mig, "bound_secs") > 0.0, "{mig}");
    assert!(num(mig, "downtime_p50_ms") > 0.0, "{mig}");
    assert!(num(mig, "downtime_p99_ms") > 0.0, "{mig}");
    assert!(num(mig, "rejections") >= 0.0, "{mig}");

    let store = b["store"]["rows"].as_array().expect("store rows");
    assert_eq!(store.len(), 2, "sqlite and postgres: {store:?}");
    for r in store {
        assert_eq!(num(r, "deliveries"), 80.0, "{r}");
        assert!(num(r, "stored") >= 80.0, "{r}");
        assert!(num(r, "store_bytes_after") > 0.0, "{r}");
        // 80 thin rows may fit in pages the store already had: growth ≥ 0.
        assert!(num(r, "bytes_per_delivery") >= 0.0, "{r}");
    }
    assert!(
        store
            .iter()
            .any(|r| r["backend"] == "postgres" && num(r, "wal_bytes") > 0.0),
        "{store:?}"
    );

    let outage = b["outage"]["rows"].as_array().expect("outage rows");
    assert_eq!(outage.len(), 2, "sqlite and postgres: {outage:?}");
    for r in outage {
        assert_eq!(num(r, "stored"), num(r, "lines"), "nothing lost: {r}");
        assert!(num(r, "intake_lines_per_sec") > 0.0, "{r}");
        assert!(num(r, "spill_bytes") > 0.0, "the spill file was used: {r}");
        assert!(num(r, "write_back_ms") > 0.0, "{r}");
        assert_eq!(num(r, "gap_lines"), 0.0, "{r}");
    }

    let upgrade = b["upgrade"]["runs"].as_array().expect("upgrade runs");
    assert_eq!(upgrade.len(), 1, "{upgrade:?}");
    for r in upgrade {
        assert_eq!(num(r, "users"), 4.0, "{r}");
        assert_eq!(num(r, "moved_upstream"), 4.0, "{r}");
        assert_eq!(num(r, "moved_irc_client"), 4.0, "{r}");
        assert_eq!(num(&r["reconnected"], "upstream"), 0.0, "{r}");
        assert_eq!(num(r, "clients_got_line_after"), 4.0, "{r}");
        assert!(num(r, "pause_ms") > 0.0, "{r}");
        assert!(num(r, "total_ms") > 0.0, "{r}");
        assert_ne!(r["old"]["pid"], r["new"]["pid"], "{r}");
        assert_ne!(r["old"]["version"], r["new"]["version"], "{r}");
    }
}
