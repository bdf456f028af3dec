//! One IRC message: tags, prefix, command and parameters, with parameters as bytes.
//!
//! Parsing follows "check, then parse": it works on a complete line (the codec
//! has already found the line end), never panics and never reads past the input.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Command;

/// A message tag: key (with its optional `+` client prefix and vendor) and
/// unescaped value. Tag values are UTF-8 by specification; invalid bytes are
/// replaced rather than rejected so one bad tag never drops a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
}

/// A parsed IRC line. `raw`-level fidelity is kept in `params`: they are the
/// exact bytes from the wire.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    pub tags: Vec<Tag>,
    /// The source without its leading `:`, e.g. `nick!user@host` or a server name.
    pub prefix: Option<Bytes>,
    /// The command (`PRIVMSG`, `001`, …), resolved once when the line is parsed.
    pub command: Command,
    pub params: Vec<Bytes>,
}

/// Why a line is not a message. The caller counts and skips such lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty line")]
    Empty,
    #[error("line has tags or a prefix but no command")]
    NoCommand,
    #[error("command is not a word or a three-digit numeric")]
    BadCommand,
}

impl Message {
    /// A message with no tags and no prefix. The command is a [`Command`] or its
    /// text (any case).
    pub fn new<C, I, P>(command: C, params: I) -> Message
    where
        C: Into<Command>,
        I: IntoIterator<Item = P>,
        P: Into<Bytes>,
    {
        Message {
            tags: Vec::new(),
            prefix: None,
            command: command.into(),
            params: params.into_iter().map(Into::into).collect(),
        }
    }

    /// Sets the prefix (builder style).
    pub fn with_prefix(mut self, prefix: impl Into<Bytes>) -> Message {
        self.prefix = Some(prefix.into());
        self
    }

    /// Sets or replaces a tag (builder style).
    pub fn with_tag(mut self, key: &str, value: Option<&str>) -> Message {
        self.set_tag(key, value);
        self
    }

    pub fn set_tag(&mut self, key: &str, value: Option<&str>) {
        let value = value.map(str::to_owned);
        match self.tags.iter_mut().find(|t| t.key == key) {
            Some(t) => t.value = value,
            None => self.tags.push(Tag {
                key: key.to_owned(),
                value,
            }),
        }
    }

    pub fn remove_tag(&mut self, key: &str) {
        self.tags.retain(|t| t.key != key);
    }

    /// The value of a tag; `Some("")` for a tag present without value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_deref().unwrap_or(""))
    }

    pub fn param(&self, i: usize) -> Option<&[u8]> {
        self.params.get(i).map(|p| &p[..])
    }

    /// A parameter decoded for display: UTF-8, else Latin-1.
    pub fn param_str(&self, i: usize) -> Option<Cow<'_, str>> {
        self.param(i).map(decode)
    }

    /// The nick part of the prefix (`nick` of `nick!user@host`).
    pub fn source_nick(&self) -> Option<&[u8]> {
        let p = self.prefix.as_deref()?;
        let end = p
            .iter()
            .position(|&b| b == b'!' || b == b'@')
            .unwrap_or(p.len());
        Some(&p[..end])
    }

    /// Parses one line without its line ending.
    ///
    /// # Errors
    /// Returns a [`ParseError`] for empty lines and lines without a valid command.
    pub fn parse(line: Bytes) -> Result<Message, ParseError> {
        let mut pos = 0;
        let len = line.len();
        let skip_spaces = |pos: &mut usize| {
            while *pos < len && line[*pos] == b' ' {
                *pos += 1;
            }
        };
        let word_end = |from: usize| {
            line[from..]
                .iter()
                .position(|&b| b == b' ')
                .map_or(len, |i| from + i)
        };

        skip_spaces(&mut pos);
        if pos == len {
            return Err(ParseError::Empty);
        }
        let mut tags = Vec::new();
        if line[pos] == b'@' {
            let end = word_end(pos);
            tags = parse_tags(&line[pos + 1..end]);
            pos = end;
            skip_spaces(&mut pos);
        }
        let mut prefix = None;
        if pos < len && line[pos] == b':' {
            let end = word_end(pos);
            prefix = Some(line.slice(pos + 1..end));
            pos = end;
            skip_spaces(&mut pos);
        }
        if pos == len {
            return Err(ParseError::NoCommand);
        }
        let end = word_end(pos);
        let command = &line[pos..end];
        if !command.iter().all(u8::is_ascii_alphanumeric) {
            return Err(ParseError::BadCommand);
        }
        let command = Command::parse(command);
        pos = end;

        let mut params = Vec::new();
        loop {
            skip_spaces(&mut pos);
            if pos >= len {
                break;
            }
            if line[pos] == b':' {
                params.push(line.slice(pos + 1..len));
                break;
            }
            let end = word_end(pos);
            params.push(line.slice(pos..end));
            pos = end;
        }
        Ok(Message {
            tags,
            prefix,
            command,
            params,
        })
    }

    /// Serialises the message without line ending. We never emit a bare CR, LF
    /// or NUL, and never change the message's shape: in the last parameter they
    /// become spaces (and the parameter is written as a trailing one); in a tag
    /// key, the prefix or a middle parameter, where a space would split the word,
    /// they become U+FFFD.
    pub fn write_to(&self, out: &mut BytesMut) {
        if !self.tags.is_empty() {
            out.put_u8(b'@');
            for (i, tag) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b';');
                }
                put_word(out, tag.key.as_bytes());
                if let Some(v) = &tag.value {
                    // NULs are dropped from values: a value of only NULs is empty.
                    if v.bytes().any(|b| b != 0) {
                        out.put_u8(b'=');
                        escape_tag_value(out, v);
                    }
                }
            }
            out.put_u8(b' ');
        }
        if let Some(p) = &self.prefix {
            out.put_u8(b':');
            put_word(out, p);
            out.put_u8(b' ');
        }
        out.put_slice(self.command.as_str().as_bytes());
        let n = self.params.len();
        for (i, p) in self.params.iter().enumerate() {
            out.put_u8(b' ');
            let last = i + 1 == n;
            if !last {
                put_word(out, p);
                continue;
            }
            if p.is_empty()
                || p[0] == b':'
                || p.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0))
            {
                out.put_u8(b':');
            }
            put_clean(out, p);
        }
    }

    /// The serialised line without CRLF.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len_hint());
        self.write_to(&mut out);
        out.freeze()
    }

    /// About the serialised length (exact unless tag values need escaping), so
    /// serialising allocates once.
    pub(crate) fn len_hint(&self) -> usize {
        let tags: usize = self
            .tags
            .iter()
            .map(|t| t.key.len() + t.value.as_ref().map_or(0, |v| v.len() + 1) + 1)
            .sum();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() + 2);
        let params: usize = self.params.iter().map(|p| p.len() + 2).sum();
        tags + 1 + prefix + self.command.as_str().len() + params
    }

    /// Length in bytes of the serialised message without tags and CRLF: what
    /// counts against the 512-byte limit.
    pub fn body_len(&self) -> usize {
        let mut m = self.clone();
        m.tags.clear();
        m.to_bytes().len()
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&decode(&self.to_bytes()))
    }
}

