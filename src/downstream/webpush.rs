//! `soju.im/webpush` for IRC clients (goguma and other soju-aware clients): the
//! VAPID public key in ISUPPORT (`VAPID=`), `WEBPUSH REGISTER <endpoint> <keys>`
//! (`keys` in message-tag form: `p256dh=…;auth=…`), `WEBPUSH UNREGISTER
//! <endpoint>` and `WEBPUSH VAPIDPUBKEY`. A subscription made here receives the
//! IRC line itself as its push (the extension's payload), not Ferry's JSON.
//!
//! Errors are standard replies: `FAIL WEBPUSH INVALID_PARAMS <subcommand> :…` for
//! bad input, `INTERNAL_ERROR` when the store fails or push is off,
//! `UNKNOWN_COMMAND` for other subcommands.

use bytes::Bytes;

use super::error::ProtoError;
use crate::irc::{numeric, Message};
use crate::push::{Format, PushHub, SubscribeError};
use crate::store::UserId;

/// The capability that turns this on.
pub const CAP: &str = "soju.im/webpush";

/// The `005` line that announces the key, for a client that enabled [`CAP`].
pub fn isupport(hub: &PushHub, server: &str, nick: &str) -> Message {
    Message::new(
        numeric::RPL_ISUPPORT,
        [
            nick.to_owned(),
            format!("VAPID={}", hub.application_server_key()),
            "are supported by this server".to_owned(),
        ],
    )
    .with_prefix(server.to_owned())
}

fn fail(code: &'static str, context: &[&str], description: impl Into<String>) -> ProtoError {
    ProtoError::Fail {
        command: "WEBPUSH",
        code,
        context: context.iter().map(|c| (*c).to_owned()).collect(),
        description: description.into(),
    }
}

/// The value of `key` in a message-tag formatted `keys` string.
fn key<'a>(keys: &'a str, key: &str) -> Option<&'a str> {
    keys.split(';').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        _ => None,
    })
}

/// Handles a `WEBPUSH` command of `user`; the lines to send back.
pub async fn handle(
    hub: Option<&PushHub>,
    user: UserId,
    msg: &Message,
    server: &str,
    nick: &str,
) -> Vec<Message> {
    let reply = |params: Vec<String>| {
        Message::new("WEBPUSH", params.into_iter().map(Bytes::from)).with_prefix(server.to_owned())
    };
    let sub = msg
        .param_str(0)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    let result = match (sub.as_str(), hub) {
        ("", _) => Err(ProtoError::NeedMoreParams("WEBPUSH".into())),
        (_, None) => Err(fail(
            "INTERNAL_ERROR",
            &[&sub],
            "notifications are turned off on this server",
        )),
        ("VAPIDPUBKEY", Some(hub)) => Ok(reply(vec![
            "VAPIDPUBKEY".into(),
            hub.application_server_key().to_owned(),
        ])),
        ("REGISTER", Some(hub)) => {
            let (Some(endpoint), Some(keys)) = (msg.param_str(1), msg.param_str(2)) else {
                return vec![
                    fail("INVALID_PARAMS", &["REGISTER"], "Missing endpoint or keys")
                        .to_message(server, nick),
                ];
            };
            let (p256dh, auth) = (
                key(&keys, "p256dh").unwrap_or(""),
                key(&keys, "auth").unwrap_or(""),
            );
            match hub
                .subscribe(user, &endpoint, p256dh, auth, Format::Irc)
                .await
            {
                Ok(_) => Ok(reply(vec!["REGISTER".into(), endpoint.into_owned()])),
                Err(SubscribeError::Invalid(e)) => {
                    Err(fail("INVALID_PARAMS", &["REGISTER"], e.to_string()))
                }
                Err(SubscribeError::Store(e)) => {
                    tracing::warn!(user, error = %e, "could not store a push subscription");
                    Err(fail(
                        "INTERNAL_ERROR",
                        &["REGISTER"],
                        "Could not store the subscription",
                    ))
                }
            }
        }
        ("UNREGISTER", Some(hub)) => match msg.param_str(1) {
            None => Err(fail("INVALID_PARAMS", &["UNREGISTER"], "Missing endpoint")),
            // Unknown subscriptions are ignored silently (the extension says so).
            Some(endpoint) => match hub.unsubscribe(user, &endpoint).await {
                Ok(_) => Ok(reply(vec!["UNREGISTER".into(), endpoint.into_owned()])),
                Err(e) => {
                    tracing::warn!(user, error = %e, "could not remove a push subscription");
                    Err(fail(
                        "INTERNAL_ERROR",
                        &["UNREGISTER"],
                        "Could not remove the subscription",
                    ))
                }
            },
        },
        (other, Some(_)) => Err(fail("UNKNOWN_COMMAND", &[other], "Unknown subcommand")),
    };
    vec![result.unwrap_or_else(|e| e.to_message(server, nick))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_message_tag_form() {
        let keys = "p256dh=BAbc-_;auth=xyz";
        assert_eq!(key(keys, "p256dh"), Some("BAbc-_"));
        assert_eq!(key(keys, "auth"), Some("xyz"));
        assert_eq!(key(keys, "other"), None);
        assert_eq!(key("auth", "auth"), None);
    }

    #[tokio::test]
    async fn without_push_every_subcommand_fails_cleanly() {
        let msg = Message::parse(Bytes::from_static(b"WEBPUSH REGISTER https://x/y k")).unwrap();
        let out = handle(None, 1, &msg, "ferry", "alice").await;
        assert_eq!(
            String::from_utf8_lossy(&out[0].to_bytes()),
            ":ferry FAIL WEBPUSH INTERNAL_ERROR REGISTER :notifications are turned off on this server"
        );
        let msg = Message::parse(Bytes::from_static(b"WEBPUSH")).unwrap();
        let out = handle(None, 1, &msg, "ferry", "alice").await;
        assert!(out[0].command.as_str() == "461", "{:?}", out[0]);
    }
}
