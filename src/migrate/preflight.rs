//! The preflight a target node runs on itself before any user moves to it: checks run
//! against what will actually serve (DESIGN.md §1).

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Check, NetworkProbe, PreflightReport, PreflightRequest};
use crate::services::Services;
use crate::store::TlsVerify;

/// Memory one upstream session needs, for the headroom check (measured ~100 KiB;
/// doubled for safety).
const BYTES_PER_SESSION: u64 = 256 * 1024;
/// How long a probe may wait for the limiter (a slot and a connect token).
const PERMIT_WAIT: Duration = Duration::from_secs(60);
/// How long a probe waits for an immediate `ERROR` (a refused connect class).
const PROBE_WAIT: Duration = Duration::from_millis(1500);

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check. Never fails as a whole: each problem is a failed check.
pub async fn run(services: &Services, req: &PreflightRequest) -> PreflightReport {
    let mut checks = Vec::new();
    let here = &services.node;
    let nodes = services.store.nodes().await.unwrap_or_default();
    let me = nodes.iter().find(|n| *n.id == *here.id);
    match nodes.iter().find(|n| n.id == req.source_node) {
        None => checks.push(check(
            "source",
            false,
            format!("node {:?} is not registered", req.source_node),
        )),
        Some(src) => {
            let version = env!("CARGO_PKG_VERSION");
            checks.push(check(
                "version",
                src.version == version,
                format!("source {} / target {version}", src.version),
            ));
            let schema = services.store.schema_version().await.unwrap_or(-1);
            checks.push(check(
                "schema",
                src.schema_version == schema,
                format!("source {} / target {schema}", src.schema_version),
            ));
            let fp = &here.fingerprint.hash;
            checks.push(check(
                "config",
                src.config_fingerprint == *fp,
                if src.config_fingerprint == *fp {
                    format!("fingerprint {fp}")
                } else {
                    format!(
                        "fingerprint differs: source {} / target {fp}; settings here: {}",
                        src.config_fingerprint, here.fingerprint.summary
                    )
                },
            ));
        }
    }
    let held = services.health().sessions;
    let budget = here.fd.sessions() as i64;
    checks.push(check(
        "fd budget",
        held + req.planned_sessions <= budget,
        format!(
            "{held} sessions + {} planned of {budget} (RLIMIT_NOFILE {})",
            req.planned_sessions, here.fd.limit
        ),
    ));
    let need = req.planned_sessions.max(0) as u64 * BYTES_PER_SESSION;
    match crate::cluster::mem_available() {
        Some(avail) => checks.push(check(
            "memory",
            avail > need * 2,
            format!(
                "{} MiB available, {} MiB planned (x2 headroom)",
                avail >> 20,
                need >> 20
            ),
        )),
        None => checks.push(check("memory", true, "MemAvailable unknown")),
    }
    if me.is_some_and(|n| n.state != crate::store::node_state::ACTIVE) {
        checks.push(check(
            "state",
            false,
            format!("this node is {}", me.map_or("", |n| n.state.as_str())),
        ));
    }
    let source_ips = &services.users.config().source_ips;
    let sources: Vec<Option<IpAddr>> = if source_ips.is_empty() {
        vec![None]
    } else {
        source_ips.iter().copied().map(Some).collect()
    };
    // Every (network, source IP) probe at once: each may wait PROBE_WAIT for an ERROR.
    let probes = req
        .networks
        .iter()
        .flat_map(|p| sources.iter().map(move |s| (p, *s)));
    let results = futures::future::join_all(probes.map(|(probe, src)| async move {
        let name = format!(
            "reach {} from {}",
            probe.addr,
            src.map_or("default".to_owned(), |s| s.to_string())
        );
        // A probe is a connect like any other: it waits for a session slot and a
        // connect token on its source IP, so it never trips the server's limits.
        let target = crate::limits::Target {
            addr: probe.addr.clone(),
            network_name: probe.key.clone(),
            label: format!("preflight:{}", probe.addr),
        };
        let ips: Vec<IpAddr> = src.into_iter().collect();
        let permit =
            match tokio::time::timeout(PERMIT_WAIT, services.limiter.acquire(&target, src, &ips))
                .await
            {
                Ok(p) => p,
                Err(_) => {
                    return check(
                        name,
                        false,
                        format!(
                            "the limiter gave no session slot and connect token within {} s",
                            PERMIT_WAIT.as_secs()
                        ),
                    )
                }
            };
        let result = reach(probe, src).await;
        drop(permit);
        match result {
            Ok(d) => check(name, true, d),
            Err(d) => check(name, false, d),
        }
    }))
    .await;
    checks.extend(results);
    PreflightReport {
        node: here.id.to_string(),
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Resolves, connects from `src`, does the TLS handshake where used, waits briefly for
/// an immediate `ERROR` (a refused connect class, a ban), then QUITs politely.
async fn reach(probe: &NetworkProbe, src: Option<IpAddr>) -> Result<String, String> {
    let verify = if probe.tls_insecure {
        TlsVerify::Insecure
    } else {
        TlsVerify::Verify
    };
    let started = std::time::Instant::now();
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        crate::upstream::dial::dial(&probe.addr, src, probe.tls, &verify, None),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|f| f.reason)?;
    let connected = started.elapsed();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PROBE_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                let text = String::from_utf8_lossy(&got).trim().to_owned();
                return Err(if text.is_empty() {
                    "the server closed the connection at once".to_owned()
                } else {
                    text
                });
            }
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(line) = String::from_utf8_lossy(&got)
                    .lines()
                    .find(|l| l.starts_with("ERROR") || l.contains(" ERROR "))
                {
                    return Err(line.trim().to_owned());
                }
            }
            Ok(Err(e)) => return Err(format!("read: {e}")),
        }
    }
    let _ = conn.write_all(b"QUIT :Ferry preflight\r\n").await;
    let _ = conn.shutdown().await;
    Ok(format!(
        "connected in {} ms{}",
        connected.as_millis(),
        if probe.tls { " (TLS)" } else { "" }
    ))
}
