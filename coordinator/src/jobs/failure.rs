//! Why a job failed: the stage that failed as a typed reason, with the
//! message its user reads in `JobStatus.error` (the underlying error's
//! chain, or the worker's own words). The runners and the task loop say
//! which stage failed; the scheduler records it.

/// How a job failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobFailure {
    /// A task failed on its worker (a sampler it cannot run, an image it
    /// cannot decode, a file missing there, a device error).
    #[error("worker {worker} failed on items {first}..{end}: {reason}")]
    Task { worker: u64, first: u64, end: u64, reason: String },
    /// A worker's result does not fit its task (sizes, unreadable sums).
    #[error("{0}")]
    BadResult(String),
    /// The weights it asks for could not be pinned (a checkpoint missing,
    /// unreadable, or of another model).
    #[error("{0}")]
    Weights(String),
    /// An input it names could not be read (a dataset, its images).
    #[error("{0}")]
    Input(String),
    /// Its metrics could not be computed from what came back.
    #[error("{0}")]
    Metrics(String),
    /// The coordinator could not keep its images while it ran.
    #[error("{0}")]
    Scratch(String),
    /// Its outputs could not be written to the run's store.
    #[error("writing the job's outputs: {0}")]
    Outputs(String),
    /// The coordinator stopped collecting its results (it is shutting down).
    #[error("the job's result channel closed")]
    ResultsClosed,
}

/// Tags an error with the stage of the job it failed in.
pub trait Stage<T> {
    /// `Err(e)` as `stage` with `e`'s whole chain as its message.
    fn or_fail(self, stage: fn(String) -> JobFailure) -> Result<T, JobFailure>;
}

impl<T, E: Into<anyhow::Error>> Stage<T> for Result<T, E> {
    fn or_fail(self, stage: fn(String) -> JobFailure) -> Result<T, JobFailure> {
        self.map_err(|e| stage(format!("{:#}", e.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_keeps_the_whole_chain_of_its_error() {
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("no such file").context("reading the checkpoint of step 4"));
        let failure = e.or_fail(JobFailure::Weights).unwrap_err();
        assert_eq!(failure, JobFailure::Weights("reading the checkpoint of step 4: no such file".into()));
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        assert_eq!(io.or_fail(JobFailure::Outputs).unwrap_err().to_string(), "writing the job's outputs: disk full");
        let task = JobFailure::Task { worker: 2, first: 0, end: 4, reason: "no such sampler".into() };
        assert_eq!(task.to_string(), "worker 2 failed on items 0..4: no such sampler");
    }
}