/// Whether `p` can be written as a middle parameter (or prefix) and read back as
/// itself: not empty, no space, CR, LF or NUL, no leading `:`. Anything a client
/// sent that Ferry echoes in such a place must pass this.
pub fn is_word(p: &[u8]) -> bool {
    !p.is_empty() && p[0] != b':' && !p.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0))
}

/// Decodes IRC bytes for display: UTF-8 when valid, else Latin-1.
pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
    }
}

/// Writes a trailing parameter: CR, LF and NUL become spaces.
fn put_clean(out: &mut BytesMut, bytes: &[u8]) {
    if !bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        out.put_slice(bytes);
        return;
    }
    for &b in bytes {
        out.put_u8(match b {
            b'\r' | b'\n' | 0 => b' ',
            b => b,
        });
    }
}

/// Writes one word (tag key, prefix, middle parameter): CR, LF and NUL become
/// U+FFFD, as a space would split the word in two.
fn put_word(out: &mut BytesMut, bytes: &[u8]) {
    if !bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        out.put_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\r' | b'\n' | 0 => out.put_slice("\u{FFFD}".as_bytes()),
            b => out.put_u8(b),
        }
    }
}

/// Parses a tag list written without its `@` (`a=1;b`), as the
/// `soju.im/bouncer-networks` attributes are: keys with unescaped values.
pub fn parse_tag_list(raw: &[u8]) -> Vec<Tag> {
    parse_tags(raw)
}

