//! Replaying the backlog a client missed, from its saved position (or the
//! last [`FIRST_TIME`] messages for a new client) up to the id current at
//! attach, by the resume protocol of `user::resume` (flush, replay, hold live
//! lines, drop duplicates). What is IRC's own: the position is the client's
//! saved one, lines are adapted to its caps, detached channels are left out.

use futures::stream;
use tokio::sync::mpsc;

use super::adapt;
use super::conn::Session;
use super::io::Writer;
use crate::store::{HistoryQuery, Seq};
use crate::user::resume::{self, Backlog, Held, Interrupted, Window};
use crate::user::Outbound;

/// How much backlog a client that never connected before gets.
pub const FIRST_TIME: i64 = 500;

/// Sends the backlog up to `last_seq`; returns the live lines that arrived
/// meanwhile and the client's saved position, or the reason to close.
pub async fn replay(
    s: &Session,
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Outbound>,
    last_seq: Seq,
) -> Result<(Held<Outbound>, Option<Seq>), String> {
    let mut held = Held::new();
    // The actor's channel closing is noticed after the replay, by the attached loop.
    let live = stream::poll_fn(|cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, ()>)));
    match resume::hold(send_backlog(s, w, last_seq), live, &mut held).await {
        Ok(position) => Ok((held, position)),
        Err(Interrupted::Backlog(e)) => Err(e),
        Err(Interrupted::TooSlow) => Err("too slow to receive the backlog".into()),
        Err(Interrupted::Live(())) => unreachable!("the attach channel yields no error"),
    }
}

/// Whether a stored line belongs to a channel the user detached (not replayed).
fn detached(s: &Session, m: &crate::store::StoredMessage) -> bool {
    !s.detached.is_empty() && s.detached.contains(&s.isupport.casemapping.fold(&m.buffer))
}

async fn send_backlog(s: &Session, w: &mut Writer, last_seq: Seq) -> Result<Option<Seq>, String> {
    let store_err = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, user = %s.user.name, network = s.network, "backlog replay failed");
        "could not read the backlog, try again later".to_owned()
    };
    let base = HistoryQuery {
        user: s.user_id,
        network: Some(s.network),
        ..HistoryQuery::default()
    };
    let backlog = Backlog::flushed(&s.services.store, &s.services.writer, base)
        .await
        .map_err(|e| store_err(&e))?;
    let position = backlog
        .store()
        .client_position(s.network, &s.client_name)
        .await
        .map_err(|e| store_err(&e))?;
    let window = position.map_or(Window::Newest(FIRST_TIME), Window::After);
    let mut pages = backlog.pages(window, last_seq);
    let client = s.client();
    while let Some(rows) = pages.next().await.map_err(|e| store_err(&e))? {
        for m in rows
            .iter()
            .filter(|m| !detached(s, m))
            .filter_map(|m| adapt::from_store(m, &client))
        {
            w.feed(&m).await.map_err(|e| e.to_string())?;
        }
    }
    w.flush().await.map_err(|e| e.to_string())?;
    Ok(position)
}
