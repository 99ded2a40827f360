//! `medanchor bench mllp`: a load generator. N connections send the built-in corpus mix with
//! fresh control ids (so nothing is a duplicate), each with up to `window` frames in flight, and
//! optionally paced to a total rate. Prints msgs/s, ACK latency p50/p99/max and the gateway's
//! peak RSS (VmHWM of the process listening on the port, or of `--pid`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::client::{messages_of, parse_ack, MllpClient};

/// Which messages `bench mllp` sends and the single-core floor bench processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Six Microsoft FHIR-Converter samples (ADT^A01, ORU^R01, ORM^O01, VXU^V04, SIU^S12,
    /// MDM^T02; MIT, see tests/fixtures/SOURCES.md): made to exercise every field, 1.4–8.6 KB
    /// each (5.3 KB mean), up to 35 resources and 29 KB of FHIR JSON per message. A stress mix.
    Corpus,
    /// The two messages issue 12's per-message targets name: a 1.3 KB ADT^A01 (patient, next of
    /// kin, visit, allergy, diagnosis, insurance) and a 1.8 KB ORU^R01 with 10 OBX, alternating.
    Typical,
}

const CORPUS: &[&[u8]] = &[
    include_bytes!("../../tests/fixtures/hl7/microsoft/ADT-A01-01.hl7"),
    include_bytes!("../../tests/fixtures/hl7/microsoft/ORU-R01-01.hl7"),
    include_bytes!("../../tests/fixtures/hl7/microsoft/ORM-O01-01.hl7"),
    include_bytes!("../../tests/fixtures/hl7/microsoft/VXU-V04-01.hl7"),
    include_bytes!("../../tests/fixtures/hl7/microsoft/SIU-S12-01.hl7"),
    include_bytes!("../../tests/fixtures/hl7/microsoft/MDM-T02-01.hl7"),
];

const TYPICAL: &[&[u8]] = &[
    include_bytes!("../../tests/fixtures/v2fhir/local/adt-a01.hl7"),
    include_bytes!("../../tests/fixtures/v2fhir/local/oru-r01-lipids.hl7"),
];

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub messages: u64,
    pub errors: u64,
    pub msgs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mb: Option<f64>,
    pub mean_bytes: f64,
}

/// The messages of the built-in mix (what `bench mllp` sends, and what the single-core floor
/// bench processes).
pub fn mix_messages(mix: Mix) -> Vec<Vec<u8>> {
    let files = match mix {
        Mix::Corpus => CORPUS,
        Mix::Typical => TYPICAL,
    };
    files.iter().flat_map(|m| messages_of(m, false)).collect()
}

/// Templates with MSH-10 cut out: (before, after).
fn templates(mix: Mix) -> Vec<(Vec<u8>, Vec<u8>)> {
    mix_messages(mix)
        .into_iter()
        .filter_map(|m| {
            let fs = *m.get(3)?;
            let mut seps = m
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == fs)
                .map(|(i, _)| i);
            // MSH-10 sits between the 9th and 10th field separators.
            let start = seps.nth(8)? + 1;
            let end = start + m[start..].iter().position(|&b| b == fs || b == b'\r')?;
            Some((m[..start].to_vec(), m[end..].to_vec()))
        })
        .collect()
}

/// A template with `control_id` as its MSH-10.
fn with_control_id((before, after): &(Vec<u8>, Vec<u8>), control_id: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(before.len() + control_id.len() + after.len());
    msg.extend_from_slice(before);
    msg.extend_from_slice(control_id.as_bytes());
    msg.extend_from_slice(after);
    msg
}

