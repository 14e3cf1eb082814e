//! Bad peers and bad configs, through the real binaries: each gets a clear
//! message and none of them stops a run.

mod common;

use std::time::Duration;

use common::{start_coordinator, start_worker, tempdir, Proc};
use ddpm::config::RunConfig;
use ddpm::proto::{self, coordinator_client::CoordinatorClient, gradient_message, work_message};
use ddpm::wire::auth::Credentials;
use tokio_stream::StreamExt;
use tonic::Code;

fn tiny_args(run: &str) -> Vec<String> {
    ["--preset", "tiny", "--steps", "3", "--batch-size", "4", "--samples", "0", "--threads", "1", "--run", run]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

type Client = CoordinatorClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>>;

/// A hand-written worker's client; set the session on its credentials after Register.
async fn client(addr: &str) -> (Client, Credentials) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    let credentials = Credentials::default();
    (CoordinatorClient::with_interceptor(channel, credentials.clone()).max_decoding_message_size(64 << 20), credentials)
}

fn register_req(version: u32) -> proto::RegisterRequest {
    proto::RegisterRequest {
        protocol_version: version,
        name: "test".into(),
        device: "cpu".into(),
        version: "test".into(),
        role: String::new(),
        peer_endpoint: String::new(),
    }
}

#[test]
fn coordinator_refuses_configs_that_cannot_work() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--preset", "imagenet"], "unknown preset \"imagenet\": choose one of cifar10, lsun256, tiny"),
        (vec!["--preset", "tiny", "--workers", "5", "--batch-size", "4"], "5 workers cannot share a global batch of 4"),
        (vec!["--preset", "cifar10"], "no dataset: pass --data SPEC"),
        (vec!["--preset", "tiny", "--data", "imagenet:/x"], "imagenet"),
        (vec!["--preset", "tiny", "--grad-dtype", "f16"], "unknown gradient dtype \"f16\""),
    ];
    for (args, want) in cases {
        let mut all = args.clone();
        all.extend(["--listen", "127.0.0.1:0", "--run", run.to_str().unwrap()]);
        let mut p = Proc::start("ddpm-coord", "ddpm-coord", &all);
        let code = p.wait(Duration::from_secs(60));
        let out = p.output();
        assert_ne!(code, 0, "{args:?} should fail:\n{out}");
        assert!(out.contains(want), "{args:?}: expected {want:?} in:\n{out}");
    }
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[dist]\nrequire_even_shards = true\n[train]\nbatch_size = 5\n").unwrap();
    let mut p = Proc::start(
        "ddpm-coord",
        "ddpm-coord",
        &["--preset", "tiny", "--config", cfg.to_str().unwrap(), "--workers", "2", "--listen", "127.0.0.1:0"],
    );
    assert_ne!(p.wait(Duration::from_secs(60)), 0);
    assert!(p.output().contains("does not split evenly across 2 workers"), "{}", p.output());
    std::fs::write(&cfg, "[train]\nbatch_sise = 5\n").unwrap();
    let mut p = Proc::start("ddpm-coord", "ddpm-coord", &["--preset", "tiny", "--config", cfg.to_str().unwrap()]);
    assert_ne!(p.wait(Duration::from_secs(60)), 0);
    assert!(p.output().contains("batch_sise"), "{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_and_wrong_model_are_refused_at_registration() {
    let dir = tempdir();
    let args = tiny_args(dir.path().join("run").to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_coord, addr) = start_coordinator(&args);
    let (mut c, credentials) = client(&addr).await;

    let e = c.register(register_req(99)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("protocol version 99") && e.message().contains(&format!("version {}", ddpm::wire::PROTOCOL_VERSION)),
        "{}",
        e.message()
    );

    let reply = c.register(register_req(ddpm::wire::PROTOCOL_VERSION)).await.unwrap().into_inner();
    credentials.set_session(&reply.session_secret);
    let run: RunConfig = serde_json::from_str(&reply.run_config_json).unwrap();
    let e = c
        .ready(proto::ReadyRequest { worker_id: reply.worker_id, layout_hash: 1, param_count: run.param_count + 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("different ddpm build"), "{}", e.message());
    // Refused means removed: the id is gone.
    let e = c.next_work(proto::NextWorkRequest { worker_id: reply.worker_id, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = c.next_work(proto::NextWorkRequest { worker_id: 12345, ..Default::default() }).await.unwrap_err();
    assert!(e.message().contains("unknown worker id 12345"), "{}", e.message());
}

/// A ring run refuses a training worker its neighbours could not dial (no
/// peer endpoint) and an endpoint that is not HOST:PORT, saying how to fix
/// it; an eval worker needs none.
#[tokio::test]
async fn a_ring_run_refuses_training_workers_without_a_reachable_peer_endpoint() {
    let dir = tempdir();
    let mut args = tiny_args(dir.path().join("run").to_str().unwrap());
    args.extend(["--backend".to_string(), "ring".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_coord, addr) = start_coordinator(&args);
    let (mut c, _) = client(&addr).await;
    let req = |endpoint: &str, role: &str| proto::RegisterRequest {
        peer_endpoint: endpoint.into(),
        role: role.into(),
        ..register_req(ddpm::wire::PROTOCOL_VERSION)
    };
    let e = c.register(req("", "train")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("worker to worker") && e.message().contains("--peer-listen"), "{}", e.message());
    let e = c.register(req("no-port-here", "train")).await.unwrap_err();
    assert!(e.message().contains("\"no-port-here\" is not HOST:PORT"), "{}", e.message());
    let e = c.register(req("host:0", "train")).await.unwrap_err();
    assert!(e.message().contains("not HOST:PORT"), "{}", e.message());
    c.register(req("", "eval")).await.expect("an eval worker needs no peer endpoint");
    c.register(req("127.0.0.1:9", "train")).await.expect("HOST:PORT is accepted");
}

/// A peer that joins properly, then sends a gradient chunk of the wrong
/// size: it is rejected with the reason, and the run finishes with the
/// real worker alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_gradient_is_rejected_and_the_run_goes_on() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(run_dir.to_str().unwrap());
    args.extend(["--workers".to_string(), "2".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut coord, addr) = start_coordinator(&args);
    // The fake member stays alive (heartbeats) while the real worker starts.
    let (mut c, id, run, hb) = fake_member(&addr).await;
    let mut state = c
        .fetch_state(proto::FetchStateRequest { worker_id: id, kind: proto::StateKind::Training as i32, job_id: 0 })
        .await
        .unwrap()
        .into_inner();
    while state.next().await.is_some() {}
    let mut worker = start_worker(&addr, "real");
    let mut work = c.next_work(proto::NextWorkRequest { worker_id: id, ..Default::default() }).await.unwrap().into_inner();
    let assignment = match work.next().await.unwrap().unwrap().kind {
        Some(work_message::Kind::Train(a)) => a,
        other => panic!("expected a training step, got {other:?}"),
    };
    while work.next().await.is_some() {}
    let msgs = vec![
        proto::GradientMessage {
            kind: Some(gradient_message::Kind::Header(proto::GradientHeader {
                worker_id: id,
                step: assignment.step,
                attempt: assignment.attempt,
                elements: run.param_count,
                dtype: proto::GradDtype::F32 as i32,
                loss: 0.5,
                samples: assignment.shard_size,
                compute_s: 0.0,
                // The star screens the chunks themselves.
                chunk_norms: Vec::new(),
            })),
        },
        proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(proto::GradientChunk { index: 0, data: vec![0u8; 10].into() })) },
    ];
    let mut reduced = c.reduce_gradients(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let e = loop {
        match reduced.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the coordinator accepted a 10-byte chunk"),
        }
    };
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("chunk 0 has 10 bytes, expected"), "{}", e.message());
    hb.abort();

    let code = tokio::task::spawn_blocking(move || {
        let code = coord.wait(Duration::from_secs(300));
        (code, coord.output())
    })
    .await
    .unwrap();
    assert_eq!(code.0, 0, "{}", code.1);
    assert!(code.1.contains("rejecting gradient"), "{}", code.1);
    assert!(code.1.contains("redoing it"), "{}", code.1);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "{}", worker.output());
}

