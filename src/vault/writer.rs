//! Group commit: one thread drains the queue of sealed records into a single vault transaction,
//! then resolves every token in it. While one transaction commits, the next batch queues up, so
//! the fsync cost is shared by everything that arrived meanwhile.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Derivation, EventPut, Position, PutRecord, PutResult, QuarantineEntry, Vault};
use crate::envelope::{AckToken, Outcome, Receipt, RecordId, Rejection};
use crate::ledger::Leaf;
use crate::metrics::Metrics;
use crate::seal::Sealed;
use crate::throttle::Throttle;

pub enum WriteOp {
    Put {
        put: PutRecord,
        token: AckToken,
    },
    Quarantine {
        entry: QuarantineEntry,
        sealed: Sealed,
        rejection: Rejection,
        token: AckToken,
    },
    /// An event (consent, read, erasure): stored in the same group commit cycle, answered
    /// `Stored` once durable, then anchored like a record.
    Event {
        put: EventPut,
        token: AckToken,
    },
}

/// What reaches the writer at once: one op, or all a seal batch produced. A batch is sent as
/// one unit because, sent op by op, the first op woke the writer, which on a busy core took it
/// alone into a commit of its own (with its own `fdatasync`) while the rest of the batch
/// waited: a third of all commits held one record.
pub type Unit = Vec<WriteOp>;

/// Units the writer's queue holds: about `max_batch` twice over in ops when every unit is a
/// full seal batch, so that memory waiting for the disk stays bounded as when the queue held ops.
pub fn queue_units(max_batch: usize, ops_per_unit: usize) -> usize {
    (max_batch * 2).div_ceil(ops_per_unit.max(1)).max(1)
}

/// A committed record on its way to the log, with its place in the vault's commit order.
pub type ToAnchor = (Leaf, Position, Instant);

pub fn spawn(
    vault: Arc<dyn Vault>,
    max_batch: usize,
    mut rx: mpsc::Receiver<Unit>,
    anchor: mpsc::Sender<ToAnchor>,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("vault-writer".into())
        .spawn(move || {
            let mut ops = Vec::with_capacity(max_batch);
            // A full disk fails every commit: said once per interval with a count, not per batch.
            let failures = Throttle::new(std::time::Duration::from_secs(10));
            // A unit is not split on the way in, so the last one may carry a batch past
            // `max_batch`: what is past it starts the next batch, which fills up as usual.
            let mut carried: Vec<WriteOp> = Vec::new();
            loop {
                if carried.is_empty() {
                    match rx.blocking_recv() {
                        Some(unit) => ops.extend(unit),
                        None => break,
                    }
                } else {
                    ops.append(&mut carried);
                }
                while ops.len() < max_batch {
                    match rx.try_recv() {
                        Ok(unit) => ops.extend(unit),
                        Err(_) => break,
                    }
                }
                if ops.len() > max_batch {
                    carried.extend(ops.drain(max_batch..));
                }
                commit_batch(&*vault, &mut ops, &anchor, &metrics, &failures);
            }
            if let Err(e) = vault.sync() {
                tracing::warn!(error = %e, "index not synced at shutdown; the next start re-indexes");
            }
        })
        .expect("spawn vault writer thread")
}

