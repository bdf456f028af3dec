//! The socket of one connection as registration and the steady state both use it:
//! lines in (PINGs answered, our keepalive's PONGs taken, the server's `ERROR`
//! kept for the reason), lines out (each write bounded in time), and the
//! keepalive (our own PING after a quiet spell, a timeout after it).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;
use tokio::time::{sleep_until, Instant, Sleep};
use tracing::debug;

use super::classify::Failure;
use super::dial::{Kind, Transport};
use super::{UpstreamConfig, UpstreamStats};
use crate::irc::{Command, Frame, Message};
use crate::lineio::{self, LineReader};
use crate::store::NetworkId;

/// The socket's read half.
pub(super) type ReadHalf = tokio::io::ReadHalf<Box<dyn Transport>>;
/// The socket's write half.
pub(super) type WriteHalf = tokio::io::WriteHalf<Box<dyn Transport>>;

pub(super) struct Wire {
    /// Lines from the server: the read half, and bytes read from it but not yet
    /// cut into lines.
    lines: LineReader<ReadHalf>,
    write: WriteHalf,
    /// What the transport is (plain TCP and kernel TLS can be parked; TLS where
    /// the kernel offers kernel TLS).
    kind: Kind,
    /// Bound on one write: a server that stops reading must not block us forever.
    write_timeout: Duration,
    pub(super) keepalive: Keepalive,
    /// An ERROR line tells why the server is about to close.
    server_error: Option<Failure>,
    network: NetworkId,
    stats: Arc<UpstreamStats>,
}

/// A parked wire's parts (see [`Wire::park`]).
pub(super) struct Parked {
    pub socket: tokio::net::TcpStream,
    pub unread: bytes::BytesMut,
    pub ktls: bool,
}

/// What one frame from the server turned out to be.
pub(super) enum Inbound {
    /// A line for whoever runs the connection (the registrar, the user actor).
    Message(Message),
    /// Taken care of here (a PING answered, our keepalive's PONG) or skipped (an
    /// overlong or unparsable line).
    Handled,
    /// The server closed the connection, or reading failed: why.
    Closed(Failure),
}

impl Wire {
    pub(super) fn new(
        transport: Box<dyn Transport>,
        cfg: &UpstreamConfig,
        stats: &Arc<UpstreamStats>,
    ) -> Wire {
        let kind = super::dial::kind(&*transport);
        let (read, write) = tokio::io::split(transport);
        Wire {
            lines: LineReader::new(read),
            write,
            kind,
            write_timeout: cfg.ping_timeout.max(Duration::from_secs(5)),
            keepalive: Keepalive::new(cfg.ping_interval, cfg.ping_timeout),
            server_error: None,
            network: cfg.network_id,
            stats: stats.clone(),
        }
    }

    /// A wire on a socket taken over from a parked connection, with the bytes that
    /// connection had read and not yet cut into lines. The keepalive starts afresh.
    pub(super) fn resume(
        transport: Box<dyn Transport>,
        unread: bytes::BytesMut,
        cfg: &UpstreamConfig,
        stats: &Arc<UpstreamStats>,
    ) -> Wire {
        let kind = super::dial::kind(&*transport);
        let (read, write) = tokio::io::split(transport);
        Wire {
            lines: LineReader::from_parts(read, unread),
            write,
            kind,
            write_timeout: cfg.ping_timeout.max(Duration::from_secs(5)),
            keepalive: Keepalive::new(cfg.ping_interval, cfg.ping_timeout),
            server_error: None,
            network: cfg.network_id,
            stats: stats.clone(),
        }
    }

    /// Whether the socket can be parked: plain TCP or kernel TLS, or TLS where the
    /// kernel offers kernel TLS (the park then switches it; see [`Wire::park`]).
    ///
    /// # Errors
    /// Why not.
    pub(super) fn parkable(&self) -> Result<(), String> {
        match self.kind {
            Kind::Plain | Kind::Ktls => Ok(()),
            Kind::Tls if crate::ktls::available() => Ok(()),
            Kind::Tls => Err("TLS without kernel TLS".to_owned()),
            Kind::Other => Err("not a socket".to_owned()),
        }
    }

