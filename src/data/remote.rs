//! Datasets in object storage: a spec whose path is an `s3://bucket/key`
//! URL (`cifar10:s3://data/cifar-10-binary.tar.gz`,
//! `lsun:s3://data/church_outdoor_train_lmdb@256`, `folder:s3://data/faces`)
//! is fetched to a local cache once and then read like a local dataset.
//!
//! The URL names one object (an archive, an LMDB `data.mdb`) or a
//! "directory" (every object under `key/`). Objects land in
//! `CACHE/<hash of endpoint and URL>/<last segment of the key>[/...]`,
//! each downloaded to a temporary name and renamed; a record of every
//! object's size and entity tag is written last. A later fetch downloads
//! only objects whose size or tag changed, so restarts reuse the cache.
//! CACHE is `$DDPM_CACHE/datasets`, else `~/.cache/ddpm/datasets`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::spec::{DatasetKind, DatasetSpec};
use crate::store::{ObjectInfo, RunStore, StoreOptions};

/// The record of a cached fetch.
const RECORD: &str = ".ddpm-fetch.json";

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Record {
    url: String,
    objects: Vec<RecordEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RecordEntry {
    key: String,
    size: u64,
    e_tag: Option<String>,
}

/// What [`fetch_remote_to`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchReport {
    /// The spec with its path replaced by the local copy.
    pub spec: DatasetSpec,
    /// Objects downloaded and bytes they hold.
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    /// Objects already in the cache and unchanged.
    pub reused: usize,
}

/// True if the spec's path is an object-store URL.
pub fn is_remote(spec: &DatasetSpec) -> bool {
    spec.kind != DatasetKind::Synthetic && spec.location.starts_with("s3://")
}

/// The default cache root: `$DDPM_CACHE/datasets`, else `~/.cache/ddpm/datasets`.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("DDPM_CACHE") {
        Some(d) => PathBuf::from(d).join("datasets"),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/ddpm/datasets"),
    }
}

/// For a remote spec, fetches it to the default cache and returns the
/// local spec; a local spec is returned unchanged. Call before `data::open`.
pub async fn fetch_remote(spec: &DatasetSpec, opts: &StoreOptions) -> Result<DatasetSpec, DataError> {
    if !is_remote(spec) {
        return Ok(spec.clone());
    }
    Ok(fetch_remote_to(spec, opts, &default_cache_dir()).await?.spec)
}

/// [`fetch_remote`] into `cache_root`, reporting what was downloaded.
pub async fn fetch_remote_to(spec: &DatasetSpec, opts: &StoreOptions, cache_root: &Path) -> Result<FetchReport, DataError> {
    let url = spec.location.trim_end_matches('/').to_string();
    let fail = |problem: String| DataError::Fetch { url: url.clone(), problem };
    if !is_remote(spec) {
        return Err(fail("not an s3:// URL".into()));
    }
    if url.splitn(4, '/').count() < 4 {
        return Err(fail("name an object or folder inside the bucket: s3://BUCKET/KEY".into()));
    }
    let store = RunStore::open(&url, opts).map_err(|e| fail(e.to_string()))?;
    let name = url.rsplit('/').next().unwrap_or("dataset").to_string();
    let endpoint = opts.endpoint.clone().unwrap_or_default();
    let cache = cache_root.join(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{endpoint}|{url}").as_bytes())));

    // A folder: every object under the key; else the object itself.
    let listed = store.list("").await.map_err(|e| fail(e.to_string()))?;
    let folder = !listed.is_empty();
    let (objects, local_root): (Vec<(ObjectInfo, PathBuf)>, PathBuf) = if !folder {
        let info = store
            .head("")
            .await
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("no such object, and no objects under it: check the bucket and key (`aws s3 ls` the URL)".into()))?;
        let path = cache.join(&name);
        (vec![(info, path.clone())], path)
    } else {
        let root = cache.join(&name);
        let mut objs = Vec::with_capacity(listed.len());
        for o in listed {
            let rel = Path::new(&o.key);
            if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(fail(format!("object key {:?} does not map to a local path", o.key)));
            }
            let path = root.join(rel);
            objs.push((o, path));
        }
        (objs, root)
    };

    std::fs::create_dir_all(&cache).map_err(|e| DataError::io(&cache, e))?;
    let record_path = cache.join(RECORD);
    let old: Record = std::fs::read(&record_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut report = FetchReport { spec: spec.clone(), downloaded: 0, downloaded_bytes: 0, reused: 0 };
    let mut record = Record { url: url.clone(), objects: Vec::with_capacity(objects.len()) };
    for (obj, path) in &objects {
        let entry = RecordEntry { key: obj.key.clone(), size: obj.size, e_tag: obj.e_tag.clone() };
        let cached =
            old.url == url && old.objects.contains(&entry) && std::fs::metadata(path).map(|m| m.len() == obj.size).unwrap_or(false);
        if cached {
            report.reused += 1;
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            }
            let n = store.get_to_file(&obj.key, path).await.map_err(|e| fail(e.to_string()))?;
            if n != obj.size {
                return Err(fail(format!("{} changed while downloading ({n} bytes, listed {})", obj.key, obj.size)));
            }
            report.downloaded += 1;
            report.downloaded_bytes += n;
            tracing::info!(key = %obj.key, bytes = n, dest = %path.display(), "dataset object fetched");
        }
        record.objects.push(entry);
    }
    // Objects deleted from a folder since the last fetch leave the cache too.
    if folder && old.url == url {
        for gone in old.objects.iter().filter(|o| !record.objects.iter().any(|n| n.key == o.key)) {
            let _ = std::fs::remove_file(local_root.join(&gone.key));
        }
    }
    let json = serde_json::to_vec_pretty(&record).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&record_path, json).map_err(|e| DataError::io(&record_path, e))?;
    report.spec.location = local_root.display().to_string();
    Ok(report)
}
