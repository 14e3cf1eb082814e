//! Generated images as they arrive: placed by index in a temporary file
//! (unlinked, so nothing is left behind), counted per worker, with the
//! first `keep` also in memory for the grid. A job of 100,000 images at
//! 256x256 is 20 GB of pixels: on disk while it runs, streamed to the
//! store in batches at the end, never one allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::jobs::failure::JobFailure;
use crate::jobs::results::ResultPart;

/// Images read back per batch when writing outputs.
pub const READ_BATCH: usize = 256;

pub struct ImageSink {
    res: usize,
    count: usize,
    file: File,
    /// The first `keep` images (the grid's).
    head: Vec<u8>,
    keep: usize,
    pub by_worker: BTreeMap<u64, u64>,
}

/// Reads a sink's images back, on any thread.
pub struct SinkReader {
    file: File,
    per: usize,
    pub count: usize,
}

/// Why images could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The worker's fault.
    #[error("worker {0} sent images of the wrong size or outside the job")]
    BadImages(u64),
    #[error(
        "cannot keep the job's images in the temporary directory {dir}: {0} (free space there, or point TMPDIR at a larger disk)",
        dir = std::env::temp_dir().display()
    )]
    Scratch(#[from] std::io::Error),
}

impl From<SinkError> for JobFailure {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::BadImages(_) => JobFailure::BadResult(e.to_string()),
            SinkError::Scratch(_) => JobFailure::Scratch(e.to_string()),
        }
    }
}

impl ImageSink {
    /// A sink for `count` images of `res`x`res`, keeping the first `keep`
    /// in memory.
    pub fn new(count: u64, res: usize, keep: usize) -> Result<Self, SinkError> {
        let count = count as usize;
        let keep = keep.min(count);
        let file = tempfile::tempfile()?;
        Ok(Self { res, count, file, head: vec![0u8; keep * 3 * res * res], keep, by_worker: BTreeMap::new() })
    }

    fn per(&self) -> usize {
        3 * self.res * self.res
    }

    /// Places a result's images; a result whose images do not fit the task
    /// is the worker's fault, and the error names it.
    pub fn put(&mut self, part: &ResultPart) -> Result<(), SinkError> {
        let per = self.per();
        let data = part.images.as_deref().unwrap_or_default();
        let first = part.first as usize;
        let fits = part.resolution as usize == self.res
            && data.len() == part.count as usize * per
            && first.checked_add(part.count as usize).is_some_and(|end| end <= self.count);
        if !fits {
            return Err(SinkError::BadImages(part.worker_id));
        }
        self.file.write_all_at(data, (first * per) as u64)?;
        if first < self.keep {
            let n = (self.keep - first).min(part.count as usize);
            self.head[first * per..(first + n) * per].copy_from_slice(&data[..n * per]);
        }
        *self.by_worker.entry(part.worker_id).or_default() += part.count;
        Ok(())
    }

    /// The first `keep` images, uint8 CHW each.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn resolution(&self) -> usize {
        self.res
    }

    /// A reader of every image, for another thread.
    pub fn reader(&self) -> Result<SinkReader, SinkError> {
        Ok(SinkReader { file: self.file.try_clone()?, per: self.per(), count: self.count })
    }
}

impl SinkReader {
    /// Images `[first, first + n)`, uint8 CHW each.
    pub fn read(&self, first: usize, n: usize) -> Result<Vec<u8>, SinkError> {
        let mut buf = vec![0u8; n * self.per];
        self.file.read_exact_at(&mut buf, (first * self.per) as u64)?;
        Ok(buf)
    }

    /// The batches `(first, n)` covering every image.
    pub fn batches(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.count).step_by(READ_BATCH).map(|f| (f, READ_BATCH.min(self.count - f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(worker_id: u64, first: u64, count: u64, value: u8) -> ResultPart {
        ResultPart { worker_id, first, count, resolution: 2, images: Some(vec![value; count as usize * 12]), ..Default::default() }
    }

    #[test]
    fn images_land_by_index_and_the_head_keeps_the_first() {
        let mut sink = ImageSink::new(5, 2, 3).unwrap();
        sink.put(&part(1, 2, 3, 7)).unwrap();
        sink.put(&part(2, 0, 2, 9)).unwrap();
        let r = sink.reader().unwrap();
        let all = r.read(0, 5).unwrap();
        assert_eq!(all.iter().step_by(12).copied().collect::<Vec<_>>(), vec![9, 9, 7, 7, 7]);
        assert_eq!(sink.head(), &all[..36]);
        assert_eq!(sink.by_worker, BTreeMap::from([(1, 3), (2, 2)]));
        assert_eq!(r.batches().collect::<Vec<_>>(), vec![(0, 5)]);
        let e = sink.put(&part(3, 4, 2, 1)).unwrap_err();
        assert_eq!(e.to_string(), "worker 3 sent images of the wrong size or outside the job");
        let e = sink.put(&ResultPart { images: Some(vec![0; 5]), ..part(4, 0, 1, 0) }).unwrap_err();
        assert!(e.to_string().contains("worker 4"));
    }
}
