//! Kernel TLS for the in-place upgrade (issue 13): a TLS session whose keys live in
//! rustls cannot be handed to another process, but one switched to kernel TLS can —
//! the kernel then encrypts and decrypts, and the socket moves like a plain one.
//!
//! - [`available`]: the kernel offers the `tls` upper-layer protocol (it is listed in
//!   `/proc/sys/net/ipv4/tcp_available_ulp`). Without it nothing here is tried and TLS
//!   connections are re-established after a handoff, as before.
//! - [`Records`]: the TCP stream under rustls, from the handshake on. It follows the
//!   TLS record framing of what it reads, so a park knows whether rustls holds part
//!   of a record (bytes it could not give back): only at a record boundary can the
//!   session switch.
//! - [`check`], then [`switch`]: takes the plaintext rustls decrypted and nobody read
//!   yet (carried like the bytes a line reader holds), extracts the traffic secrets
//!   (`dangerous_extract_secrets`, with `enable_secret_extraction` set in both
//!   configs) and installs them in the kernel (`TLS_TX`, `TLS_RX`) as the `ktls`
//!   crate's `CryptoInfo` lays them out. No cryptography is done here.
//! - [`Stream`]: a switched socket in the process that took it over — the `ktls`
//!   crate's stream: application data by read and write; alerts and post-handshake
//!   messages come as control messages, which it takes (a close_notify or a fatal
//!   alert ends the stream; a NewSessionTicket is skipped). A TLS 1.3 KeyUpdate
//!   cannot be followed by a kernel without kTLS key-update support (Debian 12's 6.1
//!   has none): the next record then fails to decrypt, the read fails and the
//!   connection ends like any broken one (upstream: it reconnects through the
//!   limiter; a client reconnects).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::ident::Tracked;

/// A socket switched to kernel TLS, as the process that took it over uses it: the
/// `ktls` crate's stream, guarded. That stream panics on some records a peer can
/// send (a ChangeCipherSpec after the handshake, an unexpected control message); a
/// panic here would end the task polling it — for an upstream, the user's actor.
/// The guard turns such a panic into an I/O error, after which the stream only
/// fails: the connection ends like any broken one (an upstream reconnects).
pub struct Stream<IO: AsRawFd> {
    inner: ktls::KtlsStream<IO>,
    broken: bool,
}

impl<IO: AsRawFd> Stream<IO> {
    /// `drained`: plaintext read before the switch, returned first.
    pub fn new(io: IO, drained: Option<Vec<u8>>) -> Stream<IO> {
        Stream {
            inner: ktls::KtlsStream::new(io, drained),
            broken: false,
        }
    }

    pub fn into_raw(self) -> (Option<Vec<u8>>, IO) {
        self.inner.into_raw()
    }

    pub fn get_ref(&self) -> &IO {
        self.inner.get_ref()
    }

    pub fn get_mut(&mut self) -> &mut IO {
        self.inner.get_mut()
    }

    /// Runs `f` on the inner stream; a panic in it breaks the stream for good.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(Pin<&mut ktls::KtlsStream<IO>>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        IO: Unpin,
    {
        if self.broken {
            return Poll::Ready(Err(broken()));
        }
        let inner = Pin::new(&mut self.inner);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inner))) {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                tracing::warn!("kernel TLS: the peer sent a record the stream cannot take; closing the connection");
                Poll::Ready(Err(broken()))
            }
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "kernel TLS: unexpected TLS record",
    )
}

impl<IO: AsRawFd> std::fmt::Debug for Stream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ktls::Stream")
            .field("fd", &self.inner.as_raw_fd())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<IO: AsRawFd> AsRawFd for Stream<IO> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl<IO> AsyncRead for Stream<IO>
where
    IO: AsRawFd + AsyncRead + ktls::AsyncReadReady + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().guarded(|s| s.poll_read(cx, buf))
    }
}

