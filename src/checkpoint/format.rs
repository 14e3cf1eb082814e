//! The checkpoint format: file names, the manifest and state JSON, and the
//! flat buffers to and from safetensors files. Pure functions of bytes; the
//! store operations are in `ops.rs`.
//!
//! ```text
//! checkpoints/step_{step:010}/
//!   model.safetensors      parameters, one f32 tensor per parameter, diffusers UNet2DModel names
//!   ema.safetensors        the EMA of the parameters, same names and shapes
//!   optimizer.safetensors  Adam's moments: exp_avg.{name} and exp_avg_sq.{name} (PyTorch's state
//!                          names), metadata "step" = Adam's update count
//!   state.json             counters, data-stream position and RNG state ([`StateFile`])
//!   config.toml            the resolved TrainConfig
//!   manifest.json          written last: every file with its size and sha256 ([`Manifest`])
//! ```
//!
//! That is the whole layout (format version 1), written by the
//! coordinator. The sharded layout (version 2: one file per replica, a
//! `layout.json` instead of the three tensor files) is `sharded.rs`'s.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::CheckpointError;
use crate::data::OrderState;
use crate::train::flat::Layout;

/// The newest version this ddpm reads; readers refuse newer ones.
pub const FORMAT_VERSION: u32 = 2;
/// The version of the whole layout above (older readers read it).
pub const WHOLE_VERSION: u32 = 1;
/// The version of the sharded layout (`sharded.rs`).
pub const SHARDED_VERSION: u32 = 2;
/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "ddpm-checkpoint";
/// The directory of all checkpoints under the run's root.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.toml";
/// The sharded layout's parameter names and shapes.
pub const LAYOUT_FILE: &str = "layout.json";
/// The data files of the whole layout, in the order they are written (the manifest comes after).
pub const DATA_FILES: [&str; 5] = [MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE, CONFIG_FILE];

/// Tensor name prefixes of Adam's moments in `optimizer.safetensors`.
pub const EXP_AVG: &str = "exp_avg.";
pub const EXP_AVG_SQ: &str = "exp_avg_sq.";

/// The directory of step `step`'s checkpoint, relative to the run's root.
pub fn step_dir(step: u64) -> String {
    format!("{CHECKPOINTS_DIR}/step_{step:010}")
}

/// The step of a checkpoint directory name (`step_0000001000` -> 1000).
pub fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.trim_end_matches('/').rsplit('/').next()?.strip_prefix("step_")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// `manifest.json`: the proof that a checkpoint is complete. It is written
/// after every file it lists; a checkpoint exists only if it exists and
/// every file matches its size and sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    pub format_version: u32,
    /// Optimizer steps done when the checkpoint was taken.
    pub step: u64,
    /// When the checkpoint was written (UTC).
    pub created: DateTime<Utc>,
    /// The ddpm version that wrote it.
    pub ddpm_version: String,
    pub files: Vec<FileEntry>,
    /// The sharded layout only: which values of the flat buffers each
    /// shard file holds, in order (empty: the whole layout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardEntry>,
}

/// One shard of a sharded checkpoint: values `start..end` of the flat
/// buffers (parameters, EMA, Adam's moments) are in file `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Name inside the step directory.
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

impl Manifest {
    /// Total bytes of the data files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Parses and checks the header fields.
    pub fn parse(step: u64, bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.format != FORMAT_NAME {
            return Err(ManifestError::Format { found: m.format });
        }
        if m.format_version > FORMAT_VERSION {
            return Err(ManifestError::TooNew { found: m.format_version });
        }
        if m.step != step {
            return Err(ManifestError::WrongStep { found: m.step, dir: step_dir(step) });
        }
        let listed = |name: &str| m.files.iter().any(|e| e.name == name);
        if m.shards.is_empty() {
            if let Some(missing) = DATA_FILES.iter().find(|f| !listed(f)) {
                return Err(ManifestError::Unlisted(missing.to_string()));
            }
        } else {
            let own = [STATE_FILE, CONFIG_FILE, LAYOUT_FILE].map(str::to_string);
            if let Some(missing) = own.into_iter().chain(m.shards.iter().map(|s| s.name.clone())).find(|f| !listed(f)) {
                return Err(ManifestError::Unlisted(missing));
            }
        }
        Ok(m)
    }

