//! Parking a user: every plaintext upstream stops at one barrier and yields its
//! parts, with the live state the actor needs to carry on without the network; a
//! new actor resumes from them (see `upstream::park` for one connection).
//!
//! The barrier: the actor asks every registered upstream to park, and until all
//! have answered it goes on handling what they report (an upstream blocked on a full
//! event queue would never see the request otherwise). Once all have answered, it
//! handles every event still queued — the lines cut before each barrier — then
//! flushes the writer: each line read before the barrier is stored and relayed by
//! this actor, each line after it by the resumed one, none twice. Upstreams that
//! cannot be parked (TLS, not registered) are QUIT as a restart does and listed in
//! [`UserPark::reconnect`]: the resumed actor connects them again through the
//! limiter.
//!
//! Not carried yet: attached clients (they are closed as by a restart and log in
//! again, resuming from their saved position), pending gap fills, rejoin windows
//! and labelled replies in flight.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::irc::ISupport;
use crate::store::{NetworkId, Seq, UserId};
use crate::upstream::{self, NotParked, ParkedUpstream, UpstreamCommand, UpstreamPark};

use super::super::state::Channel;
use super::super::ConnState;
use super::regain::Regain;
use super::Actor;

/// The current version of [`UserPark`]; a resume refuses any other.
pub const USER_PARK_VERSION: u32 = 1;

/// A parked user: its state (serialisable) and its upstream sockets, carried beside
/// it by network.
#[derive(Debug)]
pub struct ParkedUser {
    pub state: UserPark,
    pub sockets: HashMap<NetworkId, std::net::TcpStream>,
}

/// What a user's actor carries across a park.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserPark {
    pub version: u32,
    pub user_id: UserId,
    /// The newest message id assigned (every line before the barrier is committed).
    pub last_seq: Seq,
    /// Networks whose connection was parked.
    pub networks: Vec<NetPark>,
    /// Networks whose connection could not be parked (TLS, not registered): QUIT,
    /// to be connected again.
    pub reconnect: Vec<NetworkId>,
}

/// One parked network: what registration told us and what happened since.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetPark {
    pub network_id: NetworkId,
    pub nick: Vec<u8>,
    pub caps: BTreeSet<String>,
    pub isupport: ISupport,
    pub user_modes: Vec<u8>,
    pub userhost: Option<Vec<u8>>,
    pub motd: Option<Vec<Vec<u8>>>,
    pub away: Option<Vec<u8>>,
    /// Ferry's auto-away is set on this connection.
    pub auto_away: bool,
    pub channels: Vec<ChannelPark>,
    /// The connection itself (its socket is in [`ParkedUser::sockets`]).
    pub upstream: UpstreamPark,
}

/// One channel we are in, with its members as our connection was told them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelPark {
    pub name: Vec<u8>,
    pub topic: Option<Vec<u8>>,
    pub topic_meta: Option<(Vec<u8>, i64)>,
    /// (prefixes, nick) of every member.
    pub members: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why parked parts could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum UserResumeError {
    #[error("parked user state version {0} is not {USER_PARK_VERSION}")]
    Version(u32),
    #[error("parked state is for user {0}, not {1}")]
    WrongUser(UserId, UserId),
}

