//! Runs the real `medanchor` binary on port 0 with its own data directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_medanchor");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7")
}

pub struct Gateway {
    pub child: Child,
    pub mllp: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Gateway {
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Gateway {
        let log = data_dir.with_extension("log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("MEDANCHOR__MLLP__LISTEN", "127.0.0.1:0")
            .env("MEDANCHOR__HTTP__LISTEN", "127.0.0.1:0")
            .env("MEDANCHOR__DATA_DIR", data_dir)
            .env("MEDANCHOR__LEDGER__BATCH_MS", "50")
            .env("MEDANCHOR_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(logf);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = |prefix: &str| -> SocketAddr {
            let line = lines.next().expect("gateway printed its address").unwrap();
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        let mllp = addr("mllp listening on ");
        let http = addr("http listening on ");
        Gateway {
            child,
            mllp,
            http,
            data_dir: data_dir.into(),
            log,
        }
    }

    /// SIGTERM and wait: the graceful path. A stop that hangs fails the test after two minutes
    /// (with the log's end) instead of hanging the suite.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(120))
    }

    /// SIGTERM, then waits for the exit for at most `within`; a gateway still running then
    /// fails the test with the end of its log.
    pub fn stop_within(&mut self, within: Duration) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let (child, log) = (&mut self.child, &self.log);
        let mut status = None;
        wait_until(
            within,
            || format!("the gateway to stop after SIGTERM\n{}", log_tail(log, 20)),
            || {
                status = child.try_wait().unwrap();
                status.is_some()
            },
        );
        status.unwrap()
    }

    /// SIGKILL: the crash path.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A GET as the gateway's admin (the token it wrote to `admin.token` at first start).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let token = self.admin_token();
        http_get_as(self.http, path, token.as_deref())
    }

    /// The admin principal's token, once the gateway has made it.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The last `n` lines of its log above DEBUG, for a failing assertion to show what the
    /// gateway saw (the log lives in a temporary directory that is gone after the test).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Waits until the metric is at least `at_least` and returns its value then; past `within`
    /// the failure shows the value and the end of the log.
    pub fn wait_metric(&self, name_and_labels: &str, at_least: f64, within: Duration) -> f64 {
        let mut value = 0.0;
        wait_until(
            within,
            || {
                format!(
                    "{name_and_labels} to reach {at_least} (it is {})\n{}",
                    self.metric(name_and_labels),
                    self.log_tail(20)
                )
            },
            || {
                value = self.metric(name_and_labels);
                value >= at_least
            },
        );
        value
    }

    /// A metric's value; 0 when the gateway does not publish it (a counter with labels
    /// appears at its first increment).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often `wait_until` looks.
const POLL: Duration = Duration::from_millis(20);

/// Waits for something to have happened (a gateway to have stored, a broker to be up, a
/// process to have exited): polls `cond` every 20 ms until it holds and returns how long that
/// took. Past `within` it fails with "timed out after .. waiting for" and `what()`, called
/// then, so it can say what was seen last (a value, a status, the end of a log).
///
/// The one way these tests wait: a fixed sleep is no synchronisation (too short on a loaded
/// machine, too long everywhere else).
pub fn wait_until(
    within: Duration,
    what: impl FnOnce() -> String,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!("timed out after {within:?} waiting for {}", what());
        }
        std::thread::sleep(POLL);
    }
}

/// The last `n` lines of a gateway log above DEBUG (tracing's INFO, WARN and ERROR lines).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A GET with an optional bearer token.
pub fn http_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One HTTP/1.1 request on a fresh connection: (status, lower-cased headers, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A server may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `verify --all --json` on a data directory: asserts that it passes and returns the report.
pub fn verify_all(data_dir: &Path) -> serde_json::Value {
    let (ok, out, err) = run(&[
        "verify",
        "--all",
        "--json",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}{err}"));
    assert!(ok, "{report}");
    report
}

/// `verify --all` passes and counts `n` records as received, each with its leaf, and a leaf for
/// each derived record and each event (a read through the API is one).
pub fn assert_everything_verifies(data_dir: &Path, n: u64) {
    let report = verify_all(data_dir);
    assert_eq!(report["records"], n);
    let derived = report["derived"].as_u64().unwrap();
    let events = report["events"].as_u64().unwrap();
    assert_eq!(report["leaves"], n + derived + events);
}

/// Runs the binary and returns (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Sends one MLLP frame on a raw socket and reads one reply frame.
pub fn mllp_exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).unwrap();
    read_frame(&mut s)
}

pub fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).unwrap();
        assert!(n == 1, "connection closed before a full reply");
        buf.push(byte[0]);
        if buf.ends_with(&[0x1c, 0x0d]) {
            let start = buf.iter().position(|&b| b == 0x0b).unwrap();
            return buf[start + 1..buf.len() - 2].to_vec();
        }
    }
}

pub fn msa(ack: &[u8]) -> (String, String, String) {
    let text = String::from_utf8_lossy(ack);
    let line = text
        .split('\r')
        .find(|l| l.starts_with("MSA"))
        .unwrap_or("")
        .to_string();
    let f: Vec<&str> = line.split('|').collect();
    (
        f.get(1).unwrap_or(&"").to_string(),
        f.get(2).unwrap_or(&"").to_string(),
        f.get(3).unwrap_or(&"").to_string(),
    )
}

/// The control ids (MSH-10) of every record in a stopped gateway's data directory, opened with
/// its keys: what a test compares with the set it published.
pub fn control_ids(data_dir: &Path) -> Vec<String> {
    let cfg = medanchor::config::Config {
        data_dir: data_dir.into(),
        ..Default::default()
    };
    let stores = medanchor::pipeline::Stores::open(&cfg, false).unwrap();
    let mut ids = Vec::new();
    use medanchor::vault::Vault;
    stores
        .vault
        .for_each_record(&mut |id, rec| {
            let rec = rec.unwrap();
            let header = medanchor::seal::parse_header(&rec.sealed).unwrap();
            let key = stores.keyring.get(header.key_id).unwrap();
            let opened = medanchor::seal::open_content(&rec.sealed, id, &key).unwrap();
            if let medanchor::record::Content::Record(r) = opened.content {
                ids.push(r.meta.control_id);
            }
            Ok::<(), medanchor::vault::VaultError>(())
        })
        .unwrap();
    ids
}

/// The Microsoft samples, CR-separated, with MSH-10 made unique per copy so that `n` messages
/// are `n` distinct records.
pub fn hl7_messages(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("microsoft"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    // As `medanchor send` frames them: BOM gone, segments ending in CR.
    let samples: Vec<String> = files
        .iter()
        .flat_map(|p| medanchor::cli::client::messages_of(&std::fs::read(p).unwrap(), false))
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect();
    (0..n)
        .map(|i| {
            let s = &samples[i % samples.len()];
            let (msh, rest) = s.split_once('\r').unwrap_or((s, ""));
            let mut fields: Vec<String> = msh.split('|').map(str::to_string).collect();
            fields[9] = format!("{tag}-{i}");
            format!("{}\r{rest}", fields.join("|")).into_bytes()
        })
        .collect()
}

/// Runs `serve` (ports 0, this data directory, optionally this config) expecting it to refuse to
/// start; returns its stderr.
pub fn refused_start(config: Option<&Path>, data_dir: &Path) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("MEDANCHOR__DATA_DIR", data_dir)
        .env("MEDANCHOR__MLLP__LISTEN", "127.0.0.1:0")
        .env("MEDANCHOR__HTTP__LISTEN", "127.0.0.1:0");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
