//! rustls configurations from files and options.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::pin::{pin_of, Pin};
use super::{provider, TlsError, ALPN_HTTP11, VERSIONS};

/// Bundles tried when `SSL_CERT_FILE` is not set (Debian/Ubuntu, Fedora/RHEL,
/// openSUSE, Alpine and others), as Go's crypto/x509 and OpenSSL builds do.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Directory of single certificates used when no bundle is found.
const SYSTEM_CA_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];
/// Certificate files larger than this are not a CA bundle.
const MAX_PEM_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What a client (origin or dest) was told about TLS.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsOptions {
    /// `--ca-file`: trust these CAs instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `--tls-server-name`: the name to verify (and send as SNI) instead
    /// of the host the relay was reached by.
    pub server_name: Option<String>,
    /// `--tls-pin`: accept the relay's certificate by its public key alone.
    pub pins: Vec<Pin>,
    /// `--tls-cert` / `--tls-key`: a client certificate.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(TlsError::Config(format!(
            "{}: too large for a PEM file",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))
}

/// Every certificate in a PEM file; an error if it holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        out.push(c.map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?);
    }
    if out.is_empty() {
        return Err(TlsError::Config(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(out)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1: ECDSA, Ed25519, RSA).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Config(format!("{}: no usable private key ({e})", path.display())))
}

fn add_pem_roots(roots: &mut RootCertStore, pem: &[u8]) -> usize {
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    roots.add_parsable_certificates(certs).0
}

/// The system's trust anchors, found as OpenSSL finds them: `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` (colon-separated) when set, else the usual bundle.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let env_file = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    let env_dir = std::env::var_os("SSL_CERT_DIR").filter(|v| !v.is_empty());
    let mut roots = RootCertStore::empty();
    let mut tried = Vec::new();
    let file = match &env_file {
        Some(f) => Some(PathBuf::from(f)),
        None if env_dir.is_none() => SYSTEM_CA_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
        None => None,
    };
    if let Some(f) = &file {
        tried.push(f.display().to_string());
        if let Ok(pem) = read_file(f) {
            add_pem_roots(&mut roots, &pem);
        }
    }
    let dirs: Vec<PathBuf> = match &env_dir {
        Some(d) => std::env::split_paths(d).collect(),
        None if file.is_none() => SYSTEM_CA_DIRS.iter().map(PathBuf::from).collect(),
        None => Vec::new(),
    };
    for d in dirs {
        tried.push(d.display().to_string());
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for ent in rd.flatten().take(10_000) {
            let p = ent.path();
            if p.is_file() {
                if let Ok(pem) = read_file(&p) {
                    add_pem_roots(&mut roots, &pem);
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config(format!(
            "no trusted CA certificates found (looked in {}); set SSL_CERT_FILE or use --ca-file",
            if tried.is_empty() {
                "nothing".to_string()
            } else {
                tried.join(", ")
            }
        )));
    }
    Ok(roots)
}

/// The pin did not match: the message shows the key the relay presented.
#[derive(Debug)]
struct PinMismatch(Option<Pin>);

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "pin mismatch (the relay's key is {p})"),
            None => write!(f, "pin mismatch (unreadable certificate)"),
        }
    }
}

impl std::error::Error for PinMismatch {}

/// `--tls-pin`: the end-entity certificate's SPKI hash must be one of the
/// pins. The chain and the name are then not checked (that is the point of a
/// pin for a self-signed relay); the handshake signature still is, so the
/// relay must hold the pinned key.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<Pin>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = pin_of(end_entity);
        match got {
            Some(p) if self.pins.contains(&p) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch(got)))),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientTlsOptions {
    /// True when any TLS option was given (used to warn that they do
    /// nothing on a `ws://` relay).
    pub fn any_set(&self) -> bool {
        self.ca_file.is_some()
            || self.server_name.is_some()
            || !self.pins.is_empty()
            || self.cert.is_some()
            || self.key.is_some()
    }

    /// Builds the rustls client configuration (reads the files now).
    pub fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let prov = provider();
        let builder = ClientConfig::builder_with_provider(prov.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if !self.pins.is_empty() {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pins: self.pins.clone(),
                    algs: prov.signature_verification_algorithms,
                }))
        } else {
            let roots = match &self.ca_file {
                Some(f) => {
                    let mut roots = RootCertStore::empty();
                    for c in load_certs(f)? {
                        roots.add(c).map_err(|e| {
                            TlsError::Config(format!(
                                "{}: not a usable CA certificate: {e}",
                                f.display()
                            ))
                        })?;
                    }
                    roots
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut cfg = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(load_certs(c)?, load_key(k)?)
                .map_err(|e| TlsError::Config(format!("--tls-cert/--tls-key: {e}")))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The name to verify for a relay reached as `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::Config(format!("{name:?} is not a valid TLS server name")))
    }
}

/// The relay's certificate files (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A server configuration that can be reloaded from its files.
pub struct ServerTls {
    files: ServerTlsFiles,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn load(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let config = Self::build(&files)?;
        Ok(Self { files, config })
    }

    fn build(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
        let prov = provider();
        let builder = ServerConfig::builder_with_provider(prov.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c).map_err(|e| {
                        TlsError::Config(format!(
                            "{}: not a usable CA certificate: {e}",
                            ca.display()
                        ))
                    })?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), prov)
                    .build()
                    .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Config(format!(
                "{} / {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
        cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Re-reads the files. On any error the old configuration stays in use
    /// (and the error says why, for the log).
    pub fn reload(&mut self) -> Result<(), TlsError> {
        let config = Self::build(&self.files)?;
        self.config = config;
        Ok(())
    }

    /// The configuration for new connections (existing ones keep theirs).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }
}