impl<IO> AsyncWrite for Stream<IO>
where
    IO: AsRawFd + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guarded(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(|s| s.poll_shutdown(cx))
    }
}

/// True when the kernel offers kernel TLS. Read once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .is_ok_and(|ulps| ulps.split_whitespace().any(|u| u == "tls"))
    })
}

/// A stream that follows the TLS record framing of what is read through it: a
/// record is a 5-byte header (type, version, length) and `length` bytes.
#[derive(Debug)]
pub struct Records<IO> {
    io: IO,
    header: [u8; 5],
    /// Header bytes seen of the record being read (0 to 4; 5 is a whole header).
    have: usize,
    /// Bytes of the current record's body still to come.
    left: usize,
}

impl<IO> Records<IO> {
    pub fn new(io: IO) -> Records<IO> {
        Records {
            io,
            header: [0; 5],
            have: 0,
            left: 0,
        }
    }

    /// True when every record read so far was read whole.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn into_inner(self) -> IO {
        self.io
    }

    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 5 {
                self.have = 0;
                self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Records<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            this.follow(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Records<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl AsRawFd for Tracked<TcpStream> {
    fn as_raw_fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }
}

impl ktls::AsyncReadReady for Tracked<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

/// Whether a TLS session can be switched to kernel TLS now; the reason when not.
/// Touches nothing: the session carries on either way.
///
/// # Errors
/// Why not: no kernel TLS, part of a record read, records not yet sent, a cipher
/// suite the kernel does not take.
pub fn check(state: &rustls::CommonState, at_boundary: bool) -> Result<(), String> {
    if !available() {
        return Err("TLS without kernel TLS".to_owned());
    }
    if state.is_handshaking() {
        return Err("TLS handshake not done".to_owned());
    }
    if !at_boundary {
        return Err("a TLS record is half read".to_owned());
    }
    if state.wants_write() {
        return Err("TLS records not yet sent".to_owned());
    }
    match state.negotiated_cipher_suite() {
        Some(s) if ktls::KtlsCipherSuite::try_from(s).is_ok() => Ok(()),
        Some(s) => Err(format!("{:?} has no kernel TLS", s.suite())),
        None => Err("no cipher suite".to_owned()),
    }
}

/// Attaches the kernel's `tls` protocol to the socket: nothing changes on the wire
/// until [`switch`] installs the keys, so a failure here leaves the session as it was.
///
/// # Errors
/// The kernel refused.
pub fn attach(fd: RawFd) -> io::Result<()> {
    // SAFETY: a valid socket and a buffer of the given length.
    let r =
        unsafe { libc::setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, b"tls".as_ptr().cast(), 3) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why a session could not be switched after [`attach`]: it is lost.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the peer closed the TLS session")]
    Closed,
    #[error("reading what rustls holds: {0}")]
    Read(io::Error),
    #[error("no negotiated cipher suite")]
    NoSuite,
    #[error("TLS secrets: {0}")]
    Secrets(rustls::Error),
    #[error("kernel TLS keys: {0}")]
    Keys(String),
    #[error("kernel TLS: {0}")]
    Kernel(io::Error),
}

/// Switches the session on `fd` (after [`check`] and [`attach`]) to kernel TLS:
/// the plaintext rustls decrypted and nobody read yet (to be read before anything
/// from the socket), with the keys installed in the kernel for both directions.
///
/// # Errors
/// The session is lost (the socket is in an unknown state: close it).
pub fn switch(fd: RawFd, mut conn: rustls::Connection) -> Result<Vec<u8>, SwitchError> {
    let mut plain = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return Err(SwitchError::Closed),
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(SwitchError::Read(e)),
        }
    }
    let suite = conn.negotiated_cipher_suite().ok_or(SwitchError::NoSuite)?;
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(SwitchError::Secrets)?;
    let tx = ktls::CryptoInfo::from_rustls(suite, secrets.tx)
        .map_err(|e| SwitchError::Keys(e.to_string()))?;
    let rx = ktls::CryptoInfo::from_rustls(suite, secrets.rx)
        .map_err(|e| SwitchError::Keys(e.to_string()))?;
    set_keys(fd, libc::TLS_TX, &tx)?;
    set_keys(fd, libc::TLS_RX, &rx)?;
    Ok(plain)
}

