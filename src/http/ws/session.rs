//! One websocket connection: attach to every network (`attach`), send the `hello`
//! snapshot (`hello`), replay what the client missed (`replay`), then relay live lines
//! (`live`) and run the client's commands (`requests`) until it ends (`ending`).
//!
//! No gap, no duplicate, by the resume protocol of `user::resume`: attaching returns
//! `last_seq` and every live line after it comes through the attach channel; the
//! session replays stored messages with id in `(last_id, last_seq]` (holding live
//! lines back), then sends the held and later live lines, dropping any id not above
//! the last one sent (several networks attach one after the other, so their
//! `last_seq`s differ: the highest counts).

use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::attach::{Live, Net};
use super::command::{self, Command};
use super::ending::{Ending, GOING_AWAY, POLICY};
use super::event::ServerEvent;
use super::out::Out;
use crate::services::{Control, Registration, Services};
use crate::store::{Seq, User};
use crate::user::resume::{Held, Sent};
use crate::user::UserHandle;

/// How long the server waits for the `resume` command before treating the client as new.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// A websocket session: the user, its attached networks and where the client is.
pub(super) struct Session {
    pub(super) services: Services,
    pub(super) user: User,
    pub(super) out: Out,
    pub(super) nets: Vec<Net>,
    /// The newest message id sent to the client.
    pub(super) last_sent: Sent,
    /// This session in the node's socket registry (other sessions skip it).
    pub(super) reg: Registration,
    /// Held while the client says it is focused: no pushes meanwhile.
    pub(super) focus: Option<crate::push::ActiveGuard>,
    /// When the login session reaches its absolute lifetime: the socket closes.
    pub(super) ends: tokio::time::Instant,
}

/// The login session a websocket authenticated with.
pub struct Login {
    /// The hash of its token: a logout closes its sockets.
    pub token_hash: [u8; 32],
    /// Its absolute lifetime ends then, and so does the socket.
    pub ends: tokio::time::Instant,
}

/// Serves one upgraded websocket until it ends.
pub async fn run(
    services: Services,
    user: User,
    login: Login,
    last_id: Option<Seq>,
    socket: WebSocket,
) {
    let (sink, mut stream) = socket.split();
    let out = Out::spawn(sink);
    let (reg, mut controls) = services.sockets.register(user.id, login.token_hash);
    let mut s = Session {
        services,
        user,
        out,
        nets: Vec::new(),
        last_sent: Sent::at(Some(0)),
        reg,
        focus: None,
        ends: login.ends,
    };
    debug!(user = %s.user.name, "websocket connected");
    let handle = s.services.users.get(s.user.id);
    let ending = match &handle {
        Some(h) => s.serve(h, &mut stream, &mut controls, last_id).await,
        None => {
            s.moved_or_close("your session is not running on this node")
                .await
        }
    };
    if let Some(h) = &handle {
        for n in &s.nets {
            h.detach(n.id, n.downstream).await;
        }
    }
    let Session { out, user, .. } = s;
    match ending {
        Ending::ClientGone => out.finish(None).await,
        Ending::Drop => {
            info!(user = %user.name, "websocket dropped on request");
            out.finish(None).await;
        }
        Ending::Close(code, reason) => {
            info!(user = %user.name, code, %reason, "websocket closed");
            out.finish_after_queue(code, reason).await;
        }
        Ending::Kill(code, reason) => {
            warn!(user = %user.name, code, %reason, "websocket closed");
            out.finish(Some((code, reason))).await;
        }
    }
    drop(stream);
}

impl Session {
    async fn serve(
        &mut self,
        handle: &UserHandle,
        stream: &mut SplitStream<WebSocket>,
        controls: &mut mpsc::Receiver<Control>,
        last_id: Option<Seq>,
    ) -> Ending {
        // The client says where it is, in the URL or as its first frame.
        let mut first = None;
        let last_id = match last_id {
            Some(id) => Some(id),
            None => match tokio::time::timeout(RESUME_WAIT, stream.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => match command::parse(&t) {
                    Ok(Command::Resume { last_id, .. }) => last_id,
                    _ => {
                        first = Some(t.to_string());
                        None
                    }
                },
                Ok(Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None) => {
                    return Ending::ClientGone
                }
                Ok(Some(Ok(_))) | Err(_) => None,
            },
        };

        let (mut live, last_seq): (Live, Seq) = match self.attach_all(handle).await {
            Ok(x) => x,
            Err(e) => return e,
        };
        if let Err(e) = self.hello(last_seq).await {
            return e;
        }
        let mut pending = Held::new();
        let replayed = match last_id {
            Some(after) if after < last_seq => {
                match self.replay(after, last_seq, &mut live, &mut pending).await {
                    Ok(n) => n,
                    Err(e) => return e,
                }
            }
            _ => 0,
        };
        self.last_sent = Sent::at(Some(last_seq));
        if let Err(e) = self.push(&ServerEvent::Synced {
            last_id: last_seq,
            replayed,
        }) {
            return e;
        }
        while let Some((i, o)) = pending.pop_front() {
            if let Err(e) = self.live(i, Some(o)).await {
                return e;
            }
        }
        if let Some(t) = first {
            if let Err(e) = self.frame(handle, &t).await {
                return e;
            }
        }
        loop {
            let step = tokio::select! {
                () = self.services.shutdown.cancelled() => Err(Ending::Close(GOING_AWAY, "the server is shutting down".into())),
                () = tokio::time::sleep_until(self.ends) => Err(Ending::Close(POLICY, "your session expired".into())),
                Some(c) = controls.recv() => self.control(c).await,
                Some((i, o)) = live.next(), if !live.is_empty() => self.live(i, o).await,
                frame = stream.next() => match frame {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => Err(Ending::ClientGone),
                    Some(Ok(WsMessage::Text(t))) => self.frame(handle, &t).await,
                    Some(Ok(WsMessage::Binary(_))) => self.push(&ServerEvent::error(
                        None,
                        "bad_request",
                        "binary frames are not part of the protocol; send JSON text",
                    )),
                    Some(Ok(_)) => Ok(()),
                },
            };
            if let Err(e) = step {
                return e;
            }
        }
    }
}
