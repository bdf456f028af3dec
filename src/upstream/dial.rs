//! Opening the transport: TCP from an optional source address, then TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::classify::Failure;
use super::tls;
use crate::ident::IdentTag;
use crate::store::{Sasl, TlsVerify};

/// A byte stream to the server: plain TCP or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// The transport as `Any`, so that parking can take a plain TCP socket back out
    /// of it (see [`plain_socket`]).
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
    fn as_any(&self) -> &dyn std::any::Any;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Transport for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// True for a plaintext transport as [`dial_with`] makes it (see [`plain_socket`]).
pub(crate) fn is_plain(transport: &dyn Transport) -> bool {
    transport.as_any().is::<crate::ident::Tracked<TcpStream>>()
}

/// The TCP socket under a plaintext transport as [`dial_with`] made it; `None` for
/// TLS (its session keys live in this process: the connection cannot be handed on).
pub(crate) fn plain_socket(transport: Box<dyn Transport>) -> Option<TcpStream> {
    transport
        .into_any()
        .downcast::<crate::ident::Tracked<TcpStream>>()
        .ok()
        .map(|t| t.into_inner())
}

/// The host part of `host:port` (without IPv6 brackets).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects to `addr`, trying each resolved address in turn; binds to
/// `source` first when given (only addresses of the same family are tried).
pub async fn tcp(addr: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let mut last_err = None;
    for target in tokio::net::lookup_host(addr).await? {
        if let Some(src) = source {
            if src.is_ipv4() != target.is_ipv4() {
                continue;
            }
        }
        match connect_one(target, source).await {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address usable from the source address"),
        )
    }))
}

async fn connect_one(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How long a TLS handshake may take by default. soju allows 15 s for the whole
/// connect; a handshake that takes longer is almost always TLS spoken to a
/// plaintext port, where the server waits for a line that never comes.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(15);

/// Dials the server as configured: TCP, then TLS if asked for, within
/// [`TLS_TIMEOUT`]. A broken configuration (bad pin, missing client certificate)
/// is permanent.
pub async fn dial(
    addr: &str,
    source: Option<IpAddr>,
    tls: bool,
    verify: &TlsVerify,
    sasl: Option<&Sasl>,
) -> Result<Box<dyn Transport>, Failure> {
    dial_with(addr, source, tls, verify, sasl, TLS_TIMEOUT, None).await
}

/// [`dial`] with the TLS handshake bounded by `tls_timeout`; with `ident`, the socket
/// is in the node's ident table from the moment TCP is up (servers ask before
/// registration) until the transport is dropped.
pub async fn dial_with(
    addr: &str,
    source: Option<IpAddr>,
    tls: bool,
    verify: &TlsVerify,
    sasl: Option<&Sasl>,
    tls_timeout: Duration,
    ident: Option<&IdentTag>,
) -> Result<Box<dyn Transport>, Failure> {
    let config = if tls {
        let cert = match sasl {
            Some(Sasl::External { cert_path }) => Some(cert_path.as_str()),
            _ => None,
        };
        Some(tls::client_config(verify, cert).map_err(|e| Failure::permanent(e.to_string()))?)
    } else {
        None
    };
    let stream = tcp(addr, source)
        .await
        .map_err(|e| Failure::temporary(format!("connect to {addr}: {e}")))?;
    let stream = crate::ident::track(ident, stream);
    let Some(config) = config else {
        return Ok(Box::new(stream));
    };
    let name = ServerName::try_from(host_of(addr).to_owned())
        .map_err(|e| Failure::permanent(format!("TLS server name {addr}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(tls_timeout, connector.connect(name, stream))
        .await
        .map_err(|_| {
            Failure::temporary(format!(
                "TLS handshake with {addr} timed out after {} s (is it a plaintext port?)",
                tls_timeout.as_secs()
            ))
        })?
        .map_err(|e| Failure::temporary(format!("TLS handshake with {addr}: {e}")))?;
    Ok(Box::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part() {
        assert_eq!(host_of("irc.example.org:6697"), "irc.example.org");
        assert_eq!(host_of("127.0.0.1:6667"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6667"), "::1");
    }

    #[tokio::test]
    async fn binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let (client, accepted) = tokio::join!(tcp(&addr, Some(src)), listener.accept());
        client.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), src);
    }
}
