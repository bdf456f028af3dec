//! A registered connection in its steady state.
//!
//! Whoever drives a [`Link`] — the upstream task today — polls it for what comes
//! next (a frame from the server, [`Link::poll_read`]; a timer, [`Link::poll_timer`])
//! and hands that back ([`Link::on_frame`], [`Link::on_timer`]); lines to the
//! server go through [`Link::send`] (paced by flood control) and [`Link::quit`].
//! The polls are cancel-safe and nothing waits inside them, so one task can drive
//! many links.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::{sleep_until, Instant, Sleep};
use tracing::debug;

use super::classify::Failure;
use super::connect::{quit, Registered, QUIT_GRACE};
use super::flood::Bucket;
use super::outgoing;
use super::wire::{Inbound, Wire};
use super::{End, Registration, UpstreamConfig};
use crate::irc::{Frame, Message};
use crate::store::NetworkId;

/// Most lines kept waiting for flood control; older ones are dropped beyond it.
const MAX_QUEUE: usize = 1000;

pub(super) struct Link {
    network: NetworkId,
    wire: Wire,
    /// Lines waiting for flood control. Empty (no allocation) while idle.
    queue: VecDeque<Message>,
    bucket: Bucket,
    /// Armed while the head of the queue waits for a token.
    flood_timer: Option<Pin<Box<Sleep>>>,
    /// Tags go out only to a server that acknowledged `message-tags`.
    tags_allowed: bool,
    /// Armed once we sent QUIT: when we stop waiting for the server to close.
    quit_timer: Option<Pin<Box<Sleep>>>,
    registered_at: Instant,
}

/// A timer of the link that fired.
pub(super) enum Timer {
    /// The head of the queue may go out.
    Flood,
    Keepalive,
    /// The server did not close within the grace after our QUIT.
    QuitGrace,
}

impl Link {
    /// The steady state of a registered connection, and what registration learnt
    /// (for the user actor).
    pub(super) fn new(registered: Registered, cfg: &UpstreamConfig) -> (Link, Box<Registration>) {
        let Registered {
            wire,
            registration,
            at,
        } = registered;
        let link = Link {
            network: cfg.network_id,
            wire,
            queue: VecDeque::new(),
            bucket: Bucket::new(cfg.flood_burst, cfg.flood_rate, Instant::now()),
            flood_timer: None,
            tags_allowed: registration.caps.contains("message-tags"),
            quit_timer: None,
            registered_at: at,
        };
        (link, registration)
    }

    /// The next frame from the server.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        self.wire.poll_frame(cx)
    }

    /// The next timer to fire: a queued line may go out, the keepalive, the end of
    /// our QUIT's grace — in that order when several are due.
    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Timer> {
        if !self.queue.is_empty() {
            let now = Instant::now();
            let at = self.bucket.ready_at(now);
            if at <= now {
                return Poll::Ready(Timer::Flood);
            }
            let timer = self
                .flood_timer
                .get_or_insert_with(|| Box::pin(sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Timer::Flood);
            }
        }
        if self.wire.keepalive.poll(cx).is_ready() {
            return Poll::Ready(Timer::Keepalive);
        }
        if let Some(timer) = &mut self.quit_timer {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Timer::QuitGrace);
            }
        }
        Poll::Pending
    }

    /// Acts on a frame: the line for the user actor, if it is one.
    ///
    /// # Errors
    /// How the connection ended: closed (by the server, or after our QUIT), or a
    /// PING's answer could not be written.
    pub(super) async fn on_frame(
        &mut self,
        frame: Option<io::Result<Frame>>,
    ) -> Result<Option<Message>, End> {
        match self.wire.inbound(frame).await {
            Ok(Inbound::Message(msg)) => Ok(Some(msg)),
            Ok(Inbound::Handled) => Ok(None),
            Ok(Inbound::Closed(_)) if self.quitting() => Err(End::Quit),
            Ok(Inbound::Closed(f)) | Err(f) => Err(self.failed(f)),
        }
    }

    /// Acts on a timer: sends the next queued line or our PING, or gives up.
    ///
    /// # Errors
    /// How the connection ended: a write failed, our PING went unanswered, or the
    /// server did not close after our QUIT.
    pub(super) async fn on_timer(&mut self, timer: Timer) -> Result<(), End> {
        match timer {
            Timer::Flood => {
                if !self.bucket.try_take(Instant::now()) {
                    return Ok(());
                }
                if let Some(m) = self.queue.pop_front() {
                    if self.queue.is_empty() {
                        // Idle connections keep no queue memory.
                        self.queue = VecDeque::new();
                        self.flood_timer = None;
                    }
                    self.wire.write(&m).await.map_err(|f| self.failed(f))?;
                }
                Ok(())
            }
            Timer::Keepalive => self
                .wire
                .keepalive_fired()
                .await
                .map_err(|f| self.failed(f)),
            Timer::QuitGrace => Err(End::Quit),
        }
    }

    /// Queues a line for the server (tags stripped unless allowed, cut to 512 bytes).
    pub(super) fn send(&mut self, msg: Message) {
        let Some(m) = outgoing::fit(msg, self.tags_allowed) else {
            debug!(
                network = self.network,
                "line cannot be made to fit 512 bytes, dropped"
            );
            return;
        };
        if self.queue.len() >= MAX_QUEUE {
            self.queue.pop_front();
            debug!(
                network = self.network,
                "flood queue full: dropped the oldest line"
            );
        }
        self.queue.push_back(m);
    }

    /// Sends `QUIT :reason` now (dropping queued lines); the server then has a
    /// grace to close.
    ///
    /// # Errors
    /// [`End::Quit`] when the QUIT cannot be written: the connection is done.
    pub(super) async fn quit(&mut self, reason: Bytes) -> Result<(), End> {
        if !self.queue.is_empty() {
            debug!(
                network = self.network,
                dropped = self.queue.len(),
                "quitting: dropping queued lines"
            );
            self.queue = VecDeque::new();
            self.flood_timer = None;
        }
        if self.wire.write(&quit(reason)).await.is_err() {
            return Err(End::Quit);
        }
        self.quit_timer = Some(Box::pin(sleep_until(Instant::now() + QUIT_GRACE)));
        Ok(())
    }

    /// True once we sent QUIT: no more lines go out.
    pub(super) fn quitting(&self) -> bool {
        self.quit_timer.is_some()
    }

    fn failed(&self, failure: Failure) -> End {
        End::Failed {
            failure,
            registered_for: Some(self.registered_at.elapsed()),
        }
    }
}
