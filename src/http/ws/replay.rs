//! Resuming: what the client missed, from the store, while live lines wait.
//!
//! The session flushes the writer (so everything relayed so far is stored), then sends
//! stored messages with id in `(last_id, last_seq]` page by page, oldest first, and
//! holds the live lines that arrive meanwhile in `pending`; they are sent after the
//! replay, dropping ids not above the last one sent. Lines of a channel the user
//! detached are left out, as they are live (see `user/actor/detach.rs`).

use std::collections::{HashSet, VecDeque};

use futures::StreamExt;

use super::attach::Live;
use super::ending::{store_failed, Ending, POLICY};
use super::event::{self, ServerEvent};
use super::out;
use super::session::Session;
use crate::irc::Casemapping;
use crate::store::{HistoryQuery, NetworkId, Seq};
use crate::user::Outbound;

/// A network as the replay needs it: id, name, own nick, casemapping and the
/// (folded) channels detached.
type ReplayNet = (NetworkId, String, Vec<u8>, Casemapping, HashSet<Vec<u8>>);

/// Live lines held back during a replay before the client counts as too slow.
const MAX_PENDING: usize = 100_000;
/// Backlog page size for replay.
const PAGE: i64 = 1000;

impl Session {
    /// Sends stored messages with id in `(after, upto]`, oldest first, holding live
    /// lines back in `pending` meanwhile. Returns how many were sent.
    pub(super) async fn replay(
        &mut self,
        after: Seq,
        upto: Seq,
        live: &mut Live,
        pending: &mut VecDeque<(usize, Outbound)>,
    ) -> Result<u64, Ending> {
        let mut nets: Vec<ReplayNet> = Vec::with_capacity(self.nets.len());
        for n in &self.nets {
            let cm = n.isupport.casemapping;
            // The live view where the channel is in it, the stored flag otherwise
            // (as in `hello`).
            let mut detached: HashSet<Vec<u8>> = n
                .view
                .channels
                .iter()
                .filter(|c| c.detached)
                .map(|c| cm.fold(&c.name))
                .collect();
            let stored = self
                .services
                .store
                .buffers(n.id)
                .await
                .map_err(|e| store_failed(&e))?;
            detached.extend(
                stored
                    .into_iter()
                    .filter(|b| {
                        b.detached && !n.view.channels.iter().any(|c| cm.fold(&c.name) == b.key)
                    })
                    .map(|b| b.key),
            );
            nets.push((n.id, n.name.clone(), n.nick.clone(), cm, detached));
        }
        let services = self.services.clone();
        let user = self.user.id;
        let tx = self.out.sender();
        let backlog = async move {
            services
                .writer
                .flush()
                .await
                .map_err(|e| store_failed(&e))?;
            let mut after = after;
            let mut sent = 0u64;
            loop {
                let rows = services
                    .store
                    .history(&HistoryQuery {
                        user,
                        after: Some(after),
                        before: Some(upto + 1),
                        limit: PAGE,
                        newest_first: false,
                        ..HistoryQuery::default()
                    })
                    .await
                    .map_err(|e| store_failed(&e))?;
                for m in &rows {
                    // Messages of a network removed meanwhile are skipped.
                    let Some((_, name, nick, cm, detached)) =
                        nets.iter().find(|n| n.0 == m.network_id)
                    else {
                        continue;
                    };
                    // A detached channel's lines are not sent (the web client reads
                    // them from history when it is attached again).
                    if !detached.is_empty() && detached.contains(&cm.fold(&m.buffer)) {
                        continue;
                    }
                    let ev = ServerEvent::Message(event::from_stored(m, name, nick, *cm));
                    tx.send(out::json(&ev))
                        .await
                        .map_err(|_| Ending::ClientGone)?;
                    sent += 1;
                }
                match rows.last() {
                    Some(last) if rows.len() as i64 == PAGE => after = last.seq,
                    _ => break,
                }
            }
            Ok::<u64, Ending>(sent)
        };
        tokio::pin!(backlog);
        loop {
            tokio::select! {
                r = &mut backlog => return r,
                Some((i, o)) = live.next(), if !live.is_empty() => match o {
                    Some(o) => {
                        pending.push_back((i, o));
                        if pending.len() > MAX_PENDING {
                            return Err(Ending::Kill(POLICY, "too slow to receive the backlog".into()));
                        }
                    }
                    None => return Err(self.channel_ended().await),
                },
            }
        }
    }
}
