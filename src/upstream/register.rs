//! Registration as a state machine: feed it the server's lines, send what it
//! returns, until it says done or failed. It does no I/O and keeps no clock;
//! the connection loop answers PINGs and enforces the deadlines.
//!
//! Order on the wire: `CAP LS 302`, `NICK`, `USER` at once (a CAP-aware server
//! holds registration until `CAP END`; an old one ignores CAP). Then `CAP REQ`
//! for offered ∩ wanted, SASL if acknowledged and configured, `CAP END`; 433
//! and 432 are answered with another nick; 005s are collected; 376/422 end it.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use bytes::Bytes;

use super::classify::{classify_numeric, Failure, Kind};
use super::Registration;
use crate::irc::{Command, ISupport, Message, Numeric};
use crate::store::Sasl;

/// How many times 433 may send us to another nick before we give up on this connection.
const MAX_NICK_ATTEMPTS: u32 = 6;
/// How many times a 432 may shorten our nick.
const MAX_SHORTEN: u32 = 2;
/// NICKLEN assumed when a 432 arrives before any ISUPPORT (ngircd's default).
const DEFAULT_NICKLEN: usize = 9;
/// SASL payloads go in chunks of this many base64 bytes.
const SASL_CHUNK: usize = 400;
/// Keep each `CAP REQ` line comfortably under 512 bytes.
const CAP_REQ_MAX: usize = 400;

/// What happened after one line.
#[derive(Debug)]
pub enum Progress {
    Continue,
    Done(Box<Registration>),
    Failed(Failure),
}

#[derive(Debug, PartialEq, Eq)]
enum Sasl_ {
    NotStarted,
    Started,
    Done,
}

#[derive(Debug)]
pub struct Registrar {
    wanted: Vec<String>,
    sasl: Option<Sasl>,
    /// Offered capabilities with their values (`sasl=PLAIN,EXTERNAL`).
    offered: BTreeMap<String, Option<String>>,
    ls_done: bool,
    pending_reqs: usize,
    acked: BTreeSet<String>,
    cap_ended: bool,
    sasl_state: Sasl_,
    account: Option<Vec<u8>>,
    nick: Vec<u8>,
    nick_attempts: u32,
    shortened: u32,
    /// The nick length limit we learned from a 432 (or ISUPPORT).
    nick_limit: Option<usize>,
    welcomed: bool,
    saw_isupport: bool,
    isupport: ISupport,
    server_name: Vec<u8>,
    user_modes: Vec<u8>,
}

impl Registrar {
    /// Creates the registrar and returns the opening lines.
    pub fn start(
        nick: &str,
        username: &str,
        realname: &str,
        wanted: &[String],
        sasl: Option<Sasl>,
    ) -> (Registrar, Vec<Message>) {
        let r = Registrar {
            wanted: wanted.to_vec(),
            sasl,
            offered: BTreeMap::new(),
            ls_done: false,
            pending_reqs: 0,
            acked: BTreeSet::new(),
            cap_ended: false,
            sasl_state: Sasl_::NotStarted,
            account: None,
            nick: nick.as_bytes().to_vec(),
            nick_attempts: 0,
            shortened: 0,
            nick_limit: None,
            welcomed: false,
            saw_isupport: false,
            isupport: ISupport::default(),
            server_name: Vec::new(),
            user_modes: Vec::new(),
        };
        let username = if username.is_empty() { nick } else { username };
        let realname = if realname.is_empty() { nick } else { realname };
        let lines = vec![
            Message::new(Command::Cap, ["LS", "302"]),
            Message::new(Command::Nick, [Bytes::copy_from_slice(nick.as_bytes())]),
            Message::new(
                Command::User,
                [
                    Bytes::copy_from_slice(username.as_bytes()),
                    Bytes::from_static(b"0"),
                    Bytes::from_static(b"*"),
                    Bytes::copy_from_slice(realname.as_bytes()),
                ],
            ),
        ];
        (r, lines)
    }

