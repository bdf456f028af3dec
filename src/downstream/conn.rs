//! One client connection from login to close, and the attached loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::adapt::{self, Client};
use super::caps::{self, Caps};
use super::error::ProtoError;
use super::io::{self, BoxStream, WriteError, Writer};
use super::unbound::unbound;
use super::{bouncer, bouncerserv, burst, login, replay, webpush};
use crate::config::DownstreamConfig;
use crate::irc::{numeric, ISupport, Message};
use crate::services::Services;
use crate::store::{NetworkId, Seq, UserId};
use crate::user::resume::{self, Backlog, Held, Interrupted, Sent, Window};
use crate::user::{watch, Attach, DownstreamId, Moving, Notice, Outbound, StateChange, UserHandle};

/// How often the client's backlog position is noted while it changes (the node
/// writes what is noted every `store::positions::FLUSH_EVERY`).
const NOTE_POSITION_EVERY: Duration = Duration::from_secs(2);

/// An attached client: everything the loop and its handlers need.
pub struct Session {
    pub services: Services,
    pub cfg: DownstreamConfig,
    pub user: UserHandle,
    pub user_id: UserId,
    /// The actor's ownership fence: positions are saved only while it holds.
    pub fence: crate::store::Fence,
    pub network: NetworkId,
    /// The network's name, as read markers name it to websockets.
    pub network_name: String,
    pub client_name: String,
    /// The client's address: BouncerServ's password checks count against it.
    pub peer: std::net::IpAddr,
    pub id: DownstreamId,
    pub caps: Caps,
    /// Our nick on the network: the attach snapshot's, then the actor's
    /// [`StateChange::Nick`]s.
    pub nick: Vec<u8>,
    /// The network's ISUPPORT: the attach snapshot's, then the actor's
    /// [`StateChange::ISupport`]s.
    pub isupport: ISupport,
    /// The highest message id the client has been given (or skipped by
    /// choice): its backlog position; live lines not above it are duplicates.
    pub written: Sent,
    pub(super) saved: Option<Seq>,
    /// The last position noted with the node's positions ([`Session::note_position`]).
    pub(super) noted: Option<Seq>,
    pub batches: u64,
    /// Detached channels (folded names): their stored lines are not replayed.
    pub detached: std::collections::HashSet<Vec<u8>>,
}

