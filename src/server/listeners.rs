//! The node's listeners: HTTP (API, websocket, web client; served by `http` with its
//! limits), plain IRC, IRC over TLS, and the ident responder (`[ident] listen`). Bound before anything else starts, so a busy port fails the start with a
//! message that names the setting.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::services::Services;

/// The addresses a started node actually listens on (useful with port 0).
#[derive(Clone, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    pub irc: Option<SocketAddr>,
    pub irc_tls: Option<SocketAddr>,
    /// The ident responder, when `[ident] listen` is set.
    pub ident: Option<SocketAddr>,
}

/// Bound sockets, not serving yet.
pub(super) struct Listeners {
    http: TcpListener,
    irc: Option<TcpListener>,
    irc_tls: Option<(TcpListener, TlsAcceptor)>,
    ident: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured listener.
    ///
    /// # Errors
    /// A listener cannot be bound, or `--irc-tls` lacks its certificate and key.
    pub(super) async fn bind(config: &NodeConfig) -> anyhow::Result<(Listeners, Bound)> {
        let http = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding the HTTP listener (--http {})", config.http))?;
        let irc = match config.irc {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the IRC listener (--irc {addr})"))?,
            ),
            None => None,
        };
        let irc_tls = match config.irc_tls {
            Some(addr) => {
                let (cert, key) = config
                    .tls_cert
                    .as_ref()
                    .zip(config.tls_key.as_ref())
                    .context("--irc-tls needs tls_cert and tls_key in the config file (or --tls-cert/--tls-key)")?;
                let acceptor = crate::downstream::tls_acceptor(cert, key)?;
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the IRC TLS listener (--irc-tls {addr})"))?;
                Some((l, acceptor))
            }
            None => None,
        };
        let ident = match config.ident.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "binding the ident responder ([ident] listen = \"{addr}\"; port 113 needs \
                     privileges: see docs/operations.md, \"Ident\")"
                )
            })?),
            None => None,
        };
        let bound = Bound {
            http: http.local_addr()?,
            irc: irc.as_ref().map(|l| l.local_addr()).transpose()?,
            irc_tls: irc_tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?,
            ident: ident.as_ref().map(|l| l.local_addr()).transpose()?,
        };
        Ok((
            Listeners {
                http,
                irc,
                irc_tls,
                ident,
            },
            bound,
        ))
    }

    /// Serves HTTP and IRC clients on `tasks` until `services.shutdown`.
    pub(super) fn serve(
        self,
        services: &Services,
        config: &NodeConfig,
        tasks: &TaskTracker,
        idents: Option<crate::ident::Idents>,
    ) {
        let shutdown: CancellationToken = services.shutdown.clone();
        if let (Some(l), Some(idents)) = (self.ident, idents) {
            tasks.spawn(crate::ident::serve(
                l,
                idents,
                crate::ident::Bounds {
                    timeout: std::time::Duration::from_secs(config.ident.timeout_secs.max(1)),
                    max_connections: config.ident.max_connections,
                },
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        {
            let router = crate::http::router(services.clone());
            tasks.spawn(super::http::serve(
                self.http,
                router,
                config.http_limits.clone(),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        if let Some(l) = self.irc {
            tasks.spawn(crate::downstream::serve(
                l,
                None,
                services.clone(),
                config.downstream.clone(),
                shutdown.clone(),
            ));
        }
        if let Some((l, acceptor)) = self.irc_tls {
            tasks.spawn(crate::downstream::serve(
                l,
                Some(acceptor),
                services.clone(),
                config.downstream.clone(),
                shutdown,
            ));
        }
    }
}
