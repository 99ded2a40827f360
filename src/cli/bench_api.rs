//! `medanchor bench api`: the read side under load. Against a running gateway it sends one
//! record of about 2 KB (over MLLP), adds a patient and a practitioner with a grant (with the
//! gateway's admin token), then N keep-alive connections read the record as the practitioner:
//! each read is authenticated, consent-checked, decrypted, filtered, and its access event
//! sealed, stored (group commit) and anchored before the answer. Prints requests/s and latency
//! p50/p99/max.
//!
//! With `--patients N` it first posts a grant for N other patients (so the gateway holds N
//! patients' grants in memory) and measures again, side by side: a read's consent evaluation
//! should not grow with the patients loaded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::bench::{join_latencies, quantile_ms};
use super::client::MllpClient;

#[derive(Debug, Serialize)]
pub struct ApiReport {
    /// Patients whose grants the gateway held when measured (besides the one read).
    pub patients_loaded: u64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub record_bytes: usize,
}

/// A 2 KB ADT^A01 (patient, visit, two diagnoses, allergies, insurance).
fn record(control_id: &str) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|ADT|BENCHHOSP|GW|GW|20261130083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
EVN|A01|20261130083000\r\
PID|1||900001^^^BENCHHOSP^MR~123-45-6789^^^USSSA^SS||BENCH^PATIENT^Q^^^^L||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^^217^5550100|||M\r\
NK1|1|BENCH^SPOUSE|SPO|1 MAIN ST^^SPRINGFIELD^IL^62701^USA|^PRN^PH^^^217^5550101\r\
PV1|1|I|WARD^101^1^BENCHHOSP||||1234^ATTENDING^ANNA^^^DR|||MED||||1|||1234^ATTENDING^ANNA^^^DR|IN|V0001^^^BENCHHOSP^VN|||||||||||||||||||||||||20261130080000\r\
AL1|1|DA|70618^Penicillin^RXNORM|MO|Hives\r\
AL1|2|FA|256349002^Peanut^SCT|SV|Anaphylaxis\r\
DG1|1||J45.909^Asthma, unspecified^I10||20261130|A\r\
DG1|2||I10^Essential hypertension^I10||20261130|A\r\
IN1|1|PLAN01|INS001^^^BENCH|BENCH INSURANCE CO|PO BOX 1^^SPRINGFIELD^IL^62701^USA|||GRP01||||20260101|20261231|||BENCH^PATIENT^Q|SEL|19800101\r"
    )
    .into_bytes();
    // Pad with a note to about 2 KB, as a real message's free text would.
    while m.len() < 2000 {
        m.extend_from_slice(b"NTE|1||bench note text to reach the record size the target names\r");
    }
    m
}

/// A kept-alive HTTP/1.1 connection (the gateway's own API; answers carry Content-Length).
struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    host: String,
}

impl Conn {
    async fn open(to: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(to)
            .await
            .with_context(|| format!("connecting to {to}"))?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::new(r),
            w,
            host: to.to_string(),
        })
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("connection closed mid-answer");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().context("content-length")?;
                }
            }
        }
        let mut out = vec![0u8; len];
        self.r.read_exact(&mut out).await?;
        Ok((status, out))
    }
}

fn json_of(status: u16, body: &[u8], what: &str) -> Result<Value> {
    if !(200..300).contains(&status) {
        bail!("{what}: {status} {}", String::from_utf8_lossy(body));
    }
    serde_json::from_slice(body).with_context(|| format!("{what}: not JSON"))
}

