//! The HTTP listener's accept loop: hyper's HTTP/1.1 server (the one `axum::serve`
//! drives) with the limits `axum::serve` does not offer ([`HttpLimits`]):
//!
//! - a header read timeout (hyper's `header_read_timeout`, on tokio's timer): a
//!   client that has not sent a request's headers in time is disconnected, and
//!   the same timer runs while a kept-alive connection waits for its next request;
//!   upgraded connections (websockets) leave hyper and are not affected;
//! - at most `max_connections` open connections in all and
//!   `max_connections_per_ip` from one address: a connection over either is
//!   answered `503` (the API's JSON error shape) and closed at once, so a flood of
//!   half-open connections cannot take the file descriptors the IRC listener and
//!   the upstream connections need.
//!
//! HTTP/1.1 only: no browser speaks HTTP/2 over plain TCP (h2c), and hyper's
//! protocol sniffing would wait for a silent client's first bytes without a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::HttpLimits;

/// How long open connections get to finish their request at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `accepting` ends (the socket's other copies
/// stay open: an upgrade hands them over); connections run on `tasks` until
/// `shutdown`, so a request in flight (the upgrade's own) still gets its answer.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    accepting: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::new(limits.max_connections_per_ip);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refuse(&stream, peer, "the server has too many open connections");
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip()) else {
            refuse(&stream, peer, "too many open connections from your address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&service, req)
        });
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _held = (permit, slot);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}

/// Answers `503` without waiting (what fits the socket's buffer) and closes.
fn refuse(stream: &TcpStream, peer: SocketAddr, why: &str) {
    debug!(%peer, "HTTP connection refused: {why}");
    let body = serde_json::json!({ "error": { "code": "too_many_connections", "message": why } })
        .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Open connections per source address.
#[derive(Clone)]
struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            owner: self.clone(),
        })
    }
}

/// One open connection from `ip`, given back when dropped.
struct IpSlot {
    ip: IpAddr,
    owner: PerIp,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = per_ip.take(ip).unwrap();
        let _b = per_ip.take(ip).unwrap();
        assert!(per_ip.take(ip).is_none());
        assert!(per_ip.take("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(per_ip.take(ip).is_some());
        drop(per_ip.take(ip));
    }
}
