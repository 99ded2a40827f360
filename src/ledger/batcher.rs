//! Closes batches of stored records into the log: every `batch_leaves` records or `batch_ms`
//! after the first one waiting, whichever comes first. When its input closes (shutdown), it
//! anchors what is left and returns, so a graceful stop always ends with a checkpoint.
//!
//! A batch that fails to anchor (a full disk, an I/O error) is kept and tried again, after a
//! pause that grows from 100 ms to 5 s, together with records that arrived meanwhile up to
//! `batch_leaves`; the ledger heals itself from storage in between (see `embedded`). While it
//! fails, no more records are taken than fit the batch, so the vault's writer waits: that is
//! the backpressure that slows the sources. Failures are counted in
//! `medanchor_ledger_append_failures_total` and logged once per interval with how many there were.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Ledger;
use crate::envelope::now_ms;
use crate::metrics::Metrics;
use crate::throttle::Throttle;
use crate::vault::writer::ToAnchor;
use crate::vault::Vault;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// A repeated failure is logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(
    ledger: Arc<dyn Ledger>,
    vault: Arc<dyn Vault>,
    mut rx: mpsc::Receiver<ToAnchor>,
    batch_leaves: usize,
    batch_ms: u64,
    metrics: Arc<Metrics>,
) {
    let mut a = Anchorer {
        ledger,
        vault,
        metrics,
        held_back: false,
        failures: Throttle::new(LOG_INTERVAL),
        watermark_failures: Throttle::new(LOG_INTERVAL),
    };
    let mut batch: Vec<ToAnchor> = Vec::with_capacity(batch_leaves);
    // Set while the records in `batch` failed to anchor: the pause before trying them again.
    let mut retry: Option<Duration> = None;
    loop {
        if batch.is_empty() {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
        }
        let deadline =
            tokio::time::Instant::now() + retry.unwrap_or(Duration::from_millis(batch_ms));
        let mut closed = false;
        while batch.len() < batch_leaves {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if retry.is_some() && !closed {
            // A full batch waiting to be retried: the pause still applies.
            tokio::time::sleep_until(deadline).await;
        }
        retry = match a.anchor(&mut batch).await {
            Ok(()) => None,
            Err(()) => Some(retry.map_or(FIRST_RETRY, |d| (d * 2).min(LAST_RETRY))),
        };
        if closed {
            break;
        }
    }
    if !batch.is_empty() && a.anchor(&mut batch).await.is_err() {
        tracing::error!(
            records = batch.len(),
            "stopping with records not anchored; they are anchored at the next start"
        );
    }
}

struct Anchorer {
    ledger: Arc<dyn Ledger>,
    vault: Arc<dyn Vault>,
    metrics: Arc<Metrics>,
    /// Set when a batch was lost to a panic: the watermark stays where it was for the rest of
    /// the run, so those records are offered again at the next start.
    held_back: bool,
    failures: Throttle,
    watermark_failures: Throttle,
}

impl Anchorer {
    /// Appends `batch` to the log and empties it; on failure leaves it as it was, to be retried.
    async fn anchor(&mut self, batch: &mut Vec<ToAnchor>) -> Result<(), ()> {
        if batch.is_empty() {
            return Ok(());
        }
        let items: Vec<ToAnchor> = std::mem::take(batch);
        let ledger = self.ledger.clone();
        let vault = self.vault.clone();
        let hold = self.held_back;
        let started = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let records: Vec<_> = items.iter().map(|(leaf, _, _)| *leaf).collect();
            // Every record before these is in the log: earlier batches succeeded, or failed and
            // are retried within this one. The watermark is durable in the log's own commit.
            let through = items.iter().map(|(_, p, _)| *p).max().unwrap_or(0);
            let cp = if hold {
                ledger.append_records(&records, now_ms())
            } else {
                ledger.append_through(&records, now_ms(), through)
            };
            let marked = (cp.is_ok() && !hold).then(|| vault.mark_anchored(through));
            (cp, marked, items)
        })
        .await;
        let (cp, marked, items) = match res {
            Ok(done) => done,
            Err(e) => {
                self.held_back = true;
                self.metrics.anchor_failures.inc();
                tracing::error!(error = %e, "anchoring task failed; its records are anchored at the next start");
                return Ok(());
            }
        };
        let cp = match cp {
            Ok(cp) => cp,
            Err(e) => {
                self.metrics.anchor_failures.inc();
                if let Some(times) = self.failures.hit() {
                    tracing::error!(
                        error = %e,
                        times,
                        records = items.len(),
                        "anchoring failed; the records are kept and tried again"
                    );
                }
                *batch = items;
                return Err(());
            }
        };
        if let Some(unlogged) = self.failures.clear() {
            tracing::info!(failures_not_logged = unlogged, "anchoring works again");
        }
        match marked {
            Some(Ok(())) => {
                self.watermark_failures.clear();
            }
            Some(Err(e)) => {
                // Harmless: the records are offered again at the next start and skipped.
                if let Some(times) = self.watermark_failures.hit() {
                    tracing::warn!(error = %e, times, "could not move the anchored watermark");
                }
            }
            None => {}
        }
        let metrics = &self.metrics;
        metrics
            .anchor_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.checkpoint_leaves.observe(items.len() as f64);
        for (_, _, stored_at) in &items {
            metrics
                .time_to_anchor_seconds
                .observe(stored_at.elapsed().as_secs_f64());
        }
        if let Some(cp) = cp {
            metrics.log_size.set(cp.checkpoint.size as i64);
            metrics.checkpoints.inc();
            tracing::debug!(
                size = cp.checkpoint.size,
                leaves = items.len(),
                "checkpoint signed"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::envelope::RecordId;
    use crate::ledger::{EmbeddedLedger, Leaf};
    use crate::seal::Sealed;
    use crate::testing::faulty::{Faults, FaultyBackend};
    use crate::vault::{PutRecord, PutResult, QuarantineEntry, StoredRecord, VaultError};

    /// Only the watermark, which is all the batcher touches.
    #[derive(Default)]
    struct Watermark(Mutex<u64>);

    impl Vault for Watermark {
        fn commit(
            &self,
            _: &[PutRecord],
            _: &[(QuarantineEntry, Sealed)],
        ) -> Result<Vec<PutResult>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn sync(&self) -> Result<(), VaultError> {
            Ok(())
        }
        fn get(&self, _: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn for_each_record(
            &self,
            _: &mut dyn FnMut(RecordId, Result<StoredRecord, VaultError>) -> Result<(), VaultError>,
        ) -> Result<(), VaultError> {
            unreachable!("not used by the batcher")
        }
        fn record_count(&self) -> Result<u64, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn unanchored(&self, _: u64) -> Result<Vec<(Leaf, u64)>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn commit_derivations(
            &self,
            _: &[crate::vault::Rederive],
        ) -> Result<Vec<Option<u64>>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn derived_of(&self, _: &RecordId) -> Result<Vec<RecordId>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn commit_events(&self, _: &[crate::vault::EventPut]) -> Result<Vec<u64>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn patient_entries(
            &self,
            _: &crate::seal::keyring::PatientIndex,
            _: &[u8],
        ) -> Result<Vec<crate::vault::PatientEntry>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn mapping_failures(
            &self,
        ) -> Result<Vec<(RecordId, crate::vault::MappingFailure)>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn mark_anchored(&self, through: u64) -> Result<(), VaultError> {
            let mut w = self.0.lock().unwrap();
            *w = (*w).max(through);
            Ok(())
        }
        fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn quarantine_expire(&self, _: u64) -> Result<usize, VaultError> {
            unreachable!("not used by the batcher")
        }
        fn health(&self) -> Result<(), String> {
            Ok(())
        }
        fn quarantine_get(
            &self,
            _: &str,
        ) -> Result<Option<(QuarantineEntry, Vec<u8>)>, VaultError> {
            unreachable!("not used by the batcher")
        }
    }

    /// Waits (polling, up to 30 s) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let wait = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
    }

    #[tokio::test]
    async fn a_batch_that_fails_to_anchor_is_kept_and_anchored_once_the_ledger_heals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let faults = Faults::default();
        let f = faults.clone();
        let signer = medanchor_merkle::NoteSigner::new(
            "test.medanchor",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let mut ledger = EmbeddedLedger::open_with_backend(
            move || FaultyBackend::open(&path, f.clone()),
            "test.medanchor",
            signer,
        )
        .unwrap();
        ledger.set_recovery_interval(Duration::ZERO);
        let ledger = Arc::new(ledger);
        let vault = Arc::new(Watermark::default());
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(run(
            ledger.clone(),
            vault.clone(),
            rx,
            3,
            1,
            metrics.clone(),
        ));
        let item = |i: u64| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            (Leaf::record(RecordId(id), [i as u8; 32]), i, Instant::now())
        };
        for i in 1..=4 {
            tx.send(item(i)).await.unwrap();
        }
        until("4 anchored", || ledger.size() == 4).await;
        until("watermark at 4", || *vault.0.lock().unwrap() == 4).await;

        faults.fail_all();
        for i in 5..=6 {
            tx.send(item(i)).await.unwrap();
        }
        until("two failures", || metrics.anchor_failures.get() >= 2).await;
        assert_eq!(ledger.size(), 4);
        assert_eq!(*vault.0.lock().unwrap(), 4, "the watermark waits");
        assert!(ledger.health().is_err());
        // While the batch is retried, at most a batch is held: the channel fills, the sender
        // waits (backpressure) and nothing is dropped.
        // (5, 6 and 7 in the batch, 8 to 11 in the channel.)
        for i in 7..=11 {
            tokio::time::timeout(Duration::from_secs(30), tx.send(item(i)))
                .await
                .expect("room for a batch and the channel")
                .unwrap();
        }
        until("the batch taken in", || tx.capacity() == 0).await;
        let more = tx.try_send(item(12));
        assert!(
            matches!(more, Err(mpsc::error::TrySendError::Full(_))),
            "the channel is full"
        );

        faults.clear();
        for i in 12..=13 {
            tx.send(item(i)).await.unwrap();
        }
        until("13 anchored", || ledger.size() == 13).await;
        drop(tx);
        run.await.unwrap();
        assert_eq!(*vault.0.lock().unwrap(), 13);
        assert_eq!(ledger.health(), Ok(()));
        for i in 1..=13u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let bundle = ledger.proof(&RecordId(id)).unwrap();
            bundle.verify(Some(&ledger.verifier())).unwrap();
        }
    }
}
