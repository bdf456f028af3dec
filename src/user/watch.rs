//! The IRC clients of each user that follow what happens beyond the lines of their
//! own network: `soju.im/bouncer-networks-notify` (a network added, changed, removed,
//! or its connection's state) and `draft/read-marker` (a read marker moved by another
//! client, IRC or web).
//!
//! Every IRC client of this node registers here for as long as it is logged in,
//! bound to a network or not (a `soju.im/bouncer-networks` connection with no
//! network has no place in the actor). Whoever makes a change — the account
//! operations, the user actor when a connection's state changes, the read-marker
//! operation — sends a [`Notice`]; each client's task writes it if it negotiated the
//! notice's capability (and is bound to its network, for a read marker). Sending never
//! blocks: a client whose queue is full misses the notice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ConnState;
use crate::irc::{Message, Tag};
use crate::store::{Network, NetworkId, UserId};

/// The capability a client negotiates to get network notifications.
pub const NETWORKS_NOTIFY: &str = "soju.im/bouncer-networks-notify";
/// The capability a client negotiates to get `MARKREAD`.
pub const READ_MARKER: &str = "draft/read-marker";

/// A line for some of a user's IRC clients.
#[derive(Debug)]
pub struct Notice {
    /// Only clients that negotiated this capability get it.
    pub cap: &'static str,
    /// Only clients bound to this network get it; `None`: every client.
    pub network: Option<NetworkId>,
    /// Without a prefix: the client's task adds the server's name.
    pub msg: Message,
}

impl Notice {
    /// `BOUNCER NETWORK <id> <attributes>`.
    pub fn network(id: NetworkId, attrs: Vec<Tag>) -> Notice {
        Notice {
            cap: NETWORKS_NOTIFY,
            network: None,
            msg: network_line(id, &attrs),
        }
    }

    /// `BOUNCER NETWORK <id> *`: the network was removed.
    pub fn removed(id: NetworkId) -> Notice {
        Notice {
            cap: NETWORKS_NOTIFY,
            network: None,
            msg: Message::new(
                "BOUNCER",
                ["NETWORK".to_owned(), id.to_string(), "*".into()],
            ),
        }
    }
}

/// `BOUNCER NETWORK <id> <attributes>`, without a prefix.
pub fn network_line(id: NetworkId, attrs: &[Tag]) -> Message {
    Message::new(
        "BOUNCER",
        [
            "NETWORK".to_owned(),
            id.to_string(),
            crate::irc::write_tag_list(attrs),
        ],
    )
}

fn tag(key: &str, value: Option<String>) -> Tag {
    Tag {
        key: key.to_owned(),
        value,
    }
}

/// A connection's state as `soju.im/bouncer-networks` names it (`state`, and `error`:
/// the last failure, removed — no value — when there is none).
pub fn state_attrs(state: &ConnState) -> Vec<Tag> {
    let (name, error) = match state {
        ConnState::Connected => ("connected", None),
        ConnState::Connecting { last_error, .. } | ConnState::Registering { last_error, .. } => {
            ("connecting", last_error.clone())
        }
        ConnState::Disconnected { reason, .. } => ("disconnected", Some(reason.clone())),
        ConnState::Stopped => ("disconnected", None),
    };
    vec![tag("state", Some(name.to_owned())), tag("error", error)]
}

/// Every attribute of a network: its settings, then its state's.
pub fn network_attrs(n: &Network, state: &ConnState) -> Vec<Tag> {
    let (host, port) = match n.addr.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (n.addr.clone(), String::new()),
    };
    let mut attrs = vec![
        tag("name", Some(n.name.clone())),
        tag("host", Some(host)),
        tag("port", Some(port)),
        tag("tls", Some(if n.tls { "1" } else { "0" }.to_owned())),
        tag("nickname", Some(n.nick.clone())),
    ];
    if let Some(u) = &n.username {
        attrs.push(tag("username", Some(u.clone())));
    }
    if let Some(r) = &n.realname {
        attrs.push(tag("realname", Some(r.clone())));
    }
    let mut state = state_attrs(state);
    // A full list leaves out what is absent rather than saying it was removed.
    state.retain(|t| t.value.is_some());
    attrs.extend(state);
    attrs
}

struct Entry {
    id: u64,
    tx: mpsc::Sender<Arc<Notice>>,
}

/// The node's IRC clients by user.
#[derive(Default)]
pub struct Watchers {
    clients: Mutex<HashMap<UserId, Vec<Entry>>>,
}

/// A client's place in [`Watchers`]; it leaves when dropped.
pub struct Watch {
    watchers: Arc<Watchers>,
    user: UserId,
    id: u64,
}

/// How many notices a client may have queued before it misses some.
const QUEUE: usize = 256;

impl Watchers {
    /// Registers an IRC client of `user`; its notices arrive on the receiver.
    pub fn watch(self: &Arc<Self>, user: UserId) -> (Watch, mpsc::Receiver<Arc<Notice>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = rand::random();
        self.clients
            .lock()
            .unwrap()
            .entry(user)
            .or_default()
            .push(Entry { id, tx });
        let watch = Watch {
            watchers: self.clone(),
            user,
            id,
        };
        (watch, rx)
    }

    /// Sends `notice` to every IRC client of `user` on this node; never blocks.
    pub fn send(&self, user: UserId, notice: Notice) {
        let notice = Arc::new(notice);
        let map = self.clients.lock().unwrap();
        for e in map.get(&user).into_iter().flatten() {
            let _ = e.tx.try_send(notice.clone());
        }
    }
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users = self.clients.lock().map_or(0, |m| m.len());
        f.debug_struct("Watchers").field("users", &users).finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.watchers.clients.lock().unwrap();
        if let Some(v) = map.get_mut(&self.user) {
            v.retain(|e| e.id != self.id);
            if v.is_empty() {
                map.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_reach_the_users_clients_until_they_leave() {
        let w = Arc::new(Watchers::default());
        let (a, mut rx_a) = w.watch(1);
        let (_b, mut rx_b) = w.watch(1);
        let (_c, mut rx_c) = w.watch(2);
        w.send(1, Notice::removed(7));
        assert_eq!(
            rx_a.recv().await.unwrap().msg.to_string(),
            "BOUNCER NETWORK 7 *"
        );
        assert!(rx_b.try_recv().is_ok());
        assert!(rx_c.try_recv().is_err());
        drop(a);
        w.send(1, Notice::removed(8));
        assert!(rx_a.recv().await.is_none());
        assert!(rx_b.try_recv().is_ok());
    }

    #[test]
    fn attributes_are_escaped_and_states_named() {
        let attrs = state_attrs(&ConnState::Disconnected {
            reason: "Connection refused; retry".into(),
            retrying: true,
            retry_at: None,
        });
        assert_eq!(
            network_line(3, &attrs).to_string(),
            "BOUNCER NETWORK 3 state=disconnected;error=Connection\\srefused\\:\\sretry"
        );
        let attrs = state_attrs(&ConnState::Connected);
        assert_eq!(
            network_line(3, &attrs).to_string(),
            "BOUNCER NETWORK 3 state=connected;error"
        );
    }
}
