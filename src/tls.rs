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
            let roots = roots_from_pem(ca).map_err(|e| file_err("client_ca", ca, &e))?;
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

/// The CA certificates in a PEM file, as roots to check a peer's certificate against.
fn roots_from_pem(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// A TLS client (the gateway's own, e.g. fetching a JWKS) trusting the CA certificates in
/// `ca` (PEM), or the system's roots.
pub fn client_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca {
        Some(path) => {
            let roots = roots_from_pem(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if roots.is_empty() {
                return Err(format!("{}: no certificate in file", path.display()));
            }
            roots
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err("no CA certificates found on this system".to_string());
            }
            roots
        }
    };
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
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