    /// Stops here: the TCP socket (a TLS session switched to kernel TLS first), the
    /// bytes to read before anything from it (read and not yet cut into lines, then
    /// the plaintext rustls held) and whether it is kernel TLS. Every write is
    /// awaited whole, so nothing half-written stays behind.
    ///
    /// # Errors
    /// Why not, with the wire when it carries on untouched (a TLS session that
    /// cannot switch now); `None` when a switch failed half-way (it is lost).
    #[allow(clippy::result_large_err)]
    pub(super) fn park(self) -> Result<Parked, (String, Option<Wire>)> {
        let Wire {
            lines,
            write,
            kind,
            write_timeout,
            keepalive,
            server_error,
            network,
            stats,
        } = self;
        let (read, mut unread) = lines.into_parts();
        match super::dial::hand_off(read.unsplit(write)) {
            Ok(h) => {
                unread.extend_from_slice(&h.plain);
                Ok(Parked {
                    socket: h.socket,
                    unread,
                    ktls: h.ktls,
                })
            }
            Err((why, None)) => Err((why, None)),
            Err((why, Some(transport))) => {
                let (read, write) = tokio::io::split(transport);
                let wire = Wire {
                    lines: LineReader::from_parts(read, unread),
                    write,
                    kind,
                    write_timeout,
                    keepalive,
                    server_error,
                    network,
                    stats,
                };
                Err((why, Some(wire)))
            }
        }
    }

    /// The next frame from the server. Cancel-safe.
    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        self.lines.poll_frame(cx)
    }

    /// Makes sense of one frame: counts it, feeds the keepalive, answers a PING.
    ///
    /// # Errors
    /// The PING's answer could not be written.
    pub(super) async fn inbound(
        &mut self,
        frame: Option<io::Result<Frame>>,
    ) -> Result<Inbound, Failure> {
        let line = match frame {
            None => {
                let f = self.server_error.take();
                return Ok(Inbound::Closed(f.unwrap_or_else(|| {
                    Failure::temporary("connection closed by the server")
                })));
            }
            Some(Err(e)) => {
                let f = self.server_error.take();
                return Ok(Inbound::Closed(
                    f.unwrap_or_else(|| Failure::temporary(format!("read: {e}"))),
                ));
            }
            Some(Ok(Frame::Overlong { len })) => {
                UpstreamStats::bump(&self.stats.overlong);
                debug!(
                    network = self.network,
                    len, "upstream sent an overlong line, skipped"
                );
                self.keepalive.received();
                return Ok(Inbound::Handled);
            }
            Some(Ok(Frame::Line(line))) => line,
        };
        UpstreamStats::bump(&self.stats.lines_in);
        self.keepalive.received();
        let msg = match Message::parse(line.clone()) {
            Ok(m) => m,
            Err(e) => {
                UpstreamStats::bump(&self.stats.parse_errors);
                debug!(network = self.network, error = %e, line = %crate::irc::decode(&line), "unparsable line from upstream, skipped");
                return Ok(Inbound::Handled);
            }
        };
        match msg.command {
            Command::Ping => {
                let pong = Message {
                    tags: vec![],
                    prefix: None,
                    command: Command::Pong,
                    params: msg.params,
                };
                self.write(&pong).await?;
                return Ok(Inbound::Handled);
            }
            // Answers to our keepalive are ours alone.
            Command::Pong if self.keepalive.is_our_pong(&msg) => return Ok(Inbound::Handled),
            Command::Error => {
                let text = msg.params.last().map(|p| &p[..]).unwrap_or_default();
                self.server_error = Some(Failure::from_text(text));
            }
            _ => {}
        }
        Ok(Inbound::Message(msg))
    }

    /// Writes one line, within the write timeout.
    ///
    /// # Errors
    /// The write failed or stalled.
    pub(super) async fn write(&mut self, msg: &Message) -> Result<(), Failure> {
        // Boxed: a write with its timeout is a large future, and every state of a
        // connection that may write would otherwise keep room for it while idle.
        Box::pin(self.write_within_timeout(msg)).await
    }

    async fn write_within_timeout(&mut self, msg: &Message) -> Result<(), Failure> {
        let sent = lineio::write_line(&mut self.write, msg);
        match tokio::time::timeout(self.write_timeout, sent).await {
            Ok(Ok(())) => {
                UpstreamStats::bump(&self.stats.lines_out);
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::temporary(format!("write: {e}"))),
            Err(_) => Err(Failure::temporary(format!(
                "write stalled for {} s",
                self.write_timeout.as_secs()
            ))),
        }
    }

    /// The keepalive's timer fired: sends our PING when the server has been quiet
    /// for the interval.
    ///
    /// # Errors
    /// Our PING went unanswered for the timeout, or could not be written.
    pub(super) async fn keepalive_fired(&mut self) -> Result<(), Failure> {
        if let Some(ping) = self.keepalive.fired()? {
            self.write(&ping).await?;
            self.keepalive.ping_sent();
        }
        Ok(())
    }
}

