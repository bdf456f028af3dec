//! Detached channels (soju's `/part detach`): a channel the user stays in upstream and
//! logs, but whose lines are not relayed to attached clients — IRC clients get a
//! `PART` for it and do not find it in the attach burst, websockets see it marked
//! detached — until it is attached again: a client's `JOIN`, a door that sets it
//! (BouncerServ `channel update`, the user API, the web client's switch), or a line
//! that matches its `reattach_on` (a highlight by default, any message, or never).
//! The backlog keeps everything. The flag and `reattach_on` are stored per channel
//! (`buffers.detached`, `buffers.reattach_on`).

use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};

use crate::irc::{self, Command, Message, Numeric};
use crate::push;
use crate::store::{NetworkId, ReattachOn, Seq};

use super::super::{ChannelChange, ChannelView, Outbound};
use super::net::Net;
use super::Actor;

/// A detached channel as the actor holds it.
#[derive(Clone, Debug)]
pub(super) struct Detached {
    pub(super) reattach_on: ReattachOn,
    /// The newest id when it was detached (`None` when loaded at start): lines after
    /// it are replayed to IRC clients when it is attached again.
    pub(super) since: Option<Seq>,
}

/// What to do with a line that concerns a detached channel.
pub(super) enum Hold {
    /// Relay it as usual (no detached channel, or it is not a channel's line).
    Relay,
    /// Store it, relay nothing.
    Keep,
    /// Attach the channel (its folded name) again, then relay the line.
    Reattach(Vec<u8>),
}

/// Why a detach or attach was refused.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("no such network")]
    NoSuchNetwork,
    #[error("you are not in {0}")]
    NotInChannel(String),
    #[error("could not save it: {0}")]
    Store(String),
}

