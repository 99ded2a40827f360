use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::offsets::{Offsets, Partition};
use super::KafkaConfig;
use crate::envelope::{now_ms, AckToken, Envelope, Origin, Outcome};
use crate::metrics::{Metrics, SourceMetrics};
use crate::pipeline::Pipeline;
use crate::sources::dead_letter;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("source {source_name}: cannot create the Kafka {what}: {reason}")]
    Client {
        source_name: String,
        what: &'static str,
        reason: String,
    },
    #[error("source {source_name}: cannot reach the brokers {brokers}: {reason}")]
    Connect {
        source_name: String,
        brokers: String,
        reason: String,
    },
    #[error(
        "source {source_name}: topic {topic:?} ({key}) is not on the brokers; create it first"
    )]
    MissingTopic {
        source_name: String,
        topic: String,
        key: &'static str,
    },
    #[error("source {source_name}: cannot subscribe: {reason}")]
    Subscribe { source_name: String, reason: String },
}

/// State shared by the consumer thread, its rebalance callbacks and the settling tasks.
struct Shared {
    name: String,
    offsets: Mutex<Offsets>,
    /// Signalled whenever a message finishes or a settling task ends.
    changed: Condvar,
    /// Settling tasks not yet ended (finished or given up at stop).
    in_flight: AtomicUsize,
    paused: AtomicBool,
    /// Stopping: nothing more will finish, give partitions up without waiting.
    closing: AtomicBool,
    /// Revocations so far: a poll that ran one may have taken partitions away from messages
    /// polled before it but not yet begun (`consume`'s bursts).
    revocations: AtomicU64,
    drain_timeout: Duration,
    /// Where a release sweeps its withdrawn messages out of the seal queue. Weak: the consumer
    /// holds this state and, with the brokers gone, may outlive the stop in a thread of its own
    /// (see `consume`); the pipeline closes only when its last strong handle is gone.
    pipeline: std::sync::Weak<Pipeline>,
    up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The per-message metrics, labels resolved once.
    each: SourceMetrics,
}

impl Shared {
    fn offsets(&self) -> MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the flag that withdraws the message if its partition is given up first.
    fn begin(&self, topic: &str, partition: i32, offset: i64) -> Arc<AtomicBool> {
        let released = self.offsets().begin(topic, partition, offset);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.each.in_flight.inc();
        released
    }

    /// A settling task ended; `done` when its message's offset may be committed.
    fn end(&self, job: &Job, done: bool) {
        let mut offsets = self.offsets();
        offsets.end(&job.topic, job.partition, job.offset, done, &job.released);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.each.in_flight.dec();
        drop(offsets);
        self.changed.notify_all();
    }