impl Session {
    pub fn client(&self) -> Client<'_> {
        Client {
            caps: &self.caps,
            nick: &self.nick,
            isupport: &self.isupport,
        }
    }

    pub fn nick_str(&self) -> String {
        String::from_utf8_lossy(&self.nick).into_owned()
    }

    pub(super) async fn save_position(&mut self) {
        let Some(seq) = self.written.last() else {
            return;
        };
        if self.saved == Some(seq) || self.services.lease.riding_out() {
            // Riding out a store outage the position is saved once the store is back
            // (the next tick): asking now would stall this client's relay.
            return;
        }
        match self
            .services
            .positions
            .save_now(&self.fence, self.network, &self.client_name, seq)
            .await
        {
            Ok(_) => self.saved = Some(seq),
            Err(e) => {
                tracing::warn!(error = %e, user = %self.user.name, network = self.network, "saving client position failed")
            }
        }
    }

    /// Notes the position with the node's [`crate::store::Positions`], which writes
    /// every client's together: never waits on the store. Each client saving its
    /// own every few seconds, awaited in the relay loop, queued a thousand
    /// single-row writes for the store's connections (on SQLite, for its one write
    /// lock), and each client relayed nothing until its turn; in a task beside the
    /// relay they still took a connection each, and the heartbeat waited behind
    /// them. Saves are monotonic in the store, so a noted position written after a
    /// later awaited save changes nothing.
    pub(super) fn note_position(&mut self) {
        let Some(seq) = self.written.last() else {
            return;
        };
        if self.saved == Some(seq) || self.noted == Some(seq) {
            return;
        }
        self.services
            .positions
            .note(&self.fence, self.network, &self.client_name, seq);
        self.noted = Some(seq);
    }

    /// Writes one line from the actor, adapted to this client.
    pub async fn outbound(&mut self, w: &mut Writer, o: Outbound) -> Result<Flow, WriteError> {
        match o {
            Outbound::Relay {
                msg,
                seq,
                time,
                echo_of,
                ..
            } => {
                if seq.is_some_and(|s| !self.written.fresh(s)) {
                    return Ok(Flow::Continue);
                }
                let own_echo = echo_of.is_some_and(|e| e == self.id);
                if !own_echo || self.caps.has("echo-message") {
                    if let Some(m) = adapt::adapt(&msg, seq, time, &self.client()) {
                        w.feed(&m).await?;
                    }
                }
                if msg.command.as_str() == "JOIN" && self.caps.has(watch::READ_MARKER) {
                    let ours = msg
                        .source_nick()
                        .is_some_and(|n| self.isupport.casemapping.eq(n, &self.nick));
                    if let (true, Some(chan)) = (ours, msg.param(0)) {
                        let chan = chan.to_vec();
                        if let Some(m) = self.marker_line(&chan).await {
                            w.feed(&m).await?;
                        }
                    }
                }
                if let Some(seq) = seq {
                    self.written.mark(seq);
                }
                Ok(Flow::Continue)
            }
            Outbound::Reply(m) => {
                // A reply to this client's own query, adapted like any line: tags
                // (`batch` of a labeled response, `time`) only as negotiated.
                if let Some(m) = adapt::adapt(&m, None, reply_time(&m), &self.client()) {
                    w.feed(&m).await?;
                }
                Ok(Flow::Continue)
            }
            Outbound::Channel(change) => {
                self.channel_change(w, &change).await?;
                Ok(Flow::Continue)
            }
            Outbound::State(change) => {
                self.state_change(w, &change).await?;
                Ok(Flow::Continue)
            }
            // IRC clients learn of connects and disconnects from the actor's NOTICEs.
            Outbound::Network(_) => Ok(Flow::Continue),
            Outbound::Close { reason } => Ok(Flow::Close(reason)),
            Outbound::Moving(m) => {
                // Saved while this node still owns the user: the new owner replays
                // from here, so the client gets each line once.
                self.save_position().await;
                let _ = m.saved.try_send(());
                if self.caps.has(caps::PROXY) {
                    // Another Ferry node proxies this client: it follows by itself.
                    Ok(Flow::Close(crate::user::MOVING.to_owned()))
                } else {
                    Ok(Flow::Move(m))
                }
            }
            Outbound::Park(p) => Ok(Flow::Park(p)),
        }
    }

    /// A channel attached again, with lines to replay: as [`Session::channel_change`],
    /// holding the live lines that arrive meanwhile (the resume protocol's `hold`),
    /// then passing them through.
    async fn channel_attached(
        &mut self,
        w: &mut Writer,
        rx: &mut mpsc::Receiver<Outbound>,
        change: &crate::user::ChannelChange,
    ) -> Result<Flow, WriteError> {
        let mut held = Held::new();
        let live = futures::stream::poll_fn(|cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, ()>)));
        match resume::hold(self.channel_change(w, change), live, &mut held).await {
            Ok(()) => {}
            Err(Interrupted::Backlog(e)) => return Err(e),
            Err(Interrupted::TooSlow) => {
                return Ok(Flow::Close("too slow to receive the backlog".into()))
            }
            Err(Interrupted::Live(())) => unreachable!("the attach channel yields no error"),
        }
        for o in held {
            match self.outbound(w, o).await? {
                Flow::Continue => {}
                end => return Ok(end),
            }
        }
        Ok(Flow::Continue)
    }

    /// A channel detached (a `PART` for it) or attached again (its `JOIN`, topic and
    /// names, then the lines stored since it was detached).
    async fn channel_change(
        &mut self,
        w: &mut Writer,
        change: &crate::user::ChannelChange,
    ) -> Result<(), WriteError> {
        let ch = &change.channel;
        let key = self.isupport.casemapping.fold(&ch.name);
        let prefix = String::from_utf8_lossy(&change.own_prefix).into_owned();
        let now = chrono::Utc::now();
        if ch.detached {
            self.detached.insert(key);
            let part = Message::new(
                "PART",
                [
                    Bytes::from(ch.name.clone()),
                    Bytes::from_static(b"detached"),
                ],
            )
            .with_prefix(prefix);
            if let Some(m) = adapt::adapt(&part, None, now, &self.client()) {
                w.feed(&m).await?;
            }
            return Ok(());
        }
        self.detached.remove(&key);
        let lines = burst::channel_lines(
            &self.cfg.server_name,
            &self.nick_str(),
            &prefix,
            ch,
            &self.isupport,
            &self.caps,
        );
        for l in &lines {
            if let Some(m) = adapt::adapt(l, None, now, &self.client()) {
                w.feed(&m).await?;
            }
        }
        let Some(since) = change.since else {
            return Ok(());
        };
        // What was said while it was detached, `(since, until]`, by the resume
        // protocol's pages (`user::resume`): the writer flushed first, then page by
        // page. None of it was given to this client: the channel's lines are not
        // relayed while it is detached.
        let base = crate::store::HistoryQuery {
            user: self.user_id,
            network: Some(self.network),
            buffer_key: Some(key),
            ..Default::default()
        };
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, user = %self.user.name, "replaying an attached channel failed");
        };
        let backlog =
            match Backlog::flushed(&self.services.store, &self.services.writer, base).await {
                Ok(b) => b,
                Err(e) => {
                    failed(&e);
                    return Ok(());
                }
            };
        let mut pages = backlog.pages(Window::After(since), change.until);
        let mut newest = None;
        loop {
            let rows = match pages.next().await {
                Ok(Some(rows)) => rows,
                Ok(None) => break,
                Err(e) => {
                    failed(&e);
                    break;
                }
            };
            let client = self.client();
            for m in &rows {
                if let Some(m) = adapt::from_store(m, &client) {
                    w.feed(&m).await?;
                }
            }
            newest = rows.last().map(|m| m.seq).or(newest);
        }
        // Every other line with an id up to `until` was relayed before the change
        // and is handled already; the one that attached the channel follows live and
        // is dropped if the replay had it.
        if let Some(seq) = newest {
            self.written.mark(seq);
        }
        Ok(())
    }

    /// The actor's live state changed: our nick and ISUPPORT follow it; a nick
    /// the client saw no NICK line for (a registration under another nick) is told
    /// with one, as the burst does; a changed ISUPPORT with `005` lines of what
    /// changed; a gap marker is the NOTICE from `*ferry*` it is
    /// stored as. Member changes are not sent to IRC clients (they read the lines).
    async fn state_change(
        &mut self,
        w: &mut Writer,
        change: &StateChange,
    ) -> Result<(), WriteError> {
        match change {
            StateChange::Nick { old, new, relayed } => {
                self.nick.clone_from(new);
                if !relayed {
                    let nick = Message::new("NICK", [Bytes::from(new.clone())])
                        .with_prefix(Bytes::from(old.clone()));
                    if let Some(m) = adapt::adapt(&nick, None, chrono::Utc::now(), &self.client()) {
                        w.feed(&m).await?;
                    }
                }
            }
            StateChange::ISupport(isupport) => {
                // Told as a server tells a change: the tokens that differ, in `005`.
                let lines = super::burst::isupport_changes(
                    &self.cfg.server_name,
                    &String::from_utf8_lossy(&self.nick),
                    &self.network_name,
                    &self.isupport,
                    isupport,
                );
                self.isupport = (**isupport).clone();
                for m in &lines {
                    w.feed(m).await?;
                }
            }
            StateChange::Gap(gap) => {
                if !self.written.fresh(gap.seq) {
                    return Ok(());
                }
                if let Some(m) = gap
                    .message()
                    .and_then(|m| adapt::adapt(&m, Some(gap.seq), gap.time, &self.client()))
                {
                    w.feed(&m).await?;
                }
                self.written.mark(gap.seq);
            }
            StateChange::Members { .. } | StateChange::Member(_) => {}
        }
        Ok(())
    }

    /// Handles one command from the client.
    async fn handle_client(&mut self, w: &mut Writer, msg: Message) -> Result<Flow, WriteError> {
        let server = self.cfg.server_name.clone();
        let nick = self.nick_str();
        if bouncerserv::addressed(&msg) {
            // Answered here; never passed to the actor, so never sent upstream.
            return self.bouncerserv(w, &msg, &server, &nick).await;
        }
        match msg.command.as_str() {
            "PING" => {
                let token = msg.params.first().cloned().unwrap_or_default();
                let pong =
                    Message::new("PONG", [Bytes::from(server.clone()), token]).with_prefix(server);
                w.send(&pong).await?;
            }
            "CAP" => {
                let (out, _) = caps::handle(&msg, &mut self.caps, &server, &nick);
                w.send_all(&out).await?;
            }
            "QUIT" => return Ok(Flow::Close("quit".into())),
            "CHATHISTORY" => self.chathistory(w, &msg).await?,
            "BOUNCER" => {
                let ctx = bouncer::Ctx {
                    services: &self.services,
                    user_id: self.user_id,
                    caps: &self.caps,
                    server: &server,
                    nick: &nick,
                };
                let out = bouncer::handle(&ctx, &msg).await;
                w.send_all(&out).await?;
            }
            "MARKREAD" => {
                let out = self.markread(&msg).await;
                w.send_all(&out).await?;
            }
            "WEBPUSH" => {
                let out = webpush::handle(
                    self.services.push.as_deref(),
                    self.user_id,
                    &msg,
                    &server,
                    &nick,
                )
                .await;
                w.send_all(&out).await?;
            }
            "PASS" | "USER" => {
                w.send(&ProtoError::AlreadyRegistered.to_message(&server, &nick))
                    .await?
            }
            "AUTHENTICATE" => {
                let m = Message::new(
                    numeric::ERR_SASLALREADY,
                    [nick.clone(), "You have already authenticated".to_owned()],
                )
                .with_prefix(server);
                w.send(&m).await?;
            }
            _ => {
                if self
                    .user
                    .from_client(self.network, self.id, msg)
                    .await
                    .is_err()
                {
                    return Ok(Flow::Close("session ended".into()));
                }
            }
        }
        Ok(Flow::Continue)
    }
}

