//! The ident responder (RFC 1413): an IRC network asks "who owns the connection from
//! your port A to my port B?", and Ferry answers with a name derived from the Ferry
//! user who made it, so that a network sees a distinct username per user even when
//! every user of the node connects from the same address.
//!
//! - [`Idents`]: the node's table of live upstream sockets, (local address, remote
//!   address) → ident name. The upstream dial registers a socket as soon as TCP is up
//!   (servers ask before registration starts) and the [`Tracked`] transport removes it
//!   when the connection closes.
//! - [`ident_name`]: the name, derived deterministically from the Ferry user name.
//! - [`parse_query`] / [`reply`]: the protocol, no I/O.
//! - [`serve`]: the listener (`[ident] listen`), bounded like the HTTP server: one
//!   line of at most [`MAX_QUERY`] bytes, read within a timeout, a cap on open
//!   connections, then the answer and close.
//!
//! Off by default: with no `[ident] listen`, no table is kept and nothing listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// The longest ident name: InspIRCd's default `<limits maxident>` (10), which
/// truncates longer answers; Solanum's USERLEN is 10 too.
pub const MAX_IDENT: usize = 10;

/// The longest query line accepted, CR LF included. RFC 1413 queries are two port
/// numbers and a comma (at most 13 bytes with spaces); 64 leaves room for odd spacing.
pub const MAX_QUERY: usize = 64;

/// The ident name of a Ferry user: the user name itself when it fits
/// ([`MAX_IDENT`] bytes; Ferry user names are letters, digits, `-`, `_` and `.`, all
/// of which ident allows), else its first four characters, `^` and five base-32
/// characters of the SHA-256 of the whole name. `^` is valid in an ident but never in
/// a Ferry user name, so a shortened name cannot equal another user's full one.
pub fn ident_name(user: &str) -> String {
    let clean: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if !clean.is_empty() && clean.len() <= MAX_IDENT && clean == user {
        return clean;
    }
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(user.as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut out: String = clean.chars().take(4).collect();
    if out.is_empty() {
        out.push('u');
    }
    out.push('^');
    for i in 0..5 {
        out.push(char::from(ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize]));
    }
    out
}

/// A query that cannot be answered with a user: RFC 1413's error tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentError {
    /// The line is not two port numbers separated by a comma.
    InvalidPort,
    /// No connection of ours between those ports.
    NoUser,
}

impl IdentError {
    fn token(self) -> &'static str {
        match self {
            IdentError::InvalidPort => "INVALID-PORT",
            IdentError::NoUser => "NO-USER",
        }
    }
}

/// Parses a query line, `<port-on-server> , <port-on-client>` (the server being the
/// host that runs this responder, so: our local port, then the asker's port), with
/// optional spaces and line end.
///
/// # Errors
/// `InvalidPort` for anything else, port 0 included.
pub fn parse_query(line: &[u8]) -> Result<(u16, u16), IdentError> {
    let text = std::str::from_utf8(line).map_err(|_| IdentError::InvalidPort)?;
    let text = text.trim_end_matches(['\r', '\n']);
    let (a, b) = text.split_once(',').ok_or(IdentError::InvalidPort)?;
    let port = |s: &str| {
        let s = s.trim_matches([' ', '\t']);
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdentError::InvalidPort);
        }
        s.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(IdentError::InvalidPort)
    };
    Ok((port(a)?, port(b)?))
}

/// The answer line for a query about `ports`: `A, B : USERID : UNIX : name` or
/// `A, B : ERROR : TOKEN`, with CR LF.
pub fn reply(ports: (u16, u16), answer: Result<&str, IdentError>) -> String {
    let (ours, theirs) = ports;
    match answer {
        Ok(name) => format!("{ours}, {theirs} : USERID : UNIX : {name}\r\n"),
        Err(e) => format!("{ours}, {theirs} : ERROR : {}\r\n", e.token()),
    }
}

/// A socket's (local, remote) addresses → its user's ident name.
type Table = HashMap<(SocketAddr, SocketAddr), Arc<str>>;