fn commit_batch(
    vault: &dyn Vault,
    ops: &mut Vec<WriteOp>,
    anchor: &mpsc::Sender<ToAnchor>,
    metrics: &Metrics,
    failures: &Throttle,
) {
    let mut puts = Vec::new();
    let mut put_tokens = Vec::new();
    let mut quarantine = Vec::new();
    let mut q_tokens = Vec::new();
    let mut events = Vec::new();
    let mut e_tokens = Vec::new();
    for op in ops.drain(..) {
        match op {
            WriteOp::Event { put, token } => {
                events.push(put);
                e_tokens.push(token);
            }
            WriteOp::Put { put, token } => {
                puts.push(put);
                put_tokens.push(token);
            }
            WriteOp::Quarantine {
                entry,
                sealed,
                rejection,
                token,
            } => {
                quarantine.push((entry, sealed));
                q_tokens.push((rejection, token));
            }
        }
    }
    if !events.is_empty() {
        commit_events(vault, events, e_tokens, anchor, metrics, failures);
    }
    if puts.is_empty() && quarantine.is_empty() {
        return;
    }
    let started = Instant::now();
    let result = vault.commit(&puts, &quarantine);
    metrics
        .store_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics
        .vault_batch_size
        .observe((puts.len() + quarantine.len()) as f64);
    let committed = Instant::now();
    match result {
        Ok(results) => {
            if let Some(missed) = failures.clear() {
                tracing::info!(
                    unlogged_failures = missed,
                    "vault commits succeed again after a storage failure"
                );
            }
            for ((put, token), result) in puts.into_iter().zip(put_tokens).zip(results) {
                let (receipt, duplicate) = match result {
                    PutResult::IndexDamaged => {
                        metrics.index_damage.inc();
                        token.resolve(Outcome::Retry {
                            reason: "the gateway's index is damaged for this message; an operator must run `medanchor verify --all` and `medanchor repair`".into(),
                        });
                        continue;
                    }
                    PutResult::Duplicate {
                        record_id,
                        commitment,
                    } => {
                        metrics.duplicates.inc();
                        (receipt(record_id, &commitment), true)
                    }
                    PutResult::Stored {
                        position,
                        derived_at,
                    }
                    | PutResult::StoredConflict {
                        position,
                        derived_at,
                    } => {
                        if matches!(result, PutResult::StoredConflict { .. }) {
                            metrics.control_id_conflicts.inc();
                        }
                        let s = &put.sealed;
                        // The ledger is behind us in the flow: waiting for it here is backpressure.
                        // Sent in commit order, which the anchored watermark relies on.
                        let _ = anchor.blocking_send((
                            Leaf::record(s.record_id, s.commitment),
                            position,
                            committed,
                        ));
                        if let Some(at) = derived_at {
                            let raw = (s.record_id, s.commitment);
                            send_derived(anchor, &put.derived, raw, at, committed);
                        }
                        (receipt(s.record_id, &s.commitment), false)
                    }
                };
                token.resolve(Outcome::Stored { receipt, duplicate });
            }
            for ((entry, _), (mut rejection, token)) in quarantine.into_iter().zip(q_tokens) {
                metrics.quarantined.inc();
                rejection.quarantine_id = Some(entry.id);
                token.resolve(Outcome::Rejected(rejection));
            }
        }
        Err(e) => {
            if let Some(times) = failures.hit() {
                tracing::error!(error = %e, times, "vault commit failed; senders will be asked to resend");
            }
            metrics.store_failures.inc();
            for token in put_tokens
                .into_iter()
                .chain(q_tokens.into_iter().map(|(_, t)| t))
            {
                token.resolve(Outcome::Retry {
                    reason: "temporary storage failure; send the message again".into(),
                });
            }
        }
    }
}

/// Stores a batch of events (one segment append and sync), answers them, and offers them to
/// the log.
fn commit_events(
    vault: &dyn Vault,
    events: Vec<EventPut>,
    tokens: Vec<AckToken>,
    anchor: &mpsc::Sender<ToAnchor>,
    metrics: &Metrics,
    failures: &Throttle,
) {
    let started = Instant::now();
    let result = vault.commit_events(&events);
    metrics
        .store_seconds
        .observe(started.elapsed().as_secs_f64());
    let committed = Instant::now();
    match result {
        Ok(positions) => {
            for ((e, token), at) in events.into_iter().zip(tokens).zip(positions) {
                let s = &e.sealed;
                let _ = anchor.blocking_send((
                    Leaf::event(e.kind, s.record_id, s.commitment),
                    at,
                    committed,
                ));
                token.resolve(Outcome::Stored {
                    receipt: receipt(s.record_id, &s.commitment),
                    duplicate: false,
                });
            }
        }
        Err(e) => {
            if let Some(times) = failures.hit() {
                tracing::error!(error = %e, times, "vault commit of events failed");
            }
            metrics.store_failures.inc();
            for token in tokens {
                token.resolve(Outcome::Retry {
                    reason: "temporary storage failure; try again".into(),
                });
            }
        }
    }
}

/// Offers a stored derived record to the log, after its raw record.
fn send_derived(
    anchor: &mpsc::Sender<ToAnchor>,
    derived: &Derivation,
    raw: (RecordId, [u8; 32]),
    at: Position,
    committed: Instant,
) {
    if let Derivation::Mapped(d) = derived {
        let leaf = Leaf::derived(d.record_id, d.commitment, raw);
        let _ = anchor.blocking_send((leaf, at, committed));
    }
}

pub fn receipt(id: RecordId, commitment: &[u8; 32]) -> Receipt {
    Receipt {
        record_id: id.to_string(),
        commitment: hex::encode(commitment),
        log_index: None,
    }
}
