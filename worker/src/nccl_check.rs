//! A training worker of a `[dist] backend = "nccl"` run checks, as soon as
//! it has the run config (its registration reply), that it can be an NCCL
//! rank: a CUDA device and a usable `libnccl.so.2` (`ddpm::nccl::preflight`).
//! One that cannot exits with the reason before it builds the model or
//! reports ready, so the run never counts it as a member. A worker has no
//! config of its own, so registration is the earliest point it can know.

use ddpm::config::{Backend, NCCL_EXCHANGE_BUILT};
use ddpm::wire::WorkerRole;
use tch::Device;

/// `Ok` unless this worker is asked for NCCL and cannot give it.
pub fn check(backend: Backend, role: WorkerRole, device: Device) -> anyhow::Result<()> {
    // Eval workers never join a step; `auto` falls back to the ring for anyone.
    if backend != Backend::Nccl || role != WorkerRole::Train {
        return Ok(());
    }
    let nccl = ddpm::nccl::preflight(device)?;
    if NCCL_EXCHANGE_BUILT {
        return Ok(());
    }
    // Refused rather than reduced through another backend: a run that asked
    // for NCCL and silently got the ring would measure the wrong thing.
    anyhow::bail!(
        "this run asks for [dist] backend = \"nccl\" and NCCL {} loads from {}, but this ddpm has no NCCL exchange yet \
         (issue 31): use backend = \"ring\", or \"auto\" (the ring until the NCCL exchange exists)",
        nccl.version(),
        nccl.path().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_training_worker_of_an_nccl_run_is_checked() {
        for backend in [Backend::Coordinator, Backend::Ring, Backend::Auto] {
            check(backend, WorkerRole::Train, Device::Cpu).unwrap();
        }
        check(Backend::Nccl, WorkerRole::Eval, Device::Cpu).unwrap();
        let e = check(Backend::Nccl, WorkerRole::Train, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("needs a CUDA device") && e.contains("runs on cpu"), "{e}");
    }
}
