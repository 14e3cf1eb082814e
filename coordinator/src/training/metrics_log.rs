//! The per-step metrics log: one JSON object per step (and one per finished
//! periodic evaluation). A local run appends to `RUN/metrics.jsonl` as steps
//! finish (`tail -f` works); an object store cannot append, so there the
//! lines go up in segments, `metrics/step_<first step>.jsonl`, one per
//! logging interval.

use ddpm::store::{Location, RunStore};
use serde::Serialize;

use super::StepMetrics;

pub enum MetricsLog {
    Local(std::io::BufWriter<std::fs::File>),
    Remote { store: RunStore, lines: Vec<String>, first: Option<u64> },
}

impl MetricsLog {
    pub fn open(store: &RunStore, run: &str) -> anyhow::Result<Self> {
        match Location::parse(run)? {
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("metrics.jsonl");
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("cannot open the metrics log {}: {e}", path.display()))?;
                Ok(Self::Local(std::io::BufWriter::new(file)))
            }
            _ => Ok(Self::Remote { store: store.clone(), lines: Vec::new(), first: None }),
        }
    }

    /// Appends step `m`.
    pub fn push_step(&mut self, m: &StepMetrics) -> anyhow::Result<()> {
        self.push(m.step, m)
    }

    /// Appends a row of step `step` (a periodic evaluation's result).
    pub fn push(&mut self, step: u64, row: &impl Serialize) -> anyhow::Result<()> {
        let line = serde_json::to_string(row)?;
        match self {
            Self::Local(file) => {
                use std::io::Write;
                writeln!(file, "{line}")?;
            }
            Self::Remote { lines, first, .. } => {
                first.get_or_insert(step);
                lines.push(line);
            }
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(file) => {
                use std::io::Write;
                file.flush()?;
            }
            Self::Remote { store, lines, first } => {
                if let Some(f) = first.take() {
                    let body = lines.join("\n") + "\n";
                    lines.clear();
                    if let Err(e) = store.put(&format!("metrics/step_{f:010}.jsonl"), body.into()).await {
                        tracing::warn!("could not write metrics from step {f}: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}
