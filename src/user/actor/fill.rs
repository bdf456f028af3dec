//! What a gap fill keeps of a `chathistory` answer (see `gap`): which lines are
//! conversation, which are events, which are a history service's stand-ins for
//! events (never stored), and which the backlog already holds ([`Known`]).
//!
//! Lossless rule: two identical lines said twice are two messages. A line is skipped
//! only when it is the *same* message as one already stored: the same `msgid` in the
//! same buffer, or — for a line without a msgid — the same time (to the millisecond)
//! and the same line without tags, each stored line matching at most one line of the
//! answer.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::irc::{Command, Message};
use crate::store::StoredMessage;

use super::record::stored_kind;

/// The nick Ergo's history service speaks as.
const HISTORY_SERVICE: &[u8] = b"HistServ";

/// What a gap fill does with one line of the server's answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FillLine {
    /// A PRIVMSG, ACTION or NOTICE: stored and relayed to the network's clients.
    Conversation(&'static str),
    /// JOIN, PART, QUIT, NICK, KICK, TOPIC or MODE, replayed as itself (the server
    /// acknowledged `draft/event-playback`): stored in the channel's buffer, never
    /// applied to live state nor relayed — a client would apply a past QUIT or NICK
    /// to the member list it has now. Clients get it with the backlog.
    Event(&'static str),
    /// A history service's stand-in for an event (Ergo without
    /// `draft/event-playback`: `HistServ PRIVMSG #c :bob quit (Quit: bye)` under a
    /// new `_`-prefixed msgid). Dropped, not parsed back into the event: its text is
    /// the service's (Ergo translates it), it lacks the user's `user@host` and the
    /// event's msgid, and we ask for `draft/event-playback` wherever it is offered, so
    /// only servers without it send these.
    HistoryService,
    /// Anything else (CTCP but ACTION, TAGMSG, …): not stored.
    Skip,
}

impl FillLine {
    pub(super) fn of(msg: &Message) -> FillLine {
        let Some(kind) = stored_kind(msg) else {
            return FillLine::Skip;
        };
        match msg.command {
            Command::Privmsg | Command::Notice if is_history_service(msg) => {
                FillLine::HistoryService
            }
            Command::Privmsg | Command::Notice => FillLine::Conversation(kind),
            _ => FillLine::Event(kind),
        }
    }
}

/// A line from the history service: its nick, and the msgid it makes up for a
/// stand-in (`_` in front of the event's), when there is a msgid at all.
fn is_history_service(msg: &Message) -> bool {
    msg.source_nick()
        .is_some_and(|n| n.eq_ignore_ascii_case(HISTORY_SERVICE))
        && msg.tag("msgid").map_or(true, |id| id.starts_with('_'))
}

/// A line without its tags: what "the same bytes" compares.
fn untagged(msg: &Message) -> Bytes {
    let mut m = msg.clone();
    m.tags.clear();
    m.to_bytes()
}

/// What the backlog already holds of one buffer over a fill's time span.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Stored msgids, and those of lines of this answer already taken.
    msgids: HashSet<String>,
    /// (time in ms, line without tags) → how many stored lines are that, not yet
    /// matched by a line of the answer.
    lines: HashMap<(i64, Bytes), usize>,
}

impl Known {
    /// From the buffer's stored lines over the answer's time span.
    pub(super) fn new(stored: &[StoredMessage]) -> Known {
        let mut known = Known::default();
        for m in stored {
            if let Some(id) = &m.msgid {
                known.msgids.insert(id.clone());
            }
            if let Ok(msg) = Message::parse(m.raw.clone()) {
                *known
                    .lines
                    .entry((m.time.timestamp_millis(), untagged(&msg)))
                    .or_default() += 1;
            }
        }
        known
    }

    /// Whether `msg` (server time `time`) is a message already stored; a line it
    /// returns false for counts as stored from then on (its msgid), so a server that
    /// repeats a msgid in one answer stores it once.
    pub(super) fn take(&mut self, msg: &Message, time: DateTime<Utc>) -> bool {
        if let Some(id) = msg.tag("msgid") {
            return !self.msgids.insert(id.to_owned());
        }
        let key = (time.timestamp_millis(), untagged(msg));
        match self.lines.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn stored(raw: &str, msgid: Option<&str>, ms: i64) -> StoredMessage {
        StoredMessage {
            seq: 1,
            network_id: 1,
            buffer: b"#c".to_vec(),
            time: DateTime::from_timestamp_millis(ms).unwrap(),
            sender: "bob".into(),
            command: "PRIVMSG".into(),
            raw: Bytes::copy_from_slice(raw.as_bytes()),
            text: String::new(),
            msgid: msgid.map(str::to_owned),
        }
    }

    #[test]
    fn classifies_history_service_events_and_conversation() {
        let c = |s| FillLine::of(&msg(s));
        assert_eq!(
            c("@msgid=_abc :HistServ!HistServ@localhost PRIVMSG #c :bob quit (Quit: x)"),
            FillLine::HistoryService
        );
        assert_eq!(
            c(":HistServ!HistServ@localhost PRIVMSG #c :bob joined the channel"),
            FillLine::HistoryService
        );
        // A msgid of its own: someone really said it.
        assert_eq!(
            c("@msgid=abc :HistServ!h@h PRIVMSG #c :hi"),
            FillLine::Conversation("PRIVMSG")
        );
        assert_eq!(
            c(":bob!b@h PRIVMSG #c :\x01ACTION waves\x01"),
            FillLine::Conversation("ACTION")
        );
        assert_eq!(
            c(":bob!b@h NOTICE #c :hi"),
            FillLine::Conversation("NOTICE")
        );
        assert_eq!(c(":bob!b@h QUIT :Quit: bye"), FillLine::Event("QUIT"));
        assert_eq!(c(":bob!b@h NICK bob2"), FillLine::Event("NICK"));
        assert_eq!(c(":bob!b@h PRIVMSG #c :\x01VERSION\x01"), FillLine::Skip);
        assert_eq!(c(":bob!b@h TAGMSG #c"), FillLine::Skip);
    }

    #[test]
    fn same_msgid_is_skipped_once_taken() {
        let mut k = Known::new(&[stored("@msgid=m1 :bob!b@h PRIVMSG #c :hi", Some("m1"), 5)]);
        let t = DateTime::from_timestamp_millis(5).unwrap();
        assert!(k.take(&msg("@msgid=m1;batch=x :bob!b@h PRIVMSG #c :hi"), t));
        // The same words under another msgid are another message.
        assert!(!k.take(&msg("@msgid=m2;batch=x :bob!b@h PRIVMSG #c :hi"), t));
        // The answer repeating m2 is still one message.
        assert!(k.take(&msg("@msgid=m2;batch=x :bob!b@h PRIVMSG #c :hi"), t));
    }

    #[test]
    fn without_msgids_each_stored_line_matches_one_line() {
        let raw = "@time=1970-01-01T00:00:00.005Z :bob!b@h PRIVMSG #c :same";
        let mut k = Known::new(&[stored(raw, None, 5)]);
        let line = msg("@batch=x;time=1970-01-01T00:00:00.005Z :bob!b@h PRIVMSG #c :same");
        let t = DateTime::from_timestamp_millis(5).unwrap();
        assert!(k.take(&line, t), "the stored line");
        assert!(!k.take(&line, t), "a second, identical message is kept");
        let later = DateTime::from_timestamp_millis(6).unwrap();
        assert!(!k.take(&line, later), "another time is another message");
    }
}
