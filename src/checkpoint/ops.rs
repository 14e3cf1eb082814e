//! Checkpoints in a run store: write (data first, manifest last), list,
//! verify, read, find the latest complete one, prune.
//!
//! A checkpoint exists only when its `manifest.json` exists and every file
//! it lists has the listed size and SHA-256. Anything else under
//! `checkpoints/step_*/` is torn (an upload that was interrupted, a file
//! lost or damaged): readers skip it with a warning that names the problem.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::data::CheckpointData;
use super::encode::{self, Encoded};
use super::error::CheckpointError;
use super::format::{self, FileEntry, Manifest};
use super::sharded;
use crate::store::{ObjectInfo, RunStore, StoreError};

/// What [`write`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReport {
    pub step: u64,
    /// Bytes of the data files (the manifest not counted).
    pub bytes: u64,
    pub manifest: Manifest,
}

/// A checkpoint as [`list`] sees it (sizes checked, checksums not).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub step: u64,
    /// From the manifest; for a torn checkpoint, its newest object's time.
    pub created: DateTime<Utc>,
    /// Bytes of every object in the step's directory.
    pub bytes: u64,
    /// A manifest exists and every file it lists has its size.
    pub complete: bool,
    /// Why it is not complete.
    pub problem: Option<String>,
    /// The replicas' shards of the sharded layout (0: the whole layout, or torn).
    pub shards: usize,
}

/// A checkpoint skipped while looking for the latest one.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub step: u64,
    pub problem: String,
}

/// What [`load_latest`] found.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub data: CheckpointData,
    pub info: CheckpointInfo,
    /// Newer checkpoints that were torn, newest first.
    pub skipped: Vec<Skipped>,
}

/// What [`prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneReport {
    /// Complete checkpoints deleted (neither among the last K nor milestones).
    pub deleted: Vec<u64>,
    /// Torn leftovers older than the newest complete checkpoint.
    pub torn_removed: Vec<u64>,
    /// Steps kept.
    pub kept: Vec<u64>,
}

fn key(step: u64, file: &str) -> String {
    format!("{}/{file}", format::step_dir(step))
}

