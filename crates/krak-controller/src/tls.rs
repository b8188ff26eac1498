//! TLS on the controller's API, as an option (`--tls-cert`, `--tls-key`): rustls with the
//! `ring` provider (no C toolchain beyond `cc`), TLS 1.2 and 1.3, no client certificates.
//! Requests are signed with the rack secret either way; TLS adds privacy and keeps anyone on
//! the path from seeing or holding back the map (`docs/threat-model.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {message} (want a PEM file: the server's certificate, then its chain)")]
    Cert { path: PathBuf, message: String },
    #[error("--tls-cert {path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("--tls-key {path}: {message} (want the certificate's private key as PEM: PKCS#8, PKCS#1 or SEC1)")]
    Key { path: PathBuf, message: String },
    #[error("--tls-cert and --tls-key do not go together: {0}")]
    Mismatch(#[source] rustls::Error),
}

/// The server side of TLS for the certificate chain at `cert` and the key at `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: cert.to_path_buf(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert.to_path_buf() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.to_path_buf(), message: e.to_string() })?;
    // ring rather than aws-lc-rs: it builds with `cc` alone, as the clients' (ureq's) does.
    // Its key exchange is classical (no post-quantum hybrid), hence the deprecation.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
