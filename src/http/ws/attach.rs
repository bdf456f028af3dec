//! Attaching a websocket session to every network of its user, like an IRC client
//! with client name `web`: one attach channel per network, merged into one stream.

use futures::stream::{self, BoxStream, SelectAll};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::ending::{store_failed, Ending};
use super::event::{NetCtx, NetworkInfo};
use super::session::Session;
use crate::irc::{self, ISupport};
use crate::store::{NetworkId, Seq};
use crate::user::{Attach, ConnState, DownstreamId, NetworkView, Outbound, UserError, UserHandle};

/// Lines the actor may queue for this session before it drops it as too slow.
const LIVE_QUEUE: usize = 4096;

/// One attached network, as this session follows it.
pub(super) struct Net {
    pub(super) id: NetworkId,
    pub(super) name: String,
    pub(super) nick: Vec<u8>,
    pub(super) isupport: ISupport,
    pub(super) downstream: DownstreamId,
    pub(super) view: NetworkView,
}

impl Net {
    pub(super) fn ctx(&self) -> NetCtx<'_> {
        NetCtx {
            name: &self.name,
            nick: &self.nick,
            isupport: &self.isupport,
        }
    }

    pub(super) fn info(&self) -> NetworkInfo {
        NetworkInfo {
            id: self.id,
            name: self.name.clone(),
            nick: irc::decode(&self.nick).into_owned(),
            state: self.view.state.clone(),
            prefix: self
                .isupport
                .prefix
                .iter()
                .map(|(m, s)| ((*m as char).to_string(), (*s as char).to_string()))
                .collect(),
            chantypes: irc::decode(&self.isupport.chantypes).into_owned(),
            motd: self
                .view
                .motd
                .as_deref()
                .filter(|_| matches!(self.view.state, ConnState::Connected))
                .map(|lines| lines.iter().map(|l| irc::decode(l).into_owned()).collect()),
        }
    }
}

/// The live lines of every attached network, each tagged with its index in
/// `Session::nets`; `None` when that network's channel closed.
pub(super) type Live = SelectAll<BoxStream<'static, (usize, Option<Outbound>)>>;

impl Session {
    /// Attaches to every network of the user; returns the merged live lines and the
    /// newest message id.
    pub(super) async fn attach_all(&mut self, handle: &UserHandle) -> Result<(Live, Seq), Ending> {
        let networks = self
            .services
            .store
            .networks(self.user.id)
            .await
            .map_err(|e| store_failed(&e))?;
        let mut live: Live = SelectAll::new();
        let mut last_seq = 0;
        for n in networks {
            let (tx, rx) = mpsc::channel(LIVE_QUEUE);
            let attached = match handle
                .attach(Attach {
                    network: n.id,
                    client_name: "web".to_owned(),
                    tx,
                    follows_moves: false,
                    members: true,
                })
                .await
            {
                Ok(a) => a,
                Err(UserError::NoSuchNetwork) => continue,
                Err(UserError::Gone) => {
                    return Err(self.moved_or_close("your session ended").await)
                }
            };
            last_seq = last_seq.max(attached.last_seq);
            let idx = self.nets.len();
            let view = attached.view;
            self.nets.push(Net {
                id: n.id,
                name: view.network_name.clone(),
                nick: view.nick.clone(),
                isupport: view.isupport.clone(),
                downstream: attached.id,
                view,
            });
            live.push(lines(idx, rx));
        }
        Ok((live, last_seq))
    }
}

/// The lines of one network's attach channel, tagged with its index, ending with
/// `None` when the channel closes.
fn lines(
    idx: usize,
    rx: mpsc::Receiver<Outbound>,
) -> BoxStream<'static, (usize, Option<Outbound>)> {
    stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(o) => Some(((idx, Some(o)), Some(rx))),
            None => Some(((idx, None), None)),
        }
    })
    .boxed()
}
