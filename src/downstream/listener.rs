//! The IRC listener: accepts plain or TLS connections and runs one task per
//! client until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn;
use super::io::BoxStream;
use crate::config::DownstreamConfig;
use crate::services::Services;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts clients until `shutdown`, then waits for their tasks to end
/// (each one closes its client with an `ERROR` on shutdown).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    services: Services,
    cfg: DownstreamConfig,
    shutdown: CancellationToken,
) {
    serve_until(listener, tls, services, cfg, shutdown.clone(), shutdown).await;
}

/// [`serve`], accepting until `accepting` and serving the accepted clients until
/// `shutdown`: an upgrade stops accepting at its barrier while the attached clients
/// stay, to be parked with their users.
pub async fn serve_until(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    services: Services,
    cfg: DownstreamConfig,
    accepting: CancellationToken,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = accepting.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (services, cfg, shutdown, tls) =
            (services.clone(), cfg.clone(), shutdown.clone(), tls.clone());
        tracker.spawn(async move {
            let stream: BoxStream = match tls {
                None => Box::new(tcp),
                Some(acceptor) => {
                    match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(crate::ktls::Records::new(tcp)),
                    )
                    .await
                    {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            return tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            tracing::debug!(%peer, "client connected");
            conn::run(stream, peer.ip(), services, cfg, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// A TLS acceptor from PEM files: a certificate chain and its private key.
///
/// # Errors
/// When a file cannot be read or holds no usable certificate or key.
pub fn tls_acceptor(
    cert_pem_path: &std::path::Path,
    key_pem_path: &std::path::Path,
) -> anyhow::Result<TlsAcceptor> {
    let certs = {
        let mut r = std::io::BufReader::new(
            std::fs::File::open(cert_pem_path)
                .with_context(|| format!("opening {}", cert_pem_path.display()))?,
        );
        rustls_pemfile::certs(&mut r)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading certificates from {}", cert_pem_path.display()))?
    };
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_pem_path.display()
    );
    let key = {
        let mut r = std::io::BufReader::new(
            std::fs::File::open(key_pem_path)
                .with_context(|| format!("opening {}", key_pem_path.display()))?,
        );
        rustls_pemfile::private_key(&mut r)
            .with_context(|| format!("reading private key from {}", key_pem_path.display()))?
            .with_context(|| format!("no private key in {}", key_pem_path.display()))?
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("TLS certificate and key do not match")?;
    // An in-place upgrade switches a client's session to kernel TLS with them
    // (`crate::ktls`).
    config.enable_secret_extraction = true;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loads_pem_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        assert!(super::tls_acceptor(&cert, &key).is_ok());
        let err = super::tls_acceptor(&key, &key).err().unwrap().to_string();
        assert!(err.contains("no certificate"), "{err}");
    }
}
