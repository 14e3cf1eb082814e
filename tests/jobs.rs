//! Sampling jobs through the real binaries on loopback: submitted with the
//! `ddpm jobs` CLI and over gRPC, after training (`--serve`) and during it
//! (an eval worker), split across one or two workers with identical images,
//! equal to the library's sampler run here on the checkpoint's EMA weights;
//! cancelled jobs, bad requests and unknown ids; and `ddpm sample`, which
//! must give a job's files byte for byte. One file over 450 lines on
//! purpose: the tests share one served run (a tiny training each) and its
//! helpers, and splitting them would train it once per file.

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
        // Idle too, not only registered: a job's first tasks go to the
        // members idle when it starts, and a small job can be done by one
        // before the other asks for work.
        if s.members.iter().filter(|m| m.ready && m.state == "idle").count() >= n {
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
    let (model, diffusion) = checkpoint_ema(run, config, step);
    let req = SampleRequest { seed: 11, first: 0, count, sampler: Sampler::Ddim { steps, eta: 0.0 }, batch };
    sample_images(&model.unet, &diffusion, &req, tch::Device::Cpu, &mut |_, _| {}).unwrap()
}

/// The U-Net with the EMA weights of the run's checkpoint of `step`, and the diffusion.
fn checkpoint_ema(run: &Path, config: &TrainConfig, step: u64) -> (ddpm::train::flat::FlatModel, ddpm::diffusion::GaussianDiffusion) {
    let store = ddpm::store::RunStore::open(run.to_str().unwrap(), &Default::default()).unwrap();
    // On a thread of its own: callers may be inside a runtime.
    let data = std::thread::scope(|s| s.spawn(|| rt().block_on(ddpm::checkpoint::read(&store, step))).join().unwrap())
        .expect("the run's checkpoint");
    let mut model = ddpm::train::flat::FlatModel::new(&config.model, tch::Device::Cpu).unwrap();
    model.load_flat(&tch::Tensor::from_slice(&data.ema));
    (model, ddpm::diffusion::GaussianDiffusion::new(&config.diffusion).unwrap())
}

/// A coordinator that trained 3 steps with one worker and now serves jobs.
struct Served {
    dir: tempfile::TempDir,
    run: std::path::PathBuf,
    config: TrainConfig,
    coord: Proc,
    addr: String,
    worker: Proc,
}

fn serve_after_3_steps() -> Served {
    let dir = tempdir();
    let run = dir.path().join("run");
    let cfg_path = write_config(dir.path());
    let config = TrainConfig::from_toml_str(CONFIG, &TrainConfig::tiny()).unwrap();
    let (mut coord, addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--config",
        &cfg_path,
        "--workers",
        "1",
        "--steps",
        "3",
        "--serve",
        "--run",
        run.to_str().unwrap(),
    ]);
    let worker = start_worker(&addr, "w1");
    coord.wait_for_line("serving jobs", Duration::from_secs(300));
    Served { dir, run, config, coord, addr, worker }
}

