//! One websocket connection: attach to every network, send the `hello` snapshot,
//! replay what the client missed, then relay live lines and run commands.
//!
//! No gap, no duplicate: attaching returns `last_seq` and every live line after it
//! comes through the attach channel. The session flushes the store's writer, replays
//! stored messages with id in `(last_id, last_seq]` (holding live lines back), then
//! sends the held and later live lines, dropping any id not above the last one sent
//! (several networks attach one after the other, so their `last_seq`s differ).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::{self, BoxStream, SelectAll, SplitStream};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::command::{self, Command};
use super::event::{self, BufferInfo, NetCtx, NetworkInfo, ServerEvent};
use super::out::{self, Full, Out};
use super::registry::{self, Control, Registration};
use super::{owner, MAX_FRAME};
use crate::irc::{self, Casemapping, ISupport, Message};
use crate::node::NodeRef;
use crate::store::{BufferKind, HistoryQuery, NetworkId, Seq, User};
use crate::user::{Attach, DownstreamId, NetworkView, Outbound, UserError, UserHandle};

/// Lines the actor may queue for this session before it drops it as too slow.
const LIVE_QUEUE: usize = 4096;
/// Live lines held back during a replay before the client counts as too slow.
const MAX_PENDING: usize = 100_000;
/// How long the server waits for the `resume` command before treating the client as new.
const RESUME_WAIT: Duration = Duration::from_secs(5);
/// Backlog page size for replay.
const PAGE: i64 = 1000;
const HISTORY_DEFAULT: i64 = 100;
const HISTORY_MAX: i64 = 500;

/// Close status codes (RFC 6455 §7.4.1 and the IANA registry).
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TRY_AGAIN: u16 = 1013;
const RESTART: u16 = 1012;

/// How a session ends.
enum Ending {
    /// The client closed or the connection broke.
    ClientGone,
    /// Close after the queued events (e.g. `moved`) are sent.
    Close(u16, String),
    /// Close at once, dropping queued events (the client is too slow).
    Kill(u16, String),
    /// Drop the connection without a close frame (test hook).
    Drop,
}

struct Net {
    id: NetworkId,
    name: String,
    nick: Vec<u8>,
    isupport: ISupport,
    downstream: DownstreamId,
    /// NAMES being received (`353` … `366`): folded channel → members.
    names: HashMap<Vec<u8>, Vec<event::Member>>,
    view: NetworkView,
}

impl Net {
    fn ctx(&self) -> NetCtx<'_> {
        NetCtx {
            name: &self.name,
            nick: &self.nick,
            isupport: &self.isupport,
        }
    }

    fn info(&self) -> NetworkInfo {
        NetworkInfo {
            id: self.id,
            name: self.name.clone(),
            nick: irc::decode(&self.nick).into_owned(),
            state: self.view.state.clone(),
            prefix: self
                .isupport
                .prefix
                .iter()
                .map(|(m, s)| ((*m as char).to_string(), (*s as char).to_string()))
                .collect(),
            chantypes: irc::decode(&self.isupport.chantypes).into_owned(),
        }
    }
}

struct Session {
    node: NodeRef,
    user: User,
    out: Out,
    nets: Vec<Net>,
    /// The newest message id sent to the client.
    last_sent: Seq,
    reg: Registration,
}

type Live = SelectAll<BoxStream<'static, (usize, Option<Outbound>)>>;

