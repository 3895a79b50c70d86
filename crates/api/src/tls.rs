//! TLS on the API listener: a certificate chain and its key from PEM files (`http.tls_cert_file`,
//! `http.tls_key_file`), put in place again when they change, without dropping connections.
//!
//! rustls with aws-lc-rs, TLS 1.2 and 1.3, HTTP/1.1 (ALPN). A connection takes the certificate
//! in place when it is accepted; the handshake is bounded like the request head (a client that
//! opens a socket and sends nothing holds it for at most [`HANDSHAKE_TIMEOUT`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file: the certificate or the key.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refuses the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used together: {0}")]
    Pair(String),
}

/// The listener's TLS: the acceptor in place, and the files it came from. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    acceptor: Arc<RwLock<TlsAcceptor>>,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    /// TLS with the certificate chain in `cert` and the private key in `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Tls {
            acceptor: Arc::new(RwLock::new(acceptor)),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// The files it reads: the certificate, then the key.
    pub fn files(&self) -> [PathBuf; 2] {
        [self.cert.clone(), self.key.clone()]
    }

    /// Reads the files again and puts the pair in place; on an error the one in place stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.acceptor.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The acceptor for a connection accepted now.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |what: &'static str, path: &Path, reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error("http.tls_cert_file", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("http.tls_cert_file", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("http.tls_cert_file", cert, "holds no CERTIFICATE".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("http.tls_key_file", key, format!("no usable private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
