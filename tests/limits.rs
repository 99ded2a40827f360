//! Connection limits on real sockets against the real binary: connection caps per listener,
//! HTTP header-read, idle and body timeouts, MLLP partial frames, and shutdown with slow clients.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Generous: how long a test waits for something that must happen.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long a test watches for something that must not happen (a connection being served while
/// the listener is at its limit). Not a synchronisation: the limit holds however long it is.
const WATCH: Duration = Duration::from_secs(1);

const OK_MSG: &[u8] = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|LIM1|P|2.5\rPID|1||7^^^H^MR\r";

fn mllp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0b];
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0x1c, 0x0d]);
    f
}

fn msg(control_id: &str) -> Vec<u8> {
    String::from_utf8_lossy(OK_MSG)
        .replace("LIM1", control_id)
        .into_bytes()
}

/// Reads until the peer closes; true if it did within `DEADLINE` (bytes before the close are
/// ignored).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < DEADLINE {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Reset: closed too.
            Err(_) => return true,
        }
    }
    false
}

/// One keep-alive request on `s`; returns the status and body, leaving the connection open.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(s)
}

/// Reads one HTTP response with a Content-Length body.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if data.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
        let n = s.read(&mut buf).expect("a response");
        assert!(n > 0, "closed before a whole response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

/// Nothing arrives on `s` for `WATCH` (and it is not closed).
fn nothing_arrives(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(WATCH)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

#[test]
fn an_idle_kept_alive_http_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__IDLE_TIMEOUT_SECS", "1"),
            ("MEDANCHOR__HTTP__HEADER_READ_TIMEOUT_SECS", "30"),
        ],
    );
    let mut s = connect(g.http);
    assert_eq!(keep_alive_get(&mut s, "/healthz"), (200, "ok\n".into()));
    let answered = Instant::now();
    assert!(closed_by_peer(&mut s), "the idle connection was not closed");
    // Not before the timeout (the header timeout, 30 s, is not what closed it).
    assert!(answered.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        g.wait_metric(
            "medanchor_http_connection_errors_total{kind=\"idle_timeout\"}",
            1.0,
            DEADLINE
        ),
        1.0,
        "{}",
        g.log_tail(20)
    );
}

#[test]
fn a_slow_http_header_is_cut_off_at_the_header_read_timeout_however_it_trickles() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__HEADER_READ_TIMEOUT_SECS", "1"),
            ("MEDANCHOR__HTTP__IDLE_TIMEOUT_SECS", "60"),
        ],
    );
    // A request line, then a header value growing by one byte every 200 ms: never a whole
    // head, and every byte valid, so only the timeout can end it.
    let mut s = connect(g.http);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut closed = false;
    let mut buf = [0u8; 256];
    while start.elapsed() < DEADLINE {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => panic!("answered a request never sent: {:?}", &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if s.write_all(b"a").is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickling header kept the connection open");
    // A connection that sends nothing at all is closed at the same deadline.
    let mut silent = connect(g.http);
    assert!(closed_by_peer(&mut silent));
    assert_eq!(
        g.wait_metric(
            "medanchor_http_connection_errors_total{kind=\"header_timeout\"}",
            2.0,
            DEADLINE
        ),
        2.0
    );
    // A head over http.max_header_bytes (16 KiB) is refused.
    let (status, _, _) = http_request(
        g.http,
        "GET",
        "/healthz",
        &[("X-Big", &"a".repeat(20_000))],
        b"",
    );
    assert_eq!(status, 431);
}

#[test]
fn http_connections_beyond_the_limit_wait_until_one_closes_and_mllp_is_not_starved() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__MAX_CONNECTIONS", "2"),
            ("MEDANCHOR__HTTP__HEADER_READ_TIMEOUT_SECS", "60"),
            ("MEDANCHOR__HTTP__IDLE_TIMEOUT_SECS", "60"),
        ],
    );
    // Two kept-alive connections, both served: the listener is at its limit.
    let mut a = connect(g.http);
    assert_eq!(keep_alive_get(&mut a, "/healthz").0, 200);
    let mut b = connect(g.http);
    assert_eq!(keep_alive_get(&mut b, "/healthz").0, 200);
    // A third connects (the kernel completes the handshake) but is not served.
    let mut c = connect(g.http);
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert!(
        nothing_arrives(&mut c),
        "served beyond http.max_connections"
    );
    // MLLP has its own limit and still accepts.
    let (code, _, _) = msa(&mllp_exchange(g.mllp, &msg("HTTPFULL")));
    assert_eq!(code, "AA");
    // One closes: the waiting one is served.
    drop(a);
    let (status, body) = read_response(&mut c);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("medanchor_listener_limit_reached_total{listener=\"http\"}") >= 1.0);
    assert_eq!(
        value("medanchor_listener_max_connections{listener=\"http\"}"),
        2.0
    );
    assert_eq!(
        value("medanchor_listener_accepted_total{listener=\"http\"}"),
        3.0
    );
    assert_eq!(
        value("medanchor_listener_connections{listener=\"http\"}"),
        2.0,
        "b and c"
    );
    drop(b);
}