    /// Waits until `settled` holds or `timeout` passes; false on timeout.
    fn wait(&self, timeout: Duration, settled: impl Fn(&Offsets) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut offsets = self.offsets();
        while !settled(&offsets) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            offsets = self
                .changed
                .wait_timeout(offsets, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Hands the offsets that moved to librdkafka for the next auto-commit.
    fn store_moved(&self, consumer: &BaseConsumer<SourceContext>) {
        let moved = self.offsets().take_committable();
        if moved.is_empty() {
            return;
        }
        // Fails for partitions no longer assigned; those were committed when they were revoked.
        if let Err(e) = consumer.store_offsets(&partition_list(&moved)) {
            tracing::debug!(source = %self.name, error = %e, "offsets not stored");
        }
    }

    /// Before `gone` is given up: withdraw its messages that have not started sealing, wait for
    /// the ones sealing, commit what is done, forget.
    ///
    /// Withdrawing (and sweeping the withdrawn out of the seal queue) keeps the wait to the
    /// messages already sealing, a batch and a vault commit, instead of everything in flight;
    /// the commit is retried while the coordinator answers that a rebalance is in progress. A
    /// refused commit would let the next owner re-read, and store a second time, what this
    /// gateway stored. Both end at `drain_timeout`.
    fn release(&self, consumer: &BaseConsumer<SourceContext>, gone: &[Partition]) {
        let closing = self.closing.load(Ordering::Relaxed);
        let began = Instant::now();
        let deadline = began
            + if closing {
                Duration::ZERO
            } else {
                self.drain_timeout
            };
        let settling = self.offsets().withdraw(gone);
        if let Some(pipeline) = self.pipeline.upgrade().filter(|_| settling > 0) {
            pipeline.sweep_withdrawn();
        }
        let waited = self.wait(deadline.saturating_duration_since(Instant::now()), |o| {
            o.settling(Some(gone)) == 0
        });
        if !waited {
            let left = self.offsets().settling(Some(gone));
            if left > 0 && !closing {
                tracing::warn!(source = %self.name, messages = left, "partitions given up with messages still in the pipeline; their next owner reads them again");
            }
        }
        let commit = {
            let mut offsets = self.offsets();
            let commit = offsets.committable_of(gone);
            offsets.forget(gone);
            commit
        };
        if self.commit_before_release(consumer, &commit, deadline) {
            tracing::info!(source = %self.name, offsets = %describe_offsets(&commit), in_flight_at_revocation = settling, took_ms = began.elapsed().as_millis() as u64, "partitions drained and committed before release");
        }
        for (topic, partition) in gone {
            let _ = self.metrics.source_partition_lag.remove_label_values(&[
                &self.name,
                topic,
                &partition.to_string(),
            ]);
        }
    }

    /// Commits `offsets` synchronously, again while the coordinator says a rebalance is in
    /// progress and `deadline` has not passed; false when nothing was committed.
    ///
    /// Retrying is safe because the partitions are still ours: under the cooperative protocol
    /// the group moves them only after this member rejoins without them, which it does once the
    /// release returns. A member the group has dropped meanwhile is refused for its generation
    /// (not retried), so a late commit never moves a new owner's offsets back. (Apache Kafka
    /// accepts a current member's commits while a rebalance is being prepared; librdkafka's mock
    /// coordinator refuses them until the group is stable again, seconds later.)
    fn commit_before_release(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        offsets: &[(Partition, i64)],
        deadline: Instant,
    ) -> bool {
        if offsets.is_empty() {
            return false;
        }
        if !self.up.load(Ordering::Relaxed) {
            // A synchronous commit waits for a coordinator without a time limit; with every
            // broker down that would hang the stop. Not committing only means re-reading.
            tracing::warn!(source = %self.name, offsets = %describe_offsets(offsets), "brokers down: partitions released without a commit; their next owner re-reads from the last commit");
            self.metrics
                .source_messages
                .with_label_values(&[&self.name, "commit_failed"])
                .inc();
            return false;
        }
        let list = partition_list(offsets);
        // When librdkafka takes a partition away it commits that partition's *stored* offset
        // once more (enable.auto.commit, rdkafka_assignment.c). Stored lags this commit by up
        // to one store interval, so that second commit would move the group back and the next
        // owner would re-read what this gateway stored. Storing first makes both equal.
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(source = %self.name, error = %e, "offsets not stored before release");
        }
        let mut refused = 0u32;
        loop {
            match consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => {
                    if refused > 0 {
                        tracing::info!(source = %self.name, refused, "commit before release accepted once the group's rebalance let it");
                    }
                    return true;
                }
                Err(e)
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::RebalanceInProgress)
                        && Instant::now() + RELEASE_COMMIT_RETRY < deadline =>
                {
                    refused += 1;
                    std::thread::sleep(RELEASE_COMMIT_RETRY);
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, refused, offsets = %describe_offsets(offsets), "commit before release failed; the next owner re-reads from the last commit (duplicates are recognised only within one data directory)");
                    return false;
                }
            }
        }
    }
}

fn partition_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((topic, partition), offset) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// `topic/partition` list for logs (topic names and numbers are not patient data).
fn describe(partitions: &[Partition]) -> String {
    let parts: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    parts.join(",")
}