    /// True once 001 arrived: from then on a quiet server may end registration.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Ends registration without 376/422 (the server sent no MOTD numerics).
    pub fn finish(&mut self) -> Registration {
        Registration {
            nick: self.nick.clone(),
            isupport: self.isupport.clone(),
            caps: self.acked.clone(),
            server_name: self.server_name.clone(),
            user_modes: self.user_modes.clone(),
            account: self.account.clone(),
        }
    }

    /// Handles one line from the server; `out` receives the lines to send.
    pub fn handle(&mut self, msg: &Message, out: &mut Vec<Message>) -> Progress {
        match &msg.command {
            Command::Cap => self.on_cap(msg, out),
            Command::Authenticate => self.on_authenticate(msg, out),
            Command::Numeric(n) => return self.on_numeric(*n, msg, out),
            _ => {}
        }
        Progress::Continue
    }

    fn on_numeric(&mut self, n: Numeric, msg: &Message, out: &mut Vec<Message>) -> Progress {
        if let Some(kind) = classify_numeric(n, self.sasl.is_some()) {
            let text = msg.params.last().map(|p| &p[..]).unwrap_or_default();
            let mut f = Failure::from_text(text);
            f.kind = kind;
            f.reason = format!("{n} {}", f.reason);
            return Progress::Failed(f);
        }
        match n {
            Numeric::RPL_LOGGEDIN => {
                self.account = msg.param(2).map(<[u8]>::to_vec);
            }
            Numeric::RPL_SASLSUCCESS => {
                self.sasl_state = Sasl_::Done;
                self.end_cap(out);
            }
            Numeric::ERR_SASLFAIL
            | Numeric::ERR_SASLTOOLONG
            | Numeric::ERR_SASLABORTED
            | Numeric::ERR_SASLALREADY => {
                // Only reached without configured credentials (see classify_numeric).
                self.sasl_state = Sasl_::Done;
                self.end_cap(out);
            }
            Numeric::ERR_NICKNAMEINUSE
            | Numeric::ERR_NICKCOLLISION
            | Numeric::ERR_UNAVAILRESOURCE
                if !self.welcomed =>
            {
                return self.on_nick_in_use(out);
            }
            Numeric::ERR_ERRONEUSNICKNAME if !self.welcomed => return self.on_erroneous_nick(out),
            Numeric::RPL_WELCOME => {
                self.welcomed = true;
                if let Some(n) = msg.param(0) {
                    self.nick = n.to_vec();
                }
            }
            Numeric::RPL_MYINFO => {
                self.server_name = msg.param(1).unwrap_or_default().to_vec();
                self.user_modes = msg.param(3).unwrap_or_default().to_vec();
            }
            Numeric::RPL_ISUPPORT if msg.params.len() >= 2 => {
                self.saw_isupport = true;
                let tokens = &msg.params[1..msg.params.len() - 1];
                self.isupport.apply(tokens.iter().map(|t| &t[..]));
            }
            Numeric::RPL_ENDOFMOTD | Numeric::ERR_NOMOTD if self.welcomed => {
                return Progress::Done(Box::new(self.finish()));
            }
            _ => {}
        }
        Progress::Continue
    }

    fn on_cap(&mut self, msg: &Message, out: &mut Vec<Message>) {
        let sub = msg.param_str(1).unwrap_or_default().to_ascii_uppercase();
        let list = msg.params.last().map(|p| &p[..]).unwrap_or_default();
        // `CAP * LS * :…` continues; the last LS line has no `*`.
        let more = msg.params.len() >= 4 && msg.param(2) == Some(b"*");
        match sub.as_str() {
            "LS" if !self.ls_done => {
                for (name, value) in cap_tokens(list) {
                    self.offered.insert(name, value);
                }
                if !more {
                    self.ls_done = true;
                    self.request_caps(out);
                }
            }
            "ACK" => {
                for (name, _) in cap_tokens(list) {
                    match name.strip_prefix('-') {
                        Some(removed) => {
                            self.acked.remove(removed);
                        }
                        None => {
                            self.acked
                                .insert(name.trim_start_matches(['~', '=']).to_owned());
                        }
                    }
                }
                if !more {
                    self.req_answered(out);
                }
            }
            "NAK" if !more => self.req_answered(out),
            _ => {}
        }
    }

