//! Where jobs may read: the paths and datasets a user names in a job
//! request (`reference_stats`, `reference_data`, `bpd_data`, an analysis
//! job's `data`) must lie under one of the job roots: the run's own
//! location, the run's dataset, and every `--job-root` (a directory or an
//! `s3://bucket/prefix`). Otherwise a holder of the user token could make
//! the coordinator open any file it can read, or any bucket its S3
//! credentials reach.
//!
//! The check is on the path as written, made absolute and with `.` and
//! `..` resolved, and again on the real path when it exists (a symlink out
//! of a root is refused); the message is the same whether the path exists
//! or not, so the refusal tells nothing about files outside the roots.

use std::path::{Component, Path, PathBuf};

use ddpm::data::{DataError, DatasetSpec};
use ddpm::store::Location;

/// Why a path or dataset of a job request may not be read.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The same message whether `path` exists or not.
    #[error("{field}: {path} is outside the places jobs may read ({roots}); the operator can add one with ddpm-coord --job-root")]
    Outside { field: &'static str, path: String, roots: String },
    #[error("{field}: {source}")]
    Dataset { field: &'static str, source: DataError },
}

#[derive(Debug, Clone, Default)]
pub struct JobRoots {
    local: Vec<PathBuf>,
    remote: Vec<String>,
}

/// `p` absolute, with `.` and `..` resolved without touching the filesystem.
fn lexical(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl JobRoots {
    /// The roots of a run at `run` training on `data`, plus `extra`.
    pub fn new(run: &str, data: Option<&DatasetSpec>, extra: &[String]) -> Self {
        let mut roots = Self::default();
        roots.add(run);
        if let Some(d) = data.filter(|d| d.kind != ddpm::data::DatasetKind::Synthetic) {
            roots.add(&d.location);
        }
        for e in extra {
            roots.add(e);
        }
        roots
    }

    fn add(&mut self, root: &str) {
        match Location::parse(root) {
            Ok(Location::S3 { bucket, prefix }) => {
                self.remote.push(format!("s3://{bucket}/{}", prefix.trim_end_matches('/')).trim_end_matches('/').to_string())
            }
            _ => {
                let p = lexical(Path::new(root.strip_prefix("file://").unwrap_or(root)));
                self.local.push(std::fs::canonicalize(&p).unwrap_or(p));
            }
        }
    }

    /// Whether the path `path` of the field `field` may be read.
    pub fn check_path(&self, field: &'static str, path: &str) -> Result<(), RootError> {
        let refused = || {
            let mut all: Vec<String> = self.local.iter().map(|p| p.display().to_string()).collect();
            all.extend(self.remote.iter().cloned());
            RootError::Outside { field, path: path.to_string(), roots: all.join(", ") }
        };
        if path.starts_with("s3://") {
            let inside = self.remote.iter().any(|r| path == r || path.starts_with(&format!("{r}/")));
            return if inside { Ok(()) } else { Err(refused()) };
        }
        let written = lexical(Path::new(path.strip_prefix("file://").unwrap_or(path)));
        let under = |p: &Path| self.local.iter().any(|r| p.starts_with(r));
        if !under(&written) {
            return Err(refused());
        }
        match std::fs::canonicalize(&written) {
            Ok(real) if !under(&real) => Err(refused()),
            _ => Ok(()),
        }
    }

    /// Whether the dataset spec `spec` of the field `field` may be read.
    pub fn check_dataset(&self, field: &'static str, spec: &str) -> Result<(), RootError> {
        if spec.is_empty() {
            return Ok(());
        }
        let parsed: DatasetSpec = spec.parse().map_err(|source| RootError::Dataset { field, source })?;
        if parsed.kind == ddpm::data::DatasetKind::Synthetic {
            return Ok(());
        }
        self.check_path(field, &parsed.location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_roots_pass_and_missing_files_say_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("jobs")).unwrap();
        let roots = JobRoots::new(run.to_str().unwrap(), None, &["s3://bucket/data".into()]);
        let inside = run.join("jobs/stats.npz");
        assert!(roots.check_path("reference_stats", inside.to_str().unwrap()).is_ok());
        let a = roots.check_path("reference_stats", "/etc/passwd").unwrap_err().to_string();
        let b = roots.check_path("reference_stats", "/etc/no-such-file").unwrap_err().to_string();
        assert_eq!(a.replace("/etc/passwd", "X"), b.replace("/etc/no-such-file", "X"));
        assert!(a.contains("outside the places jobs may read") && a.contains("--job-root"), "{a}");
        let escape = format!("{}/../../etc/passwd", run.display());
        assert!(roots.check_path("reference_stats", &escape).is_err());
        // A symlink out of a root.
        std::os::unix::fs::symlink("/etc", run.join("etc")).unwrap();
        assert!(roots.check_path("reference_stats", run.join("etc/passwd").to_str().unwrap()).is_err());
        assert!(roots.check_dataset("reference_data", "cifar10:s3://bucket/data/cifar.tar.gz").is_ok());
        assert!(roots.check_dataset("reference_data", "cifar10:s3://bucket/datax").is_err());
        assert!(roots.check_dataset("reference_data", "cifar10:s3://other/data").is_err());
        assert!(roots.check_dataset("bpd_data", "synthetic:shapes").is_ok());
    }
}