fn describe_offsets(offsets: &[(Partition, i64)]) -> String {
    let parts: Vec<String> = offsets
        .iter()
        .map(|((t, p), o)| format!("{t}/{p}@{o}"))
        .collect();
    parts.join(",")
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// librdkafka callbacks: statistics (lag, broker state), errors and rebalances.
struct SourceContext {
    shared: Arc<Shared>,
}

impl ClientContext for SourceContext {
    /// librdkafka's own log lines, through tracing as usual; one kind is also counted: an offset
    /// reset after "offset not available" means the brokers deleted messages (retention) that
    /// this group had not read, so they were never stored.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "OFFSET"
            && log_message.contains("offset reset")
            && matches!(
                level,
                RDKafkaLogLevel::Warning
                    | RDKafkaLogLevel::Error
                    | RDKafkaLogLevel::Critical
                    | RDKafkaLogLevel::Alert
                    | RDKafkaLogLevel::Emerg
            )
        {
            self.shared
                .metrics
                .source_messages
                .with_label_values(&[&self.shared.name, "offset_reset"])
                .inc();
        }
        DefaultClientContext.log(level, fac, log_message);
    }

    fn stats(&self, stats: Statistics) {
        let s = &self.shared;
        s.up.store(
            stats.brokers.values().any(|b| b.state == "UP"),
            Ordering::Relaxed,
        );
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    s.metrics
                        .source_partition_lag
                        .with_label_values(&[&s.name, topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: ClientError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Repeated while the brokers stay away: said once, then /readyz tells.
            if !self.shared.up.swap(false, Ordering::Relaxed) {
                tracing::debug!(source = %self.shared.name, reason, "brokers still down");
                return;
            }
        }
        tracing::warn!(source = %self.shared.name, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    /// Auto-commits and the commits before a release report here: a failing commit means a
    /// crash or rebalance re-reads more (duplicates within one data directory are recognised;
    /// across gateways they are not), so it must be seen.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) {
                return; // nothing to commit
            }
            tracing::warn!(source = %self.shared.name, error = %e, partitions = %describe(&partitions_of(offsets)), "offset commit failed");
            self.shared
                .metrics
                .source_messages
                .with_label_values(&[&self.shared.name, "commit_failed"])
                .inc();
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.revocations.fetch_add(1, Ordering::SeqCst);
            self.shared.release(consumer, &partitions_of(tpl));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(source = %self.shared.name, partitions = %describe(&partitions_of(tpl)), "partitions assigned");
            if self.shared.paused.load(Ordering::Relaxed) {
                let _ = consumer.pause(tpl);
            }
        }
        if let Ok(assignment) = consumer.assignment() {
            self.shared
                .metrics
                .source_partitions
                .with_label_values(&[&self.shared.name])
                .set(assignment.count() as i64);
        }
    }
}