pub async fn run(
    to: SocketAddr,
    connections: usize,
    count: u64,
    window: usize,
    rate: Option<f64>,
    pid: Option<u32>,
    mix: Mix,
) -> Result<BenchReport> {
    let templates = Arc::new(templates(mix));
    if templates.is_empty() {
        bail!("no usable messages in the built-in mix");
    }
    let run_id = crate::envelope::now_ms();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_conn = count / connections as u64;
    let extra = count % connections as u64;
    let mean_bytes = templates
        .iter()
        .map(|(a, b)| (a.len() + b.len() + 20) as f64)
        .sum::<f64>()
        / templates.len() as f64;
    for c in 0..connections {
        let n = per_conn + u64::from((c as u64) < extra);
        let templates = templates.clone();
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(to, Duration::from_secs(30)).await?;
            let mut lat = Vec::with_capacity(n as usize);
            let mut errors = 0u64;
            let mut inflight = std::collections::VecDeque::new();
            let t0 = Instant::now();
            let mut sent = 0u64;
            while sent < n || !inflight.is_empty() {
                let due = interval.map(|iv| t0 + iv.mul_f64(sent as f64));
                let early = due.is_some_and(|d| Instant::now() < d);
                // Send when the window has room and the pace allows (or nothing else to wait for).
                if sent < n && inflight.len() < window && (!early || inflight.is_empty()) {
                    if let Some(d) = due {
                        tokio::time::sleep_until(d.into()).await;
                    }
                    let template = &templates[(sent as usize + c) % templates.len()];
                    let msg = with_control_id(template, &format!("B{run_id}-{c}-{sent}"));
                    inflight.push_back(Instant::now());
                    client.write(&msg).await?;
                    sent += 1;
                } else {
                    let s = parse_ack(&client.read().await?);
                    errors += u64::from(s.code != "AA" && s.code != "CA");
                    lat.push(
                        inflight
                            .pop_front()
                            .map(|t: Instant| t.elapsed())
                            .unwrap_or_default(),
                    );
                }
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let (lat, errors) = join_latencies(tasks, count).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let pid = pid.or_else(|| listening_pid(to.port()));
    Ok(BenchReport {
        messages: lat.len() as u64,
        errors,
        msgs_per_s: lat.len() as f64 / elapsed,
        p50_ms: quantile_ms(&lat, 0.5),
        p99_ms: quantile_ms(&lat, 0.99),
        max_ms: quantile_ms(&lat, 1.0),
        peak_rss_mb: pid.and_then(peak_rss_mb),
        mean_bytes,
    })
}

/// A load task: the latency of each request it made, and how many failed.
pub(crate) type LoadTask = tokio::task::JoinHandle<Result<(Vec<Duration>, u64)>>;

/// The load tasks' latencies, sorted, and their error counts, summed.
pub(crate) async fn join_latencies(
    tasks: Vec<LoadTask>,
    count: u64,
) -> Result<(Vec<Duration>, u64)> {
    let mut lat = Vec::with_capacity(count as usize);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.context("bench task")??;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    Ok((lat, errors))
}

/// The `p` quantile (0 to 1) of sorted latencies, in milliseconds (0 when there are none).
pub(crate) fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// VmHWM (peak resident set) of a process, in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The process with a listening TCP socket on `port` (Linux /proc), if visible to us.
fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9
                && cols[3] == "0A"
                && cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.to_string_lossy() == *i) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The broker benches' load: message `i` of the mix with a control id unique to this run,
/// released no earlier than `i / rate` seconds after the start when paced.
struct PacedMix<'a> {
    templates: &'a [(Vec<u8>, Vec<u8>)],
    prefix: String,
    rate: Option<f64>,
    started: Instant,
}

impl<'a> PacedMix<'a> {
    fn new(templates: &'a [(Vec<u8>, Vec<u8>)], tag: &str, rate: Option<f64>) -> Self {
        PacedMix {
            templates,
            prefix: format!("{tag}{}-", crate::envelope::now_ms()),
            rate,
            started: Instant::now(),
        }
    }

    async fn message(&self, i: u64) -> Vec<u8> {
        if let Some(r) = self.rate {
            let due = self.started + Duration::from_secs_f64(i as f64 / r);
            tokio::time::sleep_until(due.into()).await;
        }
        let template = &self.templates[i as usize % self.templates.len()];
        with_control_id(template, &format!("{}{i}", self.prefix))
    }
}

/// What `bench nats` reports.
#[derive(Debug, Serialize)]
pub struct BrokerBenchReport {
    pub messages: u64,
    /// Published and then all stored and acknowledged, end to end; with `--prefill`, the drain:
    /// from the gateway's first message (NATS: the consumer's first delivery; Kafka: the first
    /// record stored) to the last one stored.
    pub msgs_per_s: f64,
    /// The broker's own figure in the same run: how fast it took the publishes alone.
    pub publish_msgs_per_s: f64,
    /// Broker timestamp → record stored, from the gateway's histogram (bucket-interpolated); not
    /// with `--prefill`, where messages wait in the broker by design.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub mean_bytes: f64,
    /// The broker's other own figure (Kafka): how fast it serves the same messages to one plain
    /// consumer that does nothing with them, read after the gateway's run.
    pub broker_read_msgs_per_s: Option<f64>,
}

