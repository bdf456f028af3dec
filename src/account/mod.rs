//! A user's own account: what a person may change themselves — their networks
//! (add, edit, connect or disconnect, remove), their channels (join, part) and their
//! password — with one validation and one set of errors whichever door they use (the
//! user API, `http/account.rs`; IRC's `BouncerServ`, `downstream/bouncerserv`, and
//! `soju.im/bouncer-networks`, `downstream/bouncer`) — and announces every network
//! change to the user's IRC clients (`user::Notice`). Invalid input names the
//! field plainly (`addr: …`) for each door to show or reword.
//!
//! Every operation runs on the node that runs the user (a door on another node passes
//! the call on first) and changes the store and the running actor together, as the
//! admin API does: a new network connects at once, an edited one reconnects with its
//! new settings, a removed one quits. Connections are dialled by the actor's upstream
//! tasks, so every new connect waits for the limiter like any other. A user nobody
//! runs is changed in the store only; whoever starts it loads it from there.
//!
//! The operator bounds it (`[accounts]`, [`AccountSettings`]): networks per user and
//! the servers users may add. Admin changes (`http/admin.rs`, the CLI) are not bound.

mod away;
mod channel;
mod network;
mod password;
mod spec;

pub use away::{away_settings, update_away, AwayChange, AwayView};
pub use channel::{join_channel, part_channel, update_channel, ChannelChange, ChannelUpdate};
pub use network::{add_network, announce, remove_network, update_network};
pub use password::change_password;
pub use spec::{ChannelSpec, NetworkChange, NewNetworkSpec, SaslPlain};

use crate::admin::{AdminError, SpecError};
use crate::auth::Refused;
use crate::store::StoreError;
use crate::user::DownstreamId;

/// The client id of lines the account operations send through the actor (JOIN, PART,
/// NICK): no attached client has it (the actor numbers clients from 1), so replies
/// nobody asked for go to every client as usual.
const ACCOUNT_CLIENT: DownstreamId = 0;

/// Why an account operation was refused. Each kind has a stable [`code`](Self::code)
/// that every door shows (the HTTP API as `error.code`).
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input is not valid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The server is not on the operator's allow list.
    #[error("{0}")]
    ServerNotAllowed(String),
    /// The user has as many networks as the operator allows.
    #[error("{0}")]
    TooManyNetworks(String),
    /// No such network (or channel) for this user.
    #[error("{0}")]
    NotFound(String),
    /// A network with this name exists.
    #[error("{0}")]
    Exists(String),
    /// The current password given to change it is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Too many failed password checks, or the hashing pool is full.
    #[error(transparent)]
    Refused(Refused),
    /// The user's session ended while it was being changed; try again.
    #[error("the session is restarting; try again")]
    Unavailable,
    #[error(transparent)]
    Store(StoreError),
}

impl AccountError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Invalid(_) => "bad_request",
            AccountError::ServerNotAllowed(_) => "server_not_allowed",
            AccountError::TooManyNetworks(_) => "too_many_networks",
            AccountError::NotFound(_) => "not_found",
            AccountError::Exists(_) => "conflict",
            AccountError::WrongPassword => "invalid_credentials",
            AccountError::Refused(Refused::Throttled { .. }) => "rate_limited",
            AccountError::Refused(Refused::Busy) | AccountError::Unavailable => "unavailable",
            AccountError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> AccountError {
        match e {
            StoreError::Conflict(what) => AccountError::Exists(format!("{what} already exists")),
            StoreError::NotFound(what) => AccountError::NotFound(format!("no {what}")),
            other => AccountError::Store(other),
        }
    }
}

impl From<AdminError> for AccountError {
    fn from(e: AdminError) -> AccountError {
        match e {
            AdminError::Invalid(msg) => AccountError::Invalid(msg),
            AdminError::Store(e) => e.into(),
            AdminError::Busy(_) => AccountError::Refused(Refused::Busy),
        }
    }
}

impl From<SpecError> for AccountError {
    /// The field named as the user doors name it (`addr: …`), not as a CLI flag.
    fn from(e: SpecError) -> AccountError {
        AccountError::Invalid(e.neutral())
    }
}

impl From<crate::user::UserError> for AccountError {
    fn from(_: crate::user::UserError) -> AccountError {
        AccountError::Unavailable
    }
}

fn bytes(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fn invalid(msg: impl Into<String>) -> AccountError {
    AccountError::Invalid(msg.into())
}
