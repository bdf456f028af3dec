//! The websocket sessions of this node, by user, so that others can reach them: read
//! markers moved by one tab show in the others, a migration tells a user's sockets to
//! move, and tests drop sockets on purpose. The sessions' tasks are tracked here
//! too, so that a node that stops or hands itself over waits for their close frames.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

use crate::store::UserId;

/// What can be asked of a running websocket session from outside.
#[derive(Clone, Debug)]
pub enum Control {
    /// Drop the connection at once, without a close frame (as a network failure
    /// would). For tests of the client's reconnect.
    Drop,
    /// Tell the client its session moved to the websocket `url`, then close.
    Moved(String),
    /// The login session ended (logout, password change): close with this reason.
    End(String),
    /// Another session of the user moved a read marker.
    Read {
        network: String,
        buffer: String,
        id: i64,
    },
}

struct Entry {
    session: u64,
    /// The SHA-256 of the login session's token the socket authenticated with.
    token_hash: [u8; 32],
    tx: mpsc::Sender<Control>,
}

/// The registry of this node's websocket sessions.
#[derive(Default)]
pub struct Sockets {
    sessions: Mutex<HashMap<UserId, Vec<Entry>>>,
    /// Sessions registered now (`ferry_websocket_sessions`).
    pub open: Gauge,
    /// The sessions' tasks ([`Sockets::track`]). hyper runs an upgraded connection
    /// on a task of its own, which nothing waits for: a process that returned from
    /// `main` while a session was still sending its close frame (1012 at an
    /// upgrade) cut the connection instead, and the web client, seeing no close
    /// code, went offline and backed off instead of reconnecting at once.
    tasks: TaskTracker,
}

/// A session's registration; it deregisters when dropped.
pub struct Registration {
    sockets: Arc<Sockets>,
    user: UserId,
    session: u64,
}

impl Sockets {
    /// A session's task, tracked so that [`Sockets::ended`] waits for it.
    pub fn track<F: Future>(&self, session: F) -> TrackedFuture<F> {
        self.tasks.track_future(session)
    }

    /// Waits until every session has ended (its close frame sent), at most
    /// `within`; returns whether they all did. Sessions that start meanwhile are
    /// waited for too.
    pub async fn ended(&self, within: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Registers a websocket of `user` authenticated by the login session whose token
    /// hashes to `token_hash`; controls arrive on the receiver.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        token_hash: [u8; 32],
    ) -> (Registration, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(64);
        let session = rand::random();
        self.sessions
            .lock()
            .unwrap()
            .entry(user)
            .or_default()
            .push(Entry {
                session,
                token_hash,
                tx,
            });
        self.open.inc();
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

impl Sockets {
    /// Closes the websockets of `user` that authenticated with the login session
    /// `token_hash` (a logout); returns how many were told.
    pub fn end_session(&self, user: UserId, token_hash: &[u8; 32]) -> usize {
        let map = self.sessions.lock().unwrap();
        let Some(v) = map.get(&user) else {
            return 0;
        };
        v.iter()
            .filter(|e| e.token_hash == *token_hash)
            .filter(|e| e.tx.try_send(Control::End("you logged out".into())).is_ok())
            .count()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets.open.dec();
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

    /// A stopping node waits for its websocket sessions (their close frames), and no
    /// longer than it said.
    #[tokio::test]
    async fn ended_waits_for_the_sessions_tasks() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sockets = std::sync::Arc::new(super::Sockets::default());
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let sent = std::sync::Arc::new(AtomicBool::new(false));
        let session = {
            let sent = sent.clone();
            sockets.track(async move {
                let _ = closed.await;
                sent.store(true, Ordering::SeqCst);
            })
        };
        tokio::spawn(session);
        // Still sending: not ended, and the wait is bounded.
        assert!(!sockets.ended(std::time::Duration::from_millis(50)).await);
        close.send(()).unwrap();
        assert!(sockets.ended(std::time::Duration::from_secs(60)).await);
        assert!(sent.load(Ordering::SeqCst), "ended before the session did");
    }
}
