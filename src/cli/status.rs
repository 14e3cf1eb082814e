//! `ddpm status`: a running coordinator's run at a glance, from its
//! GetStatus call: phase, step and time left, loss, speed, checkpoints,
//! the workers with their state and speed. `--json` for scripts,
//! `--watch SECONDS` to refresh until the run ends.

use std::time::Duration;

use clap::Args;
use ddpm::proto::{self, coordinator_client::CoordinatorClient};

use super::coord_conn::{rpc_err, CoordArgs};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: CoordArgs,
    /// Print the status as one JSON object (the fields of GetStatus).
    #[arg(long)]
    json: bool,
    /// Print it again every SECONDS until the coordinator goes away.
    #[arg(long, value_name = "SECONDS")]
    watch: Option<f64>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    if let Some(w) = args.watch {
        anyhow::ensure!(w.is_finite() && w >= 0.1, "--watch {w}: give seconds between refreshes, at least 0.1");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = CoordinatorClient::new(args.conn.connect().await?);
        loop {
            let reply = match client.get_status(proto::StatusRequest {}).await {
                Ok(r) => r.into_inner(),
                // With --watch, the coordinator ending is the end of the watch.
                Err(e) if args.watch.is_some() && e.code() == tonic::Code::Unavailable => {
                    println!("the coordinator at {} is gone: {}", args.conn.coord, e.message());
                    return Ok(());
                }
                Err(e) => return Err(rpc_err(e)),
            };
            if args.json {
                println!("{}", serde_json::to_string(&as_json(&reply))?);
            } else {
                print!("{}", render(&reply, &args.conn.coord));
            }
            match args.watch {
                Some(secs) if reply.phase != "done" => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
                _ => return Ok(()),
            }
            if !args.json {
                println!();
            }
        }
    })
}

/// The reply as JSON, every field by its proto name.
pub fn as_json(r: &proto::StatusReply) -> serde_json::Value {
    let members: Vec<serde_json::Value> = r
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "worker_id": m.worker_id, "name": m.name, "device": m.device, "ready": m.ready, "role": m.role,
                "state": m.state, "last_step": m.last_step, "compute_s": m.compute_s, "shard_size": m.shard_size,
                "silent_s": m.silent_s, "peer_endpoint": (!m.peer_endpoint.is_empty()).then_some(&m.peer_endpoint),
            })
        })
        .collect();
    serde_json::json!({
        "run": r.run, "phase": r.phase, "step": r.step, "total_steps": r.total_steps, "resumed_from": r.resumed_from,
        "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr, "images_per_s": r.images_per_s,
        "elapsed_s": r.elapsed_s, "eta_s": (r.eta_s >= 0.0).then_some(r.eta_s),
        "skipped_steps": r.skipped_steps, "last_checkpoint_step": r.last_checkpoint_step,
        "unsaved_steps": r.unsaved_steps, "checkpoint_error": (!r.checkpoint_error.is_empty()).then_some(&r.checkpoint_error),
        "checkpoint_steps": r.checkpoint_steps, "workers_expected": r.workers_expected, "reduction": r.reduction,
        "shadow_step": r.shadow_step, "shadow_off": r.shadow_off, "shadow_error": (!r.shadow_error.is_empty()).then_some(&r.shadow_error), "members": members,
    })
}

fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// The reply as text for a person.
pub fn render(r: &proto::StatusReply, coord: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = if r.total_steps > 0 { 100.0 * r.step as f64 / r.total_steps as f64 } else { 0.0 };
    let _ = writeln!(out, "run        {}  (coordinator {coord})", r.run);
    let _ = writeln!(out, "phase      {}", r.phase);
    let resumed = if r.resumed_from > 0 { format!("  resumed from step {}", r.resumed_from) } else { String::new() };
    let _ = writeln!(out, "step       {} / {}  ({pct:.1}%){resumed}", r.step, r.total_steps);
    if r.step > r.resumed_from {
        let _ = writeln!(out, "loss       {:.4}  (grad norm {:.3}, lr {:.2e})", r.loss, r.grad_norm, r.lr);
        let eta = if r.eta_s >= 0.0 { duration(r.eta_s) } else { "unknown".into() };
        let _ = writeln!(out, "speed      {:.1} images/s  elapsed {}  time left {eta}", r.images_per_s, duration(r.elapsed_s));
    }
    if r.skipped_steps > 0 {
        let _ = writeln!(out, "skipped    {} steps (non-finite gradients)", r.skipped_steps);
    }
    let saved = match r.last_checkpoint_step {
        0 => "none yet".to_string(),
        s => format!("step {s}  ({} steps since)", r.unsaved_steps),
    };
    let _ = writeln!(out, "checkpoint {saved}  [{} in the store]", r.checkpoint_steps.len());
    if !r.checkpoint_error.is_empty() {
        let _ = writeln!(out, "           ! {}", r.checkpoint_error);
    }
    if r.shadow_off {
        let _ = writeln!(out, "shadow     off: the replicas hold the state (the coordinator last took it at step {})", r.shadow_step);
    } else if r.step > 0 && (r.shadow_step != r.step || !r.shadow_error.is_empty()) {
        // Only worth a line when it is behind: with the star it never is.
        let _ = writeln!(
            out,
            "shadow     the coordinator's copy of the state is at step {} ({} behind)",
            r.shadow_step,
            r.step.saturating_sub(r.shadow_step)
        );
    }
    if !r.shadow_error.is_empty() {
        let _ = writeln!(out, "           ! {}", r.shadow_error);
    }
    let reduction = if r.reduction.is_empty() { String::new() } else { format!("  (gradients reduced by: {})", r.reduction) };
    let _ = writeln!(out, "workers    {} members, {} expected{reduction}", r.members.len(), r.workers_expected);
    if !r.members.is_empty() {
        let _ = writeln!(
            out,
            "  {:>4}  {:<24} {:<8} {:<5} {:<7} {:>9} {:>9} {:>9}",
            "id", "name", "device", "role", "state", "last step", "compute", "images/s"
        );
        for m in &r.members {
            let (compute, speed) = if m.compute_s > 0.0 {
                (format!("{:.2}s", m.compute_s), format!("{:.1}", m.shard_size as f64 / m.compute_s))
            } else {
                ("-".into(), "-".into())
            };
            let _ = writeln!(
                out,
                "  {:>4}  {:<24} {:<8} {:<5} {:<7} {:>9} {:>9} {:>9}",
                m.worker_id, m.name, m.device, m.role, m.state, m.last_step, compute, speed
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_as_text_and_json() {
        let r = proto::StatusReply {
            step: 25,
            total_steps: 100,
            loss: 0.0512,
            phase: "training".into(),
            run: "s3://b/run".into(),
            resumed_from: 20,
            eta_s: 3725.0,
            elapsed_s: 5.0,
            last_checkpoint_step: 20,
            unsaved_steps: 5,
            checkpoint_error: "no space".into(),
            reduction: "ring".into(),
            shadow_step: 23,
            members: vec![proto::MemberStatus {
                worker_id: 3,
                name: "a/gpu0".into(),
                state: "busy".into(),
                compute_s: 0.5,
                shard_size: 64,
                last_step: 25,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&r, "h:1");
        for want in [
            "25 / 100  (25.0%)  resumed from step 20",
            "time left 1h02m",
            "step 20  (5 steps since)",
            "! no space",
            "128.0",
            "reduced by: ring",
            "copy of the state is at step 23 (2 behind)",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let j = as_json(&r);
        assert_eq!(j["members"][0]["worker_id"], 3);
        assert_eq!(j["eta_s"], 3725.0);
        assert_eq!(j["checkpoint_error"], "no space");
        assert_eq!(j["reduction"], "ring");
        assert_eq!(j["shadow_step"], 23);
        assert!(!render(&proto::StatusReply { step: 25, shadow_step: 25, ..Default::default() }, "h:1").contains("shadow"));
        let off = render(&proto::StatusReply { step: 25, shadow_step: 20, shadow_off: true, ..Default::default() }, "h:1");
        assert!(off.contains("shadow     off: the replicas hold the state (the coordinator last took it at step 20)"), "{off}");
        assert!(as_json(&proto::StatusReply { eta_s: -1.0, ..Default::default() })["eta_s"].is_null());
    }
}
