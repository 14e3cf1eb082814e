//! A training worker of a run that may reduce over NCCL checks, as soon
//! as it has the run config (its registration reply), that it can be an
//! NCCL rank: a CUDA device and a usable `libnccl.so.2`
//! (`ddpm::nccl::preflight`). One that cannot exits with the reason before
//! it builds the model or reports ready, so the run never counts it as a
//! member. A worker has no config of its own, so registration is the
//! earliest point it can know.

use ddpm::config::Backend;
use ddpm::nccl::Nccl;
use ddpm::wire::WorkerRole;
use tch::Device;

/// The NCCL this worker reduces with, if the run may ask it to: with
/// `backend = "nccl"` every training worker needs one (a CPU worker or a
/// missing library refuses); with `"auto"` a GPU worker does (the
/// coordinator picks NCCL when every member is a GPU worker), a CPU
/// worker does not (it makes the run use the ring). `Ok(None)`: never asked.
pub fn check(backend: Backend, role: WorkerRole, device: Device) -> anyhow::Result<Option<Nccl>> {
    // Eval workers never join a step.
    if role != WorkerRole::Train {
        return Ok(None);
    }
    match backend {
        Backend::Nccl => Ok(Some(ddpm::nccl::preflight(device)?)),
        Backend::Auto if device.is_cuda() => match ddpm::nccl::preflight(device) {
            Ok(nccl) => Ok(Some(nccl)),
            // Refused rather than quietly reduced through the ring: the
            // coordinator would pick NCCL for a run of GPU workers.
            Err(e) => Err(anyhow::anyhow!(
                "{e}\n[dist] backend = \"auto\" reduces over NCCL when every member is a GPU worker, and this GPU worker \
                 cannot load it: install it as above, or choose backend = \"ring\""
            )),
        },
        Backend::Auto | Backend::Ring | Backend::Coordinator => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_worker_of_an_nccl_run_needs_a_gpu_and_auto_asks_no_cpu_worker() {
        for backend in [Backend::Coordinator, Backend::Ring, Backend::Auto] {
            assert!(check(backend, WorkerRole::Train, Device::Cpu).unwrap().is_none());
        }
        assert!(check(Backend::Nccl, WorkerRole::Eval, Device::Cpu).unwrap().is_none());
        let e = check(Backend::Nccl, WorkerRole::Train, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("needs a CUDA device") && e.contains("runs on cpu"), "{e}");
    }
}
