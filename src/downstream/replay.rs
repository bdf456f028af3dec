//! Replaying the backlog a client missed, from its saved position (or the
//! last [`FIRST_TIME`] messages for a new client) up to the id current at
//! attach. Live lines arriving meanwhile are held back and sent after.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::adapt;
use super::conn::Session;
use super::io::Writer;
use crate::store::{HistoryQuery, Seq};
use crate::user::Outbound;

/// How much backlog a client that never connected before gets.
pub const FIRST_TIME: i64 = 500;
/// Store page size.
const PAGE: i64 = 1000;
/// Live lines held back during a replay before the client counts as too slow.
const MAX_PENDING: usize = 100_000;

/// Sends the backlog up to `last_seq`; returns the live lines that arrived
/// meanwhile and the client's saved position, or the reason to close.
pub async fn replay(
    s: &Session,
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Outbound>,
    last_seq: Seq,
) -> Result<(VecDeque<Outbound>, Option<Seq>), String> {
    let mut pending = VecDeque::new();
    let mut open = true;
    let position;
    let backlog = send_backlog(s, w, last_seq);
    tokio::pin!(backlog);
    loop {
        tokio::select! {
            r = &mut backlog => { position = r?; break; }
            o = rx.recv(), if open => match o {
                Some(o) => {
                    pending.push_back(o);
                    if pending.len() > MAX_PENDING {
                        return Err("too slow to receive the backlog".into());
                    }
                }
                None => open = false,
            },
        }
    }
    Ok((pending, position))
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
    s.services.writer.flush().await.map_err(|e| store_err(&e))?;
    let position = s
        .services
        .store
        .client_position(s.network, &s.client_name)
        .await
        .map_err(|e| store_err(&e))?;
    let query = |after: Option<Seq>, limit: i64, newest_first: bool| HistoryQuery {
        user: s.user_id,
        network: Some(s.network),
        buffer_key: None,
        before: Some(last_seq + 1),
        after,
        from: None,
        to: None,
        limit,
        newest_first,
    };
    let client = s.client();
    match position {
        None => {
            let mut rows = s
                .services
                .store
                .history(&query(None, FIRST_TIME, true))
                .await
                .map_err(|e| store_err(&e))?;
            rows.reverse();
            for m in rows
                .iter()
                .filter(|m| !detached(s, m))
                .filter_map(|m| adapt::from_store(m, &client))
            {
                w.feed(&m).await.map_err(|e| e.to_string())?;
            }
        }
        Some(mut after) => loop {
            if after >= last_seq {
                break;
            }
            let rows = s
                .services
                .store
                .history(&query(Some(after), PAGE, false))
                .await
                .map_err(|e| store_err(&e))?;
            for m in rows
                .iter()
                .filter(|m| !detached(s, m))
                .filter_map(|m| adapt::from_store(m, &client))
            {
                w.feed(&m).await.map_err(|e| e.to_string())?;
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => after = last.seq,
                _ => break,
            }
        },
    }
    w.flush().await.map_err(|e| e.to_string())?;
    Ok(position)
}
