//! `.npz` files (a zip of `.npy` arrays, as `np.savez` and
//! `np.savez_compressed` write them) in the two layouts evaluation uses:
//!
//! - **FID statistics**, pytorch-fid / TTUR layout: `mu` `[D]` and `sigma`
//!   `[D, D]`, float64 (float32 is read too), so that users' existing stats
//!   files work. Written like `np.savez(path, mu=mu, sigma=sigma)`.
//! - **Samples**, the openai / TTUR convention: `arr_0`, uint8
//!   `[N, H, W, 3]` (channels last, like `np.savez(path, images)`), the layout
//!   the guided-diffusion evaluation suite and most FID tools read. Our
//!   tensors are channels first; the writer transposes.
//!
//! Archives are read whether their members are stored or deflated, and
//! written stored (as `np.savez` does), with zip64 records when a member
//! passes 4 GiB.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::error::EvalError;
use super::npy::{npy_header, parse_npy, write_f64, Dtype, NpyArray, NpyData};
use super::stats::FidStats;
use crate::data::{chw_to_hwc, hwc_to_chw};

const STATS_HINT: &str = "a pytorch-fid / TTUR statistics file holds `mu` [D] and `sigma` [D, D] \
                          (np.savez(path, mu=mu, sigma=sigma)); make one with `ddpm data fid-stats`";
const SAMPLES_HINT: &str = "a samples file holds `arr_0`, uint8 [N, H, W, 3] (np.savez(path, images))";

fn open_archive(path: &Path) -> Result<ZipArchive<File>, EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io("open", path, e))?;
    ZipArchive::new(file).map_err(|e| EvalError::npz(path, format!("not a readable zip archive ({e})")))
}

/// The array names in an archive (`mu`, `sigma`, `arr_0`, ...), sorted.
fn keys<R: Read + Seek>(archive: &ZipArchive<R>) -> Vec<String> {
    // For messages only, so a name that is not UTF-8 is shown as best it can be.
    let mut keys: Vec<String> = archive
        .file_names_raw()
        .map(|raw| {
            let n = String::from_utf8_lossy(raw);
            n.strip_suffix(".npy").unwrap_or(&n).to_string()
        })
        .collect();
    keys.sort();
    keys
}

/// Reads array `key` of an open archive.
fn read_member<R: Read + Seek>(archive: &mut ZipArchive<R>, path: &Path, key: &str, hint: &'static str) -> Result<NpyArray, EvalError> {
    let found = keys(archive);
    let mut member = match archive.by_name(&format!("{key}.npy")) {
        Ok(m) => m,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(EvalError::MissingKey { path: path.to_path_buf(), key: key.to_string(), found, hint })
        }
        Err(e) => return Err(EvalError::npz(path, format!("array `{key}`: {e}"))),
    };
    let mut bytes = Vec::with_capacity(member.size().min(1 << 32) as usize);
    member
        .read_to_end(&mut bytes)
        .map_err(|e| EvalError::npz(path, format!("array `{key}` cannot be read (corrupt or truncated archive): {e}")))?;
    parse_npy(&bytes).map_err(|p| EvalError::npz(path, format!("array `{key}`: {p}")))
}

/// Reads one array of an `.npz` file.
pub fn read_npz_array(path: &Path, key: &str) -> Result<NpyArray, EvalError> {
    read_member(&mut open_archive(path)?, path, key, "np.savez names arrays by keyword, or arr_0, arr_1, ...")
}

