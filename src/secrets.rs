//! Secrets at rest: the node's secret key, values sealed with it, and the admin token
//! derived from it.
//!
//! The key is 32 random bytes kept *outside* the store: a key file (64 hex digits,
//! mode 0600, created on a node's first start; `--secret-key-file`, by default
//! `<data-dir>.key` next to the data directory) or the `FERRY_SECRET_KEY` variable (the
//! same 64 hex digits). Every node of a cluster needs the same key.
//!
//! A sealed value is `v1:<key id>:<base64(nonce ‖ ciphertext)>`: XChaCha20-Poly1305
//! (the `chacha20poly1305` crate) with a random 24-byte nonce per value and the
//! value's place (`network:<id>:sasl_password`) as associated data, so a value copied
//! to another row does not open. `<key id>` names the key (an HMAC of a fixed label),
//! so a node with the wrong key says so instead of failing to decrypt.
//!
//! The admin token of a node is `HMAC-SHA256(key, node id, nonce)`: the store keeps
//! only `v1:<key id>:<nonce>:<SHA-256 of the token>` (`nodes.admin_token`), the node keeps the
//! token in memory, and the CLI (which has the key) derives it again from the nonce.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The environment variable holding the key itself (64 hex digits).
pub const KEY_ENV: &str = "FERRY_SECRET_KEY";

/// The version tag of sealed values and admin token records.
const V1: &str = "v1";
const NONCE_LEN: usize = 24;

/// Why a key could not be loaded or a value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the secret key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a secret key: expected 64 hex digits (32 bytes)")]
    BadKey { what: String },
    #[error(
        "no secret key: {path} does not exist (start `ferry serve` once to create it, \
         or give --secret-key-file or {KEY_ENV})"
    )]
    Missing { path: PathBuf },
    #[error(
        "{what} was sealed with secret key {sealed_with}, but this key is {key}: every node \
         and the CLI need the same key file (docs/operations.md, \"Secrets at rest\")"
    )]
    WrongKey {
        what: String,
        sealed_with: String,
        key: String,
    },
    #[error("{what} does not open with secret key {key}: damaged or moved from another row")]
    Corrupt { what: String, key: String },
    #[error("{what} is sealed, and no secret key was given (--secret-key-file or {KEY_ENV})")]
    NoKey { what: String },
    #[error("{what} is not a sealed value")]
    NotSealed { what: String },
}

/// The node's secret key.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; 32],
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

impl SecretKey {
    fn new(key: [u8; 32]) -> SecretKey {
        let id = hex::encode(&hmac(&key, &[b"ferry key id"])[..4]);
        SecretKey { key, id }
    }

    /// A fresh random key.
    pub fn generate() -> SecretKey {
        SecretKey::new(rand::random())
    }

    /// A key from its 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`SecretError::BadKey`] naming `what`.
    pub fn from_hex(text: &str, what: &str) -> Result<SecretKey, SecretError> {
        let bad = || SecretError::BadKey { what: what.into() };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        Ok(SecretKey::new(bytes.try_into().map_err(|_| bad())?))
    }

    /// The key as its file holds it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key)
    }

    /// A short public name of the key (8 hex digits), shown in errors and in sealed
    /// values; it reveals nothing of the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key file at `path`. A file readable by others is tightened to 0600
    /// with a warning.
    ///
    /// # Errors
    /// [`SecretError::Missing`] when there is no such file, else unreadable or bad.
    pub fn load(path: &Path) -> Result<SecretKey, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::Missing {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        tighten(path, 0o600).map_err(io)?;
        SecretKey::from_hex(&text, &path.display().to_string())
    }

    /// Reads the key file at `path`, or creates it (mode 0600, a fresh random key)
    /// when it does not exist. Says whether it was created.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds no key.
    pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), SecretError> {
        match SecretKey::load(path) {
            Err(SecretError::Missing { .. }) => {}
            other => return other.map(|k| (k, false)),
        }
        let key = SecretKey::generate();
        let io = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Written whole under a temporary name, then linked into place: a process
        // starting at the same moment sees either no file or the whole key.
        let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
                f.sync_all()
            });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return SecretKey::load(path).map(|k| (k, false))
            }
            Err(e) => return Err(io(e)),
        }
        Ok((key, true))
    }

    /// Seals `plain` for the place `what` (the associated data).
    pub fn seal(&self, plain: &str, what: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: what.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a string has");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!(
            "{V1}:{}:{}",
            self.id,
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        )
    }

    /// Opens a value sealed for `what`.
    ///
    /// # Errors
    /// Not a sealed value, sealed with another key, or damaged.
    pub fn open(&self, sealed: &str, what: &str) -> Result<String, SecretError> {
        let not_sealed = || SecretError::NotSealed { what: what.into() };
        let mut parts = sealed.splitn(3, ':');
        let (Some(V1), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(not_sealed());
        };
        if id != self.id {
            return Err(SecretError::WrongKey {
                what: what.into(),
                sealed_with: id.into(),
                key: self.id.clone(),
            });
        }
        let corrupt = || SecretError::Corrupt {
            what: what.into(),
            key: self.id.clone(),
        };
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| corrupt())?;
        if bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.key).into())
    }

    /// The admin token of node `node_id` started with `nonce`.
    pub fn admin_token(&self, node_id: &str, nonce: &str) -> String {
        hex::encode(hmac(
            &self.key,
            &[
                b"ferry admin token v1",
                node_id.as_bytes(),
                nonce.as_bytes(),
            ],
        ))
    }

    /// A fresh admin token for node `node_id`: the token and what the store keeps.
    pub fn new_admin_token(&self, node_id: &str) -> AdminToken {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let token = self.admin_token(node_id, &nonce);
        let stored = format!(
            "{V1}:{}:{nonce}:{}",
            self.id,
            hex::encode(Sha256::digest(&token))
        );
        AdminToken { token, stored }
    }

    /// The admin token of node `node_id` from what the store keeps of it.
    ///
    /// # Errors
    /// The record is not one of ours, or the key is not the one the node has.
    pub fn recover_admin_token(&self, node_id: &str, stored: &str) -> Result<String, SecretError> {
        let what = format!("the admin token of node {node_id:?}");
        let mut parts = stored.splitn(4, ':');
        let (Some(V1), Some(key_id), Some(nonce), Some(hash)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::NotSealed { what });
        };
        let token = self.admin_token(node_id, nonce);
        if key_id != self.id || !token_matches(&token, hash) {
            return Err(SecretError::WrongKey {
                what,
                sealed_with: key_id.into(),
                key: self.id.clone(),
            });
        }
        Ok(token)
    }
}

