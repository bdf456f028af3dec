//! The wire codec: bytes → lines, with a bounded line length.
//!
//! Written by hand because `irc-proto`'s codec is not byte-faithful and has no
//! maximum line length (see `shared/IRC-NOTES.md`). A line longer than the limit
//! is reported as [`Frame::Overlong`] and discarded up to the next newline; it
//! never ends the stream. Decoding never returns an error for bad input, only
//! for I/O, because `FramedRead` ends the stream after the first error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::Message;

/// The largest line we accept by default: 8191 bytes of tags plus the
/// 512-byte message, excluding CRLF.
pub const MAX_LINE_LEN: usize = 8191 + 512;

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One line without its `\r\n` or `\n`. Never empty.
    Line(Bytes),
    /// A line longer than the limit was dropped; `len` counts the bytes seen
    /// before the decoder gave up on it (at least the limit).
    Overlong { len: usize },
}

#[derive(Debug, Clone)]
pub struct LineCodec {
    max_len: usize,
    /// Bytes already scanned for a newline, so a slow sender costs linear time.
    scanned: usize,
    /// True while skipping the rest of an overlong line.
    discarding: bool,
}

impl Default for LineCodec {
    fn default() -> Self {
        LineCodec::new(MAX_LINE_LEN)
    }
}

impl LineCodec {
    pub fn new(max_len: usize) -> LineCodec {
        LineCodec {
            max_len,
            scanned: 0,
            discarding: false,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            let newline = buf[self.scanned..].iter().position(|&b| b == b'\n');
            match (newline, self.discarding) {
                (Some(i), true) => {
                    buf.advance(self.scanned + i + 1);
                    self.scanned = 0;
                    self.discarding = false;
                }
                (None, true) => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (Some(i), false) => {
                    let end = self.scanned + i;
                    self.scanned = 0;
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max_len {
                        return Ok(Some(Frame::Overlong { len: line.len() }));
                    }
                    if line.iter().all(|&b| b == b' ' || b == b'\r') {
                        continue;
                    }
                    return Ok(Some(Frame::Line(line.freeze())));
                }
                (None, false) => {
                    // Allow one more byte for a CR before the LF.
                    if buf.len() > self.max_len + 1 {
                        let len = buf.len();
                        buf.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        return Ok(Some(Frame::Overlong { len }));
                    }
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // A last line without newline is still a line, under the same
                // rules as one with a newline (CR dropped, length limit, blank
                // skipped); leftovers of a discarded line are not.
                self.scanned = 0;
                if self.discarding || buf.is_empty() {
                    buf.clear();
                    self.discarding = false;
                    return Ok(None);
                }
                let mut line = buf.split();
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                if line.len() > self.max_len {
                    return Ok(Some(Frame::Overlong { len: line.len() }));
                }
                if line.iter().all(|&b| b == b' ' || b == b'\r') {
                    return Ok(None);
                }
                Ok(Some(Frame::Line(line.freeze())))
            }
        }
    }
}

impl Encoder<&Message> for LineCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: &Message, buf: &mut BytesMut) -> Result<(), std::io::Error> {
        buf.reserve(msg.len_hint() + 2);
        msg.write_to(buf);
        buf.put_slice(b"\r\n");
        Ok(())
    }
}

impl Encoder<Message> for LineCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: Message, buf: &mut BytesMut) -> Result<(), std::io::Error> {
        self.encode(&msg, buf)
    }
}

/// Raw bytes pass through unchanged apart from the CRLF the codec adds; CR
/// and LF inside are replaced so that one item is exactly one line.
impl Encoder<Bytes> for LineCodec {
    type Error = std::io::Error;

