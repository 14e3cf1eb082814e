//! What jobs leave in the run's store: images as they arrive (placed by
//! index, counted per worker), the grid, the `.npz`, individual PNGs, and
//! the record of the job (`job.json` or `metrics.json`) under `jobs/<id>/`.

use std::collections::BTreeMap;

use ddpm::eval::FidStats;
use ddpm::store::RunStore;
use serde::Serialize;

use super::results::ResultPart;
use super::spec::JobSpec;

/// Images shown in a job's grid (the first ones).
pub const GRID_IMAGES: usize = 256;

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

/// Generated images as they arrive: placed by index, counted per worker.
pub struct ImageSink {
    res: usize,
    pub images: Vec<u8>,
    pub by_worker: BTreeMap<u64, u64>,
}

impl ImageSink {
    pub fn new(count: u64, res: usize) -> Self {
        Self { res, images: vec![0u8; count as usize * 3 * res * res], by_worker: BTreeMap::new() }
    }

    /// Places a result's images; a result whose images do not fit the task
    /// is the worker's fault, and the error names it.
    pub fn put(&mut self, part: &ResultPart) -> anyhow::Result<()> {
        let per = 3 * self.res * self.res;
        let data = part.images.as_deref().unwrap_or_default();
        let start = part.first as usize * per;
        anyhow::ensure!(
            part.resolution as usize == self.res
                && data.len() == part.count as usize * per
                && start + data.len() <= self.images.len(),
            "worker {} sent images of the wrong size or outside the job",
            part.worker_id
        );
        self.images[start..start + data.len()].copy_from_slice(data);
        *self.by_worker.entry(part.worker_id).or_default() += part.count;
        Ok(())
    }
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

/// A grid PNG of the first `shown` images in `cols` columns.
pub fn grid_png(images: &[u8], res: usize, cols: usize, shown: usize) -> anyhow::Result<Vec<u8>> {
    let per = 3 * res * res;
    let refs: Vec<&[u8]> = images.chunks_exact(per).take(shown).collect();
    let (grid, gh, gw) = ddpm::imageio::grid_chw(&refs, 3, res, res, cols.max(1))?;
    Ok(ddpm::imageio::encode_png(&grid, 3, gh, gw)?)
}

/// The columns of a square-ish grid of `n` images.
pub fn square_cols(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Writes generated images under `dir`: the grid of the first ones, the
/// `.npz`, and (`individual`) one PNG each. Returns their locations.
pub async fn write_images(store: &RunStore, dir: &str, images: &[u8], res: usize, individual: bool) -> anyhow::Result<Vec<String>> {
    let shown = (images.len() / (3 * res * res)).min(GRID_IMAGES);
    write_images_grid(store, dir, images, res, square_cols(shown), shown, individual).await
}

/// [`write_images`] with a grid of the first `shown` images in `cols` columns.
pub async fn write_images_grid(
    store: &RunStore,
    dir: &str,
    images: &[u8],
    res: usize,
    cols: usize,
    shown: usize,
    individual: bool,
) -> anyhow::Result<Vec<String>> {
    let per = 3 * res * res;
    let mut outputs = Vec::new();
    let grid_key = format!("{dir}/grid.png");
    store.put(&grid_key, grid_png(images, res, cols, shown)?.into()).await?;
    outputs.push(store.location(&grid_key));

    let npz = {
        let pixels = images.to_vec();
        npz_bytes("samples", move |path| Ok(ddpm::eval::write_samples_npz(path, &pixels, res, res)?)).await?
    };
    let npz_key = format!("{dir}/samples.npz");
    store.put(&npz_key, npz.into()).await?;
    outputs.push(store.location(&npz_key));

    if individual {
        for (i, img) in images.chunks_exact(per).enumerate() {
            let key = format!("{dir}/images/{i:06}.png");
            store.put(&key, ddpm::imageio::encode_png(img, 3, res, res)?.into()).await?;
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
