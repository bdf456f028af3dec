//! The decisions of registration (`CAP`, `PASS`, `NICK`, `USER`, SASL PLAIN), with no
//! I/O: a state machine that takes one client line at a time and says what to send,
//! which credentials to check, and when registration is over.
//!
//! `login::register` drives it over a socket and the store; the fuzz target
//! `fuzz/fuzz_targets/registration.rs` drives it with arbitrary lines and a fake
//! verifier. Keeping the decisions here means both exercise the same code.
//!
//! Credentials name the user, optionally the client (for its own backlog position)
//! and the network: `user[@client][/network]:password` in `PASS`,
//! `user[@client][/network]` as SASL PLAIN authcid.
//!
//! Invariants (checked by the fuzz target):
//! - registration completes only with a value the verifier returned for
//!   credentials it was asked to check ([`Registration::checked`] with `Ok`);
//! - a SASL PLAIN exchange is checked only after its last chunk (one shorter than
//!   400 bytes, or `+`), and never once the collected data passed 4096 bytes;
//! - every step sends a bounded number of lines.

use base64::Engine;
use bytes::Bytes;

use super::caps::{self, CapEffect, Caps};
use super::error::ProtoError;
use crate::irc::{numeric, Message};

/// What a client claims to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub client: Option<String>,
    pub network: Option<String>,
    pub password: String,
}

/// Parses `user[@client][/network]:password`. The password is everything
/// after the first `:` and may itself hold `:` and `/`.
pub fn parse_pass(pass: &str) -> Option<Credentials> {
    let (ident, password) = pass.split_once(':')?;
    parse_ident(ident, password)
}

/// Parses `user[@client][/network]` (a SASL authcid) with its password.
pub fn parse_ident(ident: &str, password: &str) -> Option<Credentials> {
    let (userpart, network) = match ident.split_once('/') {
        Some((u, n)) => (u, Some(n)),
        None => (ident, None),
    };
    let (user, client) = match userpart.split_once('@') {
        Some((u, c)) => (u, Some(c)),
        None => (userpart, None),
    };
    let nonempty = |s: &str| !s.is_empty();
    if !nonempty(user)
        || client.is_some_and(|c| !nonempty(c))
        || network.is_some_and(|n| !nonempty(n))
    {
        return None;
    }
    Some(Credentials {
        user: user.to_owned(),
        client: client.map(str::to_owned),
        network: network.map(str::to_owned),
        password: password.to_owned(),
    })
}

/// Parses a decoded SASL PLAIN message `authzid NUL authcid NUL password`.
/// An empty authcid falls back to the authzid.
pub fn parse_sasl_plain(data: &[u8]) -> Option<Credentials> {
    let mut parts = data.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    let ident = if authcid.is_empty() { authzid } else { authcid };
    parse_ident(ident, password)
}

/// Whether a nick can be written as one word of an IRC line: our replies put it
/// in a middle parameter and the user's actor may send it upstream. (The network
/// decides what else a nick may not contain.)
pub fn nick_fits(nick: &[u8]) -> bool {
    crate::irc::is_word(nick)
}

/// Why credentials were refused.
#[derive(Debug)]
pub enum LoginError {
    /// Unknown user or wrong password: the client must not learn which.
    Invalid,
    /// The user exists and the password is right, but the network does not
    /// name one of theirs (or none was given and they have several).
    UnknownNetwork { networks: Vec<String> },
    /// The login cannot be checked now; the client may retry later. The text is
    /// for the client (a login budget's wait, a busy hashing pool, or a generic
    /// "could not check"): a store error's own text is logged where it happens and
    /// never put here.
    Temporary(String),
}

impl LoginError {
    /// The text the connection is closed with (`ERROR :Closing link (…)`).
    pub fn close_reason(&self) -> String {
        match self {
            LoginError::Invalid => "invalid credentials".into(),
            LoginError::UnknownNetwork { networks } if networks.is_empty() => {
                "unknown network; you have no networks configured".into()
            }
            LoginError::UnknownNetwork { networks } => format!(
                "unknown network; log in as user/network with one of: {}",
                networks.join(", ")
            ),
            LoginError::Temporary(why) => format!("temporary failure, try again later: {why}"),
        }
    }
}

