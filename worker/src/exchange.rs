//! The gradient exchange of one training step: this worker's shard
//! gradient goes in, the step's reduced gradient and its outcome (apply or
//! skip, the clipping factor) come out, identical on every replica.
//!
//! [`GradientExchange`] is the seam for reduction backends; the training
//! step (`training.rs`) only calls the trait. [`CoordinatorExchange`] is
//! the first backend: the coordinator's `ReduceGradients` stream, which
//! sums every member's chunks and streams each reduced chunk back as soon
//! as all have arrived.

use std::future::Future;
use std::sync::Arc;

use ddpm::config::GradDtype;
use ddpm::proto::{self, gradient_message, reduced_message};
use ddpm::train::Outcome;
use ddpm::wire;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::device::messages::Computed;
use crate::directive::{CallError, Flow};

/// How an exchange ended.
#[derive(Debug)]
pub enum Exchanged {
    /// Every member's gradient was reduced: apply `outcome` with `grad`.
    Reduced { grad: Vec<f32>, outcome: Outcome },
    /// This attempt of the step will not complete (a member was lost); it
    /// is redone, so the worker asks for the next work.
    Abandoned(String),
    /// This worker's gradient was refused: it is no longer a member and
    /// must register again.
    Rejected(String),
    /// The run ended during the exchange.
    RunOver(String),
    /// The connection to the coordinator broke during the exchange.
    Lost(String),
}

/// A way to all-reduce one step's gradient across the replicas.
///
/// `assignment` is the step's (step, attempt, dtype, chunking, shard
/// size); `local` this worker's mean gradient over its shard with its loss
/// and compute time. An `Err` is a fault the worker exits with; the ends a
/// step can meet in a healthy run are [`Exchanged`] values.
pub trait GradientExchange {
    fn exchange(&mut self, assignment: &proto::TrainAssignment, local: Computed) -> impl Future<Output = anyhow::Result<Exchanged>> + Send;
}

/// The coordinator's `ReduceGradients` stream.
pub struct CoordinatorExchange<'a> {
    pub client: &'a mut Client,
    pub worker_id: u64,
}

impl GradientExchange for CoordinatorExchange<'_> {
    async fn exchange(&mut self, a: &proto::TrainAssignment, local: Computed) -> anyhow::Result<Exchanged> {
        let dtype = GradDtype::from_proto(a.grad_dtype)?;
        let total = local.grad.len();
        let chunk = a.chunk_elements.max(1) as usize;
        let header = proto::GradientHeader {
            worker_id: self.worker_id,
            step: a.step,
            attempt: a.attempt,
            elements: total as u64,
            dtype: dtype.to_proto() as i32,
            loss: local.loss,
            samples: a.shard_size,
            compute_s: local.compute_s,
            // The coordinator screens the chunks themselves.
            chunk_norms: Vec::new(),
        };
        // The upload runs beside the download: the coordinator streams a
        // reduced chunk back as soon as every member's copy of it arrived,
        // so both directions overlap. A small queue bounds the encoded
        // chunks held in memory.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let grad = Arc::new(local.grad);
        let sender = tokio::spawn(send_gradient(tx, header, grad, dtype, chunk));
        let context = format!("the all-reduce of step {} failed", a.step);
        let result = async {
            let mut inbound = self
                .client
                .reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| CallError::from_status(&s, &context))?
                .into_inner();
            let mut reduced = vec![0f32; total];
            let ranges: Vec<_> = wire::chunk_ranges(total, chunk).collect();
            let mut got = 0usize;
            let outcome = loop {
                match inbound.next().await {
                    Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Chunk(c)) })) => {
                        let range = ranges
                            .get(c.index as usize)
                            .ok_or_else(|| anyhow::anyhow!("reduced chunk index {} out of range", c.index))?
                            .clone();
                        wire::decode_into(&c.data, dtype, c.index, &mut reduced[range])?;
                        got += 1;
                    }
                    Some(Ok(proto::ReducedMessage { kind: Some(reduced_message::Kind::Outcome(o)) })) => break o,
                    Some(Ok(_)) => return Err(anyhow::anyhow!("empty reduced message").into()),
                    Some(Err(s)) => return Err(CallError::from_status(&s, &context)),
                    None => return Err(anyhow::anyhow!("the all-reduce of step {} ended without an outcome", a.step).into()),
                }
            };
            if got != ranges.len() {
                return Err(anyhow::anyhow!("received {got} of {} reduced chunks", ranges.len()).into());
            }
            let outcome = Outcome { apply: outcome.apply, grad_norm: outcome.grad_norm, clip_scale: outcome.clip_scale };
            Ok(Exchanged::Reduced { grad: reduced, outcome })
        }
        .await;
        // Whatever ended the download, the upload has nothing more to do.
        sender.abort();
        match result {
            Ok(done) => Ok(done),
            Err(e) => ended(e),
        }
    }
}

