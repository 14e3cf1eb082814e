//! The worker's half of the error contract with the coordinator: every
//! error the coordinator returns carries a `WorkerAction` directive
//! (`ddpm::wire::directive`), and this is the one place that turns a failed
//! call into what the worker does next. The decision reads the directive
//! only, never the status code or message text: the message is for people
//! and goes to the logs.
//!
//! - `Rejoin`: the coordinator does not count this worker as a member:
//!   register again.
//! - `NextWork`: what the call was for is no longer wanted (an abandoned
//!   step attempt, a job that ended): drop it and ask for the next work.
//! - `Stop`: the run is over: exit cleanly.
//! - `Reconnect`: the coordinator stops before the run's end (SIGTERM, a
//!   node drain): as a lost coordinator, reconnect with backoff.
//! - No directive on a transport failure (UNAVAILABLE, UNKNOWN, CANCELLED:
//!   the connection broke, the coordinator died or restarts): the
//!   coordinator is lost; the worker reconnects with backoff and registers
//!   again (for as long as `--connect-timeout` allows).
//! - `Quit`, or no directive on any other code (a peer that is not a ddpm
//!   coordinator): a fault; the worker exits with the error.

use ddpm::proto::WorkerAction;
use ddpm::wire::directive;
use tonic::Status;

use crate::device::error::DeviceError;

/// What the coordinator told this worker to do instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Register again.
    Rejoin,
    /// Drop what the call was for and ask for the next work.
    NextWork,
    /// The run is over: exit cleanly.
    Stop,
}

/// A coordinator call (or the work around one) that did not give its answer.
#[derive(Debug)]
pub enum CallError {
    /// The coordinator directed this worker.
    Directed {
        flow: Flow,
        /// What the worker was doing, e.g. "asking for work".
        context: String,
        /// The coordinator's message, for the logs only.
        reason: String,
    },
    /// The connection to the coordinator broke: no directive, a transport code.
    Lost { context: String, detail: String },
    /// A fault: `Quit`, no directive on another code, or something this
    /// worker cannot work with. The worker exits with it.
    Fault(anyhow::Error),
}

/// The result of a step of the session that talks to the coordinator.
pub type CallResult<T> = Result<T, CallError>;

/// The flow a directive asks for; `None` for a fault (`Quit`, or no directive).
pub fn flow_of(action: WorkerAction) -> Option<Flow> {
    match action {
        WorkerAction::Rejoin => Some(Flow::Rejoin),
        WorkerAction::NextWork => Some(Flow::NextWork),
        WorkerAction::Stop => Some(Flow::Stop),
        WorkerAction::Quit | WorkerAction::Unspecified | WorkerAction::Reconnect => None,
    }
}

impl CallError {
    /// What a failed call to the coordinator means, `context` naming the call.
    pub fn from_status(status: &Status, context: &str) -> Self {
        let action = directive::action(status);
        match flow_of(action) {
            Some(flow) => Self::Directed { flow, context: context.to_string(), reason: status.message().to_string() },
            None if action == WorkerAction::Reconnect => Self::Lost { context: context.to_string(), detail: status.message().to_string() },
            None if action == WorkerAction::Unspecified && is_transport(status.code()) => {
                // tonic says "transport error"; why (a reset, a TLS alert) is in the sources.
                let why = std::error::Error::source(status).map(|e| format!(": {}", ddpm::runtime::error_chain(e))).unwrap_or_default();
                Self::Lost { context: context.to_string(), detail: format!("{:?}: {}{why}", status.code(), status.message()) }
            }
            None => Self::Fault(anyhow::anyhow!("{context}: {}", status.message())),
        }
    }
}

