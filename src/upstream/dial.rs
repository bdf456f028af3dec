//! Opening the transport: TCP from an optional source address, then TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::classify::Failure;
use super::tls;
use crate::ident::{IdentTag, Tracked};
use crate::store::{Sasl, TlsVerify};

/// A byte stream to the server: plain TCP or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// The transport as `Any`, so that parking can take a plain TCP socket back out
    /// of it (see [`hand_off`]).
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

/// TLS as [`dial_with`] makes it: rustls over the record follower over the socket.
type TlsTransport = tokio_rustls::client::TlsStream<crate::ktls::Records<Tracked<TcpStream>>>;
/// A session switched to kernel TLS (taken over at an in-place upgrade).
pub(crate) type KtlsTransport = crate::ktls::Stream<Tracked<TcpStream>>;

/// What a transport is, as far as handing it to another process goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plain TCP: the socket moves as it is.
    Plain,
    /// TLS in rustls: moves only once switched to kernel TLS.
    Tls,
    /// Kernel TLS: the socket moves as it is.
    Ktls,
    /// Anything else (tests' in-memory pipes): never moves.
    Other,
}

pub(crate) fn kind(transport: &dyn Transport) -> Kind {
    let any = transport.as_any();
    if any.is::<Tracked<TcpStream>>() {
        Kind::Plain
    } else if any.is::<TlsTransport>() {
        Kind::Tls
    } else if any.is::<KtlsTransport>() {
        Kind::Ktls
    } else {
        Kind::Other
    }
}

/// A transport handed on: its TCP socket, bytes to read before anything from it
/// (the plaintext rustls held), and whether it is kernel TLS.
pub(crate) struct HandedOff {
    pub socket: TcpStream,
    pub plain: Vec<u8>,
    pub ktls: bool,
}

/// The TCP socket under a transport as [`dial_with`] made it (or as a resume
/// made it), switching TLS to kernel TLS first (`crate::ktls`).
///
/// # Errors
/// Why it cannot be handed on, with the transport when it carries on untouched
/// (`None`: a switch failed half-way and the connection is lost).
pub(crate) fn hand_off(
    transport: Box<dyn Transport>,
) -> Result<HandedOff, (String, Option<Box<dyn Transport>>)> {
    if kind(&*transport) == Kind::Other {
        return Err(("not a socket".to_owned(), Some(transport)));
    }
    let any = transport.into_any();
    let any = match any.downcast::<Tracked<TcpStream>>() {
        Ok(plain) => {
            return Ok(HandedOff {
                socket: plain.into_inner(),
                plain: Vec::new(),
                ktls: false,
            })
        }
        Err(any) => any,
    };
    let any = match any.downcast::<KtlsTransport>() {
        Ok(k) => {
            // Made with nothing drained (see `resume`): the reader has it all.
            let (_, tracked) = k.into_raw();
            return Ok(HandedOff {
                socket: tracked.into_inner(),
                plain: Vec::new(),
                ktls: true,
            });
        }
        Err(any) => any,
    };
    let Ok(tls) = any.downcast::<TlsTransport>() else {
        unreachable!("its kind was checked above")
    };
    match crate::ktls::hand_off(*tls) {
        crate::ktls::HandOff::Switched(tracked, plain) => Ok(HandedOff {
            socket: tracked.into_inner(),
            plain,
            ktls: true,
        }),
        crate::ktls::HandOff::NotNow(tls, why) => Err((why, Some(Box::new(tls)))),
        crate::ktls::HandOff::Lost(e) => Err((e.to_string(), None)),
    }
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
    let stream = crate::ktls::Records::new(stream);
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
