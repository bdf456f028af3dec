//! Byte strings of the handoff's state (`UserPark`, `UpstreamPark`) as base64
//! strings in its JSON, with `#[serde(with = "crate::upgrade::bytes…")]`, instead of
//! serde's default for a `Vec<u8>` (an array of numbers: about four characters a
//! byte to write and to parse; a MOTD, a member list or unread bytes were most of a
//! handoff's size and time). Reading also takes the old form, an array of numbers
//! (state format 3 and before), so a node that hands over format 3 can still be
//! upgraded to this binary.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Writes a byte string as base64.
pub struct Ser<'a>(pub &'a [u8]);

impl Serialize for Ser<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(self.0))
    }
}

/// Reads a byte string: base64, or an array of numbers (the old form).
pub struct De(pub Vec<u8>);

impl<'de> Deserialize<'de> for De {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<De, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = De;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string or an array of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<De, E> {
                STANDARD.decode(v).map(De).map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<De, E> {
                Ok(De(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<De, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(De(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `Vec<u8>`.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    Ser(v).serialize(s)
}

/// `Vec<u8>`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    De::deserialize(d).map(|b| b.0)
}

/// `Option<Vec<u8>>`.
pub mod opt {
    use super::{De, Ser};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ref_option)] // the shape `serde(with)` calls
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(Ser).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<De>::deserialize(d)?.map(|b| b.0))
    }
}

/// `Vec<Vec<u8>>`.
pub mod list {
    use super::{De, Ser};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Ser(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<De>::deserialize(d)?
            .into_iter()
            .map(|b| b.0)
            .collect())
    }
}

/// `Option<Vec<Vec<u8>>>`.
pub mod opt_list {
    use super::{De, Ser};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ref_option)] // the shape `serde(with)` calls
    pub fn serialize<S: Serializer>(v: &Option<Vec<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().map(|b| Ser(b)).collect::<Vec<_>>())
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<u8>>>, D::Error> {
        Ok(Option::<Vec<De>>::deserialize(d)?.map(|v| v.into_iter().map(|b| b.0).collect()))
    }
}

/// `Vec<(Vec<u8>, Vec<u8>)>` (a channel's members: prefixes and nick).
pub mod pairs {
    use super::{De, Ser};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(a, b)| (Ser(a), Ser(b))))
    }

    /// Prefixes and nick.
    type Member = (Vec<u8>, Vec<u8>);

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Member>, D::Error> {
        Ok(Vec::<(De, De)>::deserialize(d)?
            .into_iter()
            .map(|(a, b)| (a.0, b.0))
            .collect())
    }
}

/// `Option<(Vec<u8>, i64)>` (who set a topic, and when).
pub mod opt_meta {
    use super::{De, Ser};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ref_option)] // the shape `serde(with)` calls
    pub fn serialize<S: Serializer>(v: &Option<(Vec<u8>, i64)>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|(b, t)| (Ser(b), *t)).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(Vec<u8>, i64)>, D::Error> {
        Ok(Option::<(De, i64)>::deserialize(d)?.map(|(b, t)| (b.0, t)))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(with = "super")]
        a: Vec<u8>,
        #[serde(with = "super::opt")]
        b: Option<Vec<u8>>,
        #[serde(with = "super::list")]
        c: Vec<Vec<u8>>,
        #[serde(with = "super::opt_list")]
        d: Option<Vec<Vec<u8>>>,
        #[serde(with = "super::pairs")]
        e: Vec<(Vec<u8>, Vec<u8>)>,
        #[serde(with = "super::opt_meta")]
        f: Option<(Vec<u8>, i64)>,
    }

    #[test]
    fn bytes_travel_as_base64_and_the_old_arrays_still_read() {
        let s = S {
            a: b"\xff\x00nick".to_vec(),
            b: Some(b"away".to_vec()),
            c: vec![b"motd 1".to_vec(), vec![]],
            d: Some(vec![b"x".to_vec()]),
            e: vec![(b"@".to_vec(), b"op".to_vec())],
            f: Some((b"setter".to_vec(), 42)),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""a":"/wBuaWNr""#), "{json}");
        assert!(!json.contains("[255"), "{json}");
        assert_eq!(serde_json::from_str::<S>(&json).unwrap(), s);
        // State format 3: arrays of numbers.
        let old = r#"{"a":[255,0,110,105,99,107],"b":[97,119,97,121],"c":[[109,111,116,100,32,49],[]],
            "d":[[120]],"e":[[[64],[111,112]]],"f":[[115,101,116,116,101,114],42]}"#;
        assert_eq!(serde_json::from_str::<S>(old).unwrap(), s);
        let none = r#"{"a":"","b":null,"c":[],"d":null,"e":[],"f":null}"#;
        let got: S = serde_json::from_str(none).unwrap();
        assert_eq!((got.b, got.d, got.f), (None, None, None));
    }
}
