//! `irc::Message`: parsing never panics; serialising a parsed message never emits
//! CR, LF or NUL, keeps its shape (command, number of parameters, prefix, tags),
//! is a fixed point after one round, and gives back the same message when the line
//! was canonical (no CR, LF or NUL in it).

use ferry::irc::{Message, Tag};

pub fn run(data: &[u8]) {
    let Ok(m) = Message::parse(crate::bytes(data)) else {
        return;
    };
    // The read-side helpers never panic either.
    let _ = m.to_string();
    let _ = m.body_len();
    let _ = m.source_nick();
    for i in 0..=m.params.len() {
        let _ = m.param_str(i);
    }

    let wire = m.to_bytes();
    assert!(
        !wire.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)),
        "CR, LF or NUL on the wire: {wire:?}"
    );
    let back =
        Message::parse(wire.clone()).unwrap_or_else(|e| panic!("{wire:?} does not re-parse: {e}"));
    assert_eq!(back.command, m.command, "command changed: {wire:?}");
    assert_eq!(
        back.params.len(),
        m.params.len(),
        "parameter count changed: {wire:?}"
    );
    assert_eq!(
        back.prefix.is_some(),
        m.prefix.is_some(),
        "prefix appeared or vanished: {wire:?}"
    );
    assert_eq!(back.tags.len(), m.tags.len(), "tag count changed: {wire:?}");
    assert_eq!(back.to_bytes(), wire, "serialising is not a fixed point");

    let canonical = !data.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0));
    if canonical {
        assert_eq!(normal(&back), normal(&m), "round trip changed {wire:?}");
    }
}

/// A tag without value and a tag with an empty value mean the same (IRCv3).
fn normal(m: &Message) -> Message {
    let mut m = m.clone();
    m.tags = m
        .tags
        .iter()
        .map(|t| Tag {
            key: t.key.clone(),
            value: t.value.clone().filter(|v| !v.is_empty()),
        })
        .collect();
    m
}
