//! Tensor data on the wire: float32 and bfloat16 encodings of flat buffers,
//! chunking, and the weighted accumulation the all-reduce does per chunk;
//! the typed vocabulary of the proto (`vocab.rs`) and the directives that
//! tell a worker what to do after an error (`directive.rs`); [`WireError`]
//! (`error.rs`), what a peer can send wrong. One concept, the bytes of a
//! gradient on the wire; the rest lives in the submodules named here.

use std::ops::Range;

use bytes::Bytes;

use crate::config::GradDtype;
use crate::proto;

pub mod auth;
pub mod digest;
pub mod directive;
pub mod error;
pub mod state;
pub mod tls;
mod vocab;

pub use error::WireError;
pub use vocab::{analysis_kind, assignment_sampler, sampler_kind, set_assignment_sampler, WorkerRole};

/// The protocol version of `proto/ddpm.proto`; a worker speaking another is
/// refused at registration.
pub const PROTOCOL_VERSION: u32 = 9;

/// Largest gRPC message either side accepts (chunks are at most 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 frame size both sides announce: bulk data in 1 MiB frames rather
/// than the 16 KiB default, 64 times fewer frames to parse and acknowledge.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

impl GradDtype {
    pub fn bytes_per_element(self) -> usize {
        match self {
            GradDtype::F32 => 4,
            GradDtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GradDtype::F32 => "f32",
            GradDtype::Bf16 => "bf16",
        }
    }

    pub fn to_proto(self) -> proto::GradDtype {
        match self {
            GradDtype::F32 => proto::GradDtype::F32,
            GradDtype::Bf16 => proto::GradDtype::Bf16,
        }
    }

    pub fn from_proto(v: i32) -> Result<Self, WireError> {
        match proto::GradDtype::try_from(v) {
            Ok(proto::GradDtype::F32) => Ok(GradDtype::F32),
            Ok(proto::GradDtype::Bf16) => Ok(GradDtype::Bf16),
            _ => Err(WireError::BadDtype(v)),
        }
    }
}

/// The element ranges of the chunks of a `total`-element buffer.
pub fn chunk_ranges(total: usize, chunk_elements: usize) -> impl Iterator<Item = Range<usize>> {
    let c = chunk_elements.max(1);
    (0..total.div_ceil(c)).map(move |i| i * c..((i + 1) * c).min(total))
}

/// Number of chunks of a `total`-element buffer.
pub fn chunk_count(total: usize, chunk_elements: usize) -> usize {
    total.div_ceil(chunk_elements.max(1))
}

/// Rounds a float32 to bfloat16, nearest-even; NaN stays NaN.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Fixes the byte order of values just copied from little-endian bytes
/// (nothing to do on little-endian machines).
#[inline]
fn from_le_in_place(values: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for v in values {
            *v = f32::from_bits(u32::from_le(v.to_bits()));
        }
    }
}

/// Encodes values in `dtype`, little-endian.
pub fn encode(values: &[f32], dtype: GradDtype) -> Bytes {
    match dtype {
        GradDtype::F32 => Bytes::from(f32_bytes(values)),
        GradDtype::Bf16 => {
            let halves: Vec<u16> = values.iter().map(|v| f32_to_bf16(*v).to_le()).collect();
            Bytes::copy_from_slice(bytemuck::cast_slice(&halves))
        }
    }
}

fn check_len(bytes: &[u8], n: usize, dtype: GradDtype, index: u32) -> Result<(), WireError> {
    let want = n * dtype.bytes_per_element();
    if bytes.len() != want {
        return Err(WireError::WrongSize { index, got: bytes.len(), want, elements: n, dtype: dtype.name() });
    }
    Ok(())
}

