//! Ferry: an IRC cloud bouncer whose sessions can move between machines.
//!
//! The parts, and how data flows through them (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//!                  limits (node-wide: a session slot and a connect token per network + source IP)
//!                    │ Permit, before every dial
//!                    ▼
//!                  upstream (one task per user+network: dial, register, back off;
//!                    │ hands the registered connection over as a LiveLink)
//!                    │ UpstreamEvent (Linked, Registered, Disconnected, …)
//!                    ▼
//! IRC network ◄──► user (one actor task per user: reads and writes its LiveLinks itself,
//!                       owns live state, assigns message ids)
//!                    │ NewMessage           │ Outbound lines and typed state changes
//!                    ▼                      ▼
//!                  store::Writer         downstream (one task per attached IRC client),
//!                  (group commit)        http::ws (one per websocket)
//!                    ▼
//!                  store (SQLite | PostgreSQL)
//! ```
//!
//! Modules are layered, bottom first; each imports only from modules listed before it
//! (no cycle):
//!
//! - `irc` (protocol, no I/O), `lease`, `auth`, `secrets` (the secret key, sealed
//!   values, admin tokens), `ident` (the RFC 1413 responder and its table of
//!   upstream sockets), `ktls` (switching a TLS session to kernel TLS, so an
//!   upgrade can hand it on), `upgrade` (the in-place upgrade's messages and socket);
//!   then `store`, `lineio` and `push`
//!   (Web Push: VAPID, encryption, what to push, the delivery worker);
//! - `cluster` (lease, fd budget, health, placement) and `limits` (the limiter);
//! - `upstream` (one connection to a network), `config` (settings, as data);
//! - `user` (the actor, and `user::Users`: this node's registry of actors);
//! - `services` (what the parts of a node share, passed to the layers below the
//!   server instead of a central node);
//! - `downstream`, `migrate`, `admin` (shared by `http` and `cli`), `account` (what
//!   users change themselves, whichever door), `invite` (sign-up links); then `http`;
//! - at the top: `server` (starts a node, runs its loops) and `cli` (the `ferry` command).

// Protocol and primitives.
pub mod irc;
pub use irc::{Casemapping, ISupport, Message};
pub mod lease;
pub use lease::{Lease, LeaseState};
pub mod auth;
pub mod secrets;
pub use secrets::SecretKey;
pub mod lineio;
pub use lineio::{LineReader, LineWriter};
pub mod ident;
pub mod ktls;
pub mod push;
pub mod upgrade;
pub use push::{Pusher, VapidKey};

// Storage.
pub mod store;
pub use store::{Store, StoreError, Writer};

// A node among nodes, and its limiter.
pub mod cluster;
pub use cluster::{ClusterConfig, FdBudget, Owner};
pub mod limits;
pub use limits::{Limiter, Permit};

// One connection to an IRC network; settings.
pub mod upstream;
pub use upstream::{LiveLink, UpstreamCommand, UpstreamConfig, UpstreamEvent};
pub mod config;
pub use config::{FileConfig, NodeConfig};

// The per-user actor and this node's registry of them.
pub mod user;
pub use user::{UserConfig, UserHandle, Users};

// What the parts of a node share.
pub mod services;
pub use services::{Services, Sockets};

// Clients, migration between nodes, admin operations, HTTP.
pub mod downstream;
pub use downstream::ProtoError;
pub mod migrate;
pub use migrate::{AdminClient, MigrationState, MoveState};
pub mod admin;
pub use admin::{AdminError, NetworkSpec};
pub mod account;
pub use account::AccountError;
pub mod invite;
pub use invite::InviteError;
pub mod http;
pub mod markers;
pub use http::ApiError;

// The top: a running node, and the command line.
pub mod server;
pub use server::Server;
pub mod cli;
pub use cli::Cli;