/// Reads FID statistics (`mu`, `sigma`) from a pytorch-fid / TTUR `.npz`.
pub fn read_stats_npz(path: &Path) -> Result<FidStats, EvalError> {
    let mut archive = open_archive(path)?;
    let mu = read_member(&mut archive, path, "mu", STATS_HINT)?;
    let sigma = read_member(&mut archive, path, "sigma", STATS_HINT)?;
    let what = |k: &str| format!("{}: `{k}`", path.display());
    let d = match mu.shape[..] {
        [d] if d > 0 => d,
        _ => return Err(EvalError::shape(what("mu"), "a vector [D]", format!("{:?} {}", mu.shape, mu.dtype_name()))),
    };
    if sigma.shape != [d, d] {
        return Err(EvalError::shape(what("sigma"), format!("[{d}, {d}] to match mu [{d}]"), format!("{:?}", sigma.shape)));
    }
    if matches!(mu.data, NpyData::U8(_)) || matches!(sigma.data, NpyData::U8(_)) {
        return Err(EvalError::npz(path, "mu and sigma must be float64 or float32, not uint8"));
    }
    FidStats::new(mu.to_f64(), sigma.to_f64()).map_err(|e| match e {
        EvalError::NonFinite(_) => EvalError::NonFinite(format!("{}: mu or sigma", path.display())),
        other => other,
    })
}

/// Writes FID statistics as `np.savez(path, mu=mu, sigma=sigma)` would
/// (float64, stored). Written to a temporary name and renamed, so a reader
/// never sees half a file.
pub fn write_stats_npz(path: &Path, stats: &FidStats) -> Result<(), EvalError> {
    let d = stats.dim();
    atomic_zip(path, |zip, io_err| {
        start(zip, "mu", d * 8)?;
        write_f64(zip, &[d], &stats.mu).map_err(io_err)?;
        start(zip, "sigma", d * d * 8)?;
        write_f64(zip, &[d, d], &stats.sigma).map_err(io_err)
    })
}

type Zip = ZipWriter<BufWriter<File>>;

fn start(zip: &mut Zip, key: &str, data_len: usize) -> Result<(), zip::result::ZipError> {
    let large = data_len as u64 + 1024 >= u32::MAX as u64;
    // A fixed member time (zip's epoch, 1980-01-01): the same arrays give the
    // same file bytes, whenever and wherever they are written.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(large)
        .last_modified_time(zip::DateTime::default());
    zip.start_file(format!("{key}.npy"), options)
}

