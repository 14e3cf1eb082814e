//! A store that fails on command, for fault-injection tests: it wraps a
//! run's store ([`RunStore::with_faults`]) and, while its [`FaultPlan`] says
//! so, fails writes (and reads, if asked) the way a real outage does: a
//! refused connection (transient: retried) or a full disk (permanent:
//! reported at once). Every attempt is recorded with its time (tokio's
//! clock, so tests under paused time see exact backoffs).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};

use super::run_store::RunStore;

/// What a failing operation looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server is down: "Connection refused" (the uploader retries).
    Unreachable,
    /// The disk is full: "No space left on device" (no retry helps).
    Full,
}

/// When the store fails, and a log of the write attempts it saw.
#[derive(Default)]
pub struct FaultPlan {
    /// 0: healthy; 1: writes fail as unreachable; 2: as full.
    writes: AtomicU8,
    /// Writes that still succeed before `writes` applies (-1: none do).
    grace: AtomicI64,
    reads: AtomicBool,
    attempts: Mutex<Vec<(tokio::time::Instant, String)>>,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { grace: AtomicI64::new(-1), ..Self::default() })
    }

    /// Writes fail with `fault` from now on (None: they work again).
    pub fn fail_writes(&self, fault: Option<Fault>) {
        let v = match fault {
            None => 0,
            Some(Fault::Unreachable) => 1,
            Some(Fault::Full) => 2,
        };
        self.grace.store(-1, Ordering::SeqCst);
        self.writes.store(v, Ordering::SeqCst);
    }

    /// The next `n` writes succeed, then they fail with `fault`: a
    /// checkpoint torn half-way.
    pub fn fail_writes_after(&self, n: u64, fault: Fault) {
        self.fail_writes(Some(fault));
        self.grace.store(n as i64, Ordering::SeqCst);
    }

    /// Reads fail as unreachable too (or work again).
    pub fn fail_reads(&self, on: bool) {
        self.reads.store(on, Ordering::SeqCst);
    }

    /// Every write attempt so far (puts, multipart starts), with its time and key.
    pub fn write_attempts(&self) -> Vec<(tokio::time::Instant, String)> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The write attempts on keys containing `needle`.
    pub fn attempts_on(&self, needle: &str) -> Vec<tokio::time::Instant> {
        self.write_attempts().into_iter().filter(|(_, k)| k.contains(needle)).map(|(t, _)| t).collect()
    }

    fn write(&self, key: &Path) -> Result<()> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).push((tokio::time::Instant::now(), key.to_string()));
        let in_grace = self.grace.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| (g > 0).then(|| g - 1)).is_ok();
        match self.writes.load(Ordering::SeqCst) {
            _ if in_grace => Ok(()),
            0 => Ok(()),
            1 => Err(injected("Connection refused (os error 111)")),
            _ => Err(injected("No space left on device (os error 28)")),
        }
    }

    fn read(&self) -> Result<()> {
        if self.reads.load(Ordering::SeqCst) {
            return Err(injected("Connection refused (os error 111)"));
        }
        Ok(())
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic { store: "faults", source: format!("{what} (an injected fault)").into() }
}

/// The wrapper itself.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan").field("writes", &self.writes.load(Ordering::SeqCst)).finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.plan.write(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.plan.write(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.plan.read()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self.plan.read() {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.plan.read()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.plan.write(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

impl RunStore {
    /// This store, failing as `plan` says.
    pub fn with_faults(self, plan: Arc<FaultPlan>) -> Self {
        self.wrapped(|inner| Arc::new(FaultyStore { inner, plan }))
    }
}
