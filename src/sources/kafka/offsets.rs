//! Which offset of a partition may be committed, when messages finish out of order.
//!
//! Kafka commits one number per partition: "everything before this offset is done". Messages are
//! sealed on a CPU pool and finish in any order, so a partition may commit only up to its lowest
//! message not yet done. Offsets need not be dense (compaction, transaction markers): the
//! committable offset is the lowest undone one, or one past the last begun.
//!
//! A message can end without being done: withdrawn when its partition is given up, or left for
//! the next start when the gateway stops. So "settling" (a message still being worked on) and
//! "undone" (its offset may not be committed) are counted apart: a release waits for the first
//! and commits below the second.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A topic and partition.
pub type Partition = (String, i32);

/// One partition's messages in the pipeline, for one assignment of it.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    /// Offsets begun and not done.
    undone: BTreeSet<i64>,
    /// Messages begun and not yet ended, done or not.
    settling: usize,
    /// One past the highest offset begun; `None` before the first message.
    next: Option<i64>,
    /// The last committable offset reported by [`PartitionOffsets::take_committable`].
    reported: Option<i64>,
    /// Raised when the partition is given up: its messages not yet sealing are withdrawn
    /// (`AckToken::withdrawable`). One flag per assignment, so it also tells an ending
    /// message of an earlier assignment from one of this.
    released: Arc<AtomicBool>,
}

impl PartitionOffsets {
    /// A message at `offset` entered the pipeline. Offsets of one partition arrive in order; an
    /// offset at or below one already begun (a rewind after a seek) is tracked all the same.
    /// Returns the flag that withdraws the message when the partition is given up.
    pub fn begin(&mut self, offset: i64) -> Arc<AtomicBool> {
        self.undone.insert(offset);
        self.settling += 1;
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        self.released.clone()
    }

    /// The message at `offset` ended; `done` (stored, or dead-lettered) lets its offset be
    /// committed. Unknown offsets are ignored.
    pub fn end(&mut self, offset: i64, done: bool) {
        self.settling = self.settling.saturating_sub(1);
        if done {
            self.undone.remove(&offset);
        }
    }

    /// The offset to commit: everything below it is done. `None` before the first message.
    pub fn committable(&self) -> Option<i64> {
        match self.undone.first() {
            Some(&lowest) => Some(lowest),
            None => self.next,
        }
    }

    /// The committable offset if it moved since the last call.
    pub fn take_committable(&mut self) -> Option<i64> {
        let c = self.committable()?;
        if self.reported == Some(c) {
            return None;
        }
        self.reported = Some(c);
        Some(c)
    }

    /// Messages still being worked on.
    pub fn settling(&self) -> usize {
        self.settling
    }
}

/// All partitions of one consumer.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, PartitionOffsets>,
}

impl Offsets {
    /// See [`PartitionOffsets::begin`].
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Arc<AtomicBool> {
        self.partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .begin(offset)
    }

