//! The websocket command decoder (`http::ws::command`): `parse` never panics on
//! any text, and every IRC line built from a command is one well-formed line
//! (no CR, LF or NUL, reads back as itself: no second command, no shifted
//! parameter), with the target the client named.

use ferry::http::ws::command::{self, Command};
use ferry::irc::Message;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cmd = match command::parse(text) {
        Ok(cmd) => cmd,
        Err((_id, why)) => {
            assert!(!why.is_empty());
            return;
        }
    };
    let _ = cmd.id();
    let _ = cmd.network();
    // Whatever becomes IRC goes through `irc_lines`: each line it makes is one
    // well-formed line.
    if let Ok(lines) = command::irc_lines(&cmd) {
        for m in &lines {
            crate::assert_sendable(m, "websocket command");
        }
    }
    match cmd {
        Command::Send {
            buffer,
            text,
            action,
            notice,
            ..
        } => {
            if let Ok(lines) = command::send_lines(&buffer, &text, action, notice) {
                let max = text.split(['\n', '\r']).count();
                assert!(!lines.is_empty() && lines.len() <= max);
                for m in &lines {
                    sendable(m, &buffer);
                    let body = &m.params[1];
                    assert!(!body.is_empty(), "empty message text from {text:?}");
                }
            }
        }
        Command::Join { channel, key, .. } => {
            if let Ok(m) = command::join(&channel, key.as_deref()) {
                sendable(&m, &channel);
            }
        }
        Command::Part {
            channel, reason, ..
        } => {
            if let Ok(m) = command::part(&channel, reason.as_deref()) {
                sendable(&m, &channel);
            }
        }
        Command::Topic { channel, topic, .. } => {
            if let Ok(m) = command::topic(&channel, &topic) {
                sendable(&m, &channel);
                assert_eq!(m.params.len(), 2);
            }
        }
        Command::Nick { nick, .. } => {
            if let Ok(m) = command::nick(&nick) {
                sendable(&m, &nick);
            }
        }
        Command::Query { nick, .. } => {
            let ok = command::query_target(&nick).is_ok();
            assert_eq!(ok, command::nick(&nick).is_ok());
        }
        Command::Resume { .. }
        | Command::Detach { .. }
        | Command::Attach { .. }
        | Command::Read { .. }
        | Command::History { .. }
        | Command::Ping { .. }
        | Command::Focus { .. } => {}
        // Checked above, through `irc_lines`.
        Command::Whois { .. }
        | Command::Mode { .. }
        | Command::Kick { .. }
        | Command::Invite { .. }
        | Command::Away { .. }
        | Command::List { .. }
        | Command::Raw { .. } => {}
    }
}

/// One line, as meant, aimed at `target`.
fn sendable(m: &Message, target: &str) {
    crate::assert_sendable(m, "websocket command");
    assert_eq!(m.param(0), Some(target.as_bytes()), "target changed");
}
