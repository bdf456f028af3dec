//! Protocol errors: values that render themselves as the reply the client
//! should see. They never close the connection; closing is decided elsewhere.

use crate::irc::{numeric, Message};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("{0}: not enough parameters")]
    NeedMoreParams(String),
    #[error("{0}: unknown command")]
    UnknownCommand(String),
    #[error("not registered")]
    NotRegistered,
    #[error("already registered")]
    AlreadyRegistered,
    #[error("invalid username or password")]
    PasswdMismatch,
    #[error("SASL authentication failed")]
    SaslFail,
    #[error("SASL message too long")]
    SaslTooLong,
    #[error("SASL authentication aborted")]
    SaslAborted,
    #[error("unsupported SASL mechanism")]
    SaslMechs,
    #[error("invalid CAP subcommand {0}")]
    InvalidCapCmd(String),
    /// An IRCv3 standard reply: `FAIL <command> <code> [context…] :<description>`.
    #[error("{command} {code}: {description}")]
    Fail {
        command: &'static str,
        code: &'static str,
        context: Vec<String>,
        description: String,
    },
}

impl ProtoError {
    /// The reply line, from `server` to the client known as `nick` (`*` before registration).
    pub fn to_message(&self, server: &str, nick: &str) -> Message {
        let n = |code: &str, mid: &[&str], text: &str| {
            let mut params: Vec<String> = vec![nick.to_owned()];
            params.extend(mid.iter().map(|s| s.to_string()));
            params.push(text.to_owned());
            Message::new(code, params).with_prefix(server.to_owned())
        };
        match self {
            ProtoError::NeedMoreParams(c) => {
                n(numeric::ERR_NEEDMOREPARAMS, &[c], "Not enough parameters")
            }
            ProtoError::UnknownCommand(c) => {
                n(numeric::ERR_UNKNOWNCOMMAND, &[c], "Unknown command")
            }
            ProtoError::NotRegistered => {
                n(numeric::ERR_NOTREGISTERED, &[], "You have not registered")
            }
            ProtoError::AlreadyRegistered => n(
                numeric::ERR_ALREADYREGISTERED,
                &[],
                "You may not reregister",
            ),
            ProtoError::PasswdMismatch => n(
                numeric::ERR_PASSWDMISMATCH,
                &[],
                "Invalid username or password",
            ),
            ProtoError::SaslFail => n(numeric::ERR_SASLFAIL, &[], "SASL authentication failed"),
            ProtoError::SaslTooLong => n(numeric::ERR_SASLTOOLONG, &[], "SASL message too long"),
            ProtoError::SaslAborted => {
                n(numeric::ERR_SASLABORTED, &[], "SASL authentication aborted")
            }
            ProtoError::SaslMechs => n(
                numeric::RPL_SASLMECHS,
                &["PLAIN"],
                "are available SASL mechanisms",
            ),
            ProtoError::InvalidCapCmd(c) => n("410", &[c], "Invalid CAP command"),
            ProtoError::Fail {
                command,
                code,
                context,
                description,
            } => {
                let mut params = vec![command.to_string(), code.to_string()];
                params.extend(context.iter().cloned());
                params.push(description.clone());
                Message::new("FAIL", params).with_prefix(server.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_numerics() {
        let m = ProtoError::PasswdMismatch.to_message("ferry", "*");
        assert_eq!(
            &m.to_bytes()[..],
            b":ferry 464 * :Invalid username or password"
        );
        let m = ProtoError::Fail {
            command: "CHATHISTORY",
            code: "INVALID_PARAMS",
            context: vec!["BEFORE".into()],
            description: "bad limit".into(),
        }
        .to_message("ferry", "me");
        assert_eq!(
            &m.to_bytes()[..],
            b":ferry FAIL CHATHISTORY INVALID_PARAMS BEFORE :bad limit"
        );
    }
}
