//! The registration state machine of the IRC listener
//! (`downstream::registration::Registration`), driven the way `login::register`
//! drives it, with a fake credential store.
//!
//! Input: a client's byte stream (lines through the real `LineCodec` and
//! `Message::parse`, as the listener reads them). The fake store knows one
//! account, `alice` with password `secret`; network `gone` is unknown to her and
//! user `flaky` gets a temporary failure.
//!
//! Checked on every step:
//! - nothing panics, and each step sends a bounded number of lines, each one a
//!   well-formed line that reads back as itself;
//! - registration completes only with a value the store returned for a correct
//!   password, and only once NICK, USER and CAP END are in;
//! - SASL PLAIN: credentials are checked only after the last chunk of an exchange
//!   (an `AUTHENTICATE` argument other than 400 bytes long, or `+`), exactly as
//!   decoded from the chunks since `AUTHENTICATE PLAIN`; a payload over 4096 bytes
//!   is refused with 905 and never checked;
//! - a wrong password is always answered after the failure delay;
//! - the state machine asks for a check only with a non-empty user name.

use base64::Engine;
use bytes::BytesMut;
use ferry::downstream::registration::{
    nick_fits, parse_pass, parse_sasl_plain, Account, Credentials, LoginError, Next, Out,
    Registration, SASL_CHUNK, SASL_MAX,
};
use ferry::irc::{Frame, LineCodec, Message, MAX_LINE_LEN};
use tokio_util::codec::Decoder;

/// What the fake store hands back for a good login: a serial number, so a
/// completed registration can be traced to the check that allowed it.
#[derive(Debug)]
pub struct Login {
    serial: u32,
    account: String,
}

impl Account for Login {
    fn account(&self) -> &str {
        &self.account
    }
}

/// Most lines one step may send (a temporary SASL failure: NOTICE, 904, then a
/// refused PASS: delay, 464).
const MAX_OUT: usize = 6;

/// The fake store: `alice`/`secret` is the one good login.
fn check(creds: &Credentials, serial: u32) -> Result<Login, LoginError> {
    if creds.user == "flaky" {
        return Err(LoginError::Temporary("store unavailable".into()));
    }
    if creds.user != "alice" || creds.password != "secret" {
        return Err(LoginError::Invalid);
    }
    if creds.network.as_deref() == Some("gone") {
        return Err(LoginError::UnknownNetwork {
            networks: vec!["libera".into()],
        });
    }
    Ok(Login {
        serial,
        account: creds.user.clone(),
    })
}

/// What the harness expects of SASL, kept independently of the state machine.
#[derive(Default)]
struct Model {
    /// Chunks of the exchange in progress, as the client sent them.
    sasl: Option<Vec<u8>>,
    /// The serial of the successful SASL login, if any.
    sasl_login: Option<u32>,
    /// The credentials of the last `PASS`.
    pass: Option<Credentials>,
    nick: bool,
    user: bool,
    cap_negotiating: bool,
}

pub fn run(data: &[u8]) {
    let mut codec = LineCodec::default();
    let mut buf = BytesMut::from(data);
    let mut lines = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        if let Frame::Line(l) = frame {
            if let Ok(m) = Message::parse(l) {
                lines.push(m);
            }
        }
    }

    let mut reg = Registration::<Login>::new("ferry");
    let mut model = Model::default();
    let mut serial = 0;
    // The serial of the last successful check, the only login that may complete
    // registration next.
    let mut last_good = None;
    for msg in &lines {
        let sasl_expect = model.on_line(msg);
        let mut step = reg.line(msg);
        let mut first = true;
        loop {
            check_out(&step.out);
            let sasl_check = first && matches!(sasl_expect, Some(Some(_)));
            match step.next {
                Next::Read => {
                    assert!(
                        !sasl_check,
                        "SASL credentials {sasl_expect:?} were not checked"
                    );
                    break;
                }
                Next::Verify(creds) => {
                    assert!(!creds.user.is_empty(), "check asked with an empty user");
                    if sasl_check {
                        assert_eq!(
                            sasl_expect.as_ref(),
                            Some(&Some(creds.clone())),
                            "SASL checked with other credentials"
                        );
                    } else {
                        // A PASS login, asked once registration is otherwise complete.
                        assert!(
                            model.complete(),
                            "PASS checked before registration completed"
                        );
                        assert!(
                            model.sasl_login.is_none(),
                            "PASS checked after a SASL login"
                        );
                        assert_eq!(
                            Some(&creds),
                            model.pass.as_ref(),
                            "PASS credentials changed"
                        );
                    }
                    serial += 1;
                    let result = check(&creds, serial);
                    let invalid = matches!(result, Err(LoginError::Invalid));
                    if result.is_ok() {
                        last_good = Some(serial);
                        if sasl_check {
                            model.sasl_login = Some(serial);
                        }
                    }
                    step = reg.checked(result);
                    if invalid {
                        assert_delayed(&step.out);
                    }
                }
                Next::Close(_) => return,
                Next::Done(done) => {
                    let v = done.verified;
                    assert_eq!(
                        Some(v.serial),
                        last_good,
                        "registered without a verified login"
                    );
                    if let Some(s) = model.sasl_login {
                        assert_eq!(v.serial, s, "registered with another login than SASL's");
                    }
                    assert!(model.complete(), "registered before NICK, USER and CAP END");
                    assert!(
                        nick_fits(&done.nick),
                        "registered with nick {:?}",
                        done.nick
                    );
                    return;
                }
            }
            first = false;
        }
    }
}