impl Session {
    /// Answers a line addressed to BouncerServ (echoing it first to a client with
    /// `echo-message`, which shows its own lines only when echoed).
    async fn bouncerserv(
        &mut self,
        w: &mut Writer,
        msg: &Message,
        server: &str,
        nick: &str,
    ) -> Result<Flow, WriteError> {
        if self.caps.has("echo-message") && msg.command.as_str() != "TAGMSG" {
            // The client's own tags (a label, `+typing`) are not echoed.
            let echo =
                Message::new(msg.command.as_str(), msg.params.clone()).with_prefix(nick.to_owned());
            if let Some(m) = adapt::adapt(&echo, None, chrono::Utc::now(), &self.client()) {
                w.send(&m).await?;
            }
        }
        let caller = bouncerserv::Caller {
            services: &self.services,
            user_id: self.user_id,
            network: self.network,
            peer: self.peer,
        };
        let out = bouncerserv::handle(&caller, msg, server, nick).await;
        for m in &out {
            if let Some(m) = adapt::adapt(m, None, chrono::Utc::now(), &self.client()) {
                w.feed(&m).await?;
            }
        }
        w.flush().await?;
        Ok(Flow::Continue)
    }
}

pub enum Flow {
    Continue,
    Close(String),
    /// The user moved: follow it on this socket (see `proxy::follow`).
    Move(Arc<Moving>),
    /// The user is parked: hand this connection's parts back (see `park`).
    Park(Arc<crate::user::ParkClients>),
}