/// Creates `path.tmp`, lets `fill` write the members, finishes the archive
/// and renames it to `path`.
fn atomic_zip(
    path: &Path,
    fill: impl FnOnce(&mut Zip, &dyn Fn(std::io::Error) -> zip::result::ZipError) -> Result<(), zip::result::ZipError>,
) -> Result<(), EvalError> {
    let tmp = tmp_path(path);
    let file = File::create(&tmp).map_err(|e| EvalError::io("create", &tmp, e))?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let done = fill(&mut zip, &zip::result::ZipError::Io)
        .and_then(|()| zip.finish())
        .and_then(|w| w.into_inner().map_err(|e| e.into_error().into()))
        .and_then(|f| f.sync_all().map_err(Into::into));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(EvalError::io("write", path, std::io::Error::other(e.to_string())));
    }
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io("rename into place", path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Images read from a samples `.npz`.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleImages {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    /// uint8 `[count, 3, height, width]`, channels first like the rest of ddpm.
    pub pixels_nchw: Vec<u8>,
}

/// Reads `arr_0` (uint8 `[N, H, W, 3]`) of a samples `.npz`.
pub fn read_samples_npz(path: &Path) -> Result<SampleImages, EvalError> {
    let arr = read_member(&mut open_archive(path)?, path, "arr_0", SAMPLES_HINT)?;
    let found = format!("{} {:?}", arr.dtype_name(), arr.shape);
    let (n, h, w, hwc) = match (&arr.shape[..], arr.data) {
        ([n, h, w, 3], NpyData::U8(v)) => (*n, *h, *w, v),
        _ => return Err(EvalError::shape(format!("{}: `arr_0`", path.display()), "uint8 [N, H, W, 3]", found)),
    };
    let per = h * w * 3;
    let mut pixels_nchw = Vec::with_capacity(hwc.len());
    for image in hwc.chunks_exact(per.max(1)).take(n) {
        pixels_nchw.extend(hwc_to_chw(image, h, w));
    }
    Ok(SampleImages { count: n, height: h, width: w, pixels_nchw })
}

/// Writes uint8 images `[n, 3, h, w]` as a samples `.npz` (`arr_0`, `[n, h, w, 3]`).
pub fn write_samples_npz(path: &Path, pixels_nchw: &[u8], height: usize, width: usize) -> Result<(), EvalError> {
    let per = 3 * height * width;
    if per == 0 || !pixels_nchw.len().is_multiple_of(per) {
        return Err(EvalError::shape(
            "samples",
            format!("a multiple of 3 x {height} x {width} bytes"),
            format!("{} bytes", pixels_nchw.len()),
        ));
    }
    let mut w = SamplesNpzWriter::create(path, pixels_nchw.len() / per, height, width)?;
    w.push_nchw(pixels_nchw)?;
    w.finish()
}

/// Streams images into a samples `.npz` in index order, for jobs whose
/// images arrive in pieces: the count is fixed up front (it is in the
/// header), [`push_nchw`](Self::push_nchw) takes any number of whole images,
/// and [`finish`](Self::finish) checks that all arrived and renames the
/// file into place (it is written as `path.tmp` until then).
pub struct SamplesNpzWriter {
    path: PathBuf,
    zip: Option<Zip>,
    count: usize,
    written: usize,
    height: usize,
    width: usize,
}

impl SamplesNpzWriter {
    /// Starts `path.tmp` for `count` images of `height x width`.
    pub fn create(path: &Path, count: usize, height: usize, width: usize) -> Result<Self, EvalError> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| EvalError::io("create", &tmp, e))?;
        let mut zip = ZipWriter::new(BufWriter::new(file));
        let io = |e: std::io::Error| EvalError::io("write", &tmp, e);
        start(&mut zip, "arr_0", count * height * width * 3).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        zip.write_all(&npy_header(Dtype::U8, &[count, height, width, 3])).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), zip: Some(zip), count, written: 0, height, width })
    }

    /// Appends whole images, uint8 `[k, 3, h, w]`.
    pub fn push_nchw(&mut self, pixels_nchw: &[u8]) -> Result<(), EvalError> {
        let per = 3 * self.height * self.width;
        if !pixels_nchw.len().is_multiple_of(per.max(1)) {
            return Err(EvalError::shape(
                "samples",
                format!("whole images of 3 x {} x {} bytes", self.height, self.width),
                format!("{} bytes", pixels_nchw.len()),
            ));
        }
        let k = pixels_nchw.len() / per.max(1);
        if self.written + k > self.count {
            return Err(EvalError::InvalidArgument(format!(
                "{}: {} images pushed into a file created for {}",
                self.path.display(),
                self.written + k,
                self.count
            )));
        }
        let tmp = tmp_path(&self.path);
        let zip = self.zip.as_mut().expect("open until finish");
        for image in pixels_nchw.chunks_exact(per) {
            zip.write_all(&chw_to_hwc(image, 3, self.height, self.width)).map_err(|e| EvalError::io("write", &tmp, e))?;
        }
        self.written += k;
        Ok(())
    }

    /// Images written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Completes the archive and renames it into place.
    pub fn finish(mut self) -> Result<(), EvalError> {
        if self.written != self.count {
            return Err(EvalError::InvalidArgument(format!(
                "{}: only {} of {} images were written",
                self.path.display(),
                self.written,
                self.count
            )));
        }
        let tmp = tmp_path(&self.path);
        let zip = self.zip.take().expect("open until finish");
        let err = |e: String| EvalError::io("write", &tmp, std::io::Error::other(e));
        let file = zip.finish().map_err(|e| err(e.to_string()))?.into_inner().map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| EvalError::io("rename into place", &self.path, e))
    }
}

impl Drop for SamplesNpzWriter {
    /// An unfinished writer leaves no partial file behind.
    fn drop(&mut self) {
        if self.zip.take().is_some() {
            let _ = std::fs::remove_file(tmp_path(&self.path));
        }
    }
}
