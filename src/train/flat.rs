//! The U-Net's parameters in one flat buffer.
//!
//! Every parameter tensor of the VarStore becomes a view into a single
//! contiguous `[P]` float32 tensor, in the order of the parameter names. The
//! gradient all-reduce, the optimizer, the EMA, checksums and checkpoints all
//! work on that buffer: a handful of kernels per step instead of a few per
//! parameter, and one fixed order that every replica and the coordinator
//! agree on (its hash is checked when a worker joins).

use tch::{nn, Device, Kind, Tensor};

use super::{fused, param_digest};
use crate::rng::mix64;
use crate::unet::{UNet, UNetConfig, UNetError};

/// One parameter's place in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutEntry {
    /// The diffusers-style name, e.g. `down_blocks.0.resnets.0.conv1.weight`.
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: usize,
    pub numel: usize,
}

/// The order, shapes and offsets of the parameters (sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub entries: Vec<LayoutEntry>,
    pub total: usize,
}

impl Layout {
    /// The layout of named tensors: sorted by name, packed in that order.
    pub fn from_named(mut named: Vec<(String, Vec<i64>)>) -> Self {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offset = 0;
        let entries = named
            .into_iter()
            .map(|(name, shape)| {
                let numel = shape.iter().product::<i64>() as usize;
                let e = LayoutEntry { name, shape, offset, numel };
                offset += numel;
                e
            })
            .collect();
        Self { entries, total: offset }
    }

    /// A hash of names, shapes and order: equal layouts, equal hashes.
    pub fn hash(&self) -> u64 {
        let mut h = mix64(self.total as u64);
        for e in &self.entries {
            for b in e.name.bytes() {
                h = mix64(h ^ b as u64);
            }
            for &d in &e.shape {
                h = mix64(h ^ (d as u64).wrapping_add(0x100));
            }
        }
        h
    }
}

/// A U-Net whose parameters live in one flat buffer on its device.
pub struct FlatModel {
    pub vs: nn::VarStore,
    pub unet: UNet,
    pub layout: Layout,
    /// `[P]` float32: the parameters; each VarStore variable is a view of it.
    pub flat: Tensor,
    /// `[P]` float32: the gradients; each variable's `.grad` is a view of
    /// it, so backward accumulates straight into one buffer (no 143 MB
    /// concatenation and fresh allocation a step).
    grad: Tensor,
    /// The variables in layout order (shallow handles to the VarStore's).
    vars: Vec<Tensor>,
}

/// Held while a model's initialisation draws from torch's generator.
static DRAWING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl FlatModel {
    /// Builds the U-Net of `config` on `device` with the paper's
    /// initialisation, drawn from torch's generator as it stands (use
    /// [`FlatModel::seeded`] for a reproducible start).
    pub fn new(config: &UNetConfig, device: Device) -> Result<Self, UNetError> {
        let _drawing = DRAWING.lock().unwrap_or_else(|p| p.into_inner());
        Self::draw(config, device)
    }

    /// [`FlatModel::new`] with torch's generator seeded with `seed` first.
    /// torch's default generator is one per process: two models drawn at
    /// once on two threads (the coordinator's state and a test's, a bench)
    /// would interleave their draws and neither would be the seed's, so
    /// every draw here holds one lock.
    pub fn seeded(config: &UNetConfig, device: Device, seed: i64) -> Result<Self, UNetError> {
        let _drawing = DRAWING.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(seed);
        Self::draw(config, device)
    }

    fn draw(config: &UNetConfig, device: Device) -> Result<Self, UNetError> {
        let vs = nn::VarStore::new(device);
        let unet = UNet::new(&vs.root(), config)?;
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let layout = Layout::from_named(named.iter().map(|(n, t)| (n.clone(), t.size())).collect());
        let flat = Tensor::zeros([layout.total as i64], (Kind::Float, device));
        let mut vars = Vec::with_capacity(named.len());
        tch::no_grad(|| {
            for ((_, mut var), e) in named.into_iter().zip(&layout.entries) {
                let mut view = flat.narrow(0, e.offset as i64, e.numel as i64).view(e.shape.as_slice());
                view.copy_(&var);
                var.set_data(&view);
                vars.push(var);
            }
        });
        let grad = bind_grads(&vars, &layout, device);
        Ok(Self { vs, unet, layout, flat, grad, vars })
    }

    pub fn device(&self) -> Device {
        self.flat.device()
    }

    /// Copies `values` (`[P]`, any device) into the parameters.
    pub fn load_flat(&mut self, values: &Tensor) {
        tch::no_grad(|| self.flat.copy_(values));
    }

    /// Copies a reduced gradient `[P]` from the host into the model's
    /// gradient buffer (on the CPU warm memory, no allocation) and returns
    /// that buffer, for the update.
    pub fn load_grad(&mut self, values: &[f32]) -> Tensor {
        if self.grad.device() == Device::Cpu {
            copy_from_slice(&mut self.grad, values);
        } else {
            tch::no_grad(|| self.grad.copy_(&Tensor::from_slice(values)));
        }
        self.grad.shallow_clone()
    }

    /// Clears the parameters' gradients before a backward pass.
    pub fn zero_grad(&mut self) {
        let _ = self.grad.zero_();
        let (buffer, total) = (&self.grad, self.layout.total);
        for v in &mut self.vars {
            if !in_buffer(buffer, total, v) {
                // Not a view of the buffer any more (see flat_grad).
                v.zero_grad();
            }
        }
    }

    /// The gradients of the last backward pass as one `[P]` tensor on the
    /// model's device (zeros for parameters the loss did not reach): the
    /// model's own gradient buffer, valid until the next `zero_grad`.
    pub fn flat_grad(&self) -> Tensor {
        // Backward accumulates in place into defined gradients; should a
        // variable's gradient ever be replaced by a new tensor, gather.
        if self.vars.iter().all(|v| in_buffer(&self.grad, self.layout.total, v)) {
            return self.grad.shallow_clone();
        }
        let grads: Vec<Tensor> = self
            .vars
            .iter()
            .zip(&self.layout.entries)
            .map(|(v, e)| {
                let g = v.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    Tensor::zeros([e.numel as i64], (Kind::Float, self.flat.device()))
                }
            })
            .collect();
        Tensor::cat(&grads, 0)
    }
}