/// Decodes chunk `index` into `out` (whose length is the chunk's element count).
pub fn decode_into(bytes: &[u8], dtype: GradDtype, index: u32, out: &mut [f32]) -> Result<(), WireError> {
    check_len(bytes, out.len(), dtype, index)?;
    match dtype {
        GradDtype::F32 => {
            // One memcpy: `out` is aligned, `bytes` need not be.
            bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(bytes);
            from_le_in_place(out);
        }
        GradDtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
    Ok(())
}

/// `acc += weight * decode(bytes)`, the all-reduce's per-member step.
pub fn accumulate(bytes: &[u8], dtype: GradDtype, index: u32, weight: f32, acc: &mut [f32]) -> Result<(), WireError> {
    check_len(bytes, acc.len(), dtype, index)?;
    const BLOCK: usize = 2048;
    let mut buf = [0f32; BLOCK];
    let per = dtype.bytes_per_element();
    for (a, b) in acc.chunks_mut(BLOCK).zip(bytes.chunks(BLOCK * per)) {
        let tmp = &mut buf[..a.len()];
        decode_into(b, dtype, index, tmp)?;
        for (x, y) in a.iter_mut().zip(tmp.iter()) {
            *x += weight * y;
        }
    }
    Ok(())
}

/// `bytes = encode(decode(bytes) + weight * local)` in place, in one pass
/// over the memory: the ring's reduce-scatter step (a partial sum in, this
/// member's part added, the partial sum out in the same buffer).
pub fn add_weighted_in_place(bytes: &mut [u8], dtype: GradDtype, index: u32, weight: f32, local: &[f32]) -> Result<(), WireError> {
    check_len(bytes, local.len(), dtype, index)?;
    let per = dtype.bytes_per_element();
    match dtype {
        GradDtype::F32 => match as_f32s_mut(bytes) {
            // Aligned (the ring's own buffers): a loop the compiler vectorizes.
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(local) {
                    *a += weight * g;
                }
            }
            None => {
                for (b, g) in bytes.chunks_exact_mut(per).zip(local) {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + weight * g;
                    b.copy_from_slice(&v.to_le_bytes());
                }
            }
        },
        GradDtype::Bf16 => {
            for (b, g) in bytes.chunks_exact_mut(per).zip(local) {
                let v = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])) + weight * g;
                b.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Wire f32 bytes as the values themselves, where that is what they are:
/// a little-endian machine and a 4-byte-aligned buffer (the same
/// arithmetic either way; this form is the one the compiler vectorizes).
pub(crate) fn as_f32s(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

pub(crate) fn as_f32s_mut(bytes: &mut [u8]) -> Option<&mut [f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice_mut(bytes).ok()
    } else {
        None
    }
}

/// `acc = decode(bytes) + weight * acc` (the ring's last reduce-scatter
/// step: this member's own values become the reduced ones, in place).
pub fn add_to_weighted(bytes: &[u8], dtype: GradDtype, index: u32, weight: f32, acc: &mut [f32]) -> Result<(), WireError> {
    check_len(bytes, acc.len(), dtype, index)?;
    let per = dtype.bytes_per_element();
    match dtype {
        GradDtype::F32 => match as_f32s(bytes) {
            Some(got) => {
                for (a, b) in acc.iter_mut().zip(got) {
                    *a = b + weight * *a;
                }
            }
            None => {
                for (a, b) in acc.iter_mut().zip(bytes.chunks_exact(per)) {
                    *a = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + weight * *a;
                }
            }
        },
        GradDtype::Bf16 => {
            for (a, b) in acc.iter_mut().zip(bytes.chunks_exact(per)) {
                *a = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])) + weight * *a;
            }
        }
    }
    Ok(())
}

/// `encode(0 + weight * local)` into `out` (resized, its allocation kept):
/// a member's first term of a ring sum, as the star's sum starts.
pub fn encode_weighted_into(local: &[f32], dtype: GradDtype, weight: f32, out: &mut Vec<u8>) {
    out.resize(local.len() * dtype.bytes_per_element(), 0);
    encode_weighted_to(local, dtype, weight, out);
}

