//! ReduceGradients: a member's gradient stream into the step's round, and
//! the reduced chunks and the outcome back. A malformed stream fails the
//! round with the member as its culprit, a chunk that screening refuses
//! with whichever member it names, through [`Round::fail`]. With the ring
//! backend the stream carries only scalars: the norms of the member's own
//! gradient (in its header or after it), the digests of its reduced
//! segment and of its replica and, if its ring broke, a fault report
//! naming a neighbour.

use std::sync::Arc;

use ddpm::proto::{self, gradient_message};
use ddpm::ring::RingFaultKind;
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::round::verdict::FaultReport;
use crate::round::{deliver, OfferError, Round, RoundFailure};

/// Feeds the rest of member `worker`'s stream (after the header) to
/// `round` at rank `rank`, until it ends or fails.
pub async fn pump(round: Arc<Round>, rank: usize, worker: u64, mut inbound: Streaming<proto::GradientMessage>) {
    let fail_member = |culprit: u64, reason: String| {
        tracing::warn!(worker = culprit, step = round.step, "rejecting gradient: {reason}");
        round.fail(RoundFailure::new(Some(culprit), reason))
    };
    let fail = |reason: String| fail_member(worker, reason);
    let failures = loop {
        let offered = match inbound.next().await {
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(c)) })) => round.offer(rank, c),
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Segment(d)) })) => round.offer_segment(rank, &d),
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Replica(d)) })) => round.offer_replica(rank, d.digest),
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Norms(n)) })) => round.offer_norms(rank, n.norms),
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Fault(f)) })) if round.is_ring() => {
                let kind = RingFaultKind::from_proto(f.kind);
                tracing::warn!(worker, suspect = f.suspect, ?kind, step = round.step, "ring fault reported: {}", f.reason);
                let report = FaultReport { suspect: f.suspect, kind, reason: f.reason.chars().take(1000).collect() };
                if !round.report_fault(rank, report) {
                    break fail(format!(
                        "worker {worker} reported a ring fault naming {}, which is not another member of the step",
                        f.suspect
                    ));
                }
                // The reporter keeps its stream open for the verdict; the
                // round ends from the training loop (`Round::ring_verdict`).
                continue;
            }
            Some(Ok(_)) => break fail(format!("worker {worker} sent a second header or an empty message")),
            Some(Err(e)) => break fail(format!("worker {worker}'s gradient stream failed: {}", e.message())),
            None => match round.owes(rank) {
                Some(sent) => break fail(format!("worker {worker}'s gradient stream ended after {sent} chunks")),
                None => break Vec::new(),
            },
        };
        match offered {
            Ok(sends) => {
                // Ring backend: the last digest completes the round, whose
                // audit or replica check may fail it.
                if let Some(failure) = round.pending_failure() {
                    log_failure(&failure, round.step);
                    break round.fail(failure);
                }
                for (out, msg) in sends {
                    let _ = out.send(Ok(msg)).await;
                }
            }
            Err(OfferError::Malformed(e)) => break fail(format!("worker {worker} sent a bad gradient chunk: {e}")),
            Err(e @ OfferError::Screened { culprit, .. }) => break fail_member(culprit, e.to_string()),
            Err(e) => break fail(format!("worker {worker} {e}")),
        }
    };
    deliver(failures).await;
}

/// Logs a failure the round found itself (screening a ring's norms, or its
/// audit), before the round is failed with it.
pub fn log_failure(failure: &RoundFailure, step: u64) {
    match failure.culprit {
        Some(worker) => tracing::warn!(worker, step, "rejecting gradient: {}", failure.reason),
        None => tracing::warn!(step, "the ring's reduced gradient failed its audit: {}", failure.reason),
    }
}