    /// Checks that the step's files, `sizes` by name, are the ones listed.
    pub fn check_sizes(&self, sizes: &std::collections::HashMap<&str, u64>) -> Result<(), ManifestError> {
        for f in &self.files {
            match sizes.get(f.name.as_str()) {
                None => return Err(ManifestError::Missing { name: f.name.clone() }),
                Some(&n) if n != f.bytes => return Err(ManifestError::Size { name: f.name.clone(), found: n, listed: f.bytes }),
                _ => {}
            }
        }
        Ok(())
    }
}

/// What is wrong with a checkpoint's manifest, or with its files against
/// it: the checkpoint is then torn (it does not count).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest.json has format {found:?}, expected {FORMAT_NAME:?}")]
    Format { found: String },
    #[error("format version {found} is newer than this ddpm understands ({FORMAT_VERSION}): upgrade ddpm")]
    TooNew { found: u32 },
    #[error("manifest.json says step {found} but lives in {dir}")]
    WrongStep { found: u64, dir: String },
    #[error("manifest.json does not list {0}")]
    Unlisted(String),
    #[error("{name} is missing")]
    Missing { name: String },
    #[error("{name} has {found} bytes, the manifest says {listed}")]
    Size { name: String, found: u64, listed: u64 },
}

/// The RNG state of a run. Every random choice of training (data order,
/// timesteps, noise, flips, dropout masks) is a pure function of
/// `(seed, step, sample position)` (see `crate::rng`), so the seed and the
/// step are the whole state: there is no generator to save.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Always `counter-splitmix64`.
    pub kind: String,
    pub seed: u64,
    /// The next step draws with key `(seed, step + 1, position)`.
    pub step: u64,
}

/// `state.json`: the counters and positions of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub format_version: u32,
    /// Optimizer steps done (including skipped ones).
    pub step: u64,
    /// Adam updates applied (its bias correction counter).
    pub adam_step: u64,
    /// Steps skipped for a non-finite gradient.
    pub skipped_steps: u64,
    /// Where the data stream stands: batches `0..step` are consumed.
    pub data: OrderState,
    /// Stream position of the next sample (`data.step * data.batch_size`).
    pub data_position: u64,
    pub rng: RngState,
    /// Parameters of the model and the hash of their layout
    /// (`train::flat::Layout::hash`).
    pub param_count: u64,
    pub layout_hash: u64,
}

/// The SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A flat f32 buffer as little-endian bytes (safetensors' byte order).
fn le_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Little-endian f32 bytes into `dst` (`bytes.len() == 4 * dst.len()`).
fn read_le_f32(bytes: &[u8], dst: &mut [f32]) {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(bytes);
    } else {
        for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
}

/// A safetensors file of flat buffers cut per parameter: for each
/// `(prefix, buffer)`, one f32 tensor `{prefix}{name}` per layout entry.
pub fn encode_tensors(layout: &Layout, buffers: &[(&str, &[f32])], metadata: HashMap<String, String>) -> Result<Bytes, CheckpointError> {
    let host: Vec<Vec<u8>> = buffers.iter().map(|(_, b)| le_bytes(b)).collect();
    let mut views = Vec::with_capacity(layout.entries.len() * buffers.len());
    for ((prefix, _), bytes) in buffers.iter().zip(&host) {
        for e in &layout.entries {
            let shape: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
            let data = &bytes[e.offset * 4..(e.offset + e.numel) * 4];
            let view = TensorView::new(Dtype::F32, shape, data)
                .map_err(|err| CheckpointError::Invalid { reason: format!("tensor {prefix}{}: {err}", e.name) })?;
            views.push((format!("{prefix}{}", e.name), view));
        }
    }
    let out = safetensors::serialize(views, Some(metadata))
        .map_err(|e| CheckpointError::Invalid { reason: format!("cannot serialize safetensors: {e}") })?;
    Ok(Bytes::from(out))
}

