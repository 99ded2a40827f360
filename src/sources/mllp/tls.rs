use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("mllp.tls.{key}: {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("mllp.tls: {0}")]
    Config(String),
}

fn file_err(key: &'static str, path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Builds the TLS acceptor; with `client_ca`, clients must present a certificate it signed.
pub fn load_tls(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| file_err("cert", &cfg.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("cert", &cfg.cert, e))?;
    if certs.is_empty() {
        return Err(file_err("cert", &cfg.cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err("key", &cfg.key, e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err("client_ca", ca, e))? {
                roots
                    .add(c.map_err(|e| file_err("client_ca", ca, e))?)
                    .map_err(|e| file_err("client_ca", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
