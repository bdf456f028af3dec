//! What a user gives to add or change a network, checked as the admin path checks it.

use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::{invalid, AccountError};
use crate::admin::NetworkSpec;
use crate::config::AccountSettings;
use crate::store::{Network, Sasl};

/// SASL PLAIN credentials for the network.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaslPlain {
    pub account: String,
    pub password: String,
}

/// A channel to be in, with its key if it has one.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// `#name`.
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// A network as a user adds it.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNetworkSpec {
    /// The network's name in Ferry (`PASS user/NAME:…`): letters, digits, `-_.`.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    #[serde(default)]
    pub tls: bool,
    /// `verify` (default), `insecure`, or `pin:SHA256HEX` of the server certificate.
    #[serde(default)]
    pub tls_verify: Option<String>,
    pub nick: String,
    /// The ident/user name; default: the Ferry user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Default: the nick.
    #[serde(default)]
    pub realname: Option<String>,
    #[serde(default)]
    pub sasl: Option<SaslPlain>,
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
}

/// Changes to a network: every field is optional; what is absent stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkChange {
    pub addr: Option<String>,
    pub tls: Option<bool>,
    /// `verify`, `insecure`, or `pin:SHA256HEX`.
    pub tls_verify: Option<String>,
    pub nick: Option<String>,
    /// Empty: back to the default (the Ferry user name).
    pub username: Option<String>,
    /// Empty: back to the default (the nick).
    pub realname: Option<String>,
    /// New SASL PLAIN credentials; `null` removes them (a certificate the operator
    /// set for SASL EXTERNAL stays).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SaslPlain>)]
    pub sasl: Option<Option<SaslPlain>>,
    /// `false` disconnects the network and keeps it so (across restarts); `true`
    /// connects it.
    pub enabled: Option<bool>,
}

/// A field that is present (possibly `null`) is `Some`; an absent one stays `None`
/// through `#[serde(default)]`.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ChannelSpec {
    /// As `NetworkSpec` takes it: `#name` or `#name key`.
    fn entry(&self) -> Result<String, AccountError> {
        check_channel(&self.name, self.key.as_deref())?;
        Ok(match &self.key {
            Some(k) if !k.is_empty() => format!("{} {k}", self.name),
            _ => self.name.clone(),
        })
    }
}

/// Checks a channel name and key as a user gives them.
pub(super) fn check_channel(name: &str, key: Option<&str>) -> Result<(), AccountError> {
    let bad_char = |s: &str| s.chars().any(|c| c.is_control() || c == ' ' || c == ',');
    if !name.starts_with(['#', '&', '!', '+']) || name.len() < 2 || name.len() > 200 {
        return Err(invalid(format!(
            "invalid channel {name:?}: channels start with # (at most 200 bytes)"
        )));
    }
    if bad_char(name) {
        return Err(invalid(format!(
            "invalid channel {name:?}: no spaces, commas or control characters"
        )));
    }
    if key.is_some_and(|k| bad_char(k) || k.len() > 100) {
        return Err(invalid(format!(
            "invalid key for {name:?}: no spaces, commas or control characters (at most 100 bytes)"
        )));
    }
    Ok(())
}

