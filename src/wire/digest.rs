//! Fingerprints of reduced gradients, so that a ring step commits on
//! scalars (proto `SegmentDigest`, `ReplicaDigest`): the owner of each
//! reduced chunk reports its float64 sum of squares (the global norm and
//! the audit are decided from these) and its XXH3-64; every replica, once
//! it holds the whole reduced gradient, reports one XXH3-64 over its
//! chunks' digests. Equal digests mean every replica applies the bits the
//! owners measured, without those bits ever reaching the coordinator.
//!
//! Digests are taken of the float32 values as little-endian bytes: with
//! bf16 on the wire, of the float32 values the bf16 decode to, which is
//! what every replica applies.

use std::ops::Range;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// XXH3-64 of `values` as little-endian float32 bytes.
pub fn chunk_digest(values: &[f32]) -> u64 {
    if cfg!(target_endian = "little") {
        xxh3_64(bytemuck::cast_slice(values))
    } else {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        xxh3_64(&bytes)
    }
}

/// `(sum of squares in float64, digest)` of one reduced chunk, as its
/// owner reports it (the sum as the star takes it: `crate::sumsq`). One
/// pass: each block is summed and hashed while it is in the cache (the
/// streaming hash gives [`chunk_digest`]'s value), so the chunk is read
/// from memory once, not twice.
pub fn chunk_scalars(values: &[f32]) -> (f64, u64) {
    if cfg!(target_endian = "big") {
        return (crate::sumsq::sum_squares(values), chunk_digest(values));
    }
    // A whole number of the sum's lanes (`SquareSum::add`'s contract).
    const BLOCK: usize = 4096;
    let (mut sumsq, mut h) = (crate::sumsq::SquareSum::default(), Xxh3::new());
    for block in values.chunks(BLOCK) {
        sumsq.add(block);
        h.update(bytemuck::cast_slice(block));
    }
    (sumsq.total(), h.digest())
}

/// The replica digest of a gradient whose chunks have the digests
/// `chunk_digests`, in chunk order.
pub fn replica_digest(chunk_digests: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = Xxh3::new();
    for d in chunk_digests {
        h.update(&d.to_le_bytes());
    }
    h.digest()
}

/// The replica digest of the whole reduced gradient `values`, chunked by
/// `ranges` (one pass over it, memory-bound).
pub fn gradient_digest(values: &[f32], ranges: impl IntoIterator<Item = Range<usize>>) -> u64 {
    replica_digest(ranges.into_iter().map(|r| chunk_digest(&values[r])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::chunk_ranges;

    #[test]
    fn the_replica_digest_of_a_gradient_is_the_one_its_chunk_owners_give() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let owners: Vec<u64> = chunk_ranges(values.len(), 64).map(|r| chunk_scalars(&values[r]).1).collect();
        assert_eq!(gradient_digest(&values, chunk_ranges(values.len(), 64)), replica_digest(owners));
    }

    #[test]
    fn the_one_pass_scalars_are_the_sum_and_the_digest_taken_apart() {
        for len in [0, 1, 4095, 4096, 4097, 20_000] {
            let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let (sumsq, digest) = chunk_scalars(&values);
            assert_eq!(sumsq.to_bits(), crate::sumsq::sum_squares(&values).to_bits(), "{len}");
            assert_eq!(digest, chunk_digest(&values), "{len}");
        }
    }

    #[test]
    fn one_changed_bit_anywhere_changes_the_digest() {
        let values: Vec<f32> = (0..300).map(|i| i as f32 / 7.0).collect();
        let base = gradient_digest(&values, chunk_ranges(300, 100));
        for i in [0, 150, 299] {
            let mut other = values.clone();
            other[i] = f32::from_bits(other[i].to_bits() ^ 1);
            assert_ne!(gradient_digest(&other, chunk_ranges(300, 100)), base, "element {i}");
        }
        // The same values chunked otherwise are another fingerprint: the
        // chunking is part of what replicas agree on.
        assert_ne!(gradient_digest(&values, chunk_ranges(300, 50)), base);
    }

    #[test]
    fn the_sum_of_squares_is_summed_in_float64() {
        let values = [3.0f32, 4.0, f32::MIN_POSITIVE];
        let (sumsq, _) = chunk_scalars(&values);
        assert_eq!(sumsq, 25.0 + f64::from(f32::MIN_POSITIVE).powi(2));
        assert!(chunk_scalars(&[f32::NAN, 1.0]).0.is_nan());
    }
}
