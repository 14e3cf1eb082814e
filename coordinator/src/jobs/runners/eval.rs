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
use ddpm::eval::{FeatureStats, FidStats};
use ddpm::proto;

use crate::jobs::context::JobContext;
use crate::jobs::outputs::{job_dir, stats_npz_bytes, write_images, JobRecord, GRID_IMAGES};
use crate::jobs::sink::ImageSink;
use crate::jobs::queue::JobEnd;
use crate::jobs::references::ReferenceCache;
use crate::jobs::results::{ResultPart, Results};
use crate::jobs::task_loop::run_tasks;
use crate::jobs::spec::JobSpec;
use crate::jobs::spec_eval::{EvalJobSpec, Metric};
use crate::jobs::tasks::{ranges, TaskBoard};
use crate::work::Work;

/// The work of dataset images `[first, first + count)`: the assignment with
/// `dataset` set as the source, and their encoded bytes.
async fn dataset_work(ds: &Arc<dyn Dataset>, mut assignment: proto::EvalAssignment, first: u64, count: u64) -> anyhow::Result<Work> {
    let decoder_json = serde_json::to_string(&ds.decoder())?;
    let reader = ds.clone();
    let samples = tokio::task::spawn_blocking(move || {
        (first..first + count)
            .map(|i| reader.encoded(i as usize).map(|data| proto::Sample { position: i, data }))
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    assignment.source = Some(proto::eval_assignment::Source::Dataset(proto::DatasetImages { first, count, decoder_json }));
    Ok(Work::Eval { assignment, samples })
}

/// Decodes a part's sums, naming the worker when they are bad.
fn part_sums<T>(part: &ResultPart, what: &str, bytes: Option<&[u8]>, parse: fn(&[u8]) -> Result<T, ddpm::eval::EvalError>) -> anyhow::Result<T> {
    let bytes = bytes.ok_or_else(|| anyhow::anyhow!("worker {} sent no {what} for items {}..{}", part.worker_id, part.first, part.first + part.count))?;
    parse(bytes).map_err(|e| anyhow::anyhow!("worker {} sent unreadable {what} for items {}..{}: {e}", part.worker_id, part.first, part.first + part.count))
}

pub async fn run(ctx: &JobContext, id: u64, spec: &EvalJobSpec, results: &mut Results, started: Instant) -> anyhow::Result<JobEnd> {
    let res = ctx.resolution();
    let (fid, is, bpd) = (spec.has(Metric::Fid), spec.has(Metric::Is), spec.has(Metric::Bpd));
    let batch = spec.eval_batch as u64;
    let base = proto::EvalAssignment { job_id: id, inception: spec.inception.clone(), batch: spec.eval_batch, ..Default::default() };
    let dir = job_dir(id);
    let mut outputs = Vec::new();
    let mut metrics = serde_json::Map::new();

    // Size the job: the datasets it reads decide how many images it measures.
    let mut reference_from: Option<(Arc<dyn Dataset>, String, u64, String)> = None;
    let mut reference: Option<FidStats> = None;
    if fid && !spec.reference_stats.is_empty() {
        let path = std::path::PathBuf::from(&spec.reference_stats);
        reference = Some(tokio::task::spawn_blocking(move || ddpm::eval::read_stats_npz(&path)).await??);
    } else if fid {
        let (ds, name) = ctx.open_dataset(&spec.reference_data).await?;
        let n = if spec.reference_images == 0 { ds.len() as u64 } else { spec.reference_images.min(ds.len() as u64) };
        let key = ReferenceCache::key(&name, n, &spec.inception);
        reference = ctx.references().get(&key);
        if reference.is_none() {
            reference_from = Some((ds, name, n, key));
        }
    }
    let bpd_from = if bpd {
        let (ds, name) = ctx.open_dataset(&spec.bpd_data).await?;
        let n = if spec.bpd_images == 0 { ds.len() as u64 } else { spec.bpd_images.min(ds.len() as u64) };
        Some((ds, name, n))
    } else {
        None
    };
    let total = spec.sample.count + reference_from.as_ref().map_or(0, |r| r.2) + bpd_from.as_ref().map_or(0, |b| b.2);
    ctx.queue().set_total(id, total);
    let mut done = 0u64;
    let progress = |done: u64| ctx.queue().set_progress(id, done);

    // 1. Reference statistics from a dataset.
    if let Some((ds, name, n, key)) = reference_from {
        tracing::info!(job = id, data = %name, images = n, "computing the FID reference statistics");
        let mut stats: Option<FeatureStats> = None;
        let assignment = proto::EvalAssignment { features: true, ..base.clone() };
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "feature statistics", part.features.as_deref(), FeatureStats::from_bytes)?;
            match stats.as_mut() {
                Some(acc) => acc.merge(&s)?,
                None => stats = Some(s),
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(ctx, id, results, TaskBoard::new(ranges(n, batch)), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        let stats = stats.ok_or_else(|| anyhow::anyhow!("no reference features came back"))?.to_fid_stats()?;
        let npz = stats_npz_bytes(&stats).await?;
        let key_npz = format!("{dir}/reference_stats.npz");
        ctx.store().put(&key_npz, npz.into()).await?;
        outputs.push(ctx.store().location(&key_npz));
        ctx.references().insert(key, stats.clone());
        reference = Some(stats);
        metrics.insert("reference".into(), serde_json::json!({ "data": name, "images": n }));
    } else if fid {
        let source = if spec.reference_stats.is_empty() { "computed earlier by this coordinator" } else { spec.reference_stats.as_str() };
        metrics.insert("reference".into(), serde_json::json!({ "stats": source }));
    }

    // 2. Generated samples, drawn and measured on the workers.
    let needs_weights = fid || is || bpd;
    let weights_step = if needs_weights { ctx.pin(id, &spec.sample).await? } else { 0 };
    let mut sink = ImageSink::new(spec.sample.count, res, GRID_IMAGES)?;
    if fid || is {
        let mut gen: Option<FeatureStats> = None;
        let mut scores: Option<ddpm::eval::ScoreStats> = None;
        let assignment = proto::EvalAssignment {
            features: fid,
            is_splits: if is { spec.is_splits } else { 0 },
            is_total: spec.sample.count,
            ..base.clone()
        };
        let make = |first, count| {
            let mut a = assignment.clone();
            a.source = Some(proto::eval_assignment::Source::Sample(spec.sample.assignment(id, weights_step, first, count)));
            async move { Ok::<_, anyhow::Error>(Work::Eval { assignment: a, samples: Vec::new() }) }
        };
        let mut on_part = |part: ResultPart| {
            sink.put(&part)?;
            if fid {
                let s = part_sums(&part, "feature statistics", part.features.as_deref(), FeatureStats::from_bytes)?;
                match gen.as_mut() {
                    Some(acc) => acc.merge(&s)?,
                    None => gen = Some(s),
                }
            }
            if is {
                let s = part_sums(&part, "Inception Score sums", part.scores.as_deref(), ddpm::eval::ScoreStats::from_bytes)?;
                match scores.as_mut() {
                    Some(acc) => acc.merge(&s)?,
                    None => scores = Some(s),
                }
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(ctx, id, results, TaskBoard::new(ranges(spec.sample.count, spec.sample.batch as u64)), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        if fid {
            let gen = gen.ok_or_else(|| anyhow::anyhow!("no sample features came back"))?.to_fid_stats()?;
            let reference = reference.as_ref().expect("fid has reference statistics");
            let value = gen.fid(reference)?;
            let mut m = serde_json::json!({ "value": value, "samples": spec.sample.count });
            if let Some(r) = metrics.remove("reference") {
                m["reference"] = r;
            }
            metrics.insert("fid".into(), m);
        }
        if is {
            let (mean, std) = scores.ok_or_else(|| anyhow::anyhow!("no Inception Score sums came back"))?.score()?;
            metrics.insert(
                "inception_score".into(),
                serde_json::json!({ "mean": mean, "std": std, "splits": spec.is_splits, "samples": spec.sample.count }),
            );
        }
        metrics.insert(
            "features".into(),
            serde_json::json!(format!(
                "TorchScript {} on uint8 images as written to PNG, at the model's {res}x{res} (the file resizes as it was traced)",
                spec.inception
            )),
        );
        outputs.extend(write_images(ctx.store(), &dir, &sink, spec.sample.individual_pngs).await?);
    }

    // 3. The bound on dataset images.
    if let Some((ds, name, n)) = bpd_from {
        tracing::info!(job = id, data = %name, images = n, "computing the bound in bits/dim");
        let mut sums: Option<ddpm::eval::BpdSums> = None;
        let assignment = proto::EvalAssignment { bpd: true, bpd_seed: spec.sample.seed, ..base.clone() };
        let make = |first, count| dataset_work(&ds, assignment.clone(), first, count);
        let mut on_part = |part: ResultPart| {
            let s = part_sums(&part, "bits/dim sums", part.bpd.as_deref(), ddpm::eval::BpdSums::from_bytes)?;
            match sums.as_mut() {
                Some(acc) => acc.merge(&s)?,
                None => sums = Some(s),
            }
            done += part.count;
            progress(done);
            Ok(())
        };
        if !run_tasks(ctx, id, results, TaskBoard::new(ranges(n, batch)), make, &mut on_part).await? {
            return Ok(JobEnd::Cancelled);
        }
        let sums = sums.ok_or_else(|| anyhow::anyhow!("no bound sums came back"))?;
        let count = sums.count as f64;
        anyhow::ensure!(sums.count == n, "the bound covered {} images, the job {n}", sums.count);
        metrics.insert(
            "bpd".into(),
            serde_json::json!({
                "bits_per_dim": sums.mean_total()?,
                "images": n,
                "data": name,
                "prior_bits_per_dim": sums.prior / count,
                "decoder_nll_bits_per_dim": sums.terms.first().copied().unwrap_or(0.0) / count,
                "timesteps": sums.terms.len(),
                "terms_bits_per_dim": sums.terms.iter().map(|v| v / count).collect::<Vec<_>>(),
                "x0_rmse_0_255": sums.x0_mse.iter().map(|v| 127.5 * (v / count).sqrt()).collect::<Vec<_>>(),
            }),
        );
    }

    let seconds = started.elapsed().as_secs_f64();
    let json_key = format!("{dir}/metrics.json");
    outputs.push(ctx.store().location(&json_key));
    let metrics = serde_json::Value::Object(metrics);
    let record = JobRecord {
        job_id: id,
        kind: "eval",
        spec: &JobSpec::Eval(spec.clone()),
        weights_step,
        image_size: res,
        images_by_worker: &sink.by_worker,
        seconds,
        images_per_s: total as f64 / seconds.max(1e-9),
        metrics: Some(&metrics),
        outputs: &outputs,
    };
    record.write(ctx.store(), &json_key).await?;
    Ok(JobEnd::Done { outputs, metrics: serde_json::to_string(&metrics)? })
}