/// Serves one upgraded websocket until it ends.
pub async fn run(node: NodeRef, user: User, last_id: Option<Seq>, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let out = Out::spawn(sink);
    let (reg, mut controls) = registry::register(&node.id, user.id);
    let mut s = Session {
        node,
        user,
        out,
        nets: Vec::new(),
        last_sent: 0,
        reg,
    };
    debug!(user = %s.user.name, "websocket connected");
    let handle = s.node.user(s.user.id);
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

        let (mut live, last_seq) = match self.attach_all(handle).await {
            Ok(x) => x,
            Err(e) => return e,
        };
        if let Err(e) = self.hello(last_seq).await {
            return e;
        }
        let mut pending = VecDeque::new();
        let replayed = match last_id {
            Some(after) if after < last_seq => {
                match self.replay(after, last_seq, &mut live, &mut pending).await {
                    Ok(n) => n,
                    Err(e) => return e,
                }
            }
            _ => 0,
        };
        self.last_sent = last_seq;
        if let Err(e) = self.push(&ServerEvent::Synced {
            last_id: last_seq,
            replayed,
        }) {
            return e;
        }
        while let Some((i, o)) = pending.pop_front() {
            if let Err(e) = self.live(handle, i, Some(o)).await {
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
                () = self.node.shutdown.cancelled() => Err(Ending::Close(GOING_AWAY, "the server is shutting down".into())),
                Some(c) = controls.recv() => self.control(c).await,
                Some((i, o)) = live.next(), if !live.is_empty() => self.live(handle, i, o).await,
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

    /// Attaches to every network of the user; returns the merged live lines and the
    /// newest message id.
    async fn attach_all(&mut self, handle: &UserHandle) -> Result<(Live, Seq), Ending> {
        let networks = self
            .node
            .store
            .networks(self.user.id)
            .await
            .map_err(|e| store_failed(&e))?;
        let mut live: Live = SelectAll::new();
        let mut last_seq = 0;
        for n in networks {
            let (tx, rx) = mpsc::channel(LIVE_QUEUE);
            let attached = match handle
                .attach(Attach {
                    network: n.id,
                    client_name: "web".to_owned(),
                    tx,
                })
                .await
            {
                Ok(a) => a,
                Err(UserError::NoSuchNetwork) => continue,
                Err(UserError::Gone) => {
                    return Err(self.moved_or_close("your session ended").await)
                }
            };
            last_seq = last_seq.max(attached.last_seq);
            let idx = self.nets.len();
            let view = attached.view;
            self.nets.push(Net {
                id: n.id,
                name: view.network_name.clone(),
                nick: view.nick.clone(),
                isupport: view.isupport.clone(),
                downstream: attached.id,
                names: HashMap::new(),
                view,
            });
            live.push(lines(idx, rx));
        }
        Ok((live, last_seq))
    }

    async fn hello(&mut self, last_seq: Seq) -> Result<(), Ending> {
        // Counts and buffers as of `last_seq`: lines written before it are stored.
        self.node
            .writer
            .flush()
            .await
            .map_err(|e| store_failed(&e))?;
        let mut buffers = Vec::new();
        for n in &self.nets {
            buffers.extend(self.buffers_of(n).await.map_err(|e| store_failed(&e))?);
        }
        let hello = ServerEvent::Hello {
            user: self.user.name.clone(),
            last_id: last_seq,
            networks: self.nets.iter().map(Net::info).collect(),
            buffers,
            max_frame: MAX_FRAME,
        };
        self.send(&hello).await
    }

    /// The buffers of a network: the stored ones with their counts, live channel
    /// state from the attach view.
    async fn buffers_of(&self, n: &Net) -> Result<Vec<BufferInfo>, crate::store::StoreError> {
        let store = &self.node.store;
        let nick = irc::decode(&n.nick).into_owned();
        let counts = store.unread_counts(self.user.id, n.id, &nick).await?;
        let cm = n.isupport.casemapping;
        let mut out: Vec<BufferInfo> = Vec::new();
        let stored = store.buffers(n.id).await?;
        for b in &stored {
            let live = n.view.channels.iter().find(|c| cm.fold(&c.name) == b.key);
            let c = counts.iter().find(|c| c.key == b.key);
            out.push(BufferInfo {
                network: n.name.clone(),
                name: irc::decode(&b.name).into_owned(),
                kind: match b.kind {
                    BufferKind::Channel => "channel",
                    BufferKind::Query => "query",
                },
                joined: live.is_some(),
                topic: live.and_then(|l| l.topic.as_deref().map(|t| irc::decode(t).into_owned())),
                members: live.map(|l| members(&l.members)).unwrap_or_default(),
                unread: c.map_or(0, |c| c.chat),
                highlights: c.map_or(0, |c| c.highlights),
                read_marker: b.read_marker,
            });
        }
        for l in &n.view.channels {
            if !stored.iter().any(|b| b.key == cm.fold(&l.name)) {
                out.push(BufferInfo {
                    network: n.name.clone(),
                    name: irc::decode(&l.name).into_owned(),
                    kind: "channel",
                    joined: true,
                    topic: l.topic.as_deref().map(|t| irc::decode(t).into_owned()),
                    members: members(&l.members),
                    unread: 0,
                    highlights: 0,
                    read_marker: 0,
                });
            }
        }
        Ok(out)
    }

    /// Sends stored messages with id in `(after, upto]`, oldest first, holding live
    /// lines back in `pending` meanwhile. Returns how many were sent.
    async fn replay(
        &mut self,
        after: Seq,
        upto: Seq,
        live: &mut Live,
        pending: &mut VecDeque<(usize, Outbound)>,
    ) -> Result<u64, Ending> {
        let nets: Vec<(NetworkId, String, Vec<u8>, Casemapping)> = self
            .nets
            .iter()
            .map(|n| (n.id, n.name.clone(), n.nick.clone(), n.isupport.casemapping))
            .collect();
        let node = self.node.clone();
        let user = self.user.id;
        let tx = self.out.sender();
        let backlog = async move {
            node.writer.flush().await.map_err(|e| store_failed(&e))?;
            let mut after = after;
            let mut sent = 0u64;
            loop {
                let rows = node
                    .store
                    .history(&HistoryQuery {
                        user,
                        after: Some(after),
                        before: Some(upto + 1),
                        limit: PAGE,
                        newest_first: false,
                        ..HistoryQuery::default()
                    })
                    .await
                    .map_err(|e| store_failed(&e))?;
                for m in &rows {
                    // Messages of a network removed meanwhile are skipped.
                    let Some((_, name, nick, cm)) = nets.iter().find(|n| n.0 == m.network_id)
                    else {
                        continue;
                    };
                    let ev = ServerEvent::Message(event::from_stored(m, name, nick, *cm));
                    tx.send(out::json(&ev))
                        .await
                        .map_err(|_| Ending::ClientGone)?;
                    sent += 1;
                }
                match rows.last() {
                    Some(last) if rows.len() as i64 == PAGE => after = last.seq,
                    _ => break,
                }
            }
            Ok::<u64, Ending>(sent)
        };
        tokio::pin!(backlog);
        loop {
            tokio::select! {
                r = &mut backlog => return r,
                Some((i, o)) = live.next(), if !live.is_empty() => match o {
                    Some(o) => {
                        pending.push_back((i, o));
                        if pending.len() > MAX_PENDING {
                            return Err(Ending::Kill(POLICY, "too slow to receive the backlog".into()));
                        }
                    }
                    None => return Err(self.channel_ended().await),
                },
            }
        }
    }

    /// Queues a live event; a client whose queue is full is disconnected.
    fn push(&self, ev: &ServerEvent) -> Result<(), Ending> {
        self.out.push(ev).map_err(|e| match e {
            Full::TooSlow => Ending::Kill(
                POLICY,
                "too slow: the client did not read its events in time".into(),
            ),
            Full::Gone => Ending::ClientGone,
        })
    }

    /// Queues an event, waiting for room (snapshot and replies to the client's own
    /// requests, which it paces itself).
    async fn send(&self, ev: &ServerEvent) -> Result<(), Ending> {
        self.out
            .sender()
            .send(out::json(ev))
            .await
            .map_err(|_| Ending::ClientGone)
    }

    async fn control(&mut self, c: Control) -> Result<(), Ending> {
        match c {
            Control::Drop => Err(Ending::Drop),
            Control::Moved(url) => {
                self.push(&ServerEvent::Moved { url })?;
                Err(Ending::Close(RESTART, "your session moved".into()))
            }
            Control::Read {
                network,
                buffer,
                id,
            } => self.push(&ServerEvent::Read {
                network,
                buffer,
                id,
            }),
        }
    }

    /// Sends `moved` when the session runs on another node, else closes with `reason`
    /// (the client reconnects with backoff).
    async fn moved_or_close(&mut self, reason: &str) -> Ending {
        let mut url = owner::owner_ws_url(&self.node, self.user.id).await;
        // A migration is releasing the user here: the actor stopped (closing us)
        // before the ownership moved. Wait for the move (bounded by the hold) so the
        // client gets `moved` rather than a retry against this node.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while url.is_none()
            && self.node.holds.is_held(self.user.id)
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            url = owner::owner_ws_url(&self.node, self.user.id).await;
        }
        match url {
            Some(url) => match self.push(&ServerEvent::Moved { url }) {
                Ok(()) => Ending::Close(RESTART, "your session moved".into()),
                Err(e) => e,
            },
            None => {
                let _ = self.push(&ServerEvent::error(None, "unavailable", reason));
                Ending::Close(TRY_AGAIN, reason.to_owned())
            }
        }
    }

    /// A network's attach channel closed without a `Close`: the actor dropped us as
    /// too slow, or it is gone.
    async fn channel_ended(&mut self) -> Ending {
        if self.node.user(self.user.id).is_some() {
            Ending::Kill(
                POLICY,
                "too slow: the client did not keep up with live messages".into(),
            )
        } else {
            self.moved_or_close("your session ended").await
        }
    }

    async fn live(
        &mut self,
        handle: &UserHandle,
        i: usize,
        o: Option<Outbound>,
    ) -> Result<(), Ending> {
        let Some(o) = o else {
            return Err(self.channel_ended().await);
        };
        let msg = match o {
            Outbound::Close { reason } => return Err(self.moved_or_close(&reason).await),
            Outbound::Reply(msg) => {
                let net = &self.nets[i];
                for ev in event::reply_events(&msg, &net.ctx()) {
                    self.push(&ev)?;
                }
                return Ok(());
            }
            Outbound::Relay {
                msg,
                seq,
                time,
                buffers,
                ..
            } => {
                for ev in event::messages(&msg, seq, time, &buffers, &self.nets[i].ctx()) {
                    if let ServerEvent::Message(m) = &ev {
                        match m.id {
                            Some(id) if id <= self.last_sent => continue,
                            Some(id) => self.last_sent = id,
                            None => {}
                        }
                    }
                    self.push(&ev)?;
                }
                msg
            }
        };
        let net = &mut self.nets[i];
        let mut evs = event::state_events(&msg, &net.ctx());
        match msg.command.as_str() {
            "NICK"
                if msg
                    .source_nick()
                    .is_some_and(|n| net.isupport.casemapping.eq(n, &net.nick)) =>
            {
                net.nick = msg.param(0).unwrap_or_default().to_vec();
            }
            "353" => {
                let chan = net
                    .isupport
                    .casemapping
                    .fold(msg.param(2).unwrap_or_default());
                let more =
                    event::members_of(msg.params.last().map_or(&[][..], |p| &p[..]), &net.isupport);
                net.names.entry(chan).or_default().extend(more);
            }
            "366" => {
                let name = msg.param(1).unwrap_or_default();
                let members = net
                    .names
                    .remove(&net.isupport.casemapping.fold(name))
                    .unwrap_or_default();
                evs.push(ServerEvent::Names {
                    network: net.name.clone(),
                    buffer: irc::decode(name).into_owned(),
                    members,
                });
            }
            _ => {}
        }
        let refresh = msg.command == "NOTICE" && msg.prefix.as_deref() == Some(b"ferry");
        for ev in evs {
            self.push(&ev)?;
        }
        if refresh {
            self.refresh_networks(handle).await?;
        }
        Ok(())
    }

    /// Sends the current state of every network (after a connect or disconnect).
    async fn refresh_networks(&mut self, handle: &UserHandle) -> Result<(), Ending> {
        let Ok(status) = handle.status().await else {
            return Ok(());
        };
        for s in status {
            if let Some(n) = self.nets.iter_mut().find(|n| n.id == s.network_id) {
                n.view.state = s.state;
                n.nick = s.nick.into_bytes();
                let info = n.info();
                self.push(&ServerEvent::Network(info))?;
            }
        }
        Ok(())
    }

    async fn frame(&mut self, handle: &UserHandle, text: &str) -> Result<(), Ending> {
        if text.len() > MAX_FRAME {
            return self.push(&ServerEvent::error(
                None,
                "too_large",
                format!(
                    "a command may be at most {MAX_FRAME} bytes; this one was {}",
                    text.len()
                ),
            ));
        }
        let cmd = match command::parse(text) {
            Ok(c) => c,
            Err((re, message)) => {
                return self.push(&ServerEvent::error(re, "bad_request", message))
            }
        };
        let re = cmd.id();
        let idx = match cmd.network() {
            None => None,
            Some(name) => match self.nets.iter().position(|n| n.name == name) {
                Some(i) => Some(i),
                None => {
                    return self.push(&ServerEvent::error(
                        re,
                        "not_found",
                        format!("no network {name:?}"),
                    ))
                }
            },
        };
        let reply = match self.command(handle, cmd, idx, re.clone()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => ServerEvent::Ok { re },
            Err((code, message)) => ServerEvent::Error { re, code, message },
        };
        self.send(&reply).await
    }

    /// Runs a command; `Ok(None)` is answered with `ok`.
    async fn command(
        &self,
        handle: &UserHandle,
        cmd: Command,
        idx: Option<usize>,
        re: Option<Value>,
    ) -> Result<Option<ServerEvent>, (&'static str, String)> {
        let bad = |m: String| ("bad_request", m);
        let upstream = |lines: Vec<Message>| async move {
            let n = &self.nets[idx.expect("network commands have one")];
            for m in lines {
                handle
                    .from_client(n.id, n.downstream, m)
                    .await
                    .map_err(|_| ("unavailable", "your session is not running".to_owned()))?;
            }
            Ok(None)
        };
        match cmd {
            Command::Resume { .. } => Err(bad("`resume` must be the first command".into())),
            Command::Ping { .. } => Ok(Some(ServerEvent::Pong { re })),
            Command::Query { nick, network, .. } => {
                command::query_target(&nick).map_err(bad)?;
                Ok(Some(ServerEvent::Buffer(BufferInfo {
                    network,
                    name: nick,
                    kind: "query",
                    joined: false,
                    topic: None,
                    members: Vec::new(),
                    unread: 0,
                    highlights: 0,
                    read_marker: 0,
                })))
            }
            Command::Read {
                network,
                buffer,
                last_id,
                ..
            } => {
                let n = &self.nets[idx.expect("has a network")];
                let b = self.find_buffer(n, &buffer).await?;
                self.node
                    .store
                    .set_read_marker(n.id, &b.key, last_id)
                    .await
                    .map_err(|e| internal(&e))?;
                let c = Control::Read {
                    network,
                    buffer: irc::decode(&b.name).into_owned(),
                    id: b.read_marker.max(last_id),
                };
                registry::send(&self.node.id, self.user.id, c, Some(&self.reg));
                Ok(None)
            }
            Command::History {
                network,
                buffer,
                before,
                limit,
                ..
            } => {
                let limit = limit.unwrap_or(HISTORY_DEFAULT);
                if !(1..=HISTORY_MAX).contains(&limit) {
                    return Err(bad(format!("`limit` must be from 1 to {HISTORY_MAX}")));
                }
                let n = &self.nets[idx.expect("has a network")];
                let b = self.find_buffer(n, &buffer).await?;
                let mut rows = self
                    .node
                    .store
                    .history(&HistoryQuery {
                        user: self.user.id,
                        network: Some(n.id),
                        buffer_key: Some(b.key),
                        before,
                        limit: limit + 1,
                        newest_first: true,
                        ..HistoryQuery::default()
                    })
                    .await
                    .map_err(|e| internal(&e))?;
                let more = rows.len() as i64 > limit;
                rows.truncate(limit as usize);
                rows.reverse();
                let cm = n.isupport.casemapping;
                Ok(Some(ServerEvent::History {
                    re,
                    messages: rows
                        .iter()
                        .map(|m| event::from_stored(m, &n.name, &n.nick, cm))
                        .collect(),
                    network,
                    buffer,
                    more,
                }))
            }
            // Every other command sends IRC lines upstream.
            irc => upstream(command::irc_lines(&irc).map_err(bad)?).await,
        }
    }

    async fn find_buffer(
        &self,
        n: &Net,
        name: &str,
    ) -> Result<crate::store::Buffer, (&'static str, String)> {
        let folded = n.isupport.casemapping.fold(name.as_bytes());
        let buffers = self
            .node
            .store
            .buffers(n.id)
            .await
            .map_err(|e| internal(&e))?;
        buffers
            .into_iter()
            .find(|b| b.name == name.as_bytes() || b.key == folded)
            .ok_or_else(|| {
                (
                    "not_found",
                    format!("no buffer {name:?} on network {:?}", n.name),
                )
            })
    }
}

/// The lines of one network's attach channel, tagged with its index, ending with
/// `None` when the channel closes.
fn lines(
    idx: usize,
    rx: mpsc::Receiver<Outbound>,
) -> BoxStream<'static, (usize, Option<Outbound>)> {
    stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(o) => Some(((idx, Some(o)), Some(rx))),
            None => Some(((idx, None), None)),
        }
    })
    .boxed()
}

fn members(m: &[(Vec<u8>, Vec<u8>)]) -> Vec<event::Member> {
    m.iter()
        .map(|(p, n)| event::Member {
            nick: irc::decode(n).into_owned(),
            prefix: irc::decode(p).into_owned(),
        })
        .collect()
}

fn store_failed(e: &dyn std::fmt::Display) -> Ending {
    warn!(error = %e, "websocket: store failed");
    Ending::Close(
        TRY_AGAIN,
        "could not read the backlog, try again later".into(),
    )
}

fn internal(e: &dyn std::fmt::Display) -> (&'static str, String) {
    warn!(error = %e, "websocket command failed");
    ("internal", "internal error; see the server log".into())
}
