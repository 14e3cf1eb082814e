//! One-pass CPU kernels for the per-step elementwise work on the flat
//! buffers: Adam, the EMA and the float64 squared norm.
//!
//! Written as tensor ops, Adam is 13 kernels over `[P]` (143 MB each for the
//! cifar10 U-Net), every one streaming two or three buffers through memory;
//! on a CPU that was a fifth of a training step. These loops do the same
//! float32 operations in the same order per element (Rust never contracts
//! `a * b + c` into a fused multiply-add, and `sqrt` and `/` are correctly
//! rounded), so their bits equal the tensor ops' (tested below), and the
//! replicas, the coordinator and a CUDA device still agree exactly. Work is
//! split over `tch::get_num_threads()` threads like torch's own kernels.

use tch::{Device, Kind, Tensor};

use super::param_digest;

/// Adam's per-step constants, already rounded to float32 (see `optim.rs`).
#[derive(Debug, Clone, Copy)]
pub struct AdamScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_bias2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
}

/// A contiguous float32 CPU tensor's elements, or None for any other tensor.
fn host_f32(t: &Tensor) -> Option<(*mut f32, usize)> {
    (t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()).then(|| (t.data_ptr() as *mut f32, t.numel()))
}

/// Mutable slices over distinct contiguous float32 CPU tensors of one
/// length; None if any is not one, the lengths differ or two share memory.
// A tch `Tensor` is a shared handle whose in-place ops all take `&self`;
// writing through `&Tensor` is how tch works, and no two slices alias.
#[allow(clippy::mut_from_ref)]
fn host_slices<const N: usize>(ts: [&Tensor; N]) -> Option<[&mut [f32]; N]> {
    let mut parts = [(std::ptr::null_mut(), 0usize); N];
    for (p, t) in parts.iter_mut().zip(ts) {
        *p = host_f32(t)?;
    }
    let len = parts[0].1;
    for (i, a) in parts.iter().enumerate() {
        if a.1 != len {
            return None;
        }
        for b in &parts[i + 1..] {
            let (a0, b0) = (a.0 as usize, b.0 as usize);
            if a0 < b0 + len * 4 && b0 < a0 + len * 4 {
                return None;
            }
        }
    }
    // SAFETY: each pointer is the start of a contiguous float32 buffer of
    // `len` elements owned by a tensor that outlives the borrow of `ts`, and no two of the
    // ranges overlap (checked above), so the slices do not alias.
    Some(parts.map(|(p, n)| unsafe { std::slice::from_raw_parts_mut(p, n) }))
}

/// Elements per thread: at least 64K, so tiny models do not pay for threads.
fn part_len(n: usize) -> usize {
    let threads = tch::get_num_threads().max(1) as usize;
    n.div_ceil(threads).max(1 << 16)
}

/// One Adam update in place, if all four tensors are distinct contiguous
/// float32 CPU tensors of one length; false (nothing done) otherwise.
pub fn adam_cpu(params: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, k: &AdamScalars) -> bool {
    let Some([p, m, v, g]) = host_slices([params, m, v, grad]) else { return false };
    let len = part_len(p.len());
    std::thread::scope(|s| {
        let parts = p.chunks_mut(len).zip(m.chunks_mut(len)).zip(v.chunks_mut(len)).zip(g.chunks(len));
        for (((p, m), v), g) in parts {
            s.spawn(move || adam_kernel(p, m, v, g, k));
        }
    });
    true
}

/// The tensor ops of `Adam::update`, element by element, in their order.
fn adam_kernel(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &AdamScalars) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = *m * k.beta1 + g * k.one_minus_beta1;
        *v = *v * k.beta2 + (g * g) * k.one_minus_beta2;
        let denom = v.sqrt() * k.inv_bias2_sqrt + k.eps;
        *p -= (*m / denom) * k.step_size;
    }
}