/// [`encode_weighted_into`] into `out`, which holds exactly the encoded
/// length (a block of a frame being filled).
pub fn encode_weighted_to(local: &[f32], dtype: GradDtype, weight: f32, out: &mut [u8]) {
    match dtype {
        GradDtype::F32 => match as_f32s_mut(out) {
            Some(out) => {
                for (o, g) in out.iter_mut().zip(local) {
                    *o = 0.0 + weight * g;
                }
            }
            None => {
                for (o, g) in out.chunks_exact_mut(4).zip(local) {
                    o.copy_from_slice(&(0.0 + weight * g).to_le_bytes());
                }
            }
        },
        GradDtype::Bf16 => {
            for (o, g) in out.chunks_exact_mut(2).zip(local) {
                o.copy_from_slice(&f32_to_bf16(0.0 + weight * g).to_le_bytes());
            }
        }
    }
}

/// [`accumulate`], also returning whether every decoded value was finite
/// and the float64 sum of their squares: the all-reduce screens each
/// member's chunk by these without decoding it twice.
pub fn accumulate_screened(bytes: &[u8], dtype: GradDtype, index: u32, weight: f32, acc: &mut [f32]) -> Result<(bool, f64), WireError> {
    check_len(bytes, acc.len(), dtype, index)?;
    const BLOCK: usize = 2048;
    let mut buf = [0f32; BLOCK];
    let per = dtype.bytes_per_element();
    // BLOCK is a whole number of the sum's lanes: the sum is the one
    // `chunk_norms` takes of the decoded values.
    let (mut finite, mut sumsq) = (true, crate::sumsq::SquareSum::default());
    for (a, b) in acc.chunks_mut(BLOCK).zip(bytes.chunks(BLOCK * per)) {
        let tmp = &mut buf[..a.len()];
        decode_into(b, dtype, index, tmp)?;
        sumsq.add(tmp);
        for (x, y) in a.iter_mut().zip(tmp.iter()) {
            finite &= y.is_finite();
            *x += weight * y;
        }
    }
    Ok((finite, sumsq.total()))
}

/// The L2 norm of each chunk of `values` (`chunk_ranges`), summed in
/// float64: NaN or infinity where the chunk holds one. A ring member
/// reports these for its own gradient so that the coordinator can screen
/// it as it screens the star's chunks.
pub fn chunk_norms(values: &[f32], chunk_elements: usize) -> Vec<f64> {
    chunk_ranges(values.len(), chunk_elements).map(|r| crate::sumsq::sum_squares(&values[r]).sqrt()).collect()
}

/// Rounds values through the wire dtype in place (what the receiver sees).
pub fn round_trip(values: &mut [f32], dtype: GradDtype) {
    if dtype == GradDtype::Bf16 {
        for v in values {
            *v = bf16_to_f32(f32_to_bf16(*v));
        }
    }
}

