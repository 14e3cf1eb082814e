//! The coordinator's Prometheus metrics (`/metrics` on `--metrics-listen`).
//!
//! Two kinds of numbers: what only events tell (step-time histograms,
//! bytes reduced, redone steps, checkpoint saves and their durations),
//! counted here as the training loop and the uploader report them; and
//! what the components already hold (the last step, members, jobs, the
//! phase, churn, the checkpoint position), read from them at scrape time.
//! A step is recorded here and in the [`RunStatus`] under one lock that
//! scrapes take too, so a scrape never shows step N's loss beside step
//! N+1's histograms.

use std::fmt;
use std::sync::{Arc, Mutex};

use ddpm::checkpoint::UploadEvent;
use ddpm::observe::prom::{self, DescriptorEncoder, Histogram, Labels, Unit};

use crate::jobs::queue::JobQueue;
use crate::lifecycle::{Lifecycle, Phase};
use crate::roster::Roster;
use crate::run_status::RunStatus;
use crate::step_record::StepMetrics;

/// What only events tell.
struct Counts {
    step_s: Histogram,
    compute_s: Histogram,
    allreduce_s: Histogram,
    /// Steps completed by this start, and their images.
    steps: u64,
    images: u64,
    reduced_bytes: u64,
    /// State bytes received off the steps' path: the shadow's feed (ring,
    /// shadow on) and replicas' uploads (shadow off).
    state_bytes: u64,
    redone: u64,
    /// Replica checksums that differed from the coordinator's.
    checksum_mismatches: u64,
    /// Steps the coordinator's copy of the state is behind the run, and
    /// whether it stopped following it.
    shadow_lag: u64,
    shadow_broken: bool,
    saves: u64,
    save_failures: u64,
    save_retries: u64,
    save_s: Histogram,
    saved_bytes: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            step_s: prom::duration_buckets(),
            compute_s: prom::duration_buckets(),
            allreduce_s: prom::duration_buckets(),
            steps: 0,
            images: 0,
            reduced_bytes: 0,
            state_bytes: 0,
            redone: 0,
            checksum_mismatches: 0,
            shadow_lag: 0,
            shadow_broken: false,
            saves: 0,
            save_failures: 0,
            save_retries: 0,
            save_s: Histogram::new(prom::exponential_buckets(0.01, 2.0, 16)),
            saved_bytes: 0,
        }
    }
}

/// The components a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub status: Arc<RunStatus>,
    pub roster: Arc<Roster>,
    pub queue: Arc<JobQueue>,
    pub lifecycle: Arc<Lifecycle>,
    pub total_steps: u64,
    pub workers_expected: usize,
    /// Workers training needs (--min-workers): fewer at the start is a
    /// failed start, fewer later is what an operator is alerted on.
    pub min_workers: usize,
    /// How gradients are reduced ([dist] backend).
    pub reduction: ddpm::config::Backend,
}

/// The coordinator's metrics: record events here, scrape through
/// [`Telemetry::registry`].
pub struct Telemetry {
    counts: Mutex<Counts>,
    sources: Sources,
}

