//! Who broke a ring, from the members' fault reports. A report names a
//! neighbour and the kind of fault its link showed
//! ([`ddpm::ring::RingFaultKind`]); the verdict is decided on the kinds and
//! on who reported, never on the reports' text.
//!
//! When one member fails, the others cascade: its successor sees it stall
//! or close, then stops in turn, and so on round the ring; every member
//! that is still alive reports the neighbour it lost. So:
//!
//! 1. A `Malformed` report names its suspect outright: a neighbour upstream
//!    that broke makes a member stop or close, never send bytes out of
//!    the protocol, so only the sender can have done it.
//! 2. Else the culprit is a member that was named but reported nothing
//!    itself (a frozen or dead member cannot report).
//! 3. Else (everyone reported) the first report in rank order.

use ddpm::ring::RingFaultKind;

/// What one member reported.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultReport {
    /// The neighbour it holds responsible.
    pub suspect: u64,
    /// `None`: the report named no kind (a worker built before kinds).
    pub kind: Option<RingFaultKind>,
    /// For the log and the failure's reason.
    pub reason: String,
}

/// The report that names the culprit, with its reporter, from the reports
/// of `members` (rank order; `None` where a member reported nothing).
/// `None` when nobody reported.
pub fn culprit<'a>(members: &[u64], faults: &'a [Option<FaultReport>]) -> Option<(u64, &'a FaultReport)> {
    let reports = || members.iter().zip(faults).filter_map(|(&by, f)| f.as_ref().map(|f| (by, f)));
    let silent = |f: &FaultReport| !reports().any(|(by, _)| by == f.suspect);
    reports()
        .find(|(_, f)| f.kind == Some(RingFaultKind::Malformed))
        .or_else(|| reports().find(|(_, f)| silent(f)))
        .or_else(|| reports().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(suspect: u64, kind: RingFaultKind) -> Option<FaultReport> {
        Some(FaultReport { suspect, kind: Some(kind), reason: format!("{kind:?}") })
    }

    #[test]
    fn a_frozen_member_is_the_one_named_that_did_not_report() {
        // 2 froze: 3 (after it) saw it stall, 1 (before it) saw 3 close.
        let faults = [report(3, RingFaultKind::Closed), None, report(2, RingFaultKind::Stalled)];
        let (by, f) = culprit(&[1, 2, 3], &faults).unwrap();
        assert_eq!((by, f.suspect), (3, 2));
        assert_eq!(culprit(&[1, 2, 3], &[None, None, None]), None);
    }

    #[test]
    fn a_member_that_sent_garbage_is_named_even_when_it_reported_too() {
        // 2 sent 3 frames out of the protocol; when 3 stopped, 2 saw its
        // successor close and reported it, so both are named and both reported.
        let faults = [None, report(3, RingFaultKind::Closed), report(2, RingFaultKind::Malformed)];
        assert_eq!(culprit(&[1, 2, 3], &faults).map(|(by, f)| (by, f.suspect)), Some((3, 2)));
        // Without the kind the first report in rank order would be taken.
        let mut unkind = faults.clone();
        unkind[2].as_mut().unwrap().kind = None;
        assert_eq!(culprit(&[1, 2, 3], &unkind).map(|(by, f)| (by, f.suspect)), Some((2, 3)));
    }
}