impl Actor {
    /// Parks every registered plaintext upstream at one barrier (see the module's
    /// doc), QUITs the others, closes the clients and flushes. The actor ends after.
    pub(super) async fn park(&mut self) -> ParkedUser {
        let mut waiting: Vec<(NetworkId, oneshot::Receiver<Result<ParkedUpstream, NotParked>>)> =
            Vec::new();
        for net in self.nets.values_mut() {
            let Some(up) = &net.upstream else { continue };
            let (tx, rx) = oneshot::channel();
            // `send`, not `try_send`: the park must not be lost to a full queue, and
            // the task drains its queue while it runs.
            if up.commands.send(UpstreamCommand::Park(tx)).await.is_ok() {
                waiting.push((net.config.id, rx));
            }
        }
        let mut answers: HashMap<NetworkId, Result<ParkedUpstream, NotParked>> = HashMap::new();
        let all = futures::future::join_all(waiting.into_iter().map(|(id, rx)| async move {
            (id, rx.await.unwrap_or(Err(NotParked::Gone)))
        }));
        tokio::pin!(all);
        // Until every upstream has answered, keep handling what they report.
        loop {
            tokio::select! {
                biased;
                done = &mut all => {
                    answers.extend(done);
                    break;
                }
                Some((network, event)) = self.up_rx.recv() => self.upstream_event(network, event).await,
            }
        }
        // What was cut before each barrier and is still queued.
        while let Ok((network, event)) = self.up_rx.try_recv() {
            if answers.get(&network).is_some_and(|a| a.is_ok()) {
                self.upstream_event(network, event).await;
            }
        }
        let mut state = UserPark {
            version: USER_PARK_VERSION,
            user_id: self.id,
            last_seq: 0,
            networks: Vec::new(),
            reconnect: Vec::new(),
        };
        let mut sockets = HashMap::new();
        for net in self.nets.values_mut() {
            net.close_clients("Ferry is restarting; reconnect to continue");
            match answers.remove(&net.config.id) {
                Some(Ok(parked)) => {
                    // The task has ended by itself; the handle goes.
                    net.upstream = None;
                    let s = &net.state;
                    let channels = s
                        .channels
                        .values()
                        .map(|c| ChannelPark {
                            name: c.name.clone(),
                            topic: c.topic.clone(),
                            topic_meta: c.topic_meta.clone(),
                            members: c.roster.snapshot(),
                        })
                        .collect();
                    state.networks.push(NetPark {
                        network_id: net.config.id,
                        nick: s.nick.clone(),
                        caps: (*s.caps).clone(),
                        isupport: (*s.isupport).clone(),
                        user_modes: s.user_modes.clone(),
                        userhost: s.userhost.clone(),
                        motd: s
                            .motd
                            .as_ref()
                            .map(|m| m.iter().map(|l| l.to_vec()).collect()),
                        away: s.away.clone(),
                        auto_away: net.away.auto,
                        channels,
                        upstream: parked.state,
                    });
                    sockets.insert(net.config.id, parked.socket);
                }
                Some(Err(why)) => {
                    info!(user = %self.name, network = %net.config.name, %why, "not parked: reconnecting after the handoff");
                    net.quit_upstream(&self.config.quit_message).await;
                    state.reconnect.push(net.config.id);
                }
                None => {}
            }
        }
        if let Err(e) = self.writer.flush().await {
            warn!(user = %self.name, error = %e, "parking: flushing the backlog failed");
        }
        state.last_seq = self.recorder.last_seq;
        info!(user = %self.name, parked = state.networks.len(), reconnect = state.reconnect.len(), "user parked");
        ParkedUser { state, sockets }
    }

    /// Takes over a parked network (called by `start` instead of connecting it): its
    /// state as it was at the barrier, its upstream task on the parked socket.
    pub(super) fn resume_network(&mut self, park: NetPark, socket: std::net::TcpStream) -> bool {
        let Some(mut net) = self.nets.remove(&park.network_id) else {
            return false;
        };
        let registration = upstream::Registration {
            nick: park.nick,
            isupport: park.isupport,
            caps: park.caps,
            server_name: Vec::new(),
            user_modes: park.user_modes,
            userhost: park.userhost,
            motd: park
                .motd
                .map(|m| m.into_iter().map(bytes::Bytes::from).collect()),
            account: None,
        };
        net.state.registered(&registration);
        net.state.away = park.away;
        net.away.auto = park.auto_away;
        for c in park.channels {
            let folded = net.state.fold(&c.name);
            let mut roster = super::super::roster::Roster::default();
            for (prefixes, nick) in &c.members {
                roster.insert_with_prefixes(&net.state.fold(nick), nick, prefixes);
            }
            net.state.channels.insert(
                folded,
                Channel {
                    name: c.name,
                    topic: c.topic,
                    topic_meta: c.topic_meta,
                    roster,
                    names_in_progress: false,
                },
            );
        }
        let caps = &net.state.caps;
        net.router.reset(
            ["labeled-response", "batch", "message-tags"]
                .iter()
                .all(|c| caps.contains(*c)),
        );
        net.regain = (!net.state.is_me(net.config.nick.as_bytes())).then(Regain::new);
        net.last_read = Some(std::time::Instant::now());
        // Nothing was missed: the connection never went away.
        net.resumed = false;
        let cfg = self.upstream_config(&net);
        let parked = ParkedUpstream {
            state: park.upstream,
            socket,
        };
        let ok = match upstream::resume(cfg, parked, self.up_tx.clone(), self.cancel.child_token())
        {
            Ok(handle) => {
                net.upstream = Some(handle);
                net.state.conn = ConnState::Connected;
                true
            }
            Err(e) => {
                warn!(user = %self.name, network = %net.config.name, error = %e, "could not resume the parked connection: reconnecting");
                net.state.disconnected(ConnState::Stopped);
                self.start_upstream(&mut net);
                false
            }
        };
        net.conn_changed();
        self.nets.insert(park.network_id, net);
        ok
    }
}

/// Checks parked state before a resume.
pub(super) fn check(state: &UserPark, user: UserId) -> Result<(), UserResumeError> {
    if state.version != USER_PARK_VERSION {
        return Err(UserResumeError::Version(state.version));
    }
    if state.user_id != user {
        return Err(UserResumeError::WrongUser(state.user_id, user));
    }
    Ok(())
}
