//! Why a ring broke, as types: what one link saw ([`LinkFault`]), which
//! neighbour it was ([`RingError`]), and what a member reports to the
//! coordinator ([`RingFault`]). The kind is the contract: it travels in
//! the fault report's `kind` field and the coordinator's verdict reads it,
//! never the text, which is there for the people reading the logs.

use std::io;

use crate::proto;

/// What went wrong on a ring link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingFaultKind {
    /// The successor's listener could not be reached within the peer timeout.
    Unreachable,
    /// The predecessor did not dial in (with the attempt's key) within the
    /// peer timeout.
    NotConnected,
    /// A neighbour connected but sent or took nothing within the peer timeout.
    Stalled,
    /// A neighbour closed or reset the connection.
    Closed,
    /// Reading or writing the connection failed for another reason.
    Io,
    /// A neighbour sent bytes the protocol does not allow at that point
    /// (another frame than the one due, an answer that is none, a count of
    /// frames it was never sent, a chunk that does not decode). A broken
    /// neighbour upstream cannot cause this, only the sender itself.
    Malformed,
}

impl RingFaultKind {
    pub fn to_proto(self) -> proto::RingFaultKind {
        match self {
            RingFaultKind::Unreachable => proto::RingFaultKind::Unreachable,
            RingFaultKind::NotConnected => proto::RingFaultKind::NotConnected,
            RingFaultKind::Stalled => proto::RingFaultKind::Stalled,
            RingFaultKind::Closed => proto::RingFaultKind::Closed,
            RingFaultKind::Io => proto::RingFaultKind::Io,
            RingFaultKind::Malformed => proto::RingFaultKind::Malformed,
        }
    }

    /// The kind a report names; `None` for a report without one (a worker
    /// of an older version) or with one this build does not know.
    pub fn from_proto(v: i32) -> Option<Self> {
        match proto::RingFaultKind::try_from(v).ok()? {
            proto::RingFaultKind::Unspecified => None,
            proto::RingFaultKind::Unreachable => Some(RingFaultKind::Unreachable),
            proto::RingFaultKind::NotConnected => Some(RingFaultKind::NotConnected),
            proto::RingFaultKind::Stalled => Some(RingFaultKind::Stalled),
            proto::RingFaultKind::Closed => Some(RingFaultKind::Closed),
            proto::RingFaultKind::Io => Some(RingFaultKind::Io),
            proto::RingFaultKind::Malformed => Some(RingFaultKind::Malformed),
        }
    }
}

/// What one end of a link saw go wrong: the kind, and the words for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct LinkFault {
    pub kind: RingFaultKind,
    /// What the neighbour did, as the end of a sentence that starts with
    /// it ("sent nothing for 2.0 s (stalled?)").
    pub detail: String,
}

impl LinkFault {
    pub fn new(kind: RingFaultKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    pub fn stalled(detail: impl Into<String>) -> Self {
        Self::new(RingFaultKind::Stalled, detail)
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RingFaultKind::Malformed, detail)
    }

    /// A failed read or write: `Closed` when the other end went away (end
    /// of stream, reset, broken pipe), else `Io`.
    pub fn io(context: &str, e: &io::Error) -> Self {
        use io::ErrorKind::*;
        let kind = match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => RingFaultKind::Closed,
            _ => RingFaultKind::Io,
        };
        Self::new(kind, format!("{context}: {e}"))
    }
}

/// Which neighbour broke the ring, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the predecessor {0}")]
    Prev(LinkFault),
    #[error("the successor {0}")]
    Next(LinkFault),
}

impl RingError {
    pub fn kind(&self) -> RingFaultKind {
        match self {
            RingError::Prev(f) | RingError::Next(f) => f.kind,
        }
    }
}

/// A member's report that its ring broke: the neighbour it holds
/// responsible, what kind of fault, and the words for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RingFault {
    /// The worker id of the neighbour at fault.
    pub suspect: u64,
    pub kind: RingFaultKind,
    /// "the predecessor sent nothing for 2.0 s (stalled?)".
    pub reason: String,
}

impl RingFault {
    /// `e` blamed on the worker `suspect`.
    pub fn new(suspect: u64, e: &RingError) -> Self {
        Self { suspect, kind: e.kind(), reason: e.to_string() }
    }

    pub fn to_proto(&self) -> proto::RingFault {
        proto::RingFault { suspect: self.suspect, reason: self.reason.clone(), kind: self.kind.to_proto() as i32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_crosses_the_wire_and_an_unknown_one_is_none() {
        use RingFaultKind::*;
        for k in [Unreachable, NotConnected, Stalled, Closed, Io, Malformed] {
            assert_eq!(RingFaultKind::from_proto(k.to_proto() as i32), Some(k));
        }
        assert_eq!(RingFaultKind::from_proto(0), None);
        assert_eq!(RingFaultKind::from_proto(999), None);
    }

    #[test]
    fn a_peer_that_went_away_is_closed_and_other_errors_are_io() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(LinkFault::io("read", &eof).kind, RingFaultKind::Closed);
        assert_eq!(LinkFault::io("write", &io::Error::from(io::ErrorKind::BrokenPipe)).kind, RingFaultKind::Closed);
        let other = LinkFault::io("read", &io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(other.kind, RingFaultKind::Io);
        assert!(other.to_string().starts_with("read: "), "{other}");
        let f = RingFault::new(7, &RingError::Prev(LinkFault::stalled("sent nothing for 2.0 s (stalled?)")));
        assert_eq!((f.suspect, f.kind), (7, RingFaultKind::Stalled));
        assert_eq!(f.to_string(), "the predecessor sent nothing for 2.0 s (stalled?)");
    }
}
