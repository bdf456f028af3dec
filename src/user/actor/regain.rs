//! Taking the configured nick back after the server gave us a fallback (433/432
//! at registration): at once when its holder quits or renames, else on a timer
//! with backoff (30 s doubling to 10 min); the refusals of our own attempts are
//! swallowed. A nick a client asked for (`/nick`) becomes the configured one.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::irc::{self, Command, Message, Numeric};
use crate::store::NetworkId;

use super::super::ConnState;
use super::net::Net;
use super::Actor;

/// When to ask for the configured nick next.
pub(super) struct Regain {
    pub(super) next: Instant,
    backoff: Duration,
}

impl Regain {
    const FIRST: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(600);

    pub(super) fn new() -> Regain {
        Regain {
            next: Instant::now() + Regain::FIRST,
            backoff: Regain::FIRST,
        }
    }
}

impl Actor {
    /// Asks for the configured nick again where the server gave us a fallback,
    /// with backoff, so we never hammer the server.
    pub(super) fn regain_nicks(&mut self) {
        let now = Instant::now();
        for net in self.nets.values_mut() {
            if !matches!(net.state.conn, ConnState::Connected) {
                continue;
            }
            let Some(r) = net.regain.as_mut() else {
                continue;
            };
            if now < r.next {
                continue;
            }
            r.backoff = (r.backoff * 2).min(Regain::MAX);
            r.next = now + r.backoff;
            ask_for_nick(net);
        }
    }

    /// Our nick changed to `nick`: regained, or chosen by a client (then saved as
    /// the network's nick). Returns false when the store refused the write because
    /// another node owns the user now.
    pub(super) async fn nick_changed(&mut self, network: NetworkId, nick: &[u8]) -> bool {
        let nick = irc::decode(nick).into_owned();
        let net = self.nets.get_mut(&network).expect("caller checked");
        let asked = net
            .requested_nick
            .take()
            .is_some_and(|r| net.state.is_me(&r));
        let regained = net.state.is_me(net.config.nick.as_bytes());
        if regained {
            net.regain = None;
        }
        // Persist what the user chose; a server-forced change is not a choice.
        if asked && !regained {
            net.config.nick = nick.clone();
            net.regain = None;
            if let Ok(false) = self
                .store
                .set_network_nick_fenced(&self.owner.fence, network, &nick)
                .await
            {
                return false;
            }
        }
        true
    }
}

/// The holder of our wanted nick left or renamed: ask for it at once.
pub(super) fn on_nick_freed(net: &mut Net, msg: &Message) {
    if !matches!(msg.command, Command::Quit | Command::Nick) || net.regain.is_none() {
        return;
    }
    let wanted = net.config.nick.as_bytes();
    if msg
        .source_nick()
        .is_some_and(|n| net.state.isupport.casemapping.eq(n, wanted))
    {
        ask_for_nick(net);
    }
}

/// Whether `msg` is the server refusing our own attempt to regain the nick: that
/// concerns no client.
pub(super) fn is_own_refusal(net: &mut Net, msg: &Message) -> bool {
    let refusal = matches!(
        msg.command.numeric(),
        Some(
            Numeric::ERR_ERRONEUSNICKNAME
                | Numeric::ERR_NICKNAMEINUSE
                | Numeric::ERR_UNAVAILRESOURCE
        )
    );
    if net.regain_pending && refusal {
        net.regain_pending = false;
        return true;
    }
    false
}

fn ask_for_nick(net: &mut Net) {
    let wanted = Bytes::from(net.config.nick.clone());
    net.regain_pending = true;
    net.send_upstream(Message::new(Command::Nick, [wanted]));
}