/// The layout (names and shapes, sorted by name) of a weights file's tensors.
pub fn layout_of(step: u64, file: &str, bytes: &[u8]) -> Result<Layout, CheckpointError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(step, file, format!("not a safetensors file: {e}")))?;
    let named = st.tensors().into_iter().map(|(n, v)| (n, v.shape().iter().map(|&d| d as i64).collect())).collect();
    Ok(Layout::from_named(named))
}

/// One flat buffer per prefix, and the file's metadata.
pub type Decoded = (Vec<Vec<f32>>, HashMap<String, String>);

/// Gathers `{prefix}{name}` for every layout entry of a safetensors file
/// into one flat buffer; every tensor must be f32 of the layout's shape,
/// and the file must hold no tensor the prefixes do not account for.
pub fn decode_tensors(step: u64, file: &str, bytes: &[u8], layout: &Layout, prefixes: &[&str]) -> Result<Decoded, CheckpointError> {
    let bad = |reason: String| format_err(step, file, reason);
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let expected = layout.entries.len() * prefixes.len();
    if st.len() != expected {
        return Err(bad(format!("{} tensors, expected {expected}", st.len())));
    }
    let mut out = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let mut flat = vec![0f32; layout.total];
        for e in &layout.entries {
            let name = format!("{prefix}{}", e.name);
            let view = st.tensor(&name).map_err(|_| bad(format!("tensor {name} is missing")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name} is {:?}, expected F32", view.dtype())));
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != e.shape {
                return Err(bad(format!("tensor {name} has shape {shape:?}, expected {:?}", e.shape)));
            }
            read_le_f32(view.data(), &mut flat[e.offset..e.offset + e.numel]);
        }
        out.push(flat);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

fn format_err(step: u64, file: &str, reason: String) -> CheckpointError {
    CheckpointError::Format { step, file: file.to_string(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_dirs_round_trip() {
        assert_eq!(step_dir(1000), "checkpoints/step_0000001000");
        assert_eq!(parse_step_dir("checkpoints/step_0000001000/"), Some(1000));
        assert_eq!(parse_step_dir("step_0000000000"), Some(0));
        assert_eq!(parse_step_dir("step_12"), None);
        assert_eq!(parse_step_dir("checkpoints/other"), None);
    }

    #[test]
    fn tensors_round_trip_per_parameter() {
        let layout = Layout::from_named(vec![("b.w".into(), vec![2, 2]), ("a.bias".into(), vec![3])]);
        let p: Vec<f32> = (0..7).map(|i| i as f32 * 0.5 - 1.0).collect();
        let q: Vec<f32> = p.iter().map(|x| -x).collect();
        let bytes = encode_tensors(&layout, &[("m.", &p), ("v.", &q)], HashMap::from([("k".into(), "v".into())])).unwrap();
        let (got, meta) = decode_tensors(3, "f", &bytes, &layout, &["m.", "v."]).unwrap();
        assert_eq!(got, vec![p.clone(), q]);
        assert_eq!(meta["k"], "v");
        let weights = encode_tensors(&layout, &[("", &p)], HashMap::new()).unwrap();
        assert_eq!(layout_of(3, "f", &weights).unwrap(), layout);
        let e = decode_tensors(3, "f", &bytes, &layout, &["m."]).unwrap_err().to_string();
        assert!(e.contains("4 tensors, expected 2"), "{e}");
    }

    #[test]
    fn sha256_is_hex_of_the_digest() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
