//! ReduceGradients: a member's gradient stream into the step's round, and
//! the reduced chunks and the outcome back. A malformed stream fails the
//! round with the member as its culprit, a chunk that screening refuses
//! with whichever member it names, through [`Round::fail`].

use std::sync::Arc;

use ddpm::proto::{self, gradient_message};
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::round::{deliver, OfferError, Round, RoundFailure};

/// Feeds the rest of member `worker`'s stream (after the header) to
/// `round` at rank `rank`, until it ends or fails.
pub async fn pump(round: Arc<Round>, rank: usize, worker: u64, mut inbound: Streaming<proto::GradientMessage>) {
    let fail_member = |culprit: u64, reason: String| {
        tracing::warn!(worker = culprit, step = round.step, "rejecting gradient: {reason}");
        round.fail(RoundFailure { culprit: Some(culprit), reason })
    };
    let fail = |reason: String| fail_member(worker, reason);
    let failures = loop {
        match inbound.next().await {
            Some(Ok(proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(c)) })) => match round.offer(rank, c) {
                Ok(sends) => {
                    for (out, msg) in sends {
                        let _ = out.send(Ok(msg)).await;
                    }
                }
                Err(OfferError::Malformed(e)) => break fail(format!("worker {worker} sent a bad gradient chunk: {e}")),
                Err(e @ OfferError::Screened { culprit, .. }) => break fail_member(culprit, e.to_string()),
            },
            Some(Ok(_)) => break fail(format!("worker {worker} sent a second header or an empty message")),
            Some(Err(e)) => break fail(format!("worker {worker}'s gradient stream failed: {}", e.message())),
            None => match round.owes(rank) {
                Some(sent) => break fail(format!("worker {worker}'s gradient stream ended after {sent} chunks")),
                None => break Vec::new(),
            },
        }
    };
    deliver(failures).await;
}
