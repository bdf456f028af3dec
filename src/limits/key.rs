//! Which configured limit applies to a network: the rule behind `ferry limits set
//! HOST_OR_NETWORK`.
//!
//! Networks are identified by where they are, not by what a user calls them (each
//! user names networks freely), so the key of a network is derived from the host part
//! of its address. Given the configured keys (lowercase), the first match wins:
//!
//! 1. a key equal to the host (`irc.libera.chat`);
//! 2. the longest key that is a parent domain of the host (`libera.chat` covers
//!    `irc.libera.chat` and `eu.libera.chat`, so a network's round-robin names share
//!    one budget);
//! 3. a key equal to the user's name for the network (`libera`), for hosts a
//!    domain rule cannot group; two users who name the same network differently
//!    then fall under different keys, so prefer rules 1 and 2;
//! 4. no configured key: the host itself, with the node's defaults.

/// The lowercase host part of `host:port` (IPv6 brackets removed).
pub fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The limiter key of a network at `host` that its user calls `name`, given the
/// configured keys.
pub fn resolve<'a>(
    configured: impl IntoIterator<Item = &'a str>,
    host: &str,
    name: &str,
) -> String {
    let host = host.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let mut parent: Option<&str> = None;
    let mut by_name = false;
    for key in configured {
        if key == host {
            return host;
        }
        if host.len() > key.len()
            && host.ends_with(key)
            && host.as_bytes()[host.len() - key.len() - 1] == b'.'
            && parent.map_or(true, |p| key.len() > p.len())
        {
            parent = Some(key);
        }
        if key == name {
            by_name = true;
        }
    }
    match parent {
        Some(p) => p.to_owned(),
        None if by_name => name,
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("irc.Libera.Chat:6697"), "irc.libera.chat");
        assert_eq!(host_of("127.0.0.1:6667"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6667"), "::1");
        assert_eq!(host_of("irc.example.org"), "irc.example.org");
    }

    #[test]
    fn rule_order() {
        let keys = [
            "libera.chat",
            "chat",
            "irc.libera.chat",
            "oftc",
            "127.0.0.1",
        ];
        assert_eq!(
            resolve(keys, "irc.libera.chat", "libera"),
            "irc.libera.chat"
        );
        assert_eq!(resolve(keys, "eu.libera.chat", "x"), "libera.chat");
        assert_eq!(resolve(keys, "foo.chat", "x"), "chat");
        // A suffix that is not a whole label does not match.
        assert_eq!(resolve(keys, "notlibera.chat", "x"), "chat");
        assert_eq!(resolve(keys, "irc.oftc.net", "OFTC"), "oftc");
        assert_eq!(resolve(keys, "127.0.0.1", "local"), "127.0.0.1");
        assert_eq!(resolve(keys, "irc.other.org", "other"), "irc.other.org");
        assert_eq!(resolve([], "IRC.Other.org", "other"), "irc.other.org");
    }
}