/// The codes tonic gives a call whose connection failed (a coordinator's
/// own errors always carry a directive).
fn is_transport(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Directed { flow, context, reason } => write!(f, "{context}: {reason} (directive: {flow:?})"),
            Self::Lost { context, detail } => write!(f, "{context}: lost the coordinator ({detail})"),
            Self::Fault(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for CallError {
    fn from(e: anyhow::Error) -> Self {
        Self::Fault(e)
    }
}

impl From<DeviceError> for CallError {
    fn from(e: DeviceError) -> Self {
        Self::Fault(e.into())
    }
}

impl From<ddpm::wire::WireError> for CallError {
    fn from(e: ddpm::wire::WireError) -> Self {
        Self::Fault(e.into())
    }
}

/// `result.directed("context")`: a tonic call's status read as a [`CallError`].
pub trait Directed<T> {
    fn directed(self, context: &str) -> CallResult<T>;
}

impl<T> Directed<T> for Result<T, Status> {
    fn directed(self, context: &str) -> CallResult<T> {
        self.map_err(|s| CallError::from_status(&s, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    impl CallError {
        /// The directed flow, if any.
        fn flow(&self) -> Option<Flow> {
            match self {
                Self::Directed { flow, .. } => Some(*flow),
                Self::Lost { .. } | Self::Fault(_) => None,
            }
        }
    }

    /// A status as the worker receives it: rebuilt from the wire form of
    /// its details.
    fn received(code: Code, message: &str, action: WorkerAction) -> Status {
        let s = directive::status(code, message, action);
        Status::with_details(s.code(), s.message(), s.details().to_vec().into())
    }

    #[test]
    fn each_directive_has_its_flow_whatever_the_code() {
        let cases = [
            (WorkerAction::Rejoin, Some(Flow::Rejoin)),
            (WorkerAction::NextWork, Some(Flow::NextWork)),
            (WorkerAction::Stop, Some(Flow::Stop)),
            (WorkerAction::Quit, None),
            (WorkerAction::Unspecified, None),
        ];
        for (action, want) in cases {
            for code in [Code::NotFound, Code::Aborted, Code::Unavailable, Code::InvalidArgument, Code::Internal] {
                let e = CallError::from_status(&received(code, "whatever", action), "asking for work");
                assert_eq!(e.flow(), want, "{action:?} with {code:?}");
            }
        }
    }

    #[test]
    fn the_message_text_decides_nothing() {
        // The old worker stopped on these words; without a directive they
        // are a lost connection (reconnect), whatever they say.
        let e = CallError::from_status(&Status::unavailable("the coordinator is shutting down"), "asking for work");
        assert!(matches!(e, CallError::Lost { .. }));
        assert_eq!(e.to_string(), "asking for work: lost the coordinator (Unavailable: the coordinator is shutting down)");
        // Another code without a directive: not a ddpm coordinator's answer.
        let e = CallError::from_status(&Status::permission_denied("go away"), "asking for work");
        assert!(matches!(e, CallError::Fault(_)));
        assert_eq!(e.to_string(), "asking for work: go away");
        // And with Rejoin, "run is over" does not stop the worker.
        let e = CallError::from_status(&received(Code::Unavailable, "the run is over", WorkerAction::Rejoin), "x");
        assert_eq!(e.flow(), Some(Flow::Rejoin));
    }

    #[test]
    fn a_directed_error_keeps_the_context_and_reason_for_the_logs() {
        let r: Result<(), Status> = Err(received(Code::Aborted, "worker 2 stopped answering", WorkerAction::NextWork));
        match r.directed("the all-reduce of step 3") {
            Err(CallError::Directed { flow, context, reason }) => {
                assert_eq!(flow, Flow::NextWork);
                assert_eq!(context, "the all-reduce of step 3");
                assert_eq!(reason, "worker 2 stopped answering");
            }
            other => panic!("{other:?}"),
        }
        let quit = CallError::from_status(&received(Code::FailedPrecondition, "layout differs", WorkerAction::Quit), "ready");
        assert_eq!(quit.to_string(), "ready: layout differs");
    }

    #[test]
    fn a_directive_of_another_domain_is_no_directive() {
        let details =
            tonic_types::ErrorDetails::with_error_info(WorkerAction::Stop.as_str_name(), "example.com", std::collections::HashMap::new());
        use tonic_types::StatusExt;
        let s = Status::with_error_details(Code::InvalidArgument, "bye", details);
        assert!(matches!(CallError::from_status(&s, "x"), CallError::Fault(_)));
    }
}
