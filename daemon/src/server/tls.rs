//! The daemon's TLS certificate: read from the files the configuration names
//! at the start and again at every SIGHUP. A new certificate serves the
//! connections accepted after it; open ones keep the one they began with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the certificate chain and its private key are (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// Reads both files and checks that the key is the certificate's.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let chain = read_chain(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|error| format!("cannot read the TLS key file {}: {error}", self.key_file.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("cannot set up TLS: {error}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| {
                format!(
                    "the TLS key file {} does not go with the certificate file {}: {error}",
                    self.key_file.display(),
                    self.cert_file.display()
                )
            })?;
        Ok(Arc::new(config))
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let error = |reason: String| format!("cannot read the TLS certificate file {}: {reason}", path.display());
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("it holds no PEM certificate".to_string()));
    }
    Ok(chain)
}
