//! The per-step metrics log: one JSON object per step (and one per finished
//! periodic evaluation). A local run appends to `RUN/metrics.jsonl` at each
//! logging interval (`tail -f` works); an object store cannot append, so
//! there the lines go up in segments, `metrics/step_<first step>.jsonl`,
//! one per logging interval.
//!
//! A failing write never ends the run: the rows stay in memory (up to
//! [`MAX_PENDING_ROWS`]; beyond that the oldest are dropped and counted),
//! the failure is logged once with the file and the cause, and the next
//! flush tries again. A local append that fails half-way is cut back to
//! where it started, so a retry never leaves a torn line.
//!
//! On resume, rows after the resumed checkpoint's step (written by a start
//! that died before checkpointing them) are superseded: removed from the
//! log before the new rows, so every step appears once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ddpm::store::metrics_rows::RunRows;
use ddpm::store::{Location, RunStore, StoreError};
use serde::Serialize;

use crate::step_record::StepMetrics;
use crate::telemetry::history::RunHistory;

/// Rows held while the log cannot be written (about 300 bytes each).
pub const MAX_PENDING_ROWS: usize = 100_000;

/// Why a write of the log failed (the rows are kept for the next one).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("cannot {what} {}: {source}", path.display())]
    Local { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the write task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

enum Sink {
    Local(PathBuf),
    Remote(RunStore),
}

pub struct MetricsLog {
    sink: Sink,
    /// Rows not yet written, oldest first.
    pending: Vec<String>,
    /// The step of the oldest pending row (names a remote segment).
    first: Option<u64>,
    /// Rows dropped because the log could not be written for too long.
    dropped: u64,
    /// The current failure's message, logged once until a write succeeds.
    failing: Option<String>,
    /// A remote write in flight, and how many of the oldest pending rows
    /// it carries (they go once it succeeds).
    inflight: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, usize)>,
    /// Every row also goes to the dashboard's history, as it is pushed.
    history: Arc<RunHistory>,
}

/// The step a metrics row belongs to (`None`: not a row, e.g. a torn line).
fn row_step(line: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Step {
        step: Option<u64>,
    }
    serde_json::from_str::<Step>(line).ok()?.step
}

/// Removes the rows after step `upto` from the local log at `path`, line
/// by line: a paper-length log (800,000 rows, about 160 MB) is never held
/// in memory, and is rewritten only when it has such rows (a start that
/// died before checkpointing them). Returns how many lines went.
fn supersede_local(path: &std::path::Path, upto: u64) -> std::io::Result<usize> {
    use std::io::{BufRead, BufReader, BufWriter, Write};
    // Each non-empty line and whether it stays.
    let for_each_line = |f: &mut dyn FnMut(&str, bool) -> std::io::Result<()>| -> std::io::Result<()> {
        let mut reader = BufReader::new(std::fs::File::open(path)?);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf)? > 0 {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.trim().is_empty() {
                f(line, row_step(line).is_some_and(|s| s <= upto))?;
            }
            buf.clear();
        }
        Ok(())
    };
    let mut removed = 0;
    match for_each_line(&mut |_, keep| {
        removed += usize::from(!keep);
        Ok(())
    }) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    }
    if removed > 0 {
        // A new file renamed over the old: a crash leaves one or the other.
        let tmp = path.with_extension("jsonl.tmp");
        let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
        for_each_line(&mut |line, keep| if keep { writeln!(out, "{line}") } else { Ok(()) })?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(removed)
}

/// The rows of `text` up to step `upto`, and how many were removed.
fn keep_upto(text: &str, upto: u64) -> (String, usize) {
    let mut kept = String::new();
    let mut removed = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match row_step(line) {
            Some(s) if s <= upto => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => removed += 1,
        }
    }
    (kept, removed)
}

