//! The NATS JetStream source against a real nats-server with JetStream (the machine's, or the one
//! `MEDANCHOR_TEST_NATS_URL` names; `.ci/run` starts one when none is reachable). Each test uses
//! its own stream.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::*;

const RAW_ONLY: &str = "[normalize]\nenabled = false\n";

const STORED: &str = "medanchor_source_messages_total{event=\"stored\",source=\"feed\"}";

fn nats_url() -> String {
    std::env::var("MEDANCHOR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Broker {
    url: String,
    js: jetstream::Context,
    stream: String,
    subject: String,
    dead: String,
}

impl Broker {
    /// A fresh stream for this test, and one that keeps its dead letters.
    async fn new(tag: &str, url: String) -> Broker {
        let client = async_nats::connect(&url)
            .await
            .expect("a nats-server with JetStream (see .ci/run)");
        let js = jetstream::new(client);
        let unique = format!("{tag}{}", std::process::id());
        let stream = format!("MA_{unique}");
        let subject = format!("ma.{unique}.in");
        let dead = format!("ma.{unique}.dead");
        for (name, subj) in [(&stream, &subject), (&format!("{stream}_DEAD"), &dead)] {
            let _ = js.delete_stream(name).await;
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subj.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Broker {
            url,
            js,
            stream,
            subject,
            dead,
        }
    }

    /// Deletes the test's streams (the machine's server is shared with later runs).
    async fn remove(&self) {
        let _ = self.js.delete_stream(&self.stream).await;
        let _ = self.js.delete_stream(format!("{}_DEAD", self.stream)).await;
    }

    /// The same stream through a new connection (after a server restart).
    async fn new_existing(b: &Broker) -> Broker {
        let client = async_nats::connect(&b.url).await.unwrap();
        Broker {
            url: b.url.clone(),
            js: jetstream::new(client),
            stream: b.stream.clone(),
            subject: b.subject.clone(),
            dead: b.dead.clone(),
        }
    }

    async fn publish(&self, msgs: &[Vec<u8>]) {
        let mut acks = Vec::new();
        for m in msgs {
            acks.push(
                self.js
                    .publish(self.subject.clone(), m.clone().into())
                    .await
                    .unwrap(),
            );
            if acks.len() >= 256 {
                for a in acks.drain(..) {
                    a.await.unwrap();
                }
            }
        }
        for a in acks {
            a.await.unwrap();
        }
    }

    /// A gateway consuming the stream. Normalization is off: these tests are about delivery
    /// and acknowledgement (thousands of messages, where an unoptimised build's mapping would
    /// set the pace); tests/derived.rs and tests/gateway.rs run with it on.
    fn config(&self, dir: &Path, max_deliver: i64) -> std::path::PathBuf {
        let path = dir.join("medanchor.toml");
        std::fs::write(
            &path,
            format!(
                "[[sources]]\ntype = \"nats\"\nname = \"feed\"\nurl = \"{}\"\nstream = \"{}\"\n\
                 consumer = \"gw\"\nmax_deliver = {max_deliver}\ndead_letter_subject = \"{}\"\n\
                 ack_wait_secs = 10\n{RAW_ONLY}",
                self.url, self.stream, self.dead
            ),
        )
        .unwrap();
        path
    }

    /// Messages of the consumer not yet delivered plus those delivered but not acknowledged.
    async fn outstanding(&self) -> u64 {
        let mut c: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.stream)
            .await
            .unwrap()
            .get_consumer("gw")
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        info.num_pending + info.num_ack_pending as u64
    }

    async fn dead_letters(&self) -> Vec<async_nats::HeaderMap> {
        let s = self
            .js
            .get_stream(format!("{}_DEAD", self.stream))
            .await
            .unwrap();
        let n = s.get_info().await.unwrap().state.messages;
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = s.get_raw_message(seq).await.unwrap();
            out.push(m.headers);
        }
        out
    }

    async fn wait_drained(&self, within: Duration) {
        let start = Instant::now();
        while self.outstanding().await > 0 {
            assert!(
                start.elapsed() < within,
                "consumer not drained in {within:?}"
            );
            // Pacing of this poll (an async broker query, which `wait_until` cannot make).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_are_acked_and_poison_goes_to_the_dead_letter_subject() {
    let broker = Broker::new("poison", nats_url()).await;
    let mut msgs = hl7_messages(300, "P");
    // Poison in the middle of the stream: not HL7 at all, and HL7 without MSH-10 (never
    // acceptable). The messages behind them must not wait for them.
    msgs.insert(100, b"this is not an HL7 message".to_vec());
    msgs.insert(
        200,
        b"MSH|^~\\&|LAB|H|GW|H|20240101||ORU^R01||P|2.5\rPID|1||7^^^H^MR\r".to_vec(),
    );
    broker.publish(&msgs).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = broker.config(dir.path(), 3);
    let g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    broker.wait_drained(Duration::from_secs(60)).await;
    assert_eq!(g.metric(STORED), 300.0);
    assert_eq!(
        g.metric("medanchor_source_messages_total{event=\"dead_lettered\",source=\"feed\"}"),
        2.0
    );
    let (status, _) = g.http_get("/readyz");
    assert_eq!(status, 200);
    assert!(g.stop().success());

    let dead = broker.dead_letters().await;
    assert_eq!(dead.len(), 2);
    let labels: Vec<String> = dead
        .iter()
        .map(|h| h.get("Medanchor-Reason-Label").unwrap().to_string())
        .collect();
    assert_eq!(labels, ["not_hl7", "missing_msh10"], "{dead:?}");
    for h in &dead {
        assert!(!h.get("Medanchor-Reason").unwrap().as_str().is_empty());
        assert_eq!(
            h.get("Medanchor-Original-Subject").unwrap().as_str(),
            broker.subject
        );
        assert!(h.get("Medanchor-Stream-Sequence").is_some());
        assert!(h.get("Medanchor-Quarantine-Id").is_some());
    }
    broker.remove().await;
    let report = verify_all(&data);
    assert_eq!(report["records"], 300);
    assert_eq!(report["leaves"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_consuming_loses_nothing_and_stores_nothing_twice() {
    const N: usize = 10_000;
    let broker = Broker::new("crash", nats_url()).await;
    broker.publish(&hl7_messages(N, "C")).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = broker.config(dir.path(), 5);
    let env = [("MEDANCHOR_CONFIG", config.to_str().unwrap())];

    let g = Gateway::start(&data, &env);
    g.wait_metric(STORED, (N / 4) as f64, Duration::from_secs(60));
    g.kill();
    assert!(
        broker.outstanding().await > 0,
        "the crash must happen mid-stream"
    );

    let g = Gateway::start(&data, &env);
    broker.wait_drained(Duration::from_secs(120)).await;
    assert!(g.stop().success());
    broker.remove().await;
    let report = verify_all(&data);
    assert_eq!(report["records"], N as u64, "exactly the published set");
    assert_eq!(report["leaves"], N as u64);
}

#[test]
fn core_nats_without_a_stream_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("medanchor.toml");
    std::fs::write(
        &path,
        "[[sources]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    )
    .unwrap();
    let err = refused_start(Some(&path), &dir.path().join("data"));
    assert!(
        err.contains("sources[0].stream") && err.contains("core NATS has no acknowledgement"),
        "{err}"
    );
}

/// A nats-server of the test's own, on a free port with its own store, that can be restarted.
struct OwnServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn start() -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.up();
        s
    }

    fn up(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        wait_until(
            Duration::from_secs(10),
            || format!("nats-server to accept connections on port {}", self.port),
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        );
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_readyz_shows_the_outage() {
    const N: usize = 3_000;
    let mut server = OwnServer::start();
    let broker = Broker::new("restart", server.url()).await;
    broker.publish(&hl7_messages(N, "R")).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = broker.config(dir.path(), 5);
    let g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    g.wait_metric(STORED, (N / 5) as f64, Duration::from_secs(60));
    server.down();
    wait_until(
        Duration::from_secs(10),
        || {
            format!(
                "/readyz to report the broker outage: {:?}",
                g.http_get("/readyz")
            )
        },
        || {
            let (status, body) = g.http_get("/readyz");
            status == 503 && body.contains("feed")
        },
    );
    // The outage lasts a while after the gateway noticed it, so that it tries to reconnect to
    // a broker that is not there. A timing condition the test makes, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.up();
    // The gateway reconnects by itself.
    wait_until(
        Duration::from_secs(20),
        || format!("a reconnect: /readyz says {:?}", g.http_get("/readyz")),
        || g.http_get("/readyz").0 == 200,
    );
    let broker = Broker::new_existing(&broker).await;
    broker.wait_drained(Duration::from_secs(120)).await;
    assert!(g.stop().success());
    let report = verify_all(&data);
    assert_eq!(report["records"], N as u64, "no loss, no duplicates");
}