/// The node's live upstream sockets by (local, remote) address, with the ident name
/// of the user each belongs to. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Idents {
    inner: Arc<Mutex<Table>>,
}

impl Idents {
    /// Records a socket; it stays until the returned guard is dropped.
    pub fn register(&self, local: SocketAddr, remote: SocketAddr, name: Arc<str>) -> Entry {
        self.inner
            .lock()
            .expect("ident table")
            .insert((local, remote), name);
        Entry {
            idents: self.clone(),
            key: (local, remote),
        }
    }

    /// The name for a query from `asker` (the remote host) about our local port
    /// `ours` and its port `theirs`.
    pub fn lookup(&self, asker: std::net::IpAddr, ours: u16, theirs: u16) -> Option<Arc<str>> {
        let table = self.inner.lock().expect("ident table");
        table
            .iter()
            .find(|((local, remote), _)| {
                local.port() == ours
                    && remote.port() == theirs
                    && canonical(remote.ip()) == canonical(asker)
            })
            .map(|(_, name)| name.clone())
    }

    /// How many sockets are recorded.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("ident table").len()
    }

    /// Whether no socket is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    ip.to_canonical()
}

/// A socket's place in [`Idents`]; removes it when dropped.
#[derive(Debug)]
pub struct Entry {
    idents: Idents,
    key: (SocketAddr, SocketAddr),
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut t) = self.idents.inner.lock() {
            t.remove(&self.key);
        }
    }
}

/// Who an upstream connection belongs to, for the ident table: the node's table and
/// the user's ident name.
#[derive(Clone, Debug)]
pub struct IdentTag {
    pub idents: Idents,
    pub name: Arc<str>,
}

/// `stream`, recorded under `tag` when there is one (and its addresses are known)
/// for as long as the returned transport lives.
pub fn track(tag: Option<&IdentTag>, stream: TcpStream) -> Tracked<TcpStream> {
    let entry = tag.and_then(|t| match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(remote)) => Some(t.idents.register(local, remote, t.name.clone())),
        _ => None,
    });
    Tracked {
        inner: stream,
        _entry: entry,
    }
}

/// A transport that keeps its [`Entry`] for as long as it lives.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    _entry: Option<Entry>,
}

impl<T> Tracked<T> {
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The transport, out of the table (a parked connection is recorded again by
    /// whoever resumes it).
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The responder's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// A client must send its query (and read the answer) within this.
    pub timeout: Duration,
    /// Open ident connections at once; further ones are closed unanswered.
    pub max_connections: usize,
}

/// Answers ident queries on `listener` from `idents` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    idents: Idents,
    bounds: Bounds,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let open = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "ident accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            debug!(addr = %peer, "ident: too many open connections, closing");
            continue;
        };
        let idents = idents.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = tokio::time::timeout(bounds.timeout, answer(stream, peer, &idents)) => {
                    if r.is_err() {
                        debug!(addr = %peer, "ident: query timed out");
                    }
                }
            }
        });
    }
}

