//! IRC text formatting (bold, colours, …) removed, so that a nick split by a
//! colour code still matches and a push shows plain text.
//!
//! The codes are those of the modern IRC formatting conventions: `\x02` bold,
//! `\x1D` italic, `\x1F` underline, `\x1E` strikethrough, `\x11` monospace,
//! `\x16` reverse, `\x0F` reset, `\x03` colour with up to two digits and an
//! optional `,` plus up to two digits, `\x04` hex colour with six hex digits and
//! an optional `,` plus six more.

use std::borrow::Cow;

/// `text` without formatting codes (borrowed when it has none).
pub fn strip_formatting(text: &str) -> Cow<'_, str> {
    let is_code = |b: u8| {
        matches!(
            b,
            0x02 | 0x03 | 0x04 | 0x0F | 0x11 | 0x16 | 0x1D | 0x1E | 0x1F
        )
    };
    if !text.bytes().any(is_code) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied_from = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !is_code(b) {
            i += 1;
            continue;
        }
        out.push_str(&text[copied_from..i]);
        i += 1;
        match b {
            0x03 => i = skip_colour(bytes, i, 2, |c| c.is_ascii_digit()),
            0x04 => i = skip_colour(bytes, i, 6, |c| c.is_ascii_hexdigit()),
            _ => {}
        }
        copied_from = i;
    }
    out.push_str(&text[copied_from..]);
    Cow::Owned(out)
}

/// Skips a colour's `fg[,bg]` after its code byte; `width` digits at most each.
/// A comma is part of the code only when a background digit follows it.
fn skip_colour(bytes: &[u8], start: usize, width: usize, digit: fn(&u8) -> bool) -> usize {
    let run = |from: usize| {
        bytes[from.min(bytes.len())..]
            .iter()
            .take(width)
            .take_while(|b| digit(b))
            .count()
    };
    let fg = run(start);
    let mut i = start + fg;
    if fg > 0 && bytes.get(i) == Some(&b',') {
        let bg = run(i + 1);
        if bg > 0 {
            i += 1 + bg;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::strip_formatting as strip;

    #[test]
    fn strips_every_code() {
        assert_eq!(strip("plain"), "plain");
        assert!(matches!(strip("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            strip("\x02bold\x02 \x1Dit\x1D \x1Fu\x1F \x1Es\x1E \x11m\x11 \x16r\x0F"),
            "bold it u s m r"
        );
        assert_eq!(strip("\x0304red\x03 \x034,12on blue\x03"), "red on blue");
        assert_eq!(
            strip("\x03,5 no fg means the comma stays"),
            ",5 no fg means the comma stays"
        );
        assert_eq!(
            strip("\x0312,text"),
            ",text",
            "a comma without digits is text"
        );
        assert_eq!(strip("\x03123"), "3", "two digits at most");
        assert_eq!(strip("\x04FF00aaalice\x04"), "alice");
        assert_eq!(strip("\x04ff0000,00ff00both"), "both");
        assert_eq!(strip("al\x02i\x02ce"), "alice");
        assert_eq!(strip("é\x0304ü\x03"), "éü");
        assert_eq!(strip("\x03"), "");
        assert_eq!(strip("\x0304,"), ",");
    }
}