/// What `bench nats` drives: the broker, the stream the gateway consumes, and the load.
#[derive(Debug, clap::Args)]
pub struct NatsBench {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    #[arg(long)]
    pub stream: String,
    #[arg(long)]
    pub subject: String,
    /// The gateway's durable consumer (its `consumer` setting).
    #[arg(long, default_value = "medanchor")]
    pub consumer: String,
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Messages per second to publish at (default: as fast as the broker takes them); a
    /// long paced run is the memory soak.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The gateway's HTTP address, for the latency histogram.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Gateway process id, for its peak RSS.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Publish everything before the gateway consumes, then time the drain: start the gateway
    /// (fresh, on a stream/topic of its own) once the bench prints `published`. On a small
    /// machine this keeps the publisher's and the broker's ingest work off the gateway's core.
    #[arg(long, conflicts_with = "rate")]
    pub prefill: bool,
}

/// `medanchor bench nats`: publishes `count` messages of the mix (fresh control ids) to
/// `subject` of `stream` (created if missing; work-queue retention, so acknowledged messages
/// leave the broker), optionally paced to `rate` per second, then waits until the gateway's
/// consumer has acknowledged all of them, i.e. until every record is stored.
pub async fn nats(b: &NatsBench) -> Result<BrokerBenchReport> {
    use async_nats::jetstream;
    let (url, stream, subject, count) = (&b.url, &b.stream, &b.subject, b.count);
    let templates = templates(Mix::Corpus);
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![subject.to_string()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .context("stream")?;
    let load = PacedMix::new(&templates, "N", b.rate);
    let mut bytes = 0usize;
    let started = load.started;
    let mut acks = std::collections::VecDeque::new();
    for i in 0..count {
        let msg = load.message(i).await;
        bytes += msg.len();
        acks.push_back(js.publish(subject.to_string(), msg.into()).await?);
        if acks.len() >= 1024 {
            acks.pop_front().expect("non-empty").await?;
        }
    }
    for a in acks {
        a.await?;
    }
    let published = started.elapsed().as_secs_f64();
    let stream_handle = js.get_stream(stream).await?;
    let drain_started = if b.prefill {
        announce_published(count)?;
        let waiting = Instant::now();
        loop {
            // Fetching the consumer fetches its info: one request per look.
            if let Ok(c) = stream_handle
                .get_consumer::<jetstream::consumer::pull::Config>(&b.consumer)
                .await
            {
                if c.cached_info().delivered.consumer_sequence > 0 {
                    break Some(Instant::now());
                }
            }
            if waiting.elapsed() > Duration::from_secs(600) {
                bail!("no gateway consumed {stream} within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else {
        None
    };
    let mut c: jetstream::consumer::PullConsumer =
        stream_handle.get_consumer(&b.consumer).await.map_err(|e| {
            let consumer = &b.consumer;
            anyhow::anyhow!("consumer {consumer:?}: {e}: is the gateway consuming {stream}?")
        })?;
    loop {
        let info = c.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = drain_started.unwrap_or(started).elapsed().as_secs_f64();
    let (p50_ms, p99_ms) = match b.http {
        Some(addr) if !b.prefill => source_latency(addr).await.unwrap_or((None, None)),
        _ => (None, None),
    };
    Ok(BrokerBenchReport {
        messages: count,
        msgs_per_s: count as f64 / elapsed,
        publish_msgs_per_s: count as f64 / published,
        p50_ms,
        p99_ms,
        peak_rss_mb: b.pid.and_then(peak_rss_mb),
        mean_bytes: bytes as f64 / count.max(1) as f64,
        broker_read_msgs_per_s: None,
    })
}

/// Tells whoever runs a `--prefill` bench that the gateway may start now.
fn announce_published(count: u64) -> Result<()> {
    use std::io::Write;
    crate::outln!("published {count}; start the gateway")?;
    super::stdout().flush()?;
    Ok(())
}

/// The gateway's `/metrics` text.
async fn fetch_metrics(addr: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// p50/p99 of `medanchor_source_to_stored_seconds` (all sources), read from `/metrics`.
async fn source_latency(addr: SocketAddr) -> Result<(Option<f64>, Option<f64>)> {
    let body = fetch_metrics(addr).await?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("medanchor_source_to_stored_seconds_bucket{") else {
            continue;
        };
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::INFINITY);
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(entry) => entry.1 += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total == 0.0 {
        return Ok((None, None));
    }
    let q = |p: f64| {
        let target = total * p;
        let mut prev = (0.0, 0.0);
        for &(le, n) in &buckets {
            if n >= target {
                if le.is_infinite() {
                    return Some(prev.0 * 1000.0);
                }
                let frac = if n > prev.1 {
                    (target - prev.1) / (n - prev.1)
                } else {
                    1.0
                };
                return Some((prev.0 + (le - prev.0) * frac) * 1000.0);
            }
            prev = (le, n);
        }
        None
    };
    Ok((q(0.5), q(0.99)))
}

/// What `bench kafka` drives: a broker (or a mock cluster of its own), the topic the gateway
/// consumes, and the load.
#[derive(Debug, clap::Args)]
pub struct KafkaBench {
    /// `bootstrap.servers` of the broker the gateway consumes from.
    #[arg(long, required_unless_present = "mock")]
    pub brokers: Option<String>,
    /// Host librdkafka's mock cluster in this process instead: its address is printed first
    /// (`mock cluster: BOOTSTRAP`); start the gateway on it, publishing begins once the
    /// gateway reports partitions assigned (its metrics on --http).
    #[arg(long)]
    pub mock: bool,
    #[arg(long, default_value = "medanchor.bench")]
    pub topic: String,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Dead-letter topic created beside the topic (the gateway requires it).
    #[arg(long, default_value = "medanchor.dead")]
    pub dead_letter_topic: String,
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Messages per second to publish at (default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The gateway's HTTP address: its metrics say when every message is stored.
    #[arg(long)]
    pub http: SocketAddr,
    /// Gateway process id, for its peak RSS (default: the process listening on --http's port).
    #[arg(long)]
    pub pid: Option<u32>,
    /// librdkafka setting for the bench's producer, `KEY=VALUE`, repeatable (e.g.
    /// `linger.ms=50` for bigger batches; `batch.num.messages=1` for tansu 0.6.0, which cannot
    /// fetch from inside a batch).
    #[arg(long = "producer-option", value_parser = key_value)]
    pub producer_options: Vec<(String, String)>,
    /// Publish everything before the gateway consumes, then time the drain: start the gateway
    /// (fresh, on a stream/topic of its own) once the bench prints `published`. On a small
    /// machine this keeps the publisher's and the broker's ingest work off the gateway's core.
    #[arg(long, conflicts_with = "rate")]
    pub prefill: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Sum of `medanchor_source_messages_total` over the events that end a message.
async fn settled_messages(addr: SocketAddr) -> Result<f64> {
    let body = fetch_metrics(addr).await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("medanchor_source_messages_total{"))
        .filter(|l| {
            ["stored", "duplicate", "dead_lettered"]
                .iter()
                .any(|e| l.contains(&format!("event=\"{e}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `medanchor bench kafka`: creates the topic (and the dead-letter topic) if missing, produces
/// `count` messages of the mix with fresh control ids through an idempotent producer
/// (`acks=all`), optionally paced, and waits until the gateway's metrics count every one
/// stored. msgs/s is end to end from the first publish; the broker's own figure (how fast it
/// took the publishes alone) is reported beside it.
pub async fn kafka(b: &KafkaBench) -> Result<BrokerBenchReport> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mock = if b.mock {
        let m = rdkafka::mocking::MockCluster::new(1).context("mock cluster")?;
        for (topic, partitions) in [(&b.topic, b.partitions), (&b.dead_letter_topic, 1)] {
            m.create_topic(topic, partitions, 1)
                .with_context(|| format!("creating {topic}"))?;
        }
        crate::outln!("mock cluster: {}", m.bootstrap_servers())?;
        use std::io::Write;
        super::stdout().flush()?;
        Some(m)
    } else {
        None
    };
    let brokers = match (&mock, &b.brokers) {
        (Some(m), _) => m.bootstrap_servers(),
        (None, Some(b)) => b.clone(),
        (None, None) => bail!("--brokers or --mock"),
    };
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers);
    if mock.is_none() {
        let admin: AdminClient<DefaultClientContext> = client.create()?;
        let topics = [
            NewTopic::new(&b.topic, b.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&b.dead_letter_topic, 1, TopicReplication::Fixed(1)),
        ];
        for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => bail!("creating topic {t}: {e}"),
            }
        }
    } else if !b.prefill {
        // Wait for the gateway, started on the printed address, to own partitions.
        let started = Instant::now();
        while !fetch_metrics(b.http).await.is_ok_and(|m| {
            m.lines().any(|l| {
                l.starts_with("medanchor_source_partitions_assigned{") && !l.ends_with(" 0")
            })
        }) {
            if started.elapsed() > Duration::from_secs(600) {
                bail!(
                    "no gateway on {} consumed the mock cluster within 10 minutes",
                    b.http
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut producer = client.clone();
    producer
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Keyless messages spread evenly over the partitions (not in sticky runs): the mock
        // cluster drops a partition's oldest messages beyond ~5 MB.
        .set("sticky.partitioning.linger.ms", "0");
    for (k, v) in &b.producer_options {
        producer.set(k, v);
    }
    let producer: FutureProducer = producer.create()?;
    // With --prefill the gateway starts after publishing, fresh: nothing stored before.
    let baseline = if b.prefill {
        0.0
    } else {
        settled_messages(b.http)
            .await
            .context("reading the gateway's metrics (--http)")?
    };
    let templates = templates(Mix::Corpus);
    let load = PacedMix::new(&templates, "K", b.rate);
    let mut bytes = 0usize;
    let started = load.started;
    let mut acks = std::collections::VecDeque::new();
    for i in 0..b.count {
        let msg = load.message(i).await;
        bytes += msg.len();
        let delivery = producer
            .send_result(FutureRecord::<(), _>::to(&b.topic).payload(&msg))
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        acks.push_back(delivery);
        if acks.len() >= 8192 {
            let r = acks.pop_front().expect("non-empty").await;
            r?.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
    }
    for a in acks {
        a.await?.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let published = started.elapsed().as_secs_f64();
    let drain_started = if b.prefill {
        announce_published(b.count)?;
        let waiting = Instant::now();
        while !settled_messages(b.http).await.is_ok_and(|n| n > 0.0) {
            if waiting.elapsed() > Duration::from_secs(600) {
                bail!("no gateway on {} consumed within 10 minutes", b.http);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(Instant::now())
    } else {
        None
    };
    // A broker that dropped messages before they were read (the mock cluster keeps ~5 MB per
    // partition) would leave this waiting forever: give up after 30 s without progress.
    let (mut last, mut last_change) = (0.0, Instant::now());
    loop {
        let settled = settled_messages(b.http).await? - baseline;
        if settled >= b.count as f64 {
            break;
        }
        if settled > last {
            (last, last_change) = (settled, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(30) {
            bail!("stalled at {settled} of {} messages stored", b.count);
        }
        // Rendering /metrics costs the gateway's core: ask often only near the end.
        let near_end = settled >= 0.95 * b.count as f64;
        tokio::time::sleep(Duration::from_millis(if near_end { 5 } else { 100 })).await;
    }
    let elapsed = drain_started.unwrap_or(started).elapsed().as_secs_f64();
    let (p50_ms, p99_ms) = if b.prefill {
        (None, None)
    } else {
        source_latency(b.http).await.unwrap_or((None, None))
    };
    let peak_rss_mb = b
        .pid
        .or_else(|| listening_pid(b.http.port()))
        .and_then(peak_rss_mb);
    let reader = client.clone();
    let (topic, count) = (b.topic.clone(), b.count);
    let broker_read_msgs_per_s =
        tokio::task::spawn_blocking(move || kafka_read_rate(reader, &topic, count)).await??;
    Ok(BrokerBenchReport {
        messages: b.count,
        msgs_per_s: b.count as f64 / elapsed,
        publish_msgs_per_s: b.count as f64 / published,
        p50_ms,
        p99_ms,
        peak_rss_mb,
        mean_bytes: bytes as f64 / b.count.max(1) as f64,
        broker_read_msgs_per_s: Some(broker_read_msgs_per_s),
    })
}

/// Reads `count` messages of `topic` from the start of every partition with a plain consumer
/// (no group, no commits, payloads dropped): the rate the broker serves a consumer at, to set
/// beside the gateway's.
fn kafka_read_rate(
    mut client: rdkafka::config::ClientConfig,
    topic: &str,
    count: u64,
) -> Result<f64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = client
        .set("group.id", "medanchor-bench-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut read, mut last) = (0u64, Instant::now());
    while read < count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                read += 1;
                last = Instant::now();
            }
            Some(Err(e)) => bail!("reading {topic} back: {e}"),
            None if last.elapsed() > Duration::from_secs(30) => {
                bail!("reading {topic} back stalled at {read} of {count}")
            }
            None => {}
        }
    }
    Ok(read as f64 / started.elapsed().as_secs_f64())
}
