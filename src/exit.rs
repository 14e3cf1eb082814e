//! The exit codes of `ddpm-coord` and `ddpm-worker`, in one place: a
//! supervisor (a Kubernetes Job's podFailurePolicy, systemd, a script)
//! decides from them whether to restart, and they must mean the same in
//! both binaries and in `deploy/k8s`.

use std::process::ExitCode;

/// The run is over (finished, or was already finished): nothing to redo.
pub const DONE: u8 = 0;
/// Anything else went wrong (a crash, storage that stays down, a lost
/// coordinator): restarting resumes from the latest complete checkpoint.
pub const FAILED: u8 = 1;
/// The flags or the config are wrong: restarting cannot help. Also
/// clap's own code for a bad command line.
pub const USAGE: u8 = 2;
/// Fewer than `--min-workers` workers joined within `--start-timeout`.
pub const START_TIMEOUT: u8 = 3;
/// A worker found no coordinator for `--connect-timeout`: the run's
/// coordinator is gone (failed for good, or finished before this worker
/// came) or never started. Restarting the worker alone cannot help, so a
/// supervisor stops it instead of retrying (the worker Job's
/// podFailurePolicy fails the Job on it).
pub const NO_COORDINATOR: u8 = 4;
/// Stopped by SIGTERM or Ctrl-C before the run's end, after a checkpoint
/// (coordinator) or after leaving the run (worker): start the same command
/// again to go on. 75 is sysexits' EX_TEMPFAIL ("try again later").
pub const STOPPED: u8 = 75;

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
