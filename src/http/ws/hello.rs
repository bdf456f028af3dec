//! The `hello` snapshot a session starts with: the user, every attached network and
//! every buffer with its counts and live channel state.

use super::attach::Net;
use super::ending::{store_failed, Ending};
use super::event::{self, BufferInfo, ServerEvent};
use super::session::Session;
use super::MAX_FRAME;
use crate::irc;
use crate::store::{BufferKind, Seq};

impl Session {
    pub(super) async fn hello(&mut self, last_seq: Seq) -> Result<(), Ending> {
        // Counts and buffers as of `last_seq`: lines written before it are stored.
        self.services
            .writer
            .flush()
            .await
            .map_err(|e| store_failed(&e))?;
        let mut buffers = Vec::new();
        for n in &self.nets {
            buffers.extend(self.buffers_of(n).await.map_err(|e| store_failed(&e))?);
        }
        let hello = ServerEvent::Hello {
            user: self.user.name.clone(),
            last_id: last_seq,
            networks: self.nets.iter().map(Net::info).collect(),
            buffers,
            max_frame: MAX_FRAME,
        };
        self.send(&hello).await
    }

    /// The buffers of a network: the stored ones with their counts, live channel
    /// state from the attach view.
    async fn buffers_of(&self, n: &Net) -> Result<Vec<BufferInfo>, crate::store::StoreError> {
        let store = &self.services.store;
        let nick = irc::decode(&n.nick).into_owned();
        let counts = store.unread_counts(self.user.id, n.id, &nick).await?;
        let cm = n.isupport.casemapping;
        let mut out: Vec<BufferInfo> = Vec::new();
        let stored = store.buffers(n.id).await?;
        for b in &stored {
            let live = n.view.channels.iter().find(|c| cm.fold(&c.name) == b.key);
            let c = counts.iter().find(|c| c.key == b.key);
            out.push(BufferInfo {
                network: n.name.clone(),
                name: irc::decode(&b.name).into_owned(),
                kind: match b.kind {
                    BufferKind::Channel => "channel",
                    BufferKind::Query => "query",
                },
                joined: live.is_some(),
                topic: live.and_then(|l| l.topic.as_deref().map(|t| irc::decode(t).into_owned())),
                members: live.map(|l| event::members(&l.members)).unwrap_or_default(),
                unread: c.map_or(0, |c| c.chat),
                highlights: c.map_or(0, |c| c.highlights),
                read_marker: b.read_marker,
                detached: live.map_or(b.detached, |l| l.detached),
                reattach_on: b.reattach_on,
            });
        }
        for l in &n.view.channels {
            if !stored.iter().any(|b| b.key == cm.fold(&l.name)) {
                out.push(BufferInfo {
                    network: n.name.clone(),
                    name: irc::decode(&l.name).into_owned(),
                    kind: "channel",
                    joined: true,
                    topic: l.topic.as_deref().map(|t| irc::decode(t).into_owned()),
                    members: event::members(&l.members),
                    unread: 0,
                    highlights: 0,
                    read_marker: 0,
                    detached: l.detached,
                    reattach_on: crate::store::ReattachOn::default(),
                });
            }
        }
        Ok(out)
    }
}
