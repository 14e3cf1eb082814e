//! Evaluation jobs, in phases, each a set of tasks over index ranges: the
//! reference statistics of a dataset (unless a stats `.npz` is given;
//! computed ones are kept for the coordinator's life), the generated
//! samples (drawn exactly as a sample job with the same settings, then
//! measured on the worker), and the bound on dataset images. Workers return
//! float64 sums that the coordinator merges, so the result does not depend
//! on how the ranges were split.

use std::sync::Arc;
use std::time::Instant;

use ddpm::data::Dataset;
use ddpm::eval::{BpdSums, FeatureStats, FidStats, ScoreStats};
use ddpm::proto;
use serde_json::{json, Map, Value};

use crate::jobs::context::JobContext;
use crate::jobs::failure::{JobFailure, Stage};
use crate::jobs::outputs::{job_dir, stats_npz_bytes, write_images, JobRecord, GRID_IMAGES};
use crate::jobs::queue::JobEnd;
use crate::jobs::references::ReferenceCache;
use crate::jobs::results::{ResultPart, Results};
use crate::jobs::sink::ImageSink;
use crate::jobs::spec::JobSpec;
use crate::jobs::spec_eval::{EvalJobSpec, Metric};
use crate::jobs::task_loop::run_tasks;
use crate::jobs::tasks::{ranges, TaskBoard};
use crate::work::Work;

/// Dataset images a phase measures: the dataset, its name, how many.
type Images = (Arc<dyn Dataset>, String, u64);

