//! Administrative operations on users and networks, shared by the admin API
//! (acting through a running node) and the CLI (acting on the store directly
//! when no node is running). Only these functions validate admin input.

use serde::{Deserialize, Serialize};

use crate::auth::LoginGuard;
use crate::irc::Casemapping;
use crate::store::{NewNetwork, Sasl, Store, StoreError, TlsVerify, User};

/// A network as the CLI and the admin API describe it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkSpec {
    pub name: String,
    /// `host:port`.
    pub addr: String,
    #[serde(default)]
    pub tls: bool,
    /// `verify` (default), `insecure`, or `pin:SHA256HEX` of the server certificate.
    #[serde(default)]
    pub tls_verify: Option<String>,
    pub nick: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub realname: Option<String>,
    /// SASL PLAIN credentials as `account:password`.
    #[serde(default)]
    pub sasl: Option<String>,
    /// SASL EXTERNAL: a PEM file holding the client certificate and key.
    #[serde(default)]
    pub sasl_cert: Option<String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    /// Channels to join, each `#name` or `#name key`.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// Admin input that cannot be accepted, with a message for the person.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The password hashing pool is full; try again.
    #[error("{0}")]
    Busy(String),
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// Checks a user name: what goes before `/` and `@` in `PASS user@client/network:password`.
pub fn check_user_name(name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid user name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Checks a new password: not empty, at least `min_len` characters
/// (`[auth] min_password_len`).
pub fn check_password(password: &str, min_len: usize) -> Result<(), AdminError> {
    crate::auth::check_new_password(password, min_len).map_err(AdminError::Invalid)
}

/// Creates a user. The password must meet the guard's minimum length and is hashed
/// on the guard's bounded pool.
pub async fn create_user(
    store: &Store,
    guard: &LoginGuard,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<User, AdminError> {
    check_user_name(name)?;
    check_password(password, guard.settings().min_password_len)?;
    let hash = guard
        .hasher
        .hash(password.to_owned())
        .await
        .map_err(|e| AdminError::Busy(e.to_string()))?;
    Ok(store.create_user(name, &hash, admin).await?)
}

/// Checks retention limits: positive numbers, or `None` for unlimited.
pub fn retention(
    days: Option<i64>,
    messages: Option<i64>,
) -> Result<crate::store::Retention, AdminError> {
    if days.is_some_and(|d| d < 1) {
        return Err(invalid("retention days must be at least 1"));
    }
    if messages.is_some_and(|m| m < 1) {
        return Err(invalid("retention messages must be at least 1"));
    }
    Ok(crate::store::Retention {
        max_age_days: days,
        max_messages: messages,
    })
}

/// Whether `key` (lowercase) is the limits key of at least one network, by the
/// limiter's own rule (`limits::key`: host, parent domain, or network name). A key
/// no network falls under limits nothing: `ferry limits set` and the admin API
/// refuse it unless forced (networks still to be added).
///
/// # Errors
/// The store cannot be read.
pub async fn limits_key_in_use(store: &Store, key: &str) -> Result<bool, StoreError> {
    Ok(store.network_addrs().await?.iter().any(|(addr, name)| {
        crate::limits::key::resolve([key], &crate::limits::key::host_of(addr), name) == key
    }))
}

/// The error for a limits key no network falls under.
pub fn unused_limits_key(key: &str) -> String {
    format!(
        "no network falls under {key:?}: the key must be a network's host \
         (irc.libera.chat), a parent domain of it (libera.chat) or a network's name \
         (see `ferry network list`); nothing was set. Use --force (API: ?force=true) to \
         set it for networks still to be added"
    )
}

pub async fn find_user(store: &Store, name: &str) -> Result<User, AdminError> {
    if name.chars().any(char::is_control) {
        return Err(invalid(format!("no user named {name:?}")));
    }
    store
        .user_by_name(name)
        .await?
        .ok_or_else(|| invalid(format!("no user named {name:?}")))
}

/// A field of a [`NetworkSpec`], so each door names it its own way: the CLI as its
/// flag (`--addr`), the user doors as the plain field name (`addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecField {
    Name,
    Addr,
    TlsVerify,
    Nick,
    Username,
    Realname,
    Sasl,
    SaslCert,
    SourceIp,
    Channel,
}

impl SpecField {
    /// The plain field name, as the user API's JSON and BouncerServ's flags name it.
    pub fn name(self) -> &'static str {
        match self {
            SpecField::Name => "name",
            SpecField::Addr => "addr",
            SpecField::TlsVerify => "tls_verify",
            SpecField::Nick => "nick",
            SpecField::Username => "username",
            SpecField::Realname => "realname",
            SpecField::Sasl => "sasl",
            SpecField::SaslCert => "sasl_cert",
            SpecField::SourceIp => "source_ip",
            SpecField::Channel => "channel",
        }
    }

    /// How the CLI's messages name it (its flag, where it has one).
    pub fn flag(self) -> &'static str {
        match self {
            SpecField::Name => "network name",
            SpecField::Addr => "--addr",
            SpecField::TlsVerify => "--tls-verify",
            SpecField::Nick => "--nick",
            SpecField::Username => "--username",
            SpecField::Realname => "--realname",
            SpecField::Sasl => "--sasl",
            SpecField::SaslCert => "--sasl-cert",
            SpecField::SourceIp => "--source-ip",
            SpecField::Channel => "channel",
        }
    }
}