/// Serves one client connection (from `peer`) until it closes.
pub async fn run(
    stream: BoxStream,
    peer: std::net::IpAddr,
    services: Services,
    cfg: DownstreamConfig,
    shutdown: CancellationToken,
) {
    let (mut reader, mut writer) = io::split(stream, cfg.write_timeout);
    let reg =
        match login::register(&mut reader, &mut writer, peer, &services, &cfg, &shutdown).await {
            Ok(r) => r,
            Err(reason) => return writer.close(&reason).await,
        };
    let handle = match reg.handle.clone() {
        Some(h) => h,
        None => return super::proxy::run(reader, writer, &services, &reg).await,
    };
    // Registered before the burst, so that no change after it is missed.
    let (watch, mut notices) = services.users.config().watchers.watch(reg.verified.user.id);
    let Some(net) = reg.verified.network.clone() else {
        let reason = unbound(
            &services,
            &cfg,
            &reg,
            peer,
            &mut reader,
            &mut writer,
            &mut notices,
            &shutdown,
        )
        .await;
        drop(watch);
        tracing::info!(user = %reg.verified.user.name, reason = %reason, "bouncer client closed");
        return writer.close(&reason).await;
    };
    let (tx, mut rx) = mpsc::channel(cfg.outbound_queue.max(1));
    let network = net.id;
    let client_name = reg.verified.client_name.clone();
    let attached = match handle
        .attach(Attach {
            network,
            client_name: client_name.clone(),
            tx,
            follows_moves: true,
            members: false,
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return writer.close(&e.to_string()).await,
    };
    tracing::info!(user = %reg.verified.user.name, network = %net.name, client = %client_name, "client attached");
    // An attached IRC client may hold pushes back (the user's push setting).
    let active = services
        .push
        .as_ref()
        .map(|p| p.irc_attached(reg.verified.user.id));
    let mut s = Session {
        services,
        cfg,
        user: handle,
        user_id: reg.verified.user.id,
        fence: attached.fence.clone(),
        network,
        network_name: net.name.clone(),
        client_name,
        peer,
        id: attached.id,
        caps: reg.caps,
        nick: attached.view.nick.clone(),
        isupport: attached.view.isupport.clone(),
        written: Sent::default(),
        saved: None,
        noted: None,
        batches: 0,
        detached: attached
            .view
            .channels
            .iter()
            .filter(|c| c.detached)
            .map(|c| attached.view.isupport.casemapping.fold(&c.name))
            .collect(),
    };
    let reason = attached_loop(
        &mut s,
        &mut reader,
        &mut writer,
        &mut rx,
        &mut notices,
        &reg.nick,
        attached,
        &shutdown,
    )
    .await;
    drop(watch);
    // No longer active before the actor hears of the detach.
    drop(active);
    s.user.detach(s.network, s.id).await;
    match reason {
        Flow::Move(m) => {
            tracing::info!(user = %s.user.name, network = s.network, "client follows its user to the new owner");
            let known = super::proxy::Known {
                nick: s.nick.clone(),
                channels: m.channels.clone(),
            };
            let me = s.services.node.id.to_string();
            super::proxy::follow(
                reader,
                writer,
                &s.services,
                &reg.verified,
                &s.caps,
                known,
                me,
            )
            .await;
        }
        Flow::Close(reason) => {
            s.save_position().await;
            tracing::info!(user = %s.user.name, network = s.network, reason = %reason, "client detached");
            writer.close(&reason).await;
        }
        Flow::Park(p) => super::park::park_client(&mut s, reader, writer, &p).await,
        Flow::Continue => unreachable!("the attached loop ends with a close or a move"),
    }
}

// The connection's parts, each distinct; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn attached_loop(
    s: &mut Session,
    reader: &mut io::Reader,
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Outbound>,
    notices: &mut mpsc::Receiver<Arc<Notice>>,
    client_nick: &[u8],
    attached: crate::user::Attached,
    shutdown: &CancellationToken,
) -> Flow {
    let mut lines = burst::burst(&s.cfg.server_name, &attached.view, client_nick, &s.caps);
    let last_005 = |lines: &[Message]| {
        lines
            .iter()
            .rposition(|l| l.command.as_str() == "005")
            .map_or(lines.len(), |i| i + 1)
    };
    let at = last_005(&lines);
    let cnick = String::from_utf8_lossy(client_nick).into_owned();
    lines.insert(at, bouncer::isupport(&s.cfg.server_name, &cnick, s.network));
    if s.caps.has(watch::READ_MARKER) {
        // Each channel's marker right after its JOIN, before its NAMES.
        let mut with = Vec::with_capacity(lines.len() + attached.view.channels.len());
        for l in lines {
            let join = (l.command.as_str() == "JOIN").then(|| l.param(0).map(<[u8]>::to_vec));
            with.push(l);
            if let Some(Some(chan)) = join {
                if let Some(m) = s.marker_line(&chan).await {
                    with.push(m);
                }
            }
        }
        lines = with;
    }
    if let (Some(push), true) = (&s.services.push, s.caps.has(webpush::CAP)) {
        let nick = String::from_utf8_lossy(client_nick);
        // After the burst's own 005s, before the MOTD numeric is fine too: clients
        // read every 005.
        let at = lines
            .iter()
            .rposition(|l| l.command.as_str() == "005")
            .map_or(lines.len(), |i| i + 1);
        lines.insert(at, webpush::isupport(push, &s.cfg.server_name, &nick));
    }
    if s.caps.has(watch::NETWORKS_NOTIFY) {
        if let Ok(Some(user)) = s.services.store.user(s.user_id).await {
            lines.extend(bouncer::list(&s.services, &user, &s.caps, &s.cfg.server_name).await);
        }
    }
    if let Err(e) = w.send_all(&lines).await {
        return Flow::Close(e.to_string());
    }
    let mut pending = Held::new();
    if !s.caps.has("draft/chathistory") {
        match replay::replay(s, w, rx, attached.last_seq).await {
            Ok((p, position)) => {
                pending = p;
                // A client whose saved position is ahead (it saw lines the
                // actor counted after `last_seq`) must not get them twice.
                s.written = Sent::at(position);
            }
            Err(e) => return Flow::Close(e),
        }
    }
    // Everything up to `last_seq` was replayed (or is the client's to ask for).
    s.written.mark(attached.last_seq);
    for o in pending {
        match s.outbound(w, o).await {
            Ok(Flow::Continue) => {}
            Ok(end) => return end,
            Err(e) => return Flow::Close(e.to_string()),
        }
    }
    if let Err(e) = w.flush().await {
        return Flow::Close(e.to_string());
    }
    steady(s, reader, w, rx, notices, shutdown).await
}