/// Why registration ended without a login: the `ERROR` text to close with.
pub type CloseReason = String;

/// The SASL payload a client may send, base64, before it is refused (`905`).
pub const SASL_MAX: usize = 4096;
/// A SASL chunk of exactly this many bytes means more chunks follow.
pub const SASL_CHUNK: usize = 400;

/// What a verified login exposes to registration: the account name for `900`.
pub trait Account {
    fn account(&self) -> &str;
}

/// The result of one step: lines to send, in order, then what to do next.
#[derive(Debug)]
pub struct Step<V> {
    pub out: Vec<Out>,
    pub next: Next<V>,
}

/// One thing to do on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Send(Message),
    /// Wait the login failure delay (slows down password guessing) before what follows.
    FailureDelay,
}

/// What the driver does after sending a step's lines.
#[derive(Debug)]
pub enum Next<V> {
    /// Read the next client line and pass it to [`Registration::line`].
    Read,
    /// Check these credentials and pass the outcome to [`Registration::checked`]
    /// before reading anything else.
    Verify(Credentials),
    /// Close the connection with this reason. The step's lines are sent best effort.
    Close(CloseReason),
    /// Registration is complete.
    Done(Done<V>),
}

/// A completed registration.
#[derive(Debug)]
pub struct Done<V> {
    /// What the verifier returned for the credentials that logged in.
    pub verified: V,
    /// The nick the client asked for (it may differ from ours upstream).
    pub nick: Bytes,
    pub caps: Caps,
    /// The network id given with `BOUNCER BIND` (`soju.im/bouncer-networks`), as sent.
    pub bind: Option<String>,
}

/// Which door the pending check came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Pass,
    Sasl,
}

/// The registration of one client connection.
#[derive(Debug)]
pub struct Registration<V> {
    /// Our server name, the prefix of our replies.
    server: String,
    nick: Option<Bytes>,
    user_given: bool,
    /// Between `CAP LS`/`REQ` and `CAP END`: registration waits.
    cap_negotiating: bool,
    caps: Caps,
    /// The last `PASS` (credentials with an empty user when it did not parse).
    pass: Option<Credentials>,
    /// `Some` while an `AUTHENTICATE PLAIN` exchange is collecting data.
    sasl_buf: Option<Vec<u8>>,
    /// A successful SASL login, used once `NICK`/`USER`/`CAP END` are in.
    sasl_done: Option<V>,
    /// The check the driver is running, if any.
    pending: Option<Door>,
    /// `BOUNCER BIND <netid>`: the network to bind the connection to.
    bind: Option<String>,
}

impl<V: Account> Registration<V> {
    pub fn new(server: &str) -> Registration<V> {
        Registration {
            server: server.to_owned(),
            nick: None,
            user_given: false,
            cap_negotiating: false,
            caps: Caps::default(),
            pass: None,
            sasl_buf: None,
            sasl_done: None,
            pending: None,
            bind: None,
        }
    }

    fn nick_str(&self) -> String {
        self.nick.as_ref().map_or_else(
            || "*".to_owned(),
            |n| String::from_utf8_lossy(n).into_owned(),
        )
    }

    fn reply(&self, e: ProtoError) -> Out {
        Out::Send(e.to_message(&self.server, &self.nick_str()))
    }

    fn numeric(&self, code: &str, params: Vec<String>) -> Out {
        let mut p = vec![self.nick_str()];
        p.extend(params);
        Out::Send(Message::new(code, p).with_prefix(self.server.clone()))
    }

