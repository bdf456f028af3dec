//! The websocket sessions of this node, by user, so that others can reach them: read
//! markers moved by one tab show in the others, a migration tells a user's sockets to
//! move, and tests drop sockets on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::store::UserId;

/// What can be asked of a running websocket session from outside.
#[derive(Clone, Debug)]
pub enum Control {
    /// Drop the connection at once, without a close frame (as a network failure
    /// would). For tests of the client's reconnect.
    Drop,
    /// Tell the client its session moved to the websocket `url`, then close.
    Moved(String),
    /// Another session of the user moved a read marker.
    Read {
        network: String,
        buffer: String,
        id: i64,
    },
}

struct Entry {
    session: u64,
    tx: mpsc::Sender<Control>,
}

/// The registry of this node's websocket sessions.
#[derive(Default)]
pub struct Sockets {
    sessions: Mutex<HashMap<UserId, Vec<Entry>>>,
}

/// A session's registration; it deregisters when dropped.
pub struct Registration {
    sockets: Arc<Sockets>,
    user: UserId,
    session: u64,
}

impl Sockets {
    /// Registers a session of `user`; controls arrive on the receiver.
    pub fn register(self: &Arc<Self>, user: UserId) -> (Registration, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(64);
        let session = rand::random();
        self.sessions
            .lock()
            .unwrap()
            .entry(user)
            .or_default()
            .push(Entry { session, tx });
        let reg = Registration {
            sockets: self.clone(),
            user,
            session,
        };
        (reg, rx)
    }

    /// Sends `c` to every websocket session of `user`; returns how many got it. Never
    /// blocks: a session whose control queue is full misses it.
    pub fn control(&self, user: UserId, c: Control) -> usize {
        self.send(user, c, None)
    }

    /// Sends `c` to every websocket session of `user` except `skip` (the one that
    /// caused it).
    pub fn send(&self, user: UserId, c: Control, skip: Option<&Registration>) -> usize {
        let map = self.sessions.lock().unwrap();
        let Some(v) = map.get(&user) else {
            return 0;
        };
        v.iter()
            .filter(|e| skip.map_or(true, |r| r.session != e.session))
            .filter(|e| e.tx.try_send(c.clone()).is_ok())
            .count()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.sockets.sessions.lock().unwrap();
        if let Some(v) = map.get_mut(&self.user) {
            v.retain(|e| e.session != self.session);
            if v.is_empty() {
                map.remove(&self.user);
            }
        }
    }
}

/// The websocket URL of a node whose HTTP base URL is `http` (`http://h:p` →
/// `ws://h:p/ws`): where [`Control::Moved`] sends a client.
pub fn ws_url(http: &str) -> String {
    let base = http.trim_end_matches('/');
    let base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{base}/ws")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ws_urls() {
        assert_eq!(super::ws_url("http://a:1/"), "ws://a:1/ws");
        assert_eq!(
            super::ws_url("https://ferry.example"),
            "wss://ferry.example/ws"
        );
    }
}
