//! The sharded layout of a checkpoint (format version 2), written by the
//! replicas when the coordinator keeps no copy of the state
//! (`[dist] shadow = "off"`):
//!
//! ```text
//! checkpoints/step_{step:010}/
//!   shard_000_of_004.safetensors   replica 0: values [start, end) of the flat buffers, as four
//!   ...                            1-D f32 tensors params, ema, exp_avg, exp_avg_sq; metadata
//!                                  step, adam_step, start, end
//!   layout.json                    parameter names and shapes (diffusers UNet2DModel names)
//!   state.json, config.toml        as in the whole layout (written by the coordinator)
//!   manifest.json                  written last by the coordinator: every file with its size
//!                                  and sha256, and which values each shard holds
//! ```
//!
//! Each replica writes its own shard straight to the store
//! ([`write_shard`]) and reports its name, size, SHA-256 and its part of
//! the parameters' digest; the coordinator checks the parts against the
//! digest the replicas agreed on, that every shard is in the store with
//! its size, and only then writes the rest and the manifest ([`commit`]).
//! Readers ([`super::read`] and everything built on it) rebuild the same
//! [`CheckpointData`] from either layout.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::data::CheckpointData;
use super::encode;
use super::error::CheckpointError;
use super::format::{self, FileEntry, Manifest, ShardEntry, StateFile};
use crate::config::TrainConfig;
use crate::data::OrderState;
use crate::store::RunStore;
use crate::train::flat::Layout;

/// The tensors of a shard file, in this order.
const SHARD_TENSORS: [&str; 4] = ["params", "ema", "exp_avg", "exp_avg_sq"];

/// The name of shard `index` of `count` in its step's directory.
pub fn shard_file(index: u32, count: u32) -> String {
    format!("shard_{index:03}_of_{count:03}.safetensors")
}

/// One replica's part of a sharded checkpoint: values `start..end` of the
/// flat buffers of step `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardData {
    pub step: u64,
    pub adam_step: u64,
    pub index: u32,
    pub count: u32,
    pub start: u64,
    pub params: Vec<f32>,
    pub ema: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
}

impl ShardData {
    /// One past its last value.
    pub fn end(&self) -> u64 {
        self.start + self.params.len() as u64
    }
}

/// A shard as it was written: what its replica reports to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenShard {
    pub index: u32,
    pub start: u64,
    pub end: u64,
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The contiguous shards `count` replicas write of `total` values: shard
/// `i` holds `[i * total / count, (i + 1) * total / count)`.
pub fn shard_range(total: u64, index: u32, count: u32) -> (u64, u64) {
    let cut = |i: u64| ((u128::from(total) * u128::from(i)) / u128::from(count.max(1))) as u64;
    (cut(u64::from(index)), cut(u64::from(index) + 1))
}