/// `ema -= (ema - params) * c` in place, on distinct contiguous float32 CPU
/// tensors; false (nothing done) otherwise.
pub fn ema_cpu(ema: &Tensor, params: &Tensor, c: f32) -> bool {
    let Some([e, p]) = host_slices([ema, params]) else { return false };
    let len = part_len(e.len());
    std::thread::scope(|s| {
        for (e, p) in e.chunks_mut(len).zip(p.chunks(len)) {
            s.spawn(move || {
                for (e, &p) in e.iter_mut().zip(p.iter()) {
                    *e -= (*e - p) * c;
                }
            });
        }
    });
    true
}

/// The sum of squares in float64 of a contiguous float32 CPU tensor, or None.
pub fn sum_squares_cpu(t: &Tensor) -> Option<f64> {
    let (ptr, n) = host_f32(t)?;
    // SAFETY: a contiguous float32 buffer of `n` elements, only read here
    // while `t` is borrowed.
    let g = unsafe { std::slice::from_raw_parts(ptr as *const f32, n) };
    let len = part_len(n);
    let sums: Vec<f64> = std::thread::scope(|s| {
        let parts: Vec<_> = g.chunks(len).map(|g| s.spawn(move || crate::sumsq::sum_squares(g))).collect();
        parts.into_iter().map(|h| h.join().unwrap_or(f64::NAN)).collect()
    });
    Some(sums.iter().sum())
}

