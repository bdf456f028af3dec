//! How a websocket session ends: the client left, a close after the queued events
//! (`moved`, shutdown), a kill (too slow), or a drop on request; and what the outside
//! can ask of a session ([`Control`]).

use std::time::Duration;

use tracing::warn;

use super::event::ServerEvent;
use super::owner;
use super::session::Session;
use crate::services::Control;

/// Close status codes (RFC 6455 §7.4.1 and the IANA registry).
pub(super) const GOING_AWAY: u16 = 1001;
pub(super) const POLICY: u16 = 1008;
pub(super) const TRY_AGAIN: u16 = 1013;
pub(super) const RESTART: u16 = 1012;

/// The close reason of a session whose node is being upgraded in place (with
/// [`RESTART`]): the client reconnects at once to the same address and resumes.
pub(super) const RESTARTING: &str = "Ferry is restarting; reconnect to continue";

/// How long a session closed by a stopping actor waits for a handover to finish, so
/// its client gets `moved` rather than a retry against this node.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// How a session ends.
pub(super) enum Ending {
    /// The client closed or the connection broke.
    ClientGone,
    /// Close after the queued events (e.g. `moved`) are sent.
    Close(u16, String),
    /// Close at once, dropping queued events (the client is too slow).
    Kill(u16, String),
    /// Drop the connection without a close frame (test hook).
    Drop,
}

impl Session {
    pub(super) async fn control(&mut self, c: Control) -> Result<(), Ending> {
        match c {
            Control::Drop => Err(Ending::Drop),
            Control::Moved(url) => {
                self.push(&ServerEvent::Moved { url })?;
                Err(Ending::Close(RESTART, "your session moved".into()))
            }
            Control::End(reason) => Err(Ending::Close(POLICY, reason)),
            Control::Read {
                network,
                buffer,
                id,
            } => self.push(&ServerEvent::Read {
                network,
                buffer,
                id,
            }),
        }
    }

    /// Sends `moved` when the session runs on another node, else closes with `reason`
    /// (the client reconnects with backoff).
    pub(super) async fn moved_or_close(&mut self, reason: &str) -> Ending {
        let mut url = owner::owner_ws_url(&self.services, self.user.id).await;
        // A migration is releasing the user here: the actor stopped (closing us)
        // before the ownership moved. Wait for the move (bounded by the hold) so the
        // client gets `moved` rather than a retry against this node.
        let until = tokio::time::Instant::now() + HANDOVER_WAIT;
        while url.is_none()
            && self.services.users.is_held(self.user.id)
            && !self.services.shutdown.is_cancelled()
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            url = owner::owner_ws_url(&self.services, self.user.id).await;
        }
        match url {
            Some(url) => match self.push(&ServerEvent::Moved { url }) {
                Ok(()) => Ending::Close(RESTART, "your session moved".into()),
                Err(e) => e,
            },
            None => {
                let _ = self.push(&ServerEvent::error(None, "unavailable", reason));
                Ending::Close(TRY_AGAIN, reason.to_owned())
            }
        }
    }

    /// A network's attach channel closed without a `Close`: the actor dropped us as
    /// too slow, or it is gone.
    pub(super) async fn channel_ended(&mut self) -> Ending {
        if self.services.users.get(self.user.id).is_some() {
            Ending::Kill(
                POLICY,
                "too slow: the client did not keep up with live messages".into(),
            )
        } else {
            self.moved_or_close("your session ended").await
        }
    }
}

/// The node stops this session to hand itself over to a new process (an in-place
/// upgrade, `server::upgrade`): the queued events go out, then a close with
/// [`RESTART`] and [`RESTARTING`]. The client reconnects to the same address at once
/// — the listening socket stays open across the handoff, so the connection waits in
/// the kernel until the new process accepts it — and resumes from its last id: no
/// gap, no duplicate.
pub(super) fn restarting() -> Ending {
    Ending::Close(RESTART, RESTARTING.into())
}

pub(super) fn store_failed(e: &dyn std::fmt::Display) -> Ending {
    warn!(error = %e, "websocket: store failed");
    Ending::Close(
        TRY_AGAIN,
        "could not read the backlog, try again later".into(),
    )
}