#[test]
fn mllp_connections_beyond_the_limit_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__MLLP__MAX_CONNECTIONS", "2")],
    );
    let mut a = connect(g.mllp);
    a.write_all(&mllp_frame(&msg("A1"))).unwrap();
    assert_eq!(msa(&read_frame(&mut a)).0, "AA");
    let mut b = connect(g.mllp);
    b.write_all(&mllp_frame(&msg("B1"))).unwrap();
    assert_eq!(msa(&read_frame(&mut b)).0, "AA");
    let mut c = connect(g.mllp);
    c.write_all(&mllp_frame(&msg("C1"))).unwrap();
    assert!(
        nothing_arrives(&mut c),
        "served beyond mllp.max_connections"
    );
    // HTTP is not starved by a full MLLP listener.
    assert_eq!(
        g.metric("medanchor_listener_accepted_total{listener=\"mllp\"}"),
        2.0
    );
    assert_eq!(
        g.metric("medanchor_listener_connections{listener=\"mllp\"}"),
        2.0
    );
    assert!(g.metric("medanchor_listener_limit_reached_total{listener=\"mllp\"}") >= 1.0);
    drop(a);
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let (code, control, _) = msa(&read_frame(&mut c));
    assert_eq!((code.as_str(), control.as_str()), ("AA", "C1"));
    assert_eq!(
        g.metric("medanchor_listener_accepted_total{listener=\"mllp\"}"),
        3.0
    );
    drop(b);
}

#[test]
fn an_mllp_partial_frame_that_stalls_is_closed_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__MLLP__IDLE_TIMEOUT_SECS", "1")],
    );
    let mut s = connect(g.mllp);
    let whole = mllp_frame(&msg("PART1"));
    s.write_all(&whole[..whole.len() / 2]).unwrap();
    let sent = Instant::now();
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed without an ACK");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        g.wait_metric(
            "medanchor_mllp_connection_errors_total{kind=\"idle_timeout\"}",
            1.0,
            DEADLINE
        ),
        1.0
    );
    // The half frame was never taken for a message.
    let received = "medanchor_messages_received_total{source=\"mllp\",type=\"ADT\"}";
    assert_eq!(g.metric(received), 0.0);
    // And that 0 is not a misspelt series (which reads 0 too): the whole message counts there.
    assert_eq!(msa(&mllp_exchange(g.mllp, &msg("PART2"))).0, "AA");
    assert_eq!(g.metric(received), 1.0);
}

#[test]
fn an_ingest_body_that_does_not_arrive_in_time_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-token-of-sixteen-chars";
    let g = Gateway::start(
        &dir.path().join("data"),
        &[
            ("MEDANCHOR__HTTP__INGEST_TOKEN", token),
            ("MEDANCHOR__HTTP__BODY_READ_TIMEOUT_SECS", "1"),
        ],
    );
    let mut s = connect(g.http);
    write!(
        s,
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/hl7-v2\r\nContent-Length: 1000\r\n\r\nMSH|^~\\&|"
    )
    .unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("http.body_read_timeout_secs"), "{body}");
    assert!(closed_by_peer(&mut s));
}

#[test]
fn a_stop_is_not_held_up_by_idle_or_slow_http_clients() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__HTTP__HEADER_READ_TIMEOUT_SECS", "2")],
    );
    let mut idle = connect(g.http);
    assert_eq!(keep_alive_get(&mut idle, "/healthz").0, 200);
    let mut slow = connect(g.http);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost").unwrap();
    let mut g = g;
    let status = g.stop_within(DEADLINE);
    assert!(status.success());
    assert!(closed_by_peer(&mut idle));
    assert!(closed_by_peer(&mut slow));
}
