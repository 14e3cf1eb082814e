//! The shape of one ring all-reduce, the same on every member and on the
//! coordinator: which chunks form which segment, which rank owns which
//! segment, and the exact order of the frames a rank receives and sends.
//!
//! The gradient's chunks (`wire::chunk_ranges`) are split into `n`
//! contiguous segments. In reduce-scatter step `t` (0..n-1) rank `r` sends
//! segment `r - t - 1` to rank `r + 1`, and receives segment `r - t - 2`
//! from rank `r - 1`, to which it adds its own contribution (all mod `n`).
//! After the last such step rank `r` holds the whole sum of segment `r`:
//! the segment it owns and uploads to the coordinator. In all-gather step
//! `t` rank `r` sends segment `r - t` and receives segment `r - t - 1`.
//! Segment `s` is summed in the fixed order `s+1, s+2, ..., s` (by rank,
//! never by arrival), so every replica decodes the same bits.

use std::ops::Range;

/// The two phases of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The frame carries a partial sum; the receiver adds its own part.
    ReduceScatter,
    /// The frame carries finished values; the receiver keeps them.
    AllGather,
}

/// One frame on a ring link: a chunk of a segment in a phase step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId {
    pub phase: Phase,
    /// The step within the phase, 0..n-1.
    pub step: u32,
    /// The gradient chunk (global index).
    pub chunk: u32,
}

impl FrameId {
    /// The tag on the wire: reduce-scatter steps first, then all-gather.
    pub fn tag(&self, n: usize) -> u32 {
        match self.phase {
            Phase::ReduceScatter => self.step,
            Phase::AllGather => (n as u32 - 1) + self.step,
        }
    }
}

/// The chunk ranges of the `n` segments of a gradient of `chunks` chunks:
/// contiguous, in order, sizes differing by at most one chunk (a segment is
/// empty when there are fewer chunks than members).
pub fn segments(chunks: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    (0..n).map(|s| s * chunks / n..(s + 1) * chunks / n).collect()
}

/// Which segment each chunk is in, i.e. the rank that owns it.
pub fn chunk_owners(chunks: usize, n: usize) -> Vec<usize> {
    let mut owners = vec![0; chunks];
    for (s, range) in segments(chunks, n).into_iter().enumerate() {
        owners[range].fill(s);
    }
    owners
}

fn modn(x: isize, n: usize) -> usize {
    x.rem_euclid(n as isize) as usize
}

/// The segment rank `rank` receives in phase step (`phase`, `t`).
pub fn received_segment(rank: usize, n: usize, phase: Phase, t: usize) -> usize {
    match phase {
        Phase::ReduceScatter => modn(rank as isize - t as isize - 2, n),
        Phase::AllGather => modn(rank as isize - t as isize - 1, n),
    }
}

/// Every frame rank `rank` of `n` receives from its predecessor, in the
/// order they arrive (each link is one ordered stream).
pub fn receive_order(rank: usize, n: usize, chunks: usize) -> Vec<FrameId> {
    if n < 2 {
        return Vec::new();
    }
    let segs = segments(chunks, n);
    let mut out = Vec::with_capacity(2 * (n - 1) * chunks.div_ceil(n));
    for phase in [Phase::ReduceScatter, Phase::AllGather] {
        for t in 0..n - 1 {
            let s = received_segment(rank, n, phase, t);
            out.extend(segs[s].clone().map(|c| FrameId { phase, step: t as u32, chunk: c as u32 }));
        }
    }
    out
}

/// The segment rank `rank` sends first: its own contribution to segment
/// `rank - 1`, which starts that segment's way round the ring.
pub fn first_sent_segment(rank: usize, n: usize) -> usize {
    modn(rank as isize - 1, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_every_chunk_once_and_in_order() {
        for (chunks, n) in [(35, 4), (3, 4), (1, 1), (10, 3), (0, 2)] {
            let segs = segments(chunks, n);
            assert_eq!(segs.len(), n);
            let flat: Vec<usize> = segs.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(flat, (0..chunks).collect::<Vec<_>>());
            let sizes: Vec<usize> = segs.iter().map(|r| r.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
        assert_eq!(chunk_owners(5, 2), vec![0, 0, 1, 1, 1]);
    }

    /// What rank r receives in a step is what rank r-1 sent in it: the
    /// reduce-scatter forwards the segment received one step earlier, the
    /// all-gather starts with the owned segment.
    #[test]
    fn each_rank_receives_what_its_predecessor_sends() {
        for n in 2..6 {
            for r in 0..n {
                let prev = (r + n - 1) % n;
                // Reduce-scatter step 0: prev's first segment.
                assert_eq!(received_segment(r, n, Phase::ReduceScatter, 0), first_sent_segment(prev, n));
                // Later steps: what prev received one step before.
                for t in 1..n - 1 {
                    assert_eq!(received_segment(r, n, Phase::ReduceScatter, t), received_segment(prev, n, Phase::ReduceScatter, t - 1));
                    assert_eq!(received_segment(r, n, Phase::AllGather, t), received_segment(prev, n, Phase::AllGather, t - 1));
                }
                // The last reduce-scatter step completes r's own segment;
                // the all-gather starts with prev's own.
                assert_eq!(received_segment(r, n, Phase::ReduceScatter, n - 2), r);
                assert_eq!(received_segment(r, n, Phase::AllGather, 0), prev);
                // Every segment but r's own arrives finished exactly once.
                let mut got: Vec<usize> = (0..n - 1).map(|t| received_segment(r, n, Phase::AllGather, t)).collect();
                got.sort();
                assert_eq!(got, (0..n).filter(|&s| s != r).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn tags_put_the_reduce_scatter_first() {
        let rs = FrameId { phase: Phase::ReduceScatter, step: 2, chunk: 0 };
        let ag = FrameId { phase: Phase::AllGather, step: 0, chunk: 0 };
        assert_eq!((rs.tag(4), ag.tag(4)), (2, 3));
        assert_eq!(receive_order(0, 3, 6).len(), 2 * 2 * 2);
        assert!(receive_order(0, 1, 6).is_empty());
    }
}
