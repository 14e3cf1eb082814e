//! A worker that joins a run in progress takes its training state (with
//! the EMA the replicas keep) straight from a replica idle at the run's
//! step, over the peer listeners the ring uses, not through the
//! coordinator: with the coordinator's copy off and on. A replica that
//! sends a state other than the one the replicas agreed on
//! (`DDPM_FAULT_PEER_STATE_ALTER`, `worker/src/peer_state.rs`) is caught
//! by the joiner's digest check; the joiner takes the state through the
//! coordinator instead, and every run ends with its replicas agreeing.
//! Real binaries on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{binary, start_coordinator, tempdir, Proc};

/// Tiny U-Net at 16x16 through the ring, every replica's digest each step.
const CONFIG: &str = r#"
[model]
image_size = 16

[train]
batch_size = 6
seed = 5
log_every = 1

[dist]
backend = "ring"
chunk_kib = 64
heartbeat_timeout_s = 600.0
straggler_factor = 0.0
checksum_every = 1
SHADOW

[checkpoint]
every_steps = 1000

[sample]
at_end = false
"#;

fn worker(addr: &str, i: usize, fault: Option<(&str, String)>) -> Proc {
    let name = format!("w{i}");
    let mut cmd = Command::new(binary("ddpm-worker"));
    cmd.args(["--coord", addr, "--device", "cpu", "--threads", "1", "--name", &name]).env("RUST_LOG", "info");
    if let Some((var, value)) = fault {
        cmd.env(var, value);
    }
    Proc::spawn(&name, cmd)
}

/// What the run of `shadow` (a `[dist]` line) showed: the coordinator's
/// log, the joiner's, and the summary. Two workers train 40 steps; a third
/// joins after step 3. `fault` goes to the two first workers.
struct Joined {
    coord: String,
    joiner: String,
    summary: serde_json::Value,
}

fn run_with_a_joiner(shadow: &str, fault: Option<(&str, String)>) -> Joined {
    let dir = tempdir();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, CONFIG.replace("SHADOW", shadow)).unwrap();
    let run = dir.path().join("run");
    let (config, path) = (cfg.display().to_string(), run.display().to_string());
    let args = ["--preset", "tiny", "--config", &config, "--workers", "2", "--steps", "40", "--threads", "1", "--run", &path];
    let (mut coord, addr) = start_coordinator(&args);
    let mut workers = vec![worker(&addr, 0, fault.clone()), worker(&addr, 1, fault)];
    coord.wait_for_line("step=3", Duration::from_secs(300));
    workers.push(worker(&addr, 2, None));
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let summary = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    Joined { coord: coord.output(), joiner: workers[2].output(), summary }
}

/// The step in a log line's `step=N`.
fn step_of(line: &str) -> u64 {
    line.split("step=").nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()).and_then(|s| s.parse().ok()).unwrap()
}

fn assert_agreeing(summary: &serde_json::Value) {
    assert_eq!(summary["steps"], 40);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert!(summary["replica_checksums"].as_object().unwrap().len() >= 3, "the joiner did not train to the end: {summary}");
    assert_eq!(summary["checksum_mismatches"], 0, "{summary}");
}

/// The joiner's state came from a replica over the peer link, and the
/// coordinator relayed none: no upload was asked of that step, and the
/// joiner never fetched one. The loop waited for that one transfer: the
/// joiner was never resynced (it did not load a step the run had left).
fn assert_peer_to_peer(j: &Joined) {
    let loads: Vec<&str> = j.joiner.lines().filter(|l| l.contains("training state loaded")).collect();
    assert_eq!(loads.len(), 1, "the joiner loaded a state {} times:\n{}", loads.len(), j.joiner);
    let loaded = loads[0];
    assert!(loaded.contains("peer to peer"), "{loaded}\n{}", j.joiner);
    let step = step_of(loaded);
    assert!(step >= 3, "the joiner loaded the state of step {step}: {loaded}");
    assert!(
        j.coord.contains(&format!("takes the state of step {step} from worker")) && j.coord.contains("peer to peer"),
        "the coordinator did not hand the joiner to a peer:\n{}",
        j.coord
    );
    assert!(!j.coord.contains(&format!("for the state of step {step} ")), "the coordinator relayed the state:\n{}", j.coord);
    assert!(!j.joiner.contains("through the coordinator"), "{}", j.joiner);
}

#[test]
fn with_the_shadow_off_a_joiner_takes_its_state_from_a_peer_replica() {
    let j = run_with_a_joiner("shadow = \"off\"", None);
    assert_peer_to_peer(&j);
    assert_agreeing(&j.summary);
}

#[test]
fn with_the_shadow_on_a_joiner_takes_its_state_from_a_peer_replica_too() {
    let j = run_with_a_joiner("", None);
    assert_peer_to_peer(&j);
    assert_agreeing(&j.summary);
}

#[test]
fn a_peer_that_sends_another_state_than_the_agreed_one_is_refused_and_the_coordinator_relays_it() {
    let dir = tempdir();
    let flag = dir.path().join("altered");
    let j = run_with_a_joiner("shadow = \"off\"", Some(("DDPM_FAULT_PEER_STATE_ALTER", format!("1:{}", flag.display()))));
    assert!(flag.exists(), "no replica was told to send its state");
    assert!(j.joiner.contains("the replicas agreed on"), "{}", j.joiner);
    assert!(j.joiner.contains("taking it through the coordinator"), "{}", j.joiner);
    let loaded: Vec<&str> = j.joiner.lines().filter(|l| l.contains("training state loaded")).collect();
    assert!(!loaded.is_empty() && !loaded[0].contains("peer to peer"), "{loaded:?}");
    assert_agreeing(&j.summary);
}