#[test]
fn sample_jobs_after_training_give_the_same_images_with_one_and_two_workers() {
    tch::set_num_threads(1);
    let Served { dir: _dir, run, config, mut coord, addr, worker: _w1 } = serve_after_3_steps();

    // Through the CLI: submit, watch to the end, JSON statuses.
    let out = ddpm_cli(&[
        "jobs",
        "--coord",
        &addr,
        "--json",
        "submit-sample",
        "--count",
        "6",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--seed",
        "11",
        "--batch",
        "2",
        "--individual-pngs",
        "--watch",
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

    // `ddpm sample` on this machine, no coordinator: the job's files, byte for byte.
    let local = _dir.path().join("local");
    let out = ddpm_cli(&[
        "sample",
        "--run",
        run.to_str().unwrap(),
        "--checkpoint-step",
        "3",
        "--count",
        "6",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--seed",
        "11",
        "--batch",
        "2",
        "--individual-pngs",
        "--threads",
        "1",
        "--out",
        local.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ddpm sample failed: {}", String::from_utf8_lossy(&out.stderr));
    // (The .npz members carry a fixed time, so whole files compare.)
    for file in ["samples.npz", "grid.png", "images/000000.png", "images/000005.png"] {
        let (a, b) = (std::fs::read(job_dir.join(file)).unwrap(), std::fs::read(local.join(file)).unwrap());
        assert!(a == b, "ddpm sample's {file} differs from the job's");
    }

    // A second worker: the same job gives the same bytes, drawn by both.
    let _w2 = start_worker(&addr, "w2");
    rt().block_on(async {
        wait_members(&addr, 2).await;
        let mut c = jobs_client(&addr).await;
        let req = proto::SampleJobRequest { count: 6, sampler: "ddim".into(), steps: 4, seed: 11, batch: 2, ..Default::default() };
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
        let bad =
            c.submit_sample_job(proto::SampleJobRequest { count: 2, sampler: "euler".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("unknown sampler \"euler\""), "{}", bad.message());
        let bad = c.submit_sample_job(proto::SampleJobRequest { count: 2, checkpoint_step: 2, ..Default::default() }).await.unwrap_err();
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
    let (mut coord, addr) =
        start_coordinator(&["--preset", "tiny", "--config", &cfg_path, "--workers", "1", "--steps", "400", "--run", run.to_str().unwrap()]);
    let _trainer = start_worker(&addr, "trainer");
    let _eval: Proc =
        Proc::start("eval", "ddpm-worker", &["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", "eval", "--role", "eval"]);
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
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 400);
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 1, "the eval worker is not a replica: {summary}");
}

fn standin() -> String {
    common::golden_dir("eval").join("standin.pt").display().to_string()
}

fn metrics_record(run: &Path, job: u64) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join(format!("jobs/{job:06}/metrics.json"))).expect("metrics.json");
    serde_json::from_str(&text).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Whether two arrays agree to `rel` of their largest magnitude.
fn close_all(a: &[f64], b: &[f64], rel: f64) -> bool {
    let scale = a.iter().map(|v| v.abs()).fold(0.0, f64::max);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= rel * scale)
}

/// FID, Inception Score and bits/dim computed here, in one pass, with the
/// library: the reference statistics of the first `reference` training
/// images, the job's samples (from its .npz) through the stand-in, and the
/// bound of the first `bpd` test images under the checkpoint's EMA weights;
/// 2 images per forward pass, as the jobs.
fn eval_here(run: &Path, config: &TrainConfig, job: u64, reference: usize, bpd: usize) -> (ddpm::eval::FidStats, f64, (f64, f64), f64) {
    use ddpm::eval::{add_images, dataset_bpd, dataset_stats, ImageEvalSums, InceptionModel};
    let model = InceptionModel::load(Path::new(&standin()), tch::Device::Cpu).unwrap();
    let open = |spec: &str| ddpm::data::open(&spec.parse().unwrap(), &ddpm::data::OpenOptions { resolution: Some(8) }).unwrap();
    let reference = dataset_stats(&*open("synthetic:shapes"), &model, Some(reference), 2, &mut |_, _| {}).unwrap().to_fid_stats().unwrap();
    let samples = read_images(run, job);
    let mut sums = ImageEvalSums::new(&model, samples.count as u64, Some(2)).unwrap();
    add_images(&model, &samples.pixels_nchw, 8, 8, 0, 2, &mut sums).unwrap();
    let fid = sums.features.to_fid_stats().unwrap().fid(&reference).unwrap();
    let is = sums.scores.unwrap().score().unwrap();

    let (unet, diffusion) = checkpoint_ema(run, config, 3);
    let ds = open("synthetic:shapes:test");
    let bound =
        dataset_bpd(&*ds, &unet.unet, &diffusion, 0..bpd, 2, 11, true, tch::Device::Cpu, &mut |_, _| {}).unwrap().mean_total().unwrap();
    (reference, fid, is, bound)
}

#[test]
fn eval_jobs_measure_fid_is_and_bits_per_dim_across_workers() {
    tch::set_num_threads(1);
    let Served { dir: _dir, run, config, mut coord, addr, worker: _w1 } = serve_after_3_steps();
    let inception = standin();

    // Through the CLI, one worker: all three metrics, tasks of 4 samples.
    let out = ddpm_cli(&[
        "jobs",
        "--coord",
        &addr,
        "--json",
        "submit-eval",
        "--metrics",
        "fid,is,bpd",
        "--count",
        "10",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--seed",
        "11",
        "--batch",
        "4",
        "--inception",
        &inception,
        "--reference-images",
        "20",
        "--bpd-data",
        "synthetic:shapes:test",
        "--bpd-images",
        "3",
        "--is-splits",
        "2",
        "--eval-batch",
        "2",
        "--watch",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ddpm jobs submit-eval failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((last["state"].as_str(), last["kind"].as_str()), (Some("done"), Some("eval")), "{stdout}");
    assert_eq!((last["done"].as_u64(), last["total"].as_u64()), (Some(33), Some(33)), "10 samples + 20 reference + 3 bound");
    let job = last["job_id"].as_u64().unwrap();
    let rec = metrics_record(&run, job);
    assert_eq!(rec["metrics"], last["metrics"], "metrics.json and the status disagree");
    assert_eq!(rec["spec"]["metrics"], serde_json::json!(["fid", "is", "bpd"]));

    // The samples are the sample job's images; the numbers are the library's.
    let samples = read_images(&run, job);
    let want = reference_images(&run, &config, 3, 10, 4, 4);
    let worst = want.iter().zip(&samples.pixels_nchw).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "evaluation samples differ from the sampler's: max {worst}");
    let (reference, fid, (is_mean, is_std), bound) = eval_here(&run, &config, job, 20, 3);
    let written = ddpm::eval::read_stats_npz(&run.join(format!("jobs/{job:06}/reference_stats.npz"))).unwrap();
    assert!(close_all(&written.mu, &reference.mu, 1e-9), "reference mu differs");
    assert!(close_all(&written.sigma, &reference.sigma, 1e-9), "reference sigma differs");
    let m = &rec["metrics"];
    assert!(close(m["fid"]["value"].as_f64().unwrap(), fid, 1e-6), "FID {} vs {fid}", m["fid"]);
    assert!(fid > 1.0, "samples of a 3-step model should be far from the data: FID {fid}");
    assert!(close(m["inception_score"]["mean"].as_f64().unwrap(), is_mean, 1e-9), "IS {} vs {is_mean}", m["inception_score"]);
    assert!(close(m["inception_score"]["std"].as_f64().unwrap(), is_std, 1e-6));
    assert!(close(m["bpd"]["bits_per_dim"].as_f64().unwrap(), bound, 1e-6), "bpd {} vs {bound}", m["bpd"]);
    assert_eq!(m["bpd"]["terms_bits_per_dim"].as_array().unwrap().len(), 1000);

    let _w2 = start_worker(&addr, "w2");
    rt().block_on(async {
        wait_members(&addr, 2).await;
        let mut c = jobs_client(&addr).await;
        let sample = proto::SampleJobRequest { count: 10, sampler: "ddim".into(), steps: 4, seed: 11, batch: 4, ..Default::default() };
        // Two workers: the same samples and FID (the reference now comes from
        // the coordinator's cache), split across both.
        let req = proto::EvalJobRequest {
            metrics: vec!["fid".into()],
            sample: Some(sample.clone()),
            inception: inception.clone(),
            reference_images: 20,
            eval_batch: 2,
            ..Default::default()
        };
        let id = c.submit_eval_job(req.clone()).await.unwrap().into_inner().job_id;
        let s = watch(&addr, id).await;
        assert_eq!(s.state, "done", "{s:?}");
        let two = metrics_record(&run, id);
        assert_eq!(read_images(&run, id).pixels_nchw, samples.pixels_nchw, "1 and 2 workers drew different images");
        assert!(close(two["metrics"]["fid"]["value"].as_f64().unwrap(), fid, 1e-9), "{two}");
        assert_eq!(two["images_by_worker"].as_object().unwrap().len(), 2, "{two}");
        assert!(!run.join(format!("jobs/{id:06}/reference_stats.npz")).exists(), "the cached reference was recomputed");

        // A reference the workers compute together equals the single pass.
        let id = c.submit_eval_job(proto::EvalJobRequest { reference_images: 17, ..req.clone() }).await.unwrap().into_inner().job_id;
        assert_eq!(watch(&addr, id).await.state, "done");
        let (reference17, fid17, _, _) = eval_here(&run, &config, id, 17, 1);
        let written = ddpm::eval::read_stats_npz(&run.join(format!("jobs/{id:06}/reference_stats.npz"))).unwrap();
        assert!(close_all(&written.sigma, &reference17.sigma, 1e-9), "2-worker reference differs");
        assert!(close(metrics_record(&run, id)["metrics"]["fid"]["value"].as_f64().unwrap(), fid17, 1e-6));

        // Reference statistics from a file: the job's own, so the FID is the same.
        let stats = run.join(format!("jobs/{job:06}/reference_stats.npz")).display().to_string();
        let id = c
            .submit_eval_job(proto::EvalJobRequest { reference_images: 0, reference_stats: stats, ..req.clone() })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        assert_eq!(watch(&addr, id).await.state, "done");
        assert!(close(metrics_record(&run, id)["metrics"]["fid"]["value"].as_f64().unwrap(), fid, 1e-9));

        // Bad requests say what is wrong.
        let bad = |r: proto::EvalJobRequest| {
            let mut c = c.clone();
            async move { c.submit_eval_job(r).await.unwrap_err() }
        };
        for (r, want) in [
            (proto::EvalJobRequest { metrics: vec!["kid".into()], ..req.clone() }, "unknown metric \"kid\""),
            (proto::EvalJobRequest { inception: String::new(), ..req.clone() }, "need the Inception TorchScript file"),
            (
                proto::EvalJobRequest { reference_stats: "/nonexistent/stats.npz".into(), reference_images: 0, ..req.clone() },
                "reference_stats",
            ),
            (
                proto::EvalJobRequest {
                    bpd_data: "mnist:/x".into(),
                    metrics: vec!["bpd".into()],
                    sample: None,
                    reference_images: 0,
                    ..req.clone()
                },
                "bpd_data",
            ),
            (
                proto::EvalJobRequest { sample: Some(proto::SampleJobRequest { count: 1, ..sample.clone() }), ..req.clone() },
                "at least 2 samples",
            ),
        ] {
            let e = bad(r).await;
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(want), "{want:?} not in {:?}", e.message());
        }

        // A task that fails on the workers fails the job with their reason.
        let id = c
            .submit_eval_job(proto::EvalJobRequest { inception: "/nonexistent/inception.pt".into(), ..req.clone() })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let s = watch(&addr, id).await;
        assert_eq!(s.state, "failed");
        assert!(s.error.contains("/nonexistent/inception.pt"), "{}", s.error);

        // Analysis jobs: progressive rows split across both workers, and an
        // interpolation, equal to the library's on the same weights.
        let (unet, diffusion) = checkpoint_ema(&run, &config, 3);
        let req = proto::AnalysisJobRequest { kind: "progressive".into(), seed: 11, rows: 3, snapshots: 4, batch: 1, ..Default::default() };
        let id = c.submit_analysis_job(req).await.unwrap().into_inner().job_id;
        let s = watch(&addr, id).await;
        assert_eq!((s.state.as_str(), s.kind.as_str(), s.done), ("done", "analysis", 12), "{s:?}");
        let got = read_images(&run, id);
        let want = ddpm::train::analysis::progressive(&unet.unet, &diffusion, 11, 0, 3, 4, tch::Device::Cpu).unwrap();
        let worst = want.iter().zip(&got.pixels_nchw).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(got.count == 12 && worst <= 1, "progressive grid differs from the library's: max {worst}");
        assert_eq!(job_record(&run, id)["images_by_worker"].as_object().unwrap().len(), 2);
        // The last column is the sample job's image: the same trajectory.
        let samples = c.submit_sample_job(proto::SampleJobRequest { count: 3, seed: 11, batch: 1, ..Default::default() });
        let sid = samples.await.unwrap().into_inner().job_id;
        assert_eq!(watch(&addr, sid).await.state, "done");
        let drawn = read_images(&run, sid).pixels_nchw;
        for row in 0..3 {
            let last = &got.pixels_nchw[(row * 4 + 3) * 192..(row * 4 + 4) * 192];
            assert_eq!(last, &drawn[row * 192..(row + 1) * 192], "row {row}: the last snapshot is not the sample");
        }

        let req = proto::AnalysisJobRequest {
            kind: "interpolate".into(),
            seed: 2,
            index_a: 4,
            index_b: 9,
            t: 40,
            lambdas: 3,
            ..Default::default()
        };
        let id = c.submit_analysis_job(req.clone()).await.unwrap().into_inner().job_id;
        assert_eq!(watch(&addr, id).await.state, "done");
        let got = read_images(&run, id);
        let ds = ddpm::data::open(&"synthetic:shapes".parse().unwrap(), &ddpm::data::OpenOptions { resolution: Some(8) }).unwrap();
        let (a, b) = (ddpm::data::decode_sample(&*ds, 4).unwrap(), ddpm::data::decode_sample(&*ds, 9).unwrap());
        let want = ddpm::train::analysis::interpolate(&unet.unet, &diffusion, &a, &b, 40, 3, 2, tch::Device::Cpu).unwrap();
        let worst = want.iter().zip(&got.pixels_nchw).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(got.count == 5 && worst <= 1, "interpolation differs from the library's: max {worst}");
        assert_eq!((&got.pixels_nchw[..192], &got.pixels_nchw[4 * 192..]), (&a[..], &b[..]), "the ends are the two images");

        for (r, want) in [
            (proto::AnalysisJobRequest { kind: "zoom".into(), ..Default::default() }, "unknown analysis \"zoom\""),
            (proto::AnalysisJobRequest { index_a: 50_000, ..req.clone() }, "image index 50000 is outside"),
            (proto::AnalysisJobRequest { t: 1001, ..req.clone() }, "t must be between 1 and the run's 1000"),
            (proto::AnalysisJobRequest { kind: "progressive".into(), snapshots: 1, ..Default::default() }, "snapshots must be between 2"),
        ] {
            let e = c.submit_analysis_job(r).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(want), "{want:?} not in {:?}", e.message());
        }
    });

    let pid = coord.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(coord.wait(Duration::from_secs(60)), 0, "{}", coord.output());
}

#[test]
fn periodic_evaluation_pauses_training_and_logs_fid_with_the_step() {
    tch::set_num_threads(1);
    let dir = tempdir();
    let run = dir.path().join("run");
    let path = dir.path().join("config.toml");
    let eval = format!(
        "\n[eval]\nevery_steps = 2\nsamples = 4\nsteps = 3\nbatch = 2\nseed = 3\ninception = \"{}\"\nmetrics = [\"fid\", \"is\"]\nis_splits = 2\nreference_images = 12\n",
        standin()
    );
    std::fs::write(&path, format!("{CONFIG}\n[checkpoint]\nat_end = true\nevery_steps = 1000000\n{eval}")).unwrap();
    let (mut coord, _addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--config",
        path.to_str().unwrap(),
        "--workers",
        "1",
        "--steps",
        "5",
        "--run",
        run.to_str().unwrap(),
    ]);
    let _w = start_worker(&_addr, "w1");
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "{}", coord.output());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let evals: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("eval").is_some()).collect();
    assert_eq!(evals.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4], "{log}");
    for r in &evals {
        let e = &r["eval"];
        assert_eq!(e["state"], "done", "{r}");
        // Training paused for it: the weights are those of the step itself.
        assert_eq!(e["weights_step"], r["step"], "{r}");
        assert!(e["fid"]["value"].as_f64().unwrap() > 0.0, "{r}");
        assert!(e["inception_score"]["mean"].as_f64().unwrap() >= 1.0, "{r}");
        let grid = e["grid"].as_str().unwrap();
        assert!(
            Path::new(grid.trim_start_matches("file://")).exists()
                || run.join(format!("jobs/{:06}/grid.png", e["job_id"].as_u64().unwrap())).exists(),
            "{grid}"
        );
    }
    // The same seed each time: the samples of step 2 and step 4 differ only by training.
    let ids: Vec<u64> = evals.iter().map(|r| r["eval"]["job_id"].as_u64().unwrap()).collect();
    assert_ne!(read_images(&run, ids[0]).pixels_nchw, read_images(&run, ids[1]).pixels_nchw);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["steps"].as_u64(), summary["replicas_agree"].as_bool()), (Some(5), Some(true)), "{summary}");
}
