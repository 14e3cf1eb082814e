//! Every error the Coordinator service returns, mapped to its gRPC code and
//! to the directive that tells the worker what to do (`WorkerAction` in
//! the proto), in one place: [`From<RpcError> for Status`].

use ddpm::proto::WorkerAction;
use ddpm::wire::directive;
use tonic::{Code, Status};

use crate::nccl_ids::NcclIdError;
use crate::roster::RosterError;
use crate::round::RoundError;
use crate::shadow::{FeedError, UploadError};
use crate::shard_book::ShardError;

/// Errors a peer's request can cause.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("unknown worker id {0}: it was dropped (silent too long, or refused); register again")]
    UnknownWorker(u64),
    #[error("worker {0} has not reported ready: call Ready after building the model")]
    NotReady(u64),
    #[error("a user token cannot make worker calls: workers pass the run's worker token")]
    NotAWorker,
    #[error("this call is not worker {0}'s: it lacks that worker's session secret (x-ddpm-session from its RegisterReply)")]
    WrongSession(u64),
    #[error("protocol version {got}, but this coordinator speaks version {want}: run ddpm-worker and ddpm-coord from the same ddpm release (coordinator is {version})")]
    ProtocolVersion { got: u32, want: u32, version: &'static str },
    #[error("worker {worker} built a model with {got_params} parameters (layout hash {got_hash:#018x}), but the run's model has {want_params} (layout hash {want_hash:#018x}): the worker runs a different ddpm build or model config; use the coordinator's release")]
    LayoutMismatch { worker: u64, got_params: u64, got_hash: u64, want_params: u64, want_hash: u64 },
    #[error("{0}")]
    UnknownRole(ddpm::wire::WireError),
    #[error("this run reduces gradients worker to worker ([dist] backend = \"ring\" or \"auto\"), but the worker advertised no peer endpoint: run a ddpm-worker of this release without --peer-listen off")]
    NoPeerEndpoint,
    #[error("peer endpoint {0:?} is not HOST:PORT")]
    BadPeerEndpoint(String),
    #[error("the run is over")]
    RunOver,
    #[error("the coordinator is stopping before the run's end; the run goes on when it starts again")]
    Stopping,
    #[error("unknown state kind {0}")]
    UnknownStateKind(i32),
    #[error("job {0} has no pinned weights: it ended, was cancelled, or never existed")]
    NoPinnedWeights(u64),
    #[error("unknown job id {0}: it finished, was cancelled, or never existed")]
    UnknownJob(u64),
    #[error("job {0} is no longer collecting results")]
    NotCollecting(u64),
    /// A malformed gradient stream: the worker is refused for this step.
    #[error("{0}")]
    BadGradientStream(String),
    /// A malformed result stream.
    #[error("{0}")]
    BadResult(String),
    #[error("the coordinator holds {0} workers, its cap: raise ddpm-coord --max-members, or stop idle workers")]
    TooManyMembers(usize),
    #[error("a worker's {what} may have at most {max} characters, got {got}")]
    TooLong { what: &'static str, got: usize, max: usize },
    #[error("an Attach call must start with a HeartbeatRequest naming the worker")]
    EmptyAttach,
    #[error(transparent)]
    Round(#[from] RoundError),
    /// A chunk fed to the shadow that it does not expect: the worker goes on.
    #[error("the coordinator's copy of the state refused a chunk: {0}")]
    Feed(#[from] FeedError),
    /// An uploaded state that was not asked for, or is malformed: the
    /// worker goes on, another replica is asked.
    #[error("the coordinator refused the uploaded state: {0}")]
    Upload(#[from] UploadError),
    #[error("the uploaded state is malformed: {0}")]
    BadUpload(String),
    /// The NCCL unique id's hand-out (NcclUniqueId).
    #[error(transparent)]
    NcclId(#[from] NcclIdError),
    /// A checkpoint shard's report (ReportShard) that no checkpoint waits for.
    #[error("the coordinator refused the shard report: {0}")]
    Shard(#[from] ShardError),
    /// No peer can send this worker its state (SyncFromPeer): it takes
    /// it through the coordinator (FetchState).
    #[error("no peer can send the state: {0}; fetch it from the coordinator")]
    NoPeerSync(&'static str),
    #[error("no replica was idle at the run's step within {0:.0} s to send the state; fetch it from the coordinator")]
    NoPeerIdle(f64),
    #[error("{0}")]
    Internal(String),
}

impl From<RosterError> for RpcError {
    fn from(e: RosterError) -> Self {
        match e {
            RosterError::Unknown(id) => Self::UnknownWorker(id),
            RosterError::NotReady(id) => Self::NotReady(id),
            RosterError::WrongSession(id) => Self::WrongSession(id),
            RosterError::Full(max) => Self::TooManyMembers(max),
        }
    }
}

impl RpcError {
    /// The gRPC code and what the worker must do.
    fn code_and_action(&self) -> (Code, WorkerAction) {
        use WorkerAction::{NextWork, Quit, Reconnect, Rejoin, Stop, Unspecified};
        match self {
            Self::UnknownWorker(_) => (Code::NotFound, Rejoin),
            Self::NotReady(_) => (Code::FailedPrecondition, Rejoin),
            Self::WrongSession(_) | Self::NotAWorker => (Code::PermissionDenied, Quit),
            Self::ProtocolVersion { .. } | Self::LayoutMismatch { .. } | Self::NoPeerEndpoint | Self::BadPeerEndpoint(_) => {
                (Code::FailedPrecondition, Quit)
            }
            // A full roster may have room later: the worker retries its join.
            Self::TooManyMembers(_) => (Code::ResourceExhausted, Rejoin),
            Self::UnknownRole(_) | Self::UnknownStateKind(_) | Self::BadResult(_) | Self::EmptyAttach | Self::TooLong { .. } => {
                (Code::InvalidArgument, Quit)
            }
            Self::RunOver => (Code::Unavailable, Stop),
            Self::Stopping => (Code::Unavailable, Reconnect),
            Self::NoPinnedWeights(_) | Self::UnknownJob(_) | Self::NotCollecting(_) => (Code::NotFound, NextWork),
            Self::BadGradientStream(_) => (Code::InvalidArgument, Rejoin),
            Self::Round(r) => match r {
                RoundError::NotMember { .. } => (Code::FailedPrecondition, Rejoin),
                RoundError::WrongStep { .. } | RoundError::Over { .. } | RoundError::NoRound { .. } | RoundError::Abandoned { .. } => {
                    (Code::Aborted, NextWork)
                }
                RoundError::WrongElements { .. }
                | RoundError::BadDtype(_)
                | RoundError::WrongDtype { .. }
                | RoundError::Refused(_)
                | RoundError::BadLoss { .. }
                | RoundError::BadNorms { .. } => (Code::InvalidArgument, Rejoin),
                RoundError::AlreadyStreaming { .. } => (Code::AlreadyExists, Quit),
            },
            Self::Feed(_) | Self::Upload(_) => (Code::FailedPrecondition, NextWork),
            Self::BadUpload(_) => (Code::InvalidArgument, NextWork),
            // The checkpoint was given up (another replica failed, a newer one
            // began): the shard is simply not used.
            Self::Shard(ShardError::NotWaiting { .. }) => (Code::FailedPrecondition, NextWork),
            Self::Shard(ShardError::NotAsked { .. } | ShardError::Again { .. }) => (Code::InvalidArgument, NextWork),
            Self::NcclId(e) => match e {
                // A member that sends what the protocol does not allow.
                NcclIdError::WrongLength { .. } | NcclIdError::NotRankZero { .. } => (Code::InvalidArgument, Rejoin),
                NcclIdError::NotMember { .. } | NcclIdError::AlreadyOffered { .. } => (Code::FailedPrecondition, Rejoin),
                // An attempt that ended: the next assignment names the new epoch.
                NcclIdError::StaleEpoch { .. } => (Code::FailedPrecondition, NextWork),
                NcclIdError::Ended { .. } => (Code::Aborted, NextWork),
            },
            // The worker falls back to FetchState, whose answer directs it.
            Self::NoPeerSync(_) => (Code::FailedPrecondition, NextWork),
            Self::NoPeerIdle(_) => (Code::DeadlineExceeded, NextWork),
            Self::Internal(_) => (Code::Internal, Unspecified),
        }
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        let (code, action) = e.code_and_action();
        directive::status(code, e.to_string(), action)
    }
}

impl From<RoundError> for Status {
    fn from(e: RoundError) -> Self {
        RpcError::Round(e).into()
    }
}

impl From<RosterError> for Status {
    fn from(e: RosterError) -> Self {
        RpcError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: impl Into<Status>, code: Code, action: WorkerAction) -> Status {
        let s = e.into();
        assert_eq!((s.code(), directive::action(&s)), (code, action), "{}", s.message());
        s
    }

    #[test]
    fn each_error_has_its_code_and_directive() {
        let s = check(RpcError::UnknownWorker(12345), Code::NotFound, WorkerAction::Rejoin);
        assert!(s.message().contains("unknown worker id 12345"));
        let v = RpcError::ProtocolVersion { got: 99, want: 1, version: "0.1.0" };
        let s = check(v, Code::FailedPrecondition, WorkerAction::Quit);
        assert!(s.message().contains("protocol version 99") && s.message().contains("version 1"));
        check(RpcError::RunOver, Code::Unavailable, WorkerAction::Stop);
        let s = check(RpcError::NoPeerIdle(30.0), Code::DeadlineExceeded, WorkerAction::NextWork);
        assert!(s.message().contains("within 30 s") && s.message().contains("fetch it from the coordinator"));
        check(RpcError::Stopping, Code::Unavailable, WorkerAction::Reconnect);
        check(RpcError::UnknownJob(3), Code::NotFound, WorkerAction::NextWork);
        check(RosterError::NotReady(2), Code::FailedPrecondition, WorkerAction::Rejoin);
        let abandoned = RoundError::Abandoned { step: 1, attempt: 0, reason: "worker 2 stopped answering".into() };
        check(abandoned, Code::Aborted, WorkerAction::NextWork);
        let s = check(RoundError::Refused("chunk 0 has 10 bytes".into()), Code::InvalidArgument, WorkerAction::Rejoin);
        assert_eq!(s.message(), "chunk 0 has 10 bytes");
        check(RoundError::NotMember { worker: 1, step: 2, attempt: 0 }, Code::FailedPrecondition, WorkerAction::Rejoin);
        check(RpcError::Internal("x".into()), Code::Internal, WorkerAction::Unspecified);
        check(RpcError::NcclId(NcclIdError::WrongLength { got: 3, want: 128 }), Code::InvalidArgument, WorkerAction::Rejoin);
        check(RpcError::NcclId(NcclIdError::NotRankZero { worker: 2, rank: 1, epoch: 9 }), Code::InvalidArgument, WorkerAction::Rejoin);
        check(RpcError::NcclId(NcclIdError::StaleEpoch { got: 1, current: None }), Code::FailedPrecondition, WorkerAction::NextWork);
        check(RpcError::NcclId(NcclIdError::Ended { epoch: 1 }), Code::Aborted, WorkerAction::NextWork);
    }
}
