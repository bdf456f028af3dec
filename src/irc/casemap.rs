//! Case mapping of nicks and channel names, chosen by ISUPPORT `CASEMAPPING`.

/// How a network folds case. Absent `CASEMAPPING` means `rfc1459`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Casemapping {
    Ascii,
    #[default]
    Rfc1459,
    Rfc1459Strict,
}

impl Casemapping {
    pub fn from_token(value: &str) -> Casemapping {
        match value.to_ascii_lowercase().as_str() {
            "ascii" => Casemapping::Ascii,
            "strict-rfc1459" | "rfc1459-strict" => Casemapping::Rfc1459Strict,
            // rfc7613/utf8 mappings fold ASCII like rfc1459 for our purposes.
            _ => Casemapping::Rfc1459,
        }
    }

    /// Folds one byte to lower case.
    pub fn fold_byte(self, b: u8) -> u8 {
        match (self, b) {
            (_, b'A'..=b'Z') => b + 32,
            (Casemapping::Rfc1459, b'[' | b']' | b'\\' | b'~') => match b {
                b'~' => b'^',
                b => b + 32,
            },
            (Casemapping::Rfc1459Strict, b'[' | b']' | b'\\') => b + 32,
            (_, b) => b,
        }
    }

    /// The folded form of a name: the key of every per-network map.
    pub fn fold(self, name: &[u8]) -> Vec<u8> {
        name.iter().map(|&b| self.fold_byte(b)).collect()
    }

    pub fn eq(self, a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&x, &y)| self.fold_byte(x) == self.fold_byte(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1459_folds_brackets() {
        assert_eq!(Casemapping::Rfc1459.fold(b"Nick[]\\~"), b"nick{}|^");
        assert_eq!(Casemapping::Rfc1459Strict.fold(b"Nick[]\\~"), b"nick{}|~");
        assert_eq!(Casemapping::Ascii.fold(b"Nick[]\\~"), b"nick[]\\~");
        assert!(Casemapping::Rfc1459.eq(b"#Ferry[", b"#fERRY{"));
        assert_eq!(
            Casemapping::Ascii.fold("Café".as_bytes()),
            "café".as_bytes()
        );
    }
}