/// Reads one query (bounded), answers it, closes.
async fn answer(mut stream: TcpStream, peer: SocketAddr, idents: &Idents) {
    let mut buf = [0u8; MAX_QUERY];
    let mut len = 0;
    let line = loop {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            break &buf[..end];
        }
        if len == buf.len() {
            // Too long for a query: no answer worth giving.
            return;
        }
    };
    let text = match parse_query(line) {
        Ok((ours, theirs)) => {
            let found = idents.lookup(peer.ip(), ours, theirs);
            debug!(addr = %peer, ours, theirs, found = found.is_some(), "ident query");
            reply((ours, theirs), found.as_deref().ok_or(IdentError::NoUser))
        }
        Err(e) => {
            // Echo what we can of the ports; an unparsable line gets `0, 0`.
            reply((0, 0), Err(e))
        }
    };
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse() {
        assert_eq!(parse_query(b"6193, 23\r"), Ok((6193, 23)));
        assert_eq!(parse_query(b"6193,23"), Ok((6193, 23)));
        assert_eq!(parse_query(b" 6193 ,\t23 \r\n"), Ok((6193, 23)));
        assert_eq!(parse_query(b"65535,1"), Ok((65535, 1)));
        for bad in [
            &b""[..],
            b"6193",
            b"6193,",
            b",23",
            b"0,23",
            b"6193,0",
            b"65536,23",
            b"-1,23",
            b"6193,23,1",
            b"61 93,23",
            b"000006193,23",
            b"a,b",
            b"\xff,1",
            b"+1,2",
        ] {
            assert_eq!(
                parse_query(bad),
                Err(IdentError::InvalidPort),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn replies_follow_rfc_1413() {
        assert_eq!(
            reply((6193, 23), Ok("alice")),
            "6193, 23 : USERID : UNIX : alice\r\n"
        );
        assert_eq!(
            reply((6193, 23), Err(IdentError::NoUser)),
            "6193, 23 : ERROR : NO-USER\r\n"
        );
        assert_eq!(
            reply((0, 0), Err(IdentError::InvalidPort)),
            "0, 0 : ERROR : INVALID-PORT\r\n"
        );
    }

    #[test]
    fn names_are_short_distinct_and_valid() {
        assert_eq!(ident_name("alice"), "alice");
        assert_eq!(ident_name("bob.smith_"), "bob.smith_");
        let long = ident_name("carolinetester");
        assert_eq!(long.len(), MAX_IDENT);
        assert!(long.starts_with("caro^"), "{long}");
        assert_eq!(long, ident_name("carolinetester"), "deterministic");
        assert_ne!(long, ident_name("carolinetester2"));
        assert_ne!(ident_name("caro12345678"), ident_name("caro12345679"));
        for name in ["alice", "carolinetester", "x", "a.b-c_d", "0123456789abc"] {
            let id = ident_name(name);
            assert!(id.len() <= MAX_IDENT && !id.is_empty(), "{id}");
            // InspIRCd's IsIdent: 'A'..='}', digits, '-', '.'.
            assert!(
                id.bytes().all(|b| (b'A'..=b'}').contains(&b)
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
                "{id}"
            );
        }
    }

    #[test]
    fn the_table_finds_live_sockets_only() {
        let idents = Idents::default();
        let local: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:6667".parse().unwrap();
        let entry = idents.register(local, remote, "alice".into());
        let asker = remote.ip();
        assert_eq!(idents.lookup(asker, 40000, 6667).as_deref(), Some("alice"));
        assert_eq!(idents.lookup(asker, 6667, 40000), None, "ports swapped");
        assert_eq!(
            idents.lookup("10.0.0.1".parse().unwrap(), 40000, 6667),
            None
        );
        assert_eq!(
            idents
                .lookup("::ffff:127.0.0.1".parse().unwrap(), 40000, 6667)
                .as_deref(),
            Some("alice"),
            "a v4-mapped asker is the same host"
        );
        drop(entry);
        assert!(idents.is_empty());
        assert_eq!(idents.lookup(asker, 40000, 6667), None);
    }

    #[tokio::test]
    async fn the_responder_answers_and_bounds() {
        let idents = Idents::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tokio::spawn(serve(
            listener,
            idents.clone(),
            Bounds {
                timeout: Duration::from_secs(5),
                max_connections: 8,
            },
            shutdown.clone(),
            tasks.clone(),
        ));
        let _e = idents.register(
            "127.0.0.1:41000".parse().unwrap(),
            "127.0.0.1:6667".parse().unwrap(),
            "alice".into(),
        );
        let ask = |q: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(q).await.unwrap();
            let mut out = Vec::new();
            // A refused query may end in a reset: what was read is the answer.
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            ask(b"41000, 6667\r\n").await,
            "41000, 6667 : USERID : UNIX : alice\r\n"
        );
        assert_eq!(
            ask(b"41001, 6667\r\n").await,
            "41001, 6667 : ERROR : NO-USER\r\n"
        );
        assert_eq!(ask(b"x\r\n").await, "0, 0 : ERROR : INVALID-PORT\r\n");
        // An overlong line is closed without an answer.
        assert_eq!(ask(&[b'1'; 200]).await, "");
        shutdown.cancel();
    }
}
