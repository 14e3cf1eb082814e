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
/// missing library refuses); with `"auto"` a GPU worker loads it if it can
/// (the coordinator picks NCCL when every member can), and one that cannot
/// (or a CPU worker) goes without: its steps use the ring. `Ok(None)`:
/// never asked.
pub fn check(backend: Backend, role: WorkerRole, device: Device) -> anyhow::Result<Option<Nccl>> {
    // Eval workers never join a step.
    if role != WorkerRole::Train {
        return Ok(None);
    }
    match backend {
        Backend::Nccl => Ok(Some(ddpm::nccl::preflight(device)?)),
        Backend::Auto if device.is_cuda() => match ddpm::nccl::preflight(device) {
            Ok(nccl) => Ok(Some(nccl)),
            // `auto` falls back: this worker tells the coordinator it cannot
            // be an NCCL rank (ReadyRequest.nccl), and steps it is in go
            // through the ring. Said loudly: it is the slower path.
            Err(e) => {
                tracing::warn!(
                    "{e}\n[dist] backend = \"auto\": this GPU worker cannot be an NCCL rank, so every step it is in \
                     reduces through the ring instead (slower on GPUs); install NCCL as above to get it back"
                );
                Ok(None)
            }
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

    #[test]
    fn with_auto_a_gpu_worker_that_cannot_load_nccl_goes_without_it() {
        // A GPU worker on a machine without a usable CUDA/NCCL (this one):
        // `nccl` refuses it, `auto` lets it train through the ring.
        let gpu = Device::Cuda(0);
        if ddpm::nccl::preflight(gpu).is_ok() {
            return; // a machine with a GPU and NCCL: nothing to fall back from
        }
        assert!(check(Backend::Nccl, WorkerRole::Train, gpu).is_err());
        assert!(check(Backend::Auto, WorkerRole::Train, gpu).unwrap().is_none());
    }
}
