//! The writing half of a websocket: a task fed by a bounded queue, so a client that
//! does not read can hold at most [`QUEUE`] events of the server's memory.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::event::ServerEvent;

/// Events queued for one client before it counts as too slow.
pub const QUEUE: usize = 4096;
/// How long a closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an event could not be queued.
#[derive(Debug)]
pub enum Full {
    /// The queue is full: the client does not keep up.
    TooSlow,
    /// The writer ended (the connection is gone).
    Gone,
}

pub struct Out {
    tx: mpsc::Sender<String>,
    kill: Option<oneshot::Sender<Option<(u16, String)>>>,
    task: JoinHandle<()>,
}

impl Out {
    pub fn spawn(sink: SplitSink<WebSocket, Message>) -> Out {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (kill, kill_rx) = oneshot::channel();
        let task = tokio::spawn(write(sink, rx, kill_rx));
        Out {
            tx,
            kill: Some(kill),
            task,
        }
    }

    /// Queues a live event; never waits.
    pub fn push(&self, ev: &ServerEvent) -> Result<(), Full> {
        self.tx.try_send(json(ev)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Full::TooSlow,
            mpsc::error::TrySendError::Closed(_) => Full::Gone,
        })
    }

    /// A sender that waits for room: for backlog replay, which is paced by the client.
    pub fn sender(&self) -> mpsc::Sender<String> {
        self.tx.clone()
    }

    /// Ends the connection: with a close frame (`Some`) after the events already
    /// queued are dropped, or abruptly (`None`), as a network failure would.
    pub async fn finish(mut self, close: Option<(u16, String)>) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(close);
        }
        let _ = self.task.await;
    }

    /// Ends the connection after the events already queued are sent, with a close frame.
    pub async fn finish_after_queue(self, code: u16, reason: String) {
        let Out { tx, kill, task } = self;
        // Closing the queue lets the writer drain it, then it sends the close frame.
        let _ = tx.send(close_marker(code, &reason)).await;
        drop(tx);
        let r = tokio::time::timeout(CLOSE_TIMEOUT * 2, task).await;
        if r.is_err() {
            if let Some(k) = kill {
                let _ = k.send(None);
            }
        }
    }
}

pub fn json(ev: &ServerEvent) -> String {
    serde_json::to_string(ev).expect("events serialize")
}

/// A queue item that is not an event but "close now with this code and reason".
/// Events are JSON objects, so they never start with a NUL.
fn close_marker(code: u16, reason: &str) -> String {
    format!("\0{code}\0{reason}")
}

async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<String>,
    kill: oneshot::Receiver<Option<(u16, String)>>,
) {
    let close = {
        // Events queued together go out in one write, as an IRC client's lines do
        // (`downstream::conn::drain`): each is fed to the sink, which is flushed
        // once the queue is empty.
        let pump = async {
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                let mut n = 0;
                while let Some(text) = next.take() {
                    if let Some(rest) = text.strip_prefix('\0') {
                        let (code, reason) = rest.split_once('\0').unwrap_or((rest, ""));
                        let _ = sink.flush().await;
                        return Some((code.parse().unwrap_or(1000), reason.to_owned()));
                    }
                    if sink.feed(Message::Text(text.into())).await.is_err() {
                        return None;
                    }
                    n += 1;
                    if n < 256 {
                        next = rx.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    return None;
                }
            }
            None
        };
        tokio::pin!(pump);
        tokio::select! {
            biased;
            k = kill => k.ok().flatten(),
            c = &mut pump => c,
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    // Dropping the sink (and, in the session, the stream) closes the TCP connection.
}