/// Little-endian bytes of float32 values (gradients, state transfer).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffer() {
        let r: Vec<_> = chunk_ranges(10, 4).collect();
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_count(10, 4), 3);
        assert_eq!(chunk_ranges(0, 4).count(), 0);
        assert_eq!(chunk_ranges(8, 4).count(), 2);
    }

    #[test]
    fn chunk_norms_are_float64_per_chunk_and_not_finite_where_a_value_is_not() {
        let v = [3.0f32, 4.0, 1e30, 1e30, f32::NAN, 0.0, f32::INFINITY];
        let n = chunk_norms(&v, 2);
        assert_eq!(n.len(), 4);
        assert_eq!(n[0], 5.0);
        // 1e30 squared overflows float32, not float64.
        assert!((n[1] / (2f64.sqrt() * 1e30) - 1.0).abs() < 1e-6, "{}", n[1]);
        assert!(n[2].is_nan());
        assert_eq!(n[3], f64::INFINITY);
        assert!(chunk_norms(&[], 2).is_empty());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // Just above halfway rounds up.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0)), 1.0 + 1.0 / 128.0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        // Known value: bf16(pi) = 0x4049 (3.140625).
        assert_eq!(f32_to_bf16(std::f32::consts::PI), 0x4049);
    }

    #[test]
    fn encode_decode_and_accumulate() {
        let v = [1.5f32, -2.0, 3.25];
        for dtype in [GradDtype::F32, GradDtype::Bf16] {
            let b = encode(&v, dtype);
            let mut out = [0f32; 3];
            decode_into(&b, dtype, 0, &mut out).unwrap();
            assert_eq!(out, v);
            let mut acc = [1.0f32; 3];
            accumulate(&b, dtype, 0, 0.5, &mut acc).unwrap();
            assert_eq!(acc, [1.75, 0.0, 2.625]);
        }
    }

    /// The ring's fused steps are decode, the arithmetic, encode, bit for
    /// bit, whether the bytes sit aligned (the vectorized path) or not.
    #[test]
    fn the_ring_steps_equal_decode_then_arithmetic_aligned_or_not() {
        let local: Vec<f32> = (0..37).map(|i| (i as f32 * 0.731).sin() * 10f32.powi(i % 7 - 3)).collect();
        let other: Vec<f32> = (0..37).map(|i| (i as f32 * 1.37).cos() * 3.3).collect();
        let w = 0.3f32;
        for dtype in [GradDtype::F32, GradDtype::Bf16] {
            let wire = encode(&other, dtype);
            let mut theirs = vec![0f32; 37];
            decode_into(&wire, dtype, 0, &mut theirs).unwrap();
            for offset in [0usize, 1] {
                // A copy of the wire bytes at `offset` into a 4-byte-aligned buffer.
                let mut store = vec![0f32; 38];
                let at = |store: &mut Vec<f32>| -> *mut u8 { unsafe { (store.as_mut_ptr() as *mut u8).add(offset) } };
                let len = wire.len();
                let bytes = unsafe { std::slice::from_raw_parts_mut(at(&mut store), len) };
                bytes.copy_from_slice(&wire);
                add_weighted_in_place(bytes, dtype, 0, w, &local).unwrap();
                let want: Vec<f32> = theirs.iter().zip(&local).map(|(t, g)| t + w * g).collect();
                assert_eq!(&bytes[..], &encode(&want, dtype)[..], "{dtype:?} offset {offset}: add_weighted_in_place");

                bytes.copy_from_slice(&wire);
                let mut acc = local.clone();
                add_to_weighted(bytes, dtype, 0, w, &mut acc).unwrap();
                let want: Vec<u32> = theirs.iter().zip(&local).map(|(t, g)| (t + w * g).to_bits()).collect();
                assert_eq!(acc.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "{dtype:?} offset {offset}: add_to_weighted");
            }
            let mut out = Vec::new();
            encode_weighted_into(&local, dtype, w, &mut out);
            let want: Vec<f32> = local.iter().map(|g| 0.0 + w * g).collect();
            assert_eq!(&out[..], &encode(&want, dtype)[..], "{dtype:?}: encode_weighted_into");
        }
    }

    #[test]
    fn accumulate_handles_more_than_one_block() {
        let n = 5000;
        let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        for dtype in [GradDtype::F32, GradDtype::Bf16] {
            let b = encode(&v, dtype);
            let mut acc = vec![1.0f32; n];
            accumulate(&b, dtype, 0, 2.0, &mut acc).unwrap();
            let mut dec = vec![0f32; n];
            decode_into(&b, dtype, 0, &mut dec).unwrap();
            for i in 0..n {
                assert_eq!(acc[i], 1.0 + 2.0 * dec[i], "{i}");
            }
        }
    }

    #[test]
    fn wrong_sizes_are_named() {
        let b = encode(&[1.0, 2.0], GradDtype::F32);
        let mut out = [0f32; 3];
        let e = decode_into(&b, GradDtype::F32, 7, &mut out).unwrap_err();
        assert_eq!(e.to_string(), "chunk 7 has 8 bytes, expected 12 (3 f32 elements)");
        assert!(accumulate(&b[..7], GradDtype::F32, 0, 1.0, &mut out[..2]).is_err());
        assert!(GradDtype::from_proto(9).is_err());
    }
}
