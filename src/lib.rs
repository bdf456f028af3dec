//! Ferry: an IRC cloud bouncer whose sessions can move between machines.
//!
//! The parts, and how data flows through them (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//!                  limits (node-wide: a session slot and a connect token per network + source IP)
//!                    │ Permit, before every dial
//!                    ▼
//! IRC network ──► upstream (one task per user+network: dial, register, read/write lines)
//!                    │ UpstreamEvent
//!                    ▼
//!                  user (one actor task per user: owns live state, assigns message ids)
//!                    │ NewMessage           │ Outbound lines
//!                    ▼                      ▼
//!                  store::Writer         downstream (one task per attached client)
//!                  (group commit)
//!                    ▼
//!                  store (SQLite | PostgreSQL)
//! ```
//!
//! `cluster` keeps the node's lease and decides which users it runs: every write a
//! user actor makes carries its ownership epoch and is refused once another node
//! owns the user. `migrate` moves users between nodes (release on the source,
//! adopt on the target, through the target's limiter); `http` serves the API, the
//! websocket and the embedded web client; `cli` is the `ferry` command; `admin`
//! and `auth` are shared by both front doors; `node` starts and wires it all.
//! `lineio` reads and writes IRC lines on the upstream and downstream sockets
//! without keeping buffers while a connection is idle.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod http;
pub mod irc;
pub mod lease;
pub mod limits;
pub mod lineio;
pub mod migrate;
pub mod server;
pub mod services;
pub mod store;
pub mod upstream;
pub mod user;
