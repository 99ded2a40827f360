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