/// The typed end of an exchange the coordinator directed.
pub(crate) fn ended(e: CallError) -> anyhow::Result<Exchanged> {
    match e {
        CallError::Directed { flow: Flow::NextWork, reason, .. } => Ok(Exchanged::Abandoned(reason)),
        CallError::Directed { flow: Flow::Rejoin, reason, .. } => Ok(Exchanged::Rejected(reason)),
        CallError::Directed { flow: Flow::Stop, reason, .. } => Ok(Exchanged::RunOver(reason)),
        CallError::Lost { context, detail } => Ok(Exchanged::Lost(format!("{context}: {detail}"))),
        CallError::Fault(e) => Err(e),
    }
}

/// Streams the header, then every chunk in order, into the call. Stops
/// when the call ends (the receiver is gone).
async fn send_gradient(
    tx: tokio::sync::mpsc::Sender<proto::GradientMessage>,
    header: proto::GradientHeader,
    grad: Arc<Vec<f32>>,
    dtype: GradDtype,
    chunk: usize,
) {
    for msg in gradient_messages(header, &grad, dtype, chunk) {
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// The messages of one gradient upload, encoded lazily (one chunk at a
/// time, as the queue drains).
fn gradient_messages<'a>(
    header: proto::GradientHeader,
    grad: &'a [f32],
    dtype: GradDtype,
    chunk: usize,
) -> impl Iterator<Item = proto::GradientMessage> + 'a {
    let msg = |kind| proto::GradientMessage { kind: Some(kind) };
    let chunks = wire::chunk_ranges(grad.len(), chunk).enumerate().map(move |(i, range)| {
        let data = wire::encode(&grad[range], dtype);
        msg(gradient_message::Kind::Chunk(proto::GradientChunk { index: i as u32, data }))
    });
    std::iter::once(msg(gradient_message::Kind::Header(header))).chain(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_the_header_then_every_chunk_in_order() {
        let grad: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let header = proto::GradientHeader { worker_id: 7, step: 3, elements: 10, ..Default::default() };
        let msgs: Vec<_> = gradient_messages(header.clone(), &grad, GradDtype::F32, 4).collect();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].kind, Some(gradient_message::Kind::Header(header)));
        for (i, want) in [&grad[0..4], &grad[4..8], &grad[8..10]].into_iter().enumerate() {
            match &msgs[i + 1].kind {
                Some(gradient_message::Kind::Chunk(c)) => {
                    assert_eq!(c.index, i as u32);
                    assert_eq!(c.data, wire::encode(want, GradDtype::F32));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn directed_ends_are_typed_and_faults_are_errors() {
        let directed = |flow| CallError::Directed { flow, context: "the all-reduce of step 1".into(), reason: "why".into() };
        assert!(matches!(ended(directed(Flow::NextWork)), Ok(Exchanged::Abandoned(r)) if r == "why"));
        assert!(matches!(ended(directed(Flow::Rejoin)), Ok(Exchanged::Rejected(r)) if r == "why"));
        assert!(matches!(ended(directed(Flow::Stop)), Ok(Exchanged::RunOver(_))));
        let fault = ended(CallError::Fault(anyhow::anyhow!("the all-reduce of step 1 failed: reset"))).unwrap_err();
        assert_eq!(format!("{fault:#}"), "the all-reduce of step 1 failed: reset");
    }
}