/// Uploads an encoded checkpoint: a stale manifest of the same step is
/// removed first, then the data files go up (concurrently), then the
/// manifest. Until the manifest is written the checkpoint does not exist,
/// so a crash at any point leaves the previous one the latest.
pub async fn write_encoded(store: &RunStore, enc: &Encoded) -> Result<WriteReport, CheckpointError> {
    let step = enc.step;
    store.delete(&key(step, format::MANIFEST_FILE)).await?;
    try_join_all(enc.files.iter().map(|f| async move { store.put(&key(step, f.name), f.bytes.clone()).await })).await?;
    let manifest = Manifest {
        format: format::FORMAT_NAME.into(),
        format_version: format::WHOLE_VERSION,
        step,
        created: Utc::now(),
        ddpm_version: env!("CARGO_PKG_VERSION").into(),
        files: enc.files.iter().map(|f| FileEntry { name: f.name.into(), bytes: f.bytes.len() as u64, sha256: f.sha256.clone() }).collect(),
        shards: Vec::new(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Invalid { reason: e.to_string() })?;
    store.put(&key(step, format::MANIFEST_FILE), Bytes::from(json)).await?;
    Ok(WriteReport { step, bytes: enc.total_bytes(), manifest })
}

/// Encodes and writes `data` (the encoding runs on this thread; the
/// [`super::Uploader`] runs it on a blocking thread instead).
pub async fn write(store: &RunStore, data: &CheckpointData) -> Result<WriteReport, CheckpointError> {
    let enc = encode::encode(data)?;
    write_encoded(store, &enc).await
}

/// Every checkpoint directory of the run, oldest first, with whether it is
/// complete by its manifest and the listed sizes.
pub async fn list(store: &RunStore) -> Result<Vec<CheckpointInfo>, CheckpointError> {
    let mut by_step: BTreeMap<u64, Vec<ObjectInfo>> = BTreeMap::new();
    for obj in store.list(format::CHECKPOINTS_DIR).await? {
        let Some((dir, _)) = obj.key.rsplit_once('/') else { continue };
        if let Some(step) = format::parse_step_dir(dir) {
            by_step.entry(step).or_default().push(obj);
        }
    }
    let mut out = Vec::with_capacity(by_step.len());
    for (step, objects) in by_step {
        out.push(inspect(store, step, &objects).await?);
    }
    Ok(out)
}

async fn inspect(store: &RunStore, step: u64, objects: &[ObjectInfo]) -> Result<CheckpointInfo, CheckpointError> {
    let bytes = objects.iter().map(|o| o.size).sum();
    let newest = objects.iter().map(|o| o.last_modified).max().unwrap_or_else(Utc::now);
    let sizes: HashMap<&str, u64> = objects.iter().filter_map(|o| Some((o.key.rsplit('/').next()?, o.size))).collect();
    let torn = |problem: String| CheckpointInfo { step, created: newest, bytes, complete: false, problem: Some(problem), shards: 0 };
    if !sizes.contains_key(format::MANIFEST_FILE) {
        return Ok(torn("no manifest.json: data without a manifest (an upload that did not finish)".into()));
    }
    let manifest = match store.get(&key(step, format::MANIFEST_FILE)).await {
        Ok(b) => match Manifest::parse(step, &b) {
            Ok(m) => m,
            Err(problem) => return Ok(torn(problem.to_string())),
        },
        Err(StoreError::NotFound { .. }) => return Ok(torn("manifest.json vanished while listing".into())),
        Err(e) => return Err(e.into()),
    };
    if let Err(problem) = manifest.check_sizes(&sizes) {
        return Ok(torn(problem.to_string()));
    }
    Ok(CheckpointInfo { step, created: manifest.created, bytes, complete: true, problem: None, shards: manifest.shards.len() })
}

/// Downloads the manifest and every file of step `step` and checks sizes
/// and SHA-256; returns the manifest and the files' bytes.
async fn fetch_verified(store: &RunStore, step: u64) -> Result<(Manifest, HashMap<String, Bytes>), CheckpointError> {
    let torn = move |problem: String| CheckpointError::Torn { step, problem };
    let manifest_bytes = match store.get(&key(step, format::MANIFEST_FILE)).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => {
            return Err(if store.list(&format::step_dir(step)).await?.is_empty() {
                CheckpointError::NotFound { url: store.url().into(), step }
            } else {
                torn("no manifest.json: data without a manifest (an upload that did not finish)".into())
            })
        }
        Err(e) => return Err(e.into()),
    };
    let manifest = Manifest::parse(step, &manifest_bytes).map_err(|e| torn(e.to_string()))?;
    // Each file is checked on its own blocking thread as soon as it arrives.
    let checks = manifest.files.iter().cloned().map(|entry| async move {
        let bytes = match store.get(&key(step, &entry.name)).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Err(torn(format!("{} is missing", entry.name))),
            Err(e) => return Err(e.into()),
        };
        tokio::task::spawn_blocking(move || {
            if bytes.len() as u64 != entry.bytes {
                return Err(torn(format!("{} has {} bytes, the manifest says {}", entry.name, bytes.len(), entry.bytes)));
            }
            let sum = format::sha256_hex(&bytes);
            if sum != entry.sha256 {
                return Err(torn(format!("{} fails its checksum (sha256 {sum}, manifest {})", entry.name, entry.sha256)));
            }
            Ok((entry.name, bytes))
        })
        .await
        .map_err(|e| CheckpointError::Invalid { reason: format!("verification task failed: {e}") })?
    });
    let files: HashMap<String, Bytes> = try_join_all(checks).await?.into_iter().collect();
    Ok((manifest, files))
}

/// Checks step `step`'s files against its manifest (size and SHA-256).
pub async fn verify(store: &RunStore, step: u64) -> Result<Manifest, CheckpointError> {
    Ok(fetch_verified(store, step).await?.0)
}

