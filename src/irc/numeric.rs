//! Numeric replies: the three-digit commands servers answer with.
//!
//! [`Numeric`] is a numeric as a value (`Command::Numeric(Numeric::RPL_WELCOME)`);
//! the named ones are its associated constants, like `http::StatusCode::OK`. Each
//! name also exists as a module-level `&str` constant with the wire text (`"001"`)
//! for code that still builds lines from strings.

use std::fmt;

/// A three-digit numeric reply (`000` to `999`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Numeric(u16);

impl Numeric {
    /// The numeric with this code, if it has three digits at most.
    pub const fn new(code: u16) -> Option<Numeric> {
        if code <= 999 {
            Some(Numeric(code))
        } else {
            None
        }
    }

    /// The numeric a command word spells (exactly three ASCII digits), if any.
    pub fn parse(word: &[u8]) -> Option<Numeric> {
        match *word {
            [a, b, c] if word.iter().all(u8::is_ascii_digit) => Some(Numeric(
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
            )),
            _ => None,
        }
    }

    /// The code as a number (`1` for `001`).
    pub const fn code(self) -> u16 {
        self.0
    }

    /// The wire text, always three digits (`"001"`).
    pub fn as_str(self) -> &'static str {
        let i = usize::from(self.0) * 3;
        &TEXT[i..i + 3]
    }

    /// The constants below are written as their wire text; this reads it at compile
    /// time (and fails to compile on anything but three digits).
    const fn from_text(text: &str) -> Numeric {
        let b = text.as_bytes();
        assert!(b.len() == 3, "a numeric has three digits");
        let mut code = 0u16;
        let mut i = 0;
        while i < 3 {
            assert!(b[i].is_ascii_digit(), "a numeric has three digits");
            code = code * 10 + (b[i] - b'0') as u16;
            i += 1;
        }
        Numeric(code)
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `000001002…999`: every numeric's text, so [`Numeric::as_str`] needs no allocation.
static TEXT: &str = {
    const BYTES: [u8; 3000] = {
        let mut t = [0u8; 3000];
        let mut n = 0;
        while n < 1000 {
            t[n * 3] = b'0' + (n / 100) as u8;
            t[n * 3 + 1] = b'0' + (n / 10 % 10) as u8;
            t[n * 3 + 2] = b'0' + (n % 10) as u8;
            n += 1;
        }
        t
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("digits are ASCII"),
    }
};

/// One table, two views: `Numeric::NAME` (typed) and `NAME` (the wire text).
macro_rules! numerics {
    ($($name:ident = $text:literal,)*) => {
        impl Numeric {
            $(pub const $name: Numeric = Numeric::from_text($text);)*
        }
        $(pub const $name: &str = $text;)*
    };
}

numerics! {
    RPL_WELCOME = "001",
    RPL_YOURHOST = "002",
    RPL_CREATED = "003",
    RPL_MYINFO = "004",
    RPL_ISUPPORT = "005",
    RPL_UMODEIS = "221",
    RPL_WHOISCERTFP = "276",
    RPL_AWAY = "301",
    RPL_USERHOST = "302",
    RPL_ISON = "303",
    RPL_UNAWAY = "305",
    RPL_NOWAWAY = "306",
    RPL_WHOISREGNICK = "307",
    RPL_WHOISUSER = "311",
    RPL_WHOISSERVER = "312",
    RPL_WHOISOPERATOR = "313",
    RPL_WHOWASUSER = "314",
    RPL_ENDOFWHO = "315",
    RPL_WHOISIDLE = "317",
    RPL_ENDOFWHOIS = "318",
    RPL_WHOISCHANNELS = "319",
    RPL_WHOISSPECIAL = "320",
    RPL_LISTSTART = "321",
    RPL_LIST = "322",
    RPL_LISTEND = "323",
    RPL_CHANNELMODEIS = "324",
    RPL_CREATIONTIME = "329",
    RPL_WHOISACCOUNT = "330",
    RPL_NOTOPIC = "331",
    RPL_TOPIC = "332",
    RPL_TOPICWHOTIME = "333",
    RPL_WHOISBOT = "335",
    RPL_WHOISACTUALLY = "338",
    RPL_INVITELIST = "346",
    RPL_ENDOFINVITELIST = "347",
    RPL_EXCEPTLIST = "348",
    RPL_ENDOFEXCEPTLIST = "349",
    RPL_WHOREPLY = "352",
    RPL_NAMREPLY = "353",
    RPL_WHOSPCRPL = "354",
    RPL_ENDOFNAMES = "366",
    RPL_BANLIST = "367",
    RPL_ENDOFBANLIST = "368",
    RPL_ENDOFWHOWAS = "369",
    RPL_MOTD = "372",
    RPL_MOTDSTART = "375",
    RPL_ENDOFMOTD = "376",
    RPL_WHOISHOST = "378",
    RPL_WHOISMODES = "379",
    ERR_NOSUCHNICK = "401",
    ERR_NOSUCHSERVER = "402",
    ERR_NOSUCHCHANNEL = "403",
    ERR_WASNOSUCHNICK = "406",
    ERR_UNKNOWNCOMMAND = "421",
    ERR_NOMOTD = "422",
    ERR_NONICKNAMEGIVEN = "431",
    ERR_ERRONEUSNICKNAME = "432",
    ERR_NICKNAMEINUSE = "433",
    ERR_NICKCOLLISION = "436",
    ERR_UNAVAILRESOURCE = "437",
    ERR_NOTONCHANNEL = "442",
    ERR_NOTREGISTERED = "451",
    ERR_NEEDMOREPARAMS = "461",
    ERR_ALREADYREGISTERED = "462",
    ERR_PASSWDMISMATCH = "464",
    ERR_YOUREBANNEDCREEP = "465",
    ERR_NOPRIVILEGES = "481",
    ERR_CHANOPRIVSNEEDED = "482",
    RPL_WHOISSECURE = "671",
    RPL_QUIETLIST = "728",
    RPL_ENDOFQUIETLIST = "729",
    RPL_LOGGEDIN = "900",
    RPL_LOGGEDOUT = "901",
    ERR_NICKLOCKED = "902",
    RPL_SASLSUCCESS = "903",
    ERR_SASLFAIL = "904",
    ERR_SASLTOOLONG = "905",
    ERR_SASLABORTED = "906",
    ERR_SASLALREADY = "907",
    RPL_SASLMECHS = "908",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_value_agree() {
        assert_eq!(Numeric::RPL_WELCOME.as_str(), RPL_WELCOME);
        assert_eq!(Numeric::RPL_WELCOME.code(), 1);
        assert_eq!(Numeric::ERR_SASLFAIL.to_string(), "904");
        assert_eq!(Numeric::new(0).unwrap().as_str(), "000");
        assert_eq!(Numeric::new(999).unwrap().as_str(), "999");
        assert_eq!(Numeric::new(1000), None);
        assert_eq!(Numeric::parse(b"353"), Some(Numeric::RPL_NAMREPLY));
        for bad in [&b"35"[..], b"3533", b"35a", b"", b"+12"] {
            assert_eq!(Numeric::parse(bad), None);
        }
    }
}
