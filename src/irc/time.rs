//! The IRCv3 `server-time` tag format.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn parse(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        let t = super::parse("2026-11-22T04:32:41.123Z").unwrap();
        assert_eq!(super::format(t), "2026-11-22T04:32:41.123Z");
    }
}
