//! The batch sponge the multi-lane permutations share ([`x4`](crate::x4) and
//! [`x8`](crate::x8)): `N` slots, each absorbing one message of the batch a block at a time. A
//! slot whose message is done takes the next message of the batch, so slots stay busy over
//! messages of different lengths until the batch's last few. The permutation itself, and how
//! lanes move in and out of its registers, stay with each path.

use super::{pad, RATE};

/// Where one message of the batch is read from.
struct Slot<'a> {
    /// Its index in the batch (where its digest goes).
    index: usize,
    parts: &'a [&'a [u8]],
    part: usize,
    offset: usize,
}

impl Slot<'_> {
    /// Copies the next up-to-`RATE` bytes into `block`; returns how many.
    fn fill(&mut self, block: &mut [u8; RATE]) -> usize {
        let mut n = 0;
        while n < RATE && self.part < self.parts.len() {
            let part = self.parts[self.part];
            let take = (part.len() - self.offset).min(RATE - n);
            block[n..n + take].copy_from_slice(&part[self.offset..self.offset + take]);
            n += take;
            self.offset += take;
            if self.offset == part.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
        n
    }
}

/// `N` messages of a batch in flight, and the digests of those done.
pub(crate) struct Batch<'a, const N: usize> {
    queued: std::iter::Enumerate<std::slice::Iter<'a, &'a [&'a [u8]]>>,
    slots: [Option<Slot<'a>>; N],
    out: Vec<[u8; 32]>,
}

impl<'a, const N: usize> Batch<'a, N> {
    pub(crate) fn new(inputs: &'a [&'a [&'a [u8]]]) -> Self {
        let mut queued = inputs.iter().enumerate();
        let slots = std::array::from_fn(|_| Self::slot(queued.next()));
        Batch {
            queued,
            slots,
            out: vec![[0u8; 32]; inputs.len()],
        }
    }

    fn slot(next: Option<(usize, &'a &'a [&'a [u8]])>) -> Option<Slot<'a>> {
        next.map(|(index, parts)| Slot {
            index,
            parts,
            part: 0,
            offset: 0,
        })
    }

    /// Whether any message is still being absorbed.
    pub(crate) fn busy(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }

    /// The next block of every busy slot as lanes (`lanes[l][s]` is lane `l` of slot `s`), padded
    /// where it is the message's last. An idle slot gets zeros: its state is permuted along with
    /// the others and never read, since a slot goes idle only once the batch has no message left.
    /// Returns which slots absorb their last block with these.
    pub(crate) fn next_blocks(&mut self, lanes: &mut [[u64; N]; RATE / 8]) -> [bool; N] {
        let mut last = [false; N];
        let mut block = [0u8; RATE];
        for (s, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else {
                for lane in lanes.iter_mut() {
                    lane[s] = 0;
                }
                continue;
            };
            let n = slot.fill(&mut block);
            if n < RATE {
                pad(&mut block, n);
                last[s] = true;
            }
            for (lane, bytes) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                lane[s] = u64::from_le_bytes(bytes.try_into().expect("8-byte chunk"));
            }
        }
        last
    }

    /// Keeps the digest of slot `s` (the first four lanes of its state after its last block)
    /// and gives the slot the next message of the batch. The caller zeroes the slot's state.
    pub(crate) fn finish(&mut self, s: usize, digest: [u64; 4]) {
        let index = self.slots[s].as_ref().expect("a slot that absorbed").index;
        for (bytes, word) in self.out[index].chunks_exact_mut(8).zip(digest) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        self.slots[s] = Self::slot(self.queued.next());
    }

    pub(crate) fn digests(self) -> Vec<[u8; 32]> {
        self.out
    }
}
