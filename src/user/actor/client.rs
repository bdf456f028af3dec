//! Lines from attached clients: PRIVMSG/NOTICE split to fit and recorded as our
//! own (unless the server echoes them), JOIN keys, PART and NICK remembered,
//! queries noted so their replies go back to the client that asked.

use bytes::Bytes;

use crate::irc::{ctcp, split, Command, Message};
use crate::store::NetworkId;

use super::super::{ConnState, DownstreamId, Outbound};
use super::net::Net;
use super::Actor;

/// A message a client sent that the server will echo back (echo-message).
pub(super) struct PendingEcho {
    client: DownstreamId,
    line: Bytes,
}

impl Actor {
    pub(super) async fn client_line(
        &mut self,
        network: NetworkId,
        id: DownstreamId,
        mut msg: Message,
    ) {
        if !self.may_act() {
            return;
        }
        if !self.nets.contains_key(&network) {
            return;
        }
        if super::detach::is_detach(&msg) {
            self.detach_from_client(network, id, &msg).await;
            return;
        }
        if msg.command == Command::Join {
            match self.attach_from_client(network, msg).await {
                Some(m) => msg = m,
                None => return,
            }
        }
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        match msg.command {
            Command::Privmsg | Command::Notice => {
                for piece in split_message(net, &msg) {
                    self.send_own_message(network, id, piece).await;
                }
            }
            Command::Quit => {}
            _ => {
                match msg.command {
                    Command::Join => remember_join(net, &msg),
                    Command::Nick => net.requested_nick = msg.param(0).map(<[u8]>::to_vec),
                    Command::Away => super::away::client_away(net, &msg),
                    Command::Part => {
                        for chan in msg.param(0).unwrap_or_default().split(|&b| b == b',') {
                            net.wanted.remove(&net.state.fold(chan));
                        }
                    }
                    _ => {}
                }
                net.router
                    .sent(id, &mut msg, &|n: &[u8]| net.state.is_channel(n));
                net.send_upstream(msg);
            }
        }
    }

    /// Sends one of our own messages upstream and, unless the server will
    /// echo it, stores and relays it ourselves.
    async fn send_own_message(&mut self, network: NetworkId, client: DownstreamId, msg: Message) {
        let net = self.nets.get_mut(&network).expect("caller checked");
        if !matches!(net.state.conn, ConnState::Connected) {
            let notice = net.notice(Bytes::from_static(
                b"Not connected to the network: message not sent",
            ));
            net.reply(client, Outbound::Reply(notice));
            return;
        }
        if net.state.caps.contains("echo-message") {
            net.echoes.push_back(PendingEcho {
                client,
                line: echo_key(&msg),
            });
            net.send_upstream(msg);
            return;
        }
        net.send_upstream(msg.clone());
        let own = msg.with_prefix(Bytes::from(net.state.nick.clone()));
        self.record_and_relay(network, own, Some(client), None)
            .await;
    }
}

/// A PRIVMSG/NOTICE as the lines it takes: one per target, each split by bytes so
/// it fits once the server adds our prefix.
fn split_message(net: &Net, msg: &Message) -> Vec<Message> {
    let (Some(target), Some(text)) = (msg.param(0), msg.param(1)) else {
        return Vec::new();
    };
    let command = msg.command.as_str();
    let nick_len = net.state.nick.len();
    let linelen = net.state.isupport.linelen;
    let mut pieces = Vec::new();
    for target in target.split(|&b| b == b',').filter(|t| !t.is_empty()) {
        // Keep CTCP framing intact: split only the inside of an ACTION.
        let parts = match ctcp::action(text) {
            Some(action) => split::split_text(command, target, action, nick_len + 9, linelen)
                .into_iter()
                .map(|p| [&b"\x01ACTION "[..], &p, b"\x01"].concat())
                .collect(),
            None => split::split_text(command, target, text, nick_len, linelen),
        };
        for part in parts {
            pieces.push(Message::new(
                msg.command.clone(),
                [Bytes::copy_from_slice(target), Bytes::from(part)],
            ));
        }
    }
    pieces
}

/// The client whose message this is, when it is the echo of one we sent: our own
/// PRIVMSG/NOTICE coming back from a server with `echo-message`.
pub(super) fn take_echo(net: &mut Net, msg: &Message) -> Option<DownstreamId> {
    if !matches!(msg.command, Command::Privmsg | Command::Notice)
        || !msg.source_nick().is_some_and(|n| net.state.is_me(n))
    {
        return None;
    }
    let key = echo_key(msg);
    let i = net.echoes.iter().position(|e| e.line == key)?;
    net.echoes.remove(i).map(|e| e.client)
}

/// What identifies an echoed message: command, target and text.
fn echo_key(msg: &Message) -> Bytes {
    let mut m = Message::new(msg.command.clone(), msg.params.iter().cloned());
    m.tags.clear();
    m.to_bytes()
}

/// Remembers the channels (and keys) a client's JOIN asks for.
fn remember_join(net: &mut Net, msg: &Message) {
    let chans = msg.param(0).unwrap_or_default();
    let mut keys = msg.param(1).unwrap_or_default().split(|&b| b == b',');
    for chan in chans.split(|&b| b == b',').filter(|c| !c.is_empty()) {
        let key = keys.next().filter(|k| !k.is_empty()).map(<[u8]>::to_vec);
        net.wanted
            .insert(net.state.fold(chan), (chan.to_vec(), key));
    }
}
