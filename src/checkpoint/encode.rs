//! A whole checkpoint to and from its files' bytes (CPU work, no I/O).

use std::collections::HashMap;

use bytes::Bytes;

use super::data::CheckpointData;
use super::error::CheckpointError;
use super::format::{self, RngState, StateFile};
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

type Hashed = Result<(Bytes, String), CheckpointError>;

/// Serializes and hashes one tensor file on a scoped thread.
fn spawn_tensors<'scope, 'env>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    layout: &'env Layout,
    buffers: Vec<(&'static str, &'env [f32])>,
    meta: HashMap<String, String>,
) -> std::thread::ScopedJoinHandle<'scope, Hashed> {
    s.spawn(move || {
        let bytes = format::encode_tensors(layout, &buffers, meta)?;
        let sha = format::sha256_hex(&bytes);
        Ok((bytes, sha))
    })
}

/// Serializes and hashes every data file of `data`, the three tensor files
/// on three threads (about 1 s for the 572 MB of a cifar10 checkpoint; call
/// it from a blocking thread, as the uploader does).
pub fn encode(data: &CheckpointData) -> Result<Encoded, CheckpointError> {
    data.validate()?;
    let layout = &data.layout;
    let step = data.step.to_string();
    let weights_meta = || metadata(&[("format", "pt".into()), ("step", step.clone())]);
    // The three tensor files are serialized and hashed on three threads.
    let (model, ema, optimizer) = std::thread::scope(|s| {
        let model = spawn_tensors(s, layout, vec![("", &data.params)], weights_meta());
        let ema = spawn_tensors(s, layout, vec![("", &data.ema)], weights_meta());
        let optimizer = spawn_tensors(
            s,
            layout,
            vec![(format::EXP_AVG, &data.adam_m), (format::EXP_AVG_SQ, &data.adam_v)],
            metadata(&[("format", "pt".into()), ("step", data.adam_step.to_string())]),
        );
        let join = |h: std::thread::ScopedJoinHandle<'_, Hashed>| {
            h.join().unwrap_or_else(|_| Err(CheckpointError::Invalid { reason: "an encoding thread panicked".into() }))
        };
        (join(model), join(ema), join(optimizer))
    });
    let (model, ema, optimizer) = (model?, ema?, optimizer?);
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
    let small = |name: &'static str, bytes: Vec<u8>| EncodedFile { name, sha256: format::sha256_hex(&bytes), bytes: bytes.into() };
    let files = vec![
        EncodedFile { name: format::MODEL_FILE, bytes: model.0, sha256: model.1 },
        EncodedFile { name: format::EMA_FILE, bytes: ema.0, sha256: ema.1 },
        EncodedFile { name: format::OPTIMIZER_FILE, bytes: optimizer.0, sha256: optimizer.1 },
        small(format::STATE_FILE, state),
        small(format::CONFIG_FILE, config.into_bytes()),
    ];
    Ok(Encoded { step: data.step, files })
}

/// Rebuilds a checkpoint from its data files (already checked against the
/// manifest), checking that they agree with each other.
pub fn decode(step: u64, files: &HashMap<String, Bytes>) -> Result<CheckpointData, CheckpointError> {
    let get = |name: &str| files.get(name).ok_or_else(|| CheckpointError::Torn { step, problem: format!("{name} is missing") });
    let bad = |file: &str, reason: String| CheckpointError::Format { step, file: file.to_string(), reason };

    let (state, config) = state_and_config(step, files)?;

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
    assemble(step, state, config, layout, [params, adam_m, adam_v, ema])
}

/// `state.json` (of step `step`) and `config.toml` of a checkpoint's
/// files, either layout.
pub(super) fn state_and_config(step: u64, files: &HashMap<String, Bytes>) -> Result<(StateFile, TrainConfig), CheckpointError> {
    let get = |name: &str| files.get(name).ok_or_else(|| CheckpointError::Torn { step, problem: format!("{name} is missing") });
    let bad = |file: &str, reason: String| CheckpointError::Format { step, file: file.to_string(), reason };
    let state: StateFile = serde_json::from_slice(get(format::STATE_FILE)?).map_err(|e| bad(format::STATE_FILE, e.to_string()))?;
    if state.step != step {
        return Err(bad(format::STATE_FILE, format!("says step {} in the directory of step {step}", state.step)));
    }
    let text = std::str::from_utf8(get(format::CONFIG_FILE)?).map_err(|e| bad(format::CONFIG_FILE, e.to_string()))?;
    let config = TrainConfig::from_toml_str(text, &TrainConfig::default()).map_err(|e| bad(format::CONFIG_FILE, e.to_string()))?;
    Ok((state, config))
}

/// The checkpoint of `state`, `config`, `layout` and its flat buffers
/// `[params, adam_m, adam_v, ema]`, checked to agree with each other.
pub(super) fn assemble(
    step: u64,
    state: StateFile,
    config: TrainConfig,
    layout: Layout,
    [params, adam_m, adam_v, ema]: [Vec<f32>; 4],
) -> Result<CheckpointData, CheckpointError> {
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
    data.validate().map_err(|e| CheckpointError::Format { step, file: format::STATE_FILE.into(), reason: e.to_string() })?;
    Ok(data)
}
