//! What is pushed: a private message to the user, a channel line that mentions
//! the user's current nick, a line with one of the user's extra keywords — never
//! the user's own lines, and nothing while the caller says the line is read, the
//! buffer muted or a client active ([`Suppress`]: every field must be given).
//!
//! Matching is on the displayed text (UTF-8, else Latin-1) with IRC formatting
//! stripped, word-bounded (a nick inside a longer nick or word does not count),
//! and case-folded with the network's `CASEMAPPING` (in `rfc1459`, `[]\~` and
//! `{}|^` are the same letters). Keywords fold Unicode case as well.
//!
//! NOTICEs never push: services and servers send them at every connect. CTCP
//! other than ACTION never pushes either.

use std::borrow::Cow;

use crate::irc::{ctcp, decode, Casemapping, Message};

use super::format::strip_formatting;

/// The kinds of line rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Privmsg,
    /// A CTCP ACTION (`/me`); `text` is the action without its wrapper.
    Action,
    Notice,
}

/// One incoming chat line, as the rules need it.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub kind: Kind,
    /// The sender's nick.
    pub sender: &'a [u8],
    /// The PRIVMSG/NOTICE target: a channel, or a nick (ours, for a private message).
    pub target: &'a [u8],
    pub text: &'a [u8],
}

impl<'a> Incoming<'a> {
    /// The chat line in `msg`: PRIVMSG (ACTION included) and NOTICE with a
    /// sender, a target and a text. Other CTCP requests and other commands are
    /// `None`.
    pub fn from_message(msg: &'a Message) -> Option<Incoming<'a>> {
        let kind = match msg.command.as_str() {
            "PRIVMSG" => Kind::Privmsg,
            "NOTICE" => Kind::Notice,
            _ => return None,
        };
        let sender = msg.source_nick()?;
        let target = msg.param(0)?;
        let mut text = msg.param(1)?;
        let mut kind = kind;
        if let Some((command, arg)) = ctcp::parse(text) {
            if kind != Kind::Privmsg || !command.eq_ignore_ascii_case(b"ACTION") {
                return None;
            }
            kind = Kind::Action;
            text = arg;
        }
        Some(Incoming {
            kind,
            sender,
            target,
            text,
        })
    }
}

/// The user's side of the rules.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The user's current nick on this network.
    pub own_nick: &'a [u8],
    /// The network's `CASEMAPPING`.
    pub casemapping: Casemapping,
    /// Extra words that push, per user; blank ones are ignored.
    pub keywords: &'a [String],
}

/// Conditions only the caller knows, each of which stops a push. No `Default`:
/// whoever builds one has answered every question.
#[derive(Clone, Copy, Debug)]
pub struct Suppress {
    /// The buffer's read marker is at or past this line.
    pub already_read: bool,
    /// The user muted this buffer.
    pub muted: bool,
    /// One of the user's clients is active: a focused web client, or an attached
    /// IRC client when the user chose "not while an IRC client is attached".
    pub client_active: bool,
}

/// Why a line is pushed; the payload's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A private message to the user.
    Private,
    /// A line that mentions the user's current nick.
    Mention,
    /// A line with one of the user's keywords.
    Keyword,
}

/// Whether `line` is pushed, and why.
pub fn decide(line: &Incoming<'_>, ctx: &Context<'_>, suppress: Suppress) -> Option<Reason> {
    let Suppress {
        already_read,
        muted,
        client_active,
    } = suppress;
    if already_read || muted || client_active {
        return None;
    }
    if !matches!(line.kind, Kind::Privmsg | Kind::Action) || ctx.own_nick.is_empty() {
        return None;
    }
    let cm = ctx.casemapping;
    if cm.eq(line.sender, ctx.own_nick) {
        return None;
    }
    if cm.eq(line.target, ctx.own_nick) {
        return Some(Reason::Private);
    }
    let text = strip_formatting(&decode(line.text)).into_owned();
    if mentions(&text, &decode(ctx.own_nick), cm) {
        return Some(Reason::Mention);
    }
    let lowered = text.to_lowercase();
    let keyword = ctx
        .keywords
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .any(|k| mentions(&lowered, &k.to_lowercase(), cm));
    keyword.then_some(Reason::Keyword)
}

