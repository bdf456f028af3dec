//! The client socket, split into a line reader and a line writer with a
//! write timeout.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::irc::{Frame, Message};
use crate::lineio::{LineReader, LineWriter};

/// Any client transport: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The transport as `Any`, so that parking can take a plain TCP socket back out.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
    fn as_any(&self) -> &dyn std::any::Any;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// TLS as the listener accepts it: rustls over the record follower over the socket.
pub type TlsStream = tokio_rustls::server::TlsStream<crate::ktls::Records<tokio::net::TcpStream>>;
/// A client's session switched to kernel TLS (taken over at an in-place upgrade).
pub type KtlsStream = crate::ktls::Stream<tokio::net::TcpStream>;

/// A client transport handed on: its TCP socket, the bytes to read before anything
/// from it (the plaintext rustls held), and whether it is kernel TLS.
pub struct HandedOff {
    pub socket: tokio::net::TcpStream,
    pub plain: Vec<u8>,
    pub ktls: bool,
}

/// The TCP socket of a client transport, a TLS session switched to kernel TLS
/// first (`crate::ktls`).
///
/// # Errors
/// Why it cannot be handed on, with the transport when it is untouched (TLS
/// without kernel TLS, or a session that cannot switch now); `None` when a switch
/// failed half-way (the session is lost).
pub fn hand_off(stream: BoxStream) -> Result<HandedOff, (String, Option<BoxStream>)> {
    // Through the box: `Box<dyn Stream>` is a `Stream` itself.
    let of = (*stream).as_any();
    if !(of.is::<tokio::net::TcpStream>() || of.is::<KtlsStream>() || of.is::<TlsStream>()) {
        return Err(("not a socket".to_owned(), Some(stream)));
    }
    let any = stream.into_any();
    let any = match any.downcast::<tokio::net::TcpStream>() {
        Ok(tcp) => {
            return Ok(HandedOff {
                socket: *tcp,
                plain: Vec::new(),
                ktls: false,
            })
        }
        Err(any) => any,
    };
    let any = match any.downcast::<KtlsStream>() {
        Ok(k) => {
            // Made with nothing drained (see `park::serve_resumed`).
            let (_, tcp) = k.into_raw();
            return Ok(HandedOff {
                socket: tcp,
                plain: Vec::new(),
                ktls: true,
            });
        }
        Err(any) => any,
    };
    let Ok(tls) = any.downcast::<TlsStream>() else {
        unreachable!("checked above")
    };
    match crate::ktls::hand_off(*tls) {
        crate::ktls::HandOff::Switched(tcp, plain) => Ok(HandedOff {
            socket: tcp,
            plain,
            ktls: true,
        }),
        crate::ktls::HandOff::NotNow(tls, why) => Err((why, Some(Box::new(tls)))),
        crate::ktls::HandOff::Lost(e) => Err((e.to_string(), None)),
    }
}

pub type BoxStream = Box<dyn Stream>;

pub struct Reader(LineReader<ReadHalf<BoxStream>>);

impl Reader {
    /// The next message; `None` at end of stream or on a read error.
    /// Unparsable and overlong lines are skipped.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match self.0.next_frame().await? {
                Ok(Frame::Line(line)) => match Message::parse(line) {
                    Ok(m) => return Some(m),
                    Err(e) => tracing::debug!(error = %e, "skipping unparsable client line"),
                },
                Ok(Frame::Overlong { len }) => {
                    tracing::debug!(len, "skipping overlong client line")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client read failed");
                    return None;
                }
            }
        }
    }
}

pub struct Writer {
    inner: LineWriter<WriteHalf<BoxStream>>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("write timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Writer {
    /// Queues a line; it goes out at the next [`Writer::flush`] or when the
    /// buffer fills.
    pub async fn feed(&mut self, msg: &Message) -> Result<(), WriteError> {
        // Only a full queue writes (and may wait, bounded by the timeout); most lines
        // are only encoded, without arming a timer.
        if self.inner.is_full() {
            tokio::time::timeout(self.timeout, self.inner.make_room())
                .await
                .map_err(|_| WriteError::Timeout)??;
        }
        self.inner.queue(msg)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), WriteError> {
        tokio::time::timeout(self.timeout, self.inner.flush())
            .await
            .map_err(|_| WriteError::Timeout)??;
        Ok(())
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), WriteError> {
        self.feed(msg).await?;
        self.flush().await
    }

    pub async fn send_all(&mut self, msgs: &[Message]) -> Result<(), WriteError> {
        for m in msgs {
            self.feed(m).await?;
        }
        self.flush().await
    }

    /// Sends `ERROR :Closing link (reason)` and shuts the socket down,
    /// ignoring failures: the connection is going away anyway.
    pub async fn close(mut self, reason: &str) {
        let msg = Message::new("ERROR", [format!("Closing link ({reason})")]);
        let _ = self.send(&msg).await;
        let _ = tokio::time::timeout(self.timeout, self.inner.close()).await;
    }
}

/// Puts a split socket back together for byte-level splicing (proxying), with the
/// bytes the reader had buffered but not yet decoded.
pub async fn reunite(reader: Reader, mut writer: Writer) -> (BoxStream, bytes::BytesMut) {
    let _ = writer.flush().await;
    let (r, buffered) = reader.0.into_parts();
    let w = writer.inner.into_inner();
    (r.unsplit(w), buffered)
}

/// [`split`] for a socket taken over from a parked client, with the bytes it had
/// read and not yet cut into lines.
pub fn split_resumed(
    stream: BoxStream,
    unread: bytes::BytesMut,
    write_timeout: Duration,
) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(stream);
    (
        Reader(LineReader::from_parts(r, unread)),
        Writer {
            inner: LineWriter::new(w),
            timeout: write_timeout,
        },
    )
}

pub fn split(stream: BoxStream, write_timeout: Duration) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(stream);
    (
        Reader(LineReader::new(r)),
        Writer {
            inner: LineWriter::new(w),
            timeout: write_timeout,
        },
    )
}
