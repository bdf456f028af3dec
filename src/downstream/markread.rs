//! `draft/read-marker`: a client's `MARKREAD`, the marker lines sent with a JOIN, and
//! moving a marker (never backwards).

use super::bouncerserv;
use super::conn::Session;
use super::error::ProtoError;
use crate::irc::Message;

impl Session {
    /// The `MARKREAD` line of `target` as its marker stands (none when the store fails).
    pub(super) async fn marker_line(&self, target: &[u8]) -> Option<Message> {
        let key = self.isupport.casemapping.fold(target);
        let buffers = self.services.store.buffers(self.network).await.ok()?;
        let marker = buffers
            .iter()
            .find(|b| b.key == key)
            .map_or(0, |b| b.read_marker);
        let time =
            crate::markers::marker_time(&self.services, self.user_id, self.network, &key, marker)
                .await
                .ok()?;
        Some(crate::markers::markread(target, time).with_prefix(self.cfg.server_name.clone()))
    }

    /// `MARKREAD <target> [timestamp=…]` (`draft/read-marker`): reads the marker, or
    /// moves it to the newest message at or before the time. A moved marker reaches
    /// every client through `markers::mark_read` (this one too); otherwise only this
    /// client is answered, with the marker as it stands.
    pub(super) async fn markread(&mut self, msg: &Message) -> Vec<Message> {
        let server = self.cfg.server_name.clone();
        let fail = |code: &'static str, context: Vec<String>, text: &str| {
            ProtoError::Fail {
                command: "MARKREAD",
                code,
                context,
                description: text.to_owned(),
            }
            .to_message(&server, &self.nick_str())
        };
        let Some(target) = msg.param(0).filter(|t| !t.is_empty()).map(<[u8]>::to_vec) else {
            return vec![fail("NEED_MORE_PARAMS", vec![], "Missing parameters")];
        };
        let shown = if crate::irc::is_word(&target) {
            String::from_utf8_lossy(&target).into_owned()
        } else {
            "*".to_owned()
        };
        if target.eq_ignore_ascii_case(bouncerserv::NICK.as_bytes()) {
            return vec![crate::markers::markread(&target, None).with_prefix(server.clone())];
        }
        let time = match msg.param_str(1) {
            None => None,
            Some(c) => match c.split_once('=') {
                Some(("timestamp", t)) => match crate::irc::time::parse(t) {
                    Some(t) => Some(t),
                    None => return vec![fail("INVALID_PARAMS", vec![shown], "Invalid timestamp")],
                },
                _ => return vec![fail("INVALID_PARAMS", vec![shown], "Unknown criteria")],
            },
        };
        if let Some(t) = time {
            // A line this client was sent may not be committed yet: wait for it.
            let _ = self.user.flush().await;
            let key = self.isupport.casemapping.fold(&target);
            let moved = self.move_marker(&key, t).await;
            match moved {
                Ok(true) => return Vec::new(),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(user = %self.user.name, error = %e, "MARKREAD: the store failed");
                    return vec![fail("INTERNAL_ERROR", vec![shown], "Internal error")];
                }
            }
        }
        match self.marker_line(&target).await {
            Some(m) => vec![m],
            None => vec![fail("INTERNAL_ERROR", vec![shown], "Internal error")],
        }
    }

    /// Moves the marker of the buffer `key` to the newest message at or before `t`;
    /// whether it moved.
    pub(super) async fn move_marker(
        &self,
        key: &[u8],
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let store = &self.services.store;
        let Some(buffer) = store
            .buffers(self.network)
            .await?
            .into_iter()
            .find(|b| b.key == key)
        else {
            return Ok(false);
        };
        let Some(seq) =
            crate::markers::seq_at(&self.services, self.user_id, self.network, key, t).await?
        else {
            return Ok(false);
        };
        if seq <= buffer.read_marker {
            return Ok(false);
        }
        let name = self.network_name.clone();
        crate::markers::mark_read(
            &self.services,
            self.user_id,
            (self.network, &name),
            &buffer,
            seq,
            None,
        )
        .await?;
        Ok(true)
    }
}