/// The attached loop after the burst and replay: lines from the client, lines from
/// the actor, notices, the position saved now and then. Also where a client taken
/// over from a parked user carries on (see `park`).
pub(super) async fn steady(
    s: &mut Session,
    reader: &mut io::Reader,
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Outbound>,
    notices: &mut mpsc::Receiver<Arc<Notice>>,
    shutdown: &CancellationToken,
) -> Flow {
    // Noted at once (a client taken over at a handoff was not saved at its park),
    // then every few seconds, each client at its own phase.
    s.note_position();
    let phase = NOTE_POSITION_EVERY.mul_f64(rand::random::<f64>());
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, NOTE_POSITION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flow = tokio::select! {
            _ = shutdown.cancelled() => Ok(Flow::Close(closing_reason(rx))),
            m = reader.next() => match m {
                Some(m) => s.handle_client(w, m).await,
                None => Ok(Flow::Close("connection closed".into())),
            },
            o = rx.recv() => match o {
                Some(o) => drain(s, w, rx, o).await,
                None => Ok(Flow::Close("session ended".into())),
            },
            Some(n) = notices.recv() => {
                match bouncer::notice_for(&n, &s.caps, Some(s.network), &s.cfg.server_name) {
                    Some(m) => w.send(&m).await.map(|()| Flow::Continue),
                    None => Ok(Flow::Continue),
                }
            }
            _ = tick.tick() => {
                s.note_position();
                Ok(Flow::Continue)
            }
        };
        match flow {
            Ok(Flow::Continue) => {}
            Ok(end) => return end,
            Err(e) => return Flow::Close(e.to_string()),
        }
    }
}

