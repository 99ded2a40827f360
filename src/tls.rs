//! TLS for the listeners (MLLP and HTTP), optionally mutual: a client certificate is then
//! required, and named by its fingerprint (`sha3-256:` + hex of the DER certificate).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `section` is the configuration's (`mllp.tls`, `http.tls`).
    #[error("{section}.{key}: {path}: {reason}")]
    File {
        section: &'static str,
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}: {1}")]
    Config(&'static str, String),
}

/// Builds the TLS acceptor for the listener configured at `section`; with `client_ca`, clients
/// must present a certificate it signed.
pub fn load_tls(
    cfg: &TlsConfig,
    section: &'static str,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let file_err =
        |key: &'static str, path: &std::path::Path, e: &dyn std::fmt::Display| TlsError::File {
            section,
            key,
            path: path.display().to_string(),
            reason: e.to_string(),
        };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| file_err("cert", &cfg.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("cert", &cfg.cert, &e))?;
    if certs.is_empty() {
        return Err(file_err("cert", &cfg.cert, &"no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err("key", &cfg.key, &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err("client_ca", ca, &e))? {
                roots
                    .add(c.map_err(|e| file_err("client_ca", ca, &e))?)
                    .map_err(|e| file_err("client_ca", ca, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Config(section, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(section, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The fingerprint naming a TLS client by its certificate (the first of its chain).
pub fn client_fingerprint<IO>(tls: &tokio_rustls::server::TlsStream<IO>) -> Option<String> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| {
            format!(
                "sha3-256:{}",
                hex::encode(crate::seal::fingerprint(c.as_ref()))
            )
        })
}
