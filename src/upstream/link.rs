//! A registered connection in its steady state.
//!
//! Whoever drives a [`Link`] — the user actor, through `live::LiveLink` — polls it for what comes
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
use crate::irc::{Command, Frame, Message};
use crate::store::NetworkId;

/// Most lines kept waiting for flood control; older ones are dropped beyond it.
const MAX_QUEUE: usize = 1000;

pub(super) struct Link {
    network: NetworkId,
    wire: Wire,
    /// Lines waiting for flood control. Empty (no allocation) while idle.
    queue: VecDeque<Message>,
    /// Queries waiting for flood control (WHO, WHOIS, MODE, …): they go out
    /// before queued chat, so a client's questions (irssi's WHO and MODE on
    /// join) are never paced behind a long paste. Still paced by the same bucket.
    queries: VecDeque<Message>,
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
            queries: VecDeque::new(),
            bucket: Bucket::new(cfg.flood_burst, cfg.flood_rate, Instant::now()),
            flood_timer: None,
            tags_allowed: registration.caps.contains("message-tags"),
            quit_timer: None,
            registered_at: at,
        };
        (link, registration)
    }

    /// The steady state of a parked connection taken over: its socket, the bytes it
    /// had read, its flood queue and pace.
    pub(super) fn resume(
        state: super::park::UpstreamPark,
        transport: Box<dyn super::dial::Transport>,
        cfg: &UpstreamConfig,
        stats: &std::sync::Arc<super::UpstreamStats>,
    ) -> Link {
        let now = Instant::now();
        let unread = super::park::unread(&state);
        Link {
            network: cfg.network_id,
            wire: Wire::resume(transport, unread, cfg, stats),
            queue: super::park::decode_lines(state.queue),
            queries: super::park::decode_lines(state.queries),
            bucket: Bucket::with_tokens(cfg.flood_burst, cfg.flood_rate, state.flood_tokens, now),
            flood_timer: None,
            tags_allowed: state.tags_allowed,
            quit_timer: None,
            registered_at: now,
        }
    }

    /// True when this connection can be parked now: plain TCP or kernel TLS (or TLS
    /// where the kernel offers kernel TLS), not quitting.
    pub(super) fn parkable(&self) -> Result<(), super::park::NotParked> {
        if self.quitting() {
            return Err(super::park::NotParked::NotRegistered);
        }
        self.wire
            .parkable()
            .map_err(super::park::NotParked::MustReconnect)
    }

    /// Stops at the barrier and yields the parts (see `park`). Call after
    /// [`Link::parkable`].
    ///
    /// # Errors
    /// Why not, with the link when it carries on (a TLS session that cannot switch
    /// to kernel TLS now); `None` when the connection was lost on the way.
    #[allow(clippy::result_large_err)]
    pub(super) fn park(
        mut self,
    ) -> Result<super::park::ParkedUpstream, (super::park::NotParked, Option<Link>)> {
        if let Err(why) = self.parkable() {
            return Err((why, Some(self)));
        }
        let flood_tokens = self.bucket.tokens(Instant::now());
        let Link {
            network,
            wire,
            queue,
            queries,
            bucket,
            flood_timer,
            tags_allowed,
            quit_timer,
            registered_at,
        } = self;
        let parked = match wire.park() {
            Ok(p) => p,
            Err((why, wire)) => {
                let link = wire.map(|wire| Link {
                    network,
                    wire,
                    queue,
                    queries,
                    bucket,
                    flood_timer,
                    tags_allowed,
                    quit_timer,
                    registered_at,
                });
                return Err((super::park::NotParked::MustReconnect(why), link));
            }
        };
        let socket = parked.socket.into_std().map_err(|e| {
            (
                super::park::NotParked::MustReconnect(format!("socket: {e}")),
                None,
            )
        })?;
        Ok(super::park::ParkedUpstream {
            state: super::park::UpstreamPark {
                version: super::park::PARK_VERSION,
                network_id: network,
                tags_allowed,
                unread: parked.unread.to_vec(),
                queries: super::park::encode_lines(queries),
                queue: super::park::encode_lines(queue),
                flood_tokens,
                limits_key: None,
                source_ip: None,
                ktls: parked.ktls,
            },
            socket,
            permit: None,
        })
    }

    /// The next frame from the server.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        self.wire.poll_frame(cx)
    }

    /// The next timer to fire: a queued line may go out, the keepalive, the end of
    /// our QUIT's grace — in that order when several are due.
    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Timer> {
        if !self.queue.is_empty() || !self.queries.is_empty() {
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
                if let Some(m) = self.queries.pop_front().or_else(|| self.queue.pop_front()) {
                    if self.queries.is_empty() && self.queue.is_empty() {
                        // Idle connections keep no queue memory.
                        self.queue = VecDeque::new();
                        self.queries = VecDeque::new();
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
        let queue = if jumps_chat(&m) {
            &mut self.queries
        } else {
            &mut self.queue
        };
        if queue.len() >= MAX_QUEUE {
            queue.pop_front();
            debug!(
                network = self.network,
                "flood queue full: dropped the oldest line"
            );
        }
        queue.push_back(m);
    }

    /// Sends `QUIT :reason` now (dropping queued lines); the server then has a
    /// grace to close.
    ///
    /// # Errors
    /// [`End::Quit`] when the QUIT cannot be written: the connection is done.
    pub(super) async fn quit(&mut self, reason: Bytes) -> Result<(), End> {
        if !self.queue.is_empty() || !self.queries.is_empty() {
            debug!(
                network = self.network,
                dropped = self.queue.len() + self.queries.len(),
                "quitting: dropping queued lines"
            );
            self.queue = VecDeque::new();
            self.queries = VecDeque::new();
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

/// Lines that may overtake queued chat: questions whose answers a client waits
/// for, and mode changes. Never PART or NICK, which must not overtake a message
/// sent before them.
fn jumps_chat(msg: &Message) -> bool {
    match msg.command {
        Command::Who
        | Command::Whois
        | Command::Whowas
        | Command::Names
        | Command::List
        | Command::Userhost
        | Command::Ison
        | Command::Motd
        | Command::Mode
        | Command::Ping
        | Command::Pong => true,
        Command::Topic => msg.params.len() == 1,
        _ => false,
    }
}