/// Whether `text` (formatting already stripped) contains `word` as a whole
/// word, folding case with `casemapping`.
pub fn mentions(text: &str, word: &str, casemapping: Casemapping) -> bool {
    if word.is_empty() {
        return false;
    }
    let hay = fold(text, casemapping);
    let needle = fold(word, casemapping);
    let mut from = 0;
    while let Some(pos) = hay[from..].find(&*needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before = hay[..start].chars().next_back();
        let after = hay[end..].chars().next();
        if !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char) {
            return true;
        }
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Case mapping folds ASCII bytes only, so UTF-8 stays UTF-8.
fn fold(text: &str, casemapping: Casemapping) -> Cow<'_, str> {
    let folded = casemapping.fold(text.as_bytes());
    if folded == text.as_bytes() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(String::from_utf8(folded).expect("ASCII-only folding keeps UTF-8 valid"))
}

/// Letters, digits (any script) and the characters nicks may contain: a match
/// next to one of these is part of a longer name or word.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(
            c,
            '-' | '_' | '[' | ']' | '\\' | '`' | '^' | '{' | '|' | '}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Suppress = Suppress {
        already_read: false,
        muted: false,
        client_active: false,
    };

    fn ctx<'a>(nick: &'a str, cm: Casemapping, keywords: &'a [String]) -> Context<'a> {
        Context {
            own_nick: nick.as_bytes(),
            casemapping: cm,
            keywords,
        }
    }

    fn line<'a>(sender: &'a str, target: &'a str, text: &'a str) -> Incoming<'a> {
        Incoming {
            kind: Kind::Privmsg,
            sender: sender.as_bytes(),
            target: target.as_bytes(),
            text: text.as_bytes(),
        }
    }

    fn channel(text: &str, nick: &str, cm: Casemapping) -> Option<Reason> {
        decide(&line("bob", "#ferry", text), &ctx(nick, cm, &[]), QUIET)
    }

    #[test]
    fn private_messages_push() {
        let c = ctx("alice", Casemapping::Rfc1459, &[]);
        assert_eq!(
            decide(&line("bob", "alice", "hi"), &c, QUIET),
            Some(Reason::Private)
        );
        assert_eq!(
            decide(&line("bob", "ALICE", "hi"), &c, QUIET),
            Some(Reason::Private)
        );
        assert_eq!(decide(&line("bob", "#ferry", "hi"), &c, QUIET), None);
    }

    #[test]
    fn mentions_are_word_bounded() {
        let cm = Casemapping::Rfc1459;
        for text in [
            "alice: ping",
            "hey alice",
            "Alice!",
            "@alice look",
            "ALICE's turn",
            "(alice)",
            "alice",
        ] {
            assert_eq!(channel(text, "alice", cm), Some(Reason::Mention), "{text}");
        }
        for text in [
            "malice",
            "alices",
            "alice_",
            "alice-bot",
            "alice2",
            "bob",
            "al ice",
            "aliceé",
            "éalice",
        ] {
            assert_eq!(channel(text, "alice", cm), None, "{text}");
        }
        // A word boundary is found after an earlier non-boundary hit.
        assert_eq!(
            channel("malice and alice", "alice", cm),
            Some(Reason::Mention)
        );
    }

    #[test]
    fn mentions_fold_with_the_networks_casemapping() {
        // rfc1459: []\~ are the upper case of {}|^.
        assert_eq!(
            channel("hi foo[m]", "FOO{M}", Casemapping::Rfc1459),
            Some(Reason::Mention)
        );
        assert_eq!(
            channel("hi a\\b~", "A|B^", Casemapping::Rfc1459),
            Some(Reason::Mention)
        );
        // strict-rfc1459 folds []\ but not ~.
        assert_eq!(
            channel("hi foo[m]", "foo{m}", Casemapping::Rfc1459Strict),
            Some(Reason::Mention)
        );
        assert_eq!(channel("hi a~", "a^", Casemapping::Rfc1459Strict), None);
        // ascii folds letters only.
        assert_eq!(channel("hi foo[m]", "foo{m}", Casemapping::Ascii), None);
        assert_eq!(
            channel("hi FOO[M]", "foo[m]", Casemapping::Ascii),
            Some(Reason::Mention)
        );
    }

    #[test]
    fn formatting_is_stripped_before_matching() {
        let cm = Casemapping::Rfc1459;
        assert_eq!(
            channel("\x02alice\x02: look", "alice", cm),
            Some(Reason::Mention)
        );
        assert_eq!(
            channel("\x0304al\x03ice", "alice", cm),
            Some(Reason::Mention)
        );
        assert_eq!(
            channel("\x0304,12alice\x0f!", "alice", cm),
            Some(Reason::Mention)
        );
        // A colour code's digits are not part of the word next to it.
        assert_eq!(channel("\x0312alice", "alice", cm), Some(Reason::Mention));
    }

    #[test]
    fn keywords_push_and_fold_unicode_case() {
        let words = vec!["Ferry".to_owned(), "  ".to_owned(), "Çava".to_owned()];
        let c = ctx("alice", Casemapping::Rfc1459, &words);
        let push = |text: &str| decide(&line("bob", "#x", text), &c, QUIET);
        assert_eq!(push("the ferry is late"), Some(Reason::Keyword));
        assert_eq!(push("FERRY!"), Some(Reason::Keyword));
        assert_eq!(push("ferrying"), None);
        assert_eq!(push("çava ?"), Some(Reason::Keyword));
        assert_eq!(push("nothing here"), None, "blank keywords match nothing");
        // The nick wins over a keyword.
        assert_eq!(push("alice: ferry"), Some(Reason::Mention));
    }

    #[test]
    fn own_lines_never_push() {
        let c = ctx("alice", Casemapping::Rfc1459, &[]);
        assert_eq!(
            decide(&line("alice", "#ferry", "alice here"), &c, QUIET),
            None
        );
        assert_eq!(
            decide(&line("Alice", "alice", "note to self"), &c, QUIET),
            None
        );
        assert_eq!(decide(&line("alice", "bob", "hi bob"), &c, QUIET), None);
    }

    #[test]
    fn caller_conditions_suppress() {
        let c = ctx("alice", Casemapping::Rfc1459, &[]);
        let l = line("bob", "alice", "hi");
        for s in [
            Suppress {
                already_read: true,
                ..QUIET
            },
            Suppress {
                muted: true,
                ..QUIET
            },
            Suppress {
                client_active: true,
                ..QUIET
            },
        ] {
            assert_eq!(decide(&l, &c, s), None, "{s:?}");
        }
    }

    #[test]
    fn notices_and_other_ctcp_do_not_push_actions_do() {
        let c = ctx("alice", Casemapping::Rfc1459, &[]);
        let msg = |raw: &str| Message::parse(bytes::Bytes::from(raw.to_owned())).unwrap();

        let m = msg(":bob!b@h PRIVMSG #ferry :\x01ACTION pokes alice\x01");
        let l = Incoming::from_message(&m).unwrap();
        assert_eq!((l.kind, l.text), (Kind::Action, &b"pokes alice"[..]));
        assert_eq!(decide(&l, &c, QUIET), Some(Reason::Mention));

        let m = msg(":NickServ!s@services NOTICE alice :This nickname is registered, alice");
        let l = Incoming::from_message(&m).unwrap();
        assert_eq!(decide(&l, &c, QUIET), None);

        assert!(Incoming::from_message(&msg(":bob!b@h PRIVMSG alice :\x01VERSION\x01")).is_none());
        assert!(Incoming::from_message(&msg(":bob!b@h JOIN #ferry")).is_none());
        assert!(Incoming::from_message(&msg("PRIVMSG alice :no prefix")).is_none());

        let m = msg(":bob!b@h PRIVMSG alice :hi");
        assert_eq!(
            decide(&Incoming::from_message(&m).unwrap(), &c, QUIET),
            Some(Reason::Private)
        );
    }

    #[test]
    fn latin1_text_is_matched_as_displayed() {
        let c = ctx("alice", Casemapping::Rfc1459, &[]);
        // "café alice" in Latin-1: not UTF-8, still matched.
        let text = b"caf\xe9 alice";
        let l = Incoming {
            kind: Kind::Privmsg,
            sender: b"bob",
            target: b"#x",
            text,
        };
        assert_eq!(decide(&l, &c, QUIET), Some(Reason::Mention));
    }
}
