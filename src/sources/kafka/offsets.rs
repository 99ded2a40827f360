//! Which offset of a partition may be committed, when messages finish out of order.
//!
//! Kafka commits one number per partition: "everything before this offset is done". Messages are
//! sealed on a CPU pool and finish in any order, so a partition may commit only up to its lowest
//! message still in the pipeline. Offsets need not be dense (compaction, transaction markers):
//! the committable offset is the lowest unfinished one, or one past the last begun.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type Partition = (String, i32);

/// One partition's messages in the pipeline.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun; `None` before the first message.
    next: Option<i64>,
    /// The last committable offset reported by [`PartitionOffsets::take_committable`].
    reported: Option<i64>,
}

impl PartitionOffsets {
    /// A message at `offset` entered the pipeline. Offsets of one partition arrive in order; an
    /// offset at or below one already begun (a rewind after a seek) is tracked all the same.
    pub fn begin(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The message at `offset` is done (stored, or dead-lettered). Unknown offsets are ignored.
    pub fn finish(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// The offset to commit: everything below it is done. `None` before the first message.
    pub fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
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

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// All partitions of one consumer.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, PartitionOffsets>,
}

impl Offsets {
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .begin(offset);
    }

    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            p.finish(offset);
        }
    }

    /// Messages still in the pipeline, over all partitions or over `only`.
    pub fn in_flight(&self, only: Option<&[Partition]>) -> usize {
        self.partitions
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .map(|(_, p)| p.in_flight())
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
        p.finish(12);
        p.finish(11);
        assert_eq!(p.committable(), Some(10), "10 is still in the pipeline");
        p.finish(10);
        assert_eq!(p.committable(), Some(13));
        p.finish(14);
        assert_eq!(p.committable(), Some(13));
        p.finish(13);
        assert_eq!(p.committable(), Some(15), "all done: one past the last");
    }

    #[test]
    fn offsets_with_gaps_commit_past_the_gap() {
        // Compacted topics and transaction markers leave holes that never arrive.
        let mut p = PartitionOffsets::default();
        p.begin(3);
        p.begin(7);
        p.finish(7);
        assert_eq!(p.committable(), Some(3));
        p.finish(3);
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
        p.finish(0);
        assert_eq!(p.take_committable(), Some(1));
        p.finish(1);
        assert_eq!(p.take_committable(), Some(2));
        p.finish(99); // unknown: ignored
        assert_eq!(p.take_committable(), None);
    }

    #[test]
    fn a_rewind_does_not_move_the_commit_point_back_past_done_work() {
        let mut p = PartitionOffsets::default();
        p.begin(5);
        p.finish(5);
        // The consumer seeks back (e.g. after a lost assignment) and sees 4 and 5 again.
        p.begin(4);
        p.begin(5);
        assert_eq!(p.committable(), Some(4));
        p.finish(4);
        p.finish(5);
        assert_eq!(p.committable(), Some(6));
    }

    #[test]
    fn partitions_are_independent_and_forgotten_on_revocation() {
        let mut o = Offsets::default();
        o.begin("a", 0, 0);
        o.begin("a", 1, 100);
        o.begin("b", 0, 7);
        o.finish("a", 1, 100);
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
        assert_eq!(o.in_flight(Some(&a0)), 1);
        assert_eq!(o.in_flight(None), 2);
        assert_eq!(o.committable_of(&a0), vec![(("a".into(), 0), 0)]);
        o.forget(&a0);
        assert_eq!(o.in_flight(None), 1);
        assert!(o.committable_of(&a0).is_empty());
    }
}