    fn request_caps(&mut self, out: &mut Vec<Message>) {
        let want: Vec<&str> = self
            .wanted
            .iter()
            .filter(|c| self.offered.contains_key(c.as_str()))
            .filter(|c| c.as_str() != "sasl" || self.sasl_usable())
            .map(String::as_str)
            .collect();
        for line in cap_req_lines(&want) {
            out.push(Message::new(Command::Cap, ["REQ".to_owned(), line]));
            self.pending_reqs += 1;
        }
        if self.pending_reqs == 0 {
            self.end_cap(out);
        }
    }

    /// SASL is requested only when configured and (if the server lists
    /// mechanisms) our mechanism is among them.
    fn sasl_usable(&self) -> bool {
        let Some(sasl) = &self.sasl else {
            return false;
        };
        match self.offered.get("sasl") {
            Some(Some(mechs)) if !mechs.is_empty() => mechs
                .split(',')
                .any(|m| m.eq_ignore_ascii_case(mechanism(sasl))),
            _ => true,
        }
    }

    fn req_answered(&mut self, out: &mut Vec<Message>) {
        self.pending_reqs = self.pending_reqs.saturating_sub(1);
        if self.pending_reqs > 0 || self.cap_ended {
            return;
        }
        match &self.sasl {
            Some(sasl) if self.acked.contains("sasl") && self.sasl_state == Sasl_::NotStarted => {
                self.sasl_state = Sasl_::Started;
                out.push(Message::new(Command::Authenticate, [mechanism(sasl)]));
            }
            _ => self.end_cap(out),
        }
    }

    fn on_authenticate(&mut self, msg: &Message, out: &mut Vec<Message>) {
        if self.sasl_state != Sasl_::Started || msg.param(0) != Some(b"+") {
            return;
        }
        let payload = match &self.sasl {
            Some(Sasl::Plain { username, password }) => {
                format!("\0{username}\0{password}").into_bytes()
            }
            _ => Vec::new(),
        };
        for chunk in sasl_chunks(&payload) {
            out.push(Message::new(Command::Authenticate, [chunk]));
        }
    }

    fn end_cap(&mut self, out: &mut Vec<Message>) {
        if !self.cap_ended {
            self.cap_ended = true;
            out.push(Message::new(Command::Cap, ["END"]));
        }
    }

    fn on_nick_in_use(&mut self, out: &mut Vec<Message>) -> Progress {
        self.nick_attempts += 1;
        if self.nick_attempts > MAX_NICK_ATTEMPTS {
            return Progress::Failed(Failure::temporary(format!(
                "nick {} and {MAX_NICK_ATTEMPTS} fallbacks are in use",
                crate::irc::decode(&self.nick)
            )));
        }
        self.nick = fallback_nick(&self.nick, self.nick_limit);
        out.push(Message::new(
            Command::Nick,
            [Bytes::from(self.nick.clone())],
        ));
        Progress::Continue
    }

    fn on_erroneous_nick(&mut self, out: &mut Vec<Message>) -> Progress {
        let limit = self.isupport.nicklen.unwrap_or(DEFAULT_NICKLEN);
        if self.shortened >= MAX_SHORTEN || self.nick.len() <= limit {
            return Progress::Failed(Failure {
                kind: Kind::Permanent,
                reason: format!(
                    "the server refuses the nick {}",
                    crate::irc::decode(&self.nick)
                ),
            });
        }
        self.shortened += 1;
        self.nick_limit = Some(limit);
        self.nick.truncate(limit);
        out.push(Message::new(
            Command::Nick,
            [Bytes::from(self.nick.clone())],
        ));
        Progress::Continue
    }
}

fn mechanism(sasl: &Sasl) -> &'static str {
    match sasl {
        Sasl::Plain { .. } => "PLAIN",
        Sasl::External { .. } => "EXTERNAL",
    }
}

/// Splits a capability list, ignoring empty tokens (InspIRCd's list ends with a space).
fn cap_tokens(list: &[u8]) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    list.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let t = String::from_utf8_lossy(t);
            match t.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (t.into_owned(), None),
            }
        })
}

