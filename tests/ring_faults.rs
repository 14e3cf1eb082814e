//! Failures in the ring backend's data plane, with the real binaries on
//! loopback and three workers: a member frozen in the middle of a ring
//! while its heartbeats go on (only its neighbours can tell), a member
//! killed there (kill -9), and a member whose gradient holds a NaN (the
//! coordinator never sees it: it screens the chunk norms the member
//! reports). Each time the coordinator names the culprit,
//! aborts the attempt, the survivors redo the step with the same batch,
//! and the run ends within 1e-4 of the fault-free one with every replica
//! equal to the coordinator. A member that lies (honest norms, a huge
//! value sent into the ring) cannot be named from the reduced gradient,
//! but the audit catches the lie and the step is redone through the star. The links go through shared memory, as
//! between any members of one host, so the faults hit that data plane:
//! a dead member's connections still end at once, a frozen one stops
//! taking frames from its outbox slots, and a killed one's outbox is
//! swept away.
//!
//! Over 450 lines and still one concept: one run setup shared by every
//! fault of the ring's data plane (and of its replicas with the shadow
//! off), each test a scenario of a few screens.
//!
//! The freeze is the worker's fault injection `DDPM_FAULT_RING_FREEZE`
//! (`worker/src/ring_exchange.rs`): it lands after the predecessor's first
//! bytes, so the fault is mid-ring by construction, not by timing luck.
//! The NaN is `DDPM_FAULT_GRAD_POISON`, the lie `DDPM_FAULT_RING_LIE`, a
//! member that never feeds the coordinator's copy of the state
//! `DDPM_FAULT_SKIP_FEED`, in the same file; a replica that never sends
//! the state it was asked for (the shadow off) `DDPM_FAULT_HOLD_UPLOAD`
//! (`worker/src/upload.rs`).
//!
//! Over 450 lines and still one concept, the ring's failures provoked with
//! real processes: each test is a whole scenario (start, fault, what
//! survived) built on this file's helpers.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{binary, max_diff, read_tensors, start_coordinator, tempdir, Proc};

/// Tiny U-Net at 16x16, the ring with 16 KiB chunks (many per segment),
/// a 2 s peer timeout; the heartbeat timeout and the straggler policy out
/// of reach, so that only the ring's own detection can act.
const CONFIG: &str = r#"
[model]
image_size = 16

[train]
batch_size = 6
seed = 5
log_every = 1

[dist]
backend = "ring"
chunk_kib = 16
ring_peer_timeout_s = 2.0
heartbeat_timeout_s = 600.0
straggler_factor = 0.0
checksum_every = 1

[sample]
at_end = false
"#;

const STEPS: u64 = 8;

/// What a worker says when its ring links go through shared memory (the
/// default on one host): the faults below hit that data plane.
const SHM_LINKS: &str = "ring links (from the predecessor/to the successor): shm/shm";

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        let dir = tempdir();
        std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
        Run { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The same run with the coordinator's copy of the state off and a
    /// checkpoint every `every` steps, each through the coordinator (what
    /// these tests are about: tests/sharded_checkpoints.rs has the
    /// replicas' own).
    fn shadow_off(every: u64) -> Self {
        let run = Self::new();
        let config = CONFIG.replace("checksum_every = 1", "checksum_every = 1\nshadow = \"off\"");
        let checkpoints = format!("[checkpoint]\nevery_steps = {every}\nwriters = \"coordinator\"\n");
        std::fs::write(run.dir.path().join("run.toml"), format!("{config}\n{checkpoints}")).unwrap();
        run
    }

    /// The coordinator and three workers; worker i gets the fault
    /// injection `fault[i]` (a variable and its value).
    fn start(&self, fault: [Option<(&str, &str)>; 3]) -> (Proc, Vec<Proc>) {
        let (coord, addr) = self.coordinator();
        let workers = fault.iter().enumerate().map(|(i, f)| worker(&addr, i, *f)).collect();
        (coord, workers)
    }

    fn coordinator(&self) -> (Proc, String) {
        self.coordinator_with(&[])
    }

    /// The coordinator with `extra` flags.
    fn coordinator_with(&self, extra: &[&str]) -> (Proc, String) {
        let config = self.dir.path().join("run.toml").display().to_string();
        let run = self.path().display().to_string();
        let steps = STEPS.to_string();
        let mut args = vec!["--preset", "tiny", "--config", &config, "--workers", "3", "--steps", &steps, "--threads", "1", "--run", &run];
        args.extend(extra);
        start_coordinator(&args)
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path().join("summary.json")).unwrap()).unwrap()
    }

    /// The steps of metrics.jsonl's training rows, in order.
    fn logged_steps(&self) -> Vec<u64> {
        std::fs::read_to_string(self.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|row| row.get("loss").is_some())
            .map(|row| row["step"].as_u64().unwrap())
            .collect()
    }

    fn final_params(&self) -> HashMap<String, Vec<f32>> {
        read_tensors(&checkpoint(&self.path(), STEPS).join("model.safetensors"))
    }
}