impl MetricsLog {
    /// Opens the log of the run at `run`; `resumed_from` is the step this
    /// start resumed from (rows after it are superseded).
    pub async fn open(store: &RunStore, run: &str, resumed_from: u64, history: Arc<RunHistory>) -> anyhow::Result<Self> {
        let sink = match Location::parse(run)? {
            Location::Local(dir) => Sink::Local(dir.join("metrics.jsonl")),
            _ => Sink::Remote(store.clone()),
        };
        let log = Self { sink, pending: Vec::new(), first: None, dropped: 0, failing: None, inflight: None, history };
        if let Err(e) = log.supersede_after(resumed_from).await {
            // Not worth the run either: the log may show those steps twice.
            tracing::error!(log = %log.place(), "cannot supersede the metrics rows after step {resumed_from}: {e:#}");
        }
        Ok(log)
    }

    /// Removes rows after step `upto` (all rows for a new run).
    async fn supersede_after(&self, upto: u64) -> anyhow::Result<()> {
        let removed = match &self.sink {
            Sink::Local(path) => supersede_local(path, upto)
                .map_err(|e| anyhow::anyhow!("cannot supersede the rows of the metrics log {}: {e}", path.display()))?,
            Sink::Remote(store) => {
                let mut removed = 0;
                for seg in store.list("metrics").await? {
                    let first =
                        seg.key.rsplit('/').next().and_then(|n| n.strip_prefix("step_")?.strip_suffix(".jsonl")?.parse::<u64>().ok());
                    let Some(first) = first else { continue };
                    if first > upto {
                        store.delete(&seg.key).await?;
                        removed += 1;
                        continue;
                    }
                    let text = String::from_utf8_lossy(&store.get(&seg.key).await?).into_owned();
                    let (kept, n) = keep_upto(&text, upto);
                    if n > 0 {
                        store.put(&seg.key, kept.into()).await?;
                        removed += n;
                    }
                }
                removed
            }
        };
        if removed > 0 {
            tracing::info!(
                after = upto,
                removed,
                "metrics log: rows after the resumed step superseded (a start that did not checkpoint them wrote them)"
            );
        }
        Ok(())
    }

    /// Appends step `m`.
    pub fn push_step(&mut self, m: &StepMetrics) -> anyhow::Result<()> {
        self.push(m.step, m)
    }

    /// Appends a row of step `step` (a periodic evaluation's result).
    pub fn push(&mut self, step: u64, row: &impl Serialize) -> anyhow::Result<()> {
        self.first.get_or_insert(step);
        let line = serde_json::to_string(row)?;
        // The history reads the row back as any reader of the log would.
        let parsed = RunRows::parse(&line);
        for r in parsed.steps {
            self.history.push_step(r);
        }
        for e in parsed.evals {
            self.history.push_eval(e);
        }
        self.pending.push(line);
        if self.pending.len() > MAX_PENDING_ROWS {
            let excess = self.pending.len() - MAX_PENDING_ROWS;
            self.pending.drain(..excess);
            self.dropped += excess as u64;
            if let Some((_, carried)) = &mut self.inflight {
                *carried = carried.saturating_sub(excess);
            }
            self.first = self.pending.first().and_then(|l| row_step(l)).or(Some(step));
        }
        Ok(())
    }

    /// Where the rows go, for messages.
    fn place(&self) -> String {
        match &self.sink {
            Sink::Local(path) => path.display().to_string(),
            Sink::Remote(store) => store.location("metrics/"),
        }
    }

    /// Writes the pending rows without holding the training loop: a local
    /// append at once; to an object store in the background (one write at a
    /// time, so a hanging store never stalls a step; rows written while
    /// one hangs wait for it). A failure keeps the rows for the next flush
    /// and is reported, never returned: the log is not worth a run.
    pub async fn flush(&mut self) {
        self.write(false).await
    }

    /// Writes every pending row and waits for it (the end of training).
    pub async fn flush_all(&mut self) {
        self.write(true).await
    }

