//! [`RunStore`]: the storage of one run, a root directory or an S3 bucket
//! and prefix, and its API (see the module's docs in `mod.rs`).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::error::{self, FenceError, StoreError};
use super::options::{Location, StoreOptions, DEFAULT_PART_SIZE, MIN_PART_SIZE};

/// Upload parts in flight per multipart upload.
const PART_CONCURRENCY: usize = 4;

/// An object under the run's root.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectInfo {
    /// Key relative to the run's root.
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    /// The store's entity tag (S3: the MD5 or multipart tag; local: inode, size and mtime).
    pub e_tag: Option<String>,
}

/// Asked before every write of a fenced store: `Err(reason)` refuses it.
pub trait Fence: Send + Sync {
    fn check(&self) -> Result<(), FenceError>;
}

/// The storage of one run: a root directory or an S3 bucket and prefix.
#[derive(Clone)]
pub struct RunStore {
    inner: Arc<dyn ObjectStore>,
    /// Prefix of every key inside `inner` (empty for the local store, whose root is the directory).
    root: String,
    /// The location as the user wrote it, for messages.
    url: String,
    endpoint: String,
    region: String,
    bucket: Option<String>,
    part_size: usize,
    /// Asked before every write (none: writes are not fenced).
    fence: Option<Arc<dyn Fence>>,
    /// How another process reaches this store ([`RunStore::peer_location`]).
    peer: Arc<PeerLocation>,
}

/// How another process (a replica writing its checkpoint shard) reaches a
/// store, its credentials apart: they stay in each process's environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerLocation {
    /// An absolute local path, or `s3://bucket/prefix`.
    pub url: String,
    /// S3 only: the endpoint and region as this process resolved them.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_allow_http: bool,
}

impl RunStore {
    /// This store with its object store wrapped by `wrap` (fault
    /// injection, `faulty.rs`).
    pub(super) fn wrapped(mut self, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Self {
        self.inner = wrap(self.inner);
        self
    }
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunStore({})", self.url)
    }
}

