//! A `soju.im/bouncer-networks` connection bound to no network: `BOUNCER`,
//! `BouncerServ`, `PING`, `CAP` and the notices it negotiated, until it closes.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::adapt::{self, Client};
use super::caps::{self};
use super::error::ProtoError;
use super::io::{self, Writer};
use super::{bouncer, bouncerserv, login};
use crate::config::DownstreamConfig;
use crate::irc::{numeric, ISupport, Message};
use crate::services::Services;
use crate::user::{watch, Notice};

/// Serves a `soju.im/bouncer-networks` connection bound to no network until it
/// closes: `BOUNCER`, `BouncerServ`, `PING`, `CAP`, and the notices it negotiated.
/// Returns the reason it ended.
#[allow(clippy::too_many_arguments)]
pub(super) async fn unbound(
    services: &Services,
    cfg: &DownstreamConfig,
    reg: &login::Registered,
    peer: std::net::IpAddr,
    reader: &mut io::Reader,
    w: &mut Writer,
    notices: &mut mpsc::Receiver<Arc<Notice>>,
    shutdown: &CancellationToken,
) -> String {
    let server = cfg.server_name.clone();
    let user = &reg.verified.user;
    let nick = match String::from_utf8_lossy(&reg.nick).into_owned() {
        n if n.is_empty() => user.name.clone(),
        n => n,
    };
    let mut caps = reg.caps.clone();
    let mut lines = bouncer::unbound_burst(&server, &nick);
    if caps.has(watch::NETWORKS_NOTIFY) {
        lines.extend(bouncer::list(services, user, &caps, &server).await);
    }
    if let Err(e) = w.send_all(&lines).await {
        return e.to_string();
    }
    let isupport = ISupport::default();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return "server shutting down".into(),
            m = reader.next() => match m {
                Some(m) => m,
                None => return "connection closed".into(),
            },
            Some(n) = notices.recv() => {
                if let Some(m) = bouncer::notice_for(&n, &caps, None, &server) {
                    if let Err(e) = w.send(&m).await {
                        return e.to_string();
                    }
                }
                continue;
            }
        };
        let out: Vec<Message> = if bouncerserv::addressed(&msg) {
            let client = Client {
                caps: &caps,
                nick: nick.as_bytes(),
                isupport: &isupport,
            };
            let mut out = Vec::new();
            if caps.has("echo-message") && msg.command.as_str() != "TAGMSG" {
                let echo = Message::new(msg.command.as_str(), msg.params.clone())
                    .with_prefix(nick.clone());
                out.extend(adapt::adapt(&echo, None, chrono::Utc::now(), &client));
            }
            let caller = bouncerserv::Caller {
                services,
                user_id: user.id,
                // No network: commands that default to the client's network ask for one.
                network: 0,
                peer,
            };
            for m in bouncerserv::handle(&caller, &msg, &server, &nick).await {
                out.extend(adapt::adapt(&m, None, chrono::Utc::now(), &client));
            }
            out
        } else {
            match msg.command.as_str() {
                "PING" => {
                    let token = msg.params.first().cloned().unwrap_or_default();
                    vec![Message::new("PONG", [Bytes::from(server.clone()), token])
                        .with_prefix(server.clone())]
                }
                "CAP" => caps::handle(&msg, &mut caps, &server, &nick).0,
                "QUIT" => return "quit".into(),
                "BOUNCER" => {
                    let ctx = bouncer::Ctx {
                        services,
                        user_id: user.id,
                        caps: &caps,
                        server: &server,
                        nick: &nick,
                    };
                    bouncer::handle(&ctx, &msg).await
                }
                "PASS" | "USER" => vec![ProtoError::AlreadyRegistered.to_message(&server, &nick)],
                "MARKREAD" => vec![ProtoError::Fail {
                    command: "MARKREAD",
                    code: "INTERNAL_ERROR",
                    context: msg
                        .param_str(0)
                        .map(|t| t.into_owned())
                        .into_iter()
                        .filter(|t| crate::irc::is_word(t.as_bytes()))
                        .collect(),
                    description: "Cannot set read markers on a connection bound to no network"
                        .into(),
                }
                .to_message(&server, &nick)],
                other => vec![Message::new(
                    numeric::ERR_UNKNOWNCOMMAND,
                    [
                        nick.clone(),
                        if crate::irc::is_word(other.as_bytes()) {
                            other.to_owned()
                        } else {
                            "*".to_owned()
                        },
                        "This connection is bound to no network: use BOUNCER or BouncerServ"
                            .to_owned(),
                    ],
                )
                .with_prefix(server.clone())],
            }
        };
        if let Err(e) = w.send_all(&out).await {
            return e.to_string();
        }
    }
}
