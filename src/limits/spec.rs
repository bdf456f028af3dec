//! Network limits as admins write them (`ferry limits set`, `PUT /api/admin/limits/KEY`)
//! and read them back: validation and the JSON shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::store::NetworkLimits;

/// The settable part of a network's limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Upstream sessions per source IP.
    pub sessions_per_ip: u32,
    /// New connections per minute per source IP, after `burst`.
    pub connects_per_minute: f64,
    /// Connections allowed back to back (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Outgoing lines per second per connection (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    /// Outgoing lines at once before pacing (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_burst: Option<u32>,
    /// Sessions on this network across the cluster (default: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_total: Option<u32>,
    /// New connections per minute to this network from the whole cluster (default:
    /// no cluster-wide rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects_per_minute_total: Option<f64>,
}

/// Limits as listed: the stored row with its key and time of change.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitsView {
    pub key: String,
    #[serde(flatten)]
    pub spec: LimitsSpec,
    /// RFC 3339.
    pub updated_at: String,
}

impl LimitsSpec {
    /// Checks the values and names the first bad one.
    ///
    /// # Errors
    /// A message naming the setting (as its command-line flag).
    pub fn to_limits(&self, key: &str, now: DateTime<Utc>) -> Result<NetworkLimits, String> {
        let key = key.trim().to_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains('/') {
            return Err(format!(
                "invalid key {key:?}: give a host, a domain or a network name"
            ));
        }
        if self.sessions_per_ip == 0 {
            return Err("--sessions-per-ip must be at least 1".into());
        }
        if !(self.connects_per_minute.is_finite() && self.connects_per_minute > 0.0) {
            return Err("--connects-per-minute must be a positive number".into());
        }
        if self.burst == Some(0) {
            return Err("--burst must be at least 1".into());
        }
        if let Some(m) = self.messages_per_second {
            if !(m.is_finite() && m > 0.0) {
                return Err("--messages-per-second must be a positive number".into());
            }
        }
        if self.message_burst == Some(0) {
            return Err("--message-burst must be at least 1".into());
        }
        if self.sessions_total == Some(0) {
            return Err("--sessions-total must be at least 1".into());
        }
        if let Some(r) = self.connects_per_minute_total {
            if !(r.is_finite() && r > 0.0) {
                return Err("--connects-per-minute-total must be a positive number".into());
            }
        }
        Ok(NetworkLimits {
            key,
            sessions_per_ip: self.sessions_per_ip,
            connects_per_minute: self.connects_per_minute,
            burst: self.burst.unwrap_or(1),
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            sessions_total: self.sessions_total,
            connects_per_minute_total: self.connects_per_minute_total,
            updated_at: now,
        })
    }
}

impl From<&NetworkLimits> for LimitsView {
    fn from(l: &NetworkLimits) -> LimitsView {
        LimitsView {
            key: l.key.clone(),
            spec: LimitsSpec {
                sessions_per_ip: l.sessions_per_ip,
                connects_per_minute: l.connects_per_minute,
                burst: Some(l.burst),
                messages_per_second: l.messages_per_second,
                message_burst: l.message_burst,
                sessions_total: l.sessions_total,
                connects_per_minute_total: l.connects_per_minute_total,
            },
            updated_at: l.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let ok = LimitsSpec {
            sessions_per_ip: 4,
            connects_per_minute: 2.0,
            ..LimitsSpec::default()
        };
        let l = ok.to_limits(" Irc.Libera.Chat ", Utc::now()).unwrap();
        assert_eq!((l.key.as_str(), l.burst), ("irc.libera.chat", 1));
        let bad = |f: fn(&mut LimitsSpec), flag: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let e = s.to_limits("k", Utc::now()).unwrap_err();
            assert!(e.contains(flag), "{e}");
        };
        bad(|s| s.sessions_per_ip = 0, "--sessions-per-ip");
        bad(|s| s.connects_per_minute = 0.0, "--connects-per-minute");
        bad(
            |s| s.connects_per_minute = f64::NAN,
            "--connects-per-minute",
        );
        bad(|s| s.burst = Some(0), "--burst");
        bad(
            |s| s.messages_per_second = Some(-1.0),
            "--messages-per-second",
        );
        bad(|s| s.message_burst = Some(0), "--message-burst");
        bad(|s| s.sessions_total = Some(0), "--sessions-total");
        bad(
            |s| s.connects_per_minute_total = Some(0.0),
            "--connects-per-minute-total",
        );
        assert!(ok.to_limits("", Utc::now()).is_err());
    }
}
