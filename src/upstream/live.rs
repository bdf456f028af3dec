//! A registered connection as its owner drives it: the user actor polls each of its
//! networks' [`LiveLink`]s in its own loop, so a line read from the socket is handled
//! in the task that read it — one hop from the socket to an attached client.
//!
//! The upstream task dials and registers, then hands the connection over
//! ([`UpstreamEvent::Linked`], just before `Registered`) and waits. Whoever holds the
//! link polls it ([`LiveLink::poll_step`]: a frame, else a timer — cancel-safe, nothing
//! waits inside) and handles what it yields ([`LiveLink::handle`]: PINGs answered, the
//! keepalive, flood-paced writes, the line for the owner). When the connection ends
//! the owner hands the end back ([`UpstreamHandle::link_ended`]): the task reports
//! it, backs off and reconnects, as before. [`Driven`] does the same for a caller
//! with no loop of its own (tests, tools).

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::link::{Link, Timer};
use super::{End, NotParked, ParkedUpstream, UpstreamCommand, UpstreamEvent, UpstreamHandle};
use crate::irc::{Frame, Message};
use crate::limits::Permit;
use crate::store::NetworkId;

#[cfg(doc)]
use super::UpstreamStats;

/// A registered connection, driven by whoever holds it (see the module's doc).
pub struct LiveLink {
    link: Link,
    /// The limiter's session slot, held while the connection lives and handed back
    /// with its end (the task reports how it ended to the limiter).
    permit: Option<Permit>,
}

impl std::fmt::Debug for LiveLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLink").finish_non_exhaustive()
    }
}

/// What woke a link up: hand it to [`LiveLink::handle`].
pub struct LinkStep(Step);

enum Step {
    /// A frame, and the task that read it.
    Frame(Option<io::Result<Frame>>, Option<tokio::task::Id>),
    Timer(Timer),
}

/// A line from the server, as the link read it.
#[derive(Debug)]
pub struct Line {
    pub msg: Message,
    /// When it was read from the socket (for the relay latency).
    pub read_at: std::time::Instant,
    /// The task that read it from the socket: whoever handles the line compares it
    /// with its own ([`UpstreamStats::lines_handed_over`]).
    pub read_in: Option<tokio::task::Id>,
}

/// How a link ended, with its limiter permit: give it back to the upstream task
/// ([`UpstreamHandle::link_ended`]), which reports it and reconnects.
#[derive(Debug)]
pub struct LinkEnded {
    pub(super) end: End,
    pub(super) permit: Option<Permit>,
}

impl LiveLink {
    pub(super) fn new(link: Link, permit: Option<Permit>) -> LiveLink {
        LiveLink { link, permit }
    }

    /// What comes next: a frame from the server first, then a due timer (a queued
    /// line may go out, the keepalive, our QUIT's grace). Cancel-safe.
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<LinkStep> {
        if let Poll::Ready(frame) = self.link.poll_read(cx) {
            return Poll::Ready(LinkStep(Step::Frame(frame, tokio::task::try_id())));
        }
        self.link.poll_timer(cx).map(|t| LinkStep(Step::Timer(t)))
    }

    /// Acts on a step: a PING answered, a queued line or our PING written, or the
    /// line for the owner. A write waits (bounded by the write timeout).
    ///
    /// # Errors
    /// The connection ended (closed, a write failed, no answer to our PING): drop the
    /// link and hand this back to the upstream task.
    pub async fn handle(&mut self, step: LinkStep) -> Result<Option<Line>, LinkEnded> {
        let r = match step.0 {
            Step::Frame(frame, read_in) => {
                let read_at = std::time::Instant::now();
                self.link.on_frame(frame).await.map(|m| {
                    m.map(|msg| Line {
                        msg,
                        read_at,
                        read_in,
                    })
                })
            }
            Step::Timer(t) => self.link.on_timer(t).await.map(|()| None),
        };
        r.map_err(|end| LinkEnded {
            end,
            permit: self.permit.take(),
        })
    }

    /// Queues a line for the server (paced by flood control; tags stripped unless
    /// the server acknowledged `message-tags`).
    pub fn send(&mut self, msg: Message) {
        self.link.send(msg);
    }