/// Our side of keeping the connection alive: after `interval` without data from
/// the server we send a PING; `timeout` after it without data, the server is gone.
pub(super) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    /// When data last arrived.
    last_rx: Instant,
    /// When our PING went out, while it is unanswered.
    ping_sent: Option<Instant>,
    seq: u64,
    /// Our last PING's token, to recognise its PONG.
    token: Bytes,
    /// Re-armed lazily: data from the server only moves the deadline later, so the
    /// timer stays where it is and, when it fires early, is set to the real
    /// deadline then. Re-arming it for every line would cost a timer-wheel insert
    /// and removal per line.
    timer: Pin<Box<Sleep>>,
}

impl Keepalive {
    fn new(interval: Duration, timeout: Duration) -> Keepalive {
        let last_rx = Instant::now();
        Keepalive {
            interval,
            timeout,
            last_rx,
            ping_sent: None,
            seq: 0,
            token: Bytes::new(),
            timer: Box::pin(sleep_until(last_rx + interval)),
        }
    }

    /// Data arrived.
    fn received(&mut self) {
        self.last_rx = Instant::now();
        if self.ping_sent.take().is_some() {
            // Answered: next PING after a quiet `interval` (which may be sooner than
            // the PING's timeout).
            self.timer.as_mut().reset(self.last_rx + self.interval);
        }
    }

    fn is_our_pong(&self, msg: &Message) -> bool {
        !self.token.is_empty() && msg.params.last() == Some(&self.token)
    }

    /// Resolves when the timer fires; then call [`Wire::keepalive_fired`].
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.as_mut().poll(cx)
    }

    /// The timer fired: the PING to send now, if one is due (else the timer is set
    /// to when one will be).
    fn fired(&mut self) -> Result<Option<Message>, Failure> {
        let due = match self.ping_sent {
            Some(t) => t + self.timeout,
            None => self.last_rx + self.interval,
        };
        if Instant::now() < due {
            self.timer.as_mut().reset(due);
            return Ok(None);
        }
        if self.ping_sent.is_some() {
            return Err(Failure::temporary(format!(
                "no data from the server for {} s after our PING",
                self.timeout.as_secs_f32()
            )));
        }
        self.seq += 1;
        self.token = Bytes::from(format!("ferry-{}", self.seq));
        Ok(Some(Message::new(Command::Ping, [self.token.clone()])))
    }

    /// Our PING is out: wait `timeout` for an answer.
    fn ping_sent(&mut self) {
        let now = Instant::now();
        self.ping_sent = Some(now);
        self.timer.as_mut().reset(now + self.timeout);
    }
}