/// The safetensors bytes of a shard and their SHA-256 (CPU work).
pub fn encode_shard(shard: &ShardData) -> Result<(Bytes, String), CheckpointError> {
    let n = shard.params.len();
    let buffers = [&shard.params, &shard.ema, &shard.adam_m, &shard.adam_v];
    if buffers.iter().any(|b| b.len() != n) {
        return Err(CheckpointError::Invalid { reason: "a shard's four buffers differ in length".into() });
    }
    let host: Vec<&[u8]> = buffers.iter().map(|b| bytemuck::cast_slice::<f32, u8>(b)).collect();
    let views = SHARD_TENSORS
        .iter()
        .zip(&host)
        .map(|(name, bytes)| {
            let view = TensorView::new(Dtype::F32, vec![n], bytes)
                .map_err(|e| CheckpointError::Invalid { reason: format!("shard tensor {name}: {e}") })?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    let meta: HashMap<String, String> = [
        ("format", "ddpm-shard".to_string()),
        ("step", shard.step.to_string()),
        ("adam_step", shard.adam_step.to_string()),
        ("start", shard.start.to_string()),
        ("end", shard.end().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::Invalid { reason: format!("cannot serialize a shard: {e}") })?;
    let sha = format::sha256_hex(&bytes);
    Ok((Bytes::from(bytes), sha))
}

/// Encodes `shard` (on a blocking thread) and puts it in the store, where
/// no manifest names it yet; returns what the coordinator needs to list it.
pub async fn write_shard(store: &RunStore, shard: ShardData) -> Result<WrittenShard, CheckpointError> {
    let (index, count, step, start, end) = (shard.index, shard.count, shard.step, shard.start, shard.end());
    let (bytes, sha256) = tokio::task::spawn_blocking(move || encode_shard(&shard))
        .await
        .map_err(|e| CheckpointError::Invalid { reason: format!("shard encoding task failed: {e}") })??;
    let name = shard_file(index, count);
    let size = bytes.len() as u64;
    store.put(&format!("{}/{name}", format::step_dir(step)), bytes).await?;
    Ok(WrittenShard { index, start, end, name, bytes: size, sha256 })
}

/// `layout.json`: the parameters' names and shapes, in layout order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LayoutFile {
    tensors: Vec<NamedShape>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct NamedShape {
    name: String,
    shape: Vec<i64>,
}

/// Everything but the shards' contents: what the coordinator commits once
/// every shard of `step` is written.
#[derive(Clone, Debug)]
pub struct ShardedCommit {
    pub step: u64,
    pub adam_step: u64,
    pub skipped_steps: u64,
    pub order: OrderState,
    pub config: TrainConfig,
    pub layout: Layout,
    /// Every shard, in order, covering `[0, layout.total)`.
    pub shards: Vec<WrittenShard>,
}

impl ShardedCommit {
    /// Bytes of the shards.
    pub fn shard_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// The checks a commit must pass before anything is written: the
    /// shards in order, contiguous, covering every value once.
    fn validate(&self) -> Result<(), CheckpointError> {
        let bad = |reason: String| Err(CheckpointError::Invalid { reason });
        check_cover(&self.shards.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(), self.layout.total as u64).or_else(bad)?;
        if self.adam_step > self.step || self.order.step != self.step {
            return bad(format!(
                "adam_step {} or the data stream's step {} does not fit step {}",
                self.adam_step, self.order.step, self.step
            ));
        }
        Ok(())
    }

    /// The small files the coordinator writes: state.json, config.toml, layout.json.
    fn small_files(&self) -> Result<Vec<(&'static str, Bytes)>, CheckpointError> {
        let invalid = |e: String| CheckpointError::Invalid { reason: e };
        let state = StateFile {
            format_version: format::SHARDED_VERSION,
            step: self.step,
            adam_step: self.adam_step,
            skipped_steps: self.skipped_steps,
            data: self.order.clone(),
            data_position: self.order.position(),
            rng: format::RngState { kind: "counter-splitmix64".into(), seed: self.order.seed, step: self.step },
            param_count: self.layout.total as u64,
            layout_hash: self.layout.hash(),
        };
        let layout = LayoutFile {
            tensors: self.layout.entries.iter().map(|e| NamedShape { name: e.name.clone(), shape: e.shape.clone() }).collect(),
        };
        let config = toml::to_string(&self.config).map_err(|e| invalid(format!("the config does not serialize to TOML: {e}")))?;
        Ok(vec![
            (format::STATE_FILE, Bytes::from(serde_json::to_vec_pretty(&state).map_err(|e| invalid(e.to_string()))?)),
            (format::CONFIG_FILE, Bytes::from(config.into_bytes())),
            (format::LAYOUT_FILE, Bytes::from(serde_json::to_vec_pretty(&layout).map_err(|e| invalid(e.to_string()))?)),
        ])
    }
}

/// `ranges` are in order, contiguous, and cover `[0, total)`.
pub(super) fn check_cover(ranges: &[(u64, u64)], total: u64) -> Result<(), String> {
    let mut next = 0;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        if start != next || end < start {
            return Err(format!("shard {i} holds values {start}..{end}, expected it to start at {next}"));
        }
        next = end;
    }
    if next != total {
        return Err(format!("the shards hold {next} values, the model has {total}"));
    }
    Ok(())
}

/// Writes the sharded checkpoint's own files and, last, its manifest:
/// every shard must be in the store with the size its replica reported
/// (a shard a replica wrote elsewhere, or that was lost, fails the commit
/// and no manifest is written: the step's directory stays torn).
pub async fn commit(store: &RunStore, c: &ShardedCommit) -> Result<u64, CheckpointError> {
    c.validate()?;
    let dir = format::step_dir(c.step);
    let sizes: HashMap<String, u64> =
        store.list(&dir).await?.into_iter().filter_map(|o| Some((o.key.rsplit('/').next()?.to_string(), o.size))).collect();
    for s in &c.shards {
        match sizes.get(&s.name) {
            None => return Err(CheckpointError::Torn { step: c.step, problem: format!("{} is not in {}", s.name, store.url()) }),
            Some(&n) if n != s.bytes => {
                let problem = format!("{} has {n} bytes in the store, its replica wrote {}", s.name, s.bytes);
                return Err(CheckpointError::Torn { step: c.step, problem });
            }
            _ => {}
        }
    }
    let small = c.small_files()?;
    let dir = &dir;
    futures::future::try_join_all(
        small.iter().map(|(name, bytes)| async move { store.put(&format!("{dir}/{name}"), bytes.clone()).await }),
    )
    .await?;
    let mut files: Vec<FileEntry> =
        c.shards.iter().map(|s| FileEntry { name: s.name.clone(), bytes: s.bytes, sha256: s.sha256.clone() }).collect();
    files.extend(small.iter().map(|(name, b)| FileEntry { name: name.to_string(), bytes: b.len() as u64, sha256: format::sha256_hex(b) }));
    let manifest = Manifest {
        format: format::FORMAT_NAME.into(),
        format_version: format::SHARDED_VERSION,
        step: c.step,
        created: Utc::now(),
        ddpm_version: env!("CARGO_PKG_VERSION").into(),
        files,
        shards: c.shards.iter().map(|s| ShardEntry { name: s.name.clone(), start: s.start, end: s.end }).collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Invalid { reason: e.to_string() })?;
    store.put(&format!("{dir}/{}", format::MANIFEST_FILE), Bytes::from(json)).await?;
    Ok(c.shard_bytes() + small.iter().map(|(_, b)| b.len() as u64).sum::<u64>())
}

/// The parameter layout of a sharded checkpoint's `layout.json`.
pub(super) fn decode_layout(step: u64, bytes: &[u8]) -> Result<Layout, CheckpointError> {
    let file: LayoutFile = serde_json::from_slice(bytes).map_err(|e| CheckpointError::Format {
        step,
        file: format::LAYOUT_FILE.into(),
        reason: e.to_string(),
    })?;
    Ok(Layout::from_named(file.tensors.into_iter().map(|t| (t.name, t.shape)).collect()))
}

/// Copies shard `entry`'s four tensors into the flat buffers
/// (params, ema, adam_m, adam_v), checking its metadata against the manifest.
pub(super) fn decode_shard(
    step: u64,
    adam_step: u64,
    entry: &ShardEntry,
    bytes: &[u8],
    out: [&mut [f32]; 4],
) -> Result<(), CheckpointError> {
    let bad = |reason: String| CheckpointError::Format { step, file: entry.name.clone(), reason };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    for (key, want) in [("step", step), ("adam_step", adam_step), ("start", entry.start), ("end", entry.end)] {
        if meta.get(key).map(String::as_str) != Some(want.to_string().as_str()) {
            return Err(bad(format!("its {key} metadata is {:?}, the manifest and state.json say {want}", meta.get(key))));
        }
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let n = (entry.end - entry.start) as usize;
    for (name, dst) in SHARD_TENSORS.iter().zip(out) {
        let view = st.tensor(name).map_err(|_| bad(format!("tensor {name} is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != [n] {
            return Err(bad(format!("tensor {name} is {:?} {:?}, expected F32 [{n}]", view.dtype(), view.shape())));
        }
        let dst = &mut dst[entry.start as usize..entry.end as usize];
        for (d, c) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Ok(())
}

/// Rebuilds a sharded checkpoint from its files (checked against the
/// manifest): the layout from layout.json, each buffer from the shards.
pub(super) fn decode(step: u64, manifest: &Manifest, files: &HashMap<String, Bytes>) -> Result<CheckpointData, CheckpointError> {
    let get = |name: &str| files.get(name).ok_or_else(|| CheckpointError::Torn { step, problem: format!("{name} is missing") });
    let bad = |file: &str, reason: String| CheckpointError::Format { step, file: file.to_string(), reason };
    let (state, config) = encode::state_and_config(step, files)?;
    let layout = decode_layout(step, get(format::LAYOUT_FILE)?)?;
    if layout.hash() != state.layout_hash || layout.total as u64 != state.param_count {
        return Err(bad(format::LAYOUT_FILE, "its tensors do not match state.json's layout hash".into()));
    }
    let ranges: Vec<(u64, u64)> = manifest.shards.iter().map(|s| (s.start, s.end)).collect();
    check_cover(&ranges, layout.total as u64).map_err(|e| bad(format::MANIFEST_FILE, e))?;
    let p = layout.total;
    let (mut params, mut ema, mut adam_m, mut adam_v) = (vec![0f32; p], vec![0f32; p], vec![0f32; p], vec![0f32; p]);
    for entry in &manifest.shards {
        decode_shard(step, state.adam_step, entry, get(&entry.name)?, [&mut params, &mut ema, &mut adam_m, &mut adam_v])?;
    }
    encode::assemble(step, state, config, layout, [params, adam_m, adam_v, ema])
}

#[cfg(test)]
#[path = "sharded_tests.rs"]
mod tests;
