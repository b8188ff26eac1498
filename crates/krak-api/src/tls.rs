//! Which certificate authorities a client trusts when a controller URL is `https://`.
//!
//! Every krak process finds the rack's CA the same way: the PEM file named by
//! `KRAK_TLS_CA` (the CLI's `--tls-ca` sets it for the command and what it starts), else
//! the public web roots compiled into the client (`webpki-roots`). The rack secret signs
//! requests and answers either way (`docs/threat-model.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ureq::tls::{Certificate, PemItem, RootCerts};

/// The environment variable naming the PEM file of the CA that signed the controller's
/// certificate.
pub const CA_ENV: &str = "KRAK_TLS_CA";

/// Largest CA file read: a bundle of a few hundred certificates.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// Why the CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("TLS CA file {path}: {source} (set {CA_ENV} or --tls-ca to a PEM file)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("TLS CA file {path} is larger than {MAX_CA_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("TLS CA file {path} is not PEM: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS CA file {path} holds no certificate (want a PEM `CERTIFICATE` block)")]
    Empty { path: PathBuf },
}

/// The certificates of the PEM file at `path`.
pub fn load_ca(path: &Path) -> Result<RootCerts, CaError> {
    use std::io::Read;
    let read = |source| CaError::Read { path: path.to_path_buf(), source };
    let mut pem = Vec::new();
    std::fs::File::open(path).map_err(read)?.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem).map_err(read)?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(CaError::TooLarge { path: path.to_path_buf() });
    }
    roots_of(&pem, path)
}

/// A certificate given as PEM text (tests, and callers holding the CA in memory).
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCerts, CaError> {
    roots_of(pem, Path::new("<memory>"))
}

fn roots_of(pem: &[u8], path: &Path) -> Result<RootCerts, CaError> {
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {} // a key or another section beside the certificates: not ours to use
            Err(e) => return Err(CaError::Pem { path: path.to_path_buf(), message: e.to_string() }),
        }
    }
    if certs.is_empty() {
        return Err(CaError::Empty { path: path.to_path_buf() });
    }
    Ok(RootCerts::Specific(Arc::new(certs)))
}

/// The roots an `https://` client trusts: `KRAK_TLS_CA`'s certificates when it is set,
/// else the public web roots.
pub fn roots_from_env() -> Result<RootCerts, CaError> {
    match std::env::var_os(CA_ENV) {
        Some(path) if !path.is_empty() => load_ca(Path::new(&path)),
        _ => Ok(RootCerts::WebPki),
    }
}