/// Builds the consumer and the dead-letter producer, checks the topics and the brokers'
/// settings, subscribes, and consumes on a thread of its own until `stop`. Configuration
/// problems (brokers unreachable, a topic missing) are returned at once.
pub async fn run(
    cfg: KafkaConfig,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicBool>,
    settling: TaskTracker,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
    let name = cfg.name.clone();
    let client_err = |what| {
        let name = name.clone();
        move |e: ClientError| KafkaError::Client {
            source_name: name,
            what,
            reason: e.to_string(),
        }
    };
    let mut common = ClientConfig::new();
    common.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.options {
        common.set(k, v);
    }
    let mut consumer_cfg = common.clone();
    consumer_cfg
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            cfg.commit_interval_ms.to_string(),
        );
    for (k, v) in [
        // A new group starts at the beginning: nothing on the topic is skipped.
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "1000"),
        // Bounds what librdkafka prefetches (its default is 64 MiB per consumer).
        ("queued.max.messages.kbytes", "16384"),
        // When a partition's prefetch queue is over its threshold librdkafka waits this long
        // before fetching it again (default 1 s): the pipeline empties the queue in far less,
        // and then sat idle (mock bench, 64 partitions: 5,010 msgs/s at 1 s, 12,570-13,740 at
        // 10 ms).
        ("fetch.queue.backoff.ms", "10"),
        // Incremental rebalancing: a member gives up only the partitions that move, after the
        // group has settled, so its commit before the release is accepted (in an eager
        // rebalance every partition stops at once and brokers may refuse commits meanwhile).
        ("partition.assignment.strategy", "cooperative-sticky"),
    ] {
        if !cfg.options.contains_key(k) {
            consumer_cfg.set(k, v);
        }
    }
    let shared = Arc::new(Shared {
        name: name.clone(),
        offsets: Mutex::new(Offsets::default()),
        changed: Condvar::new(),
        in_flight: AtomicUsize::new(0),
        paused: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        revocations: AtomicU64::new(0),
        drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
        pipeline: Arc::downgrade(&pipeline),
        up: up.clone(),
        each: metrics.source(&cfg.name),
        metrics: metrics.clone(),
    });
    let consumer: BaseConsumer<SourceContext> = consumer_cfg
        .create_with_context(SourceContext {
            shared: shared.clone(),
        })
        .map_err(client_err("consumer"))?;
    let mut producer_cfg = common.clone();
    producer_cfg
        .set("enable.idempotence", "true")
        .set("acks", "all");
    // Built here only to refuse bad settings at start: the producer that writes dead letters is
    // created with the first one. An idle rdkafka producer costs a polling thread that wakes
    // every 100 ms and spins through the last millisecond of each wait (≈2.5% of the gateway's
    // core under the Kafka bench, perf), for messages that are rare.
    drop(
        producer_cfg
            .create::<FutureProducer>()
            .map_err(client_err("dead-letter producer"))?,
    );
    let admin: AdminClient<DefaultClientContext> =
        common.create().map_err(client_err("admin client"))?;

    let cfg = Arc::new(cfg);
    let consumer = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || check_topics(&consumer, &cfg).map(|()| consumer))
            .await
            .expect("topic check panicked")?
    };
    warn_unsafe_settings(&admin, &cfg).await;
    up.store(true, Ordering::Relaxed);
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| KafkaError::Subscribe {
            source_name: name.clone(),
            reason: e.to_string(),
        })?;
    tracing::info!(source = %name, topics = ?cfg.topics, group = %cfg.group_id, "kafka source consuming");

    let settler = Settler {
        cfg: cfg.clone(),
        pipeline: pipeline.clone(),
        producer: Arc::new(DeadLetterProducer {
            cfg: producer_cfg,
            producer: std::sync::OnceLock::new(),
        }),
        shared,
        stop: stop.clone(),
    };
    let runtime = tokio::runtime::Handle::current();
    Ok(tokio::task::spawn_blocking(move || {
        consume(consumer, settler, settling, stop, runtime)
    }))
}

/// The consumed topics and the dead-letter topic must exist: a consumer would wait for a missing
/// topic silently, and a dead letter with nowhere to go would hold its partition up.
fn check_topics(
    consumer: &BaseConsumer<SourceContext>,
    cfg: &KafkaConfig,
) -> Result<(), KafkaError> {
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| KafkaError::Connect {
            source_name: cfg.name.clone(),
            brokers: cfg.brokers.clone(),
            reason: e.to_string(),
        })?;
    let wanted = cfg
        .topics
        .iter()
        .map(|t| (t, "topics"))
        .chain([(&cfg.dead_letter_topic, "dead_letter_topic")]);
    for (topic, key) in wanted {
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        let Some(found) = found else {
            return Err(KafkaError::MissingTopic {
                source_name: cfg.name.clone(),
                topic: topic.clone(),
                key,
            });
        };
        let replicas = found
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0);
        if replicas < 2 {
            tracing::warn!(source = %cfg.name, topic = %topic, replicas, "topic has a single replica: losing that broker loses messages the EHR was told were delivered; use replication factor 3 in production");
        }
    }
    Ok(())
}

/// Warns about topic settings under which an acknowledged message can be lost. Brokers that do
/// not answer DescribeConfigs get one warning saying the check was skipped.
async fn warn_unsafe_settings(admin: &AdminClient<DefaultClientContext>, cfg: &KafkaConfig) {
    let topics: Vec<_> = cfg
        .topics
        .iter()
        .chain([&cfg.dead_letter_topic])
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let described = match admin.describe_configs(&topics, &opts).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(source = %cfg.name, error = %e, "could not read the topics' settings; unsafe settings were not checked");
            return;
        }
    };
    for (spec, result) in topics.iter().zip(described) {
        let ResourceSpecifier::Topic(topic) = spec else {
            continue;
        };
        let Ok(resource) = result else {
            tracing::warn!(source = %cfg.name, topic, "could not read the topic's settings; unsafe settings were not checked");
            continue;
        };
        let value = |k: &str| resource.get(k).and_then(|e| e.value.clone());
        if value("unclean.leader.election.enable").as_deref() == Some("true") {
            tracing::warn!(source = %cfg.name, topic, "unclean.leader.election.enable=true: an out-of-date replica can become leader and drop acknowledged messages");
        }
        if let Some(n) = value("min.insync.replicas").and_then(|v| v.parse::<u32>().ok()) {
            if n < 2 {
                tracing::warn!(source = %cfg.name, topic, min_insync_replicas = n, "min.insync.replicas below 2: a write acknowledged by one broker is lost with it");
            }
        }
    }
}