impl Telemetry {
    pub fn new(sources: Sources) -> Arc<Self> {
        Arc::new(Self { counts: Mutex::default(), sources })
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step `m` of `batch` images is done; `reduced_bytes` of gradients
    /// reached the coordinator for it. Also records it in the run status
    /// (`skipped` so far, `window_images_per_s`), under the scrape's lock.
    pub fn record_step(&self, m: &StepMetrics, batch: usize, reduced_bytes: u64, skipped: u64, window_images_per_s: f64) {
        let mut c = self.lock();
        c.step_s.observe(m.step_s);
        c.compute_s.observe(m.compute_s);
        c.allreduce_s.observe(m.allreduce_s);
        c.steps += 1;
        c.images += batch as u64;
        c.reduced_bytes += reduced_bytes;
        self.sources.status.record(m, skipped, window_images_per_s);
    }

    /// `bytes` of state arrived off the steps' path (a feed's chunk, an upload).
    pub fn received_state(&self, bytes: u64) {
        self.lock().state_bytes += bytes;
    }

    /// Gradient and state bytes received by this process so far, on the
    /// steps' path and off it.
    pub fn received_bytes(&self) -> u64 {
        let c = self.lock();
        c.reduced_bytes + c.state_bytes
    }

    /// A step's round failed and the step is redone.
    pub fn step_redone(&self) {
        self.lock().redone += 1;
    }

    /// Where the coordinator's copy of the state (`shadow.rs`) stands:
    /// `lag` steps behind the run, or `broken`.
    pub fn shadow(&self, lag: u64, broken: bool) {
        let mut c = self.lock();
        c.shadow_lag = lag;
        c.shadow_broken = broken;
    }

    /// `n` replicas reported parameters that differ from the coordinator's
    /// (each is sent the coordinator's state).
    pub fn checksum_mismatches(&self, n: u64) {
        self.lock().checksum_mismatches += n;
    }

    /// What the checkpoint uploader reported.
    pub fn upload_event(&self, e: &UploadEvent) {
        let mut c = self.lock();
        match e {
            UploadEvent::Saved { bytes, seconds, .. } => {
                c.saves += 1;
                c.saved_bytes += bytes;
                c.save_s.observe(*seconds);
            }
            UploadEvent::Failed { .. } => c.save_failures += 1,
            UploadEvent::Retrying { .. } => c.save_retries += 1,
            UploadEvent::Superseded { .. } => {}
        }
        self.sources.status.upload_event(e);
    }

    /// A registry that scrapes this.
    pub fn registry(self: &Arc<Self>) -> prometheus_client::registry::Registry {
        prom::registry_of(self.clone())
    }
}

impl prom::Exporter for Telemetry {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let c = self.lock();
        let s = self.sources.status.get();
        let e = &mut e;
        let secs = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        prom::gauges(
            e,
            "build_info",
            "The ddpm version of this coordinator.",
            &[(vec![("version", env!("CARGO_PKG_VERSION").into())], 1.0)],
        )?;
        let phase = self.sources.lifecycle.phase();
        let phases: Vec<(Labels, f64)> =
            Phase::ALL.iter().map(|p| (vec![("phase", p.as_str().to_string())], f64::from(u8::from(*p == phase)))).collect();
        prom::gauges(e, "phase", "1 for the run's current phase.", &phases)?;
        let backend = vec![("backend", self.sources.reduction.name().to_string())];
        prom::gauges(e, "reduction", "How gradients are reduced ([dist] backend): coordinator, ring, nccl or auto.", &[(backend, 1.0)])?;
        prom::gauge(e, "step", "The last completed optimizer step.", None, s.step as f64)?;
        prom::gauge(e, "total_steps", "Optimizer steps the run trains for.", None, self.sources.total_steps as f64)?;
        if let Some(m) = &s.last {
            prom::gauge(e, "loss", "Mean L_simple of the last completed step over its global batch.", None, m.loss)?;
            prom::gauge(e, "grad_norm", "Global norm of the last step's reduced gradient, before clipping.", None, m.grad_norm)?;
            prom::gauge(e, "learning_rate", "The last step's learning rate.", None, m.lr)?;
            prom::gauge(
                e,
                "images_per_second",
                "Images per second of the last step (global batch over its wall time).",
                None,
                m.images_per_s,
            )?;
        }
        if let Some(eta) = s.eta_s(self.sources.total_steps) {
            prom::gauge(e, "eta", "Estimated time to the last step at this start's pace.", secs, eta)?;
        }
        prom::counter(e, "steps", "Optimizer steps completed by this coordinator process.", None, c.steps)?;
        prom::counter(e, "trained_images", "Training images in the steps this process completed.", None, c.images)?;
        prom::histogram(e, "step_duration", "Wall time of a step at the coordinator.", secs, &c.step_s)?;
        prom::histogram(e, "step_compute", "The slowest member's forward and backward time in a step.", secs, &c.compute_s)?;
        prom::histogram(
            e,
            "step_allreduce",
            "Time a step waited for its all-reduce after the last member's gradient began.",
            secs,
            &c.allreduce_s,
        )?;
        prom::counter(
            e,
            "reduced",
            "Gradient bytes the coordinator received on the steps' path (the ring backend: scalars only, whatever the model's size).",
            bytes,
            c.reduced_bytes,
        )?;
        prom::counter(
            e,
            "state_received",
            "State bytes the coordinator received off the steps' path: its copy's feed after each step ([dist] shadow = \"on\" with the ring) and replicas' uploads (shadow \"off\").",
            bytes,
            c.state_bytes,
        )?;
        prom::counter(e, "skipped_steps", "Updates skipped because the gradient was not finite (the whole run).", None, s.skipped_steps)?;
        prom::counter(e, "redone_steps", "Step attempts abandoned and redone (a member failed or was too slow).", None, c.redone)?;

        let churn = self.sources.roster.churn();
        prom::counter(e, "worker_joins", "Workers registered with this coordinator process.", None, churn.joined)?;
        prom::counter(e, "worker_losses", "Members dropped (silent, failed, disconnected or refused mid-step).", None, churn.lost)?;
        prom::gauge(
            e,
            "workers_expected",
            "Workers the run waits for before step 1 (--workers).",
            None,
            self.sources.workers_expected as f64,
        )?;
        prom::gauge(e, "min_workers", "Workers the run needs to train (--min-workers).", None, self.sources.min_workers as f64)?;
        prom::counter(
            e,
            "checksum_mismatches",
            "Replica parameter checksums that differed from the coordinator's (the replica was resynced).",
            None,
            c.checksum_mismatches,
        )?;
        prom::gauge(
            e,
            "shadow_lag",
            "Steps the coordinator's own copy of the state is behind the run ([dist] shadow_lag bounds it).",
            None,
            c.shadow_lag as f64,
        )?;
        prom::gauge(
            e,
            "shadow_broken",
            "1 when the coordinator's copy of the state stopped following the run (a step's update could not be completed).",
            None,
            f64::from(u8::from(c.shadow_broken)),
        )?;
        let members = self.sources.roster.status();
        let mut by_state = Vec::new();
        for role in ["train", "eval"] {
            for state in ["joining", "idle", "busy"] {
                let n = members.iter().filter(|m| m.role == role && m.state == state).count();
                by_state.push((vec![("role", role.to_string()), ("state", state.to_string())], n as f64));
            }
        }
        prom::gauges(e, "members", "Current members by role and state.", &by_state)?;

