//! The node's listeners: HTTP (API, websocket, web client; served by `http` with its
//! limits), plain IRC, IRC over TLS, and the ident responder (`[ident] listen`). Bound before anything else starts, so a busy port fails the start with a
//! message that names the setting.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::services::Services;
use crate::upgrade::ListenerRole;

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
    /// Binds every configured listener, except those in `inherited` (sockets a node
    /// being upgraded handed over), which are used as they are.
    ///
    /// # Errors
    /// A listener cannot be bound, `--irc-tls` lacks its certificate and key, or an
    /// inherited socket is not a listening TCP socket.
    pub(super) async fn bind_or_adopt(
        config: &NodeConfig,
        mut inherited: Vec<(ListenerRole, OwnedFd)>,
    ) -> anyhow::Result<(Listeners, Bound)> {
        let mut take = |role: ListenerRole| -> anyhow::Result<Option<TcpListener>> {
            let Some(i) = inherited.iter().position(|(r, _)| *r == role) else {
                return Ok(None);
            };
            let fd = inherited.swap_remove(i).1;
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Some(TcpListener::from_std(l).with_context(|| {
                format!("using the {} listener handed over", role.name())
            })?))
        };
        let (http_in, irc_in, tls_in, ident_in) = (
            take(ListenerRole::Http)?,
            take(ListenerRole::Irc)?,
            take(ListenerRole::IrcTls)?,
            take(ListenerRole::Ident)?,
        );
        let http = match http_in {
            Some(l) => l,
            None => TcpListener::bind(config.http)
                .await
                .with_context(|| format!("binding the HTTP listener (--http {})", config.http))?,
        };
        let irc = match (irc_in, config.irc) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the IRC listener (--irc {addr})"))?,
            ),
            (None, None) => None,
        };
        let irc_tls = match config.irc_tls {
            Some(addr) => {
                let (cert, key) = config
                    .tls_cert
                    .as_ref()
                    .zip(config.tls_key.as_ref())
                    .context("--irc-tls needs tls_cert and tls_key in the config file (or --tls-cert/--tls-key)")?;
                let acceptor = crate::downstream::tls_acceptor(cert, key)?;
                let l = match tls_in {
                    Some(l) => l,
                    None => TcpListener::bind(addr).await.with_context(|| {
                        format!("binding the IRC TLS listener (--irc-tls {addr})")
                    })?,
                };
                Some((l, acceptor))
            }
            None => None,
        };
        let ident = match (ident_in, config.ident.listen) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "binding the ident responder ([ident] listen = \"{addr}\"; port 113 needs \
                     privileges: see docs/operations.md, \"Ident\")"
                )
            })?),
            (None, None) => None,
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

    /// Copies of the listening sockets (the same sockets, other descriptors): what an
    /// upgrade hands over, and what the node serves again when an upgrade fails after
    /// the listeners stopped accepting.
    ///
    /// # Errors
    /// Out of descriptors.
    pub(super) fn keep(&self) -> anyhow::Result<Vec<(ListenerRole, OwnedFd)>> {
        let mut kept = vec![(ListenerRole::Http, self.http.as_fd().try_clone_to_owned()?)];
        if let Some(l) = &self.irc {
            kept.push((ListenerRole::Irc, l.as_fd().try_clone_to_owned()?));
        }
        if let Some((l, _)) = &self.irc_tls {
            kept.push((ListenerRole::IrcTls, l.as_fd().try_clone_to_owned()?));
        }
        if let Some(l) = &self.ident {
            kept.push((ListenerRole::Ident, l.as_fd().try_clone_to_owned()?));
        }
        Ok(kept)
    }

    /// Serves HTTP and IRC clients on `tasks` until `services.shutdown`; the accept
    /// loops stop earlier at `accepting` (a child of it), which leaves the sockets
    /// open when [`Listeners::keep`] kept them. `extension` adds the upgrade trigger
    /// to the HTTP router.
    pub(super) fn serve(
        self,
        services: &Services,
        config: &NodeConfig,
        tasks: &TaskTracker,
        idents: Option<crate::ident::Idents>,
        accepting: &CancellationToken,
        trigger: Option<crate::upgrade::Trigger>,
    ) {
        // Ident queries end with their listener. IRC clients outlive the accept loop
        // (an upgrade parks them with their users, or closes those it cannot park)
        // and end with the node.
        let shutdown: CancellationToken = accepting.clone();
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
            let mut router = crate::http::router(services.clone());
            if let Some(t) = trigger {
                router = router.layer(axum::Extension(t));
            }
            tasks.spawn(super::http::serve(
                self.http,
                router,
                config.http_limits.clone(),
                accepting.clone(),
                services.shutdown.clone(),
                tasks.clone(),
            ));
        }
        if let Some(l) = self.irc {
            tasks.spawn(crate::downstream::serve_until(
                l,
                None,
                services.clone(),
                config.downstream.clone(),
                accepting.clone(),
                services.shutdown.clone(),
            ));
        }
        if let Some((l, acceptor)) = self.irc_tls {
            tasks.spawn(crate::downstream::serve_until(
                l,
                Some(acceptor),
                services.clone(),
                config.downstream.clone(),
                accepting.clone(),
                services.shutdown.clone(),
            ));
        }
    }
}
