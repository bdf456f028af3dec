//! The websocket sessions of this process, by node and user, so that others can
//! reach them: read markers moved by one tab show in the others, a migration tells a
//! user's sockets to move, and tests drop sockets on purpose.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

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

type Key = (String, UserId);

struct Entry {
    session: u64,
    tx: mpsc::Sender<Control>,
}

static SESSIONS: LazyLock<Mutex<HashMap<Key, Vec<Entry>>>> = LazyLock::new(Default::default);

/// A session's registration; it deregisters when dropped.
pub struct Registration {
    key: Key,
    session: u64,
}

/// Registers a session of `user` on node `node`; controls arrive on the receiver.
pub fn register(node: &str, user: UserId) -> (Registration, mpsc::Receiver<Control>) {
    let (tx, rx) = mpsc::channel(64);
    let session = rand::random();
    let key = (node.to_owned(), user);
    SESSIONS
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default()
        .push(Entry { session, tx });
    (Registration { key, session }, rx)
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = SESSIONS.lock().unwrap();
        if let Some(v) = map.get_mut(&self.key) {
            v.retain(|e| e.session != self.session);
            if v.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// Sends `c` to every websocket session of `user` on node `node` (except `skip`);
/// returns how many got it. Never blocks: a session whose control queue is full
/// misses it.
pub fn control(node: &str, user: UserId, c: Control) -> usize {
    send(node, user, c, None)
}

pub(super) fn send(node: &str, user: UserId, c: Control, skip: Option<&Registration>) -> usize {
    let map = SESSIONS.lock().unwrap();
    let Some(v) = map.get(&(node.to_owned(), user)) else {
        return 0;
    };
    v.iter()
        .filter(|e| skip.map_or(true, |r| r.session != e.session))
        .filter(|e| e.tx.try_send(c.clone()).is_ok())
        .count()
}
