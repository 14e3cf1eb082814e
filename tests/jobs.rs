//! Sampling jobs through the real binaries on loopback: submitted with the
//! `ddpm jobs` CLI and over gRPC, after training (`--serve`) and during it
//! (an eval worker), split across one or two workers with identical images,
//! equal to the library's sampler run here on the checkpoint's EMA weights;
//! cancelled jobs, bad requests and unknown ids.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{binary, start_coordinator, start_worker, tempdir, Proc};
use ddpm::config::TrainConfig;
use ddpm::proto::{self, coordinator_client::CoordinatorClient, jobs_client::JobsClient};
use tokio_stream::StreamExt;
use tonic::Code;

const CONFIG: &str = r#"
[model]
image_size = 8
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [4]
dropout = 0.0
num_groups = 8

[data]
spec = "synthetic:shapes"

[train]
batch_size = 4
seed = 5
log_every = 1

[dist]
heartbeat_timeout_s = 60

[sample]
at_end = false
"#;

fn write_config(dir: &Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{CONFIG}\n[checkpoint]\nat_end = true\nevery_steps = 1000000\n")).unwrap();
    path.display().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn jobs_client(addr: &str) -> JobsClient<tonic::transport::Channel> {
    JobsClient::connect(format!("http://{addr}")).await.expect("connect to the Jobs service")
}

/// Waits until the coordinator reports `n` ready members.
async fn wait_members(addr: &str, n: usize) {
    let mut c = CoordinatorClient::connect(format!("http://{addr}")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = c.get_status(proto::StatusRequest {}).await.unwrap().into_inner();
        if s.members.iter().filter(|m| m.ready).count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} members did not join: {:?}", s.members);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn phase(addr: &str) -> String {
    let mut c = CoordinatorClient::connect(format!("http://{addr}")).await.unwrap();
    c.get_status(proto::StatusRequest {}).await.unwrap().into_inner().phase
}

/// Follows a job to its end; returns the last status.
async fn watch(addr: &str, job_id: u64) -> proto::JobStatus {
    let mut c = jobs_client(addr).await;
    let mut stream = c.watch_job(proto::JobRef { job_id }).await.unwrap().into_inner();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Some(s) = tokio::time::timeout_at(deadline.into(), stream.next()).await.expect("job did not end in time") {
        last = Some(s.unwrap());
    }
    last.expect("at least one status")
}

fn ddpm_cli(args: &[&str]) -> std::process::Output {
    Command::new(binary("ddpm")).args(args).output().expect("run ddpm")
}

fn read_images(run: &Path, job: u64) -> ddpm::eval::SampleImages {
    ddpm::eval::read_samples_npz(&run.join(format!("jobs/{job:06}/samples.npz"))).expect("the job's samples.npz")
}

fn job_record(run: &Path, job: u64) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join(format!("jobs/{job:06}/job.json"))).expect("job.json");
    serde_json::from_str(&text).unwrap()
}

/// The same images drawn here with the library's sampler from the EMA
/// weights of the run's checkpoint of `step`.
fn reference_images(run: &Path, config: &TrainConfig, step: u64, count: u64, steps: usize, batch: usize) -> Vec<u8> {
    use ddpm::train::sample::{sample_images, SampleRequest, Sampler};
    let store = ddpm::store::RunStore::open(run.to_str().unwrap(), &Default::default()).unwrap();
    let data = rt().block_on(ddpm::checkpoint::read(&store, step)).expect("the run's checkpoint");
    let mut model = ddpm::train::flat::FlatModel::new(&config.model, tch::Device::Cpu).unwrap();
    model.load_flat(&tch::Tensor::from_slice(&data.ema));
    let diffusion = ddpm::diffusion::GaussianDiffusion::new(&config.diffusion).unwrap();
    let req = SampleRequest { seed: 11, first: 0, count, sampler: Sampler::Ddim { steps, eta: 0.0 }, batch };
    sample_images(&model.unet, &diffusion, &req, tch::Device::Cpu, &mut |_, _| {}).unwrap()
}

