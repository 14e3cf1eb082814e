//! The 64-bit digest of a replica's parameters that the coordinator
//! compares every step (`[dist] checksum_every`, default 1), so that a
//! replica whose parameters went wrong is found within one step.
//!
//! A hash like XXH3 reads the values in one order on one thread and needs
//! them on the host: on a GPU that is a copy of the whole model per step.
//! This digest is a weighted sum instead, modulo 2^64:
//!
//! `h = sum_i bits(x_i) * w_i`, `w_i = START + i * STRIDE` (odd for every i),
//!
//! finished by one XXH3 of `(h, n)`. Addition modulo 2^64 is associative
//! and commutative, so the sum can be cut among threads, or run as tensor
//! ops on the device, and gives the same bits everywhere. A change of one
//! value changes `h` (an odd weight times a non-zero difference below 2^33
//! is never 0 modulo 2^64), as does swapping two (the weights differ by a
//! multiple of STRIDE with fewer than 64 factors of two in all). It finds
//! divergence and corruption, not a forger: replicas report their own
//! digests anyway.

use tch::{Device, Kind, Tensor};

/// Step between consecutive weights (even, so that every weight is odd).
const STRIDE: u64 = 0x9E37_79B9_7F4A_7C16;
/// The first weight (odd).
const START: u64 = 0xD1B5_4A32_D192_ED03;

/// Values per tensor-op piece on a device: bounds the temporaries (three
/// int64 tensors of this length) whatever the model's size.
const PIECE: i64 = 1 << 24;

/// The weight of element `i`.
fn weight(i: u64) -> u64 {
    START.wrapping_add(i.wrapping_mul(STRIDE))
}

/// The weighted sum of `values`, the first of which is element `first`.
/// Four independent sums, so that the adds do not wait on each other.
pub fn partial(values: &[f32], first: u64) -> u64 {
    let mut h = [0u64; 4];
    let mut w = [weight(first), weight(first + 1), weight(first + 2), weight(first + 3)];
    let step = STRIDE.wrapping_mul(4);
    let rows = values.chunks_exact(4);
    let rest = rows.remainder();
    for row in rows {
        for k in 0..4 {
            h[k] = h[k].wrapping_add(u64::from(row[k].to_bits()).wrapping_mul(w[k]));
            w[k] = w[k].wrapping_add(step);
        }
    }
    let mut total = h.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    for (k, x) in rest.iter().enumerate() {
        total = total.wrapping_add(u64::from(x.to_bits()).wrapping_mul(w[k]));
    }
    total
}

/// The digest of `n` values whose weighted sums (each [`partial`], any
/// cut) add up to `sum`.
pub fn finish(sum: u64, n: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&sum.to_le_bytes());
    bytes[8..].copy_from_slice(&n.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The digest of `values`, on this thread.
pub fn of_values(values: &[f32]) -> u64 {
    finish(partial(values, 0), values.len() as u64)
}

/// The digest of a flat float32 tensor of any device, by tensor ops where
/// it lies (a CPU tensor goes through `fused::digest_cpu` instead).
pub fn on_device(flat: &Tensor) -> u64 {
    let flat = flat.contiguous().view([-1]);
    let n = flat.size()[0];
    let device: Device = flat.device();
    let mut sum = 0u64;
    let mut start = 0i64;
    while start < n {
        let len = PIECE.min(n - start);
        // The float32 bits as unsigned 32-bit values, widened to int64.
        let bits = flat.narrow(0, start, len).view_dtype(Kind::Int).to_kind(Kind::Int64).bitwise_and(0xFFFF_FFFFi64);
        // Integer tensor arithmetic wraps modulo 2^64, as `weight` does.
        let w = Tensor::arange_start(start, start + len, (Kind::Int64, device)) * (STRIDE as i64) + (START as i64);
        let piece = i64::try_from((bits * w).sum(Kind::Int64)).unwrap_or(0);
        sum = sum.wrapping_add(piece as u64);
        start += len;
    }
    finish(sum, n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * 0.37).sin() * if i % 7 == 0 { 1e30 } else { 1e-3 }).collect()
    }

    #[test]
    fn the_digest_does_not_depend_on_how_the_sum_is_cut_or_where_it_runs() {
        let v = values(100_003);
        let whole = of_values(&v);
        for cut in [1, 3, 4, 1000, 65_536] {
            let mut sum = 0u64;
            for (k, piece) in v.chunks(cut).enumerate() {
                sum = sum.wrapping_add(partial(piece, (k * cut) as u64));
            }
            assert_eq!(finish(sum, v.len() as u64), whole, "cut every {cut}");
        }
        // The tensor ops (here on the CPU; the same ops on a GPU).
        assert_eq!(on_device(&Tensor::from_slice(&v)), whole);
        assert_eq!(on_device(&Tensor::from_slice(&v[..5])), of_values(&v[..5]));
    }

    #[test]
    fn one_changed_bit_or_two_swapped_values_change_the_digest() {
        let v = values(10_000);
        let base = of_values(&v);
        for i in [0, 1, 4_999, 9_999] {
            for bit in [0, 17, 31] {
                let mut w = v.clone();
                w[i] = f32::from_bits(w[i].to_bits() ^ (1 << bit));
                assert_ne!(of_values(&w), base, "element {i} bit {bit}");
            }
        }
        let mut w = v.clone();
        w.swap(10, 9_000);
        assert_ne!(of_values(&w), base);
        assert_ne!(of_values(&v[..9_999]), base, "the length is part of it");
        // Negative zero is another value's bits, as the replicas apply them.
        assert_ne!(of_values(&[0.0]), of_values(&[-0.0]));
    }
}