/// How long a release waits before committing again after the coordinator refused its commit
/// for a rebalance in progress.
const RELEASE_COMMIT_RETRY: Duration = Duration::from_millis(200);

/// How long a stop waits for the consumer to leave its group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the pipeline may stay full before the source pauses its partitions.
const FULL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// Most messages one poll burst hands to the pipeline together.
const BURST: usize = 64;

/// The consumer thread: polls, hands messages to the pipeline, stores offsets that moved,
/// waits while the pipeline holds `max_in_flight` of this source's messages.
fn consume(
    consumer: BaseConsumer<SourceContext>,
    settler: Settler,
    settling: TaskTracker,
    stop: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
) {
    let shared = settler.shared.clone();
    let cfg = settler.cfg.clone();
    let name = cfg.name.as_str();
    let max = cfg.max_in_flight;
    // Offsets are handed to librdkafka a few times per commit interval, not after every
    // message: each hand-over walks the partitions and crosses into C.
    let store_every = Duration::from_millis((cfg.commit_interval_ms / 2).clamp(5, 100));
    let mut stored_at = Instant::now();
    let mut full_since: Option<Instant> = None;
    while !*stop.borrow() {
        if stored_at.elapsed() >= store_every {
            shared.store_moved(&consumer);
            stored_at = Instant::now();
        }
        // A full pipeline drains in milliseconds: wait for it without polling (librdkafka keeps
        // prefetching, up to queued.max.messages.kbytes). Pausing the partitions would throw
        // their prefetched messages away, to be fetched again on resume. Only a pipeline that
        // stays full (storage down) pauses them, so the poll loop can go on serving the group.
        let in_flight = shared.in_flight.load(Ordering::Relaxed);
        let paused = shared.paused.load(Ordering::Relaxed);
        if in_flight >= max && !paused {
            let since = *full_since.get_or_insert_with(Instant::now);
            if since.elapsed() < FULL_BEFORE_PAUSE {
                shared.wait(Duration::from_millis(20), |_| {
                    shared.in_flight.load(Ordering::Relaxed) < max
                });
                continue;
            }
        } else if in_flight < max {
            full_since = None;
        }
        if !paused && in_flight >= max || paused && in_flight <= max / 2 {
            if let Ok(assignment) = consumer.assignment() {
                let done = if paused {
                    consumer.resume(&assignment)
                } else {
                    consumer.pause(&assignment)
                };
                if done.is_ok() {
                    shared.paused.store(!paused, Ordering::Relaxed);
                }
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => {
                tracing::warn!(source = %name, error = %e, "consume error");
            }
            Some(Ok(message)) => {
                let mut burst = vec![Job::from_message(&message)];
                drop(message);
                // Messages librdkafka already holds join the burst: one entry into the runtime
                // and one settling task for all of them. A task spawned from this thread wakes
                // a runtime worker; per message, the runtime's threads spent much of their time
                // switching and waking (perf under the Kafka bench).
                let revocations = shared.revocations.load(Ordering::SeqCst);
                while burst.len() < BURST {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => burst.push(Job::from_message(&m)),
                        Some(Err(e)) => {
                            tracing::warn!(source = %name, error = %e, "consume error");
                            break;
                        }
                        None => break,
                    }
                }
                // A poll above may have released partitions (drained, committed, forgotten)
                // while messages of theirs waited here unbegun: storing them now would store
                // what the next owner reads again from the commit. They are left to it.
                // (Only messages of partitions known to be gone: one of a partition still owned
                // is past librdkafka's fetch position and would not come again.)
                if shared.revocations.load(Ordering::SeqCst) != revocations {
                    if let Ok(owned) = consumer.assignment() {
                        burst.retain(|j| owned.find_partition(&j.topic, j.partition).is_some());
                    }
                    if burst.is_empty() {
                        continue;
                    }
                }
                let mut envelopes = Vec::with_capacity(burst.len());
                let mut settle = Vec::with_capacity(burst.len());
                for mut job in burst {
                    job.released = shared.begin(&job.topic, job.partition, job.offset);
                    shared.each.consumed.inc();
                    let (env, outcome) = job.envelope(&cfg);
                    envelopes.push(env);
                    settle.push((job, outcome));
                }
                runtime.block_on(async {
                    for env in envelopes {
                        settler.pipeline.submit(env).await;
                    }
                });
                let settler = settler.clone();
                settling.spawn(async move {
                    // Each message settles on its own (a retry or a dead letter holds up only
                    // its own offset); the task ends when the last one has.
                    futures::future::join_all(
                        settle
                            .into_iter()
                            .map(|(job, outcome)| settler.clone().run(job, outcome)),
                    )
                    .await;
                });
            }
        }
    }
    // Stopping: nothing new is read; what is in the pipeline finishes (the pipeline stays open
    // until this thread ends), then the finished prefix is committed.
    if !shared.wait(shared.drain_timeout, |_| {
        shared.in_flight.load(Ordering::Relaxed) == 0
    }) {
        tracing::warn!(source = %name, messages = shared.in_flight.load(Ordering::Relaxed), "stopping with messages still in the pipeline; they are read again at the next start");
    }
    shared.closing.store(true, Ordering::Relaxed);
    if let Ok(assignment) = consumer.assignment() {
        shared.release(&consumer, &partitions_of(&assignment));
    }
    // Dropping the consumer leaves the group. With the brokers gone librdkafka waits out the
    // session timeout (45 s by default) first; nothing is left to commit by then, so the stop
    // does not wait for it beyond a few seconds.
    let (left, leaving) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = left.send(());
    });
    if leaving.recv_timeout(LEAVE_TIMEOUT).is_err() {
        tracing::warn!(source = %name, "the group did not confirm our leaving (brokers unreachable?); stopping without waiting for it");
    }
    tracing::info!(source = %name, "kafka source stopped");
}

