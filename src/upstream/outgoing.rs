//! Making a line from the actor fit the server: tags only where the server
//! acknowledged `message-tags` (ngircd answers `421` to a tagged line), and
//! never more than 512 bytes without tags.

use bytes::Bytes;

use crate::irc::Message;

/// The longest message body we send, without tags and CRLF.
pub const MAX_BODY: usize = 510;
/// The longest tag section servers accept from clients (IRCv3 message-tags).
const MAX_TAGS: usize = 4094;

/// Prepares a line for the wire, or `None` when it cannot be made to fit.
pub fn fit(mut msg: Message, tags_allowed: bool) -> Option<Message> {
    if !tags_allowed {
        msg.tags.clear();
    } else if !msg.tags.is_empty() {
        let with = msg.to_bytes().len();
        let without = msg.body_len();
        if with - without > MAX_TAGS {
            msg.tags.clear();
        }
    }
    let len = msg.body_len();
    if len <= MAX_BODY {
        return Some(msg);
    }
    let excess = len - MAX_BODY;
    let last = msg.params.last_mut()?;
    if last.len() < excess {
        return None;
    }
    let keep = last.len() - excess;
    let truncated: Bytes = last.slice(..keep);
    *last = truncated;
    // Serialisation may need a ':' it did not need before (or vice versa); re-check.
    while msg.body_len() > MAX_BODY {
        let last = msg.params.last_mut()?;
        if last.is_empty() {
            return None;
        }
        *last = last.slice(..last.len() - 1);
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_unless_allowed() {
        let m = Message::new("PRIVMSG", ["#a", "hi"]).with_tag("+draft/reply", Some("x"));
        assert!(fit(m.clone(), false).unwrap().tags.is_empty());
        assert_eq!(fit(m.clone(), true).unwrap(), m);
    }

    #[test]
    fn truncates_trailing_param_by_bytes() {
        let text = vec![b'\xe9'; 600];
        let m = Message::new("PRIVMSG", [Bytes::from_static(b"#chan"), Bytes::from(text)]);
        let out = fit(m, false).unwrap();
        assert_eq!(out.body_len(), MAX_BODY);
        assert!(out.params[1].iter().all(|&b| b == 0xe9));
    }

    #[test]
    fn gives_up_when_middle_params_are_too_long() {
        let m = Message::new("PRIVMSG", [Bytes::from(vec![b'#'; 600]), Bytes::from("x")]);
        assert_eq!(fit(m, false), None);
    }
}
