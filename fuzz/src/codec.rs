//! `irc::LineCodec`: the same bytes give the same frames however they are split
//! into reads, and the frames follow a simple model of the line rules.
//!
//! Input: byte 0 picks the line limit (below 128: the real `MAX_LINE_LEN`; else a
//! small limit, 1–128, so overlong lines are cheap to reach); byte 1 seeds the
//! read sizes; the rest is the stream.

use bytes::{Bytes, BytesMut};
use ferry::irc::{Frame, LineCodec, Message, MAX_LINE_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// A frame with the overlong length left out: where a decoder notices that a
/// line is too long depends on how it was read, and that is allowed to differ.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Line(Bytes),
    Overlong,
}

pub fn run(data: &[u8]) {
    let (limit, seed, stream) = match data {
        [a, b, rest @ ..] => (*a, *b, rest),
        _ => return,
    };
    let max_len = if limit < 128 {
        MAX_LINE_LEN
    } else {
        usize::from(limit - 128) + 1
    };

    let whole = decode(max_len, stream, &mut std::iter::once(stream.len()));
    let mut rng = u32::from(seed) | 0x100;
    let mut sizes = std::iter::from_fn(|| {
        // xorshift: read sizes 0..=2*max_len+2, skewed small.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let cap = if rng & 1 == 0 { 8 } else { 2 * max_len + 3 };
        Some((rng as usize >> 1) % cap)
    });
    let chunked = decode(max_len, stream, &mut sizes);
    assert_eq!(whole, chunked, "read boundaries changed the frames");
    assert_eq!(
        whole,
        model(max_len, stream),
        "frames differ from the line rules"
    );

    // What the codec writes is one line per item.
    let mut enc = LineCodec::new(max_len);
    for f in &whole {
        if let Seen::Line(line) = f {
            let mut out = BytesMut::new();
            enc.encode(line.clone(), &mut out).unwrap();
            assert!(out.ends_with(b"\r\n"));
            let body = &out[..out.len() - 2];
            assert!(!body.iter().any(|&b| b == b'\r' || b == b'\n'));
            if let Ok(m) = Message::parse(line.clone()) {
                let mut out = BytesMut::new();
                enc.encode(&m, &mut out).unwrap();
                assert!(out.ends_with(b"\r\n"));
                let body = &out[..out.len() - 2];
                assert!(!body.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
            }
        }
    }
}

/// Decodes `stream` fed in reads of the given sizes, then at end of stream.
fn decode(max_len: usize, stream: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Vec<Seen> {
    let mut codec = LineCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let push = |f: Frame, out: &mut Vec<Seen>| match f {
        Frame::Line(l) => {
            assert!(!l.is_empty(), "empty line frame");
            assert!(
                l.len() <= max_len,
                "line of {} over the limit {max_len}",
                l.len()
            );
            assert!(!l.contains(&b'\n'), "line frame with LF");
            assert!(
                !l.iter().all(|&b| b == b' ' || b == b'\r'),
                "blank line frame"
            );
            out.push(Seen::Line(l));
        }
        Frame::Overlong { len } => {
            assert!(
                len > max_len,
                "overlong frame of {len} within the limit {max_len}"
            );
            out.push(Seen::Overlong);
        }
    };
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            push(f, &mut out);
        }
        // Memory stays bounded while waiting for a line end.
        assert!(
            buf.len() <= max_len + 1,
            "{} bytes buffered, limit {max_len}",
            buf.len()
        );
    }
    while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
        push(f, &mut out);
    }
    out
}

/// The rules, written plainly: lines end at LF (a CR before it is dropped), the
/// end of the stream ends a last line, blank lines are skipped, a line longer than
/// the limit is one overlong frame.
fn model(max_len: usize, stream: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    if stream.last() == Some(&b'\n') || stream.is_empty() {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > max_len {
            out.push(Seen::Overlong);
        } else if !line.iter().all(|&b| b == b' ' || b == b'\r') {
            out.push(Seen::Line(Bytes::copy_from_slice(line)));
        }
    }
    out
}