/// Writes tags as a tag list without its `@` (`a=1;b`), values escaped.
pub fn write_tag_list(tags: &[Tag]) -> String {
    let mut out = BytesMut::new();
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            out.put_u8(b';');
        }
        put_word(&mut out, t.key.as_bytes());
        if let Some(v) = &t.value {
            out.put_u8(b'=');
            escape_tag_value(&mut out, v);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_tags(raw: &[u8]) -> Vec<Tag> {
    raw.split(|&b| b == b';')
        // A tag needs a key: `@=v` or `@;` holds none.
        .filter(|t| !t.is_empty() && t[0] != b'=')
        .map(|t| {
            let (k, v) = match t.iter().position(|&b| b == b'=') {
                Some(i) => (&t[..i], Some(&t[i + 1..])),
                None => (t, None),
            };
            Tag {
                key: String::from_utf8_lossy(k).into_owned(),
                value: v.map(unescape_tag_value),
            }
        })
        .collect()
}

fn unescape_tag_value(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut it = v.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b':') => out.push(b';'),
            Some(b's') => out.push(b' '),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape_tag_value(out: &mut BytesMut, v: &str) {
    if !v
        .bytes()
        .any(|b| matches!(b, b';' | b' ' | b'\\' | b'\r' | b'\n' | 0))
    {
        out.put_slice(v.as_bytes());
        return;
    }
    for &b in v.as_bytes() {
        match b {
            b';' => out.put_slice(b"\\:"),
            b' ' => out.put_slice(b"\\s"),
            b'\\' => out.put_slice(b"\\\\"),
            b'\r' => out.put_slice(b"\\r"),
            b'\n' => out.put_slice(b"\\n"),
            0 => {}
            b => out.put_u8(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Message {
        Message::parse(Bytes::copy_from_slice(s)).unwrap()
    }

    #[test]
    fn parses_full_line() {
        let m = p(b"@time=2020-01-01T00:00:00.000Z;msgid=a\\sb :nick!u@h PRIVMSG #c :hello world");
        assert_eq!(m.tag("time"), Some("2020-01-01T00:00:00.000Z"));
        assert_eq!(m.tag("msgid"), Some("a b"));
        assert_eq!(m.source_nick(), Some(&b"nick"[..]));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.param(0), Some(&b"#c"[..]));
        assert_eq!(m.param(1), Some(&b"hello world"[..]));
    }

    #[test]
    fn keeps_invalid_utf8_bytes() {
        let m = p(b":a PRIVMSG #c :caf\xe9");
        assert_eq!(m.param(1), Some(&b"caf\xe9"[..]));
        assert_eq!(m.param_str(1).unwrap(), "café");
        assert_eq!(&m.to_bytes()[..], b":a PRIVMSG #c caf\xe9");
    }

    #[test]
    fn roundtrips_trailing_forms() {
        for line in [
            &b"PING :"[..],
            b"PRIVMSG #c ::)",
            b"PRIVMSG #c :a b",
            b"CAP * LS :a b ",
            b":srv 005 me CHANTYPES=# :are supported",
        ] {
            let m = p(line);
            assert_eq!(p(&m.to_bytes()), m, "{}", decode(line));
        }
    }

    #[test]
    fn tolerates_extra_spaces_and_lowercase() {
        let m = p(b"  :srv   privmsg   #c   x  ");
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Message::parse(Bytes::new()), Err(ParseError::Empty));
        assert_eq!(
            Message::parse(Bytes::from_static(b"   ")),
            Err(ParseError::Empty)
        );
        assert_eq!(
            Message::parse(Bytes::from_static(b":pre")),
            Err(ParseError::NoCommand)
        );
        assert_eq!(
            Message::parse(Bytes::from_static(b"@a=b")),
            Err(ParseError::NoCommand)
        );
        assert_eq!(
            Message::parse(Bytes::from_static(b"PRIV\xffMSG x")),
            Err(ParseError::BadCommand)
        );
    }

    /// Found by the `message` fuzz target: a CR, LF or NUL inside a word became a
    /// space on the way out, so a parameter became two (or a prefix became the
    /// command); in a last parameter without spaces it lost the trailing `:`.
    #[test]
    fn control_bytes_never_change_the_shape() {
        for line in [
            &b"QUIT a\0b c"[..],
            b"PRIVMSG #a\rb :hi",
            b":evil\rPRIVMSG TAGMSG #c",
            b"@+k\r:x!y@z\rPRIVMSG TAGMSG #c",
            b"PRIVMSG #c a\rb",
            b"PRIVMSG #c :\0",
        ] {
            let m = p(line);
            let out = m.to_bytes();
            assert!(!out.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
            let back = p(&out);
            assert_eq!(back.command, m.command, "{}", decode(line));
            assert_eq!(back.params.len(), m.params.len(), "{}", decode(line));
            assert_eq!(
                back.prefix.is_some(),
                m.prefix.is_some(),
                "{}",
                decode(line)
            );
            assert_eq!(back.tags.len(), m.tags.len(), "{}", decode(line));
        }
        assert_eq!(
            &p(b"QUIT a\0b c").to_bytes()[..],
            "QUIT a\u{FFFD}b c".as_bytes()
        );
        assert_eq!(&p(b"PRIVMSG #c a\rb").to_bytes()[..], b"PRIVMSG #c :a b");
        // Found by the `message` fuzz target: a tag without key vanished on the way out.
        assert_eq!(p(b"@a=1;=;=x X").tags.len(), 1);
        // A tag value of only NULs is written as no value, as it reads back.
        let m = p(b"@k=\\\0;j=v X");
        assert_eq!(m.tag("k"), Some("\0"));
        assert_eq!(&m.to_bytes()[..], b"@k;j=v X");
    }

    #[test]
    fn never_emits_line_breaks() {
        let m =
            Message::new("PRIVMSG", [&b"#c"[..], b"a\r\nQUIT :x"]).with_tag("k", Some("v;\r\n"));
        let out = m.to_bytes();
        assert!(!out.contains(&b'\r') && !out.contains(&b'\n'));
        assert_eq!(p(&out).tag("k"), Some("v;\r\n"));
    }
}