/// Why a [`NetworkSpec`] is not valid: the field, the value given (when showing it
/// helps) and what is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: SpecField,
    pub value: Option<String>,
    pub problem: String,
}

impl SpecError {
    fn new(field: SpecField, value: Option<&str>, problem: impl Into<String>) -> SpecError {
        SpecError {
            field,
            value: value.map(str::to_owned),
            problem: problem.into(),
        }
    }

    /// The message with the field named `name`: `invalid NAME "value": problem`.
    pub fn message(&self, name: &str) -> String {
        let mut out = format!("invalid {name}");
        if let Some(v) = &self.value {
            out.push_str(&format!(" {v:?}"));
        }
        if !self.problem.is_empty() {
            out.push_str(": ");
            out.push_str(&self.problem);
        }
        out
    }

    /// The message with the field named neutrally (`addr: "x": expected HOST:PORT`),
    /// for the user doors to show as they are or to reword.
    pub fn neutral(&self) -> String {
        let mut out = format!("{}: ", self.field.name());
        match (&self.value, self.problem.is_empty()) {
            (Some(v), false) => out.push_str(&format!("{v:?}: {}", self.problem)),
            (Some(v), true) => out.push_str(&format!("{v:?} is not valid")),
            (None, _) => out.push_str(&self.problem),
        }
        out
    }
}

impl From<SpecError> for AdminError {
    /// The CLI's and the admin API's wording: the field named by its flag.
    fn from(e: SpecError) -> AdminError {
        if e.field == SpecField::SaslCert && e.value.is_none() && e.problem.contains("not both") {
            return invalid("give either --sasl or --sasl-cert, not both");
        }
        invalid(e.message(e.field.flag()))
    }
}

impl NetworkSpec {
    /// Validates the spec and turns it into what the store takes; errors name the
    /// fields by their CLI flags.
    pub fn to_new_network(&self) -> Result<NewNetwork, AdminError> {
        Ok(self.check()?)
    }

