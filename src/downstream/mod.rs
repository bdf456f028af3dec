//! Downstream: an IRC client attached to a user through Ferry's listener.
//!
//! One task per connection, in stages:
//! `listener` (accept, TLS) → `login` (CAP, PASS/SASL, NICK/USER; its
//! decisions are the I/O-free state machine in `registration`) →
//! attach to the user actor → `burst` (welcome, channels) → `replay`
//! (missed backlog, unless the client uses `chathistory`) → `conn` (the
//! attached loop: relays from the actor adapted per client by `adapt`,
//! client commands to the actor, `chathistory` served from the store).
//!
//! Invariant: a downstream never blocks the user actor. The actor pushes into
//! a bounded channel and drops clients that let it fill up; the connection
//! task only ever awaits its own socket, the store and that channel.

mod adapt;
mod burst;
mod caps;
mod chathistory;
mod conn;
mod error;
mod io;
mod listener;
mod login;
mod proxy;
pub mod registration;
mod replay;

use std::time::Duration;

pub use error::ProtoError;
pub use listener::{serve, tls_acceptor};

/// Settings of the IRC listener.
#[derive(Clone, Debug)]
pub struct DownstreamConfig {
    /// Our server name, the prefix of every line Ferry itself sends (`ferry`).
    pub server_name: String,
    /// How long to wait before answering a failed login: slows down guessing.
    pub login_failure_delay: Duration,
    /// Capacity of the channel from the user actor to one client.
    pub outbound_queue: usize,
    /// A connection that has not logged in by then is closed.
    pub registration_timeout: Duration,
    /// A write to the client socket that takes longer closes the connection.
    pub write_timeout: Duration,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            server_name: "ferry".into(),
            login_failure_delay: Duration::from_secs(2),
            outbound_queue: 1024,
            registration_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests;
