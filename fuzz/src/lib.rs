//! The checks behind Ferry's fuzz targets, one module per target.
//!
//! Each `fuzz_targets/NAME.rs` is a one-line `fuzz_target!` calling `NAME::run`;
//! the checks live here so the targets share their helpers. Every check panics
//! (which libFuzzer reports as a crash, with the input saved) when an invariant
//! does not hold. See `docs/fuzzing.md`.

pub mod codec;
pub mod message;
pub mod registration;
pub mod ws_command;

use bytes::Bytes;
use ferry::irc::Message;

/// The wire form of a message Ferry sends: never a bare CR, LF or NUL, and it
/// reads back as the message that was meant: one line, same command, prefix and
/// parameters — but for the documented replacement of CR, LF and NUL (by spaces
/// in the last parameter, by U+FFFD in a word). `what` names the sender.
pub fn assert_sendable(msg: &Message, what: &str) {
    let wire = msg.to_bytes();
    assert!(
        !wire.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)),
        "{what}: CR, LF or NUL on the wire: {wire:?}"
    );
    let back = Message::parse(wire.clone())
        .unwrap_or_else(|e| panic!("{what}: {wire:?} does not re-parse: {e}"));
    assert_eq!(
        back.command, msg.command,
        "{what}: command changed in {wire:?}"
    );
    let n = msg.params.len();
    let meant: Vec<Vec<u8>> = msg
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| cleaned(p, i + 1 == n))
        .collect();
    let got: Vec<Vec<u8>> = back.params.iter().map(|p| p.to_vec()).collect();
    assert_eq!(got, meant, "{what}: parameters changed in {wire:?}");
    assert_eq!(
        back.prefix.map(|p| p.to_vec()),
        msg.prefix.as_ref().map(|p| cleaned(p, false)),
        "{what}: prefix changed in {wire:?}"
    );
}

/// A parameter as the serialiser writes it.
fn cleaned(p: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for &b in p {
        match b {
            b'\r' | b'\n' | 0 if last => out.push(b' '),
            b'\r' | b'\n' | 0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
            b => out.push(b),
        }
    }
    out
}

/// `Bytes` from a slice, for the `Message::parse` entry point.
pub fn bytes(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}