    /// Handles one client line.
    ///
    /// # Panics
    /// In debug builds, if called while a [`Next::Verify`] is unanswered.
    pub fn line(&mut self, msg: &Message) -> Step<V> {
        debug_assert!(self.pending.is_none(), "a line during a credential check");
        let mut out = Vec::new();
        match msg.command.as_str() {
            "CAP" => {
                let nick = self.nick_str();
                let (replies, effect) = caps::handle(msg, &mut self.caps, &self.server, &nick);
                match effect {
                    CapEffect::Started => self.cap_negotiating = true,
                    CapEffect::Ended => self.cap_negotiating = false,
                    CapEffect::None => {}
                }
                out.extend(replies.into_iter().map(Out::Send));
            }
            "PASS" => match msg.param_str(0) {
                Some(p) => {
                    self.pass = Some(parse_pass(&p).unwrap_or(Credentials {
                        user: String::new(),
                        client: None,
                        network: None,
                        password: String::new(),
                    }))
                }
                None => out.push(self.reply(ProtoError::NeedMoreParams("PASS".into()))),
            },
            "NICK" => match msg.params.first().filter(|n| !n.is_empty()) {
                Some(n) if nick_fits(n) => self.nick = Some(n.clone()),
                // The refused nick is not echoed: it cannot be written as one word.
                Some(_) => out.push(self.numeric(
                    numeric::ERR_ERRONEUSNICKNAME,
                    vec!["*".to_owned(), "Erroneous nickname".to_owned()],
                )),
                None => out.push(self.numeric(
                    numeric::ERR_NONICKNAMEGIVEN,
                    vec!["No nickname given".to_owned()],
                )),
            },
            "USER" => {
                if msg.params.len() < 4 {
                    out.push(self.reply(ProtoError::NeedMoreParams("USER".into())));
                } else {
                    self.user_given = true;
                }
            }
            "AUTHENTICATE" => {
                if let Some(creds) = self.authenticate(msg, &mut out) {
                    self.pending = Some(Door::Sasl);
                    return Step {
                        out,
                        next: Next::Verify(creds),
                    };
                }
            }
            "BOUNCER" => match msg.param_str(0).map(|s| s.to_ascii_uppercase()) {
                Some(sub) if sub == "BIND" => match msg.param_str(1) {
                    Some(id) => self.bind = Some(id.into_owned()),
                    None => out.push(self.reply(ProtoError::NeedMoreParams("BOUNCER".into()))),
                },
                _ => out.push(self.reply(ProtoError::NotRegistered)),
            },
            "PING" => {
                let token = msg.params.first().cloned().unwrap_or_default();
                let pong = Message::new("PONG", [Bytes::from(self.server.clone()), token])
                    .with_prefix(self.server.clone());
                out.push(Out::Send(pong));
            }
            "QUIT" => {
                return Step {
                    out,
                    next: Next::Close("quit".into()),
                }
            }
            _ => out.push(self.reply(ProtoError::NotRegistered)),
        }
        self.complete(out)
    }

    /// One `AUTHENTICATE` step (SASL PLAIN only). Returns the credentials to check
    /// once the last chunk is in.
    fn authenticate(&mut self, msg: &Message, out: &mut Vec<Out>) -> Option<Credentials> {
        let Some(arg) = msg.param_str(0).map(|a| a.into_owned()) else {
            out.push(self.reply(ProtoError::NeedMoreParams("AUTHENTICATE".into())));
            return None;
        };
        if arg == "*" {
            self.sasl_buf = None;
            out.push(self.reply(ProtoError::SaslAborted));
            return None;
        }
        let Some(buf) = self.sasl_buf.as_mut() else {
            if self.sasl_done.is_some() {
                out.push(self.numeric(
                    numeric::ERR_SASLALREADY,
                    vec!["You have already authenticated".to_owned()],
                ));
            } else if arg.eq_ignore_ascii_case("PLAIN") {
                self.sasl_buf = Some(Vec::new());
                out.push(Out::Send(Message::new("AUTHENTICATE", ["+"])));
            } else {
                out.push(self.reply(ProtoError::SaslMechs));
                out.push(self.reply(ProtoError::SaslFail));
            }
            return None;
        };
        if arg != "+" {
            buf.extend_from_slice(arg.as_bytes());
        }
        if buf.len() > SASL_MAX {
            self.sasl_buf = None;
            out.push(self.reply(ProtoError::SaslTooLong));
            return None;
        }
        if arg.len() == SASL_CHUNK {
            return None;
        }
        let data = self.sasl_buf.take().unwrap_or_default();
        let creds = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .ok()
            .and_then(|d| parse_sasl_plain(&d));
        if creds.is_none() {
            out.push(Out::FailureDelay);
            out.push(self.reply(ProtoError::SaslFail));
        }
        creds
    }

