//! What a push carries: a small JSON object for the service worker (or any Web
//! Push client), documented for other clients in `docs/websocket.md`:
//!
//! ```json
//! {"network":"libera","buffer":"#rust","sender":"bob","text":"alice: look",
//!  "id":1042,"time":"2025-01-02T10:00:00.000Z","reason":"mention","count":1}
//! ```
//!
//! `id` and `time` are those of the websocket's `message` event, so a client can
//! open the buffer at that message. `count` is how many lines this push stands
//! for (more than 1 when a burst was coalesced; `text` is then the latest).
//! `truncated: true` is present when `text` was cut to fit.
//!
//! The encrypted body of a push may be at most 4096 bytes (RFC 8291 §4), which
//! leaves [`MAX_PLAINTEXT`] bytes of JSON. `text` is cut on a character boundary
//! until the JSON fits; nothing else is cut.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::encrypt::MAX_PLAINTEXT;
use super::rules::Reason;
use crate::store::Seq;

/// The notification for one buffer. `Debug` leaves the text out.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// The network's name, as the websocket names it.
    pub network: String,
    /// The buffer: a channel, or the other person's nick for a private message.
    pub buffer: String,
    /// The sender's nick.
    pub sender: String,
    /// The line's text, formatting included (clients strip or render it).
    pub text: String,
    /// The message id (the user's `seq`).
    pub id: Seq,
    #[serde(serialize_with = "serialize_time")]
    pub time: DateTime<Utc>,
    pub reason: Reason,
    /// Lines this push stands for; at least 1.
    pub count: u32,
    /// Whether `text` was cut to fit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A payload whose fields other than `text` do not fit on their own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the push payload is {0} bytes without its text, over the {MAX_PLAINTEXT}-byte limit")]
pub struct PayloadError(pub usize);

fn serialize_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::irc::time::format(*t))
}

impl Payload {
    /// The JSON bytes to encrypt, at most [`MAX_PLAINTEXT`] long: `text` is cut
    /// at the longest character boundary that fits, and `truncated` set.
    ///
    /// # Errors
    /// [`PayloadError`] when even an empty text does not fit (names hundreds of
    /// bytes long; IRC lines cannot carry such names).
    pub fn to_json(&self) -> Result<Vec<u8>, PayloadError> {
        self.to_json_within(MAX_PLAINTEXT)
    }

    pub(crate) fn to_json_within(&self, limit: usize) -> Result<Vec<u8>, PayloadError> {
        let json = |p: &Payload| serde_json::to_vec(p).expect("a payload always serialises");
        let full = json(self);
        if full.len() <= limit {
            return Ok(full);
        }
        // JSON escaping makes a character cost 1 to 12 bytes, so search the
        // character boundaries for the longest prefix whose JSON fits.
        let mut cut = Payload {
            text: String::new(),
            truncated: true,
            ..self.clone()
        };
        let empty = json(&cut);
        if empty.len() > limit {
            return Err(PayloadError(empty.len()));
        }
        let boundaries: Vec<usize> = self
            .text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(self.text.len()))
            .collect();
        // Invariant: the prefix up to boundaries[lo] fits; boundaries[hi] does not.
        let (mut lo, mut hi) = (0, boundaries.len() - 1);
        let mut best = empty;
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            cut.text = self.text[..boundaries[mid]].to_owned();
            let candidate = json(&cut);
            if candidate.len() <= limit {
                lo = mid;
                best = candidate;
            } else {
                hi = mid;
            }
        }
        Ok(best)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("network", &self.network)
            .field("buffer", &self.buffer)
            .field("id", &self.id)
            .field("reason", &self.reason)
            .field("count", &self.count)
            .field("text_len", &self.text.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(text: &str) -> Payload {
        Payload {
            network: "libera".into(),
            buffer: "#rust".into(),
            sender: "bob".into(),
            text: text.into(),
            id: 1042,
            time: "2025-01-02T10:00:00Z".parse().unwrap(),
            reason: Reason::Mention,
            count: 1,
            truncated: false,
        }
    }

    fn parse(json: &[u8]) -> serde_json::Value {
        serde_json::from_slice(json).unwrap()
    }

    #[test]
    fn short_payload_is_sent_whole() {
        let json = payload("alice: héllo 🦀").to_json().unwrap();
        assert_eq!(
            parse(&json),
            serde_json::json!({"network":"libera","buffer":"#rust","sender":"bob",
                "text":"alice: héllo 🦀","id":1042,"time":"2025-01-02T10:00:00.000Z",
                "reason":"mention","count":1})
        );
    }

    #[test]
    fn long_multibyte_text_is_cut_on_a_character_boundary_to_fit() {
        // 1-, 2-, 3- and 4-byte characters, and ones JSON escapes (", \, control).
        let unit = "a é 日本 🦀 \"q\" \\ \u{1} ";
        let text = unit.repeat(400);
        let p = payload(&text);
        let json = p.to_json().unwrap();
        assert!(json.len() <= MAX_PLAINTEXT);
        let v = parse(&json);
        let got = v["text"].as_str().unwrap();
        assert!(text.starts_with(got));
        assert!(
            got.len() > 2000,
            "cut no more than needed ({} bytes kept)",
            got.len()
        );
        assert_eq!(v["truncated"], true);
        // One more character would not have fitted.
        let next = text[got.len()..].chars().next().unwrap();
        let longer = Payload {
            text: format!("{got}{next}"),
            truncated: true,
            ..p.clone()
        };
        assert!(serde_json::to_vec(&longer).unwrap().len() > MAX_PLAINTEXT);
    }

    #[test]
    fn every_limit_cuts_on_a_boundary() {
        let text = "🦀é日".repeat(30);
        let p = payload(&text);
        let base = serde_json::to_vec(&Payload {
            text: String::new(),
            truncated: true,
            ..p.clone()
        })
        .unwrap()
        .len();
        for limit in base..base + 40 {
            let json = p.to_json_within(limit).unwrap();
            assert!(json.len() <= limit, "{limit}");
            let got = parse(&json)["text"].as_str().unwrap().to_owned();
            assert!(text.starts_with(&got));
        }
        assert_eq!(p.to_json_within(base - 1), Err(PayloadError(base)));
    }

    #[test]
    fn debug_leaves_the_text_out() {
        let shown = format!("{:?}", payload("secret words"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