    /// Sends `QUIT :reason` (dropping queued lines) and drives the link until the
    /// server closes or its grace is over; lines read meanwhile are dropped.
    pub async fn quit(mut self, reason: Bytes) -> LinkEnded {
        let end = match self.link.quit(reason).await {
            Err(end) => end,
            Ok(()) => loop {
                let step = poll_fn(|cx| self.poll_step(cx)).await;
                match self.handle(step).await {
                    Ok(_) => {}
                    Err(ended) => return ended,
                }
            },
        };
        LinkEnded {
            end,
            permit: self.permit.take(),
        }
    }

    /// True when this connection can be parked now (plain TCP or kernel TLS, or TLS
    /// where the kernel offers kernel TLS; not quitting).
    ///
    /// # Errors
    /// Why not.
    pub fn parkable(&self) -> Result<(), NotParked> {
        self.link.parkable()
    }

    /// Stops here and yields the parts (see `park`), the limiter's permit with them
    /// (its slot named in the state). Then tell the upstream task
    /// ([`UpstreamHandle::link_parked`]): it ends without an event.
    ///
    /// # Errors
    /// Why not, with the link when it still runs (TLS without kernel TLS, or a
    /// session that cannot switch now: it must reconnect); `None` when the socket
    /// could not be taken (the connection is lost).
    #[allow(clippy::result_large_err)]
    pub fn park(self) -> Result<ParkedUpstream, (NotParked, Option<LiveLink>)> {
        if let Err(why) = self.link.parkable() {
            return Err((why, Some(self)));
        }
        let LiveLink { link, permit } = self;
        let mut parked = match link.park() {
            Ok(p) => p,
            Err((why, link)) => {
                return Err((why, link.map(|link| LiveLink::new(link, permit))));
            }
        };
        if let Some(held) = permit {
            parked.state.limits_key = Some(held.key().to_owned());
            parked.state.source_ip = held.source();
            parked.permit = Some(held);
        }
        Ok(parked)
    }
}

impl UpstreamHandle {
    /// Gives a link's end back to the upstream task: it reports the disconnect (or,
    /// after a QUIT, ends) and reconnects as its settings say.
    pub fn link_ended(&self, ended: LinkEnded) {
        UpstreamHandle::hand_back(&self.commands, self.network_id, ended);
    }

    fn hand_back(commands: &mpsc::Sender<UpstreamCommand>, network: NetworkId, ended: LinkEnded) {
        // The queue has room: while the link is out nothing else is sent to it.
        if commands
            .try_send(UpstreamCommand::LinkEnded(Box::new(ended)))
            .is_err()
        {
            tracing::debug!(network, "upstream task gone: link end not handed back");
        }
    }

    /// Tells the upstream task its link was parked: it ends without an event.
    pub fn link_parked(&self) {
        self.link_ended(LinkEnded {
            end: End::Parked,
            permit: None,
        });
    }
}

/// What a [`Driven`] upstream yields.
#[derive(Debug)]
pub enum Seen {
    /// What the upstream task reported (never [`UpstreamEvent::Linked`]: the link is
    /// kept and driven).
    Event(UpstreamEvent),
    /// A line from the server.
    Line(Box<Message>),
}

/// An upstream task with its link driven by a task of its own, for callers with no
/// loop of their own (tests and tools): lines come through a queue, which is the
/// hop the user actor avoids by driving its links in its own loop.
pub struct Driven {
    seen: mpsc::Receiver<Seen>,
    orders: mpsc::UnboundedSender<Order>,
}

enum Order {
    Send(Message),
    Quit(Bytes),
    Park(oneshot::Sender<Result<ParkedUpstream, NotParked>>),
}

impl Driven {
    /// Drives the links of the task `handle` (from [`super::spawn`]) reporting on
    /// `events`.
    pub fn spawn(
        handle: &UpstreamHandle,
        events: mpsc::Receiver<(NetworkId, UpstreamEvent)>,
    ) -> Self {
        Driven::start(handle, events, None)
    }

    /// Drives a resumed connection (from [`super::resume`]).
    pub fn resumed(
        handle: &UpstreamHandle,
        link: LiveLink,
        events: mpsc::Receiver<(NetworkId, UpstreamEvent)>,
    ) -> Self {
        Driven::start(handle, events, Some(Box::new(link)))
    }

