//! A replica's training state sent straight to a joining peer over the
//! peer listeners the ring uses (SendState / SyncFromPeer in the proto):
//! the sender dials the receiver's listener with the transfer's hello
//! (epoch, its id, the secret the coordinator gave both), then sends one
//! frame with the state's header (a `StateHeader`, protobuf) and the
//! tensors' little-endian float32 bytes in frames of at most
//! `STATE_CHUNK_BYTES`. The receiver knows from the header how many
//! bytes are due and checks everything it can before the state is used:
//! the tensors and sizes the run's model has, the step it was promised,
//! and the parameters' digest against the one the replicas agreed on.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::fault::LinkFault;
use super::frame::{self, HEADER_BYTES};
use crate::proto;
use crate::train::flat;
use crate::wire::state::{STATE_CHUNK_BYTES, TRAINING_WITH_EMA};

/// The header frame's tag; data frames carry `DATA_TAG` and their index.
const HEADER_TAG: u32 = 0x5354_4154; // "STAT"
const DATA_TAG: u32 = 0x4441_5441; // "DATA"
/// A header is a few names and numbers: anything longer is not one.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// What the receiver was promised and what the run's model is.
#[derive(Debug, Clone)]
pub struct Expected {
    pub step: u64,
    /// Float32 values per tensor.
    pub elements: u64,
    pub layout_hash: u64,
    /// The digest the replicas agreed on for `step` (None: not asked for
    /// that step; the sender's claim in its header is checked instead).
    pub param_checksum: Option<u64>,
}

/// A state as received: its header and its four tensors' bytes in order
/// (parameters, Adam's two moments, EMA).
#[derive(Debug)]
pub struct Received {
    pub header: proto::StateHeader,
    pub bytes: Vec<u8>,
}

/// Sends `header` then `tensors` (each `header.elements` long, in
/// `TRAINING_WITH_EMA` order).
pub async fn send(w: &mut (impl AsyncWrite + Unpin), header: &proto::StateHeader, tensors: &[&[f32]]) -> std::io::Result<()> {
    frame::write_frame(w, HEADER_TAG, 0, &header.encode_to_vec()).await?;
    // The tensors as one byte stream cut every STATE_CHUNK_BYTES, as the
    // receiver reads it: a frame may hold the end of one and the start of
    // the next.
    let mut index = 0u32;
    let mut buf = Vec::with_capacity(STATE_CHUNK_BYTES);
    for t in tensors {
        let mut rest = *t;
        while !rest.is_empty() {
            let take = rest.len().min((STATE_CHUNK_BYTES - buf.len()) / 4);
            buf.extend(rest[..take].iter().flat_map(|v| v.to_le_bytes()));
            rest = &rest[take..];
            if buf.len() == STATE_CHUNK_BYTES {
                frame::write_frame(w, DATA_TAG, index, &buf).await?;
                buf.clear();
                index += 1;
            }
        }
    }
    if !buf.is_empty() {
        frame::write_frame(w, DATA_TAG, index, &buf).await?;
    }
    w.flush().await
}

/// Reads a state sent with [`send`] and checks it against `want`.
pub async fn receive(r: &mut (impl AsyncRead + Unpin), want: &Expected) -> Result<Received, LinkFault> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h).await.map_err(|e| LinkFault::io("ended before the state's header", &e))?;
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let (tag, len) = (word(0), word(8) as usize);
    if tag != HEADER_TAG || len > MAX_HEADER_BYTES {
        return Err(LinkFault::malformed(format!("opened with a frame (tag {tag:#x}, {len} bytes) that is not a state's header")));
    }
    let mut encoded = vec![0u8; len];
    r.read_exact(&mut encoded).await.map_err(|e| LinkFault::io("ended inside the state's header", &e))?;
    let header =
        proto::StateHeader::decode(&encoded[..]).map_err(|e| LinkFault::malformed(format!("sent a header that does not decode: {e}")))?;
    check_header(&header, want)?;
    let n = want.elements as usize;
    let total = TRAINING_WITH_EMA.len() * n * 4;
    let mut bytes = vec![0u8; total];
    for (index, part) in bytes.chunks_mut(STATE_CHUNK_BYTES).enumerate() {
        frame::read_header(r, DATA_TAG, index as u32, part.len()).await?;
        r.read_exact(part).await.map_err(|e| LinkFault::io("ended inside the state's data", &e))?;
    }
    let digest = flat::checksum_bytes(&bytes[..n * 4]);
    if digest != header.param_checksum {
        return Err(LinkFault::malformed(format!(
            "sent parameters whose digest is {digest:#018x}, its header claims {:#018x}",
            header.param_checksum
        )));
    }
    if let Some(agreed) = want.param_checksum.filter(|&a| a != digest) {
        return Err(LinkFault::malformed(format!(
            "sent parameters whose digest is {digest:#018x}, the replicas agreed on {agreed:#018x} for step {}",
            want.step
        )));
    }
    Ok(Received { header, bytes })
}

fn check_header(h: &proto::StateHeader, want: &Expected) -> Result<(), LinkFault> {
    if h.tensors != TRAINING_WITH_EMA {
        return Err(LinkFault::malformed(format!("sent tensors {:?}, not {TRAINING_WITH_EMA:?}", h.tensors)));
    }
    if h.elements != want.elements || h.layout_hash != want.layout_hash {
        return Err(LinkFault::malformed(format!(
            "sent {} values of layout {:#018x}; the run's model has {} of {:#018x}",
            h.elements, h.layout_hash, want.elements, want.layout_hash
        )));
    }
    if h.step != want.step || h.adam_step > h.step {
        return Err(LinkFault::malformed(format!(
            "sent the state of step {} (Adam step {}), the coordinator promised step {}",
            h.step, h.adam_step, want.step
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "state_link_tests.rs"]
mod tests;
