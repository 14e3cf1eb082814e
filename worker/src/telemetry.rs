//! The worker's own numbers, on its `--metrics-listen` port: Prometheus
//! metrics at `/metrics` (its device, step and compute times, gradient
//! bytes sent and received, reconnects, job tasks) and the gRPC health
//! service on the same port (HTTP/1 for scrapes, HTTP/2 for gRPC probes).
//!
//! Health: the overall status ("") is SERVING while the process runs its
//! loop (a liveness probe); `ddpm.v1.Worker` is SERVING while the worker is
//! a member of a run and NOT_SERVING while it connects, joins or
//! reconnects (a readiness probe: a worker that lost its coordinator is
//! not restarted for it, it reconnects by itself).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use ddpm::observe::health::Health;
use ddpm::observe::http as obs_http;
use ddpm::observe::prom::{self, DescriptorEncoder, Histogram, Unit};

/// The health service name of a worker's membership.
pub const MEMBER_SERVICE: &str = "ddpm.v1.Worker";

/// What a worker counts; shared by its sessions.
pub struct WorkerStats {
    device: String,
    name: String,
    joined: AtomicBool,
    worker_id: AtomicU64,
    last_step: AtomicU64,
    steps: AtomicU64,
    abandoned: AtomicU64,
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    joins: AtomicU64,
    reconnects: AtomicU64,
    tasks: AtomicU64,
    times: Mutex<(Histogram, Histogram)>,
    /// The reduction backend of its last step ("": none yet) and the ring
    /// all-reduce times (ring backend only).
    reduction: Mutex<(&'static str, Histogram, &'static str)>,
    health: Mutex<Option<Health>>,
}

impl fmt::Debug for WorkerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerStats").field("device", &self.device).field("joined", &self.joined).finish()
    }
}

impl WorkerStats {
    pub fn new(device: &str, name: &str) -> Arc<Self> {
        Arc::new(Self {
            device: device.to_string(),
            name: name.to_string(),
            joined: AtomicBool::new(false),
            worker_id: AtomicU64::new(0),
            last_step: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            tasks: AtomicU64::new(0),
            times: Mutex::new((prom::duration_buckets(), prom::duration_buckets())),
            reduction: Mutex::new(("", prom::duration_buckets(), "")),
            health: Mutex::new(None),
        })
    }

    fn health(&self) -> Option<Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Joined the run as worker `id` (`Some`), or left it (`None`).
    pub async fn set_member(&self, id: Option<u64>) {
        self.joined.store(id.is_some(), Ordering::SeqCst);
        if let Some(id) = id {
            self.worker_id.store(id, Ordering::SeqCst);
            self.joins.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = self.health() {
            h.set(MEMBER_SERVICE, id.is_some()).await;
        }
    }

    /// A session ended (the coordinator was lost, refused the worker or
    /// dropped it) and a new one begins.
    pub fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Step `step` applied: its compute and whole time, and the gradient
    /// bytes sent and received for it.
    pub fn step_applied(&self, step: u64, compute_s: f64, step_s: f64, bytes: u64) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.last_step.store(step, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
        let t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        t.0.observe(compute_s);
        t.1.observe(step_s);
    }

    /// A step's gradient went through `backend`; for the ring, its
    /// all-reduce took `ring_s` (connections, reduce-scatter, all-gather)
    /// over links that carried the bytes as `links` says
    /// ("from/to", each `shm` or `tcp`).
    pub fn reduced_by(&self, backend: &'static str, ring: Option<(f64, &'static str)>) {
        let mut r = self.reduction.lock().unwrap_or_else(|p| p.into_inner());
        r.0 = backend;
        if let Some((s, links)) = ring {
            r.1.observe(s);
            if r.2 != links {
                tracing::info!("ring links (from the predecessor/to the successor): {links}");
            }
            r.2 = links;
        } else {
            r.2 = "";
        }
    }

    /// A step attempt abandoned by the coordinator (it is redone).
    pub fn step_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// A job task (sampling, evaluation, analysis) done.
    pub fn task_done(&self) {
        self.tasks.fetch_add(1, Ordering::Relaxed);
    }
}

impl prom::Exporter for WorkerStats {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut e;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        let info = vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("device", self.device.clone()), ("name", self.name.clone())];
        prom::gauges(e, "worker_info", "This worker's version, device and name.", &[(info, 1.0)])?;
        prom::gauge(
            e,
            "worker_member",
            "1 while the worker is a member of a run.",
            None,
            f64::from(u8::from(self.joined.load(Ordering::SeqCst))),
        )?;
        prom::gauge(e, "worker_id", "The worker id of its current or last membership (0: none yet).", None, n(&self.worker_id) as f64)?;
        prom::gauge(e, "worker_last_step", "The last training step it applied.", None, n(&self.last_step) as f64)?;
        prom::counter(e, "worker_steps", "Training steps it computed and applied.", None, n(&self.steps))?;
        prom::counter(e, "worker_abandoned_steps", "Step attempts the coordinator abandoned (redone).", None, n(&self.abandoned))?;
        let t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        prom::histogram(e, "worker_step_compute", "Decode, forward and backward of its shard.", secs, &t.0)?;
        prom::histogram(e, "worker_step_duration", "A whole step: compute, all-reduce, update.", secs, &t.1)?;
        drop(t);
        let r = self.reduction.lock().unwrap_or_else(|p| p.into_inner());
        if !r.0.is_empty() {
            let labels = vec![("backend", r.0.to_string()), ("ring_links", r.2.to_string())];
            prom::gauges(e, "worker_reduction", "The reduction backend of its last step ([dist] backend) and, for the ring, how its links carried the bytes (from/to: shm or tcp).", &[(labels, 1.0)])?;
        }
        prom::histogram(
            e,
            "worker_ring_allreduce",
            "Ring all-reduces (ring backend): connecting, reduce-scatter and all-gather.",
            secs,
            &r.1,
        )?;
        drop(r);
        prom::counter(e, "worker_gradient_sent", "Gradient bytes sent to the all-reduce.", bytes, n(&self.sent_bytes))?;
        prom::counter(e, "worker_gradient_received", "Reduced gradient bytes received.", bytes, n(&self.received_bytes))?;
        prom::counter(e, "worker_joins", "Times it joined a run.", None, n(&self.joins))?;
        prom::counter(
            e,
            "worker_reconnects",
            "Sessions begun again after one ended (the coordinator lost, or refusing or dropping this worker).",
            None,
            n(&self.reconnects),
        )?;
        prom::counter(e, "worker_tasks", "Job tasks (sampling, evaluation, analysis) it finished.", None, n(&self.tasks))?;
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and the gRPC health service on `addr`
/// until the process ends; prints the bound address.
pub async fn serve(addr: &str, stats: Arc<WorkerStats>) -> anyhow::Result<()> {
    let listener = obs_http::bind(addr).await?;
    obs_http::announce(listener.local_addr()?);
    let health = Health::new(&[MEMBER_SERVICE], false).await;
    health.set("", true).await;
    *stats.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(health.clone());
    // The membership may have begun before the port was up.
    health.set(MEMBER_SERVICE, stats.joined.load(Ordering::SeqCst)).await;
    let registry = Arc::new(prom::registry_of(stats));
    let grpc = tonic::service::Routes::new(health.service()).into_axum_router();
    let router = axum::Router::new()
        .route("/metrics", get(move || async move { obs_http::metrics_response(prom::encode(&registry)) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(grpc);
    obs_http::spawn(listener, router, std::future::pending());
    Ok(())
}
