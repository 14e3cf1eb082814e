//! SubmitResult: a task's result as named parts (images, feature sums,
//! score sums, bound sums), each checked against what the task can hold
//! before it is allocated.

use ddpm::proto::{self, result_message, ResultPart as Part};
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::errors::RpcError;
use crate::jobs::results::ResultPart;

/// Largest evaluation sums a result may carry (2048-d features: 16.8 MB).
const MAX_SUM_BYTES: usize = 1 << 30;
/// Largest image data a result may carry.
const MAX_IMAGE_BYTES: u64 = 1 << 34;

/// The bytes of images a task of `header`'s count and resolution holds, if
/// a result may carry that many. Checked: both are a peer's numbers.
fn image_bytes(header: &proto::ResultHeader) -> Result<usize, RpcError> {
    let res = header.resolution as u64;
    res.checked_mul(res)
        .and_then(|px| px.checked_mul(3))
        .and_then(|per| header.count.checked_mul(per))
        .filter(|&n| n <= MAX_IMAGE_BYTES)
        .map(|n| n as usize)
        .ok_or_else(|| RpcError::BadResult(format!("result of {} images at {res}px is too large", header.count)))
}

/// Reads the parts of a result stream whose header was `header`.
pub async fn read_parts(header: &proto::ResultHeader, inbound: &mut Streaming<proto::ResultMessage>) -> Result<ResultPart, RpcError> {
    let mut part = ResultPart::new(header);
    let res = header.resolution as u64;
    let image_bytes = image_bytes(header)?;
    while let Some(msg) = inbound.next().await {
        let msg = msg.map_err(|s| RpcError::BadResult(format!("the result stream failed: {}", s.message())))?;
        let data = match msg.kind {
            Some(result_message::Kind::Data(d)) => d,
            _ => return Err(RpcError::BadResult("a result stream has one header, then data".into())),
        };
        let (slot, limit, what) = match Part::try_from(data.part) {
            Ok(Part::Images) => (&mut part.images, image_bytes, "images"),
            Ok(Part::FeatureStats) => (&mut part.features, MAX_SUM_BYTES, "feature sums"),
            Ok(Part::ScoreStats) => (&mut part.scores, MAX_SUM_BYTES, "score sums"),
            Ok(Part::BpdSums) => (&mut part.bpd, MAX_SUM_BYTES, "bound sums"),
            _ => return Err(RpcError::BadResult(format!("unknown result part {}", data.part))),
        };
        let buf = slot.get_or_insert_with(|| Vec::with_capacity(limit.min(data.data.len().max(1 << 20)).min(1 << 28)));
        if buf.len() + data.data.len() > limit {
            return Err(RpcError::BadResult(format!(
                "result has more than the {limit} bytes of {what} a task of {} images at {res}px can hold",
                header.count
            )));
        }
        buf.extend_from_slice(&data.data);
    }
    if let Some(images) = &part.images {
        if images.len() != image_bytes {
            return Err(RpcError::BadResult(format!("result has {} bytes of images, expected {image_bytes}", images.len())));
        }
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes_a_peer_sends_are_checked_not_trusted() {
        let h = |count, resolution| proto::ResultHeader { count, resolution, ..Default::default() };
        assert_eq!(image_bytes(&h(2, 8)).unwrap(), 2 * 3 * 64);
        for bad in [h(u64::MAX, u32::MAX), h(u64::MAX, 2), h(1, u32::MAX)] {
            let e = image_bytes(&bad).unwrap_err();
            assert!(e.to_string().contains("is too large"), "{e}");
        }
    }
}