fn set_keys(fd: RawFd, direction: libc::c_int, info: &ktls::CryptoInfo) -> Result<(), SwitchError> {
    let len = libc::socklen_t::try_from(info.size())
        .map_err(|_| SwitchError::Keys("crypto info too large".to_owned()))?;
    // SAFETY: `info` points at a kernel `tls12_crypto_info_*` struct of `len` bytes.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_TLS, direction, info.as_ptr(), len) };
    if r < 0 {
        return Err(SwitchError::Kernel(io::Error::last_os_error()));
    }
    Ok(())
}

/// A TLS stream as Ferry makes them (rustls over [`Records`]), client or server.
pub trait Session: Sized {
    type Io: AsRawFd;
    fn records(&self) -> &Records<Self::Io>;
    fn state(&self) -> &rustls::CommonState;
    fn into_parts(self) -> (Records<Self::Io>, rustls::Connection);
}

impl<IO: AsRawFd> Session for tokio_rustls::client::TlsStream<Records<IO>> {
    type Io = IO;
    fn records(&self) -> &Records<IO> {
        self.get_ref().0
    }
    fn state(&self) -> &rustls::CommonState {
        self.get_ref().1
    }
    fn into_parts(self) -> (Records<IO>, rustls::Connection) {
        let (io, conn) = self.into_inner();
        (io, rustls::Connection::Client(conn))
    }
}

impl<IO: AsRawFd> Session for tokio_rustls::server::TlsStream<Records<IO>> {
    type Io = IO;
    fn records(&self) -> &Records<IO> {
        self.get_ref().0
    }
    fn state(&self) -> &rustls::CommonState {
        self.get_ref().1
    }
    fn into_parts(self) -> (Records<IO>, rustls::Connection) {
        let (io, conn) = self.into_inner();
        (io, rustls::Connection::Server(conn))
    }
}

/// What [`hand_off`] did with a session.
pub enum HandOff<S: Session> {
    /// Switched: the socket, and the plaintext to read before anything from it.
    Switched(S::Io, Vec<u8>),
    /// Not now, and why; the session is untouched and carries on.
    NotNow(S, String),
    /// The switch failed half-way: the session is lost.
    Lost(SwitchError),
}

/// Switches a TLS session to kernel TLS when it can be ([`check`], [`attach`],
/// [`switch`]).
pub fn hand_off<S: Session>(session: S) -> HandOff<S> {
    if let Err(why) = check(session.state(), session.records().at_boundary()) {
        return HandOff::NotNow(session, why);
    }
    let fd = session.records().get_ref().as_raw_fd();
    if let Err(e) = attach(fd) {
        return HandOff::NotNow(session, format!("kernel TLS: {e}"));
    }
    let (records, conn) = session.into_parts();
    match switch(fd, conn) {
        Ok(plain) => HandOff::Switched(records.into_inner(), plain),
        Err(e) => HandOff::Lost(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_followed_across_reads() {
        let mut r = Records::new(());
        assert!(r.at_boundary());
        // A header in two pieces, then its 3-byte body in two.
        r.follow(&[23, 3, 3]);
        assert!(!r.at_boundary());
        r.follow(&[0, 3, 1]);
        assert!(!r.at_boundary());
        r.follow(&[2, 3]);
        assert!(r.at_boundary());
        // Two whole records and the start of a third in one read.
        r.follow(&[23, 3, 3, 0, 1, 9, 23, 3, 3, 0, 0, 23]);
        assert!(!r.at_boundary());
        r.follow(&[3, 3, 0, 2, 1, 1]);
        assert!(r.at_boundary());
    }
}