    /// Whether a login without a network is a login: the client speaks
    /// `soju.im/bouncer-networks` (it may stay unbound, or bind with `BOUNCER BIND`,
    /// which may come after SASL).
    pub fn bouncer(&self) -> bool {
        self.bind.is_some() || self.caps.has(caps::BOUNCER_NETWORKS)
    }

    /// Whether the check asked for by [`Next::Verify`] came from SASL (else `PASS`).
    pub fn checking_sasl(&self) -> bool {
        self.pending == Some(Door::Sasl)
    }

    /// Takes the outcome of the check asked for by [`Next::Verify`].
    ///
    /// # Panics
    /// In debug builds, if no check was asked for.
    pub fn checked(&mut self, result: Result<V, LoginError>) -> Step<V> {
        debug_assert!(self.pending.is_some(), "an answer to no credential check");
        let door = self.pending.take();
        let mut out = Vec::new();
        if door != Some(Door::Sasl) {
            return match result {
                Ok(verified) => Step {
                    out,
                    next: Next::Done(self.done(verified)),
                },
                Err(e) => {
                    if matches!(e, LoginError::Invalid) {
                        out.push(Out::FailureDelay);
                        out.push(self.reply(ProtoError::PasswdMismatch));
                    }
                    Step {
                        out,
                        next: Next::Close(e.close_reason()),
                    }
                }
            };
        }
        match result {
            Ok(v) => {
                let account = v.account().to_owned();
                let nick = self.nick_str();
                let mask = format!("{nick}!{nick}@{}", self.server);
                out.push(self.numeric(
                    numeric::RPL_LOGGEDIN,
                    vec![
                        mask,
                        account.clone(),
                        format!("You are now logged in as {account}"),
                    ],
                ));
                self.sasl_done = Some(v);
                out.push(self.numeric(
                    numeric::RPL_SASLSUCCESS,
                    vec!["SASL authentication successful".to_owned()],
                ));
            }
            Err(LoginError::Invalid) => {
                out.push(Out::FailureDelay);
                out.push(self.reply(ProtoError::SaslFail));
            }
            Err(e) => {
                // Delayed like a failure, so a refused client cannot retry in a loop.
                out.push(Out::FailureDelay);
                let notice = Message::new("NOTICE", [self.nick_str(), e.close_reason()])
                    .with_prefix(self.server.clone());
                out.push(Out::Send(notice));
                out.push(self.reply(ProtoError::SaslFail));
            }
        }
        self.complete(out)
    }

    /// After each line: logs in once `NICK`, `USER` and any `CAP` or SASL
    /// exchange are done — with the SASL login if there is one, else with `PASS`.
    fn complete(&mut self, mut out: Vec<Out>) -> Step<V> {
        if self.nick.is_none()
            || !self.user_given
            || self.cap_negotiating
            || self.sasl_buf.is_some()
        {
            return Step {
                out,
                next: Next::Read,
            };
        }
        if let Some(verified) = self.sasl_done.take() {
            return Step {
                out,
                next: Next::Done(self.done(verified)),
            };
        }
        match &self.pass {
            Some(creds) if !creds.user.is_empty() => {
                self.pending = Some(Door::Pass);
                Step {
                    next: Next::Verify(creds.clone()),
                    out,
                }
            }
            _ => {
                out.push(Out::FailureDelay);
                out.push(self.reply(ProtoError::PasswdMismatch));
                Step {
                    out,
                    next: Next::Close(LoginError::Invalid.close_reason()),
                }
            }
        }
    }