/// What is kept of a message while its record is in the pipeline.
struct Job {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Vec<(String, Option<Bytes>)>,
    timestamp_ms: Option<i64>,
    /// Raised when the partition is given up before the message is stored
    /// ([`Offsets::begin`]).
    released: Arc<AtomicBool>,
}

impl Job {
    fn from_message(m: &BorrowedMessage<'_>) -> Job {
        Job {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
            released: Arc::default(),
        }
    }

    fn envelope(&self, cfg: &KafkaConfig) -> (Envelope, oneshot::Receiver<Outcome>) {
        let (token, outcome) = AckToken::withdrawable(self.released.clone());
        let env = Envelope {
            payload: self.payload.clone(),
            origin: Origin::Kafka {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: self.offset,
            },
            format: cfg.format,
            received_ms: now_ms(),
            token,
        };
        (env, outcome)
    }
}

/// The idempotent producer dead letters go through, created when the first one is written.
struct DeadLetterProducer {
    cfg: ClientConfig,
    producer: std::sync::OnceLock<FutureProducer>,
}

impl DeadLetterProducer {
    fn get(&self) -> Result<&FutureProducer, rdkafka::error::KafkaError> {
        if let Some(p) = self.producer.get() {
            return Ok(p);
        }
        // Two first dead letters at once may both build one; the loser is dropped.
        let built = self.cfg.create::<FutureProducer>()?;
        Ok(self.producer.get_or_init(|| built))
    }
}