    /// Validates the spec and turns it into what the store takes; the error names the
    /// field as a [`SpecField`], for each door to word.
    pub fn check(&self) -> Result<NewNetwork, SpecError> {
        use SpecField as F;
        // Every field may end up in an IRC line or the store's text columns: no
        // control character (NUL, CR, LF, escapes) anywhere.
        let fields = [
            (F::Name, Some(&self.name)),
            (F::Addr, Some(&self.addr)),
            (F::TlsVerify, self.tls_verify.as_ref()),
            (F::Nick, Some(&self.nick)),
            (F::Username, self.username.as_ref()),
            (F::Realname, self.realname.as_ref()),
            (F::Sasl, self.sasl.as_ref()),
            (F::SaslCert, self.sasl_cert.as_ref()),
            (F::SourceIp, self.source_ip.as_ref()),
        ];
        for (what, value) in fields
            .into_iter()
            .chain(self.channels.iter().map(|c| (F::Channel, Some(c))))
        {
            if value.is_some_and(|v| v.chars().any(char::is_control)) {
                return Err(SpecError::new(
                    what,
                    None,
                    "control characters (NUL, line breaks, escapes) are not allowed",
                ));
            }
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(SpecError::new(
                F::Name,
                Some(&self.name),
                "use letters, digits, '-', '_' or '.'",
            ));
        }
        let bad_addr = || SpecError::new(F::Addr, Some(&self.addr), "expected HOST:PORT");
        let (host, port) = self.addr.rsplit_once(':').ok_or_else(bad_addr)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad_addr());
        }
        if self.nick.is_empty()
            || self.nick.contains([' ', ',', '*', '?', '!', '@'])
            || self.nick.starts_with(['#', '&', ':', '$'])
        {
            return Err(SpecError::new(F::Nick, Some(&self.nick), ""));
        }
        let tls_verify = match self.tls_verify.as_deref() {
            None | Some("verify") => TlsVerify::Verify,
            Some("insecure") => TlsVerify::Insecure,
            Some(other) => {
                let hex = other
                    .strip_prefix("pin:")
                    .unwrap_or(other)
                    .replace(':', "")
                    .to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(SpecError::new(
                        F::TlsVerify,
                        Some(other),
                        "use verify, insecure or pin:SHA256HEX",
                    ));
                }
                TlsVerify::Pin(hex)
            }
        };
        let sasl = match (&self.sasl, &self.sasl_cert) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    F::SaslCert,
                    None,
                    "give either sasl or sasl_cert, not both",
                ))
            }
            (Some(creds), None) => {
                let (username, password) = creds
                    .split_once(':')
                    .ok_or_else(|| SpecError::new(F::Sasl, None, "expected ACCOUNT:PASSWORD"))?;
                Some(Sasl::Plain {
                    username: username.to_owned(),
                    password: password.to_owned(),
                })
            }
            (None, Some(path)) => Some(Sasl::External {
                cert_path: path.clone(),
            }),
            (None, None) => None,
        };
        if let Some(ip) = &self.source_ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| SpecError::new(F::SourceIp, Some(ip), ""))?;
        }
        let mut channels = Vec::new();
        for entry in self.channels.iter().flat_map(|c| c.split(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (name, key) = match entry.split_once(' ') {
                Some((n, k)) => (n, Some(k.trim().as_bytes().to_vec())),
                None => (entry, None),
            };
            if !name.starts_with(['#', '&', '!', '+']) {
                return Err(SpecError::new(
                    F::Channel,
                    Some(name),
                    "channels start with #",
                ));
            }
            // The server's casemapping is unknown before we connect; rfc1459 is the IRC default.
            let folded = Casemapping::Rfc1459.fold(name.as_bytes());
            channels.push((name.as_bytes().to_vec(), folded, key));
        }
        Ok(NewNetwork {
            name: self.name.clone(),
            addr: self.addr.clone(),
            tls: self.tls,
            tls_verify,
            nick: self.nick.clone(),
            username: self.username.clone(),
            realname: self.realname.clone(),
            sasl,
            source_ip: self.source_ip.clone(),
            channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            name: "test".into(),
            addr: "127.0.0.1:6697".into(),
            nick: "alice".into(),
            channels: vec!["#ferry,#rust".into(), "#secret key".into()],
            ..NetworkSpec::default()
        }
    }

    #[test]
    fn validates_network_specs() {
        let n = spec().to_new_network().unwrap();
        assert_eq!(n.channels.len(), 3);
        assert_eq!(n.channels[2].2.as_deref(), Some(&b"key"[..]));
        for bad in [
            NetworkSpec {
                addr: "nohost".into(),
                ..spec()
            },
            NetworkSpec {
                addr: "h:0".into(),
                ..spec()
            },
            NetworkSpec {
                nick: "a b".into(),
                ..spec()
            },
            NetworkSpec {
                name: "a/b".into(),
                ..spec()
            },
            NetworkSpec {
                tls_verify: Some("pin:xyz".into()),
                ..spec()
            },
            NetworkSpec {
                sasl: Some("nocolon".into()),
                ..spec()
            },
            NetworkSpec {
                channels: vec!["nochan".into()],
                ..spec()
            },
        ] {
            assert!(bad.to_new_network().is_err(), "{bad:?}");
        }
        let pinned = NetworkSpec {
            tls_verify: Some(format!("pin:{}", "AB".repeat(32))),
            ..spec()
        };
        assert_eq!(
            pinned.to_new_network().unwrap().tls_verify,
            TlsVerify::Pin("ab".repeat(32))
        );
    }

    #[test]
    fn cli_messages_name_flags_and_user_doors_name_fields() {
        let bad = NetworkSpec {
            addr: "nohost".into(),
            ..spec()
        };
        assert_eq!(
            bad.to_new_network().unwrap_err().to_string(),
            "invalid --addr \"nohost\": expected HOST:PORT"
        );
        assert_eq!(
            bad.check().unwrap_err().neutral(),
            "addr: \"nohost\": expected HOST:PORT"
        );
        let nick = NetworkSpec {
            nick: "a b".into(),
            ..spec()
        };
        assert_eq!(
            nick.to_new_network().unwrap_err().to_string(),
            "invalid --nick \"a b\""
        );
        let name = NetworkSpec {
            name: "a/b".into(),
            ..spec()
        };
        assert_eq!(
            name.to_new_network().unwrap_err().to_string(),
            "invalid network name \"a/b\": use letters, digits, '-', '_' or '.'"
        );
        let both = NetworkSpec {
            sasl: Some("a:b".into()),
            sasl_cert: Some("/c.pem".into()),
            ..spec()
        };
        assert_eq!(
            both.to_new_network().unwrap_err().to_string(),
            "give either --sasl or --sasl-cert, not both"
        );
        assert_eq!(
            nick.check().unwrap_err().neutral(),
            "nick: \"a b\" is not valid"
        );
    }

    #[test]
    fn validates_user_names() {
        assert!(check_user_name("alice").is_ok());
        for bad in ["", "a/b", "a@b", "a:b", "a b"] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
    }
}
