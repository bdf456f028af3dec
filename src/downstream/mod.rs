//! Downstream: an IRC client attached to a user through Ferry's listener.
//!
//! One task per connection, in stages:
//! `listener` (accept, TLS) → `login` (CAP, PASS/SASL, NICK/USER; its
//! decisions are the I/O-free state machine in `registration`) →
//! attach to the user actor → `burst` (welcome, channels) → `replay`
//! (missed backlog, unless the client uses `chathistory`) → `conn` (the
//! attached loop: relays from the actor adapted per client by `adapt`,
//! client commands to the actor, `chathistory` served from the store,
//! `webpush` for `soju.im/webpush`: `VAPID` in ISUPPORT, `WEBPUSH REGISTER`;
//! `bouncerserv` answers lines to the `BouncerServ` service user, which never
//! reach the actor or the network).
//!
//! Invariant: a downstream never blocks the user actor. The actor pushes into
//! a bounded channel and drops clients that let it fill up; the connection
//! task only ever awaits its own socket, the store and that channel.

mod adapt;
mod bouncer;
mod bouncerserv;
mod burst;
mod caps;
mod chathistory;
mod conn;
mod error;
mod io;
mod listener;
mod login;
mod markread;
mod park;
mod proxy;
pub mod registration;
mod replay;
mod unbound;
mod webpush;

pub use error::ProtoError;
pub use listener::{serve, serve_until, tls_acceptor};
pub use park::resume_user;

#[cfg(test)]
mod tests;
