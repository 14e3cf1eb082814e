//! The run lease: at most one coordinator writes to a run.
//!
//! The lease is a sequence of objects `lease/epoch_<N>.json` in the run's
//! store; the newest epoch is the current one. A coordinator takes the run
//! by creating the next epoch's object with a create-only put (local: an
//! exclusive create; S3: `If-None-Match: *`), so of two coordinators
//! starting at once exactly one wins. Some S3 servers ignore that header
//! (Garage 2.5 does): there the winner is whoever wrote last, so on S3 a
//! coordinator reads its object back after [`S3_SETTLE`] and gives up if
//! it names another; two starts more than that apart are told apart by
//! the first one's lease anyway. It renews its own object every third
//! of the lease's time to live, and before each renewal checks that no
//! newer epoch exists: a coordinator whose run was taken over finds out at
//! its next renewal and stops writing.
//!
//! A run is free when its current lease was released (a clean exit), has
//! expired (not renewed for its time to live), or names a process on this
//! host that no longer exists (a coordinator killed with SIGKILL, restarted
//! on the same machine, need not wait for the expiry). Otherwise a second
//! coordinator is refused with a message naming the holder.
//!
//! [`RunLease::fence`] is checked by every write of the store handed to the
//! rest of the coordinator (checkpoints, metrics, job outputs, the
//! summary): it refuses writes once the lease is lost, or when it could not
//! be renewed for its time to live (the store is unreachable, and another
//! coordinator may have taken the run meanwhile). Expiry compares the
//! holder's wall clock with the contender's: clocks must agree to well
//! within the time to live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{FenceError, StoreError};
use super::run_store::{Fence, RunStore};

/// Where the lease objects live in the run.
pub const LEASE_DIR: &str = "lease";

/// How long a coordinator waits on S3 before reading its new lease back.
pub const S3_SETTLE: Duration = Duration::from_secs(1);

/// Epochs kept behind the current one (older objects are deleted).
const KEEP_EPOCHS: u64 = 3;

fn key(epoch: u64) -> String {
    format!("{LEASE_DIR}/epoch_{epoch:010}.json")
}

fn epoch_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.strip_prefix("epoch_")?.strip_suffix(".json")?.parse().ok()
}

/// The content of one epoch's lease object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub epoch: u64,
    /// The holder's host name and process id.
    pub host: String,
    pub pid: u32,
    /// The holder's gRPC address, for people.
    pub addr: String,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub ttl_s: f64,
    /// Set on a clean exit: the next coordinator may take the run at once.
    pub released: bool,
}

impl LeaseRecord {
    /// Seconds since the last renewal, by this machine's clock.
    fn age_s(&self, now: DateTime<Utc>) -> f64 {
        (now - self.renewed_at).num_milliseconds() as f64 / 1000.0
    }
}

/// Who is taking the run.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    pub pid: u32,
    pub addr: String,
}

impl Identity {
    /// This process, serving on `addr`.
    pub fn this_process(addr: &str) -> Self {
        Self { host: host_name(), pid: std::process::id(), addr: addr.to_string() }
    }
}

/// The host name (the kernel's, else `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the run {url} is held by another coordinator: {host} pid {pid}, listening on {addr} (lease epoch {epoch}, renewed {age_s:.1} s ago). \
         Only one coordinator may write to a run: stop that one first, or use another --run. If it is gone, its lease expires {left_s:.0} s from now"
    )]
    Held { url: String, host: String, pid: u32, addr: String, epoch: u64, age_s: f64, left_s: f64 },
    #[error("another coordinator took the run {url} at the same moment (lease epoch {epoch}); only one may run")]
    Raced { url: String, epoch: u64 },
    #[error("the lease object {key} of {url} cannot be read ({reason}); if no coordinator runs on this run, delete it")]
    Corrupt { url: String, key: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The fence: open while the lease is held and fresh.
struct LeaseFence {
    ttl: Duration,
    renewed: Mutex<Instant>,
    lost: Mutex<Option<String>>,
}

impl Fence for LeaseFence {
    fn check(&self) -> Result<(), FenceError> {
        if let Some(why) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Err(FenceError::LeaseLost { why: why.clone() });
        }
        let age = self.renewed.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        if age > self.ttl {
            return Err(FenceError::LeaseExpired { age_s: age.as_secs_f64(), ttl_s: self.ttl.as_secs_f64() });
        }
        Ok(())
    }
}

/// The lease this coordinator holds on its run.
pub struct RunLease {
    /// The unfenced store (the lease's own writes must not be fenced by it).
    store: RunStore,
    record: Mutex<LeaseRecord>,
    fence: Arc<LeaseFence>,
}