impl NewNetworkSpec {
    /// The admin form of the same network (so both paths validate alike); a user
    /// cannot set a source address or a certificate file of the server's.
    pub(super) fn to_spec(&self) -> Result<NetworkSpec, AccountError> {
        let sasl = self.sasl.as_ref().map(sasl_entry).transpose()?;
        Ok(NetworkSpec {
            name: self.name.clone(),
            addr: self.addr.clone(),
            tls: self.tls,
            tls_verify: self.tls_verify.clone(),
            nick: self.nick.clone(),
            username: self.username.clone().filter(|s| !s.is_empty()),
            realname: self.realname.clone().filter(|s| !s.is_empty()),
            sasl,
            sasl_cert: None,
            source_ip: None,
            channels: self
                .channels
                .iter()
                .map(ChannelSpec::entry)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// SASL PLAIN as `NetworkSpec` takes it (`account:password`).
pub(super) fn sasl_entry(s: &SaslPlain) -> Result<String, AccountError> {
    if s.account.is_empty() || s.account.contains(':') {
        return Err(invalid("invalid sasl.account: not empty, and no ':' in it"));
    }
    if s.password.is_empty() {
        return Err(invalid("invalid sasl.password: it is empty"));
    }
    Ok(format!("{}:{}", s.account, s.password))
}

/// The spec a stored network was made from (no channels: they are not changed here).
pub(super) fn spec_of(n: &Network) -> NetworkSpec {
    let (sasl, sasl_cert) = match &n.sasl {
        Some(Sasl::Plain { username, password }) => (Some(format!("{username}:{password}")), None),
        Some(Sasl::External { cert_path }) => (None, Some(cert_path.clone())),
        None => (None, None),
    };
    NetworkSpec {
        name: n.name.clone(),
        addr: n.addr.clone(),
        tls: n.tls,
        tls_verify: Some(n.tls_verify.to_db()),
        nick: n.nick.clone(),
        username: n.username.clone(),
        realname: n.realname.clone(),
        sasl,
        sasl_cert,
        source_ip: n.source_ip.clone(),
        channels: Vec::new(),
    }
}

/// Whether the operator lets users add a network on `addr` (`host:port`, checked).
pub(super) fn check_server(settings: &AccountSettings, addr: &str) -> Result<(), AccountError> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| invalid(format!("addr: {addr:?}: expected HOST:PORT")))?;
    if settings.allows(host, port) {
        Ok(())
    } else {
        Err(AccountError::ServerNotAllowed(format!(
            "this server does not let users connect to {addr}; allowed: {}",
            settings.allowed_servers.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NewNetworkSpec {
        NewNetworkSpec {
            name: "libera".into(),
            addr: "irc.libera.chat:6697".into(),
            tls: true,
            nick: "alice".into(),
            sasl: Some(SaslPlain {
                account: "alice".into(),
                password: "pa:ss".into(),
            }),
            channels: vec![
                ChannelSpec {
                    name: "#ferry".into(),
                    key: None,
                },
                ChannelSpec {
                    name: "#secret".into(),
                    key: Some("k".into()),
                },
            ],
            ..NewNetworkSpec::default()
        }
    }

    #[test]
    fn user_specs_validate_like_admin_ones() {
        let n = spec().to_spec().unwrap().check().unwrap();
        assert_eq!(n.channels.len(), 2);
        assert_eq!(n.channels[1].2.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            n.sasl,
            Some(Sasl::Plain {
                username: "alice".into(),
                password: "pa:ss".into()
            })
        );
        let bad_channel = |name: &str, key: Option<&str>| NewNetworkSpec {
            channels: vec![ChannelSpec {
                name: name.into(),
                key: key.map(Into::into),
            }],
            ..spec()
        };
        for bad in [
            bad_channel("nochan", None),
            bad_channel("#a,#b", None),
            bad_channel("#a b", None),
            bad_channel("#a", Some("k k")),
            NewNetworkSpec {
                sasl: Some(SaslPlain {
                    account: "a:b".into(),
                    password: "x".into(),
                }),
                ..spec()
            },
            NewNetworkSpec {
                addr: "nohost".into(),
                ..spec()
            },
        ] {
            assert!(
                bad.to_spec().and_then(|s| Ok(s.check()?)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn allow_list_patterns() {
        let s = AccountSettings {
            max_networks_per_user: 1,
            allowed_servers: vec!["irc.libera.chat:6697".into(), "*.oftc.net:*".into()],
            ..AccountSettings::default()
        };
        assert!(check_server(&s, "irc.libera.chat:6697").is_ok());
        assert!(check_server(&s, "IRC.Libera.Chat:6697").is_ok());
        assert!(check_server(&s, "irc.oftc.net:6667").is_ok());
        for refused in ["irc.libera.chat:6667", "evil.chat:6697", "oftc.net.evil:1"] {
            let e = check_server(&s, refused).unwrap_err();
            assert_eq!(e.code(), "server_not_allowed", "{refused}");
        }
        assert!(check_server(&AccountSettings::default(), "any.where:1").is_ok());
    }

    #[test]
    fn changes_tell_absent_from_null() {
        let c: NetworkChange = serde_json::from_str(r#"{"sasl": null}"#).unwrap();
        assert!(matches!(c.sasl, Some(None)));
        let c: NetworkChange = serde_json::from_str(r#"{"nick": "bob"}"#).unwrap();
        assert!(c.sasl.is_none());
        assert!(serde_json::from_str::<NetworkChange>(r#"{"name": "x"}"#).is_err());
    }
}
