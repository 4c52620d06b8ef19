//! TLS for `engine serve --tls-cert FILE --tls-key FILE`: one PEM certificate
//! chain and key, loaded once at start and used by both listeners, HTTP
//! (tokio-rustls in [`crate::http::serve`]'s accept loop) and gRPC (tonic's
//! own rustls TLS). rustls with the ring provider: no OpenSSL, no cmake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used; reported at start, before any
/// listener opens, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert and --tls-key go together: {0} is missing")]
    Incomplete(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no PEM certificate in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}: {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("the certificate and key do not fit together: {0}")]
    Config(#[from] rustls::Error),
}

/// The loaded certificate and key: the rustls server configuration of the
/// HTTP listener and the PEM text tonic takes for gRPC.
#[derive(Clone)]
pub struct TlsMaterial {
    /// For HTTP: ALPN offers `http/1.1` only (the server speaks HTTP/1.1).
    pub http: Arc<rustls::ServerConfig>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads `--tls-cert`/`--tls-key`: `None` when neither is given, an
    /// error when only one is (clap already refuses that on the command
    /// line; this covers configurations built in code).
    pub fn from_options(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Incomplete("--tls-key")),
            (None, Some(_)) => Err(TlsError::Incomplete("--tls-cert")),
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
        }
    }

    /// Reads and checks a PEM certificate chain (leaf first) and its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        install_ring_provider();
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NoKey {
            path: key_path.to_owned(),
            reason: error.to_string(),
        })?;
        // with_single_cert checks that the key matches the certificate.
        let mut http = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            http: Arc::new(http),
            cert_pem,
            key_pem,
        })
    }
}

/// tonic builds its rustls server configuration with the process-wide
/// default provider; make that ring explicitly, so a dependency that also
/// enables aws-lc-rs cannot leave the choice ambiguous (a panic at start).
fn install_ring_provider() {
    // Err means a provider is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