/// Runs the benchmark; `admin` is an admin token.
pub async fn run(
    http: SocketAddr,
    mllp: SocketAddr,
    admin: &str,
    connections: usize,
    count: u64,
    patients: u64,
    filtered: bool,
) -> Result<Vec<ApiReport>> {
    let run_id = crate::envelope::now_ms();
    let msg = record(&format!("BA{run_id}"));
    let mut client = MllpClient::connect(mllp, Duration::from_secs(30)).await?;
    let ack = super::client::parse_ack(&client.send(&msg).await?);
    if ack.code != "AA" {
        bail!("the gateway did not store the bench record: {}", ack.code);
    }
    let mut c = Conn::open(http).await?;
    let add = |id: String, extra: Value| {
        let mut v = json!({"id": id});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    let (s, b) = c
        .call(
            "POST",
            "/v1/admin/principals",
            admin,
            Some(&add(
                format!("bench-pat-{run_id}"),
                json!({"role": "patient", "identifiers": ["900001^BENCHHOSP^MR"]}),
            )),
        )
        .await?;
    let patient = json_of(s, &b, "adding the patient")?;
    let pid = patient["principal"]["patients"][0]
        .as_str()
        .context("patient id")?
        .to_string();
    let pat_token = patient["token"].as_str().context("token")?.to_string();
    let dr = format!("bench-dr-{run_id}");
    let (s, b) = c
        .call(
            "POST",
            "/v1/admin/principals",
            admin,
            Some(&add(dr.clone(), json!({"role": "practitioner"}))),
        )
        .await?;
    let dr_token = json_of(s, &b, "adding the practitioner")?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let (s, b) = c
        .call(
            "POST",
            "/v1/consents",
            &pat_token,
            Some(&json!({"grant": {"grantee": dr, "purposes": ["treatment"]}})),
        )
        .await?;
    json_of(s, &b, "granting")?;
    if filtered {
        // A deny beside the permit: every read is parsed and filtered instead of served whole.
        let (s, b) = c
            .call(
                "POST",
                "/v1/consents",
                &pat_token,
                Some(&json!({"grant": {"grantee": dr, "decision": "deny", "labels": ["PSY"]}})),
            )
            .await?;
        json_of(s, &b, "denying")?;
    }
    let (s, b) = c
        .call(
            "GET",
            &format!("/v1/patients/{pid}/records"),
            &dr_token,
            None,
        )
        .await?;
    let list = json_of(s, &b, "listing")?;
    let id = list["records"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["record_id"].as_str())
        .context("the bench record is not listed")?
        .to_string();
    let path = format!("/v1/records/{id}");
    let mut reports =
        vec![measure(http, &path, &dr_token, connections, count, 1, msg.len()).await?];
    if patients > 0 {
        // Other patients' grants, each loaded into the gateway's memory by its post.
        for i in 0..patients {
            let other = format!("p-{:032x}", (run_id as u128) << 64 | u128::from(i));
            let (s, b) = c
                .call(
                    "POST",
                    "/v1/consents",
                    admin,
                    Some(&json!({"patient": other, "reason": "bench", "grant": {"grantee": dr}})),
                )
                .await?;
            json_of(s, &b, "granting for another patient")?;
        }
        reports.push(
            measure(
                http,
                &path,
                &dr_token,
                connections,
                count,
                patients + 1,
                msg.len(),
            )
            .await?,
        );
    }
    Ok(reports)
}

async fn measure(
    http: SocketAddr,
    path: &str,
    token: &str,
    connections: usize,
    count: u64,
    loaded: u64,
    record_bytes: usize,
) -> Result<ApiReport> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let n = count / connections as u64 + u64::from((i as u64) < count % connections as u64);
        let (path, token) = (path.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(http).await?;
            let mut lat = Vec::with_capacity(n as usize);
            let mut errors = 0u64;
            for _ in 0..n {
                let t = Instant::now();
                let (status, _) = c.call("GET", &path, &token, None).await?;
                lat.push(t.elapsed());
                errors += u64::from(status != 200);
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let (lat, errors) = join_latencies(tasks, count).await?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ApiReport {
        patients_loaded: loaded,
        requests: lat.len() as u64,
        errors,
        requests_per_s: lat.len() as f64 / elapsed,
        p50_ms: quantile_ms(&lat, 0.5),
        p99_ms: quantile_ms(&lat, 0.99),
        max_ms: quantile_ms(&lat, 1.0),
        record_bytes,
    })
}