/// The current (newest) lease of the run, if any.
pub async fn current(store: &RunStore) -> Result<Option<LeaseRecord>, LeaseError> {
    let newest = store.list(LEASE_DIR).await?.into_iter().filter_map(|o| epoch_of(&o.key).map(|e| (e, o.key))).max();
    let Some((_, key)) = newest else { return Ok(None) };
    let bytes = match store.get(&key).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| LeaseError::Corrupt { url: store.url().to_string(), key, reason: e.to_string() })
}

/// True when `rec` names a process of this host that is gone (or this very
/// process id, which cannot hold a lease it is about to take: a restarted
/// container whose coordinator is pid 1 again).
fn holder_gone_here(rec: &LeaseRecord, me: &Identity) -> bool {
    if rec.host != me.host {
        return false;
    }
    rec.pid == me.pid || (cfg!(target_os = "linux") && !std::path::Path::new(&format!("/proc/{}", rec.pid)).exists())
}

impl RunLease {
    /// Takes the run for `me`, or says who holds it.
    pub async fn acquire(store: &RunStore, me: &Identity, ttl: Duration) -> Result<Self, LeaseError> {
        let now = Utc::now();
        let epoch = match current(store).await? {
            None => 1,
            Some(rec) => {
                let age_s = rec.age_s(now);
                if rec.released {
                    tracing::info!(epoch = rec.epoch, "the run's previous coordinator released it");
                } else if age_s > rec.ttl_s {
                    tracing::warn!(epoch = rec.epoch, host = %rec.host, pid = rec.pid, "taking over the run: its lease expired {:.0} s ago", age_s - rec.ttl_s);
                } else if holder_gone_here(&rec, me) {
                    tracing::warn!(
                        epoch = rec.epoch,
                        pid = rec.pid,
                        "taking over the run: its coordinator (pid {} on this host) is gone",
                        rec.pid
                    );
                } else {
                    return Err(LeaseError::Held {
                        url: store.url().to_string(),
                        host: rec.host,
                        pid: rec.pid,
                        addr: rec.addr,
                        epoch: rec.epoch,
                        age_s,
                        left_s: (rec.ttl_s - age_s).max(0.0),
                    });
                }
                rec.epoch + 1
            }
        };
        let record = LeaseRecord {
            epoch,
            host: me.host.clone(),
            pid: me.pid,
            addr: me.addr.clone(),
            acquired_at: now,
            renewed_at: now,
            ttl_s: ttl.as_secs_f64(),
            released: false,
        };
        let body = serde_json::to_vec_pretty(&record).expect("a lease record serializes");
        let raced = || LeaseError::Raced { url: store.url().to_string(), epoch };
        if !store.put_new(&key(epoch), body.into()).await? {
            return Err(raced());
        }
        if store.is_remote() {
            tokio::time::sleep(S3_SETTLE).await;
            let back: Option<LeaseRecord> = serde_json::from_slice(&store.get(&key(epoch)).await?).ok();
            if back.as_ref() != Some(&record) {
                return Err(raced());
            }
        }
        for old in epoch.saturating_sub(KEEP_EPOCHS + 8)..epoch.saturating_sub(KEEP_EPOCHS) {
            let _ = store.delete(&key(old)).await;
        }
        let fence = Arc::new(LeaseFence { ttl, renewed: Mutex::new(Instant::now()), lost: Mutex::new(None) });
        Ok(Self { store: store.clone(), record: Mutex::new(record), fence })
    }

    pub fn epoch(&self) -> u64 {
        self.record().epoch
    }

    fn record(&self) -> LeaseRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fence for the run's store ([`RunStore::fenced_by`]).
    pub fn fence(&self) -> Arc<dyn Fence> {
        self.fence.clone()
    }