/// Whether `v`'s gradient lies inside `buffer` of `total` float32 elements.
fn in_buffer(buffer: &Tensor, total: usize, v: &Tensor) -> bool {
    let g = v.grad();
    let (start, end) = (buffer.data_ptr() as usize, buffer.data_ptr() as usize + total * 4);
    g.defined() && g.data_ptr() as usize >= start && g.data_ptr() as usize + g.numel() * 4 <= end
}

/// Makes every variable's gradient a view of one zeroed `[P]` buffer, in
/// layout order, and returns the buffer. A backward pass of zero defines
/// the gradients; `set_data` then points each at its slice.
fn bind_grads(vars: &[Tensor], layout: &Layout, device: Device) -> Tensor {
    let grad = Tensor::zeros([layout.total as i64], (Kind::Float, device));
    if vars.is_empty() {
        return grad;
    }
    let sums: Vec<Tensor> = vars.iter().map(|v| v.sum(Kind::Float)).collect();
    (Tensor::stack(&sums, 0).sum(Kind::Float) * 0.0).backward();
    tch::no_grad(|| {
        for (v, e) in vars.iter().zip(&layout.entries) {
            let mut g = v.grad();
            g.set_data(&grad.narrow(0, e.offset as i64, e.numel as i64).view(e.shape.as_slice()));
        }
    });
    grad
}

/// The digest of a flat float32 tensor's exact bits
/// (`param_digest.rs`): read in place on the host's threads, or by tensor
/// ops on its device (no copy of the model).
pub fn checksum(flat: &Tensor) -> u64 {
    fused::digest_cpu(flat).unwrap_or_else(|| param_digest::on_device(flat))
}

/// The same digest of raw little-endian float32 bytes (an uploaded state).
pub fn checksum_bytes(bytes: &[u8]) -> u64 {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    param_digest::of_values(&values)
}

/// Runs `f` on a `[n]` float32 CPU tensor that is `values` itself (no
/// copy): what `f` does to the tensor in place it does to `values`. `f`
/// must not keep the tensor (nor a shallow clone of it) beyond the call.
pub fn with_tensor_view<R>(values: &mut [f32], f: impl FnOnce(&mut Tensor) -> R) -> R {
    // SAFETY: the tensor views `values.len()` contiguous f32s that stay
    // borrowed mutably (so nothing else touches them) for as long as the
    // tensor exists: it is dropped before the borrow ends, and libtorch
    // does not free memory it did not allocate.
    let mut view = unsafe { Tensor::from_blob(values.as_mut_ptr() as *const u8, &[values.len() as i64], &[1], Kind::Float, Device::Cpu) };
    let out = f(&mut view);
    drop(view);
    out
}

/// Copies `values` into a contiguous float32 CPU tensor of the same length
/// without allocating.
pub fn copy_from_slice(dst: &mut Tensor, values: &[f32]) {
    assert!(
        dst.device() == Device::Cpu && dst.kind() == Kind::Float && dst.is_contiguous() && dst.numel() == values.len(),
        "copy_from_slice needs a contiguous f32 CPU tensor of {} elements",
        values.len()
    );
    // SAFETY: `dst` is a contiguous CPU float32 buffer of exactly
    // `values.len()` elements (checked above), and `values` cannot alias it.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), dst.data_ptr() as *mut f32, values.len()) }
}