/// The parameter digest (`param_digest.rs`) of a contiguous float32 CPU
/// tensor, read where it lies by `tch::get_num_threads()` threads; or None.
pub fn digest_cpu(t: &Tensor) -> Option<u64> {
    let (ptr, n) = host_f32(t)?;
    // SAFETY: a contiguous float32 buffer of `n` elements, only read here
    // while `t` is borrowed.
    let values = unsafe { std::slice::from_raw_parts(ptr as *const f32, n) };
    let len = part_len(n);
    let sums: Vec<u64> = std::thread::scope(|s| {
        let parts: Vec<_> =
            values.chunks(len).enumerate().map(|(k, v)| s.spawn(move || param_digest::partial(v, (k * len) as u64))).collect();
        parts.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    Some(param_digest::finish(sums.iter().fold(0u64, |a, b| a.wrapping_add(*b)), n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics naming the first element whose bits differ, and how many do.
    fn same_bits(what: &str, a: &Tensor, b: &Tensor) {
        let (a, b) = (crate::train::flat::to_vec_f32(a), crate::train::flat::to_vec_f32(b));
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i].to_bits() != b[i].to_bits()).collect();
        if let Some(&i) = differ.first() {
            panic!("{what}: {} of {} elements differ, first at {i}: {:e} vs {:e}", differ.len(), a.len(), a[i], b[i]);
        }
    }

    #[test]
    fn fused_kernels_give_the_tensor_ops_bits() {
        // Large enough for several threads' parts, with odd values and zeros.
        let n = 300_001;
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let p0 = Tensor::randn([n], opts);
        let m0 = Tensor::randn([n], opts) * 1e-3;
        let v0 = Tensor::rand([n], opts) * 1e-6;
        let g = Tensor::randn([n], opts) * 1e-2;
        let _ = g.narrow(0, 0, 1000).fill_(0.0);
        let k = AdamScalars {
            beta1: 0.9,
            one_minus_beta1: (1.0f64 - 0.9) as f32,
            beta2: 0.999,
            one_minus_beta2: (1.0f64 - 0.999) as f32,
            inv_bias2_sqrt: (1.0 / (1.0f64 - 0.999f64.powi(7)).sqrt()) as f32,
            eps: 1e-8,
            step_size: (2e-4 / (1.0 - 0.9f64.powi(7))) as f32,
        };
        let (p, m, v) = (p0.copy(), m0.copy(), v0.copy());
        assert!(adam_cpu(&p, &m, &v, &g, &k));
        // The reference: each operation in float64, rounded to float32 after
        // it: the correctly rounded result of every op (53 >= 2 * 24 + 2).
        let r = |x: f64| x as f32 as f64;
        let h = crate::train::flat::to_vec_f32;
        let (hp, hm, hv, hg) = (h(&p0), h(&m0), h(&v0), h(&g));
        let c = |x: f32| x as f64;
        let (mut wp, mut wm, mut wv) = (hp.clone(), hm.clone(), hv.clone());
        for i in 0..n as usize {
            let gi = hg[i] as f64;
            let m = r(r(hm[i] as f64 * c(k.beta1)) + r(gi * c(k.one_minus_beta1)));
            let v = r(r(hv[i] as f64 * c(k.beta2)) + r(r(gi * gi) * c(k.one_minus_beta2)));
            let denom = r(r(r(v.sqrt()) * c(k.inv_bias2_sqrt)) + c(k.eps));
            wp[i] = r(hp[i] as f64 - r(r(m / denom) * c(k.step_size))) as f32;
            (wm[i], wv[i]) = (m as f32, v as f32);
        }
        same_bits("m", &m, &Tensor::from_slice(&wm));
        same_bits("v", &v, &Tensor::from_slice(&wv));
        same_bits("params", &p, &Tensor::from_slice(&wp));
        assert!(f64::try_from((&p - &p0).abs().max()).unwrap() > 0.0, "the update moved nothing");
        // torch's own CPU kernels agree but for its sqrt (MKL's vsSqrt,
        // which is not always correctly rounded): a few elements in 1e5.
        let (mut p1, mut m1, mut v1) = (p0.copy(), m0.copy(), v0.copy());
        let _ = m1.g_mul_scalar_(c(k.beta1));
        let _ = m1.g_add_(&g.g_mul_scalar(c(k.one_minus_beta1)));
        let _ = v1.g_mul_scalar_(c(k.beta2));
        let _ = v1.g_add_(&(&g * &g).g_mul_scalar(c(k.one_minus_beta2)));
        let denom = v1.sqrt().g_mul_scalar(c(k.inv_bias2_sqrt)).g_add_scalar(c(k.eps));
        let _ = p1.g_sub_(&(&m1 / &denom).g_mul_scalar(c(k.step_size)));
        same_bits("m (torch)", &m, &m1);
        same_bits("v (torch)", &v, &v1);
        let differ = h(&p).iter().zip(h(&p1)).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert!(differ * 1000 < n as usize, "{differ} of {n} parameters differ from torch's kernels");

        let ema = p0.copy();
        assert!(ema_cpu(&ema, &p, 1e-4));
        let mut ema1 = p0.copy();
        let _ = ema1.g_sub_(&(&p0 - &p).g_mul_scalar(c(1e-4)));
        same_bits("ema", &ema, &ema1);

        assert_eq!(digest_cpu(&g), Some(crate::train::param_digest::of_values(&h(&g))), "cut among threads");
        let want = f64::try_from(g.to_kind(Kind::Double).square().sum(Kind::Double)).unwrap();
        let got = sum_squares_cpu(&g).unwrap();
        assert!((got - want).abs() <= want * 1e-12, "{got} vs {want}");
    }

    #[test]
    fn aliased_or_mismatched_tensors_are_left_to_the_tensor_ops() {
        let a = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let short = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        let k = AdamScalars {
            beta1: 0.9,
            one_minus_beta1: 0.1,
            beta2: 0.9,
            one_minus_beta2: 0.1,
            inv_bias2_sqrt: 1.0,
            eps: 1e-8,
            step_size: 1.0,
        };
        assert!(!adam_cpu(&a, &b, &a, &b, &k), "aliased buffers");
        assert!(!ema_cpu(&a, &short, 0.1), "different lengths");
        assert!(!ema_cpu(&a, &a.narrow(0, 0, 8), 0.1), "a view of the same memory");
        assert!(!ema_cpu(&a, &Tensor::zeros([8], (Kind::Double, Device::Cpu)), 0.1), "float64");
        assert!(ema_cpu(&a, &b, 0.1));
        assert!(sum_squares_cpu(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)).tr()).is_none(), "not contiguous");
    }
}