/// A hand-written member: registered, ready, heartbeating; returns its
/// client, id and the run config (the heartbeats stop when the task is aborted).
async fn fake_member(addr: &str) -> (Client, u64, RunConfig, tokio::task::JoinHandle<()>) {
    let (mut c, credentials) = client(addr).await;
    let reply = c.register(register_req(ddpm::wire::PROTOCOL_VERSION)).await.unwrap().into_inner();
    credentials.set_session(&reply.session_secret);
    let id = reply.worker_id;
    let run: RunConfig = serde_json::from_str(&reply.run_config_json).unwrap();
    c.ready(proto::ReadyRequest { worker_id: id, layout_hash: run.layout_hash, param_count: run.param_count, ..Default::default() })
        .await
        .unwrap();
    let hb = {
        let mut c = c.clone();
        tokio::spawn(async move {
            loop {
                let _ = c.heartbeat(proto::HeartbeatRequest { worker_id: id }).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    (c, id, run, hb)
}

/// Every value of the gradient `value`, in the assignment's chunks; the
/// error the coordinator ends the stream with.
async fn send_gradient(c: &mut Client, id: u64, run: &RunConfig, a: &proto::TrainAssignment, value: f32) -> tonic::Status {
    let grad = vec![value; run.param_count as usize];
    let header = proto::GradientHeader {
        worker_id: id,
        step: a.step,
        attempt: a.attempt,
        elements: run.param_count,
        dtype: proto::GradDtype::F32 as i32,
        loss: 0.0,
        samples: a.shard_size,
        compute_s: 0.0,
        chunk_norms: Vec::new(),
    };
    let mut msgs = vec![proto::GradientMessage { kind: Some(gradient_message::Kind::Header(header)) }];
    for (i, r) in ddpm::wire::chunk_ranges(grad.len(), a.chunk_elements as usize).enumerate() {
        let data = ddpm::wire::encode(&grad[r], ddpm::config::GradDtype::F32);
        msgs.push(proto::GradientMessage { kind: Some(gradient_message::Kind::Chunk(proto::GradientChunk { index: i as u32, data })) });
    }
    let mut reduced = c.reduce_gradients(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    loop {
        match reduced.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return e,
            None => panic!("the coordinator accepted a gradient of {value}"),
        }
    }
}

/// Runs 3 steps with 2 real workers (and `poison`: a third member that
/// sends that value everywhere in its first gradient); returns the final
/// checkpoint's tensors and the coordinator's output.
async fn run_with(poison: Option<f32>) -> (Vec<std::collections::HashMap<String, Vec<f32>>>, String) {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(run_dir.to_str().unwrap());
    args.extend(["--workers".to_string(), if poison.is_some() { "3" } else { "2" }.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut coord, addr) = start_coordinator(&args);
    let hostile = match poison {
        Some(_) => Some(fake_member(&addr).await),
        None => None,
    };
    let mut workers: Vec<Proc> = (0..2).map(|i| start_worker(&addr, &format!("real{i}"))).collect();
    if let (Some(value), Some((mut c, id, run, hb))) = (poison, hostile) {
        let mut work = c.next_work(proto::NextWorkRequest { worker_id: id, ..Default::default() }).await.unwrap().into_inner();
        let a = match work.next().await.unwrap().unwrap().kind {
            Some(work_message::Kind::Train(a)) => a,
            other => panic!("expected a training step, got {other:?}"),
        };
        while work.next().await.is_some() {}
        let e = send_gradient(&mut c, id, &run, &a, value).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(&format!("worker {id} sent a")), "{}", e.message());
        hb.abort();
    }
    let (code, out) = tokio::task::spawn_blocking(move || {
        let code = coord.wait(Duration::from_secs(300));
        (code, coord.output())
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let files = ["model.safetensors", "ema.safetensors", "optimizer.safetensors"]
        .map(|f| common::read_tensors(&run_dir.join(format!("checkpoints/step_0000000003/{f}"))))
        .to_vec();
    (files, out)
}

/// A member sending 1e20 or NaN in its gradient is named in the log,
/// dropped, and the step is redone by the honest members: the run ends
/// with exactly the parameters, EMA and Adam moments of a run in which
/// that member never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_gradient_is_screened_out_and_the_run_equals_one_without_the_poisoner() {
    let (clean, _) = run_with(None).await;
    for (poison, why) in [(1e20f32, "over 100x the reference"), (f32::NAN, "non-finite gradient")] {
        let (got, out) = run_with(Some(poison)).await;
        assert!(out.contains("rejecting gradient") && out.contains(why), "{poison}: {out}");
        assert!(out.contains("redoing it"), "{out}");
        for (a, b) in clean.iter().zip(&got) {
            let d = common::max_diff(a, b);
            assert!(d <= 1e-6, "{poison}: the screened run differs from the clean one by {d}");
        }
    }
}
