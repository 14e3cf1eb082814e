//! The coordinator's caps: how much any peer, honest or not, can make it
//! hold. Each cap, when reached, refuses the next request with a message
//! that names the flag that raises it; nothing already admitted is touched.

/// The caps (`ddpm-coord --max-*`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open TCP connections at once (a worker or `ddpm jobs` holds one);
    /// further ones are closed as they arrive.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Registered workers at once, ready or not (default: four per
    /// training worker plus 16, so that restarts and eval workers fit).
    #[arg(long)]
    pub max_members: Option<usize>,
    /// Jobs queued or running at once; more are refused until some end.
    #[arg(long, default_value_t = 64)]
    pub max_queued_jobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 512, max_members: None, max_queued_jobs: 64 }
    }
}

/// Bytes a Jobs request may have (a job request is a few hundred bytes).
pub const MAX_JOB_REQUEST_BYTES: usize = 64 << 10;

/// Characters a worker's name, device or version may have.
pub const MAX_NAME_CHARS: usize = 256;

/// Bytes of a worker's error text (a shard report's) kept for the log.
pub const MAX_REPORT_CHARS: usize = 2048;

/// Requests one connection may have open at once (a worker needs a few:
/// its Attach stream, NextWork, a gradient and a result upload).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

impl Limits {
    /// The member cap for a run of `workers` training workers.
    pub fn members(&self, workers: usize) -> usize {
        self.max_members.unwrap_or(4 * workers + 16)
    }

    /// Refuses caps that would stop the run itself.
    pub fn check(&self, workers: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_connections >= 1, "--max-connections must be at least 1");
        anyhow::ensure!(
            self.members(workers) >= workers,
            "--max-members {} is below --workers {workers}: the run could never start",
            self.members(workers)
        );
        anyhow::ensure!(self.max_queued_jobs >= 1, "--max-queued-jobs must be at least 1");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_would_stop_the_run_are_refused() {
        assert_eq!(Limits::default().members(2), 24);
        let e = Limits { max_members: Some(1), ..Limits::default() }.check(2).unwrap_err();
        assert!(e.to_string().contains("--max-members 1 is below --workers 2"), "{e}");
        assert!(Limits { max_connections: 0, ..Limits::default() }.check(1).is_err());
        Limits::default().check(8).unwrap();
    }
}
