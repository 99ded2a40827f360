//! One blocking HTTP/1.1 request on a fresh connection (`Connection: close`), for the gateway's
//! own small clients: the CLI's calls to a running gateway's admin API and the JWKS fetch from
//! an identity provider. Answers are read to their end (at most `max_bytes`); a chunked answer
//! is refused, since neither caller's peer sends one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

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

/// Sends the request and reads the answer; `timeout` bounds the connect and each read.
pub fn request(r: &Request<'_>, timeout: Duration, max_bytes: u64) -> io::Result<Answer> {
    let Request {
        addr,
        host,
        method,
        path,
        headers,
        body,
    } = *r;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
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
    let mut out = Vec::new();
    s.take(max_bytes).read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("the answer has no header end"))?;
    let head = head.to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the answer has no status"))?;
    if head.contains("transfer-encoding: chunked") {
        return Err(bad("chunked answers are not read"));
    }
    Ok(Answer {
        status,
        head,
        body: body.to_string(),
    })
}