/// Why the node shutting down closes the client: the actor stops its users first and
/// queues each client's close with the reason ("Ferry is restarting …"), which the
/// select may not have read yet when the shutdown token fires.
fn closing_reason(rx: &mut mpsc::Receiver<Outbound>) -> String {
    while let Ok(o) = rx.try_recv() {
        if let Outbound::Close { reason } = o {
            return reason;
        }
    }
    "server shutting down".into()
}

/// Writes `first` and whatever else is queued, then flushes once.
async fn drain(
    s: &mut Session,
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
) -> Result<Flow, WriteError> {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(o) = next.take() {
        let flow = match o {
            Outbound::Channel(change) if change.since.is_some() && !change.channel.detached => {
                s.channel_attached(w, rx, &change).await?
            }
            o => s.outbound(w, o).await?,
        };
        if !matches!(flow, Flow::Continue) {
            let _ = w.flush().await;
            return Ok(flow);
        }
        n += 1;
        if n < 256 {
            next = rx.try_recv().ok();
        }
    }
    w.flush().await?;
    Ok(Flow::Continue)
}

/// A reply's server time, else now.
fn reply_time(m: &crate::irc::Message) -> chrono::DateTime<chrono::Utc> {
    m.tag("time")
        .and_then(crate::irc::time::parse)
        .unwrap_or_else(chrono::Utc::now)
}
