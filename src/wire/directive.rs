//! What a worker must do after a failed call, carried as a typed directive
//! in the error's details (the gRPC rich error model: a
//! `google.rpc.ErrorInfo` with domain [`DOMAIN`] and the `WorkerAction`
//! name as its reason; see `proto/ddpm.proto`). The coordinator attaches
//! one to every error it returns to a worker; the worker reads it here and
//! never looks at the message text.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto::WorkerAction;

/// The ErrorInfo domain of ddpm's directives.
pub const DOMAIN: &str = "ddpm.v1";

/// A status with `code`, `message` for people and `action` for the worker.
pub fn status(code: Code, message: impl Into<String>, action: WorkerAction) -> Status {
    let details = ErrorDetails::with_error_info(action.as_str_name(), DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, message, details)
}

/// The directive of a status: `Unspecified` when it carries none (a fault,
/// or a peer that is not a ddpm coordinator).
pub fn action(status: &Status) -> WorkerAction {
    status
        .get_details_error_info()
        .filter(|info| info.domain == DOMAIN)
        .and_then(|info| WorkerAction::from_str_name(&info.reason))
        .unwrap_or(WorkerAction::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_survives_the_status_and_text_does_not_matter() {
        for a in [WorkerAction::Rejoin, WorkerAction::NextWork, WorkerAction::Stop, WorkerAction::Quit] {
            let s = status(Code::Unavailable, "anything at all", a);
            // Through the wire form of the details, as a client sees them.
            let back = Status::with_details(s.code(), s.message(), s.details().to_vec().into());
            assert_eq!(action(&back), a);
        }
        assert_eq!(action(&Status::unavailable("the coordinator is shutting down")), WorkerAction::Unspecified);
    }
}