        prom::counter(e, "checkpoint_saves", "Checkpoints saved by this process.", None, c.saves)?;
        prom::counter(e, "checkpoint_failures", "Checkpoints given up after their retries.", None, c.save_failures)?;
        prom::counter(e, "checkpoint_retries", "Checkpoint upload attempts that failed and were retried.", None, c.save_retries)?;
        prom::histogram(e, "checkpoint_save_duration", "Time to write a checkpoint to the store.", secs, &c.save_s)?;
        prom::counter(e, "checkpoint_written", "Bytes of the checkpoints saved by this process.", bytes, c.saved_bytes)?;
        prom::gauge(e, "last_checkpoint_step", "Step of the newest checkpoint in the store (0: none).", None, s.last_checkpoint as f64)?;
        prom::gauge(
            e,
            "unsaved_steps",
            "Steps done since the newest checkpoint: what a crash now would redo.",
            None,
            s.unsaved_steps() as f64,
        )?;
        prom::gauge(
            e,
            "checkpoint_failing",
            "1 while the last checkpoint upload failed (until one is saved).",
            None,
            f64::from(u8::from(s.checkpoint_error.is_some())),
        )?;

        let jobs = self.sources.queue.list();
        let mut by_kind = Vec::new();
        for kind in ["sample", "eval", "analysis", "grid"] {
            for state in ["queued", "running", "done", "failed", "cancelled"] {
                let n = jobs.iter().filter(|j| j.kind == kind && j.state == state).count();
                by_kind.push((vec![("kind", kind.to_string()), ("state", state.to_string())], n as f64));
            }
        }
        prom::gauges(e, "jobs", "Jobs of this coordinator process by kind and state.", &by_kind)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm::observe::prom::parse_sample;

    #[test]
    fn a_scrape_shows_the_last_step_and_the_counts() {
        let status = Arc::new(RunStatus::starting_at(0, vec![]));
        let t = Telemetry::new(Sources {
            status: status.clone(),
            roster: Arc::new(Roster::default()),
            queue: Arc::new(JobQueue::numbered_after(0)),
            lifecycle: Arc::new(Lifecycle::default()),
            total_steps: 10,
            workers_expected: 2,
            min_workers: 1,
            reduction: ddpm::config::Backend::Ring,
        });
        for step in 1..=3 {
            let m = StepMetrics {
                step,
                loss: 0.5 / step as f64,
                grad_norm: 2.0,
                lr: 1e-4,
                step_s: 0.2,
                compute_s: 0.1,
                allreduce_s: 0.05,
                images_per_s: 40.0,
                ..Default::default()
            };
            t.record_step(&m, 8, 1000, 0, 40.0);
        }
        t.step_redone();
        t.checksum_mismatches(2);
        t.upload_event(&UploadEvent::Saved {
            step: 2,
            reason: ddpm::checkpoint::Reason::Steps,
            bytes: 300,
            seconds: 0.5,
            attempts: 1,
            pruned: vec![],
        });
        let text = prom::encode(&t.registry());
        let v = |s: &str| parse_sample(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
        assert_eq!(v("ddpm_step"), 3.0);
        assert_eq!(v("ddpm_loss"), 0.5 / 3.0);
        assert_eq!(v("ddpm_step_compute_seconds_count"), 3.0);
        assert!((v("ddpm_step_compute_seconds_sum") - 0.3).abs() < 1e-9);
        assert_eq!(v("ddpm_reduced_bytes_total"), 3000.0);
        assert_eq!(v("ddpm_trained_images_total"), 24.0);
        assert_eq!(v("ddpm_redone_steps_total"), 1.0);
        assert_eq!(v("ddpm_checksum_mismatches_total"), 2.0);
        assert_eq!(v("ddpm_min_workers"), 1.0);
        assert_eq!(v("ddpm_checkpoint_saves_total"), 1.0);
        assert_eq!(v("ddpm_checkpoint_written_bytes_total"), 300.0);
        assert_eq!(v("ddpm_unsaved_steps"), 1.0);
        assert_eq!(v("ddpm_phase{phase=\"waiting\"}"), 1.0);
        assert_eq!(v("ddpm_jobs{kind=\"sample\",state=\"queued\"}"), 0.0);
        assert_eq!(v("ddpm_members{role=\"train\",state=\"joining\"}"), 0.0);
    }
}