/// A wrong password is answered (464 or 904) only after the failure delay.
fn assert_delayed(out: &[Out]) {
    let delay = out.iter().position(|o| *o == Out::FailureDelay);
    let reply = out
        .iter()
        .position(|o| matches!(o, Out::Send(m) if m.command == "464" || m.command == "904"));
    assert!(
        matches!((delay, reply), (Some(d), Some(r)) if d < r),
        "wrong password answered without the delay: {out:?}"
    );
}

/// Every line a step sends is well formed and the step is bounded: a few lines,
/// each at most what it echoes from the client (a nick and one argument, both
/// within a client line) plus our own text.
fn check_out(out: &[Out]) {
    assert!(out.len() <= MAX_OUT, "{} outputs in one step", out.len());
    for o in out {
        if let Out::Send(m) = o {
            crate::assert_sendable(m, "registration reply");
            let len = m.to_bytes().len();
            assert!(len <= 2 * MAX_LINE_LEN + 1024, "a reply of {len} bytes");
        }
    }
}

impl Model {
    /// Updates the model for a client line. For `AUTHENTICATE`, returns what the
    /// state machine must do: `Some(Some(creds))` check these, `Some(None)` check
    /// nothing; `None` for other commands.
    fn on_line(&mut self, msg: &Message) -> Option<Option<Credentials>> {
        match msg.command.as_str() {
            "NICK" => {
                self.nick |= msg.param(0).is_some_and(nick_fits);
                None
            }
            "PASS" => {
                if let Some(p) = msg.param_str(0) {
                    self.pass = Some(parse_pass(&p).unwrap_or(Credentials {
                        user: String::new(),
                        client: None,
                        network: None,
                        password: String::new(),
                    }));
                }
                None
            }
            "USER" => {
                self.user |= msg.params.len() >= 4;
                None
            }
            "CAP" => {
                match msg.param_str(0).map(|s| s.to_ascii_uppercase()).as_deref() {
                    Some("LS") | Some("REQ") => self.cap_negotiating = true,
                    Some("END") => self.cap_negotiating = false,
                    _ => {}
                }
                None
            }
            "AUTHENTICATE" => Some(self.authenticate(msg)),
            _ => None,
        }
    }

    /// Registration may complete: NICK and USER given, no CAP or SASL exchange open.
    fn complete(&self) -> bool {
        self.nick && self.user && !self.cap_negotiating && self.sasl.is_none()
    }

    fn authenticate(&mut self, msg: &Message) -> Option<Credentials> {
        let arg = msg.param_str(0)?.into_owned();
        if arg == "*" {
            self.sasl = None;
            return None;
        }
        let Some(chunks) = self.sasl.as_mut() else {
            if self.sasl_login.is_none() && arg.eq_ignore_ascii_case("PLAIN") {
                self.sasl = Some(Vec::new());
            }
            return None;
        };
        if arg != "+" {
            chunks.extend_from_slice(arg.as_bytes());
        }
        if chunks.len() > SASL_MAX {
            self.sasl = None;
            return None;
        }
        if arg.len() == SASL_CHUNK {
            return None;
        }
        let payload = self.sasl.take().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(&payload)
            .ok()
            .and_then(|d| parse_sasl_plain(&d))
    }
}