impl RunStore {
    /// Opens the run at `url` (see [`Location`]). A local directory is
    /// created if missing; an S3 store is not contacted until the first
    /// operation (use [`RunStore::check`] to fail early).
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        match Location::parse(url)? {
            Location::Local(dir) => Self::open_local(url, &dir, opts),
            Location::S3 { bucket, prefix } => Self::open_s3(url, bucket, prefix, opts),
        }
    }

    fn open_local(url: &str, dir: &std::path::Path, opts: &StoreOptions) -> Result<Self, StoreError> {
        let cfg = |reason: String| StoreError::Config { url: url.to_string(), reason };
        std::fs::create_dir_all(dir).map_err(|e| cfg(format!("cannot create the directory {}: {e}", dir.display())))?;
        // Another process (a replica) may not share this one's working directory.
        let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| cfg(format!("cannot use the directory {}: {e}", dir.display())))?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(Self {
            inner: Arc::new(fs),
            root: String::new(),
            url: url.to_string(),
            endpoint: format!("file://{}", dir.display()),
            region: String::new(),
            bucket: None,
            part_size: opts.part_size.unwrap_or(DEFAULT_PART_SIZE).max(MIN_PART_SIZE),
            fence: None,
            peer: Arc::new(PeerLocation { url: absolute.display().to_string(), ..PeerLocation::default() }),
        })
    }

    fn open_s3(url: &str, bucket: String, prefix: String, opts: &StoreOptions) -> Result<Self, StoreError> {
        let r = opts.resolve(url)?;
        let retry = &opts.retry;
        let retry_config = object_store::RetryConfig {
            backoff: object_store::BackoffConfig { init_backoff: retry.initial_backoff, max_backoff: retry.max_backoff, base: 2.0 },
            max_retries: retry.max_retries,
            retry_timeout: retry.retry_timeout,
        };
        let client = ClientOptions::new()
            .with_allow_http(r.allow_http)
            .with_connect_timeout(retry.connect_timeout)
            .with_timeout(retry.request_timeout);
        // from_env keeps the web-identity / container credential chains
        // working; everything that matters is then set explicitly.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(&r.region)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(r.allow_http)
            .with_retry(retry_config)
            .with_client_options(client);
        if let Some(e) = &r.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some((k, s)) = &r.credentials {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        if let Some(t) = &r.session_token {
            b = b.with_token(t);
        }
        let s3 = b.build().map_err(|e| StoreError::Config { url: url.to_string(), reason: e.to_string() })?;
        let endpoint = r.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", r.region));
        let peer = PeerLocation {
            url: url.to_string(),
            s3_endpoint: r.endpoint.clone(),
            s3_region: Some(r.region.clone()),
            s3_allow_http: r.allow_http,
        };
        Ok(Self {
            inner: Arc::new(s3),
            root: prefix,
            url: url.to_string(),
            endpoint,
            region: r.region,
            bucket: Some(bucket),
            part_size: r.part_size,
            fence: None,
            peer: Arc::new(peer),
        })
    }

    /// The location as given to [`RunStore::open`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where `key` of the store is, for people (logs, summaries, job outputs).
    pub fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.url().trim_end_matches('/'))
    }

    /// How another process reaches this store: the absolute path, or the
    /// S3 location with its endpoint and region (never the credentials).
    pub fn peer_location(&self) -> &PeerLocation {
        &self.peer
    }

    /// True for an S3 store.
    pub fn is_remote(&self) -> bool {
        self.bucket.is_some()
    }

    /// Objects larger than this are uploaded in parts of this size.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    fn path(&self, key: &str) -> Result<ObjPath, StoreError> {
        let key = key.trim_matches('/');
        let full = match (self.root.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.root.clone(),
            (false, false) => format!("{}/{key}", self.root),
        };
        ObjPath::parse(&full).map_err(|e| StoreError::InvalidUrl { url: format!("{}/{key}", self.url), reason: e.to_string() })
    }

    /// The key of `path` relative to the root.
    fn relative(&self, path: &ObjPath) -> String {
        let s = path.as_ref();
        if self.root.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.root).map(|r| r.trim_start_matches('/')).unwrap_or(s).to_string()
        }
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        error::classify(
            e,
            &error::Context { url: &self.url, endpoint: &self.endpoint, region: &self.region, bucket: self.bucket.as_deref(), op, key },
        )
    }

    /// This store, with every write asking `fence` first.
    pub fn fenced_by(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    fn check_fence(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        match &self.fence {
            Some(f) => f.check().map_err(|reason| StoreError::Fenced { url: self.url.clone(), op, key: key.to_string(), reason }),
            None => Ok(()),
        }
    }

    /// Writes `data` at `key` only if no object is there (local: an
    /// exclusive create; S3: `If-None-Match: *`); `Ok(false)` when one is.
    /// S3 servers that ignore the header (Garage 2.5, unlike AWS S3, MinIO
    /// or R2) overwrite instead: callers that need to know read back.
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.check_fence("create", key)?;
        let path = self.path(key)?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&path, PutPayload::from(data), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err("create", key, e)),
        }
    }

    /// Writes `data` at `key`, replacing any object there; multipart above
    /// [`RunStore::part_size`]. A failed multipart upload is aborted.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check_fence("put", key)?;
        let path = self.path(key)?;
        if data.len() <= self.part_size {
            self.inner.put(&path, PutPayload::from(data)).await.map_err(|e| self.err("put", key, e))?;
            return Ok(());
        }
        let upload = self.inner.put_multipart(&path).await.map_err(|e| self.err("start multipart upload of", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut rest = data;
        while !rest.is_empty() {
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(self.err("upload a part of", key, e));
            }
            let n = rest.len().min(self.part_size);
            writer.put(rest.split_to(n));
        }
        writer.finish().await.map_err(|e| self.err("complete multipart upload of", key, e))?;
        Ok(())
    }

    /// Streams the file at `path` to `key` (multipart above
    /// [`RunStore::part_size`], one part in memory per upload slot);
    /// returns its size.
    pub async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<u64, StoreError> {
        use tokio::io::AsyncReadExt;
        self.check_fence("put", key)?;
        let local = |e: std::io::Error| error::local_io(&self.url, "upload", key, path, &e);
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        if size <= self.part_size as u64 {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).await.map_err(local)?;
            self.put(key, data.into()).await?;
            return Ok(size);
        }
        let target = self.path(key)?;
        let upload = self.inner.put_multipart(&target).await.map_err(|e| self.err("start multipart upload of", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut sent = 0u64;
        while sent < size {
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(self.err("upload a part of", key, e));
            }
            let n = (size - sent).min(self.part_size as u64) as usize;
            let mut part = vec![0u8; n];
            if let Err(e) = file.read_exact(&mut part).await {
                let _ = writer.abort().await;
                return Err(local(e));
            }
            writer.put(part.into());
            sent += n as u64;
        }
        writer.finish().await.map_err(|e| self.err("complete multipart upload of", key, e))?;
        Ok(size)
    }

    /// The bytes at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let res = self.inner.get(&path).await.map_err(|e| self.err("get", key, e))?;
        res.bytes().await.map_err(|e| self.err("read", key, e))
    }

    /// Streams the object at `key` into the file `dest` (written as
    /// `dest.partial`, then renamed); returns its size.
    pub async fn get_to_file(&self, key: &str, dest: &std::path::Path) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(key)?;
        let res = self.inner.get(&path).await.map_err(|e| self.err("get", key, e))?;
        let tmp = dest.with_extension("partial");
        let local = |e: std::io::Error| error::local_io(&self.url, "download", key, &tmp, &e);
        let mut file = tokio::fs::File::create(&tmp).await.map_err(local)?;
        let mut stream = res.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.err("read", key, e))? {
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        file.sync_all().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&tmp, dest).await.map_err(local)?;
        Ok(size)
    }

    /// The object at `key`, or `None` if there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key)?;
        match self.inner.head(&path).await {
            Ok(meta) => Ok(Some(self.info(meta))),
            Err(object_store::Error::NotFound { .. }) if self.bucket.is_none() => Ok(None),
            Err(e) => match self.err("head", key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.head(key).await?.is_some())
    }

    /// Every object whose key starts with the directory `prefix` (`""`: all),
    /// recursively, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.trim_matches('/');
        let path = if prefix.is_empty() && self.root.is_empty() { None } else { Some(self.path(prefix)?) };
        let metas: Vec<_> = match self.inner.list(path.as_ref()).try_collect().await {
            Ok(m) => m,
            // The local store reports a missing directory as NotFound: nothing there.
            Err(object_store::Error::NotFound { .. }) if self.bucket.is_none() => Vec::new(),
            Err(e) => return Err(self.err("list", prefix, e)),
        };
        let mut out: Vec<ObjectInfo> = metas.into_iter().map(|m| self.info(m)).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The immediate "subdirectories" of `prefix` (common prefixes), as
    /// relative keys, sorted.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.trim_matches('/');
        let path = if prefix.is_empty() && self.root.is_empty() { None } else { Some(self.path(prefix)?) };
        let res = match self.inner.list_with_delimiter(path.as_ref()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) if self.bucket.is_none() => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list", prefix, e)),
        };
        let mut dirs: Vec<String> = res.common_prefixes.iter().map(|p| self.relative(p)).collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Deletes `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_fence("delete", key)?;
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => match self.err("delete", key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Lists the root once: fails early, with the classified error, when the
    /// store is unreachable, the bucket missing or the credentials wrong.
    pub async fn check(&self) -> Result<(), StoreError> {
        let path = if self.root.is_empty() { None } else { Some(self.path("")?) };
        match self.inner.list_with_delimiter(path.as_ref()).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) if self.bucket.is_none() => Ok(()),
            Err(e) => Err(self.err("list", "", e)),
        }
    }

    fn info(&self, m: object_store::ObjectMeta) -> ObjectInfo {
        ObjectInfo { key: self.relative(&m.location), size: m.size, last_modified: m.last_modified, e_tag: m.e_tag }
    }
}
