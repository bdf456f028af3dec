//! The command of a message as a value: the commands Ferry acts on are named,
//! numerics are [`Numeric`]s, anything else keeps its text.
//!
//! Resolved once per line when it is parsed, without allocating for a named
//! command or a numeric; code then matches on variants instead of strings.

use std::fmt;
use std::ops::Deref;

use super::numeric::Numeric;

/// Names a command word, in upper case.
macro_rules! commands {
    ($($variant:ident = $text:literal,)*) => {
        /// An IRC command. Parsing is case-insensitive; the text is upper case.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Command {
            $(#[doc = concat!("`", $text, "`")] $variant,)*
            /// A three-digit numeric reply.
            Numeric(Numeric),
            /// Any other command, in upper case. Built only by [`Command::parse`] and
            /// `From`, so a named command is never `Other`.
            Other(Box<str>),
        }

        impl Command {
            /// The command's text (`"PRIVMSG"`, `"001"`).
            pub fn as_str(&self) -> &str {
                match self {
                    $(Command::$variant => $text,)*
                    Command::Numeric(n) => n.as_str(),
                    Command::Other(s) => s,
                }
            }

            /// A named command from its upper-case text.
            fn named(upper: &str) -> Option<Command> {
                Some(match upper {
                    $($text => Command::$variant,)*
                    _ => return None,
                })
            }
        }
    };
}

commands! {
    Privmsg = "PRIVMSG",
    Notice = "NOTICE",
    Tagmsg = "TAGMSG",
    Join = "JOIN",
    Part = "PART",
    Kick = "KICK",
    Quit = "QUIT",
    Nick = "NICK",
    Topic = "TOPIC",
    Mode = "MODE",
    Invite = "INVITE",
    Away = "AWAY",
    Account = "ACCOUNT",
    Chghost = "CHGHOST",
    Setname = "SETNAME",
    Ping = "PING",
    Pong = "PONG",
    Error = "ERROR",
    Cap = "CAP",
    Authenticate = "AUTHENTICATE",
    Pass = "PASS",
    User = "USER",
    Batch = "BATCH",
    Fail = "FAIL",
    Warn = "WARN",
    Note = "NOTE",
    Chathistory = "CHATHISTORY",
    Markread = "MARKREAD",
    Bouncer = "BOUNCER",
    Webpush = "WEBPUSH",
    Who = "WHO",
    Whois = "WHOIS",
    Whowas = "WHOWAS",
    List = "LIST",
    Names = "NAMES",
    Userhost = "USERHOST",
    Ison = "ISON",
    Monitor = "MONITOR",
    Motd = "MOTD",
    Version = "VERSION",
}

/// Longer words are never named commands (`AUTHENTICATE` has 12 letters).
const MAX_NAMED: usize = 16;

impl Command {
    /// The command a word spells, case-insensitively. Allocates only for a word
    /// that is neither named nor a numeric.
    pub fn parse(word: &[u8]) -> Command {
        if let Some(n) = Numeric::parse(word) {
            return Command::Numeric(n);
        }
        if word.len() <= MAX_NAMED {
            let mut upper = [0u8; MAX_NAMED];
            let upper = &mut upper[..word.len()];
            upper.copy_from_slice(word);
            upper.make_ascii_uppercase();
            if let Some(c) = std::str::from_utf8(upper).ok().and_then(Command::named) {
                return c;
            }
        }
        Command::Other(String::from_utf8_lossy(word).to_ascii_uppercase().into())
    }

    /// The numeric, if this is one.
    pub fn numeric(&self) -> Option<Numeric> {
        match self {
            Command::Numeric(n) => Some(*n),
            _ => None,
        }
    }
}

impl Default for Command {
    /// No command (an empty `Other`), for `Message::default()`.
    fn default() -> Self {
        Command::Other(Box::default())
    }
}

impl From<&str> for Command {
    fn from(s: &str) -> Command {
        Command::parse(s.as_bytes())
    }
}

impl From<Numeric> for Command {
    fn from(n: Numeric) -> Command {
        Command::Numeric(n)
    }
}

/// A command reads as its text where a `&str` is expected (`&msg.command`), so code
/// that still handles commands as strings keeps working.
impl Deref for Command {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Command {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Command {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_numeric_and_other_commands() {
        assert_eq!(Command::parse(b"PRIVMSG"), Command::Privmsg);
        assert_eq!(Command::parse(b"privmsg"), Command::Privmsg);
        assert_eq!(Command::parse(b"AUTHENTICATE"), Command::Authenticate);
        assert_eq!(
            Command::parse(b"005"),
            Command::Numeric(Numeric::RPL_ISUPPORT)
        );
        assert_eq!(Command::parse(b"xyzzy"), Command::Other("XYZZY".into()));
        assert_eq!(Command::parse(b"1234").as_str(), "1234");
        let long = "A".repeat(40);
        assert_eq!(Command::from(long.as_str()).as_str(), long);
    }

    #[test]
    fn reads_as_its_text() {
        for text in ["PRIVMSG", "001", "353", "XYZZY", "CHATHISTORY"] {
            let c = Command::from(text);
            assert_eq!(c.as_str(), text);
            assert_eq!(c, text);
            assert_eq!(c.to_string(), text);
        }
        assert_eq!(Command::Numeric(Numeric::RPL_WELCOME), "001");
    }
}
