//! Splitting outgoing text so each line fits the server's limit in bytes.

/// The room the server's `:nick!user@host ` prefix may take when it relays
/// our message: nick and user are bounded by the server, the host is not, so
/// we assume a generous host name.
pub fn relay_overhead(nick_len: usize) -> usize {
    // ":" nick "!" user(10) "@" host(63) " "
    1 + nick_len + 1 + 10 + 1 + 63 + 1
}

/// Splits `text` into pieces that fit `PRIVMSG target :piece\r\n` within
/// `linelen` bytes once the server adds our prefix. Splits at a space when
/// one is near the end, never inside a UTF-8 sequence when the text is UTF-8.
pub fn split_text(
    command: &str,
    target: &[u8],
    text: &[u8],
    nick_len: usize,
    linelen: usize,
) -> Vec<Vec<u8>> {
    // command + ' ' + target + ' :' + text + CRLF
    let fixed = relay_overhead(nick_len) + command.len() + 1 + target.len() + 2 + 2;
    let max = linelen.saturating_sub(fixed).max(32);
    let utf8 = std::str::from_utf8(text).is_ok();
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        if utf8 {
            while cut > 0 && (rest[cut] & 0b1100_0000) == 0b1000_0000 {
                cut -= 1;
            }
        }
        // Prefer a space in the last fifth of the piece.
        if let Some(sp) = rest[..cut].iter().rposition(|&b| b == b' ') {
            if sp > cut - cut / 5 {
                cut = sp + 1;
            }
        }
        if cut == 0 {
            cut = max;
        }
        out.push(rest[..cut].to_vec());
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(
            split_text("PRIVMSG", b"#c", b"hi", 9, 512),
            vec![b"hi".to_vec()]
        );
    }

    #[test]
    fn long_text_fits_and_loses_nothing() {
        let text = "é".repeat(600);
        let pieces = split_text("PRIVMSG", b"#c", text.as_bytes(), 9, 512);
        assert!(pieces.len() > 1);
        for p in &pieces {
            assert!(std::str::from_utf8(p).is_ok());
            assert!(p.len() + relay_overhead(9) + "PRIVMSG #c :\r\n".len() <= 512);
        }
        assert_eq!(pieces.concat(), text.as_bytes());
    }

    #[test]
    fn latin1_text_is_split_by_bytes() {
        let text = vec![0xe9u8; 1000];
        let pieces = split_text("PRIVMSG", b"#c", &text, 9, 512);
        assert_eq!(pieces.concat(), text);
    }
}
