//! What a ring member feeds the coordinator's copy of the state (its
//! shadow) after a step commits: the reduced chunks of its own segment, as
//! they went round the ring. It keeps those of its successor's segment,
//! which it holds too after the all-gather, as a spare: sent only when the
//! coordinator asks (the successor died or did not feed), so each chunk
//! crosses to the coordinator once while a member that dies before it fed
//! its part still costs the shadow nothing while its predecessor lives.

use bytes::Bytes;

use crate::config::GradDtype;
use crate::wire;

/// The chunks of rank `rank`'s successor's segment, encoded as `dtype`
/// from the reduced gradient `grad` (chunks of `chunk_elements`) of a ring
/// of `n`. With bf16 on the wire the values are bf16 already, so the
/// encoding is exact: the same bits as the owner's copy.
pub fn successor_chunks(grad: &[f32], rank: usize, n: usize, chunk_elements: usize, dtype: GradDtype) -> Vec<(u32, Bytes)> {
    if n < 2 {
        return Vec::new();
    }
    segment_chunks(grad, (rank + 1) % n, n, chunk_elements, dtype)
}

/// What rank `rank` feeds at once: the chunks of its own segment.
pub fn own_chunks(grad: &[f32], rank: usize, n: usize, chunk_elements: usize, dtype: GradDtype) -> Vec<(u32, Bytes)> {
    segment_chunks(grad, rank, n, chunk_elements, dtype)
}

/// The chunks of rank `owner`'s segment, encoded as `dtype`.
fn segment_chunks(grad: &[f32], owner: usize, n: usize, chunk_elements: usize, dtype: GradDtype) -> Vec<(u32, Bytes)> {
    let chunks = wire::chunk_count(grad.len(), chunk_elements);
    let segment = super::plan::segments(chunks, n.max(1))[owner].clone();
    wire::chunk_ranges(grad.len(), chunk_elements)
        .enumerate()
        .skip(segment.start)
        .take(segment.len())
        .map(|(i, range)| (i as u32, wire::encode(&grad[range], dtype)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_feeds_its_own_segment_and_keeps_its_successors_and_a_lone_member_feeds_every_chunk() {
        let grad: Vec<f32> = (0..10).map(|i| i as f32).collect();
        // 5 chunks of 2 in a ring of 2: rank 0 owns 0..2, rank 1 owns 2..5.
        let fed = successor_chunks(&grad, 0, 2, 2, GradDtype::F32);
        assert_eq!(fed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(fed[0].1, wire::encode(&[4.0, 5.0], GradDtype::F32));
        let fed = successor_chunks(&grad, 1, 2, 2, GradDtype::F32);
        assert_eq!(fed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1], "the last rank's successor is rank 0");
        assert!(successor_chunks(&grad, 0, 1, 2, GradDtype::F32).is_empty());
        let fed = own_chunks(&grad, 1, 2, 2, GradDtype::F32);
        assert_eq!(fed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2, 3, 4], "its own segment");
        let fed = own_chunks(&grad, 0, 1, 2, GradDtype::Bf16);
        assert_eq!(fed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4], "alone: every chunk, once");
        assert_eq!(fed[1].1, wire::encode(&[2.0, 3.0], GradDtype::Bf16));
    }
}
