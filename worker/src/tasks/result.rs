//! A job task's result on the wire: a header, then each part that is
//! present (images, feature sums, score sums, bound sums) as its own
//! chunks tagged with the part's name. Absent parts are not sent; the
//! coordinator checks each part against what the task can hold.

use bytes::Bytes;
use ddpm::proto::{self, result_message, ResultPart};

use super::error::TaskError;
use crate::client::Client;
use crate::device::messages::EvalOutput;
use crate::directive::{CallResult, Directed};

/// Largest data chunk of a result message (well under gRPC's limits).
pub const CHUNK_BYTES: usize = 4 << 20;

/// The present parts of a task's result, in the order they are sent.
#[derive(Debug, Default, PartialEq)]
pub struct ResultParts(Vec<(ResultPart, Bytes)>);

impl ResultParts {
    /// A sample or analysis task's images, uint8 `[count, 3, R, R]`.
    pub fn images(images: Vec<u8>) -> Self {
        Self(vec![(ResultPart::Images, images.into())])
    }

    /// What an evaluation task measured: its images (when it drew them),
    /// then the sums it was asked for.
    pub fn measured(out: EvalOutput) -> Self {
        let parts = [
            (ResultPart::Images, out.images),
            (ResultPart::FeatureStats, out.features),
            (ResultPart::ScoreStats, out.scores),
            (ResultPart::BpdSums, out.bpd),
        ];
        Self(parts.into_iter().filter_map(|(part, data)| Some((part, Bytes::from(data?)))).collect())
    }
}

/// The messages of a result: the header (with the error's message, if the
/// task failed), then each part's chunks of at most `chunk_bytes`, part by
/// part.
/// A present part that is empty still sends one empty chunk, so the
/// coordinator sees that it is there.
pub fn result_messages(
    mut header: proto::ResultHeader,
    result: Result<ResultParts, TaskError>,
    chunk_bytes: usize,
) -> Vec<proto::ResultMessage> {
    let parts = match result {
        Ok(parts) => parts.0,
        Err(error) => {
            header.error = error.to_string();
            Vec::new()
        }
    };
    let mut msgs = vec![proto::ResultMessage { kind: Some(result_message::Kind::Header(header)) }];
    for (part, bytes) in parts {
        let mut start = 0;
        loop {
            // `Bytes::slice` shares the buffer: no copy of the images.
            let end = (start + chunk_bytes.max(1)).min(bytes.len());
            let data = proto::ResultData { part: part as i32, data: bytes.slice(start..end) };
            msgs.push(proto::ResultMessage { kind: Some(result_message::Kind::Data(data)) });
            start = end;
            if start >= bytes.len() {
                break;
            }
        }
    }
    msgs
}

/// Sends a task's result (or why it failed) to the coordinator. A job that
/// ended meanwhile answers with next-work: the caller drops the result.
pub async fn send_result(client: &mut Client, header: proto::ResultHeader, result: Result<ResultParts, TaskError>) -> CallResult<()> {
    let job_id = header.job_id;
    if let Err(e) = &result {
        tracing::error!(job = job_id, "task failed: {e}");
    }
    let msgs = result_messages(header, result, CHUNK_BYTES);
    client.submit_result(tokio_stream::iter(msgs)).await.directed(&format!("sending the result of job {job_id}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (part, chunk length) of each data message, and the header.
    fn shape(msgs: &[proto::ResultMessage]) -> (proto::ResultHeader, Vec<(ResultPart, usize)>) {
        let header = match &msgs[0].kind {
            Some(result_message::Kind::Header(h)) => h.clone(),
            other => panic!("first message {other:?}"),
        };
        let data = msgs[1..]
            .iter()
            .map(|m| match &m.kind {
                Some(result_message::Kind::Data(d)) => (ResultPart::try_from(d.part).unwrap(), d.data.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        (header, data)
    }

    #[test]
    fn parts_go_in_order_each_in_its_own_chunks() {
        let out = EvalOutput { images: Some(vec![1; 25]), features: Some(vec![2; 10]), scores: Some(vec![3; 3]), bpd: Some(vec![4; 11]) };
        let msgs = result_messages(proto::ResultHeader { job_id: 5, ..Default::default() }, Ok(ResultParts::measured(out)), 10);
        let (header, data) = shape(&msgs);
        assert_eq!(header.job_id, 5);
        assert!(header.error.is_empty());
        use ResultPart::*;
        assert_eq!(data, [(Images, 10), (Images, 10), (Images, 5), (FeatureStats, 10), (ScoreStats, 3), (BpdSums, 10), (BpdSums, 1)]);
        // The chunks of a part concatenate to its bytes.
        let images: Vec<u8> = msgs[1..4]
            .iter()
            .flat_map(|m| match &m.kind {
                Some(result_message::Kind::Data(d)) => d.data.to_vec(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(images, vec![1; 25]);
    }

    #[test]
    fn absent_parts_are_not_sent() {
        // A dataset task measuring features only: no images, no other sums.
        let out = EvalOutput { features: Some(vec![7; 4]), ..Default::default() };
        let (_, data) = shape(&result_messages(proto::ResultHeader::default(), Ok(ResultParts::measured(out)), 10));
        assert_eq!(data, [(ResultPart::FeatureStats, 4)]);
        let (_, data) = shape(&result_messages(proto::ResultHeader::default(), Ok(ResultParts::images(vec![0; 8])), 4));
        assert_eq!(data, [(ResultPart::Images, 4), (ResultPart::Images, 4)]);
    }

    #[test]
    fn a_present_empty_part_is_one_empty_chunk() {
        let (_, data) = shape(&result_messages(proto::ResultHeader::default(), Ok(ResultParts::images(Vec::new())), 4));
        assert_eq!(data, [(ResultPart::Images, 0)]);
    }

    #[test]
    fn a_failed_task_sends_its_error_and_no_data() {
        let failed = Err(TaskError::Shape("a progressive task must cover whole rows".into()));
        let msgs = result_messages(proto::ResultHeader { job_id: 2, ..Default::default() }, failed, 4);
        let (header, data) = shape(&msgs);
        assert_eq!(header.error, "a progressive task must cover whole rows");
        assert!(data.is_empty());
    }

    #[test]
    fn the_default_chunk_is_4_mib() {
        let msgs = result_messages(proto::ResultHeader::default(), Ok(ResultParts::images(vec![0; (4 << 20) + 1])), CHUNK_BYTES);
        let (_, data) = shape(&msgs);
        assert_eq!(data, [(ResultPart::Images, 4 << 20), (ResultPart::Images, 1)]);
    }
}