/// The work of dataset images `[first, first + count)`: the assignment with
/// `dataset` set as the source, and their encoded bytes.
async fn dataset_work(ds: &Arc<dyn Dataset>, mut assignment: proto::EvalAssignment, first: u64, count: u64) -> Result<Work, JobFailure> {
    let decoder_json = serde_json::to_string(&ds.decoder()).or_fail(JobFailure::Input)?;
    let reader = ds.clone();
    let samples = tokio::task::spawn_blocking(move || {
        (first..first + count)
            .map(|i| reader.encoded(i as usize).map(|data| proto::Sample { position: i, data }))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .or_fail(JobFailure::Input)?
    .or_fail(JobFailure::Input)?;
    assignment.source = Some(proto::eval_assignment::Source::Dataset(proto::DatasetImages { first, count, decoder_json }));
    Ok(Work::Eval { assignment, samples })
}

/// Decodes a part's sums, naming the worker when they are bad.
fn part_sums<T>(
    part: &ResultPart,
    what: &str,
    bytes: Option<&[u8]>,
    parse: fn(&[u8]) -> Result<T, ddpm::eval::EvalError>,
) -> Result<T, JobFailure> {
    let items = format!("items {}..{}", part.first, part.first + part.count);
    let bytes = bytes.ok_or_else(|| JobFailure::BadResult(format!("worker {} sent no {what} for {items}", part.worker_id)))?;
    parse(bytes).map_err(|e| JobFailure::BadResult(format!("worker {} sent unreadable {what} for {items}: {e}", part.worker_id)))
}

/// Adds `part`'s sums to `acc` (the first part's start it).
fn merge_into<T>(acc: &mut Option<T>, sums: T, merge: fn(&mut T, &T) -> Result<(), ddpm::eval::EvalError>) -> Result<(), JobFailure> {
    match acc.as_mut() {
        Some(acc) => merge(acc, &sums).or_fail(JobFailure::BadResult),
        None => {
            *acc = Some(sums);
            Ok(())
        }
    }
}

/// A job's sizes and inputs, known before its first task: the reference
/// statistics (given, or cached from an earlier job) or the dataset to
/// compute them from, and the bound's dataset.
struct Plan {
    reference: Option<FidStats>,
    /// With the cache's key.
    reference_from: Option<(Images, String)>,
    bound_from: Option<Images>,
}

/// An evaluation job as its phases run: what they measured and wrote.
struct Eval<'a> {
    ctx: &'a JobContext,
    id: u64,
    spec: &'a EvalJobSpec,
    /// The assignment every task starts from.
    base: proto::EvalAssignment,
    dir: String,
    outputs: Vec<String>,
    metrics: Map<String, Value>,
    /// Images measured so far, for the job's progress.
    done: u64,
}

pub async fn run(ctx: &JobContext, id: u64, spec: &EvalJobSpec, results: &mut Results, started: Instant) -> Result<JobEnd, JobFailure> {
    let (fid, is, bpd) = (spec.has(Metric::Fid), spec.has(Metric::Is), spec.has(Metric::Bpd));
    let mut job = Eval {
        ctx,
        id,
        spec,
        base: proto::EvalAssignment { job_id: id, inception: spec.inception.clone(), batch: spec.eval_batch, ..Default::default() },
        dir: job_dir(id),
        outputs: Vec::new(),
        metrics: Map::new(),
        done: 0,
    };
    // Size the job: the datasets it reads decide how many images it measures.
    let plan = job.plan().await?;
    let total = spec.sample.count + plan.reference_from.as_ref().map_or(0, |r| r.0 .2) + plan.bound_from.as_ref().map_or(0, |b| b.2);
    ctx.queue().set_total(id, total);
    let mut reference = plan.reference;
    if let Some((images, key)) = plan.reference_from {
        let Some(stats) = job.reference(results, images, key).await? else { return Ok(JobEnd::Cancelled) };
        reference = Some(stats);
    } else if fid {
        let source = if spec.reference_stats.is_empty() { "computed earlier by this coordinator" } else { spec.reference_stats.as_str() };
        job.metrics.insert("reference".into(), json!({ "stats": source }));
    }
    let weights_step = if fid || is || bpd { ctx.pin(id, &spec.sample).await.or_fail(JobFailure::Weights)? } else { 0 };
    let mut sink = ImageSink::new(spec.sample.count, ctx.resolution(), GRID_IMAGES)?;
    if (fid || is) && !job.samples(results, weights_step, reference.as_ref(), &mut sink).await? {
        return Ok(JobEnd::Cancelled);
    }
    if let Some(images) = plan.bound_from {
        if !job.bound(results, images).await? {
            return Ok(JobEnd::Cancelled);
        }
    }
    job.finish(weights_step, &sink, total, started).await
}

impl Eval<'_> {
    /// The job's inputs and sizes.
    async fn plan(&self) -> Result<Plan, JobFailure> {
        let (ctx, spec) = (self.ctx, self.spec);
        let mut plan = Plan { reference: None, reference_from: None, bound_from: None };
        if spec.has(Metric::Fid) && !spec.reference_stats.is_empty() {
            let path = std::path::PathBuf::from(&spec.reference_stats);
            let read = tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path)).await;
            plan.reference = Some(read.or_fail(JobFailure::Input)?.or_fail(JobFailure::Input)?);
        } else if spec.has(Metric::Fid) {
            let (ds, name) = ctx.open_dataset(&spec.reference_data).await.or_fail(JobFailure::Input)?;
            let n = if spec.reference_images == 0 { ds.len() as u64 } else { spec.reference_images.min(ds.len() as u64) };
            let key = ReferenceCache::key(&name, n, &spec.inception);
            plan.reference = ctx.references().get(&key);
            if plan.reference.is_none() {
                plan.reference_from = Some(((ds, name, n), key));
            }
        }
        if spec.has(Metric::Bpd) {
            let (ds, name) = ctx.open_dataset(&spec.bpd_data).await.or_fail(JobFailure::Input)?;
            let n = if spec.bpd_images == 0 { ds.len() as u64 } else { spec.bpd_images.min(ds.len() as u64) };
            plan.bound_from = Some((ds, name, n));
        }
        Ok(plan)
    }

    fn progress(&mut self, part: &ResultPart) {
        self.done += part.count;
        self.ctx.queue().set_progress(self.id, self.done);
    }

    /// Phase 1: the FID reference statistics of a dataset, written with the
    /// job's outputs and kept under `key` for later jobs (`None`: the job
    /// was cancelled).
    async fn reference(&mut self, results: &mut Results, (ds, name, n): Images, key: String) -> Result<Option<FidStats>, JobFailure> {
        let (ctx, id) = (self.ctx, self.id);
        tracing::info!(job = id, data = %name, images = n, "computing the FID reference statistics");
        let mut stats: Option<FeatureStats> = None;
        let assignment = proto::EvalAssignment { features: true, ..self.base.clone() };
        let board = TaskBoard::new(ranges(n, self.spec.eval_batch as u64));
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "feature statistics", part.features.as_deref(), FeatureStats::from_bytes)?;
            merge_into(&mut stats, s, FeatureStats::merge)?;
            self.progress(&part);
            Ok(())
        };
        if !run_tasks(ctx, id, results, board, make, &mut on_part).await? {
            return Ok(None);
        }
        let stats = stats.ok_or_else(|| JobFailure::Metrics("no reference features came back".into()))?;
        let stats = stats.to_fid_stats().or_fail(JobFailure::Metrics)?;
        let npz = stats_npz_bytes(&stats).await.or_fail(JobFailure::Outputs)?;
        let key_npz = format!("{}/reference_stats.npz", self.dir);
        ctx.store().put(&key_npz, npz.into()).await.or_fail(JobFailure::Outputs)?;
        self.outputs.push(ctx.store().location(&key_npz));
        ctx.references().insert(key, stats.clone());
        self.metrics.insert("reference".into(), json!({ "data": name, "images": n }));
        Ok(Some(stats))
    }

    /// Phase 2: the generated samples, drawn with the weights of
    /// `weights_step` and measured on the workers (FID against
    /// `reference`, the Inception Score); false when cancelled.
    async fn samples(
        &mut self,
        results: &mut Results,
        weights_step: u64,
        reference: Option<&FidStats>,
        sink: &mut ImageSink,
    ) -> Result<bool, JobFailure> {
        let (ctx, id, spec) = (self.ctx, self.id, self.spec);
        let (fid, is) = (spec.has(Metric::Fid), spec.has(Metric::Is));
        let mut gen: Option<FeatureStats> = None;
        let mut scores: Option<ScoreStats> = None;
        let is_splits = if is { spec.is_splits } else { 0 };
        let assignment = proto::EvalAssignment { features: fid, is_splits, is_total: spec.sample.count, ..self.base.clone() };
        let make = |first, count| {
            let mut a = assignment.clone();
            a.source = Some(proto::eval_assignment::Source::Sample(spec.sample.assignment(id, weights_step, first, count)));
            async move { Ok(Work::Eval { assignment: a, samples: Vec::new() }) }
        };
        let mut on_part = |part: ResultPart| {
            sink.put(&part)?;
            if fid {
                let s = part_sums(&part, "feature statistics", part.features.as_deref(), FeatureStats::from_bytes)?;
                merge_into(&mut gen, s, FeatureStats::merge)?;
            }
            if is {
                let s = part_sums(&part, "Inception Score sums", part.scores.as_deref(), ScoreStats::from_bytes)?;
                merge_into(&mut scores, s, ScoreStats::merge)?;
            }
            self.progress(&part);
            Ok(())
        };
        let board = TaskBoard::new(ranges(spec.sample.count, spec.sample.batch as u64));
        if !run_tasks(ctx, id, results, board, make, &mut on_part).await? {
            return Ok(false);
        }
        if fid {
            let gen = gen.ok_or_else(|| JobFailure::Metrics("no sample features came back".into()))?;
            let reference = reference.expect("fid has reference statistics");
            let value = gen.to_fid_stats().and_then(|g| g.fid(reference)).or_fail(JobFailure::Metrics)?;
            let mut m = json!({ "value": value, "samples": spec.sample.count });
            if let Some(r) = self.metrics.remove("reference") {
                m["reference"] = r;
            }
            self.metrics.insert("fid".into(), m);
        }
        if is {
            let scores = scores.ok_or_else(|| JobFailure::Metrics("no Inception Score sums came back".into()))?;
            let (mean, std) = scores.score().or_fail(JobFailure::Metrics)?;
            let m = json!({ "mean": mean, "std": std, "splits": spec.is_splits, "samples": spec.sample.count });
            self.metrics.insert("inception_score".into(), m);
        }
        let res = ctx.resolution();
        let features = format!(
            "TorchScript {} on uint8 images as written to PNG, at the model's {res}x{res} (the file resizes as it was traced)",
            spec.inception
        );
        self.metrics.insert("features".into(), json!(features));
        let images = write_images(ctx.store(), &self.dir, sink, spec.sample.individual_pngs).await.or_fail(JobFailure::Outputs)?;
        self.outputs.extend(images);
        Ok(true)
    }

    /// Phase 3: the bound in bits/dim on dataset images; false when
    /// cancelled.
    async fn bound(&mut self, results: &mut Results, (ds, name, n): Images) -> Result<bool, JobFailure> {
        let (ctx, id) = (self.ctx, self.id);
        tracing::info!(job = id, data = %name, images = n, "computing the bound in bits/dim");
        let mut sums: Option<BpdSums> = None;
        let assignment = proto::EvalAssignment { bpd: true, bpd_seed: self.spec.sample.seed, ..self.base.clone() };
        let board = TaskBoard::new(ranges(n, self.spec.eval_batch as u64));
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "bits/dim sums", part.bpd.as_deref(), BpdSums::from_bytes)?;
            merge_into(&mut sums, s, BpdSums::merge)?;
            self.progress(&part);
            Ok(())
        };
        if !run_tasks(ctx, id, results, board, make, &mut on_part).await? {
            return Ok(false);
        }
        let sums = sums.ok_or_else(|| JobFailure::Metrics("no bound sums came back".into()))?;
        if sums.count != n {
            return Err(JobFailure::Metrics(format!("the bound covered {} images, the job {n}", sums.count)));
        }
        let count = sums.count as f64;
        let m = json!({
            "bits_per_dim": sums.mean_total().or_fail(JobFailure::Metrics)?,
            "images": n,
            "data": name,
            "prior_bits_per_dim": sums.prior / count,
            "decoder_nll_bits_per_dim": sums.terms.first().copied().unwrap_or(0.0) / count,
            "timesteps": sums.terms.len(),
            "terms_bits_per_dim": sums.terms.iter().map(|v| v / count).collect::<Vec<_>>(),
            "x0_rmse_0_255": sums.x0_mse.iter().map(|v| 127.5 * (v / count).sqrt()).collect::<Vec<_>>(),
        });
        self.metrics.insert("bpd".into(), m);
        Ok(true)
    }

    /// The job's `metrics.json`, and its end.
    async fn finish(mut self, weights_step: u64, sink: &ImageSink, total: u64, started: Instant) -> Result<JobEnd, JobFailure> {
        let seconds = started.elapsed().as_secs_f64();
        let json_key = format!("{}/metrics.json", self.dir);
        self.outputs.push(self.ctx.store().location(&json_key));
        let metrics = Value::Object(self.metrics);
        let record = JobRecord {
            job_id: self.id,
            kind: "eval",
            spec: &JobSpec::Eval(self.spec.clone()),
            weights_step,
            image_size: self.ctx.resolution(),
            images_by_worker: &sink.by_worker,
            seconds,
            images_per_s: total as f64 / seconds.max(1e-9),
            metrics: Some(&metrics),
            outputs: &self.outputs,
        };
        record.write(self.ctx.store(), &json_key).await.or_fail(JobFailure::Outputs)?;
        let metrics = serde_json::to_string(&metrics).or_fail(JobFailure::Outputs)?;
        Ok(JobEnd::Done { outputs: self.outputs, metrics })
    }
}
