//! MLLP over mutual TLS with certificates made by openssl for the test.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=medanchor test CA",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
        (
            "client2",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extf,
            ],
        );
    }
}

async fn exchange(
    dir: &Path,
    addr: std::net::SocketAddr,
    with_client_cert: bool,
) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = if with_client_cert {
        let certs = vec![CertificateDer::from_pem_file(dir.join("client.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    tls.write_all(b"\x0bMSH|^~\\&|A|B|C|D|20240101||ADT^A01|TLS1|P|2.5\rPID|1||9^^^H^MR\r\x1c\x0d")
        .await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"\x1c\x0d") {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before an ACK",
            ));
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

#[tokio::test]
async fn mutual_tls_accepts_known_clients_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__MLLP__TLS__CERT", &p("server.pem")),
            ("MEDANCHOR__MLLP__TLS__KEY", &p("server.key")),
            ("MEDANCHOR__MLLP__TLS__CLIENT_CA", &p("ca.pem")),
        ],
    );
    let ack = exchange(dir.path(), g.mllp, true)
        .await
        .expect("client with a CA-signed certificate");
    let (code, control, _) = msa(&ack[1..ack.len() - 2]);
    assert_eq!((code.as_str(), control.as_str()), ("AA", "TLS1"));
    assert!(
        exchange(dir.path(), g.mllp, false).await.is_err(),
        "a client without a certificate gets no ACK"
    );
    // Plain TCP to a TLS listener gets nothing either.
    let plain = std::net::TcpStream::connect(g.mllp).unwrap();
    drop(plain);
    let failed = g.wait_metric(
        "medanchor_mllp_connection_errors_total{kind=\"tls_handshake\"}",
        2.0,
        std::time::Duration::from_secs(15),
    );
    assert_eq!(failed, 2.0, "both refused handshakes are counted");
}

/// One HTTP/1.1 request over TLS, presenting `client` (a name from make_pki) if given:
/// (status, body), or the connection's error.
async fn https(
    dir: &Path,
    addr: std::net::SocketAddr,
    client: Option<&str>,
    request: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let certs =
                vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).unwrap()];
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
}

/// The HTTP listener over mutual TLS: a client certificate mapped to a principal authenticates
/// a request without a token; an unmapped one does not, nor does a forged header naming the
/// mapped one; a client without a certificate gets no TLS session.
#[tokio::test]
async fn https_with_client_certificates_mapped_to_principals() {
    use sha3::Digest;
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__TLS__CERT", &p("server.pem")),
            ("MEDANCHOR__HTTP__TLS__KEY", &p("server.key")),
            ("MEDANCHOR__HTTP__TLS__CLIENT_CA", &p("ca.pem")),
        ],
    );
    let der = CertificateDer::from_pem_file(dir.path().join("client.pem")).unwrap();
    let fp = format!(
        "sha3-256:{}",
        hex::encode(sha3::Sha3_256::digest(der.as_ref()))
    );
    let admin = g.admin_token().unwrap();
    // The admin (a token, over any CA-signed client certificate) maps `client` to an auditor.
    let body =
        serde_json::json!({"id": "aud-tls", "role": "auditor", "certificates": [fp]}).to_string();
    let add = format!(
        "POST /v1/admin/principals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = https(dir.path(), g.http, Some("client2"), &add)
        .await
        .unwrap();
    assert_eq!(status, 201, "{text}");

    let key = get("/v1/log/public-key", "");
    let (status, text) = https(dir.path(), g.http, Some("client"), &key)
        .await
        .unwrap();
    assert_eq!(status, 200, "the mapped certificate authenticates: {text}");
    let (status, _) = https(dir.path(), g.http, Some("client2"), &key)
        .await
        .unwrap();
    assert_eq!(status, 401, "an unmapped certificate does not");
    let forged = get(
        "/v1/log/public-key",
        &format!("medanchor-internal-client-cert: {fp}\r\n"),
    );
    let (status, _) = https(dir.path(), g.http, Some("client2"), &forged)
        .await
        .unwrap();
    assert_eq!(status, 401, "a header cannot claim another certificate");
    assert!(
        https(dir.path(), g.http, None, &key).await.is_err(),
        "no certificate, no session"
    );
    // Revoking the principal stops its certificate at once.
    let revoke = format!(
        "DELETE /v1/admin/principals/aud-tls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        https(dir.path(), g.http, Some("client"), &revoke)
            .await
            .unwrap()
            .0,
        204
    );
    assert_eq!(
        https(dir.path(), g.http, Some("client"), &key)
            .await
            .unwrap()
            .0,
        401
    );
}

/// Serves `body` once over TLS with the test PKI's server certificate (127.0.0.1), then says
/// close_notify; `None` if the client gave up during the handshake (it refused the certificate).
fn serve_once_over_tls(
    dir: &Path,
    body: String,
) -> (u16, std::thread::JoinHandle<Option<Vec<u8>>>) {
    use std::io::{Read, Write};
    let certs = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        Some(req)
    });
    (port, server)
}

/// The identity provider's JWKS fetched from an https:// URL: its server certificate checked
/// against `jwt.jwks_ca` (the keys loaded then verify a token); the same server is refused when
/// `jwks_ca` names another CA, and nothing is asked of it.
#[test]
fn the_jwks_is_fetched_over_https_from_a_server_the_configured_ca_vouches_for() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use medanchor::api::jwt::{JwtConfig, JwtError, JwtVerifier};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let idp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let p = idp.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1",
        "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]})
    .to_string();
    let config = |port: u16, ca: Option<std::path::PathBuf>| JwtConfig {
        issuer: "https://idp.hospital.test".into(),
        audience: "medanchor".into(),
        jwks_file: None,
        jwks_url: Some(format!("https://127.0.0.1:{port}/keys.json")),
        jwks_ca: ca,
        principal_claim: "sub".into(),
        leeway_secs: 60,
    };

    let (port, server) = serve_once_over_tls(dir.path(), jwks.clone());
    let verifier = JwtVerifier::new(config(port, Some(dir.path().join("ca.pem")))).unwrap();
    let request = server.join().unwrap().expect("the request arrived");
    assert!(request.starts_with(b"GET /keys.json HTTP/1.1\r\n"));
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"idp-1","typ":"JWT"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.hospital.test", "aud": "medanchor",
        "sub": "dr-a", "exp": now + 300});
    let signed = format!("{h}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = idp.sign(&rng, signed.as_bytes()).unwrap();
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert_eq!(verifier.verify(&token, now).unwrap().principal, "dr-a");

    // Another CA trusted instead: the server's certificate does not chain to it, the handshake
    // fails, nothing is asked of the server, and the gateway would not start.
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let (port, server) = serve_once_over_tls(dir.path(), jwks);
    match JwtVerifier::new(config(port, Some(other.path().join("ca.pem")))) {
        Err(JwtError::Jwks(m)) => assert!(m.contains("certificate"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a server no trusted CA vouches for was believed"),
    }
    assert!(server.join().unwrap().is_none(), "no request was sent");
}
