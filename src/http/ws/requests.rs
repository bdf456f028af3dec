//! The client's commands (parsed by `command`), run against the session: send, join,
//! part, topic, nick and query go to the user actor as IRC lines; read markers and
//! history come from the store. Every command gets one answer (`ok`, a result or
//! `error`).

use serde_json::Value;
use tracing::warn;

use super::command::{self, Command};
use super::ending::Ending;
use super::event::{self, BufferInfo, ServerEvent};
use super::session::Session;
use super::MAX_FRAME;
use crate::irc::Message;
use crate::store::{HistoryQuery, ReattachOn};
use crate::user::UserHandle;

use super::attach::Net;

const HISTORY_DEFAULT: i64 = 100;
const HISTORY_MAX: i64 = 500;

impl Session {
    pub(super) async fn frame(&mut self, handle: &UserHandle, text: &str) -> Result<(), Ending> {
        if text.len() > MAX_FRAME {
            return self.push(&ServerEvent::error(
                None,
                "too_large",
                format!(
                    "a command may be at most {MAX_FRAME} bytes; this one was {}",
                    text.len()
                ),
            ));
        }
        let cmd = match command::parse(text) {
            Ok(c) => c,
            Err((re, message)) => {
                return self.push(&ServerEvent::error(re, "bad_request", message))
            }
        };
        let re = cmd.id();
        if let Command::Focus { focused, .. } = cmd {
            self.focus = match (&self.services.push, focused) {
                (Some(push), true) => Some(
                    self.focus
                        .take()
                        .unwrap_or_else(|| push.web_focused(self.user.id)),
                ),
                _ => None,
            };
            return self.send(&ServerEvent::Ok { re }).await;
        }
        let idx = match cmd.network() {
            None => None,
            Some(name) => match self.nets.iter().position(|n| n.name == name) {
                Some(i) => Some(i),
                None => {
                    return self.push(&ServerEvent::error(
                        re,
                        "not_found",
                        format!("no network {name:?}"),
                    ))
                }
            },
        };
        let reply = match self.command(handle, cmd, idx, re.clone()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => ServerEvent::Ok { re },
            Err((code, message)) => ServerEvent::Error { re, code, message },
        };
        self.send(&reply).await
    }

    /// Runs a command; `Ok(None)` is answered with `ok`.
    async fn command(
        &self,
        handle: &UserHandle,
        cmd: Command,
        idx: Option<usize>,
        re: Option<Value>,
    ) -> Result<Option<ServerEvent>, (&'static str, String)> {
        let bad = |m: String| ("bad_request", m);
        let upstream = |lines: Vec<Message>| async move {
            let n = &self.nets[idx.expect("network commands have one")];
            for m in lines {
                handle
                    .from_client(n.id, n.downstream, m)
                    .await
                    .map_err(|_| ("unavailable", "your session is not running".to_owned()))?;
            }
            Ok(None)
        };
        match cmd {
            Command::Resume { .. } => Err(bad("`resume` must be the first command".into())),
            Command::Focus { .. } => Ok(None),
            Command::Ping { .. } => Ok(Some(ServerEvent::Pong { re })),
            Command::Query { nick, network, .. } => {
                command::query_target(&nick).map_err(bad)?;
                Ok(Some(ServerEvent::Buffer(BufferInfo {
                    network,
                    name: nick,
                    kind: "query",
                    joined: false,
                    topic: None,
                    members: Vec::new(),
                    unread: 0,
                    highlights: 0,
                    read_marker: 0,
                    detached: false,
                    reattach_on: ReattachOn::default(),
                })))
            }
            Command::Read {
                network,
                buffer,
                last_id,
                ..
            } => {
                if last_id < 0 {
                    return Err(bad(format!(
                        "invalid `last_id` {last_id}: expected a message id (0 or more)"
                    )));
                }
                let n = &self.nets[idx.expect("has a network")];
                let b = self.find_buffer(n, &buffer).await?;
                crate::markers::mark_read(
                    &self.services,
                    self.user.id,
                    (n.id, &network),
                    &b,
                    last_id,
                    Some(&self.reg),
                )
                .await
                .map_err(|e| internal(&e))?;
                Ok(None)
            }
            Command::History {
                network,
                buffer,
                before,
                limit,
                ..
            } => {
                let limit = limit.unwrap_or(HISTORY_DEFAULT);
                if !(1..=HISTORY_MAX).contains(&limit) {
                    return Err(bad(format!("`limit` must be from 1 to {HISTORY_MAX}")));
                }
                let n = &self.nets[idx.expect("has a network")];
                let b = self.find_buffer(n, &buffer).await?;
                let mut rows = self
                    .services
                    .store
                    .history(&HistoryQuery {
                        user: self.user.id,
                        network: Some(n.id),
                        buffer_key: Some(b.key),
                        before,
                        limit: limit + 1,
                        newest_first: true,
                        ..HistoryQuery::default()
                    })
                    .await
                    .map_err(|e| internal(&e))?;
                let more = rows.len() as i64 > limit;
                rows.truncate(limit as usize);
                rows.reverse();
                let cm = n.isupport.casemapping;
                Ok(Some(ServerEvent::History {
                    re,
                    messages: rows
                        .iter()
                        .map(|m| event::from_stored(m, &n.name, &n.nick, cm))
                        .collect(),
                    network,
                    buffer,
                    more,
                }))
            }
            // Every other command sends IRC lines upstream.
            irc => upstream(command::irc_lines(&irc).map_err(bad)?).await,
        }
    }

    async fn find_buffer(
        &self,
        n: &Net,
        name: &str,
    ) -> Result<crate::store::Buffer, (&'static str, String)> {
        let folded = n.isupport.casemapping.fold(name.as_bytes());
        let buffers = self
            .services
            .store
            .buffers(n.id)
            .await
            .map_err(|e| internal(&e))?;
        buffers
            .into_iter()
            .find(|b| b.name == name.as_bytes() || b.key == folded)
            .ok_or_else(|| {
                (
                    "not_found",
                    format!("no buffer {name:?} on network {:?}", n.name),
                )
            })
    }
}

fn internal(e: &dyn std::fmt::Display) -> (&'static str, String) {
    warn!(error = %e, "websocket command failed");
    ("internal", "internal error; see the server log".into())
}