    fn start(
        handle: &UpstreamHandle,
        events: mpsc::Receiver<(NetworkId, UpstreamEvent)>,
        link: Option<Box<LiveLink>>,
    ) -> Self {
        let (seen_tx, seen) = mpsc::channel(1024);
        let (orders, orders_rx) = mpsc::unbounded_channel();
        let back = Back {
            commands: handle.commands.clone(),
            network_id: handle.network_id,
        };
        tokio::spawn(drive(back, events, link, seen_tx, orders_rx));
        Driven { seen, orders }
    }

    /// The next event or line; `None` once the task has ended and said everything.
    pub async fn next(&mut self) -> Option<Seen> {
        self.seen.recv().await
    }

    /// Sends a line (dropped while not registered).
    pub fn send(&self, msg: Message) {
        let _ = self.orders.send(Order::Send(msg));
    }

    /// QUITs; the task ends once the server closed (or its grace is over).
    pub fn quit(&self, reason: Bytes) {
        let _ = self.orders.send(Order::Quit(reason));
    }

    /// Parks the connection (see [`LiveLink::park`]); the task ends.
    ///
    /// # Errors
    /// Not registered, or it cannot be parked (TLS: it keeps running).
    pub async fn park(&self) -> Result<ParkedUpstream, NotParked> {
        let (tx, rx) = oneshot::channel();
        if self.orders.send(Order::Park(tx)).is_err() {
            return Err(NotParked::Gone);
        }
        rx.await.unwrap_or(Err(NotParked::Gone))
    }
}

/// Where a [`Driven`] link's end goes back to.
struct Back {
    commands: mpsc::Sender<UpstreamCommand>,
    network_id: NetworkId,
}

impl Back {
    fn ended(&self, ended: LinkEnded) {
        UpstreamHandle::hand_back(&self.commands, self.network_id, ended);
    }
}

async fn drive(
    back: Back,
    mut events: mpsc::Receiver<(NetworkId, UpstreamEvent)>,
    mut link: Option<Box<LiveLink>>,
    seen: mpsc::Sender<Seen>,
    mut orders: mpsc::UnboundedReceiver<Order>,
) {
    loop {
        let step = tokio::select! {
            biased;
            () = seen.closed() => break,
            ev = events.recv() => match ev {
                Some((_, UpstreamEvent::Linked(l))) => {
                    link = Some(l);
                    continue;
                }
                Some((_, ev)) => {
                    if matches!(ev, UpstreamEvent::Disconnected { .. }) {
                        // The task gave up on the link (cancelled): it closes.
                        link = None;
                    }
                    let _ = seen.send(Seen::Event(ev)).await;
                    continue;
                }
                None => break,
            },
            order = orders.recv() => {
                match order {
                    Some(Order::Send(m)) => {
                        if let Some(l) = &mut link {
                            l.send(m);
                        }
                    }
                    Some(Order::Quit(reason)) => {
                        match link.take() {
                            Some(l) => back.ended(l.quit(reason).await),
                            None => {
                                let _ = back.commands.send(UpstreamCommand::Quit(Box::new(reason))).await;
                            }
                        }
                    }
                    Some(Order::Park(reply)) => {
                        let answer = match link.take() {
                            None => Err(NotParked::NotRegistered),
                            Some(l) => match l.park() {
                                Ok(p) => {
                                    back.ended(LinkEnded { end: End::Parked, permit: None });
                                    Ok(p)
                                }
                                Err((why, l)) => {
                                    link = l.map(Box::new);
                                    Err(why)
                                }
                            },
                        };
                        let _ = reply.send(answer);
                    }
                    None => {}
                }
                continue;
            }
            step = poll_fn(|cx| match &mut link {
                Some(l) => l.poll_step(cx),
                None => Poll::Pending,
            }) => step,
        };
        let Some(l) = link.as_mut() else { continue };
        match l.handle(step).await {
            Ok(Some(line)) => {
                let _ = seen.send(Seen::Line(Box::new(line.msg))).await;
            }
            Ok(None) => {}
            Err(ended) => {
                link = None;
                back.ended(ended);
            }
        }
    }
    // Nobody listens any more: the upstream task stops too.
    if link.take().is_some() {
        back.ended(LinkEnded {
            end: End::Stop(super::Stop::EventsClosed),
            permit: None,
        });
    }
}
