//! rustls client configuration for upstream connections.
//!
//! - `Verify`: the usual chain and name check against the webpki roots.
//! - `Insecure`: any certificate (the handshake signature is still checked).
//! - `Pin(hex)`: only a certificate whose DER SHA-256 is the pin, whatever
//!   its name or issuer — for self-signed servers.
//!
//! A client certificate (for SASL EXTERNAL / CertFP) comes from one PEM file
//! holding the certificate chain and the private key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::store::TlsVerify;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS pin is not a hex SHA-256 fingerprint: {0:?}")]
    BadPin(String),
    #[error("client certificate {path}: {source}")]
    CertFile {
        path: String,
        source: std::io::Error,
    },
    #[error("client certificate {0}: no certificate or no private key in the file")]
    CertMissing(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a pin: 64 hex digits, optionally separated by `:` (as openssl prints them).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TlsConfigError> {
    let clean: String = pin
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&clean, &mut out).map_err(|_| TlsConfigError::BadPin(pin.to_owned()))?;
    Ok(out)
}

/// The SHA-256 of a certificate's DER, as lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Builds the client configuration for one connection.
///
/// # Errors
/// A malformed pin, or an unreadable or incomplete client certificate file.
pub fn client_config(
    verify: &TlsVerify,
    client_cert_pem: Option<&str>,
) -> Result<ClientConfig, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match verify {
        TlsVerify::Verify => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots)
        }
        TlsVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert {
                pin: None,
                provider,
            })),
        TlsVerify::Pin(hex) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert {
                pin: Some(parse_pin(hex)?),
                provider,
            })),
    };
    let mut config = match client_cert_pem {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let (certs, key) = load_pem(path)?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    // An in-place upgrade switches the session to kernel TLS with them (`crate::ktls`).
    config.enable_secret_extraction = true;
    Ok(config)
}

fn load_pem(
    path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsConfigError> {
    let io_err = |source| TlsConfigError::CertFile {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(io_err)?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err)?;
    let key = rustls_pemfile::private_key(&mut &pem[..]).map_err(io_err)?;
    match key {
        Some(key) if !certs.is_empty() => Ok((certs, key)),
        _ => Err(TlsConfigError::CertMissing(path.to_owned())),
    }
}

/// Accepts any certificate, or only the pinned one. Handshake signatures are
/// still verified so the peer must hold the certificate's key.
#[derive(Debug)]
struct AnyCert {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if Sha256::digest(end_entity.as_ref())[..] == pin[..] => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the pin",
                fingerprint(end_entity)
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&hex).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abc").is_err());
    }

    #[test]
    fn client_cert_from_one_pem_file() {
        let cert = rcgen::generate_simple_self_signed(vec!["ferry".into()]).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let pem = format!("{}{}", cert.cert.pem(), cert.key_pair.serialize_pem());
        std::io::Write::write_all(&mut file, pem.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap();
        client_config(&TlsVerify::Insecure, Some(path)).unwrap();

        let mut only_cert = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut only_cert, cert.cert.pem().as_bytes()).unwrap();
        let err = client_config(&TlsVerify::Insecure, only_cert.path().to_str()).unwrap_err();
        assert!(matches!(err, TlsConfigError::CertMissing(_)), "{err}");
    }
}
