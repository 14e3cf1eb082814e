//! A replica's uploaded training state (PushState, `[dist] shadow = "off"`):
//! its header, then its chunks, read within the size the model allows and
//! checked against the checksum the replica claims, before the shadow
//! sees any of it.

use bytes::Bytes;
use ddpm::proto;
use ddpm::train::flat::{self, Layout};
use ddpm::wire::state::{self, TRAINING_WITH_EMA};
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::errors::RpcError;
use crate::state::Uploaded;

/// The first chunk: its header and the data it carries.
pub async fn first(inbound: &mut Streaming<proto::StateChunk>) -> Result<(proto::StateHeader, Bytes), RpcError> {
    match inbound.next().await {
        Some(Ok(proto::StateChunk { header: Some(h), data })) => Ok((h, data)),
        Some(Err(e)) => Err(RpcError::BadUpload(format!("the upload broke off: {}", e.message()))),
        _ => Err(RpcError::BadUpload("the first chunk must carry the header".into())),
    }
}

/// The rest of the upload `header` announced (`data`: the first chunk's),
/// as the state of its step.
pub async fn read(
    header: &proto::StateHeader,
    data: Bytes,
    inbound: &mut Streaming<proto::StateChunk>,
    layout: &Layout,
) -> Result<Uploaded, RpcError> {
    let n = layout.total;
    if header.tensors != TRAINING_WITH_EMA {
        return Err(RpcError::BadUpload(format!("tensors {:?}, expected {TRAINING_WITH_EMA:?}", header.tensors)));
    }
    if header.elements != n as u64 || header.layout_hash != layout.hash() {
        return Err(RpcError::BadUpload(format!(
            "{} elements of layout {:#018x}, the run's model has {n} of {:#018x}",
            header.elements,
            header.layout_hash,
            layout.hash()
        )));
    }
    let want = TRAINING_WITH_EMA.len() * n * 4;
    let mut bytes = Vec::with_capacity(want);
    bytes.extend_from_slice(&data);
    while let Some(chunk) = inbound.next().await {
        let chunk = chunk.map_err(|e| RpcError::BadUpload(format!("the upload broke off: {}", e.message())))?;
        if chunk.header.is_some() || bytes.len() + chunk.data.len() > want {
            return Err(RpcError::BadUpload(format!("more than the {want} bytes the header announced, or a second header")));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let sum = flat::checksum_bytes(bytes.get(..n * 4).unwrap_or_default());
    if sum != header.param_checksum {
        return Err(RpcError::BadUpload(format!(
            "the parameters' checksum is {sum:016x}, the header claims {:016x}",
            header.param_checksum
        )));
    }
    let [params, adam_m, adam_v, ema] =
        <[Vec<f32>; 4]>::try_from(state::split(&bytes, 4, n).map_err(|e| RpcError::BadUpload(e.to_string()))?)
            .expect("split gives 4 tensors");
    Ok(Uploaded { step: header.step, adam_step: header.adam_step, params, adam_m, adam_v, ema })
}
