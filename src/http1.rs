//! One blocking HTTP/1.1 request on a fresh connection (`Connection: close`), plain or over TLS,
//! for the gateway's own small clients: the CLI's calls to a running gateway's admin API and the
//! JWKS fetch from an identity provider. Answers are read to their end (at most `max_bytes`) and
//! held to their `Content-Length`; a chunked answer is refused, since neither caller's peer
//! sends one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;

/// An answer: its status, its head (status line and headers, lower-cased) and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// A request: `method path` to `addr` with `Host: host`, the headers and the body.
pub struct Request<'a> {
    pub addr: SocketAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// TLS for a request: the client's configuration (which roots it trusts) and the name the
/// server's certificate must carry.
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Sends the request and reads the answer; `timeout` bounds the connect and each read.
pub fn request(r: &Request<'_>, timeout: Duration, max_bytes: u64) -> io::Result<Answer> {
    let mut s = connect(r.addr, timeout)?;
    exchange(&mut s, r, max_bytes)
}

/// [`request`] over TLS: the server's certificate is checked against `tls` before anything is
/// sent.
pub fn request_tls(
    r: &Request<'_>,
    tls: &Tls,
    timeout: Duration,
    max_bytes: u64,
) -> io::Result<Answer> {
    let tcp = connect(r.addr, timeout)?;
    let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    exchange(&mut s, r, max_bytes)
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn exchange<S: Read + Write>(s: &mut S, r: &Request<'_>, max_bytes: u64) -> io::Result<Answer> {
    let Request {
        host,
        method,
        path,
        headers,
        body,
        ..
    } = *r;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    let mut out = Vec::new();
    match s.take(max_bytes).read_to_end(&mut out) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: the bytes read so far stand, held to
        // the Content-Length below (a cut answer is not taken for a whole one).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = memchr::memmem::find(&out, b"\r\n\r\n")
        .ok_or_else(|| bad("the answer has no header end"))?;
    let (head, body) = (String::from_utf8_lossy(&out[..end]), &out[end + 4..]);
    let head = head.to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the answer has no status"))?;
    if head.contains("transfer-encoding: chunked") {
        return Err(bad("chunked answers are not read"));
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>());
    match length {
        Some(Ok(n)) if n == body.len() => {}
        None => {}
        Some(_) => return Err(bad("the answer is not as long as its content-length")),
    }
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `answer` to one connection and returns what `request` made of it.
    fn against(answer: &'static [u8]) -> io::Result<Answer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req).unwrap();
            c.write_all(answer).unwrap();
        });
        let r = Request {
            addr,
            host: "127.0.0.1",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
        };
        let answer = request(&r, Duration::from_secs(5), 1 << 20);
        server.join().unwrap();
        answer
    }

    /// An answer is held to its Content-Length: one cut short (a peer gone mid-body) or one
    /// longer is an error, not a shorter body; without the header it is read to the end.
    #[test]
    fn an_answer_is_as_long_as_its_content_length_says() {
        let whole = against(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((whole.status, whole.body.as_str()), (200, "hello"));
        let bad: [&'static [u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nhello",
        ];
        for answer in bad {
            let e = against(answer).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        let open = against(b"HTTP/1.1 404 Not Found\r\n\r\nno such").unwrap();
        assert_eq!((open.status, open.body.as_str()), (404, "no such"));
        assert!(
            against(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello").is_err()
        );
    }
}
