//! `[checkpoint] writers = "replicas"` (the shadow off): a replica told to
//! (WriteShard) copies its shard of the state to the host, taken in order
//! with its steps so that it is exactly that step's, on a thread beside
//! the next step (whose update waits for the copy, not the step); then,
//! in the background, writes it straight to the run's store and reports
//! what it wrote (or why it could not) to the coordinator, which writes
//! the manifest.
use std::time::Instant;

use ddpm::checkpoint::sharded::{self, ShardData};
use ddpm::proto;
use ddpm::store::{RunStore, StoreOptions};
use ddpm::train::param_digest;

use crate::client::Client;
use crate::device::messages::TrainingState;
use crate::device::DeviceHandle;
use crate::directive::CallResult;

/// Fault injection for the tests (`tests/sharded_checkpoints.rs`):
/// `DDPM_FAULT_FAIL_SHARD=STEP:FILE` makes the first worker asked for a
/// shard of step STEP report that it could not write it, as a replica
/// whose store refuses it would; `DDPM_FAULT_HOLD_SHARD=STEP:FILE` makes
/// it hold its shard forever, heartbeats going on, as one that hangs or
/// dies before its report arrives.
fn shard_fails(step: u64) -> bool {
    crate::fault::first_at_step("DDPM_FAULT_FAIL_SHARD", step)
}

/// Copies the shard `asked` names and starts writing it.
pub async fn write_shard(client: &Client, worker_id: u64, dev: &DeviceHandle, asked: proto::WriteShard) -> CallResult<()> {
    let started = Instant::now();
    let copied = dev.export_range(asked.start as usize, asked.end as usize).await;
    // The copy's own time, beside the next step (whose update waits only for what is left of it).
    let copy_s = started.elapsed().as_secs_f64();
    let report = proto::ShardReport { worker_id, step: asked.step, index: asked.index, count: asked.count, copy_s, ..Default::default() };
    match copied {
        Ok(state) if state.step == asked.step => {
            tokio::spawn(write_and_report(client.clone(), asked, state, report));
        }
        Ok(state) => {
            let error = format!("asked for a shard of step {}, but this replica is at step {}", asked.step, state.step);
            tokio::spawn(send_report(client.clone(), proto::ShardReport { error, ..report }));
        }
        Err(e) => {
            tokio::spawn(send_report(client.clone(), proto::ShardReport { error: e.to_string(), ..report }));
        }
    }
    Ok(())
}

/// Writes the shard to the store and reports it.
async fn write_and_report(client: Client, asked: proto::WriteShard, state: TrainingState, report: proto::ShardReport) {
    let (step, index) = (asked.step, asked.index);
    let adam_step = state.adam_step;
    let report = match in_background(write(asked, state)).await {
        Ok((written, digest_part)) => {
            tracing::info!(step, shard = index, bytes = written.bytes, "wrote shard {index} of the checkpoint of step {step}");
            proto::ShardReport { name: written.name, bytes: written.bytes, sha256: written.sha256, adam_step, digest_part, ..report }
        }
        Err(error) => {
            tracing::warn!(step, shard = index, "could not write shard {index} of the checkpoint of step {step}: {error}");
            proto::ShardReport { error, ..report }
        }
    };
    send_report(client, report).await;
}

/// Runs `work` on a thread of its own at the lowest CPU priority (and
/// the threads it starts, which inherit it), so that on a host whose cores
/// the workers' steps keep busy the write takes what they leave idle
/// instead of slowing the step; returns its result.
async fn in_background<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("shard-writer".into()).spawn(move || {
        lowest_priority();
        let done = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(work),
            Err(e) => Err(format!("cannot start the shard writer's runtime: {e}")),
        };
        let _ = tx.send(done);
    });
    spawned.map_err(|e| format!("cannot start the shard writer's thread: {e}"))?;
    rx.await.unwrap_or_else(|_| Err("the shard writer's thread ended without a result".into()))
}

/// Nice 19 for the calling thread (Linux: per thread); elsewhere nothing.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: two syscalls about the calling thread alone, touching no
    // memory; lowering one's own priority needs no privilege, and a failure
    // only leaves it as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// The shard's digest part and its write; an error in words.
async fn write(asked: proto::WriteShard, state: TrainingState) -> Result<(sharded::WrittenShard, u64), String> {
    if crate::fault::first_at_step("DDPM_FAULT_HOLD_SHARD", asked.step) {
        tracing::warn!(step = asked.step, "fault injection: holding shard {} of step {}", asked.index, asked.step);
        std::future::pending::<()>().await;
    }
    if shard_fails(asked.step) {
        return Err("fault injection: the store refused the shard (DDPM_FAULT_FAIL_SHARD)".into());
    }
    let location = asked.store.unwrap_or_default();
    let opts = StoreOptions {
        endpoint: Some(location.s3_endpoint).filter(|e| !e.is_empty()),
        region: Some(location.s3_region).filter(|r| !r.is_empty()),
        allow_http: location.s3_allow_http.then_some(true),
        ..StoreOptions::default()
    };
    let store = RunStore::open(&location.url, &opts).map_err(|e| format!("cannot open the run's store: {e}"))?;
    let start = asked.start;
    let shard = ShardData {
        step: state.step,
        adam_step: state.adam_step,
        index: asked.index,
        count: asked.count,
        start,
        ema: state.ema.unwrap_or_default(),
        params: state.params,
        adam_m: state.adam_m,
        adam_v: state.adam_v,
    };
    let digest_part = param_digest::partial(&shard.params, start);
    let written = sharded::write_shard(&store, shard).await.map_err(|e| e.to_string())?;
    Ok((written, digest_part))
}

async fn send_report(mut client: Client, report: proto::ShardReport) {
    let (step, index) = (report.step, report.index);
    if let Err(s) = client.report_shard(report).await {
        tracing::warn!(step, shard = index, "the coordinator did not take the report of shard {index}: {}", s.message());
    }
}