    /// See [`PartitionOffsets::end`]. `released` is the flag [`Offsets::begin`] gave the
    /// message: one of an assignment since given up (and perhaps assigned again) is ignored.
    pub fn end(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        done: bool,
        released: &Arc<AtomicBool>,
    ) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            if Arc::ptr_eq(&p.released, released) {
                p.end(offset, done);
            }
        }
    }

    /// Messages still being worked on, over all partitions or over `only`.
    pub fn settling(&self, only: Option<&[Partition]>) -> usize {
        self.partitions
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .map(|(_, p)| p.settling())
            .sum()
    }

    /// Partitions whose committable offset moved since the last call, with that offset.
    pub fn take_committable(&mut self) -> Vec<(Partition, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(k, p)| p.take_committable().map(|c| (k.clone(), c)))
            .collect()
    }

    /// The committable offsets of `only` (moved or not): what to commit before giving them up.
    pub fn committable_of(&self, only: &[Partition]) -> Vec<(Partition, i64)> {
        only.iter()
            .filter_map(|k| Some((k.clone(), self.partitions.get(k)?.committable()?)))
            .collect()
    }

    /// Withdraws the messages of `gone` that have not started sealing; returns how many of
    /// their messages were still settling then.
    pub fn withdraw(&mut self, gone: &[Partition]) -> usize {
        gone.iter()
            .filter_map(|k| self.partitions.get(k))
            .map(|p| {
                p.released.store(true, Ordering::SeqCst);
                p.settling
            })
            .sum()
    }

    /// Forgets partitions this consumer no longer owns; a later assignment starts afresh from the
    /// group's committed offset.
    pub fn forget(&mut self, gone: &[Partition]) {
        for k in gone {
            self.partitions.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.committable(), None);
        for o in 10..15 {
            p.begin(o);
        }
        assert_eq!(p.committable(), Some(10));
        p.end(12, true);
        p.end(11, true);
        assert_eq!(p.committable(), Some(10), "10 is still in the pipeline");
        p.end(10, true);
        assert_eq!(p.committable(), Some(13));
        p.end(14, true);
        assert_eq!(p.committable(), Some(13));
        p.end(13, true);
        assert_eq!(p.committable(), Some(15), "all done: one past the last");
    }

    #[test]
    fn offsets_with_gaps_commit_past_the_gap() {
        // Compacted topics and transaction markers leave holes that never arrive.
        let mut p = PartitionOffsets::default();
        p.begin(3);
        p.begin(7);
        p.end(7, true);
        assert_eq!(p.committable(), Some(3));
        p.end(3, true);
        assert_eq!(p.committable(), Some(8));
    }

    #[test]
    fn take_reports_each_move_once() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.take_committable(), None);
        p.begin(0);
        assert_eq!(p.take_committable(), Some(0));
        assert_eq!(p.take_committable(), None);
        p.begin(1);
        assert_eq!(p.take_committable(), None, "still 0");
        p.end(0, true);
        assert_eq!(p.take_committable(), Some(1));
        p.end(1, true);
        assert_eq!(p.take_committable(), Some(2));
        p.end(99, true); // unknown: ignored
        assert_eq!(p.take_committable(), None);
    }

    #[test]
    fn a_rewind_does_not_move_the_commit_point_back_past_done_work() {
        let mut p = PartitionOffsets::default();
        p.begin(5);
        p.end(5, true);
        // The consumer seeks back (e.g. after a lost assignment) and sees 4 and 5 again.
        p.begin(4);
        p.begin(5);
        assert_eq!(p.committable(), Some(4));
        p.end(4, true);
        p.end(5, true);
        assert_eq!(p.committable(), Some(6));
    }

    #[test]
    fn partitions_are_independent_and_forgotten_on_revocation() {
        let mut o = Offsets::default();
        o.begin("a", 0, 0);
        let a1 = o.begin("a", 1, 100);
        o.begin("b", 0, 7);
        o.end("a", 1, 100, true, &a1);
        let mut moved = o.take_committable();
        moved.sort();
        assert_eq!(
            moved,
            vec![
                (("a".into(), 0), 0),
                (("a".into(), 1), 101),
                (("b".into(), 0), 7)
            ]
        );
        let a0 = [("a".to_string(), 0)];
        assert_eq!(o.settling(Some(&a0)), 1);
        assert_eq!(o.settling(None), 2);
        assert_eq!(o.committable_of(&a0), vec![(("a".into(), 0), 0)]);
        o.forget(&a0);
        assert_eq!(o.settling(None), 1);
        assert!(o.committable_of(&a0).is_empty());
    }

    #[test]
    fn a_withdrawn_message_ends_without_moving_the_commit_point() {
        let mut o = Offsets::default();
        let flag = o.begin("a", 0, 10);
        assert_eq!(
            o.begin("a", 0, 11).as_ref() as *const _,
            flag.as_ref() as *const _
        );
        o.begin("a", 0, 12);
        o.end("a", 0, 10, true, &flag);
        let a0 = [("a".to_string(), 0)];
        assert_eq!(o.withdraw(&a0), 2, "11 and 12 still settling");
        assert!(
            flag.load(Ordering::SeqCst),
            "the partition's flag is raised"
        );
        // 11 was already sealing and gets stored; 12 is withdrawn.
        o.end("a", 0, 11, true, &flag);
        o.end("a", 0, 12, false, &flag);
        assert_eq!(o.settling(Some(&a0)), 0, "nothing left to wait for");
        assert_eq!(o.committable_of(&a0), vec![(("a".into(), 0), 12)]);
    }

    #[test]
    fn an_earlier_assignments_message_does_not_touch_the_new_one() {
        let mut o = Offsets::default();
        let old = o.begin("a", 0, 5);
        let a0 = [("a".to_string(), 0)];
        o.withdraw(&a0);
        o.forget(&a0);
        // Assigned again: the group's commit is 5, so 5 comes again.
        let new = o.begin("a", 0, 5);
        assert!(
            !new.load(Ordering::SeqCst),
            "a new assignment starts unreleased"
        );
        o.end("a", 0, 5, true, &old);
        assert_eq!(o.settling(Some(&a0)), 1, "the old message's end is ignored");
        assert_eq!(o.committable_of(&a0), vec![(("a".into(), 0), 5)]);
        o.end("a", 0, 5, true, &new);
        assert_eq!(o.committable_of(&a0), vec![(("a".into(), 0), 6)]);
    }
}