    fn encode(&mut self, line: Bytes, buf: &mut BytesMut) -> Result<(), std::io::Error> {
        buf.reserve(line.len() + 2);
        let start = buf.len();
        buf.put_slice(&line);
        // One copy, then a pass the compiler vectorises (a byte at a time through
        // `put_u8` was a tenth of a client task's CPU).
        for b in &mut buf[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        buf.put_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut LineCodec, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s))
    }

    #[test]
    fn splits_crlf_and_bare_lf_and_skips_empty_lines() {
        let mut c = LineCodec::default();
        let frames = decode_all(&mut c, b"a\r\n\r\nb\n\nc");
        assert_eq!(frames, vec![line(b"a"), line(b"b"), line(b"c")]);
    }

    #[test]
    fn overlong_line_is_reported_and_skipped() {
        let mut c = LineCodec::new(10);
        let mut input = vec![b'x'; 25];
        input.extend_from_slice(b"\r\nok\r\n");
        let frames = decode_all(&mut c, &input);
        assert!(matches!(frames[0], Frame::Overlong { .. }));
        assert_eq!(frames[1..], [line(b"ok")]);
    }

    #[test]
    fn overlong_line_split_across_reads() {
        let mut c = LineCodec::new(10);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in [&b"xxxxxxxx"[..], b"xxxxxxxx", b"xxxx\nfine\n"] {
            buf.extend_from_slice(chunk);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0], Frame::Overlong { .. }));
        assert_eq!(out[1], line(b"fine"));
    }

    #[test]
    fn line_at_the_limit_is_kept() {
        let mut c = LineCodec::new(10);
        let frames = decode_all(&mut c, b"0123456789\r\n");
        assert_eq!(frames, vec![line(b"0123456789")]);
    }

    /// Found by the `codec` fuzz target: the last line of a stream without its
    /// LF kept a trailing CR and could be one byte over the limit.
    #[test]
    fn last_line_without_newline_follows_the_line_rules() {
        let mut c = LineCodec::new(10);
        assert_eq!(decode_all(&mut c, b"P e\r"), vec![line(b"P e")]);
        let mut c = LineCodec::new(10);
        assert_eq!(decode_all(&mut c, b" \r"), vec![]);
        let mut c = LineCodec::new(10);
        assert_eq!(
            decode_all(&mut c, b"0123456789\r"),
            vec![line(b"0123456789")]
        );
        let mut c = LineCodec::new(10);
        let frames = decode_all(&mut c, b"0123456789A");
        assert!(
            matches!(frames[..], [Frame::Overlong { len: 11 }]),
            "{frames:?}"
        );
    }

    proptest! {
        /// No input makes the codec or the parser panic, every line is
        /// within the limit and no frame contains a line break.
        #[test]
        fn never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut c = LineCodec::new(32);
            let mut buf = BytesMut::new();
            for chunk in &chunks {
                buf.extend_from_slice(chunk);
                while let Some(f) = c.decode(&mut buf).unwrap() {
                    if let Frame::Line(l) = f {
                        prop_assert!(l.len() <= 32);
                        prop_assert!(!l.contains(&b'\n'));
                        if let Ok(m) = Message::parse(l) {
                            let again = Message::parse(m.to_bytes()).unwrap();
                            prop_assert_eq!(again.command, m.command);
                        }
                    }
                }
            }
        }

        /// Serialising and parsing a message built from arbitrary bytes
        /// gives back the same parameters (modulo CR/LF/NUL replacement).
        #[test]
        fn roundtrip_params(params in proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..20), 0..5), last in proptest::collection::vec(any::<u8>(), 0..20)) {
            let clean = |p: &[u8]| -> Vec<u8> { p.iter().map(|&b| if b == b'\r' || b == b'\n' || b == 0 { b' ' } else { b }).collect() };
            let mut ps: Vec<Bytes> = params.iter()
                .map(|p| { let mut p = clean(p); p.retain(|&b| b != b' '); if p.is_empty() || p[0] == b':' { p.insert(0, b'x'); } Bytes::from(p) })
                .collect();
            ps.push(Bytes::from(clean(&last)));
            let m = Message { tags: vec![], prefix: None, command: "PRIVMSG".into(), params: ps.clone() };
            let parsed = Message::parse(m.to_bytes()).unwrap();
            // An empty trailing parameter is still present after a round trip.
            prop_assert_eq!(parsed.params, ps);
        }
    }
}