    /// Why the lease was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.fence.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn time_to_live(&self) -> Duration {
        self.fence.ttl
    }

    /// One renewal: `Ok(false)` when the run was taken over (the lease is
    /// lost from now on), an error when the store could not be reached.
    pub async fn renew(&self) -> Result<bool, StoreError> {
        let mut rec = self.record();
        if let Some(by) = self.newer(rec.epoch).await? {
            let why = format!("{} pid {} took the run over with epoch {}", by.host, by.pid, by.epoch);
            *self.fence.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            return Ok(false);
        }
        rec.renewed_at = Utc::now();
        let body = serde_json::to_vec_pretty(&rec).expect("a lease record serializes");
        self.store.put(&key(rec.epoch), body.into()).await?;
        *self.fence.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = rec;
        Ok(true)
    }

    /// The lease of an epoch after `epoch`, if one exists.
    async fn newer(&self, epoch: u64) -> Result<Option<LeaseRecord>, StoreError> {
        match current(&self.store).await {
            Ok(Some(rec)) if rec.epoch > epoch => Ok(Some(rec)),
            Ok(_) => Ok(None),
            Err(LeaseError::Store(e)) => Err(e),
            // A newer object that cannot be read is still a newer holder.
            Err(e) => Ok(Some(LeaseRecord { epoch: epoch + 1, host: format!("({e})"), ..self.record() })),
        }
    }

    /// Renews every third of the time to live until the lease is lost;
    /// then calls `on_lost` with the reason and returns.
    pub async fn keep(&self, on_lost: impl Fn(&str)) {
        let every = self.time_to_live() / 3;
        loop {
            tokio::time::sleep(every).await;
            // A store that hangs (not one that refuses) must not hold the
            // next renewal back: each gets until the one after it is due.
            let renewed = match tokio::time::timeout(every, self.renew()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("renewing the run lease took over {:.1} s (is the store hanging?); trying again", every.as_secs_f64());
                    continue;
                }
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    let why = self.lost().unwrap_or_default();
                    tracing::error!("lost the run lease: {why}; this coordinator stops and writes nothing more");
                    return on_lost(&why);
                }
                Err(e) => tracing::warn!(
                    "could not renew the run lease: {e}; writes stop {:.0} s after the last renewal",
                    self.time_to_live().as_secs_f64()
                ),
            }
        }
    }

    /// Marks the lease released (a clean exit), unless it was lost.
    pub async fn release(&self) {
        if self.lost().is_some() {
            return;
        }
        let mut rec = self.record();
        rec.released = true;
        rec.renewed_at = Utc::now();
        let body = serde_json::to_vec_pretty(&rec).expect("a lease record serializes");
        if let Err(e) = self.store.put(&key(rec.epoch), body.into()).await {
            tracing::warn!("could not release the run lease: {e}; the next coordinator waits for it to expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(pid: u32) -> Identity {
        Identity { host: "test-host".into(), pid, addr: "127.0.0.1:1".into() }
    }

    fn local(dir: &std::path::Path) -> RunStore {
        RunStore::open(dir.to_str().unwrap(), &Default::default()).unwrap()
    }

    #[tokio::test]
    async fn a_second_coordinator_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let ttl = Duration::from_secs(60);
        let first = RunLease::acquire(&store, &me(u32::MAX - 1), ttl).await.unwrap();
        assert_eq!(first.epoch(), 1);
        // Another host: the first holder's process cannot be checked, and it is fresh.
        let other = Identity { host: "elsewhere".into(), ..me(7) };
        let e = RunLease::acquire(&store, &other, ttl).await.err().unwrap();
        assert!(matches!(e, LeaseError::Held { epoch: 1, .. }), "{e}");
        assert!(e.to_string().contains("test-host pid 4294967294"), "{e}");
        assert!(first.renew().await.unwrap());
        first.release().await;
        let second = RunLease::acquire(&store, &other, ttl).await.unwrap();
        assert_eq!(second.epoch(), 2);
    }

    #[tokio::test]
    async fn a_dead_holder_on_this_host_or_an_expired_lease_is_taken_over_and_the_old_holder_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        // A pid that cannot exist on this host.
        let dead = Identity { host: host_name(), ..me(u32::MAX - 1) };
        let old = RunLease::acquire(&store, &dead, Duration::from_secs(60)).await.unwrap();
        let new = RunLease::acquire(&store, &Identity::this_process("x"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(new.epoch(), 2);
        // The old holder finds out at its next renewal, and its fence closes.
        assert!(!old.renew().await.unwrap());
        let fenced = store.clone().fenced_by(old.fence());
        let e = fenced.put("summary.json", "{}".into()).await.unwrap_err();
        assert!(e.to_string().contains("lost the run lease") && !e.is_transient(), "{e}");
        assert!(!dir.path().join("summary.json").exists());
        // Expired: a holder elsewhere that stopped renewing is taken over.
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let far = Identity { host: "elsewhere".into(), ..me(3) };
        RunLease::acquire(&store, &far, Duration::from_millis(1)).await.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let third = Identity { host: "third".into(), ..me(4) };
        assert_eq!(RunLease::acquire(&store, &third, Duration::from_secs(60)).await.unwrap().epoch(), 2);
    }

    #[tokio::test]
    async fn an_unrenewed_lease_fences_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let lease = RunLease::acquire(&store, &me(1), Duration::from_millis(50)).await.unwrap();
        let fenced = store.clone().fenced_by(lease.fence());
        fenced.put("a", "1".into()).await.unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let e = fenced.put("b", "2".into()).await.unwrap_err();
        assert!(e.to_string().contains("time to live"), "{e}");
        lease.renew().await.unwrap();
        fenced.put("b", "2".into()).await.unwrap();
    }
}
