//! One blocking HTTP/1.1 request on a fresh connection (`Connection: close`), plain or over TLS,
//! for the gateway's own small clients: the CLI's calls to a running gateway's admin API and the
//! JWKS fetch from an identity provider. Answers are read to their end (at most `max_bytes`) and
//! held to their `Content-Length`; a chunked answer is refused, since neither caller's peer
//! sends one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Sends the request, over TLS when `tls` says how (the server's certificate is checked
/// before anything is sent), and reads the answer; `timeout` bounds the whole exchange, connect
/// to last byte (a peer that trickles bytes cannot hold the caller longer).
pub fn request(
    r: &Request<'_>,
    tls: Option<&Tls>,
    timeout: Duration,
    max_bytes: u64,
) -> io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let mut tcp = connect(r.addr, timeout)?;
    match tls {
        None => exchange(&mut tcp, r, deadline, max_bytes),
        Some(tls) => {
            let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                .map_err(io::Error::other)?;
            exchange(
                &mut rustls::StreamOwned::new(conn, tcp),
                r,
                deadline,
                max_bytes,
            )
        }
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// A connection whose socket's read timeout can be set (plain, or under TLS).
trait Socket: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

fn exchange<S: Socket>(
    s: &mut S,
    r: &Request<'_>,
    deadline: Instant,
    max_bytes: u64,
) -> io::Result<Answer> {
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
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // Once the head is in: it (lower-cased), where the body starts, how long it says it is.
    let mut framing: Option<(String, usize, Option<usize>)> = None;
    let closed = loop {
        let too_long = || io::Error::new(io::ErrorKind::TimedOut, "the answer took too long");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(too_long());
        }
        s.tcp().set_read_timeout(Some(left))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(too_long())
            }
            // A TLS peer that closes without close_notify: what was read stands only if it is
            // as long as its Content-Length says (checked below); a cut answer is refused.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break false,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break true;
        }
        if out.len() + n > max {
            return Err(bad("the answer is larger than allowed"));
        }
        out.extend_from_slice(&buf[..n]);
        if framing.is_none() {
            if let Some(end) = memchr::memmem::find(&out, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let length = content_length(&head)?;
                framing = Some((head, end + 4, length));
            }
        }
        if let Some((_, start, Some(len))) = framing {
            if out.len() >= start + len {
                break true;
            }
        }
    };
    let Some((head, start, length)) = framing else {
        return Err(bad("the answer has no header end"));
    };
    // Bytes past the Content-Length (a peer that sent more) are not part of this answer.
    let body = &out[start..length.map_or(out.len(), |n| out.len().min(start + n))];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the answer has no status"))?;
    if head.contains("transfer-encoding: chunked") {
        return Err(bad("chunked answers are not read"));
    }
    match length {
        Some(n) if n != body.len() => {
            return Err(bad("the answer is not as long as its content-length"))
        }
        None if !closed => return Err(bad("the answer was cut off")),
        _ => {}
    }
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// The (lower-cased) head's Content-Length, if it has one; one that is not a number is an
/// error.
fn content_length(head: &str) -> io::Result<Option<usize>> {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the content-length is not a number",
                )
            })
        })
        .transpose()
}

/// A test peer's side: reads a request up to the end of its head (a body-less request is then
/// whole), which it returns.
#[cfg(test)]
pub(crate) fn read_request_head(c: &mut impl Read) -> Vec<u8> {
    let (mut req, mut buf) = (Vec::new(), [0u8; 1024]);
    while !req.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the request ended early");
        req.extend_from_slice(&buf[..n]);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_root(addr: SocketAddr) -> Request<'static> {
        Request {
            addr,
            host: "127.0.0.1",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
        }
    }

    /// Answers `answer` to one connection and returns what `request` made of it.
    fn against(answer: &'static [u8]) -> io::Result<Answer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            read_request_head(&mut c);
            c.write_all(answer).unwrap();
        });
        let answer = request(&get_root(addr), None, Duration::from_secs(5), 1 << 20);
        server.join().unwrap();
        answer
    }

    /// An answer is held to its Content-Length: one cut short (a peer gone mid-body) is an
    /// error, not a shorter body, and bytes past it are not the body; without the header it is
    /// read to the end.
    #[test]
    fn an_answer_is_as_long_as_its_content_length_says() {
        let whole = against(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((whole.status, whole.body.as_str()), (200, "hello"));
        let more = against(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello").unwrap();
        assert_eq!(more.body, "he");
        let bad: [&'static [u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
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

    /// A peer that trickles its answer a byte at a time, each within the read timeout, is cut
    /// off at the exchange's deadline, not held on to for as long as it keeps sending.
    #[test]
    fn a_trickling_answer_is_cut_off_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            for _ in 0..40 {
                if c.write_all(b"H").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = get_root(addr);
        // Without the deadline each byte would restart the read timeout, and the answer would
        // end when the peer stops (an answer without a header end), not as timed out.
        let e = request(&r, None, Duration::from_millis(700), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        server.join().unwrap();
    }
}
