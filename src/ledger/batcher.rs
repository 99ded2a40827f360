//! Closes batches of stored records into the log: every `batch_leaves` records or `batch_ms`
//! after the first one waiting, whichever comes first. When its input closes (shutdown), it
//! anchors what is left and returns, so a graceful stop always ends with a checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Ledger;
use crate::envelope::now_ms;
use crate::metrics::Metrics;
use crate::vault::writer::ToAnchor;
use crate::vault::Vault;

pub async fn run(
    ledger: Arc<dyn Ledger>,
    vault: Arc<dyn Vault>,
    mut rx: mpsc::Receiver<ToAnchor>,
    batch_leaves: usize,
    batch_ms: u64,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<ToAnchor> = Vec::with_capacity(batch_leaves);
    // Set once a batch fails to anchor: the watermark stays where it was for the rest of the run.
    let mut held_back = false;
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(batch_ms);
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
        anchor(&ledger, &vault, &mut batch, &mut held_back, &metrics).await;
        if closed {
            break;
        }
    }
    anchor(&ledger, &vault, &mut batch, &mut held_back, &metrics).await;
}

async fn anchor(
    ledger: &Arc<dyn Ledger>,
    vault: &Arc<dyn Vault>,
    batch: &mut Vec<ToAnchor>,
    held_back: &mut bool,
    metrics: &Metrics,
) {
    if batch.is_empty() {
        return;
    }
    let items: Vec<ToAnchor> = std::mem::take(batch);
    let ledger = ledger.clone();
    let vault = vault.clone();
    let started = Instant::now();
    let hold = *held_back;
    let res = tokio::task::spawn_blocking(move || {
        let records: Vec<_> = items.iter().map(|(id, c, _, _)| (*id, *c)).collect();
        let cp = ledger.append_records(&records, now_ms())?;
        // After a failed batch the watermark must stay below it, so those records are offered
        // again at the next start (the ones anchored since are skipped by the ledger then).
        if !hold {
            let through = items.iter().map(|(_, _, p, _)| *p).max().unwrap_or(0);
            if let Err(e) = vault.mark_anchored(through) {
                // Harmless: the records are offered again at the next start and skipped.
                tracing::warn!(error = %e, "could not move the anchored watermark");
            }
        }
        Ok::<_, super::LedgerError>((cp, items))
    })
    .await;
    match res {
        Ok(Ok((cp, items))) => {
            metrics
                .anchor_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.checkpoint_leaves.observe(items.len() as f64);
            for (_, _, _, stored_at) in &items {
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
        }
        Ok(Err(e)) => {
            *held_back = true;
            metrics.anchor_failures.inc();
            tracing::error!(error = %e, "anchoring failed; the records stay queued and are anchored at the next start");
        }
        Err(e) => {
            *held_back = true;
            metrics.anchor_failures.inc();
            tracing::error!(error = %e, "anchoring task failed");
        }
    }
}
