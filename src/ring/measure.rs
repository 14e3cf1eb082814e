//! What a ring member measures of the gradient while the all-reduce passes
//! over it, so that the coordinator can commit the step on scalars without
//! any further pass over 143 MB on the step's path:
//!
//! - the norm of each chunk of the member's own gradient, taken as the
//!   reduce-scatter reads the chunk to add it (every local chunk is read
//!   exactly once there), sent once the last one is read;
//! - the float64 sum of squares and the XXH3-64 of each chunk of its own
//!   reduced segment, taken as the chunk becomes final, sent at once;
//! - the digest of every other chunk as the all-gather brings it, and from
//!   all of them the replica digest of the whole reduced gradient.
//!
//! Measured separately these were three more reads of the gradient from
//! memory after and before the ring (45 ms with 2 workers on a 2-core
//! machine, against 70 ms for the ring itself). Here each measure reads a
//! block of [`BLOCK`] values that the ring's own loop has just read or
//! written, so it costs arithmetic on cached data, not memory traffic.
//! The values are the ones the separate passes give (the same lanes, the
//! same streaming hash): tested against them in `allreduce.rs`.

use std::ops::Range;

use tokio::sync::mpsc;
use xxhash_rust::xxh3::Xxh3;

use crate::sumsq::SquareSum;
use crate::wire::digest;

/// Values per block: 16 KiB of float32 (in the L1 cache when measured
/// right after the ring's loop touched them) and a whole number of the
/// sum's lanes (`SquareSum::add`'s contract).
pub const BLOCK: usize = 4096;

/// The blocks of a chunk of `len` values.
pub fn blocks(len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len).step_by(BLOCK).map(move |s| s..(s + BLOCK).min(len))
}

/// What a member's ring reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Measured {
    /// The L2 norm of each chunk of this member's own gradient (float64;
    /// NaN or infinity where the chunk holds one): every chunk was read.
    Norms(Vec<f64>),
    /// A chunk of this member's own segment is final: the float64 sum of
    /// squares and the digest of the values every replica applies.
    Segment { index: u32, sumsq: f64, digest: u64 },
}

/// One member's measures of one all-reduce.
pub struct Measure {
    /// Per chunk, the squares of this member's own values read so far.
    norms: Vec<SquareSum>,
    /// Local chunks not yet read whole.
    unread: usize,
    /// Per chunk, the digest of its reduced values once this member holds them.
    digests: Vec<Option<u64>>,
    events: mpsc::UnboundedSender<Measured>,
}

impl Measure {
    /// Measures of an all-reduce of `chunks` chunks; `events` hears them
    /// as they are known (nothing is lost if nobody listens).
    pub fn new(chunks: usize, events: mpsc::UnboundedSender<Measured>) -> Self {
        Self { norms: vec![SquareSum::default(); chunks], unread: chunks, digests: vec![None; chunks], events }
    }

    /// Adds `block`, the next values of local chunk `c`, to its norm.
    pub fn local(&mut self, c: usize, block: &[f32]) {
        self.norms[c].add(block);
    }

    /// Local chunk `c` was read whole; after the last, the norms go out.
    pub fn local_done(&mut self) {
        self.unread = self.unread.saturating_sub(1);
        if self.unread == 0 {
            let _ = self.events.send(Measured::Norms(self.norms()));
        }
    }

    /// The norms of the local chunks (of what was read of each).
    pub fn norms(&self) -> Vec<f64> {
        self.norms.iter().map(|s| s.total().sqrt()).collect()
    }

    /// The reduced values of chunk `c` of this member's segment, as one
    /// slice (the TCP ring's and a lone member's way).
    pub fn owned(&mut self, c: usize, values: &[f32]) {
        let mut s = Scalars::default();
        for r in blocks(values.len()) {
            s.add(&values[r]);
        }
        self.owned_done(c, s);
    }

    /// Chunk `c` of this member's segment is final, measured block by
    /// block into `s`: its scalars go out.
    pub fn owned_done(&mut self, c: usize, s: Scalars) {
        let (sumsq, digest) = (s.sumsq.total(), s.hash.digest());
        self.digests[c] = Some(digest);
        let _ = self.events.send(Measured::Segment { index: c as u32, sumsq, digest });
    }

    /// The reduced values of chunk `c` as the all-gather brought them.
    pub fn gathered(&mut self, c: usize, values: &[f32]) {
        self.digests[c] = Some(digest::chunk_digest(values));
    }

    /// Chunk `c` as the all-gather brought it, hashed block by block into `h`.
    pub fn gathered_done(&mut self, c: usize, h: Xxh3) {
        self.digests[c] = Some(h.digest());
    }

    /// The replica digest of the whole reduced gradient
    /// ([`digest::replica_digest`]), once every chunk was measured.
    pub fn replica_digest(&self) -> Option<u64> {
        let all: Option<Vec<u64>> = self.digests.iter().copied().collect();
        all.map(digest::replica_digest)
    }
}

/// A final chunk's sum of squares and digest, fed block by block.
pub struct Scalars {
    sumsq: SquareSum,
    hash: Xxh3,
}

impl Default for Scalars {
    fn default() -> Self {
        Self { sumsq: SquareSum::default(), hash: Xxh3::new() }
    }
}

impl Scalars {
    /// Adds the next block (all but the last a whole [`BLOCK`]).
    pub fn add(&mut self, block: &[f32]) {
        self.sumsq.add(block);
        hash_f32(&mut self.hash, block);
    }
}

/// Feeds `values` to `h` as little-endian float32 bytes.
pub fn hash_f32(h: &mut Xxh3, values: &[f32]) {
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice(values));
    } else {
        for v in values {
            h.update(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn block_by_block_measures_are_the_whole_chunks_measures() {
        let values: Vec<f32> = (0..3 * BLOCK + 17).map(|i| (i as f32 * 0.013).sin()).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut m = Measure::new(2, tx);
        for r in blocks(values.len()) {
            m.local(0, &values[r]);
        }
        m.local_done();
        m.local(1, &values[..5]);
        assert!(rx.try_recv().is_err(), "norms before every chunk was read");
        m.local_done();
        let want = vec![wire::chunk_norms(&values, values.len())[0], wire::chunk_norms(&values[..5], 5)[0]];
        assert_eq!(rx.try_recv().unwrap(), Measured::Norms(want));

        let mut s = Scalars::default();
        let mut h = Xxh3::new();
        for r in blocks(values.len()) {
            s.add(&values[r.clone()]);
            hash_f32(&mut h, &values[r]);
        }
        m.owned_done(0, s);
        let (sumsq, digest) = digest::chunk_scalars(&values);
        assert_eq!(rx.try_recv().unwrap(), Measured::Segment { index: 0, sumsq, digest });
        assert_eq!(m.replica_digest(), None, "chunk 1 not measured yet");
        m.gathered_done(1, h);
        assert_eq!(m.replica_digest(), Some(digest::replica_digest([digest, digest])));
        m.gathered(1, &values[..5]);
        assert_eq!(m.replica_digest(), Some(digest::replica_digest([digest, digest::chunk_digest(&values[..5])])));
    }
}