/// The channel a line from the server is about, if it names one: the target of a
/// message or a channel event, or the channel of a channel numeric.
fn line_channel(msg: &Message) -> Option<&[u8]> {
    match &msg.command {
        Command::Privmsg
        | Command::Notice
        | Command::Join
        | Command::Part
        | Command::Kick
        | Command::Topic
        | Command::Mode
        | Command::Tagmsg => msg.param(0),
        Command::Numeric(n) => match *n {
            Numeric::RPL_TOPIC
            | Numeric::RPL_TOPICWHOTIME
            | Numeric::RPL_ENDOFNAMES
            | Numeric::RPL_CHANNELMODEIS
            | Numeric::RPL_CREATIONTIME => msg.param(1),
            Numeric::RPL_NAMREPLY => msg.param(2),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a line concerning a detached channel is held, or attaches it again.
pub(super) fn hold(net: &Net, msg: &Message) -> Hold {
    if net.detached.is_empty() {
        return Hold::Relay;
    }
    let Some(chan) = line_channel(msg) else {
        return Hold::Relay;
    };
    let key = net.state.fold(chan);
    let Some(d) = net.detached.get(&key) else {
        return Hold::Relay;
    };
    let chat = matches!(msg.command, Command::Privmsg | Command::Notice);
    let from_us = msg.source_nick().is_some_and(|n| net.state.is_me(n));
    if !chat || from_us {
        return Hold::Keep;
    }
    let reattach = match d.reattach_on {
        ReattachOn::Message => true,
        ReattachOn::Highlight => {
            let text = irc::decode(msg.param(1).unwrap_or_default());
            let nick = irc::decode(&net.state.nick);
            push::mentions(&text, &nick, net.state.isupport.casemapping)
        }
        ReattachOn::None => false,
    };
    if reattach {
        Hold::Reattach(key)
    } else {
        Hold::Keep
    }
}

/// Whether a client's `PART` is soju's `PART #chan detach`.
pub(super) fn is_detach(msg: &Message) -> bool {
    msg.command == Command::Part
        && msg
            .param(1)
            .is_some_and(|r| r.eq_ignore_ascii_case(b"detach"))
}

impl Actor {
    /// Detaches (`true`) or attaches (`false`) a channel of ours, and sets what
    /// attaches it by itself; stores it and tells the network's clients when it
    /// changed.
    ///
    /// # Errors
    /// No such network; a channel we are neither in nor keep joined; the store.
    pub(super) async fn set_detached(
        &mut self,
        network: NetworkId,
        name: &[u8],
        detached: Option<bool>,
        reattach_on: Option<ReattachOn>,
    ) -> Result<(), DetachError> {
        let net = self
            .nets
            .get_mut(&network)
            .ok_or(DetachError::NoSuchNetwork)?;
        let key = net.state.fold(name);
        if !net.state.channels.contains_key(&key) && !net.wanted.contains_key(&key) {
            return Err(DetachError::NotInChannel(irc::decode(name).into_owned()));
        }
        let was = net.detached.get(&key).cloned();
        let detached = detached.unwrap_or(was.is_some());
        let written = self
            .store
            .set_detached_fenced(&self.owner.fence, network, &key, detached, reattach_on)
            .await
            .map_err(|e| DetachError::Store(e.to_string()))?;
        if !written {
            self.lost_ownership("detached flag");
            return Err(DetachError::Store(
                "this node no longer runs the user".into(),
            ));
        }
        let reattach_on = match (reattach_on, &was) {
            (Some(r), _) => r,
            (None, Some(w)) => w.reattach_on,
            (None, None) => self
                .store
                .buffers(network)
                .await
                .ok()
                .and_then(|b| b.into_iter().find(|b| b.key == key))
                .map(|b| b.reattach_on)
                .unwrap_or_default(),
        };
        let last_seq = self.recorder.last_seq;
        let net = self.nets.get_mut(&network).expect("checked above");
        if detached {
            net.detached.insert(
                key.clone(),
                Detached {
                    reattach_on,
                    since: was.as_ref().map_or(Some(last_seq), |w| w.since),
                },
            );
        } else {
            net.detached.remove(&key);
        }
        if was.is_some() == detached {
            return Ok(());
        }
        info!(user = %self.name, network = %net.config.name, channel = %irc::decode(name), detached, "channel detached or attached");
        let channel = net.state.channel_view(&key).unwrap_or_else(|| ChannelView {
            name: name.to_vec(),
            topic: None,
            topic_meta: None,
            members: Vec::new(),
            detached,
        });
        if !detached && !net.state.channels.contains_key(&key) {
            // Not in it right now (disconnected): clients learn of it at the rejoin.
            return Ok(());
        }
        if !detached {
            // What was said while it was detached is read back from the store by the
            // clients (IRC replay, the web client's history): committed first.
            if self.writer.flush().await.is_err() {
                warn!(user = %self.name, "flushing before attaching a channel failed");
            }
        }
        let net = self.nets.get_mut(&network).expect("checked above");
        let change = ChannelChange {
            channel: ChannelView {
                detached,
                ..channel
            },
            reattach_on,
            own_prefix: net.state.own_prefix(),
            since: if detached {
                None
            } else {
                was.and_then(|w| w.since)
            },
            until: self.recorder.last_seq,
        };
        net.relay(&Outbound::Channel(Arc::new(change)), &self.config.counters);
        Ok(())
    }

    /// A client's `PART #a,#b detach`: the channels are detached, nothing is sent
    /// upstream. A refusal goes back to the client as a NOTICE.
    pub(super) async fn detach_from_client(
        &mut self,
        network: NetworkId,
        client: crate::user::DownstreamId,
        msg: &Message,
    ) {
        let chans: Vec<Vec<u8>> = msg
            .param(0)
            .unwrap_or_default()
            .split(|&b| b == b',')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        for chan in chans {
            if let Err(e) = self.set_detached(network, &chan, Some(true), None).await {
                if let Some(net) = self.nets.get(&network) {
                    let text = format!("Cannot detach {}: {e}", irc::decode(&chan));
                    net.reply(client, Outbound::Reply(net.notice(text)));
                }
            }
        }
    }

    /// A client's `JOIN`: detached channels in it are attached again; those we are in
    /// already are taken out of the line (the server would ignore them). Returns the
    /// line to send upstream, if anything is left of it.
    pub(super) async fn attach_from_client(
        &mut self,
        network: NetworkId,
        msg: Message,
    ) -> Option<Message> {
        let net = self.nets.get(&network)?;
        if net.detached.is_empty() {
            return Some(msg);
        }
        let chans: Vec<Vec<u8>> = msg
            .param(0)
            .unwrap_or_default()
            .split(|&b| b == b',')
            .map(<[u8]>::to_vec)
            .collect();
        let keys: Vec<Vec<u8>> = msg
            .param(1)
            .unwrap_or_default()
            .split(|&b| b == b',')
            .map(<[u8]>::to_vec)
            .collect();
        let mut left: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (i, chan) in chans.into_iter().enumerate() {
            let net = self.nets.get(&network)?;
            let folded = net.state.fold(&chan);
            let joined = net.state.channels.contains_key(&folded);
            if net.detached.contains_key(&folded) {
                if let Err(e) = self.set_detached(network, &chan, Some(false), None).await {
                    warn!(user = %self.name, error = %e, "attaching a channel");
                }
                if joined {
                    continue;
                }
            }
            left.push((chan, keys.get(i).filter(|k| !k.is_empty()).cloned()));
        }
        if left.is_empty() {
            return None;
        }
        // Keyed channels first, as `JOIN #a,#b k1` pairs keys in order.
        left.sort_by_key(|(_, k)| k.is_none());
        let names: Vec<&[u8]> = left.iter().map(|(n, _)| &n[..]).collect();
        let keys: Vec<&[u8]> = left.iter().filter_map(|(_, k)| k.as_deref()).collect();
        let mut params = vec![Bytes::from(names.join(&b","[..]))];
        if !keys.is_empty() {
            params.push(Bytes::from(keys.join(&b","[..])));
        }
        let mut out = Message::new(Command::Join, params);
        out.tags = msg.tags;
        Some(out)
    }
}
