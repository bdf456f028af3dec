//! Line I/O on a byte stream (IRC upstream and downstream sockets) that holds no
//! buffer while the connection is idle.
//!
//! `tokio_util`'s `Framed` keeps an 8 KiB read buffer and an 8 KiB write buffer for
//! the whole life of a connection. With one upstream connection per user and
//! network, and one more per attached client, those buffers were the largest part
//! of an idle user's memory. Here:
//!
//! - [`LineReader`] reads into a chunk on the stack of the poll and copies only the
//!   bytes that arrived to the heap; lines are cut from that copy without copying
//!   again (they share it, as with `Framed`). A partial line stays buffered until
//!   its end arrives; once every complete line is taken the buffer is let go.
//! - [`LineWriter`] encodes lines into a buffer that is written out at
//!   [`LineWriter::flush`] (or once it holds [`WRITE_BATCH`] bytes) and let go
//!   after the flush.
//!
//! Framing is [`LineCodec`]'s, exactly as with `Framed`: the same length limit,
//! overlong lines reported and skipped, and the same encodings of a `Message` or
//! raw `Bytes` (CR/LF inside replaced).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

use crate::irc::{Frame, LineCodec};

/// Bytes read from the socket at most per read call (on the stack, not kept).
pub const READ_CHUNK: usize = 4096;

/// Pending output above which [`LineWriter::feed`] writes out before queueing
/// more (what `Framed` calls its backpressure boundary).
pub const WRITE_BATCH: usize = 8192;

/// Lines from a byte stream, framed by [`LineCodec`].
pub struct LineReader<R> {
    io: R,
    codec: LineCodec,
    /// Bytes read and not yet framed: a partial line, or lines not yet taken.
    /// Empty (no allocation) while idle.
    buf: BytesMut,
    eof: bool,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(io: R) -> LineReader<R> {
        LineReader::with_codec(io, LineCodec::default())
    }

    pub fn with_codec(io: R, codec: LineCodec) -> LineReader<R> {
        LineReader {
            io,
            codec,
            buf: BytesMut::new(),
            eof: false,
            done: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// A reader that first returns the lines in `buffered` (bytes read from `io`
    /// earlier, by another reader: [`LineReader::into_parts`]).
    pub fn from_parts(io: R, buffered: BytesMut) -> LineReader<R> {
        LineReader {
            io,
            codec: LineCodec::default(),
            buf: buffered,
            eof: false,
            done: false,
        }
    }

    /// The stream and the bytes read from it but not yet returned as lines.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// The next line (or overlong-line report); `None` at the end of the stream.
    /// After an error the stream ends. Cancel-safe: bytes are only taken from the
    /// socket inside one poll, and kept.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.eof {
                let frame = self.codec.decode_eof(&mut self.buf);
                if !matches!(frame, Ok(Some(_))) {
                    self.done = true;
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(frame.transpose());
            }
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.buf.is_empty() {
                // Every line is taken: let go of the allocation (lines still alive
                // share it and free it when they are dropped). An empty buffer
                // cut from a chunk may report no capacity and still hold it.
                self.buf = BytesMut::new();
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
                self.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            if read.filled().is_empty() {
                self.eof = true;
            } else {
                self.buf.extend_from_slice(read.filled());
            }
        }
    }

    /// [`LineReader::poll_frame`] as a future.
    pub async fn next_frame(&mut self) -> Option<io::Result<Frame>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }
}

impl<R: AsyncRead + Unpin> Stream for LineReader<R> {
    type Item = io::Result<Frame>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_frame(cx)
    }
}

