//! Live lines from the user actor, as JSON events: messages (each id sent once, in
//! order), what the lines say that is not stored (topics, modes, notices), the
//! actor's typed state changes (`Outbound::State`: our nick, ISUPPORT, member
//! lists and their changes, gap markers), and each network's connection state as
//! the actor reports it (`Outbound::Network`). Nothing here reads NICK, `005` or
//! NAMES lines to learn state: the actor tracks it once (`user::change`).

use super::ending::Ending;
use super::event::{self, ServerEvent};
use super::out::Full;
use super::session::Session;
use crate::irc;
use crate::user::{Outbound, StateChange};

impl Session {
    /// Queues a live event; a client whose queue is full is disconnected.
    pub(super) fn push(&self, ev: &ServerEvent) -> Result<(), Ending> {
        self.out.push(ev).map_err(|e| match e {
            Full::TooSlow => Ending::Kill(
                super::ending::POLICY,
                "too slow: the client did not read its events in time".into(),
            ),
            Full::Gone => Ending::ClientGone,
        })
    }

    /// Queues an event, waiting for room (snapshot and replies to the client's own
    /// requests, which it paces itself).
    pub(super) async fn send(&self, ev: &ServerEvent) -> Result<(), Ending> {
        self.out
            .sender()
            .send(super::out::json(ev))
            .await
            .map_err(|_| Ending::ClientGone)
    }

    pub(super) async fn live(&mut self, i: usize, o: Option<Outbound>) -> Result<(), Ending> {
        let Some(o) = o else {
            return Err(self.channel_ended().await);
        };
        let msg = match o {
            Outbound::Close { reason } => return Err(self.moved_or_close(&reason).await),
            // A websocket resumes from its own last id on the new owner: nothing to
            // save here; acknowledge at once and follow as for a close.
            Outbound::Moving(m) => {
                let _ = m.saved.try_send(());
                return Err(self.moved_or_close(&m.reason).await);
            }
            // A websocket is not handed over: told to reconnect at once, it resumes
            // from its own last id on the process that takes over.
            Outbound::Park(_) => return Err(super::ending::restarting()),
            Outbound::Network(change) => {
                let net = &mut self.nets[i];
                net.view.state = change.state.clone();
                net.nick.clone_from(&change.nick);
                if change.motd.is_some() {
                    net.view.motd.clone_from(&change.motd);
                }
                let info = net.info();
                return self.push(&ServerEvent::Network(info));
            }
            Outbound::Channel(change) => {
                let net = &self.nets[i];
                return self.push(&ServerEvent::Channel {
                    network: net.name.clone(),
                    buffer: irc::decode(&change.channel.name).into_owned(),
                    detached: change.channel.detached,
                    reattach_on: change.reattach_on,
                });
            }
            Outbound::State(change) => return self.state_change(i, &change),
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
                        if m.id.is_some_and(|id| !self.last_sent.admit(id)) {
                            continue;
                        }
                    }
                    self.push(&ev)?;
                }
                msg
            }
        };
        for ev in event::state_events(&msg, &self.nets[i].ctx()) {
            self.push(&ev)?;
        }
        Ok(())
    }

    /// A typed state change of network `i`: our nick and ISUPPORT are kept for the
    /// translation of later lines; member lists and gap markers become events.
    fn state_change(&mut self, i: usize, change: &StateChange) -> Result<(), Ending> {
        let net = &mut self.nets[i];
        match change {
            StateChange::Nick { new, .. } => {
                net.nick.clone_from(new);
                Ok(())
            }
            StateChange::ISupport(isupport) => {
                net.isupport = (**isupport).clone();
                Ok(())
            }
            StateChange::Gap(gap) => {
                if !self.last_sent.admit(gap.seq) {
                    return Ok(());
                }
                let ev = event::gap(gap, &net.name);
                self.push(&ev)
            }
            StateChange::Members { channel, members } => {
                let ev = ServerEvent::Names {
                    network: net.name.clone(),
                    buffer: irc::decode(channel).into_owned(),
                    members: event::members(members),
                };
                self.push(&ev)
            }
            StateChange::Member(m) => match event::member_event(m, &net.name) {
                Some(ev) => self.push(&ev),
                None => Ok(()),
            },
        }
    }
}
