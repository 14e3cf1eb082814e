//! Bulk data out of the coordinator: a piece of work as its messages (the
//! assignment, then its samples in batches), and a state snapshot as a
//! stream of chunks.

use std::pin::Pin;

use ddpm::proto::{self, work_message};
use ddpm::wire;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::state::Snapshot;
use crate::work::Work;

/// What a streaming rpc of the service answers with.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Bytes of sample data per WorkMessage.
const SAMPLE_BATCH_BYTES: usize = 2 << 20;

/// The messages of one piece of work: the assignment, then for a training
/// step (or a task on dataset images) the samples in batches of about
/// SAMPLE_BATCH_BYTES.
pub fn work_messages(work: Work) -> Vec<proto::WorkMessage> {
    let msg = |kind| proto::WorkMessage { kind: Some(kind) };
    match work {
        Work::Train { assignment, samples } => with_samples(msg(work_message::Kind::Train(assignment)), samples),
        Work::Eval { assignment, samples } => with_samples(msg(work_message::Kind::Eval(assignment)), samples),
        Work::Analysis { assignment, samples } => with_samples(msg(work_message::Kind::Analysis(assignment)), samples),
        Work::Sample(a) => vec![msg(work_message::Kind::Sample(a))],
        Work::Resync(reason) => vec![msg(work_message::Kind::Resync(proto::Resync { reason }))],
        Work::UploadState(step) => vec![msg(work_message::Kind::UploadState(proto::UploadState { step }))],
        Work::WriteShard(w) => vec![msg(work_message::Kind::WriteShard(w))],
        Work::SendState(s) => vec![msg(work_message::Kind::SendState(s))],
        Work::FeedSpare(f) => vec![msg(work_message::Kind::FeedSpare(f))],
        Work::Shutdown { reason, finished } => vec![msg(work_message::Kind::Shutdown(proto::Shutdown { reason, finished }))],
    }
}

fn with_samples(first: proto::WorkMessage, samples: Vec<proto::Sample>) -> Vec<proto::WorkMessage> {
    let msg = |batch| proto::WorkMessage { kind: Some(work_message::Kind::Samples(proto::SampleBatch { samples: batch })) };
    let mut out = vec![first];
    let mut batch = Vec::new();
    let mut bytes = 0;
    for s in samples {
        bytes += s.data.len();
        batch.push(s);
        if bytes >= SAMPLE_BATCH_BYTES {
            out.push(msg(std::mem::take(&mut batch)));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        out.push(msg(batch));
    }
    out
}

/// Streams `snap` as chunks of about `wire::state::STATE_CHUNK_BYTES`, the header first.
pub fn state_stream(snap: Snapshot, header: proto::StateHeader) -> mpsc::Receiver<Result<proto::StateChunk, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let tensors = snap.tensors.iter().map(|(_, v)| v.as_slice()).collect();
        for chunk in wire::state::chunks(tensors, header) {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn samples_follow_their_assignment_in_batches() {
        let samples: Vec<proto::Sample> = (0..5).map(|i| proto::Sample { position: i, data: Bytes::from(vec![0u8; 1 << 20]) }).collect();
        let msgs = work_messages(Work::Train { assignment: Default::default(), samples });
        assert!(matches!(msgs[0].kind, Some(work_message::Kind::Train(_))));
        let sizes: Vec<usize> = msgs[1..]
            .iter()
            .map(|m| match &m.kind {
                Some(work_message::Kind::Samples(b)) => b.samples.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
