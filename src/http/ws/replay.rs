//! Resuming: what the client missed, from the store, while live lines wait, by the
//! resume protocol of `user::resume` (flush, replay `(last_id, last_seq]`, hold live
//! lines, drop duplicates). What is the websocket's own: the position is the client's
//! `last_id`, every network at once, messages as JSON events, and lines of a channel
//! the user detached left out, as they are live (see `user/actor/detach.rs`).

use std::collections::HashSet;

use futures::StreamExt;

use super::attach::Live;
use super::ending::{store_failed, Ending, POLICY};
use super::event::{self, ServerEvent};
use super::out;
use super::session::Session;
use crate::irc::Casemapping;
use crate::store::{HistoryQuery, NetworkId, Seq};
use crate::user::resume::{self, Backlog, Held, Interrupted, Window};
use crate::user::Outbound;

/// A network as the replay needs it: id, name, own nick, casemapping and the
/// (folded) channels detached.
type ReplayNet = (NetworkId, String, Vec<u8>, Casemapping, HashSet<Vec<u8>>);

impl Session {
    /// Sends stored messages with id in `(after, upto]`, oldest first, holding live
    /// lines back in `pending` meanwhile. Returns how many were sent.
    pub(super) async fn replay(
        &mut self,
        after: Seq,
        upto: Seq,
        live: &mut Live,
        pending: &mut Held<(usize, Outbound)>,
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
            let base = HistoryQuery {
                user,
                ..HistoryQuery::default()
            };
            let backlog = Backlog::flushed(&services.store, &services.writer, base)
                .await
                .map_err(|e| store_failed(&e))?;
            let mut pages = backlog.pages(Window::After(after), upto);
            let mut sent = 0u64;
            while let Some(rows) = pages.next().await.map_err(|e| store_failed(&e))? {
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
            }
            Ok::<u64, Ending>(sent)
        };
        // A network's attach channel closing (`None`) ends the session at once.
        let lines = live.by_ref().map(|(i, o)| o.map(|o| (i, o)).ok_or(()));
        match resume::hold(backlog, lines, pending).await {
            Ok(sent) => Ok(sent),
            Err(Interrupted::Backlog(e)) => Err(e),
            Err(Interrupted::TooSlow) => Err(Ending::Kill(
                POLICY,
                "too slow to receive the backlog".into(),
            )),
            Err(Interrupted::Live(())) => Err(self.channel_ended().await),
        }
    }
}