/// Reads and verifies the checkpoint of step `step`, of either layout.
pub async fn read(store: &RunStore, step: u64) -> Result<CheckpointData, CheckpointError> {
    let (manifest, files) = fetch_verified(store, step).await?;
    tokio::task::spawn_blocking(move || match manifest.shards.is_empty() {
        true => encode::decode(step, &files),
        false => sharded::decode(step, &manifest, &files),
    })
    .await
    .map_err(|e| CheckpointError::Invalid { reason: format!("decoding task failed: {e}") })?
}

/// Whether an error means "this checkpoint is bad, try an older one" (as
/// opposed to "the store is unreachable", which must not make a run fall
/// back to an older checkpoint).
fn is_torn(e: &CheckpointError) -> Option<String> {
    match e {
        CheckpointError::Torn { problem, .. } => Some(problem.clone()),
        CheckpointError::Format { file, reason, .. } => Some(format!("{file}: {reason}")),
        CheckpointError::NotFound { .. } => Some("deleted while reading".into()),
        _ => None,
    }
}

/// Walks the checkpoints newest first, calling `try_one` on each complete
/// one until it succeeds; torn ones are skipped with a warning.
async fn newest_good<T, F, Fut>(store: &RunStore, mut try_one: F) -> Result<Option<(T, CheckpointInfo, Vec<Skipped>)>, CheckpointError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<T, CheckpointError>>,
{
    let mut skipped = Vec::new();
    for info in list(store).await?.into_iter().rev() {
        let problem = match &info.problem {
            Some(p) => p.clone(),
            None => match try_one(info.step).await {
                Ok(v) => return Ok(Some((v, info, skipped))),
                Err(e) => is_torn(&e).ok_or(e)?,
            },
        };
        tracing::warn!(step = info.step, problem = %problem, url = store.url(), "skipping a torn checkpoint");
        skipped.push(Skipped { step: info.step, problem });
    }
    Ok(None)
}

/// The newest checkpoint whose files all match its manifest (downloads and
/// hashes them); torn ones are skipped with a warning.
pub async fn latest_complete(store: &RunStore) -> Result<Option<CheckpointInfo>, CheckpointError> {
    Ok(newest_good(store, |step| verify(store, step)).await?.map(|(_, info, _)| info))
}

/// Reads the newest checkpoint that verifies and decodes, skipping torn
/// ones: what a coordinator resumes from. `None` if the run has none. A
/// store that cannot be reached is an error, never a reason to fall back.
pub async fn load_latest(store: &RunStore) -> Result<Option<Loaded>, CheckpointError> {
    Ok(newest_good(store, |step| read(store, step)).await?.map(|(data, info, skipped)| Loaded { data, info, skipped }))
}

/// Retention: keeps the newest `keep_last` complete checkpoints (at least
/// one) and every complete one whose step is a multiple of
/// `milestone_every` (0: no milestones); deletes the other complete ones
/// (manifest first, so each stops existing at once) and the torn leftovers
/// older than the newest complete one. Torn directories newer than that may
/// be an upload in progress and are left alone.
pub async fn prune(store: &RunStore, keep_last: usize, milestone_every: u64) -> Result<PruneReport, CheckpointError> {
    let all = list(store).await?;
    let complete: Vec<u64> = all.iter().filter(|c| c.complete).map(|c| c.step).collect();
    let Some(&newest) = complete.last() else { return Ok(PruneReport::default()) };
    let recent = &complete[complete.len().saturating_sub(keep_last.max(1))..];
    let mut report = PruneReport::default();
    for c in &all {
        let milestone = milestone_every > 0 && c.step % milestone_every == 0;
        if c.complete && (recent.contains(&c.step) || milestone) {
            report.kept.push(c.step);
            continue;
        }
        if !c.complete && c.step >= newest {
            continue;
        }
        delete_checkpoint(store, c.step).await?;
        if c.complete {
            report.deleted.push(c.step);
        } else {
            report.torn_removed.push(c.step);
        }
    }
    Ok(report)
}

/// Deletes a checkpoint directory, the manifest first.
async fn delete_checkpoint(store: &RunStore, step: u64) -> Result<(), CheckpointError> {
    store.delete(&key(step, format::MANIFEST_FILE)).await?;
    for obj in store.list(&format::step_dir(step)).await? {
        store.delete(&obj.key).await?;
    }
    Ok(())
}
