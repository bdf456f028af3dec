//! Parked IRC clients: a client stops at its user's barrier and hands back its parts
//! ([`park_client`]); [`resume_user`] resumes a parked user with its clients, each on
//! its own socket, with no new login, burst or replay: the client sees nothing but
//! the lines that keep arriving.

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::caps::Caps;
use super::conn::{self, Flow, Session};
use super::io::{self, BoxStream};
use crate::config::DownstreamConfig;
use crate::services::Services;
use crate::store::UserId;
use crate::user::{
    Attach, Attached, ClientPark, ClientParked, ParkClients, ParkedUser, UserError, UserHandle,
};

/// Why a client that cannot be handed on is closed.
const RECONNECT: &str = "Ferry is restarting; reconnect to continue";

/// Stops an attached client at the barrier: what it was sent flushed, then its
/// socket and state handed back on `park`, its position with them (not saved here:
/// one write per client would hold the barrier up; whoever resumes it saves it at
/// once). A client on TLS is switched to kernel TLS first where the kernel offers it
/// (`crate::ktls`); otherwise, or when its session cannot switch now, it is closed
/// instead (it reconnects).
pub(super) async fn park_client(
    s: &mut Session,
    reader: io::Reader,
    writer: io::Writer,
    park: &ParkClients,
) {
    let (stream, mut unread) = io::reunite(reader, writer).await;
    let handed = match io::hand_off(stream) {
        Ok(h) => h,
        Err((why, stream)) => {
            // Closed, not handed on: its position is saved here.
            s.save_position().await;
            return match stream {
                Some(stream) => close(stream, s, &why).await,
                None => {
                    warn!(user = %s.user.name, network = s.network, reason = %why,
                          "parking a client: kernel TLS failed, connection lost");
                }
            };
        }
    };
    let socket = match handed.socket.into_std() {
        Ok(sock) => sock,
        Err(e) => {
            warn!(user = %s.user.name, error = %e, "parking a client: socket");
            s.save_position().await;
            return;
        }
    };
    unread.extend_from_slice(&handed.plain);
    let state = ClientPark {
        network_id: s.network,
        network_name: s.network_name.clone(),
        client_name: s.client_name.clone(),
        peer: s.peer,
        caps: s.caps.enabled().map(str::to_owned).collect(),
        cap_302: s.caps.version_302,
        written: s.written.last(),
        unread: unread.to_vec(),
        detached: s.detached.iter().cloned().collect(),
        ktls: handed.ktls,
    };
    debug!(user = %s.user.name, network = s.network, client = %s.client_name,
           ktls = handed.ktls, "client parked");
    let _ = park
        .parked
        .send(ClientParked {
            id: s.id,
            state,
            socket,
        })
        .await;
}

async fn close(stream: BoxStream, s: &Session, why: &str) {
    info!(user = %s.user.name, network = s.network, reason = why, "client closed, not parked");
    let (_, w) = io::split(stream, s.cfg.write_timeout);
    w.close(RECONNECT).await;
}

/// Resumes a parked user (see `user::Users::resume`) with its parked IRC clients:
/// each is attached before the actor handles anything, then served on its socket
/// from where it was.
///
/// # Errors
/// As `Users::resume` (every socket is then closed).
pub async fn resume_user(
    services: &Services,
    cfg: &DownstreamConfig,
    id: UserId,
    name: &str,
    mut parked: ParkedUser,
) -> anyhow::Result<UserHandle> {
    let clients = std::mem::take(&mut parked.state.clients);
    let sockets = std::mem::take(&mut parked.client_sockets);
    let mut waiting = Vec::new();
    for (state, socket) in clients.into_iter().zip(sockets) {
        let (tx, rx) = mpsc::channel(cfg.outbound_queue.max(1));
        let (reply, attached) = oneshot::channel();
        parked.attach.push((
            Attach {
                network: state.network_id,
                client_name: state.client_name.clone(),
                tx,
                follows_moves: true,
                members: false,
            },
            reply,
        ));
        waiting.push((state, socket, rx, attached));
    }
    let handle = services.users.resume(id, name, parked).await?;
    for (state, socket, rx, attached) in waiting {
        tokio::spawn(serve_resumed(
            state,
            socket,
            rx,
            attached,
            handle.clone(),
            services.clone(),
            cfg.clone(),
        ));
    }
    Ok(handle)
}

/// Serves a client taken over from a parked user until it closes.
async fn serve_resumed(
    state: ClientPark,
    socket: std::net::TcpStream,
    mut rx: mpsc::Receiver<crate::user::Outbound>,
    attached: oneshot::Receiver<Result<Attached, UserError>>,
    user: UserHandle,
    services: Services,
    cfg: DownstreamConfig,
) {
    let stream = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(socket));
    let stream: BoxStream = match stream {
        // Nothing drained into the stream: what rustls held is in `unread`.
        Ok(s) if state.ktls => Box::new(io::KtlsStream::new(s, None)),
        Ok(s) => Box::new(s),
        Err(e) => {
            warn!(user = %user.name, error = %e, "resuming a parked client: socket");
            return;
        }
    };
    let unread = BytesMut::from(&state.unread[..]);
    let (mut reader, mut writer) = io::split_resumed(stream, unread, cfg.write_timeout);
    let attached = match attached.await {
        Ok(Ok(a)) => a,
        _ => return writer.close(RECONNECT).await,
    };
    let (watch, mut notices) = services.users.config().watchers.watch(user.id);
    let active = services.push.as_ref().map(|p| p.irc_attached(user.id));
    let shutdown = services.shutdown.clone();
    let mut s = Session {
        user_id: user.id,
        user,
        cfg,
        fence: attached.fence.clone(),
        network: state.network_id,
        network_name: state.network_name,
        client_name: state.client_name,
        peer: state.peer,
        id: attached.id,
        caps: Caps::from_names(state.caps.iter().map(String::as_str), state.cap_302),
        nick: attached.view.nick.clone(),
        isupport: attached.view.isupport.clone(),
        written: crate::user::resume::Sent::at(state.written),
        // Not saved at the park: `steady` saves it when it starts.
        saved: None,
        noted: None,
        batches: 0,
        detached: state.detached.into_iter().collect(),
        services,
    };
    debug!(user = %s.user.name, network = s.network, client = %s.client_name, "parked client resumed");
    let flow = conn::steady(
        &mut s,
        &mut reader,
        &mut writer,
        &mut rx,
        &mut notices,
        &shutdown,
    )
    .await;
    drop(watch);
    drop(active);
    s.user.detach(s.network, s.id).await;
    match flow {
        Flow::Park(p) => park_client(&mut s, reader, writer, &p).await,
        // A resumed client has no login to follow a move with: it reconnects.
        Flow::Move(m) => {
            s.save_position().await;
            writer.close(&m.reason).await;
        }
        Flow::Close(reason) => {
            s.save_position().await;
            writer.close(&reason).await;
        }
        Flow::Continue => {}
    }
}