    fn done(&mut self, verified: V) -> Done<V> {
        Done {
            verified,
            nick: self.nick.take().unwrap_or_default(),
            caps: std::mem::take(&mut self.caps),
            bind: self.bind.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_failure_says_when_to_retry() {
        let e = LoginError::Temporary("too many failed logins; retry in 3 s".into());
        assert_eq!(
            e.close_reason(),
            "temporary failure, try again later: too many failed logins; retry in 3 s"
        );
    }

    fn creds(user: &str, client: Option<&str>, network: Option<&str>, pw: &str) -> Credentials {
        Credentials {
            user: user.into(),
            client: client.map(Into::into),
            network: network.map(Into::into),
            password: pw.into(),
        }
    }

    #[derive(Debug, PartialEq)]
    struct Login(String);

    impl Account for Login {
        fn account(&self) -> &str {
            &self.0
        }
    }

    fn msg(line: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(line.as_bytes())).unwrap()
    }

    /// The lines a step sends, as text, with `~` for the failure delay.
    fn sent(step: &Step<Login>) -> Vec<String> {
        step.out
            .iter()
            .map(|o| match o {
                Out::Send(m) => m.to_string(),
                Out::FailureDelay => "~".to_owned(),
            })
            .collect()
    }

    fn feed(reg: &mut Registration<Login>, lines: &[&str]) -> Step<Login> {
        let (last, init) = lines.split_last().unwrap();
        for l in init {
            let step = reg.line(&msg(l));
            assert!(matches!(step.next, Next::Read), "{l}: {:?}", step.next);
        }
        reg.line(&msg(last))
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn pass_login_waits_for_nick_user_and_cap_end() {
        let mut reg = Registration::new("ferry");
        let step = feed(
            &mut reg,
            &[
                "CAP LS 302",
                "PASS alice/libera:pw",
                "NICK al",
                "USER a 0 * :A",
                "CAP END",
            ],
        );
        let Next::Verify(c) = step.next else {
            panic!("{:?}", step.next)
        };
        assert_eq!(c, creds("alice", None, Some("libera"), "pw"));
        let step = reg.checked(Ok(Login("alice".into())));
        let Next::Done(done) = step.next else {
            panic!("{:?}", step.next)
        };
        assert_eq!(done.verified, Login("alice".into()));
        assert_eq!(&done.nick[..], b"al");
        assert!(done.caps.has("cap-notify"));
    }

    #[test]
    fn wrong_or_missing_password_is_delayed_then_closes() {
        let mut reg = Registration::<Login>::new("ferry");
        let step = feed(&mut reg, &["NICK al", "USER a 0 * :A"]);
        assert_eq!(
            sent(&step),
            ["~", ":ferry 464 al :Invalid username or password"]
        );
        assert!(matches!(step.next, Next::Close(ref r) if r == "invalid credentials"));

        let mut reg = Registration::<Login>::new("ferry");
        let step = feed(&mut reg, &["PASS alice:x", "NICK al", "USER a 0 * :A"]);
        assert!(matches!(step.next, Next::Verify(_)));
        let step = reg.checked(Err(LoginError::Invalid));
        assert_eq!(
            sent(&step),
            ["~", ":ferry 464 al :Invalid username or password"]
        );
        assert!(matches!(step.next, Next::Close(_)));

        // Not the client's fault: no delay, no 464, the reason says why.
        let mut reg = Registration::<Login>::new("ferry");
        feed(&mut reg, &["PASS alice:x", "NICK al", "USER a 0 * :A"]);
        let step = reg.checked(Err(LoginError::UnknownNetwork {
            networks: vec!["libera".into()],
        }));
        assert!(step.out.is_empty());
        assert!(matches!(step.next, Next::Close(ref r) if r.contains("libera")));
    }

    #[test]
    fn sasl_plain_in_chunks() {
        let payload = format!("\0alice/libera\0{}", "p".repeat(400));
        let encoded = b64(payload.as_bytes());
        assert!(encoded.len() > SASL_CHUNK && encoded.len() < 2 * SASL_CHUNK);
        let (first, rest) = encoded.split_at(SASL_CHUNK);
        let mut reg = Registration::new("ferry");
        let step = feed(&mut reg, &["CAP REQ sasl", "NICK al", "AUTHENTICATE plain"]);
        assert_eq!(sent(&step), ["AUTHENTICATE +"]);
        // A 400-byte chunk means more follows: nothing is checked yet.
        let step = reg.line(&msg(&format!("AUTHENTICATE {first}")));
        assert!(step.out.is_empty() && matches!(step.next, Next::Read));
        let step = reg.line(&msg(&format!("AUTHENTICATE {rest}")));
        let Next::Verify(c) = step.next else {
            panic!("{:?}", step.next)
        };
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.len(), 400);
        let step = reg.checked(Ok(Login("alice".into())));
        assert_eq!(
            sent(&step),
            [
                ":ferry 900 al al!al@ferry alice :You are now logged in as alice",
                ":ferry 903 al :SASL authentication successful"
            ]
        );
        assert!(matches!(step.next, Next::Read));
        let step = reg.line(&msg("AUTHENTICATE PLAIN"));
        assert_eq!(
            sent(&step),
            [":ferry 907 al :You have already authenticated"]
        );
        // A wrong PASS afterwards does not matter: the SASL login is used.
        let step = feed(&mut reg, &["PASS nobody:x", "USER a 0 * :A", "CAP END"]);
        let Next::Done(done) = step.next else {
            panic!("{:?}", step.next)
        };
        assert_eq!(done.verified, Login("alice".into()));
    }

    #[test]
    fn sasl_exactly_400_bytes_ends_with_a_plus() {
        let mut pw = String::new();
        while b64(format!("\0alice\0{pw}").as_bytes()).len() != SASL_CHUNK {
            pw.push('x');
        }
        let encoded = b64(format!("\0alice\0{pw}").as_bytes());
        let mut reg = Registration::<Login>::new("ferry");
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let step = reg.line(&msg(&format!("AUTHENTICATE {encoded}")));
        assert!(matches!(step.next, Next::Read));
        let step = reg.line(&msg("AUTHENTICATE +"));
        assert!(matches!(step.next, Next::Verify(ref c) if c.password == pw));
    }

    #[test]
    fn sasl_refusals() {
        let mut reg = Registration::<Login>::new("ferry");
        let step = feed(&mut reg, &["AUTHENTICATE EXTERNAL"]);
        assert_eq!(
            sent(&step),
            [
                ":ferry 908 * PLAIN :are available SASL mechanisms",
                ":ferry 904 * :SASL authentication failed"
            ]
        );
        // Too long: refused without a check, however it goes on.
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let chunk = "A".repeat(SASL_CHUNK);
        for _ in 0..SASL_MAX / SASL_CHUNK {
            let step = reg.line(&msg(&format!("AUTHENTICATE {chunk}")));
            assert!(step.out.is_empty() && matches!(step.next, Next::Read));
        }
        let step = reg.line(&msg(&format!("AUTHENTICATE {chunk}")));
        assert_eq!(sent(&step), [":ferry 905 * :SASL message too long"]);
        let step = reg.line(&msg("AUTHENTICATE +"));
        assert!(matches!(step.next, Next::Read));
        // Not base64, or not PLAIN's three fields: delayed failure, no check.
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let step = reg.line(&msg("AUTHENTICATE %%%"));
        assert_eq!(
            sent(&step),
            ["~", ":ferry 904 * :SASL authentication failed"]
        );
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let step = reg.line(&msg(&format!("AUTHENTICATE {}", b64(b"alice"))));
        assert_eq!(
            sent(&step),
            ["~", ":ferry 904 * :SASL authentication failed"]
        );
        // Aborted.
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let step = reg.line(&msg("AUTHENTICATE *"));
        assert_eq!(sent(&step), [":ferry 906 * :SASL authentication aborted"]);
        // A wrong password: delayed 904, the connection stays.
        feed(&mut reg, &["AUTHENTICATE PLAIN"]);
        let step = reg.line(&msg(&format!("AUTHENTICATE {}", b64(b"\0alice\0x"))));
        assert!(matches!(step.next, Next::Verify(_)));
        let step = reg.checked(Err(LoginError::Invalid));
        assert_eq!(
            sent(&step),
            ["~", ":ferry 904 * :SASL authentication failed"]
        );
        assert!(matches!(step.next, Next::Read));
    }

    #[test]
    fn other_commands_before_registration() {
        let mut reg = Registration::<Login>::new("ferry");
        let step = feed(&mut reg, &["PING :tok"]);
        assert_eq!(sent(&step), [":ferry PONG ferry tok"]);
        let step = feed(&mut reg, &["JOIN #a"]);
        assert_eq!(sent(&step), [":ferry 451 * :You have not registered"]);
        let step = feed(&mut reg, &["NICK :"]);
        assert_eq!(sent(&step), [":ferry 431 * :No nickname given"]);
        let step = feed(&mut reg, &["USER a"]);
        assert_eq!(sent(&step), [":ferry 461 * USER :Not enough parameters"]);
        // Found by the `registration` fuzz target: a nick with a CR, a space or a
        // leading `:` broke every reply that names the client.
        for bad in ["NICK :a b", "NICK a\rb", "NICK ::x", "NICK a\0b"] {
            let step = feed(&mut reg, &[bad]);
            assert_eq!(sent(&step), [":ferry 432 * * :Erroneous nickname"], "{bad}");
        }
        let step = feed(&mut reg, &["NICK al", "JOIN #a"]);
        assert_eq!(sent(&step), [":ferry 451 al :You have not registered"]);
        let step = feed(&mut reg, &["QUIT :bye"]);
        assert!(matches!(step.next, Next::Close(ref r) if r == "quit"));
    }

    #[test]
    fn bouncer_bind_before_registration() {
        let mut reg = Registration::<Login>::new("ferry");
        let step = feed(
            &mut reg,
            &["CAP LS 302", "CAP REQ :soju.im/bouncer-networks"],
        );
        assert!(matches!(step.next, Next::Read));
        assert!(
            reg.bouncer(),
            "the capability allows a login with no network"
        );
        let step = feed(&mut reg, &["BOUNCER LISTNETWORKS"]);
        assert_eq!(sent(&step), [":ferry 451 * :You have not registered"]);
        let step = feed(&mut reg, &["BOUNCER BIND"]);
        assert_eq!(sent(&step), [":ferry 461 * BOUNCER :Not enough parameters"]);
        let step = feed(
            &mut reg,
            &[
                "PASS alice:pw",
                "NICK al",
                "USER a 0 * :A",
                "bouncer bind 42",
                "CAP END",
            ],
        );
        assert!(matches!(step.next, Next::Verify(ref c) if c.network.is_none()));
        let Next::Done(done) = reg.checked(Ok(Login("alice".into()))).next else {
            panic!("not done")
        };
        assert_eq!(done.bind.as_deref(), Some("42"));
        // Without the capability or a BIND, a login names its network as before.
        let reg = Registration::<Login>::new("ferry");
        assert!(!reg.bouncer());
    }

    #[test]
    fn pass_forms() {
        assert_eq!(
            parse_pass("alice/libera:pw"),
            Some(creds("alice", None, Some("libera"), "pw"))
        );
        assert_eq!(
            parse_pass("alice@laptop/libera:p:a/ss:"),
            Some(creds("alice", Some("laptop"), Some("libera"), "p:a/ss:"))
        );
        assert_eq!(
            parse_pass("alice:pw/x"),
            Some(creds("alice", None, None, "pw/x"))
        );
        assert_eq!(
            parse_pass("alice@phone:pw"),
            Some(creds("alice", Some("phone"), None, "pw"))
        );
        assert_eq!(
            parse_pass("alice/libera:"),
            Some(creds("alice", None, Some("libera"), ""))
        );
        assert_eq!(parse_pass("nocolon"), None);
        assert_eq!(parse_pass(":pw"), None);
        assert_eq!(parse_pass("alice/:pw"), None);
        assert_eq!(parse_pass("alice@/net:pw"), None);
    }

    #[test]
    fn sasl_plain_forms() {
        assert_eq!(
            parse_sasl_plain(b"\0alice@laptop/libera\0p:w/d"),
            Some(creds("alice", Some("laptop"), Some("libera"), "p:w/d"))
        );
        assert_eq!(
            parse_sasl_plain(b"alice/net\0\0pw"),
            Some(creds("alice", None, Some("net"), "pw"))
        );
        assert_eq!(parse_sasl_plain(b"\0alice/net"), None);
        assert_eq!(parse_sasl_plain(b"\0alice\0pw\0extra"), None);
    }
}
