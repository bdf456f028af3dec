//! Auto-away: while none of the user's clients (IRC or websocket) is attached, the
//! user is marked away upstream on every connected network (`AWAY :<text>`), and back
//! (`AWAY`) as soon as one attaches — unless the user set their own away from a
//! client, which is left alone. The user's switch and text come from the store
//! (`Store::away_settings`), the default text and the delay from `[upstream]`.
//!
//! No flapping: the user goes away only `away_delay` after the last client detached
//! (a client that comes back within it causes no AWAY at all), at most once per
//! connection, and comes back only if Ferry made them away. A network that
//! (re)connects while the user is away goes away right after registration. The
//! server's `305`/`306` answers to Ferry's own AWAYs are not relayed to clients.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use crate::irc::{Command, Message, Numeric};
use crate::store::AwaySettings;

use super::super::ConnState;
use super::net::Net;
use super::Actor;

/// The actor's view of whether the user is there.
pub(super) struct AutoAway {
    pub(super) settings: AwaySettings,
    /// When the user goes away, while no client is attached and the delay runs.
    pub(super) due: Option<Instant>,
    /// True once no client has been attached for the delay: the user is away.
    pub(super) idle: bool,
}

impl AutoAway {
    /// A session that just started has no client: it goes away after the delay.
    pub(super) fn new(delay: std::time::Duration) -> AutoAway {
        AutoAway {
            settings: AwaySettings::default(),
            due: Some(Instant::now() + delay),
            idle: false,
        }
    }
}

/// What one network knows about away.
#[derive(Default)]
pub(super) struct NetAway {
    /// The user's own away text, set from a client (`AWAY :text`) and not cleared
    /// since: auto-away leaves such a network alone, and a new connection sets it again.
    pub(super) own: Option<Bytes>,
    /// Ferry marked this connection away itself (cleared at registration).
    pub(super) auto: bool,
    /// `305`/`306` answers still due to Ferry's own AWAYs: not relayed.
    pub(super) quiet_replies: u8,
}

impl Actor {
    fn any_client(&self) -> bool {
        self.nets.values().any(|n| !n.clients.is_empty())
    }

    /// The away text Ferry sets: the user's own or the operator's.
    fn away_text(&self) -> String {
        self.away
            .settings
            .away_message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| self.config.away_message.clone())
    }

    /// A client attached: the user is back (if Ferry had made them away).
    pub(super) fn client_attached(&mut self) {
        self.away.due = None;
        if !std::mem::take(&mut self.away.idle) {
            return;
        }
        debug!(user = %self.name, "a client attached: back from auto-away");
        for net in self.nets.values_mut() {
            if std::mem::take(&mut net.away.auto) {
                send_away(net, None);
            }
        }
    }

    /// A client detached (or was dropped): with none left, the user goes away after
    /// the delay.
    pub(super) fn client_detached(&mut self) {
        if self.any_client() || self.away.idle || self.away.due.is_some() {
            return;
        }
        self.away.due = Some(Instant::now() + self.config.away_delay);
    }

    /// The timer fired: the delay is over if it is due and still no client came.
    pub(super) fn away_timer(&mut self) {
        match self.away.due {
            Some(at) if at <= Instant::now() => {}
            _ => return,
        }
        self.away.due = None;
        if self.any_client() {
            return;
        }
        self.away.idle = true;
        debug!(user = %self.name, "no client attached: auto-away");
        let text = self.away_text();
        let on = self.away.settings.auto_away;
        for net in self.nets.values_mut() {
            go_away(net, on, &text);
        }
    }

    /// A network registered: it sets the user's own away again, or goes away if the
    /// user is away.
    pub(super) fn away_registered(&mut self, network: crate::store::NetworkId) {
        let text = self.away_text();
        let (on, idle) = (self.away.settings.auto_away, self.away.idle);
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        net.away.auto = false;
        net.away.quiet_replies = 0;
        if let Some(own) = net.away.own.clone() {
            send_away(net, Some(own));
        } else if idle {
            go_away(net, on, &text);
        }
    }

    /// The user changed their settings: a user who is away follows them at once.
    pub(super) fn away_settings_changed(&mut self, settings: AwaySettings) {
        let text_changed = settings.away_message != self.away.settings.away_message;
        self.away.settings = settings;
        if !self.away.idle {
            return;
        }
        let text = self.away_text();
        let on = self.away.settings.auto_away;
        for net in self.nets.values_mut() {
            if net.away.auto && !on {
                net.away.auto = false;
                send_away(net, None);
            } else if net.away.auto && text_changed {
                send_away(net, Some(Bytes::copy_from_slice(text.as_bytes())));
            } else {
                go_away(net, on, &text);
            }
        }
    }

    /// Whether a line from the server is the answer to one of Ferry's own AWAYs
    /// (not relayed to clients).
    pub(super) fn own_away_reply(net: &mut Net, msg: &Message) -> bool {
        let is_reply = matches!(&msg.command, Command::Numeric(n)
            if *n == Numeric::RPL_UNAWAY || *n == Numeric::RPL_NOWAWAY);
        if is_reply && net.away.quiet_replies > 0 {
            net.away.quiet_replies -= 1;
            return true;
        }
        false
    }
}

/// A client's `AWAY`: the user's own away (text) or their return (none).
pub(super) fn client_away(net: &mut Net, msg: &Message) {
    net.away.own = msg
        .param(0)
        .filter(|t| !t.is_empty())
        .map(Bytes::copy_from_slice);
    // The user's own AWAY replaces Ferry's, whichever it is.
    net.away.auto = false;
}

/// Marks a connected network away unless the user set their own away or it already is.
fn go_away(net: &mut Net, on: bool, text: &str) {
    if !on
        || net.away.auto
        || net.away.own.is_some()
        || !matches!(net.state.conn, ConnState::Connected)
    {
        return;
    }
    net.away.auto = true;
    send_away(net, Some(Bytes::copy_from_slice(text.as_bytes())));
}

fn send_away(net: &mut Net, text: Option<Bytes>) {
    let params: Vec<Bytes> = text.into_iter().collect();
    net.away.quiet_replies = net.away.quiet_replies.saturating_add(1);
    net.send_upstream(Message::new(Command::Away, params));
}
