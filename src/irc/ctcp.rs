//! CTCP: `\x01`-delimited commands inside PRIVMSG/NOTICE text.

/// Splits a CTCP body into command and argument. The closing `\x01` may be
/// missing on input. Returns `None` when the text is not CTCP.
pub fn parse(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let inner = text.strip_prefix(b"\x01")?;
    let inner = inner.strip_suffix(b"\x01").unwrap_or(inner);
    Some(match inner.iter().position(|&b| b == b' ') {
        Some(i) => (&inner[..i], &inner[i + 1..]),
        None => (inner, &[][..]),
    })
}

/// The text of a `/me` action, when `text` is one.
pub fn action(text: &[u8]) -> Option<&[u8]> {
    match parse(text) {
        Some((cmd, arg)) if cmd.eq_ignore_ascii_case(b"ACTION") => Some(arg),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_with_and_without_closing_delimiter() {
        assert_eq!(super::action(b"\x01ACTION waves\x01"), Some(&b"waves"[..]));
        assert_eq!(super::action(b"\x01ACTION waves"), Some(&b"waves"[..]));
        assert_eq!(
            super::parse(b"\x01VERSION\x01"),
            Some((&b"VERSION"[..], &b""[..]))
        );
        assert_eq!(super::parse(b"hello"), None);
    }
}
