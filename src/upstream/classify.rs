//! Why a connection ended, as a decision about retrying.
//!
//! Networks say why they refuse us only in free text (`ERROR :Closing link:
//! … [reason]`) or a few numerics, so classification is a table of phrases.
//! The phrases come from the servers' own source and from live runs recorded
//! in `shared/IRC-NOTES.md`:
//!
//! | server text | kind |
//! |---|---|
//! | solanum `Reconnecting too fast, throttled.` | [`Kind::Throttled`] |
//! | InspIRCd connflood `Throttled` (its default `quitmsg`) | [`Kind::Throttled`] |
//! | InspIRCd connectban Z-line `…attempting to connect too many times…` | [`Kind::Throttled`] |
//! | InspIRCd `No more connections allowed from your host via this connect class (local)` / `(global)` | [`Kind::TooManyConnections`] |
//! | ngircd `Connection refused, too many connections from your IP address` | [`Kind::TooManyConnections`] |
//! | UnrealIRCd / solanum `Too many host connections (local)`, `Too many user connections (global)` | [`Kind::TooManyConnections`] |
//! | `K-Lined: …`, `G-Lined: …`, `Z-Lined: …`, `You are banned from this server` | [`Kind::Permanent`] |
//! | `SASL authentication required`, `You must be identified …`, `must be logged in` | [`Kind::Permanent`] |
//! | numerics `465` (banned), `464` (bad password), `904`/`905` (SASL failed) | [`Kind::Permanent`] |
//!
//! Throttling is checked before bans because connectban's Z-line expires by
//! itself: backing off for a long time is the right answer, giving up is not.

use crate::irc::Numeric;

/// The kind of a failure is shared with the limiter, which learns from it.
pub use crate::limits::Kind;

/// A connection failure with a reason for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub reason: String,
}

impl Failure {
    pub fn temporary(reason: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Temporary,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Permanent,
            reason: reason.into(),
        }
    }

    /// A failure described by server text (an `ERROR` line or a numeric's trailing text).
    pub fn from_text(text: &[u8]) -> Failure {
        Failure {
            kind: classify_text(text),
            reason: crate::irc::decode(text).into_owned(),
        }
    }
}

const THROTTLED: &[&str] = &[
    "throttled",
    "too fast",
    "connect too many times",
    "too many connection attempts",
];

const TOO_MANY_CONNECTIONS: &[&str] = &[
    "no more connections allowed",
    "too many connections",
    "too many host connections",
    "too many user connections",
    "too many clones",
];

const PERMANENT: &[&str] = &[
    "k-lined",
    "g-lined",
    "z-lined",
    "d-lined",
    "k-line",
    "g-line",
    "z-line",
    "banned",
    "sasl authentication required",
    "you must be identified",
    "must be logged in",
    "must authenticate",
];

/// Classifies the text of an `ERROR` line (or a disconnect reason).
pub fn classify_text(text: &[u8]) -> Kind {
    let text = crate::irc::decode(text).to_lowercase();
    let has = |list: &[&str]| list.iter().any(|p| text.contains(p));
    if has(THROTTLED) {
        Kind::Throttled
    } else if has(TOO_MANY_CONNECTIONS) {
        Kind::TooManyConnections
    } else if has(PERMANENT) {
        Kind::Permanent
    } else {
        Kind::Temporary
    }
}

/// Classifies a numeric that ends registration, or `None` when the numeric
/// does not end it. `sasl_configured` says whether the credentials that
/// failed were the user's own (a 904 then means a wrong password).
pub fn classify_numeric(numeric: Numeric, sasl_configured: bool) -> Option<Kind> {
    match numeric {
        Numeric::ERR_YOUREBANNEDCREEP | Numeric::ERR_PASSWDMISMATCH => Some(Kind::Permanent),
        Numeric::ERR_SASLFAIL | Numeric::ERR_SASLTOOLONG | Numeric::ERR_SASLABORTED
            if sasl_configured =>
        {
            Some(Kind::Permanent)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        let table: &[(&str, Kind)] = &[
            ("Closing link: (a@127.0.0.1) [Throttled]", Kind::Throttled),
            ("Reconnecting too fast, throttled.", Kind::Throttled),
            (
                "Closing link: (a@127.0.0.1) [Z-Lined: Your IP range has been attempting to connect too many times in too short a duration. Wait a while, and you will be able to connect.]",
                Kind::Throttled,
            ),
            (
                "Closing link: (a@127.0.0.1) [No more connections allowed from your host via this connect class (local)]",
                Kind::TooManyConnections,
            ),
            (
                "Connection refused, too many connections from your IP address",
                Kind::TooManyConnections,
            ),
            ("Too many host connections (local)", Kind::TooManyConnections),
            ("Closing link: (a@127.0.0.1) [K-Lined: spam]", Kind::Permanent),
            ("Closing link: (a@127.0.0.1) [G-Lined: spam]", Kind::Permanent),
            ("Closing link: (a@127.0.0.1) [Z-Lined: go away]", Kind::Permanent),
            ("You are banned from this server", Kind::Permanent),
            ("SASL authentication required", Kind::Permanent),
            (
                "You must be identified to a registered nick to connect",
                Kind::Permanent,
            ),
            ("Closing link: (a@127.0.0.1) [Ping timeout: 120 seconds]", Kind::Temporary),
            ("Closing link: (a@127.0.0.1) [Server shutting down]", Kind::Temporary),
            ("Closing link: (a@127.0.0.1) [Registration timeout]", Kind::Temporary),
            ("caf\u{e9}", Kind::Temporary),
        ];
        for (text, kind) in table {
            assert_eq!(classify_text(text.as_bytes()), *kind, "{text}");
        }
        // Latin-1 bytes do not break classification.
        assert_eq!(classify_text(b"Banni \xe9 BANNED"), Kind::Permanent);
    }

    #[test]
    fn numerics() {
        // The codes as the wire spells them.
        let classify_numeric =
            |code: &str, sasl| classify_numeric(Numeric::parse(code.as_bytes()).unwrap(), sasl);
        assert_eq!(classify_numeric("465", false), Some(Kind::Permanent));
        assert_eq!(classify_numeric("464", false), Some(Kind::Permanent));
        assert_eq!(classify_numeric("904", true), Some(Kind::Permanent));
        assert_eq!(classify_numeric("905", true), Some(Kind::Permanent));
        assert_eq!(classify_numeric("904", false), None);
        assert_eq!(classify_numeric("433", true), None);
        assert_eq!(classify_numeric("001", true), None);
    }
}