    async fn write(&mut self, wait: bool) {
        let store = match &self.sink {
            Sink::Local(path) => {
                if self.first.is_some() {
                    let body = self.pending.join("\n") + "\n";
                    let result = append(path, body.as_bytes());
                    let n = self.pending.len();
                    self.settle(result, n);
                }
                return;
            }
            Sink::Remote(store) => store.clone(),
        };
        if let Some((h, _)) = &self.inflight {
            if !wait && !h.is_finished() {
                return;
            }
        }
        if let Some((h, carried)) = self.inflight.take() {
            let result = h.await.map_err(WriteError::from).and_then(|r| r.map_err(WriteError::from));
            self.settle(result, carried);
        }
        let Some(first) = self.first else { return };
        let body = self.pending.join("\n") + "\n";
        let key = format!("metrics/step_{first:010}.jsonl");
        let carried = self.pending.len();
        let task = tokio::spawn(async move { store.put(&key, body.into()).await });
        if wait {
            let result = task.await.map_err(WriteError::from).and_then(|r| r.map_err(WriteError::from));
            self.settle(result, carried);
        } else {
            self.inflight = Some((task, carried));
        }
    }

    /// The outcome of a write of the oldest `carried` pending rows.
    fn settle(&mut self, result: Result<(), WriteError>, carried: usize) {
        match result {
            Ok(()) => {
                if self.failing.take().is_some() || self.dropped > 0 {
                    tracing::info!(log = %self.place(), rows = carried, dropped = self.dropped, "the metrics log is written again");
                }
                self.pending.drain(..carried.min(self.pending.len()));
                self.first = self.pending.first().and_then(|l| row_step(l));
                self.dropped = 0;
            }
            Err(e) => {
                let e = e.to_string();
                if self.failing.as_deref() != Some(e.as_str()) {
                    tracing::error!(
                        log = %self.place(),
                        held = self.pending.len(),
                        "cannot write the metrics log: {e}; training goes on, the rows are held in memory (up to {MAX_PENDING_ROWS}) and written at the next flush"
                    );
                    self.failing = Some(e);
                }
            }
        }
    }
}

/// Appends `bytes` to `path`; a failed append is cut back to the old end.
fn append(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    use std::io::Write;
    let fail = |what: &'static str, source: std::io::Error| WriteError::Local { what, path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| fail("open", e))?;
    let end = file.metadata().map_err(|e| fail("stat", e))?.len();
    if let Err(e) = file.write_all(bytes).and_then(|()| file.flush()) {
        let _ = file.set_len(end);
        return Err(fail("append to", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_after_the_resumed_step_and_torn_lines_are_superseded() {
        let text = "{\"step\":1}\n{\"step\":2,\"fid\":3.0}\n{\"step\":3}\n{\"st";
        assert_eq!(keep_upto(text, 2), ("{\"step\":1}\n{\"step\":2,\"fid\":3.0}\n".to_string(), 2));
        assert_eq!(keep_upto(text, 0).1, 4);
    }

    #[test]
    fn the_local_log_is_superseded_line_by_line_and_left_alone_when_nothing_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert_eq!(supersede_local(&path, 2).unwrap(), 0, "no log yet");
        std::fs::write(&path, "{\"step\":1}\n\n{\"step\":2,\"fid\":3.0}\n").unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(supersede_local(&path, 2).unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), before, "rewritten though nothing went");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2,\"fid\":3.0}\n{\"step\":3}\n{\"st").unwrap();
        assert_eq!(supersede_local(&path, 2).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2,\"fid\":3.0}\n");
    }

    #[tokio::test]
    async fn a_failing_local_log_holds_its_rows_until_it_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let path = dir.path().join("metrics.jsonl");
        // A directory where the log should be: every open fails.
        std::fs::create_dir(&path).unwrap();
        let mut log = MetricsLog::open(&store, dir.path().to_str().unwrap(), 0, Default::default()).await.unwrap();
        log.push(1, &serde_json::json!({"step": 1})).unwrap();
        log.flush().await;
        log.push(2, &serde_json::json!({"step": 2})).unwrap();
        log.flush().await;
        assert!(log.failing.as_deref().unwrap().contains("metrics.jsonl"), "{:?}", log.failing);
        std::fs::remove_dir(&path).unwrap();
        log.flush().await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2}\n");
        assert!(log.failing.is_none() && log.pending.is_empty());
    }
}