/// Worker `i` of the coordinator at `addr`, with the fault injection `fault`.
fn worker(addr: &str, i: usize, fault: Option<(&str, &str)>) -> Proc {
    let name = format!("w{i}");
    let mut cmd = Command::new(binary("ddpm-worker"));
    cmd.args(["--coord", addr, "--device", "cpu", "--threads", "1", "--name", &name]).env("RUST_LOG", "info");
    if let Some((var, value)) = fault {
        cmd.env(var, value);
    }
    Proc::spawn(&name, cmd)
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoints/step_{step:010}"))
}

/// The worker id a worker's log says it joined as (its first membership).
fn joined_id(w: &mut Proc) -> u64 {
    let line = w.wait_for_line("joined the run worker=", Duration::from_secs(120));
    line.split("worker=").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).expect("a worker id")
}

/// The final parameters of the fault-free run, run once for all the
/// tests here (they compare with it).
fn fault_free() -> &'static HashMap<String, Vec<f32>> {
    static PARAMS: OnceLock<HashMap<String, Vec<f32>>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let run = Run::new();
        let (mut coord, mut workers) = run.start([None, None, None]);
        assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
        for w in &mut workers {
            assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
        }
        run.final_params()
    })
}

/// After a fault in worker 1: the coordinator and workers 0 and 2 end
/// cleanly, worker 1 hears that it was dropped (it may be after the run),
/// and the run is whole, its replicas agree, and it ends within 1e-4 of
/// the fault-free one. Returns the run's summary.
fn assert_survived(run: &Run, coord: &mut Proc, workers: &mut [Proc], what: &str) -> serde_json::Value {
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for i in [0, 2] {
        assert_eq!(workers[i].wait(Duration::from_secs(60)), 0, "{}", workers[i].output());
    }
    workers[1].wait_for_line("the coordinator rejected this worker's gradient", Duration::from_secs(60));
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - {what}| = {d:e}");
    assert!(d < 1e-4, "{d}");
    summary
}

/// A member frozen mid-ring (heartbeats alive) is named by the ring's
/// reports, not by its neighbours' silence that it caused: its successor
/// reports it, its predecessor reports the successor, and the one named
/// that reported nothing is the culprit. Dropped, it finds out when it
/// thaws; the run ends with the others agreeing.
#[test]
fn a_member_frozen_mid_ring_is_named_dropped_and_the_step_redone() {
    fault_free();
    let run = Run::new();
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_RING_FREEZE", "3:6")), None]);
    let frozen = joined_id(&mut workers[1]);
    workers[0].wait_for_line(SHM_LINKS, Duration::from_secs(300));
    workers[1].wait_for_line("fault injection: freezing the ring", Duration::from_secs(300));
    let verdict = coord.wait_for_line("broke the ring of step 3", Duration::from_secs(60));
    assert!(verdict.contains(&format!("worker {frozen} broke the ring")), "the frozen worker is {frozen}: {verdict}");
    // Thawed, it hears that it was dropped.
    assert_survived(&run, &mut coord, &mut workers, "frozen member");
}