/// Groups capability names into `CAP REQ` payloads that keep lines short.
fn cap_req_lines(caps: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for cap in caps {
        if !cur.is_empty() && cur.len() + 1 + cap.len() > CAP_REQ_MAX {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(cap);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Base64 of the payload in 400-byte chunks; `+` for an empty payload and
/// after a final chunk of exactly 400 bytes.
fn sasl_chunks(payload: &[u8]) -> Vec<String> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
    let mut chunks: Vec<String> = encoded
        .as_bytes()
        .chunks(SASL_CHUNK)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if encoded.len() % SASL_CHUNK == 0 {
        chunks.push("+".to_owned());
    }
    chunks
}

/// The next nick to try after a 433: append `_`, or, at the length limit,
/// turn the last character that is not `_` into one.
fn fallback_nick(nick: &[u8], limit: Option<usize>) -> Vec<u8> {
    let mut n = nick.to_vec();
    match limit {
        Some(limit) if n.len() >= limit => {
            n.truncate(limit);
            match n.iter().rposition(|&b| b != b'_') {
                Some(i) if i > 0 => n[i] = b'_',
                _ => n.push(b'_'),
            }
        }
        _ => n.push(b'_'),
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_tokens_skip_empty_ones() {
        let t: Vec<_> = cap_tokens(b"a  sasl=PLAIN,EXTERNAL b ").collect();
        assert_eq!(
            t,
            vec![
                ("a".to_owned(), None),
                ("sasl".to_owned(), Some("PLAIN,EXTERNAL".to_owned())),
                ("b".to_owned(), None)
            ]
        );
    }

    #[test]
    fn cap_req_lines_stay_short() {
        let names: Vec<String> = (0..100)
            .map(|i| format!("vendor.example/cap-{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let lines = cap_req_lines(&refs);
        assert!(lines.len() > 1);
        for l in &lines {
            let m = Message::new("CAP", ["REQ".to_owned(), l.clone()]);
            assert!(m.body_len() < 510, "{}", m.body_len());
        }
        let joined: Vec<&str> = lines.iter().flat_map(|l| l.split(' ')).collect();
        assert_eq!(joined, refs);
    }

    #[test]
    fn sasl_chunking() {
        assert_eq!(sasl_chunks(b""), vec!["+"]);
        // 300 bytes → exactly 400 base64 bytes → one chunk and a `+`.
        let c = sasl_chunks(&[7u8; 300]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].len(), 400);
        assert_eq!(c[1], "+");
        let c = sasl_chunks(&[7u8; 301]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].len(), 4);
    }

    #[test]
    fn fallback_nicks() {
        assert_eq!(fallback_nick(b"ferry", None), b"ferry_");
        assert_eq!(fallback_nick(b"abcdefghi", Some(9)), b"abcdefgh_");
        assert_eq!(fallback_nick(b"abcdefgh_", Some(9)), b"abcdefg__");
        assert_eq!(fallback_nick(b"abc", Some(9)), b"abc_");
    }

    fn line(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn multiline_ls_then_req_ack_end() {
        let wanted: Vec<String> = super::super::WANTED_CAPS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (mut r, first) = Registrar::start("n", "u", "r", &wanted, None);
        assert_eq!(first.len(), 3);
        let mut out = Vec::new();
        r.handle(&line("CAP * LS * :multi-prefix sasl "), &mut out);
        assert!(out.is_empty());
        r.handle(&line("CAP * LS :server-time unknown "), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_bytes(), &b"CAP REQ :server-time multi-prefix"[..]);
        out.clear();
        r.handle(&line("CAP * ACK :server-time multi-prefix "), &mut out);
        assert_eq!(out[0].to_bytes(), &b"CAP END"[..]);
        r.handle(&line(":s 001 n :hi"), &mut out);
        r.handle(
            &line(":s 005 n CASEMAPPING=ascii NICKLEN=30 :are supported"),
            &mut out,
        );
        match r.handle(&line(":s 422 n :no motd"), &mut out) {
            Progress::Done(reg) => {
                assert_eq!(reg.caps.len(), 2);
                assert_eq!(reg.isupport.nicklen, Some(30));
            }
            p => panic!("{p:?}"),
        }
    }
}