/// Lines to a byte stream, encoded by [`LineCodec`].
pub struct LineWriter<W> {
    io: W,
    codec: LineCodec,
    /// Encoded lines not yet written. Empty (no allocation) after a flush.
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    pub fn new(io: W) -> LineWriter<W> {
        LineWriter {
            io,
            codec: LineCodec::default(),
            buf: BytesMut::new(),
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    /// The stream; lines fed and not flushed are dropped.
    pub fn into_inner(self) -> W {
        self.io
    }

    /// Queues one line (whatever [`LineCodec`] encodes: a `&Message`, raw `Bytes`);
    /// writes the queue out first when it holds [`WRITE_BATCH`] bytes or more.
    pub async fn feed<I>(&mut self, item: I) -> io::Result<()>
    where
        LineCodec: Encoder<I, Error = io::Error>,
    {
        self.make_room().await?;
        self.queue(item)
    }

    /// Whether [`LineWriter::make_room`] has anything to write: the queue holds
    /// [`WRITE_BATCH`] bytes or more.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= WRITE_BATCH
    }

    /// Writes the queue out when it is full ([`LineWriter::is_full`]); does nothing,
    /// without waiting, otherwise.
    pub async fn make_room(&mut self) -> io::Result<()> {
        if self.is_full() {
            self.write_out().await?;
            self.io.flush().await?;
        }
        Ok(())
    }

    /// Queues one line without writing anything: [`LineWriter::feed`] without its
    /// [`LineWriter::make_room`].
    pub fn queue<I>(&mut self, item: I) -> io::Result<()>
    where
        LineCodec: Encoder<I, Error = io::Error>,
    {
        self.codec.encode(item, &mut self.buf)
    }

    /// Writes every queued line, flushes the stream and lets the buffer go.
    /// Cancel-safe in the sense that bytes written stay written: a later flush
    /// continues where this one stopped.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.write_out().await?;
        self.buf = BytesMut::new();
        self.io.flush().await
    }

    /// [`LineWriter::feed`] then [`LineWriter::flush`].
    pub async fn send<I>(&mut self, item: I) -> io::Result<()>
    where
        LineCodec: Encoder<I, Error = io::Error>,
    {
        self.feed(item).await?;
        self.flush().await
    }

    /// Flushes, then shuts the stream's write side down.
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }

    async fn write_out(&mut self) -> io::Result<()> {
        while self.buf.has_remaining() {
            if self.io.write_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// Writes one line (encoded by [`LineCodec`]) and flushes, with a buffer of its
/// own that is gone afterwards: for connections that send a line at a time.
pub async fn write_line<W, I>(io: &mut W, item: I) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    LineCodec: Encoder<I, Error = io::Error>,
{
    let mut line = BytesMut::with_capacity(512);
    LineCodec::default().encode(item, &mut line)?;
    io.write_all(&line).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use crate::irc::Message;

    fn line(s: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s))
    }

    #[tokio::test]
    async fn reads_lines_split_anywhere_and_releases_the_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = LineReader::new(rx);
        tx.write_all(b"PING :a\r\nPRIV").await.unwrap();
        assert_eq!(r.next_frame().await.unwrap().unwrap(), line(b"PING :a"));
        tx.write_all(b"MSG #c :hi\n\r\n").await.unwrap();
        assert_eq!(
            r.next_frame().await.unwrap().unwrap(),
            line(b"PRIVMSG #c :hi")
        );
        // Nothing pending: the next poll lets the buffer go before it waits.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(r.poll_frame(&mut cx).is_pending());
        assert_eq!(r.buf.capacity(), 0);
        tx.write_all(b"last").await.unwrap();
        drop(tx);
        assert_eq!(r.next_frame().await.unwrap().unwrap(), line(b"last"));
        assert!(r.next_frame().await.is_none());
        assert!(r.next_frame().await.is_none());
    }

    #[tokio::test]
    async fn overlong_lines_are_reported_and_skipped() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut r = LineReader::with_codec(rx, LineCodec::new(100));
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\r\nok\r\n");
        tx.write_all(&input).await.unwrap();
        drop(tx);
        assert!(matches!(
            r.next_frame().await.unwrap().unwrap(),
            Frame::Overlong { .. }
        ));
        assert_eq!(r.next_frame().await.unwrap().unwrap(), line(b"ok"));
        assert!(r.next_frame().await.is_none());
    }

    #[tokio::test]
    async fn writes_lines_and_lets_the_buffer_go() {
        let (tx, mut rx) = tokio::io::duplex(1 << 16);
        let mut w = LineWriter::new(tx);
        w.feed(&Message::new("PING", [Bytes::from_static(b"x")]))
            .await
            .unwrap();
        w.feed(Bytes::from_static(b"RAW a\r\nb")).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0);
        // A long batch goes out in parts, each line whole.
        for _ in 0..1000 {
            w.feed(Bytes::from_static(b"PRIVMSG #c :0123456789"))
                .await
                .unwrap();
        }
        w.close().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut got)
            .await
            .unwrap();
        let mut want = b"PING x\r\nRAW a  b\r\n".to_vec();
        for _ in 0..1000 {
            want.extend_from_slice(b"PRIVMSG #c :0123456789\r\n");
        }
        assert_eq!(got, want);
    }
}
