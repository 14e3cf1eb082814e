//! The `Jobs` gRPC service: requests are validated into specs here (the
//! one place their words are parsed), queued, watched and cancelled.
//! Errors map to statuses in [`JobsError`]'s one `From`.

use std::pin::Pin;
use std::sync::Arc;

use ddpm::proto::{self, jobs_server::Jobs as JobsRpc};
use ddpm::store::RunStore;
use ddpm::train::analysis::AnalysisKind;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use ddpm::checkpoint::CheckpointError;
use ddpm::eval::EvalError;

use super::queue::JobQueue;
use super::roots::{JobRoots, RootError};
use super::spec::JobSpec;
use super::spec_analysis::AnalysisJobSpec;
use super::spec_error::SpecError;
use super::spec_eval::EvalJobSpec;
use super::spec_sample::SampleJobSpec;

/// Why a Jobs request failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The request's words.
    #[error("invalid {kind} job: {reason}")]
    Invalid { kind: &'static str, reason: SpecError },
    /// A path or dataset outside the places jobs may read.
    #[error("invalid {kind} job: {reason}")]
    Outside { kind: &'static str, reason: RootError },
    /// Something the request names that the run cannot use.
    #[error("invalid {kind} job: {reason}")]
    Unusable { kind: &'static str, reason: Unusable },
    #[error("invalid {kind} job: listing the run's checkpoints: {source}")]
    StoreUnavailable { kind: &'static str, source: Box<CheckpointError> },
    #[error("unknown job id {0}: `ddpm jobs list` shows this coordinator's jobs")]
    Unknown(u64),
    #[error("{0} jobs are queued or running, the cap: wait for some to end, cancel some, or raise ddpm-coord --max-queued-jobs")]
    QueueFull(usize),
    #[error("{0}")]
    Internal(#[from] tokio::task::JoinError),
}

/// What a request names that the run cannot use.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("the run has no complete checkpoint of step {step} (complete ones: {have})")]
    Checkpoint { step: u64, have: String },
    #[error("reference_stats: {0}")]
    ReferenceStats(EvalError),
    #[error("reference_stats: {0}-dimensional statistics")]
    ReferenceDims(usize),
    #[error("image index {index} is outside the run's dataset (0..{len})")]
    Index { index: u64, len: u64 },
}

impl From<JobsError> for Status {
    fn from(e: JobsError) -> Self {
        let message = e.to_string();
        match e {
            JobsError::Invalid { .. } | JobsError::Outside { .. } | JobsError::Unusable { .. } => Status::invalid_argument(message),
            JobsError::StoreUnavailable { .. } => Status::unavailable(message),
            JobsError::Unknown(_) => Status::not_found(message),
            JobsError::QueueFull(_) => Status::resource_exhausted(message),
            JobsError::Internal(_) => Status::internal(message),
        }
    }
}

pub struct JobsService {
    queue: Arc<JobQueue>,
    store: RunStore,
    num_timesteps: usize,
    dataset_len: usize,
    /// Where the paths and datasets of job requests must lie.
    roots: JobRoots,
}

impl JobsService {
    pub fn new(queue: Arc<JobQueue>, store: RunStore, num_timesteps: usize, dataset_len: usize, roots: JobRoots) -> Self {
        Self { queue, store, num_timesteps, dataset_len, roots }
    }

    /// Refuses a job on a checkpoint the run does not have (complete).
    async fn check_checkpoint(&self, kind: &'static str, step: u64) -> Result<(), JobsError> {
        if step == 0 {
            return Ok(());
        }
        let infos = ddpm::checkpoint::list(&self.store).await.map_err(|e| JobsError::StoreUnavailable { kind, source: Box::new(e) })?;
        if !infos.iter().any(|i| i.step == step && i.complete) {
            let have: Vec<String> = infos.iter().filter(|i| i.complete).map(|i| i.step.to_string()).collect();
            let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
            return Err(JobsError::Unusable { kind, reason: Unusable::Checkpoint { step, have } });
        }
        Ok(())
    }

    /// Queues a checked spec.
    fn submit(&self, spec: JobSpec) -> Result<proto::JobStatus, JobsError> {
        let status = self.queue.try_submit(spec).map_err(JobsError::QueueFull)?;
        tracing::info!(job = status.job_id, kind = %status.kind, spec = %status.spec_json, "job submitted");
        Ok(status)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn invalid(kind: &'static str) -> impl Fn(SpecError) -> JobsError {
    move |reason| JobsError::Invalid { kind, reason }
}

fn outside(kind: &'static str) -> impl Fn(RootError) -> JobsError {
    move |reason| JobsError::Outside { kind, reason }
}

#[tonic::async_trait]
impl JobsRpc for JobsService {
    async fn submit_sample_job(&self, req: Request<proto::SampleJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let spec = SampleJobSpec::from_request(&req.into_inner(), self.num_timesteps).map_err(invalid("sample"))?;
        self.check_checkpoint("sample", spec.checkpoint_step).await?;
        Ok(Response::new(self.submit(JobSpec::Sample(spec))?))
    }

    async fn submit_eval_job(&self, req: Request<proto::EvalJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let kind = "evaluation";
        let spec = EvalJobSpec::from_request(&req.into_inner(), self.num_timesteps).map_err(invalid(kind))?;
        if !spec.reference_stats.is_empty() {
            self.roots.check_path("reference_stats", &spec.reference_stats).map_err(outside(kind))?;
        }
        self.roots.check_dataset("reference_data", &spec.reference_data).map_err(outside(kind))?;
        self.roots.check_dataset("bpd_data", &spec.bpd_data).map_err(outside(kind))?;
        self.check_checkpoint(kind, spec.sample.checkpoint_step).await?;
        if !spec.reference_stats.is_empty() {
            // Read now, so that a wrong path or file is an error of the request.
            let path = std::path::PathBuf::from(&spec.reference_stats);
            let stats = tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path))
                .await
                .map_err(JobsError::from)?
                .map_err(|e| JobsError::Unusable { kind, reason: Unusable::ReferenceStats(e) })?;
            if stats.dim() < 2 {
                return Err(JobsError::Unusable { kind, reason: Unusable::ReferenceDims(stats.dim()) }.into());
            }
        }
        Ok(Response::new(self.submit(JobSpec::Eval(spec))?))
    }

    async fn submit_analysis_job(&self, req: Request<proto::AnalysisJobRequest>) -> Result<Response<proto::JobStatus>, Status> {
        let kind = "analysis";
        let spec = AnalysisJobSpec::from_request(&req.into_inner(), self.num_timesteps).map_err(invalid(kind))?;
        self.roots.check_dataset("data", &spec.data).map_err(outside(kind))?;
        self.check_checkpoint(kind, spec.checkpoint_step).await?;
        if spec.analysis == AnalysisKind::Interpolate && spec.data.is_empty() {
            let n = self.dataset_len as u64;
            if let Some(i) = [spec.index_a, spec.index_b].into_iter().find(|&i| i >= n) {
                return Err(JobsError::Unusable { kind, reason: Unusable::Index { index: i, len: n } }.into());
            }
        }
        Ok(Response::new(self.submit(JobSpec::Analysis(spec))?))
    }

    async fn get_job(&self, req: Request<proto::JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        let id = req.into_inner().job_id;
        Ok(Response::new(self.queue.status(id).ok_or(JobsError::Unknown(id))?))
    }

    type WatchJobStream = BoxStream<proto::JobStatus>;

    async fn watch_job(&self, req: Request<proto::JobRef>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        let mut rx = self.queue.subscribe(id).ok_or(JobsError::Unknown(id))?;
        let queue = self.queue.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                rx.borrow_and_update();
                let Some(status) = queue.status(id) else { return };
                let is_final = queue.ended(id);
                if tx.send(Ok(status)).await.is_err() || is_final || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn list_jobs(&self, _req: Request<proto::ListJobsRequest>) -> Result<Response<proto::ListJobsReply>, Status> {
        Ok(Response::new(proto::ListJobsReply { jobs: self.queue.list() }))
    }

    async fn cancel_job(&self, req: Request<proto::JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        let id = req.into_inner().job_id;
        Ok(Response::new(self.queue.cancel(id, "cancelled by a client").ok_or(JobsError::Unknown(id))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_in_one_place() {
        let reason = SpecError::between("count", 1, 100_000, 0u64);
        let s = Status::from(JobsError::Invalid { kind: "sample", reason });
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, "invalid sample job: count must be between 1 and 100000, got 0")
        );
        let s = Status::from(JobsError::Unknown(999));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("unknown job id 999"));
        let source = Box::new(CheckpointError::NoCheckpoint { url: "x".into() });
        assert_eq!(Status::from(JobsError::StoreUnavailable { kind: "sample", source }).code(), tonic::Code::Unavailable);
    }
}