#[test]
fn sample_jobs_after_training_give_the_same_images_with_one_and_two_workers() {
    tch::set_num_threads(1);
    let dir = tempdir();
    let run = dir.path().join("run");
    let cfg_path = write_config(dir.path());
    let config = TrainConfig::from_toml_str(CONFIG, &TrainConfig::tiny()).unwrap();
    let (mut coord, addr) = start_coordinator(&[
        "--preset", "tiny", "--config", &cfg_path, "--workers", "1", "--steps", "3", "--serve",
        "--run", run.to_str().unwrap(),
    ]);
    let _w1 = start_worker(&addr, "w1");
    coord.wait_for_line("serving jobs", Duration::from_secs(300));

    // Through the CLI: submit, watch to the end, JSON statuses.
    let out = ddpm_cli(&[
        "jobs", "--coord", &addr, "--json", "submit-sample", "--count", "6", "--sampler", "ddim", "--steps", "4",
        "--seed", "11", "--batch", "2", "--individual-pngs", "--watch",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ddpm jobs submit-sample failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "done", "{stdout}");
    assert_eq!((last["done"].as_u64(), last["total"].as_u64()), (Some(6), Some(6)));
    assert_eq!(last["weights_step"].as_u64(), Some(3));
    let first_job = last["job_id"].as_u64().unwrap();

    let one = read_images(&run, first_job);
    assert_eq!((one.count, one.height, one.width), (6, 8, 8));
    let job_dir = run.join(format!("jobs/{first_job:06}"));
    assert!(job_dir.join("grid.png").exists());
    for i in 0..6 {
        let png = image::open(job_dir.join(format!("images/{i:06}.png"))).expect("an individual PNG").to_rgb8();
        let chw: Vec<u8> = (0..3).flat_map(|c| png.pixels().map(move |p| p.0[c])).collect();
        assert_eq!(chw, one.pixels_nchw[i * 192..(i + 1) * 192], "image {i}: PNG and .npz differ");
    }
    let rec = job_record(&run, first_job);
    assert_eq!(rec["spec"]["sampler"], "ddim");
    assert_eq!(rec["images_by_worker"].as_object().unwrap().len(), 1, "{rec}");

    // The library's sampler on the checkpoint's EMA weights, in this process.
    let want = reference_images(&run, &config, 3, 6, 4, 2);
    let differ = want.iter().zip(&one.pixels_nchw).filter(|(a, b)| a != b).count();
    let worst = want.iter().zip(&one.pixels_nchw).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1 && differ * 100 <= want.len(), "job images differ from the reference: {differ} bytes, max {worst}");
    let distinct: std::collections::BTreeSet<u8> = one.pixels_nchw.iter().copied().collect();
    assert!(distinct.len() > 10, "the images are flat: {distinct:?}");

    // A second worker: the same job gives the same bytes, drawn by both.
    let _w2 = start_worker(&addr, "w2");
    rt().block_on(async {
        wait_members(&addr, 2).await;
        let mut c = jobs_client(&addr).await;
        let req = proto::SampleJobRequest {
            count: 6,
            sampler: "ddim".into(),
            steps: 4,
            seed: 11,
            batch: 2,
            ..Default::default()
        };
        let id = c.submit_sample_job(req).await.unwrap().into_inner().job_id;
        let s = watch(&addr, id).await;
        assert_eq!(s.state, "done", "{s:?}");
        let two = read_images(&run, id);
        assert_eq!(two.pixels_nchw, one.pixels_nchw, "1 and 2 workers drew different images");
        let rec = job_record(&run, id);
        assert_eq!(rec["images_by_worker"].as_object().unwrap().len(), 2, "{rec}");

        // Bad requests and unknown ids.
        let bad = c.submit_sample_job(proto::SampleJobRequest { count: 0, ..Default::default() }).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("count must be between 1 and"), "{}", bad.message());
        let bad = c
            .submit_sample_job(proto::SampleJobRequest { count: 2, sampler: "euler".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("unknown sampler \"euler\""), "{}", bad.message());
        let bad = c
            .submit_sample_job(proto::SampleJobRequest { count: 2, checkpoint_step: 2, ..Default::default() })
            .await
            .unwrap_err();
        assert!(bad.message().contains("no complete checkpoint of step 2 (complete ones: 3)"), "{}", bad.message());
        let unknown = c.get_job(proto::JobRef { job_id: 999 }).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        assert!(unknown.message().contains("unknown job id 999"), "{}", unknown.message());

        // Cancel a long job (ancestral, 1000 steps per image); the workers
        // drop its images and the next job runs normally, from a checkpoint.
        let long = proto::SampleJobRequest { count: 64, batch: 16, ..Default::default() };
        let id = c.submit_sample_job(long).await.unwrap().into_inner().job_id;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = c.cancel_job(proto::JobRef { job_id: id }).await.unwrap().into_inner();
        assert_eq!(s.state, "cancelled");
        assert_eq!(watch(&addr, id).await.state, "cancelled");
        let req = proto::SampleJobRequest {
            count: 2,
            sampler: "ddim".into(),
            steps: 4,
            seed: 11,
            batch: 2,
            checkpoint_step: 3,
            ..Default::default()
        };
        let after = c.submit_sample_job(req).await.unwrap().into_inner().job_id;
        let s = watch(&addr, after).await;
        assert_eq!(s.state, "done", "{s:?}");
        assert_eq!(read_images(&run, after).pixels_nchw, one.pixels_nchw[..2 * 192], "checkpoint weights differ from live");
        let listed = c.list_jobs(proto::ListJobsRequest {}).await.unwrap().into_inner().jobs;
        let states: Vec<&str> = listed.iter().map(|j| j.state.as_str()).collect();
        assert_eq!(states, ["done", "done", "cancelled", "done"]);
    });

    // The CLI on an unknown job: a clear error, a failing exit code.
    let out = ddpm_cli(&["jobs", "--coord", &addr, "get", "999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job id 999"));

    // SIGTERM ends serving.
    let pid = coord.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(coord.wait(Duration::from_secs(60)), 0, "{}", coord.output());
}

#[test]
fn a_sample_job_runs_during_training_on_an_eval_worker() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let cfg_path = write_config(dir.path());
    let (mut coord, addr) = start_coordinator(&[
        "--preset", "tiny", "--config", &cfg_path, "--workers", "1", "--steps", "400", "--run", run.to_str().unwrap(),
    ]);
    let _trainer = start_worker(&addr, "trainer");
    let _eval: Proc = Proc::start(
        "eval",
        "ddpm-worker",
        &["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", "eval", "--role", "eval"],
    );
    coord.wait_for_line("step 2/400", Duration::from_secs(120));
    rt().block_on(async {
        assert_eq!(phase(&addr).await, "training");
        let mut c = jobs_client(&addr).await;
        let req = proto::SampleJobRequest { count: 2, sampler: "ddim".into(), steps: 3, batch: 2, ..Default::default() };
        let id = c.submit_sample_job(req).await.unwrap().into_inner().job_id;
        let s = watch(&addr, id).await;
        assert_eq!(s.state, "done", "{s:?}");
        assert!(s.weights_step >= 2 && s.weights_step < 400, "{s:?}");
        assert_eq!(phase(&addr).await, "training", "the job should have finished while the run trained");
    });
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "{}", coord.output());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 400);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 1, "the eval worker is not a replica: {summary}");
}
