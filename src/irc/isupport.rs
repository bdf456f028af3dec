//! ISUPPORT (`005`) tokens and the parts of them Ferry acts on.

use std::collections::BTreeMap;

use super::Casemapping;

/// What a server told us about itself in `005`. Defaults are those of RFC 1459
/// servers that say nothing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ISupport {
    pub casemapping: Casemapping,
    /// `CHANMODES` A,B,C,D: list modes, always-parameter, set-only parameter, no parameter.
    pub chanmodes: [Vec<u8>; 4],
    /// `PREFIX` as (mode, symbol) pairs, highest rank first.
    pub prefix: Vec<(u8, u8)>,
    pub chantypes: Vec<u8>,
    pub nicklen: Option<usize>,
    pub linelen: usize,
    pub network: Option<String>,
    /// Every token as sent, for relaying to clients unchanged.
    pub tokens: BTreeMap<String, Option<String>>,
}

impl Default for ISupport {
    fn default() -> Self {
        ISupport {
            casemapping: Casemapping::Rfc1459,
            chanmodes: [
                b"beI".to_vec(),
                b"k".to_vec(),
                b"l".to_vec(),
                b"imnpst".to_vec(),
            ],
            prefix: vec![(b'o', b'@'), (b'v', b'+')],
            chantypes: b"#&".to_vec(),
            nicklen: None,
            linelen: 512,
            network: None,
            tokens: BTreeMap::new(),
        }
    }
}

impl ISupport {
    /// Applies the tokens of one `005` line (the parameters between the nick
    /// and the trailing text).
    pub fn apply<'a>(&mut self, tokens: impl IntoIterator<Item = &'a [u8]>) {
        for token in tokens {
            let token = String::from_utf8_lossy(token);
            if let Some(name) = token.strip_prefix('-') {
                self.tokens.remove(name);
                self.reset(name);
                continue;
            }
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (token.to_string(), None),
            };
            self.set(&name, value.as_deref());
            self.tokens.insert(name, value);
        }
    }

    fn reset(&mut self, name: &str) {
        let d = ISupport::default();
        match name {
            "CASEMAPPING" => self.casemapping = d.casemapping,
            "CHANMODES" => self.chanmodes = d.chanmodes,
            "PREFIX" => self.prefix = d.prefix,
            "CHANTYPES" => self.chantypes = d.chantypes,
            "NICKLEN" => self.nicklen = None,
            "LINELEN" => self.linelen = d.linelen,
            "NETWORK" => self.network = None,
            _ => {}
        }
    }

    fn set(&mut self, name: &str, value: Option<&str>) {
        let value = value.unwrap_or("");
        match name {
            "CASEMAPPING" => self.casemapping = Casemapping::from_token(value),
            "CHANMODES" => {
                let mut parts = value.split(',').map(|p| p.as_bytes().to_vec());
                for slot in &mut self.chanmodes {
                    *slot = parts.next().unwrap_or_default();
                }
            }
            "PREFIX" => {
                // (ov)@+
                if let Some(rest) = value.strip_prefix('(') {
                    if let Some((modes, symbols)) = rest.split_once(')') {
                        self.prefix = modes.bytes().zip(symbols.bytes()).collect();
                    }
                } else if value.is_empty() {
                    self.prefix.clear();
                }
            }
            "CHANTYPES" => self.chantypes = value.as_bytes().to_vec(),
            "NICKLEN" => self.nicklen = value.parse().ok(),
            "LINELEN" => self.linelen = value.parse().unwrap_or(512).max(512),
            "NETWORK" => self.network = Some(value.to_owned()),
            _ => {}
        }
    }

    pub fn is_channel(&self, name: &[u8]) -> bool {
        name.first().is_some_and(|c| self.chantypes.contains(c))
    }

    /// The prefix symbol of a membership mode (`o` → `@`).
    pub fn prefix_symbol(&self, mode: u8) -> Option<u8> {
        self.prefix
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, s)| *s)
    }

    /// True when a channel mode letter takes a parameter when set (`+`) or
    /// unset (`-`), per `CHANMODES` and `PREFIX`.
    pub fn mode_takes_param(&self, mode: u8, adding: bool) -> bool {
        if self.prefix.iter().any(|(m, _)| *m == mode) {
            return true;
        }
        let [a, b, c, _] = &self.chanmodes;
        a.contains(&mode) || b.contains(&mode) || (adding && c.contains(&mode))
    }

    /// Splits a nick with membership prefixes (`@+nick`, as `multi-prefix`
    /// sends them in NAMES) into its prefixes and the nick.
    pub fn split_prefixes<'a>(&self, name: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let n = name
            .iter()
            .take_while(|c| self.prefix.iter().any(|(_, s)| s == *c))
            .count();
        name.split_at(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_tokens() {
        let mut is = ISupport::default();
        is.apply([
            &b"CASEMAPPING=ascii"[..],
            b"CHANMODES=beI,k,l,imnpst",
            b"PREFIX=(qaohv)~&@%+",
            b"NICKLEN=9",
            b"CHANTYPES=#&",
        ]);
        assert_eq!(is.casemapping, Casemapping::Ascii);
        assert_eq!(is.nicklen, Some(9));
        assert_eq!(is.prefix_symbol(b'h'), Some(b'%'));
        assert!(is.mode_takes_param(b'k', false));
        assert!(is.mode_takes_param(b'l', true));
        assert!(!is.mode_takes_param(b'l', false));
        assert!(is.mode_takes_param(b'v', false));
        assert!(!is.mode_takes_param(b'n', true));
        assert_eq!(is.split_prefixes(b"~@nick"), (&b"~@"[..], &b"nick"[..]));
        is.apply([&b"-NICKLEN"[..]]);
        assert_eq!(is.nicklen, None);
    }
}
