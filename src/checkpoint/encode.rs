//! A whole checkpoint to and from its files' bytes (CPU work, no I/O).

use std::collections::HashMap;

use bytes::Bytes;

use super::format::{self, RngState, StateFile};
use super::{CheckpointData, CheckpointError};
use crate::config::TrainConfig;
use crate::train::flat::Layout;

/// One file of an encoded checkpoint.
#[derive(Clone, Debug)]
pub struct EncodedFile {
    pub name: &'static str,
    pub bytes: Bytes,
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// A checkpoint's files, ready to upload (see [`super::write_encoded`]).
#[derive(Clone, Debug)]
pub struct Encoded {
    pub step: u64,
    /// The data files in [`format::DATA_FILES`] order.
    pub files: Vec<EncodedFile>,
}

impl Encoded {
    /// Bytes of all data files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }
}

fn metadata(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Serializes and hashes every data file of `data` (about 1 s per 500 MB
/// of tensors; run it on a blocking thread).
pub fn encode(data: &CheckpointData) -> Result<Encoded, CheckpointError> {
    data.validate()?;
    let layout = &data.layout;
    let step = data.step.to_string();
    let weights_meta = || metadata(&[("format", "pt".into()), ("step", step.clone())]);
    let model = format::encode_tensors(layout, &[("", &data.params)], weights_meta())?;
    let ema = format::encode_tensors(layout, &[("", &data.ema)], weights_meta())?;
    let optimizer = format::encode_tensors(
        layout,
        &[(format::EXP_AVG, &data.adam_m), (format::EXP_AVG_SQ, &data.adam_v)],
        metadata(&[("format", "pt".into()), ("step", data.adam_step.to_string())]),
    )?;
    let state = StateFile {
        format_version: format::FORMAT_VERSION,
        step: data.step,
        adam_step: data.adam_step,
        skipped_steps: data.skipped_steps,
        data: data.order.clone(),
        data_position: data.order.position(),
        rng: RngState { kind: "counter-splitmix64".into(), seed: data.order.seed, step: data.step },
        param_count: layout.total as u64,
        layout_hash: layout.hash(),
    };
    let state = serde_json::to_vec_pretty(&state).map_err(|e| CheckpointError::Invalid { reason: e.to_string() })?;
    let config = toml::to_string(&data.config)
        .map_err(|e| CheckpointError::Invalid { reason: format!("the config does not serialize to TOML: {e}") })?;
    let parts: [(&'static str, Bytes); 5] = [
        (format::MODEL_FILE, model),
        (format::EMA_FILE, ema),
        (format::OPTIMIZER_FILE, optimizer),
        (format::STATE_FILE, Bytes::from(state)),
        (format::CONFIG_FILE, Bytes::from(config)),
    ];
    let files = parts
        .into_iter()
        .map(|(name, bytes)| EncodedFile { name, sha256: format::sha256_hex(&bytes), bytes })
        .collect();
    Ok(Encoded { step: data.step, files })
}

/// Rebuilds a checkpoint from its data files (already checked against the
/// manifest), checking that they agree with each other.
pub fn decode(step: u64, files: &HashMap<String, Bytes>) -> Result<CheckpointData, CheckpointError> {
    let get = |name: &str| {
        files.get(name).ok_or_else(|| CheckpointError::Torn { step, problem: format!("{name} is missing") })
    };
    let bad = |file: &str, reason: String| CheckpointError::Format { step, file: file.to_string(), reason };

    let state: StateFile =
        serde_json::from_slice(get(format::STATE_FILE)?).map_err(|e| bad(format::STATE_FILE, e.to_string()))?;
    if state.step != step {
        return Err(bad(format::STATE_FILE, format!("says step {} in the directory of step {step}", state.step)));
    }
    let text = std::str::from_utf8(get(format::CONFIG_FILE)?).map_err(|e| bad(format::CONFIG_FILE, e.to_string()))?;
    let config =
        TrainConfig::from_toml_str(text, &TrainConfig::default()).map_err(|e| bad(format::CONFIG_FILE, e.to_string()))?;

    let model = get(format::MODEL_FILE)?;
    let layout: Layout = format::layout_of(step, format::MODEL_FILE, model)?;
    if layout.hash() != state.layout_hash || layout.total as u64 != state.param_count {
        return Err(bad(format::MODEL_FILE, "its tensors do not match state.json's layout hash".into()));
    }
    let params = format::decode_tensors(step, format::MODEL_FILE, model, &layout, &[""])?.0.remove(0);
    let ema = format::decode_tensors(step, format::EMA_FILE, get(format::EMA_FILE)?, &layout, &[""])?.0.remove(0);
    let (mut moments, meta) = format::decode_tensors(
        step,
        format::OPTIMIZER_FILE,
        get(format::OPTIMIZER_FILE)?,
        &layout,
        &[format::EXP_AVG, format::EXP_AVG_SQ],
    )?;
    if meta.get("step").map(String::as_str) != Some(state.adam_step.to_string().as_str()) {
        return Err(bad(format::OPTIMIZER_FILE, format!("its step metadata is not state.json's adam_step {}", state.adam_step)));
    }
    let adam_v = moments.pop().unwrap_or_default();
    let adam_m = moments.pop().unwrap_or_default();
    let data = CheckpointData {
        step,
        adam_step: state.adam_step,
        skipped_steps: state.skipped_steps,
        order: state.data,
        config,
        layout,
        params,
        adam_m,
        adam_v,
        ema,
    };
    data.validate().map_err(|e| bad(format::STATE_FILE, e.to_string()))?;
    Ok(data)
}