/// kill -9 of a member in the middle of a ring: its connections close (its
/// segment's stream, its Attach call), the coordinator drops it at once
/// and aborts the attempt; the two others redo the step and finish the run.
#[test]
fn a_member_killed_mid_ring_is_dropped_at_once_and_the_step_redone() {
    let straight = fault_free();
    let run = Run::new();
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_RING_FREEZE", "4:600")), None]);
    let killed = joined_id(&mut workers[1]);
    workers[0].wait_for_line(SHM_LINKS, Duration::from_secs(300));
    workers[1].wait_for_line("fault injection: freezing the ring", Duration::from_secs(300));
    let pid = workers[1].child.id();
    workers[1].child.kill().unwrap();
    let killed_at = std::time::Instant::now();
    // Whichever the coordinator hears of first drops it and aborts the
    // attempt: its segment's stream closing, its Attach call ending, or a
    // neighbour's report that its connection ended (the ring's verdict).
    coord.wait_for_line("step abandoned", Duration::from_secs(60));
    let after = killed_at.elapsed();
    let out = coord.output();
    assert!(
        out.contains(&format!("worker {killed}'s gradient stream failed"))
            || out.contains("dropped at once")
            || out.contains(&format!("worker {killed} broke the ring")),
        "the killed worker {killed} is not the one dropped:\n{out}"
    );
    assert!(after < Duration::from_secs(2), "dropped {after:?} after kill -9 (the peer timeout is 2 s)");
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for i in [0, 2] {
        assert_eq!(workers[i].wait(Duration::from_secs(60)), 0, "{}", workers[i].output());
    }
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 2, "{summary}");
    assert!(summary["replica_checksums"].get(killed.to_string()).is_none(), "{summary}");
    // Its shared-memory outbox is gone too: the survivors' new, larger
    // outboxes (a ring of two) swept it away.
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("ddpm-ring-{pid}-")))
        .collect();
    assert!(left.is_empty(), "the killed worker's outbox is still there: {left:?}");
    let d = max_diff(&run.final_params(), straight);
    eprintln!("max |fault-free - killed member| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// A member that feeds nothing of a committed step's update to the
/// coordinator's copy of the state (as if it died right after the
/// outcome) costs that copy nothing: its predecessor in the ring kept the
/// same chunks and feeds them when the coordinator, waiting at the lag
/// bound, asks for its spare. The coordinator's checksum is compared with
/// every replica's after every step (`checksum_every = 1`), so its copy
/// stayed exact throughout, and the run ends as the fault-free one does.
#[test]
fn a_member_that_never_feeds_the_coordinators_copy_costs_it_nothing() {
    fault_free();
    let run = Run::new();
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_SKIP_FEED", "3")), None]);
    workers[1].wait_for_line("fault injection: feeding nothing of this step", Duration::from_secs(300));
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let out = coord.output();
    assert!(!out.contains("stops following the run"), "{out}");
    let asked = out.lines().find(|l| l.contains("did not come from its owner: asking worker")).unwrap_or_else(|| panic!("{out}"));
    assert!(asked.contains("part of step 3's update"), "{asked}");
    let fed: Vec<String> =
        workers.iter_mut().map(|w| w.output()).filter(|o| o.contains("successor's part of step 3 (asked for)")).collect();
    assert_eq!(fed.len(), 1, "one spare holder fed step 3's missing part");
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    assert_eq!(summary["checksums_compared"].as_u64().unwrap(), STEPS * 3, "every replica every step: {summary}");
    let d = max_diff(&run.final_params(), fault_free());
    assert!(d < 1e-4, "{d}");
}

/// A member whose device computed garbage (a NaN in its gradient) is
/// screened out before any replica applies the step, though the
/// coordinator never sees its gradient: the chunk norms it reports (taken
/// as its ring read the gradient) give it away. The step is redone by the others, so no step is skipped (the
/// NaN in the ring's sum would have made every replica skip it), and the
/// run ends as the fault-free one does.
#[test]
fn a_member_with_a_non_finite_gradient_is_screened_out_by_its_chunk_norms_and_the_step_redone() {
    fault_free();
    let run = Run::new();
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_GRAD_POISON", "3:NaN")), None]);
    let poisoned = joined_id(&mut workers[1]);
    workers[1].wait_for_line("fault injection: this worker's gradient starts with NaN", Duration::from_secs(300));
    let rejected = coord.wait_for_line("rejecting gradient", Duration::from_secs(60));
    assert!(
        rejected.contains(&format!("worker {poisoned} sent a non-finite gradient")) && rejected.contains("by the chunk norms it reported"),
        "the poisoned worker is {poisoned}: {rejected}"
    );
    let summary = assert_survived(&run, &mut coord, &mut workers, "poisoned member screened out");
    assert_eq!(summary["skipped_steps"], 0, "no step skipped: {summary}");
}

/// A member that lies: it reports the chunk norms of its true gradient,
/// but it sends the ring 1e20 as its first element, which
/// screening would refuse if the coordinator saw it. The reduced chunk is
/// then longer than the members' chunks together can be, so the
/// coordinator refuses the attempt before any replica applies it and,
/// unable to tell who lied, redoes the step through the star with all
/// three (there each member's own gradient is seen; this one behaves).
/// No step is skipped or blown up by the clipped spike, nobody is dropped,
/// and the run ends as the fault-free one does.
#[test]
fn a_member_that_sends_the_ring_another_gradient_than_its_header_describes_is_caught_and_the_step_redone_through_the_star() {
    fault_free();
    let run = Run::new();
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_RING_LIE", "3:1e20")), None]);
    workers[1].wait_for_line("fault injection: this worker's header describes its gradient", Duration::from_secs(300));
    let audit = coord.wait_for_line("failed its audit", Duration::from_secs(60));
    // The weight of one of three members' shards times 1e20.
    assert!(audit.contains("step 3 attempt 0: the reduced chunk 0 has norm 3.333e19"), "{audit}");
    coord.wait_for_line("redoing it through the coordinator's all-reduce (the star)", Duration::from_secs(60));
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["skipped_steps"], 0, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 3, "nobody dropped: {summary}");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - liar caught by the audit| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// With the coordinator's copy off (`[dist] shadow = "off"`), the state of
/// a checkpoint comes from a replica. The replica asked for the state of
/// step 4 holds it and is killed (kill -9): it is dropped, another is asked, the
/// checkpoint of step 4 is that step's, and the run ends as the fault-free
/// one does with the survivors agreeing.
#[test]
fn with_the_shadow_off_a_replica_killed_before_its_upload_is_replaced_by_another() {
    fault_free();
    let run = Run::shadow_off(4);
    let token = run.dir.path().join("held").display().to_string();
    let hold = format!("4:{token}");
    let (mut coord, mut workers) = run.start([0, 1, 2].map(|_| Some(("DDPM_FAULT_HOLD_UPLOAD", hold.as_str()))));
    let asked = coord.wait_for_line("for the state of step 4", Duration::from_secs(300));
    let held_id: u64 = asked.split("asking worker ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
    let ids: Vec<u64> = workers.iter_mut().map(joined_id).collect();
    let held = ids.iter().position(|&id| id == held_id).expect("the asked worker is one of the three");
    workers[held].wait_for_line("fault injection: holding the state of step 4", Duration::from_secs(60));
    workers[held].child.kill().unwrap();
    coord.wait_for_line(&format!("worker {held_id} did not send the state of step 4; asking another replica"), Duration::from_secs(60));
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for (i, w) in workers.iter_mut().enumerate().filter(|(i, _)| *i != held) {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "w{i}: {}", w.output());
    }
    let out = coord.output();
    assert!(out.contains("the state of step 4 arrived from worker"), "{out}");
    assert!(!out.contains("the checkpoint asked at step 4 is of step"), "{out}");
    assert!(checkpoint(&run.path(), 4).join("model.safetensors").exists(), "no checkpoint of step 4");
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    // Both survivors, unless one was dropped on a loaded machine (the 2 s
    // peer timeout) and rejoined under a new id.
    assert!(!summary["replica_checksums"].as_object().unwrap().is_empty(), "{summary}\n{out}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - shadow off, uploader killed| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// With the coordinator's copy off, the replicas are the only holders of
/// the last step's state. When every worker is killed (-9) mid-step after
/// the checkpoint of step 4, the coordinator waits the step timeout for a
/// replica, says what was lost, and starts the run again itself, in the
/// same process on the same address. New workers that die at the same
/// point (the same fault) end it with exit 1: the start got no further.
/// Started again by hand with healthy workers, the run resumes from the
/// checkpoint of step 4 and ends equal to the fault-free one, each step
/// once in its log.
#[test]
fn with_the_shadow_off_losing_every_worker_resumes_from_the_checkpoint() {
    fault_free();
    let run = Run::shadow_off(4);
    let toml = run.dir.path().join("run.toml");
    let config =
        std::fs::read_to_string(&toml).unwrap().replace("heartbeat_timeout_s = 600.0", "heartbeat_timeout_s = 600.0\nstep_timeout_s = 5.0");
    std::fs::write(&toml, config).unwrap();
    let (mut coord, addr) = run.coordinator();
    let freeze = Some(("DDPM_FAULT_RING_FREEZE", "6:120"));
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&addr, i, if i == 0 { freeze } else { None })).collect();
    coord.wait_for_line("checkpoint saved step=4", Duration::from_secs(300));
    kill_all_when_frozen(&mut workers);
    let again = coord.wait_for_line("starts the run again itself", Duration::from_secs(120));
    assert!(again.contains("every worker holding the state of step 5 is gone"), "{again}");
    assert!(again.contains("resumes from the checkpoint of step 4 (1 steps are trained again)"), "{again}");

    // The same deaths at the same step: no second start in place.
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&addr, i, if i == 0 { freeze } else { None })).collect();
    kill_all_when_frozen(&mut workers);
    assert_eq!(coord.wait(Duration::from_secs(120)), 1, "{}", coord.output());
    let out = coord.output();
    assert!(out.contains("without getting past step 5"), "{out}");
    assert_eq!(out.matches("training continues after step 4").count(), 1, "the second start resumed from step 4:\n{out}");
    assert!(run.summary()["error"].as_str().is_some_and(|e| e.contains("step 5")), "{}", run.summary());

    let (mut coord, mut workers) = run.start([None, None, None]);
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    assert!(coord.output().contains("training continues after step 4"), "{}", coord.output());
    let summary = run.summary();
    assert_eq!(summary["steps"], STEPS);
    assert_eq!(summary["resumed_from"], 4, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(run.logged_steps(), (1..=STEPS).collect::<Vec<_>>(), "each step once in metrics.jsonl");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - shadow off, every worker killed, resumed| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// Kills (-9) every worker once worker 0 froze in the ring (its fault).
fn kill_all_when_frozen(workers: &mut [Proc]) {
    workers[0].wait_for_line("fault injection: freezing the ring", Duration::from_secs(300));
    for w in workers {
        w.child.kill().unwrap();
        let _ = w.child.wait();
    }
}

/// With the coordinator's copy off and every replica's checksum reported
/// each step (`checksum_every = 1`), a replica whose parameters went bad
/// after step 4 (`DDPM_FAULT_ALTER_PARAMS`) is outvoted by the two others
/// when the members of step 5 are gathered: it is named, counted and
/// resynced from a good replica, straight over the peer link, before it
/// computes another gradient, and the run ends as the fault-free one.
#[test]
fn with_the_shadow_off_a_replica_whose_parameters_were_altered_is_resynced_before_the_next_step() {
    fault_free();
    let run = Run::shadow_off(1000);
    let (mut coord, mut workers) = run.start([None, Some(("DDPM_FAULT_ALTER_PARAMS", "4")), None]);
    let altered = joined_id(&mut workers[1]);
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    workers[1].wait_for_line("fault injection: altering this replica's parameters", Duration::from_secs(1));
    let out = coord.output();
    let named = out.lines().find(|l| l.contains("replica's parameters differ from the other replicas'")).unwrap_or_else(|| panic!("{out}"));
    assert!(named.contains(&format!("worker={altered}")) && named.contains("step=4"), "{named}");
    assert!(workers[1].output().contains("parameter checksum mismatch at step 4"), "{}", workers[1].output());
    let resynced = workers[1].output();
    let from_peer = resynced.lines().any(|l| l.contains("training state loaded from worker") && l.contains("peer to peer"));
    assert!(from_peer, "the replica was not resynced from a peer:\n{resynced}");
    let summary = run.summary();
    assert_eq!(summary["checksum_mismatches"], 1, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - shadow off, a replica altered after step 4| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

/// With the coordinator's copy on (the default), killing every worker
/// loses at most `shadow_lag` steps and the one in flight, not what
/// followed the last checkpoint: step 5's update never reaches the copy
/// (`DDPM_FAULT_SKIP_FEED` on every member), the loop runs on to step 7
/// (the lag of 2), and while it waits for the copy every worker is killed
/// -9. The coordinator saves the copy's last whole step (4) as a
/// checkpoint and starts the run again itself, in the same process on the
/// same addresses (the metrics port too): new workers join it, it resumes
/// from step 4, and the run ends as the fault-free one with each step
/// once in the metrics log.
#[test]
fn with_the_shadow_on_losing_every_worker_resumes_from_the_coordinators_copy() {
    fault_free();
    let run = Run::new();
    let toml = run.dir.path().join("run.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{config}\n[checkpoint]\nevery_steps = 1000\n")).unwrap();
    let (mut coord, addr) = run.coordinator_with(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = coord.wait_for_line("metrics on http://", Duration::from_secs(60));
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&addr, i, Some(("DDPM_FAULT_SKIP_FEED", "5")))).collect();
    coord.wait_for_line("step 7/8", Duration::from_secs(300));
    for w in &mut workers {
        w.child.kill().unwrap();
        let _ = w.child.wait();
    }
    let again = coord.wait_for_line("starts the run again itself", Duration::from_secs(120));
    assert!(again.contains("holds step 4 whole and saved it as a checkpoint"), "{again}");
    assert!(again.contains("resumes from the checkpoint of step 4 (3 steps are trained again)"), "{again}");
    assert!(checkpoint(&run.path(), 4).join("model.safetensors").exists(), "no checkpoint of step 4:\n{}", coord.output());

    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&addr, i, None)).collect();
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    // The second start served the metrics port the first had bound.
    let served: Vec<String> = coord.output().lines().filter(|l| l.contains("metrics on http://")).map(str::to_string).collect();
    assert_eq!(served, [metrics.clone(), metrics], "both starts on one metrics port");
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let summary = run.summary();
    assert_eq!((summary["steps"].as_u64(), summary["resumed_from"].as_u64()), (Some(STEPS), Some(4)), "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(run.logged_steps(), (1..=STEPS).collect::<Vec<_>>(), "each step once in metrics.jsonl");
    let d = max_diff(&run.final_params(), fault_free());
    eprintln!("max |fault-free - shadow on, every worker killed, resumed from the copy in place| = {d:e}");
    assert!(d < 1e-4, "{d}");
}
