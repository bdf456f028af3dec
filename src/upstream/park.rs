//! Parking: a registered connection stops at a barrier and yields its parts, so that
//! another task (in this process, or a new binary the socket is handed to) carries on
//! with the same TCP connection — no QUIT, no new registration, no re-JOIN.
//!
//! The barrier is the upstream task's command queue: a [`UpstreamCommand::Park`] is
//! taken after every line the actor sent before it (those are in the flood queue,
//! and carried). From then on the task reads nothing more: what it had read and not
//! yet cut into lines is carried as bytes, what the server sends later waits in the
//! kernel's socket buffer, which moves with the socket. Every line the task had
//! already cut was handed to the actor before the park was taken, in order, so the
//! actor gets each line exactly once if it handles its queue of upstream events
//! before it takes the parts.
//!
//! The connection's limiter slot goes with it: the park names it (key, source IP) and
//! hands over the permit itself; a resume in this process keeps the permit, one in
//! another process adopts the slot on its limiter.
//!
//! Plain TCP is parked as it is. A TLS session's keys live in this process, so a TLS
//! connection is parked only where the kernel offers kernel TLS: the park switches it
//! (`crate::ktls`) and the socket moves like a plain one, marked
//! [`UpstreamPark::ktls`]. Without kernel TLS — or when the session cannot switch at
//! that moment (half a record read, records not yet sent, a cipher suite the kernel
//! lacks) — it answers [`NotParked::MustReconnect`] and keeps running. A connection that is not
//! registered (dialling, registering, waiting to reconnect) answers
//! [`NotParked::NotRegistered`]: it has nothing to carry and simply starts again.

use std::collections::VecDeque;

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::irc::Message;
use crate::limits::Permit;
use crate::store::NetworkId;

#[cfg(doc)]
use super::UpstreamCommand;

/// A parked upstream connection: the state (serialisable) and the socket, carried
/// beside it (as a file descriptor across processes).
#[derive(Debug)]
pub struct ParkedUpstream {
    pub state: UpstreamPark,
    /// Non-blocking, as it was used; whoever resumes it sets the mode it needs
    /// ([`super::resume`] does).
    pub socket: std::net::TcpStream,
    /// The limiter's permit the connection held, while it stays in this process: a
    /// resume here keeps it (the slot stays counted throughout); another process
    /// adopts the slot anew from [`UpstreamPark::limits_key`] and
    /// [`UpstreamPark::source_ip`] (`Limiter::adopt`), and this one is dropped with
    /// the old process's parts. `None` without a limiter.
    pub permit: Option<Permit>,
}

/// What the upstream task needs to carry on with a parked connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPark {
    /// The state format, checked by whoever resumes it.
    pub version: u32,
    pub network_id: NetworkId,
    /// The server acknowledged `message-tags`: tags go out.
    pub tags_allowed: bool,
    /// Bytes read from the server and not yet cut into lines.
    #[serde(with = "crate::upgrade::bytes")]
    pub unread: Vec<u8>,
    /// Queries queued for flood control, not yet written (each line without CR LF).
    #[serde(with = "crate::upgrade::bytes::list")]
    pub queries: Vec<Vec<u8>>,
    /// Chat queued for flood control, not yet written (each line without CR LF).
    #[serde(with = "crate::upgrade::bytes::list")]
    pub queue: Vec<Vec<u8>>,
    /// Flood-control tokens left, so the pace goes on where it was.
    pub flood_tokens: f64,
    /// The limits key the connection's session counts under (its permit's key), so
    /// the resumed connection holds its slot there; `None` when the parking node had
    /// no limiter (or from a Ferry before this field: the key is then worked out
    /// again from the network's address and name).
    #[serde(default)]
    pub limits_key: Option<String>,
    /// The source address the limiter chose for the connection (`None`: not bound).
    /// Meaningful with [`UpstreamPark::limits_key`].
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// The socket was switched to kernel TLS at the park (it was TLS): the kernel
    /// holds the session's keys, and the socket is read and written through
    /// `crate::ktls::Stream`. `unread` then ends with the plaintext rustls had
    /// decrypted and not yet given out.
    #[serde(default)]
    pub ktls: bool,
}

/// The current version of [`UpstreamPark`]; a resume refuses any other.
pub const PARK_VERSION: u32 = 1;

/// Why a connection was not parked. It keeps running in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotParked {
    /// TLS (or another transport whose state lives in this process): it must be
    /// re-established after the handoff.
    #[error("must reconnect: {0}")]
    MustReconnect(String),
    /// Not registered (dialling, registering, waiting to reconnect, quitting):
    /// nothing to carry; a new connection is made after the handoff.
    #[error("not registered: must reconnect")]
    NotRegistered,
    /// The task is gone.
    #[error("the upstream task has ended")]
    Gone,
}

/// Why parked parts could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("parked state version {0} is not {PARK_VERSION}")]
    Version(u32),
    #[error("parked socket: {0}")]
    Socket(#[from] std::io::Error),
}

pub(super) fn encode_lines(lines: VecDeque<Message>) -> Vec<Vec<u8>> {
    lines.into_iter().map(|m| m.to_bytes().to_vec()).collect()
}

/// Lines carried as bytes back into messages (a line that no longer parses is
/// dropped: it was one of ours, so this does not happen).
pub(super) fn decode_lines(lines: Vec<Vec<u8>>) -> VecDeque<Message> {
    lines
        .into_iter()
        .filter_map(|l| Message::parse(Bytes::from(l)).ok())
        .collect()
}

pub(super) fn unread(state: &UpstreamPark) -> BytesMut {
    BytesMut::from(&state.unread[..])
}