/// Turns each message's outcome into its offset's fate: done once stored or dead-lettered,
/// re-submitted after a temporary failure, left undone if the gateway stops first.
#[derive(Clone)]
struct Settler {
    cfg: Arc<KafkaConfig>,
    pipeline: Arc<Pipeline>,
    producer: Arc<DeadLetterProducer>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl Settler {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps unless the gateway stops or the job's partition is given up first (then false):
    /// a release waits for the partition's messages, and a backoff of up to half a minute
    /// must not hold it.
    async fn pause(&self, d: Duration, job: &Job) -> bool {
        let mut stop = self.stop.clone();
        let released = async {
            while !job.released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
            _ = released => false,
        }
    }

    async fn run(self, job: Job, mut outcome: oneshot::Receiver<Outcome>) {
        let mut attempt = 1u32;
        let done = loop {
            match outcome.await {
                Ok(Outcome::Stored { duplicate, .. }) => {
                    let age = job
                        .timestamp_ms
                        .map(|ts| (now_ms() as i64 - ts) as f64 / 1e3);
                    self.shared.each.stored(duplicate, age);
                    break true;
                }
                Ok(Outcome::Rejected(r)) => {
                    self.shared.each.rejected.inc();
                    break self
                        .dead_letter(
                            &job,
                            &r.reason,
                            r.label,
                            r.quarantine_id.as_deref(),
                            attempt,
                        )
                        .await;
                }
                Ok(Outcome::Retry { reason }) => {
                    // Withdrawn, or failed after its partition was given up: the message is
                    // its next owner's, which reads it from the commit.
                    if job.released.load(Ordering::SeqCst) {
                        self.shared
                            .metrics
                            .source_messages
                            .with_label_values(&[&self.cfg.name, "withdrawn"])
                            .inc();
                        break false;
                    }
                    // A stopping gateway answers everything with Retry: leave the offset
                    // uncommitted, the message is read again at the next start.
                    if self.stopping() {
                        break false;
                    }
                    if attempt >= self.cfg.max_deliver {
                        let reason = format!("still failing after {attempt} attempts: {reason}");
                        break self
                            .dead_letter(&job, &reason, "max_deliver", None, attempt)
                            .await;
                    }
                    self.shared.each.redelivered.inc();
                    if !self
                        .pause(Duration::from_millis(500 << attempt.min(6)), &job)
                        .await
                    {
                        break false;
                    }
                    attempt += 1;
                    let (env, next) = job.envelope(&self.cfg);
                    self.pipeline.submit(env).await;
                    outcome = next;
                }
                Err(_) => break false, // unreachable: a dropped token answers Retry
            }
        };
        self.shared.end(&job, done);
    }

    /// Produces the message to the dead-letter topic (idempotent, `acks=all`) and waits for the
    /// brokers' acknowledgement; until then its offset is not done, so a dead letter that cannot
    /// be written holds its partition's commit point (not its other messages) and is retried.
    async fn dead_letter(
        &self,
        job: &Job,
        reason: &str,
        label: &str,
        quarantine_id: Option<&str>,
        attempts: u32,
    ) -> bool {
        let mut headers = OwnedHeaders::new_with_capacity(job.headers.len() + 7);
        for (k, v) in &job.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let (partition, offset, attempts) = (
            job.partition.to_string(),
            job.offset.to_string(),
            attempts.to_string(),
        );
        for (k, v) in [
            (dead_letter::REASON, reason),
            (dead_letter::LABEL, label),
            (dead_letter::KAFKA_TOPIC, job.topic.as_str()),
            (dead_letter::KAFKA_PARTITION, partition.as_str()),
            (dead_letter::KAFKA_OFFSET, offset.as_str()),
            (dead_letter::DELIVERY_COUNT, attempts.as_str()),
        ]
        .into_iter()
        .chain(quarantine_id.map(|q| (dead_letter::QUARANTINE_ID, q)))
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        loop {
            let mut record = FutureRecord::to(&self.cfg.dead_letter_topic)
                .payload(&job.payload[..])
                .headers(headers.clone());
            if let Some(key) = &job.key {
                record = record.key(&key[..]);
            }
            let sent = match self.producer.get() {
                Ok(producer) => producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .map_err(|(e, _)| e),
                Err(e) => Err(e),
            };
            match sent {
                Ok(_) => {
                    self.shared.each.dead_lettered.inc();
                    return true;
                }
                Err(e) => {
                    tracing::error!(source = %self.cfg.name, topic = %self.cfg.dead_letter_topic, error = %e, "dead letter not written; retrying, the partition's commit point waits");
                    if !self.pause(Duration::from_secs(5), job).await {
                        return false;
                    }
                }
            }
        }
    }
}
