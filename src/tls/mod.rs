//! Native TLS (`wss://`, and the relay's TLS listeners): rustls with ring as
//! its crypto provider, TLS 1.3 and 1.2, ALPN `http/1.1`.
//!
//! - [`session`]: one TLS connection as a sans-IO value over rustls's
//!   unbuffered API (ciphertext in, plaintext out; pooled buffers only while
//!   busy).
//! - [`config`]: client and server configurations from files: system roots
//!   (`SSL_CERT_FILE` / `SSL_CERT_DIR`), `--ca-file`, `--tls-pin`, client
//!   certificates, server certificate reload that keeps the old one when the
//!   new files are broken.
//! - [`pin`]: SPKI pins (`sha256/BASE64`, as curl's `--pinnedpubkey`).

pub mod config;
pub mod pin;
pub mod session;
pub mod stream;
#[doc(hidden)]
pub mod testcerts;
#[cfg(test)]
mod tests;

pub use config::{ClientTlsOptions, ServerTls, ServerTlsFiles};
pub use session::{Read, TlsSession};
pub use stream::{tls_error, Plain, TlsStream};

use rustls::{AlertDescription, CertificateError};
use std::fmt;

/// A TLS failure with a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// We rejected the peer's certificate: `certificate verify failed: …`.
    /// Never retried (a wrong certificate will not fix itself).
    Verify(String),
    /// The peer refused the handshake (an alert), e.g. our client
    /// certificate.
    PeerRefused(String),
    /// Any other protocol failure (garbage, unsupported versions, …).
    Protocol(String),
    /// The connection ended or the state machine could not go on.
    Closed(String),
    /// A file or option could not be used.
    Config(String),
}

impl TlsError {
    /// Failures that a retry cannot fix: certificate verification and
    /// configuration. The clients exit 1 on these instead of backing off.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TlsError::Verify(_) | TlsError::Config(_) | TlsError::PeerRefused(_)
        )
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Verify(m) => write!(f, "certificate verify failed: {m}"),
            TlsError::PeerRefused(m) => write!(f, "TLS handshake refused by the peer: {m}"),
            TlsError::Protocol(m) => write!(f, "TLS error: {m}"),
            TlsError::Closed(m) => write!(f, "TLS: {m}"),
            TlsError::Config(m) => write!(f, "TLS configuration: {m}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Says why a certificate was refused, in the words of OpenSSL and curl.
pub fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "unknown issuer".into(),
        CertificateError::NotValidForName => "name mismatch".into(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            if presented.is_empty() {
                format!("name mismatch (wanted {expected:?}; the certificate names none)")
            } else {
                format!(
                    "name mismatch (wanted {:?}; the certificate is for {})",
                    expected,
                    presented.join(", ")
                )
            }
        }
        CertificateError::Expired => "expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!(
                "expired (not after {} s since the epoch)",
                not_after.as_secs()
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not yet valid".into()
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::BadEncoding => "bad certificate encoding".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not valid for this purpose".into()
        }
        CertificateError::Other(o) => o.0.to_string(),
        other => format!("{other:?}"),
    }
}

fn describe_alert(a: &AlertDescription) -> String {
    match a {
        AlertDescription::CertificateRequired => {
            "a client certificate is required (--tls-cert/--tls-key)".into()
        }
        AlertDescription::BadCertificate | AlertDescription::UnknownCA => {
            format!("our certificate was refused ({a:?})")
        }
        AlertDescription::HandshakeFailure => {
            "handshake failure (no common cipher or version?)".into()
        }
        other => format!("alert {other:?}"),
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        match &e {
            rustls::Error::InvalidCertificate(c) => TlsError::Verify(describe_certificate_error(c)),
            rustls::Error::NoCertificatesPresented => {
                TlsError::Verify("the peer presented no certificate".into())
            }
            // What the relay sends instead of a handshake when it is at
            // --max-connections / --max-pending: busy, worth a retry.
            rustls::Error::AlertReceived(AlertDescription::InternalError) => TlsError::Closed(
                "the relay refused the connection before the handshake (alert InternalError: \
                 busy, at its connection or pending-handshake limit?)"
                    .into(),
            ),
            rustls::Error::AlertReceived(a) => TlsError::PeerRefused(describe_alert(a)),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                TlsError::Protocol(format!("not TLS, or a broken peer ({e})"))
            }
            _ => TlsError::Protocol(e.to_string()),
        }
    }
}

/// The crypto provider every config uses: ring (already in the tree).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN: the WebSocket upgrade is HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