/// Copies a float32 `[n]` tensor into `out` (resized; its allocation is
/// kept, so a worker does not fault in a fresh 143 MB every step).
pub fn copy_to_vec(t: &Tensor, out: &mut Vec<f32>) {
    let host = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let n = host.numel();
    out.resize(n, 0.0);
    host.copy_data(out, n);
}

/// Copies a float32 `[n]` tensor to a host Vec.
pub fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    let host = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let n = host.numel();
    let mut out = vec![0f32; n];
    host.copy_data(&mut out, n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_views_of_the_flat_buffer() {
        tch::manual_seed(0);
        let mut cfg = UNetConfig::tiny();
        cfg.image_size = 16;
        let mut m = FlatModel::new(&cfg, Device::Cpu).unwrap();
        assert_eq!(m.layout.total as i64, cfg.param_count());
        let names: Vec<&str> = m.layout.entries.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        // Writing the flat buffer changes what the model computes.
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[3i64, 500]);
        let before = m.unet.forward_t(&x, &t, false);
        let vars = m.vs.variables();
        let w = &vars["conv_in.weight"];
        let e = m.layout.entries.iter().find(|e| e.name == "conv_in.weight").unwrap().clone();
        let shifted = &m.flat * 0.9 + 0.01;
        m.load_flat(&shifted);
        let expect = to_vec_f32(&m.flat.narrow(0, e.offset as i64, e.numel as i64));
        assert_eq!(to_vec_f32(&w.reshape([-1])), expect);
        let after = m.unet.forward_t(&x, &t, false);
        let diff = f64::try_from((before - after).abs().max()).unwrap();
        assert!(diff > 0.0 && diff.is_finite(), "{diff}");
    }

    #[test]
    fn flat_grad_matches_per_parameter_grads() {
        tch::manual_seed(1);
        let mut cfg = UNetConfig::tiny();
        cfg.image_size = 16;
        let mut m = FlatModel::new(&cfg, Device::Cpu).unwrap();
        // Make the zero-initialised output layers non-zero so every gradient flows.
        m.load_flat(&Tensor::randn([m.layout.total as i64], (Kind::Float, Device::Cpu)).g_mul_scalar(0.05));
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 999]);
        m.zero_grad();
        m.unet.forward_t(&x, &t, true).square().mean(Kind::Float).backward();
        let g = m.flat_grad();
        assert_eq!(g.size(), [m.layout.total as i64]);
        let vars = m.vs.variables();
        for e in &m.layout.entries {
            let want = to_vec_f32(&vars[&e.name].grad().reshape([-1]));
            let got = to_vec_f32(&g.narrow(0, e.offset as i64, e.numel as i64));
            assert_eq!(want, got, "{}", e.name);
        }
        assert!(f64::try_from(g.abs().sum(Kind::Double)).unwrap() > 0.0);
    }

    #[test]
    fn backward_accumulates_into_the_flat_buffer_and_zero_grad_clears_it() {
        tch::manual_seed(2);
        let mut cfg = UNetConfig::tiny();
        cfg.image_size = 16;
        let mut m = FlatModel::new(&cfg, Device::Cpu).unwrap();
        m.load_flat(&Tensor::randn([m.layout.total as i64], (Kind::Float, Device::Cpu)).g_mul_scalar(0.05));
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[4i64, 700]);
        let loss = |m: &FlatModel, seed: i64| {
            tch::manual_seed(seed); // the same dropout masks for the same seed
            m.unet.forward_t(&x, &t, true).square().mean(Kind::Float)
        };
        // The reference: autograd's gradients returned, not accumulated anywhere.
        let vars = m.vs.variables();
        let inputs: Vec<&Tensor> = m.layout.entries.iter().map(|e| &vars[&e.name]).collect();
        let want: Vec<Tensor> = Tensor::run_backward(&[loss(&m, 7)], &inputs, false, false);
        let want = Tensor::cat(&want.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0);
        m.zero_grad();
        loss(&m, 5).backward();
        let first = m.flat_grad().data_ptr();
        m.zero_grad();
        loss(&m, 7).backward();
        let g = m.flat_grad();
        assert_eq!(g.data_ptr(), first, "the gradient buffer is reused, not reallocated");
        assert_eq!(to_vec_f32(&g), to_vec_f32(&want), "the second step's gradient alone");
    }

    #[test]
    fn layout_hash_depends_on_shapes() {
        let a = Layout::from_named(vec![("a".into(), vec![2, 3]), ("b".into(), vec![4])]);
        let b = Layout::from_named(vec![("a".into(), vec![3, 2]), ("b".into(), vec![4])]);
        let c = Layout::from_named(vec![("b".into(), vec![4]), ("a".into(), vec![2, 3])]);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), c.hash());
        assert_eq!(a.entries[1].offset, 6);
    }
}
