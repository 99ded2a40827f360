//! The Kafka source against librdkafka's mock cluster (in this process, on a real socket) and
//! against a real Kafka-API broker, tansu (started by each test on its own port; `scripts/test`
//! installs it, or `MEDANCHOR_TEST_TANSU` names the binary).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RAW_ONLY: &str = "[normalize]\nenabled = false\n";
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TOPIC: &str = "hl7.in";
const DEAD: &str = "hl7.dead";
const GROUP: &str = "gw";

/// A Kafka-API broker for one test.
enum Cluster {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(Tansu),
}

impl Cluster {
    fn mock(partitions: i32) -> Cluster {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, partitions, 1).unwrap();
        mock.create_topic(DEAD, 1, 1).unwrap();
        Cluster::Mock(mock)
    }

    async fn tansu(partitions: i32) -> Cluster {
        let c = Cluster::Tansu(Tansu::start());
        let admin: AdminClient<DefaultClientContext> = c.client().create().unwrap();
        let topics = [
            NewTopic::new(TOPIC, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(DEAD, 1, TopicReplication::Fixed(1)),
        ];
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .unwrap()
        {
            r.unwrap();
        }
        c
    }

    fn bootstrap(&self) -> String {
        match self {
            Cluster::Mock(m) => m.bootstrap_servers(),
            Cluster::Tansu(t) => format!("127.0.0.1:{}", t.port),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Produces `msgs` round-robin over the partitions, idempotently, waiting for every ack.
    /// Returns each partition's end offset, from the delivery reports.
    async fn produce(&self, msgs: &[Vec<u8>], partitions: i32) -> Vec<i64> {
        let mut client = self.client();
        client
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        if let Cluster::Tansu(_) = self {
            // tansu 0.6.0 serves a fetch only from the start of a stored batch: from an offset
            // inside one it skips to the next batch (and its end offset is the last batch's
            // start + 1). One message per batch keeps every offset a batch start.
            client.set("batch.num.messages", "1");
        }
        let producer: FutureProducer = client.create().unwrap();
        let mut ends = vec![0i64; partitions as usize];
        for (c, chunk) in msgs.chunks(500).enumerate() {
            let sends = chunk.iter().enumerate().map(|(i, m)| {
                let p = ((c * 500 + i) as i32) % partitions;
                producer.send(
                    FutureRecord::<(), _>::to(TOPIC)
                        .payload(&m[..])
                        .partition(p)
                        .headers(rdkafka::message::OwnedHeaders::new().insert(
                            rdkafka::message::Header {
                                key: "traceparent",
                                value: Some("00-abc-def-01"),
                            },
                        )),
                    Duration::from_secs(10),
                )
            });
            for r in futures::future::join_all(sends).await {
                let d = r.unwrap();
                let end = &mut ends[d.partition as usize];
                *end = (*end).max(d.offset + 1);
            }
        }
        ends
    }

    /// Writes the gateway's configuration for this cluster.
    /// A gateway consuming the topic. Normalization is off: these tests are about delivery and
    /// offsets (thousands of messages, where an unoptimised build's mapping would set the
    /// pace); tests/derived.rs and tests/gateway.rs run with it on.
    fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("medanchor.toml");
        std::fs::write(
            &path,
            format!(
                "[[sources]]\ntype = \"kafka\"\nname = \"feed\"\nbrokers = \"{}\"\n\
                 topics = [\"{TOPIC}\"]\ngroup_id = \"{GROUP}\"\ndead_letter_topic = \"{DEAD}\"\n\
                 commit_interval_ms = 200\n{extra}\n{RAW_ONLY}",
                self.bootstrap()
            ),
        )
        .unwrap();
        path
    }

    /// Per partition: (group's committed offset, end offset).
    fn progress(&self, ends: &[i64]) -> Vec<(i64, i64)> {
        let c: BaseConsumer = self.client().set("group.id", GROUP).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..ends.len() as i32 {
            tpl.add_partition(TOPIC, p);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        ends.iter()
            .enumerate()
            .map(|(p, end)| {
                let done = match committed
                    .find_partition(TOPIC, p as i32)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                (done, *end)
            })
            .collect()
    }

    /// Waits until the group has committed every partition to its end; on timeout the failure
    /// shows the end of each gateway's log.
    fn wait_committed(&self, ends: &[i64], within: Duration, gateways: &[&Gateway]) {
        let start = Instant::now();
        loop {
            let p = self.progress(ends);
            if p.iter().all(|(done, end)| done == end) {
                return;
            }
            if start.elapsed() >= within {
                let logs: Vec<String> = gateways.iter().map(|g| g.log_tail(80)).collect();
                panic!(
                    "not committed in {within:?}: {p:?}\n{}",
                    logs.join("\n----\n")
                );
            }
            // Pacing of this poll (each look is a consumer and a broker round trip).
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every dead letter: its headers and payload.
    fn dead_letters(&self, expect: usize) -> Vec<(HashMap<String, String>, Vec<u8>)> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", "test-reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(DEAD, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < expect && start.elapsed() < Duration::from_secs(20) {
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((headers, m.payload().unwrap_or_default().to_vec()));
            }
        }
        // Nothing more than expected arrives. A watch for something that must not happen, not a
        // synchronisation: the gateway has stopped, all it produced is in the topic already.
        assert!(c.poll(Duration::from_millis(500)).is_none());
        out
    }
}

/// A tansu broker with in-memory storage on a free port; killed on drop.
struct Tansu {
    port: u16,
    child: Child,
}

impl Tansu {
    fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("MEDANCHOR_TEST_TANSU") {
            return p.into();
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = Path::new(&home).join(".cargo/bin/tansu");
        if installed.exists() {
            return installed;
        }
        panic!(
            "tansu not found: `cargo install tansu --locked --features dynostore` (scripts/test does) \
             or set MEDANCHOR_TEST_TANSU"
        )
    }

    fn start() -> Tansu {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(Self::binary())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_until(
            Duration::from_secs(20),
            || format!("tansu to accept connections on port {port}"),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Tansu { port, child }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ids` is exactly `{tag}-0` .. `{tag}-{n-1}`; a failure names what is missing or extra
/// (a count and the first few, not thousands of ids).
fn assert_exactly_published(ids: &BTreeSet<&String>, n: usize, tag: &str) {
    let published: BTreeSet<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let missing: Vec<&String> = published.iter().filter(|p| !ids.contains(p)).collect();
    let extra: Vec<&&String> = ids.iter().filter(|i| !published.contains(**i)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing (first {:?}), {} not published (first {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
}

const STORED: &str = "medanchor_source_messages_total{event=\"stored\",source=\"feed\"}";

fn stored(g: &Gateway) -> f64 {
    g.metric(STORED)
}

/// 300 good messages over 3 partitions with two poison messages among them: the good ones are
/// stored, the poison ends in the dead-letter topic with its reason and origin, and every
/// partition's offset is committed to its end (nothing held up behind the poison).
async fn poison_goes_to_the_dead_letter_topic(cluster: Cluster) {
    let mut msgs = hl7_messages(300, "P");
    msgs.insert(100, b"this is not an HL7 message".to_vec());
    msgs.insert(
        200,
        b"MSH|^~\\&|LAB|H|GW|H|20240101||ORU^R01||P|2.5\rPID|1||7^^^H^MR\r".to_vec(),
    );
    let ends = cluster.produce(&msgs, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A small in-flight bound: reading waits for the pipeline on the way.
    let config = cluster.config(dir.path(), "max_in_flight = 64\n");
    let g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    cluster.wait_committed(&ends, Duration::from_secs(90), &[&g]);
    assert_eq!(stored(&g), 300.0);
    assert_eq!(
        g.metric("medanchor_source_messages_total{event=\"dead_lettered\",source=\"feed\"}"),
        2.0
    );
    // Consumer lag per partition, from librdkafka's statistics (every second).
    let start = Instant::now();
    for p in 0..3 {
        let lag = format!(
            "medanchor_source_partition_lag{{partition=\"{p}\",source=\"feed\",topic=\"{TOPIC}\"}}"
        );
        wait_until(
            Duration::from_secs(10).saturating_sub(start.elapsed()),
            || format!("{lag} in /metrics"),
            || g.http_get("/metrics").1.contains(&lag),
        );
    }
    assert_eq!(g.http_get("/readyz").0, 200);
    assert!(g.stop().success());

    let mut dead = cluster.dead_letters(2);
    dead.sort_by_key(|(h, _)| h["Medanchor-Original-Offset"].parse::<i64>().unwrap());
    let labels: BTreeSet<&str> = dead
        .iter()
        .map(|(h, _)| h["Medanchor-Reason-Label"].as_str())
        .collect();
    assert_eq!(labels, BTreeSet::from(["not_hl7", "missing_msh10"]));
    for (h, payload) in &dead {
        assert_eq!(h["Medanchor-Original-Topic"], TOPIC);
        let partition: i32 = h["Medanchor-Original-Partition"].parse().unwrap();
        // Produced round-robin: message i went to partition i % 3 at offset i / 3.
        let i = if payload.starts_with(b"this") {
            100
        } else {
            200
        };
        assert_eq!(partition as usize, i % 3);
        assert_eq!(h["Medanchor-Original-Offset"], (i / 3).to_string());
        assert!(!h["Medanchor-Reason"].is_empty());
        assert!(!h["Medanchor-Quarantine-Id"].is_empty());
        assert_eq!(h["Medanchor-Delivery-Count"], "1");
        assert_eq!(h["traceparent"], "00-abc-def-01", "original headers kept");
        assert_eq!(payload, &msgs[i]);
    }
    assert_everything_verifies(&data, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_poison_goes_to_the_dead_letter_topic() {
    poison_goes_to_the_dead_letter_topic(Cluster::mock(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_poison_goes_to_the_dead_letter_topic() {
    poison_goes_to_the_dead_letter_topic(Cluster::tansu(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_or_an_option_medanchor_owns_is_refused_with_the_reason() {
    let cluster = Cluster::mock(1);
    let dir = tempfile::tempdir().unwrap();
    let refuse = |extra: &str, expect: &[&str]| {
        let config = cluster.config(dir.path(), extra);
        let err = refused_start(Some(&config), &dir.path().join("data"));
        for e in expect {
            assert!(err.contains(e), "{e:?} not in {err}");
        }
    };
    refuse(
        "[sources.options]\n\"enable.auto.commit\" = \"true\"\n",
        &["sources[0].options", "enable.auto.commit"],
    );
    refuse("max_in_flight = 0\n", &["sources[0].max_in_flight"]);
    std::fs::write(
        dir.path().join("missing.toml"),
        format!(
            "[[sources]]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"nope\"]\n\
             dead_letter_topic = \"{DEAD}\"\n",
            cluster.bootstrap()
        ),
    )
    .unwrap();
    let err = refused_start(
        Some(&dir.path().join("missing.toml")),
        &dir.path().join("data"),
    );
    assert!(
        err.contains("topic \"nope\" (topics) is not on the brokers"),
        "{err}"
    );
}

/// Crash test: 10,000 messages, the gateway killed (SIGKILL) a quarter of the way through and
/// started again on the same data directory. Every message ends stored exactly once, anchored
/// and verifying, and the group commits every partition to its end.
///
/// The killed gateway stays a member of the group until its session (6 s here) expires. With
/// `restart_at_once` the new process joins while the dead member still holds its partitions,
/// as under Kubernetes; otherwise it starts after the session expired. (tansu 0.6.0 mishandles
/// the first case: when the dead member expires during the new member's join, the new member
/// gets an empty assignment and no further rebalance follows, so it never consumes. Seen in a
/// CI run and in a local run of the suite: the log said `partitions assigned partitions=`, nothing
/// after. librdkafka's mock cluster rebalances as Apache Kafka does.)
async fn gateway_killed_while_consuming(cluster: Cluster, msgs: &[Vec<u8>], restart_at_once: bool) {
    let n = msgs.len();
    let ends = cluster.produce(msgs, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = cluster.config(
        dir.path(),
        "[sources.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
    );
    let env = [("MEDANCHOR_CONFIG", config.to_str().unwrap())];

    let g = Gateway::start(&data, &env);
    g.wait_metric(STORED, (n / 4) as f64, Duration::from_secs(90));
    g.kill();
    let killed = Instant::now();
    let p = cluster.progress(&ends);
    assert!(
        p.iter().any(|(done, high)| done < high),
        "the crash must happen mid-stream: {p:?}"
    );
    if !restart_at_once {
        // The next start comes after the killed member's session (6 s from its last heartbeat,
        // which was before the kill) has run out, with a margin. A timing condition the test
        // makes, not a synchronisation: tansu 0.6.0 expires a member only when a request of the
        // group arrives (here the new member's join), by the clock, and lists it until then
        // (DescribeGroups showed it for 60 s), so there is no broker state to poll.
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(killed.elapsed())).await;
    }

    let g = Gateway::start(&data, &env);
    cluster.wait_committed(&ends, Duration::from_secs(180), &[&g]);
    assert!(g.stop().success());
    assert_everything_verifies(&data, n as u64);
    let ids = control_ids(&data);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message stored twice");
    assert_exactly_published(&unique, n, "C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_gateway_killed_and_restarted_at_once_loses_nothing_and_stores_nothing_twice()
{
    // Small messages: the mock cluster keeps only ~5 MB per partition.
    let msgs = small_messages(0, 10_000, "C");
    gateway_killed_while_consuming(Cluster::mock(4), &msgs, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_gateway_killed_while_consuming_loses_nothing_and_stores_nothing_twice() {
    let msgs = hl7_messages(10_000, "C");
    gateway_killed_while_consuming(Cluster::tansu(4).await, &msgs, false).await;
}

/// Small HL7v2 messages `{tag}-{first}` ..: a busy stream that stays within the mock cluster's
/// ~5 MB per partition (it drops older messages beyond that).
fn small_messages(first: usize, n: usize, tag: &str) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            format!(
                "MSH|^~\\&|LAB|H|GW|H|20240101||ORU^R01|{tag}-{i}|P|2.5\rPID|1||{i}^^^H^MR||Doe^J\r\
                 OBX|1|NM|GLU||{}|mmol/L\r",
                i % 97
            )
            .into_bytes()
        })
        .collect()
}

/// Two gateways (separate data directories) in one consumer group, the second started
/// mid-stream. Messages arrive at ~1,500/s the whole time, so the first gateway is busy and has
/// messages finishing when it gives partitions up: a release commit that is later undone (or not
/// made) shows as messages both gateways stored. With a `backlog` published before B starts,
/// A's pipeline is full (2,048 in flight) when its partitions are revoked. Returns how many they
/// both stored; asserts that together they stored exactly the published set.
async fn two_gateways_in_one_group(cluster: Cluster, backlog: usize) -> usize {
    let mut published = 1_000;
    let mut ends = cluster.produce(&small_messages(0, published, "G"), 4).await;
    let dir = tempfile::tempdir().unwrap();
    // A member that leaves or stalls is noticed in seconds, not the default 45 s. The default
    // max_in_flight (2,048): a release must not wait for everything in flight. (Before releases
    // withdrew what had not started sealing, A drained up to 2,048 messages in a debug build on
    // the loaded 2-core machine, the mock coordinator refused the commit that followed
    // (RebalanceInProgress) and B stored 168 and 192 of them again.)
    let config = cluster.config(
        dir.path(),
        "[sources.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
    );
    let env = [("MEDANCHOR_CONFIG", config.to_str().unwrap())];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));

    let a = Gateway::start(&data_a, &env);
    let start = Instant::now();
    a.wait_metric(STORED, 500.0, Duration::from_secs(90));
    // A backlog that A cannot store at once keeps its pipeline full when B joins, so the
    // release has many messages in flight. Then keep the stream going until B owns partitions
    // and for 2 s after: A's partitions are revoked while it consumes, and B takes over a live
    // stream.
    let backlog = small_messages(published, backlog, "G");
    published += backlog.len();
    for (end, more) in ends.iter_mut().zip(cluster.produce(&backlog, 4).await) {
        *end = (*end).max(more);
    }
    let b = Gateway::start(&data_b, &env);
    let mut b_owns_since: Option<Instant> = None;
    while b_owns_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "B never got partitions"
        );
        let chunk = small_messages(published, 48, "G");
        published += chunk.len();
        for (end, more) in ends.iter_mut().zip(cluster.produce(&chunk, 4).await) {
            *end = (*end).max(more);
        }
        if b_owns_since.is_none()
            && b.metric("medanchor_source_partitions_assigned{source=\"feed\"}") > 0.0
        {
            b_owns_since = Some(Instant::now());
        }
        // Pacing of the stream (48 messages every 25 ms or so), not a synchronisation: B's
        // ownership is polled above.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cluster.wait_committed(&ends, Duration::from_secs(180), &[&a, &b]);
    let stored_b = stored(&b);
    eprintln!(
        "A withdrew {} messages at releases",
        a.metric("medanchor_source_messages_total{event=\"withdrawn\",source=\"feed\"}")
    );
    let (a_log, b_log) = (a.log.clone(), b.log.clone());
    assert!(a.stop().success());
    assert!(b.stop().success());

    let (ids_a, ids_b) = (control_ids(&data_a), control_ids(&data_b));
    let set_a: BTreeSet<&String> = ids_a.iter().collect();
    let set_b: BTreeSet<&String> = ids_b.iter().collect();
    let union: BTreeSet<&String> = set_a.union(&set_b).copied().collect();
    let duplicates = ids_a.len() + ids_b.len() - union.len();
    eprintln!(
        "two instances: {published} published, A stored {}, B stored {}, duplicates across them \
         {duplicates}",
        ids_a.len(),
        ids_b.len()
    );
    if duplicates > 0 {
        // What the handover looked like, for the failing assertion's output.
        eprintln!(
            "A:\n{}\n----\nB:\n{}",
            log_tail(&a_log, 60),
            log_tail(&b_log, 60)
        );
    }
    assert!(stored_b > 0.0, "the second instance got partitions");
    assert_exactly_published(&union, published, "G");
    assert_everything_verifies(&data_a, ids_a.len() as u64);
    assert_everything_verifies(&data_b, ids_b.len() as u64);
    duplicates
}

/// Two gateways in one group on the mock cluster: every published message is stored, by one
/// of them at least, and each data directory verifies. That none is stored by both is asserted
/// against a real Kafka-API broker (below), not here: the mock coordinator refuses every commit
/// while a join is in progress (Apache Kafka's GroupCoordinator accepts a current member's
/// commits until the group's sync), so a release commit that overlaps B's join fails with
/// `RebalanceInProgress` and then `IllegalGeneration`, and B re-reads what A stored. About one
/// run in three on the loaded 2-core machine stored 176–224 messages twice that way; the same
/// handover on tansu stores none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_two_gateways_in_one_group_lose_nothing() {
    let duplicates = two_gateways_in_one_group(Cluster::mock(4), 0).await;
    eprintln!("mock cluster: {duplicates} messages stored by both gateways (see the doc comment)");
}

/// The same handover against a real Kafka-API broker, with A's pipeline full when its
/// partitions are revoked: the release withdraws what has not started sealing and commits the
/// rest, so the drain takes a batch, not 2,048 messages. (Before the gateway stored its offsets
/// ahead of the release commit, tansu runs showed hundreds of duplicates here, 396 in the last
/// one; that was librdkafka re-committing the stale stored offsets, not tansu.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_two_gateways_in_one_group_store_nothing_twice() {
    let duplicates = two_gateways_in_one_group(Cluster::tansu(4).await, 30_000).await;
    assert_eq!(duplicates, 0, "messages stored by both gateways");
}

/// SIGTERM while every broker is gone: the stop must not wait forever for a coordinator to
/// answer the release commit. What was stored stays stored (and verifies); the uncommitted
/// offsets only mean the next start re-reads, recognised as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_with_the_brokers_gone_finishes() {
    let cluster = Cluster::mock(2);
    cluster.produce(&small_messages(0, 200, "D"), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config(dir.path(), "");
    let data = dir.path().join("data");
    let mut g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    g.wait_metric(STORED, 200.0, Duration::from_secs(60));
    drop(cluster);
    // /readyz notices (librdkafka reports all brokers down within a few seconds).
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "/readyz to say 503 with the brokers gone: {:?}",
                g.http_get("/readyz")
            )
        },
        || g.http_get("/readyz").0 == 503,
    );
    // 30 s: a Kubernetes grace period.
    let start = Instant::now();
    let status = g.stop_within(Duration::from_secs(30));
    eprintln!("stopped in {:?} with the brokers gone", start.elapsed());
    assert!(status.success(), "{status}");
    let ids = control_ids(&data);
    assert_eq!(ids.len(), 200);
    assert_everything_verifies(&data, 200);
}

/// Producers compress batches with whatever codec their team chose; every codec Kafka defines
/// must be read (a consumer built without one fails those batches with "not implemented").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_every_compression_codec_are_read() {
    let cluster = Cluster::mock(2);
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for (c, codec) in codecs.iter().enumerate() {
        let producer: FutureProducer = cluster
            .client()
            .set("compression.type", *codec)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let sends = small_messages(c * 40, 40, "Z")
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let producer = producer.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::<(), _>::to(TOPIC)
                                .payload(&m)
                                .partition((i % 2) as i32),
                            Duration::from_secs(10),
                        )
                        .await
                }
            });
        for r in futures::future::join_all(sends).await {
            r.unwrap_or_else(|(e, _)| panic!("{codec}: {e}"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config(dir.path(), "");
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[("MEDANCHOR_CONFIG", config.to_str().unwrap())]);
    let n = 40 * codecs.len();
    wait_until(
        Duration::from_secs(60),
        || {
            format!(
                "{n} stored (stored {}); the log says: {}",
                stored(&g),
                std::fs::read_to_string(&g.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("ecompress") || l.contains("consume error"))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        },
        || stored(&g) >= n as f64,
    );
    assert!(g.stop().success());
    let ids = control_ids(&data);
    let set: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), n, "none stored twice");
    assert_exactly_published(&set, n, "Z");
}
