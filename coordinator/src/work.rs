//! The pieces of work the coordinator hands a worker through its mailbox;
//! the worker's NextWork call turns each into its messages.

use ddpm::proto;

/// A piece of work for one worker.
#[derive(Debug, Clone)]
pub enum Work {
    /// A training step and the encoded samples of the worker's shard.
    Train { assignment: proto::TrainAssignment, samples: Vec<proto::Sample> },
    /// Draw images.
    Sample(proto::SampleAssignment),
    /// An evaluation task and, for dataset images, their encoded samples.
    Eval { assignment: proto::EvalAssignment, samples: Vec<proto::Sample> },
    /// An analysis task and, for interpolation, the two encoded images.
    Analysis { assignment: proto::AnalysisAssignment, samples: Vec<proto::Sample> },
    /// Fetch the training state again.
    Resync(String),
    /// Upload the training state of this step (`[dist] shadow = "off"`).
    UploadState(u64),
    /// Write this shard of the state to the run's store (`[checkpoint] writers = "replicas"`).
    WriteShard(proto::WriteShard),
    /// Send the training state of this step to a joining peer's listener.
    SendState(proto::SendState),
    /// Feed the coordinator's copy the successor's chunks of this step
    /// the worker kept (the shadow on).
    FeedSpare(proto::FeedSpare),
    /// The coordinator stops: the run is finished, or (not `finished`) it
    /// resumes when the coordinator starts again.
    Shutdown { reason: String, finished: bool },
}
