//! libtorch's autocast, for `[train] precision = "bf16"`: the forward pass
//! runs with convolutions and matrix products in bfloat16 (autocast casts
//! their inputs and the float32 weights; other ops run in the type of
//! their inputs, and on CUDA autocast also keeps normalisations and softmax
//! in float32), and the backward pass follows the forward's types, so the
//! gradient of each float32 parameter arrives in float32.
//!
//! Why not `tch::autocast`: it switches CUDA's autocast only (through the
//! deprecated `at::autocast::set_enabled`) and leaves CUDA's default type,
//! float16, which needs loss scaling; ddpm wants bfloat16 on the CPU (tests
//! and CPU workers) and on CUDA alike. libtorch has the calls
//! (`at::autocast::set_autocast_enabled(DeviceType, bool)` and
//! `set_autocast_dtype(DeviceType, ScalarType)`, ATen/autocast_mode.h)
//! but neither tch nor torch-sys wraps them. They are plain C++ functions
//! of libtorch_cpu.so taking an 8-bit enum and a bool, so they are
//! declared here by their Itanium-mangled names, which the Linux x86-64
//! and aarch64 C ABI passes exactly as these Rust signatures do; the torch
//! these binaries link (2.11.0) exports every one of them, and a torch that
//! renamed one would fail at link time, not at run time. None of them
//! throws for the CPU and CUDA device types, the only ones passed.
//!
//! Autocast's state is per thread: the step runs on the device's thread,
//! which is also where the state is set and restored.

use std::ffi::c_int;

use tch::Device;

use crate::config::Precision;

/// `c10::DeviceType` values (c10/core/DeviceType.h).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16` (c10/core/ScalarType.h).
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn is_autocast_enabled(device_type: i8) -> bool;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn get_autocast_dtype(device_type: i8) -> i8;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn increment_nesting() -> c_int;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn decrement_nesting() -> c_int;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn clear_cache();
}

/// Runs `f` (a forward pass) in `precision` on `device`: as it is for
/// fp32, under bfloat16 autocast for bf16. The thread's previous autocast
/// state is restored afterwards, also if `f` panics.
pub fn run<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    match precision {
        Precision::Fp32 => f(),
        Precision::Bf16 => {
            let _guard = Bf16::enter(device);
            f()
        }
    }
}

/// Whether bfloat16 autocast is on for `device` on this thread.
pub fn is_on(device: Device) -> bool {
    let d = device_type(device);
    // SAFETY: reads the thread's autocast flag for a supported device type.
    unsafe { is_autocast_enabled(d) && get_autocast_dtype(d) == SCALAR_BFLOAT16 }
}

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cpu => DEVICE_CPU,
        Device::Cuda(_) => DEVICE_CUDA,
        // ddpm-worker and ddpm only ever pick cpu or cuda:N.
        other => panic!("bf16 autocast is for cpu and cuda devices, not {other:?}"),
    }
}

/// The autocast region: on while it lives, the previous state back on drop.
struct Bf16 {
    device: i8,
    was_enabled: bool,
    was_dtype: i8,
}

impl Bf16 {
    fn enter(device: Device) -> Self {
        let d = device_type(device);
        // SAFETY: thread-local autocast state of a supported device type.
        unsafe {
            let guard = Self { device: d, was_enabled: is_autocast_enabled(d), was_dtype: get_autocast_dtype(d) };
            set_autocast_dtype(d, SCALAR_BFLOAT16);
            set_autocast_enabled(d, true);
            increment_nesting();
            guard
        }
    }
}

impl Drop for Bf16 {
    fn drop(&mut self) {
        // SAFETY: as in `enter`. The cast weights autocast cached for the
        // region are freed when the outermost region ends, as torch.autocast does.
        unsafe {
            if decrement_nesting() == 0 {
                clear_cache();
            }
            set_autocast_enabled(self.device, self.was_enabled);
            set_autocast_dtype(self.device, self.was_dtype);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn bf16_runs_convolutions_in_bfloat16_and_restores_the_state() {
        let x = Tensor::randn([1, 2, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 2, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let conv = |x: &Tensor| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert!(!is_on(Device::Cpu));
        let y = run(Device::Cpu, Precision::Bf16, || {
            assert!(is_on(Device::Cpu));
            conv(&x)
        });
        assert_eq!(y.kind(), Kind::BFloat16, "the convolution ran under bf16 autocast");
        assert!(!is_on(Device::Cpu), "the state is restored");
        assert_eq!(run(Device::Cpu, Precision::Fp32, || conv(&x)).kind(), Kind::Float);
        // The backward pass reaches the float32 weight as float32.
        y.to_kind(Kind::Float).sum(Kind::Float).backward();
        assert_eq!(w.grad().kind(), Kind::Float);
        // A panic inside still restores it.
        let caught = std::panic::catch_unwind(|| run(Device::Cpu, Precision::Bf16, || panic!("inside")));
        assert!(caught.is_err() && !is_on(Device::Cpu));
    }
}