/// The id of the key a node's admin token record was made with (`None` for a record
/// of an older Ferry): nodes compare it at start, so a node with another key than
/// the running ones refuses to start.
pub fn token_key_id(stored: &str) -> Option<&str> {
    let mut parts = stored.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(V1), Some(id), Some(_), Some(_)) => Some(id),
        _ => None,
    }
}

/// A node's admin token: the bearer token, and the form the store keeps.
#[derive(Clone)]
pub struct AdminToken {
    pub token: String,
    pub stored: String,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

impl AdminToken {
    /// Whether `given` is this token (constant time).
    pub fn matches(&self, given: &str) -> bool {
        token_matches(given, &hex::encode(Sha256::digest(&self.token)))
    }
}

/// Whether SHA-256 of `token` is `hash_hex`, compared in constant time.
fn token_matches(token: &str, hash_hex: &str) -> bool {
    let given = hex::encode(Sha256::digest(token.as_bytes()));
    given.as_bytes().ct_eq(hash_hex.as_bytes()).into()
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        // Length-prefixed, so no two part lists give the same input.
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Where the key comes from, in order: `--secret-key-file` (or its variable
/// `FERRY_SECRET_KEY_FILE`), else `FERRY_SECRET_KEY`, else the default file.
#[derive(Clone)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySource({})", self.describe())
    }
}

impl KeySource {
    /// The source for an explicit file (if any), else the variable, else `default`.
    pub fn resolve(file: Option<&Path>, default: PathBuf) -> KeySource {
        if let Some(f) = file {
            return KeySource::File(f.to_owned());
        }
        match std::env::var(KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => KeySource::Env(v),
            _ => KeySource::File(default),
        }
    }

    /// The key; a missing file is created when `create`.
    ///
    /// # Errors
    /// See [`SecretError`].
    pub fn load(&self, create: bool) -> Result<(SecretKey, bool), SecretError> {
        match self {
            KeySource::Env(v) => SecretKey::from_hex(v, KEY_ENV).map(|k| (k, false)),
            KeySource::File(p) if create => SecretKey::load_or_create(p),
            KeySource::File(p) => SecretKey::load(p).map(|k| (k, false)),
        }
    }

    /// Where the key is, for messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Env(_) => KEY_ENV.to_owned(),
        }
    }
}

/// The default key file for a data directory: `<data-dir>.key` beside it, so a copy of
/// the data directory does not carry the key.
pub fn default_key_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "ferry-data".into());
    name.push(".key");
    data_dir.with_file_name(name)
}

/// Sets `path` to `mode` when it allows more, with a warning naming both modes.
///
/// # Errors
/// The file's mode cannot be read or changed.
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let current = meta.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{current:o}"),
            "readable by other users: tightening to {mode:o}"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_with_the_same_key_and_place_only() {
        let k = SecretKey::generate();
        let s = k.seal("hunter2", "network:1:sasl_password");
        assert!(s.starts_with(&format!("v1:{}:", k.id())), "{s}");
        assert!(!s.contains("hunter2"));
        assert_eq!(k.open(&s, "network:1:sasl_password").unwrap(), "hunter2");
        assert!(matches!(
            k.open(&s, "network:2:sasl_password"),
            Err(SecretError::Corrupt { .. })
        ));
        let other = SecretKey::generate();
        assert!(matches!(
            other.open(&s, "network:1:sasl_password"),
            Err(SecretError::WrongKey { .. })
        ));
        // A fresh nonce every time.
        assert_ne!(s, k.seal("hunter2", "network:1:sasl_password"));
        assert!(matches!(
            k.open("hunter2", "x"),
            Err(SecretError::NotSealed { .. })
        ));
    }

    #[test]
    fn admin_token_is_derived_again_from_the_record_with_the_key_only() {
        let k = SecretKey::generate();
        let t = k.new_admin_token("n1");
        assert!(!t.stored.contains(&t.token));
        assert!(t.matches(&t.token));
        assert!(!t.matches("nope"));
        assert_eq!(k.recover_admin_token("n1", &t.stored).unwrap(), t.token);
        assert_eq!(token_key_id(&t.stored), Some(k.id()));
        assert_eq!(token_key_id("0123abcd"), None);
        assert!(k.recover_admin_token("n2", &t.stored).is_err());
        assert!(SecretKey::generate()
            .recover_admin_token("n1", &t.stored)
            .is_err());
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (k, created) = SecretKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = SecretKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k.id(), again.id());
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(SecretError::BadKey { .. })
        ));
        assert_eq!(
            default_key_file(Path::new("./ferry-data")),
            Path::new("./ferry-data.key")
        );
    }
}
