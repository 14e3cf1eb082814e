//! What jobs leave in the run's store: the grid, the `.npz`, individual
//! PNGs (streamed from the job's [`ImageSink`] in batches), and the record
//! of the job (`job.json` or `metrics.json`) under `jobs/<id>/`.

use std::collections::BTreeMap;

use ddpm::eval::FidStats;
use ddpm::store::RunStore;
use serde::Serialize;

use super::sink::ImageSink;
use super::spec::JobSpec;

/// Where job `id`'s outputs go in the run's store.
pub fn job_dir(id: u64) -> String {
    format!("jobs/{id:06}")
}

/// The highest job id with outputs in the run's store (0: none), so that
/// a restarted coordinator numbers its jobs after the earlier starts'.
pub async fn last_job_id(store: &RunStore) -> Result<u64, ddpm::store::StoreError> {
    let dirs = store.list_dirs("jobs").await?;
    Ok(dirs.iter().filter_map(|d| d.trim_end_matches('/').rsplit('/').next()?.parse::<u64>().ok()).max().unwrap_or(0))
}

/// What `jobs/<id>/job.json` (sample jobs) or `metrics.json` (evaluation
/// jobs) holds.
#[derive(Serialize)]
pub struct JobRecord<'a> {
    pub job_id: u64,
    pub kind: &'static str,
    pub spec: &'a JobSpec,
    pub weights_step: u64,
    pub image_size: usize,
    /// Images drawn by each worker id.
    pub images_by_worker: &'a BTreeMap<u64, u64>,
    pub seconds: f64,
    pub images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<&'a serde_json::Value>,
    pub outputs: &'a [String],
}

impl JobRecord<'_> {
    /// Writes the record to `key` of the run's store.
    pub async fn write(&self, store: &RunStore, key: &str) -> anyhow::Result<()> {
        store.put(key, serde_json::to_vec_pretty(self)?.into()).await?;
        Ok(())
    }
}

/// A grid PNG of the first `shown` images in `cols` columns, at a size a
/// person can see (the exact pixels are in the `.npz`).
pub fn grid_png(images: &[u8], res: usize, cols: usize, shown: usize) -> anyhow::Result<Vec<u8>> {
    Ok(ddpm::imageio::rgb_grid_png(images, res, cols, shown)?)
}

pub use ddpm::imageio::{square_cols, GRID_IMAGES};

/// Writes a job's images under `dir`: the grid of the first ones, the
/// `.npz`, and (`individual`) one PNG each. Returns their locations.
pub async fn write_images(store: &RunStore, dir: &str, sink: &ImageSink, individual: bool) -> anyhow::Result<Vec<String>> {
    let shown = sink.count().min(GRID_IMAGES);
    write_images_grid(store, dir, sink, square_cols(shown), shown, individual).await
}

/// [`write_images`] with a grid of the first `shown` images (which the
/// sink keeps in memory) in `cols` columns.
pub async fn write_images_grid(
    store: &RunStore,
    dir: &str,
    sink: &ImageSink,
    cols: usize,
    shown: usize,
    individual: bool,
) -> anyhow::Result<Vec<String>> {
    let res = sink.resolution();
    let per = 3 * res * res;
    anyhow::ensure!(sink.head().len() >= shown * per, "the grid shows {shown} images, but the job kept {}", sink.head().len() / per);
    let mut outputs = Vec::new();
    let grid_key = format!("{dir}/grid.png");
    store.put(&grid_key, grid_png(sink.head(), res, cols, shown)?.into()).await?;
    outputs.push(store.location(&grid_key));

    // The .npz goes through a temporary file, batch by batch, and streams
    // to the store from there.
    let reader = sink.reader()?;
    let npz = tokio::task::spawn_blocking(move || -> anyhow::Result<tempfile::TempPath> {
        let tmp = tempfile::Builder::new().prefix("ddpm-job-samples-").suffix(".npz").tempfile()?.into_temp_path();
        let mut w = ddpm::eval::SamplesNpzWriter::create(&tmp, reader.count, res, res)?;
        for (first, n) in reader.batches() {
            w.push_nchw(&reader.read(first, n)?)?;
        }
        w.finish()?;
        Ok(tmp)
    })
    .await??;
    let npz_key = format!("{dir}/samples.npz");
    store.put_file(&npz_key, &npz).await?;
    outputs.push(store.location(&npz_key));

    if individual {
        let reader = sink.reader()?;
        for (first, n) in reader.batches() {
            let batch = reader.read(first, n)?;
            for (k, img) in batch.chunks_exact(per).enumerate() {
                let key = format!("{dir}/images/{:06}.png", first + k);
                store.put(&key, ddpm::imageio::encode_png(img, 3, res, res)?.into()).await?;
            }
        }
        outputs.push(store.location(&format!("{dir}/images/")));
    }
    Ok(outputs)
}

/// A stats `.npz` in memory.
pub async fn stats_npz_bytes(stats: &FidStats) -> anyhow::Result<Vec<u8>> {
    let stats = stats.clone();
    npz_bytes("stats", move |path| Ok(ddpm::eval::write_stats_npz(path, &stats)?)).await
}

/// The bytes of an `.npz` that `write` writes to a path (the npz writers
/// stream to files): written to a temporary file on a blocking thread.
async fn npz_bytes(
    what: &'static str,
    write: impl FnOnce(&std::path::Path) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let tmp = tempfile::Builder::new().prefix(&format!("ddpm-job-{what}-")).suffix(".npz").tempfile()?;
        write(tmp.path())?;
        Ok(std::fs::read(tmp.path())?)
    })
    .await?
}
