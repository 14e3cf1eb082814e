//! A training state on the wire (FetchState from the coordinator, PushState
//! from a replica): named flat float32 tensors of equal length, a header
//! then chunks of at most [`STATE_CHUNK_BYTES`], the tensors concatenated
//! in the header's order.

use crate::proto;

use super::error::WireError;

/// Bytes of tensor data per state chunk.
pub const STATE_CHUNK_BYTES: usize = 4 << 20;

/// The tensors of a training replica's state, in stream order.
pub const TRAINING: [&str; 3] = ["params", "adam_m", "adam_v"];

/// The same with the EMA (`[dist] shadow = "off"`: the replicas keep it).
pub const TRAINING_WITH_EMA: [&str; 4] = ["params", "adam_m", "adam_v", "ema"];

/// The chunks of `tensors` (each `header.elements` long), made as they
/// are read (a state is hundreds of MB: never all of it twice), the header
/// in the first.
pub fn chunks<'a>(tensors: Vec<&'a [f32]>, header: proto::StateHeader) -> impl Iterator<Item = proto::StateChunk> + 'a {
    let per = STATE_CHUNK_BYTES / 4;
    let mut first = Some(header);
    let pieces = tensors.into_iter().flat_map(move |values| values.chunks(per));
    // An empty state still sends its header.
    let pieces = pieces.map(Some).chain(std::iter::once(None));
    pieces.filter_map(move |piece| match (piece, first.take()) {
        (Some(values), header) => Some(proto::StateChunk { header, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }),
        (None, Some(header)) => Some(proto::StateChunk { header: Some(header), data: Default::default() }),
        (None, None) => None,
    })
}

/// `count` float32 tensors of `elements` each from their concatenated
/// little-endian bytes.
pub fn split(bytes: &[u8], count: usize, elements: usize) -> Result<Vec<Vec<f32>>, WireError> {
    let want = count * elements * 4;
    if bytes.len() != want {
        return Err(WireError::StateSize { got: bytes.len(), want, tensors: count, elements });
    }
    if elements == 0 {
        return Ok(vec![Vec::new(); count]);
    }
    let decode = |b: &[u8]| b.chunks_exact(4).map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]])).collect();
    Ok(bytes.chunks_exact(elements * 4).map(decode).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_its_chunks_and_a_short_one_is_refused() {
        let a: Vec<f32> = (0..3_000_000).map(|i| i as f32).collect();
        let b: Vec<f32> = a.iter().map(|x| -x).collect();
        let header = proto::StateHeader { elements: a.len() as u64, ..Default::default() };
        let chunks: Vec<_> = chunks(vec![a.as_slice(), b.as_slice()], header).collect();
        assert!(chunks.len() > 2 && chunks[0].header.is_some() && chunks[1..].iter().all(|c| c.header.is_none()));
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(split(&bytes, 2, a.len()).unwrap(), vec![a.clone(), b]);
        assert!(matches!(split(&bytes[4..], 2, a.len()), Err(WireError::StateSize { .. })));
    }
}
