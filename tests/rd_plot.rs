//! `ddpm metrics plot-rd` on a real evaluation job: a tiny model trained a
//! few steps by the real coordinator and worker on loopback, its bound
//! measured by a bpd job (all T = 1000 terms), and the job's metrics.json
//! drawn and decoded: three panels, each with its curve, distortion falling
//! and rate rising along the reverse process. Then the errors a person
//! meets (a job without the bound, a sample job, no job there), and (with
//! the S3 test server that `tests/run.sh` starts) a job read from S3.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{binary, s3_env, start_coordinator, start_worker, tempdir};
use ddpm::plot::rd_curve::RdCurve;
use ddpm::plot::theme;
use image::RgbImage;

/// The 8x8 model of tests/jobs.rs: a bound over 1000 timesteps takes
/// seconds on one CPU thread.
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
batch_size = 8
seed = 5
log_every = 5

[sample]
at_end = false
"#;

fn ddpm(args: &[&str]) -> Output {
    Command::new(binary("ddpm")).args(args).output().expect("running ddpm")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `ddpm metrics plot-rd --job JOB --out OUT EXTRA...`, which must succeed; its stdout.
fn plot_rd(job: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["metrics", "plot-rd", "--job", job, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let res = ddpm(&args);
    assert!(res.status.success(), "ddpm {args:?} failed:\n{}", text(&res));
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// The same, expected to fail; its stderr.
fn plot_rd_fails(job: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec!["metrics", "plot-rd", "--job", job, "--out", out];
    args.extend_from_slice(extra);
    let res = ddpm(&args);
    assert!(!res.status.success(), "ddpm {args:?} succeeded:\n{}", text(&res));
    String::from_utf8_lossy(&res.stderr).into_owned()
}

/// Trains 20 steps, measures the bound on 4 test images with a bpd job;
/// returns the run directory's job directory (the tempdir is kept alive by
/// the caller).
fn evaluated_job(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = dir.join("run");
    let (mut coord, addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--config",
        cfg.to_str().unwrap(),
        "--workers",
        "1",
        "--steps",
        "20",
        "--serve",
        "--threads",
        "1",
        "--run",
        run.to_str().unwrap(),
    ]);
    let _worker = start_worker(&addr, "w1");
    coord.wait_for_line("serving jobs", Duration::from_secs(300));
    let out = ddpm(&[
        "jobs",
        "--coord",
        &addr,
        "--json",
        "submit-eval",
        "--metrics",
        "bpd",
        "--bpd-data",
        "synthetic:shapes:test",
        "--bpd-images",
        "4",
        "--eval-batch",
        "4",
        "--watch",
    ]);
    assert!(out.status.success(), "submit-eval failed:\n{}\ncoordinator:\n{}", text(&out), coord.output());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "done", "{stdout}");
    let job = last["job_id"].as_u64().unwrap();
    run.join(format!("jobs/{job:06}"))
}

/// The pixels of colour `c` in columns `x0..x1` of the image: (x, y).
fn pixels_of(img: &RgbImage, (x0, x1): (u32, u32), c: [u8; 3]) -> Vec<(u32, u32)> {
    img.enumerate_pixels().filter(|(x, _, p)| (x0..x1).contains(x) && p.0 == c).map(|(x, y, _)| (x, y)).collect()
}

/// The mean row of the curve's pixels in the first and the last tenth of
/// its width: rows grow downwards, so a rising curve's second is smaller.
fn ends(curve: &[(u32, u32)]) -> (f64, f64) {
    let (lo, hi) = (curve.iter().map(|p| p.0).min().unwrap(), curve.iter().map(|p| p.0).max().unwrap());
    let tenth = ((hi - lo) / 10).max(1);
    let mean = |f: &dyn Fn(u32) -> bool| {
        let ys: Vec<f64> = curve.iter().filter(|p| f(p.0)).map(|p| p.1 as f64).collect();
        ys.iter().sum::<f64>() / ys.len() as f64
    };
    (mean(&|x| x < lo + tenth), mean(&|x| x > hi - tenth))
}

/// Decodes the plot and checks it: the asked size; in each third of its
/// width many colours, a large white plot area and that panel's curve
/// only; distortion falling and rate rising from left to right.
fn check_png(path: &Path, (w, h): (u32, u32)) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), (w, h), "{}", path.display());
    let thirds = [(0, w / 3), (w / 3, 2 * w / 3), (2 * w / 3, w)];
    let colours = [theme::DISTORTION, theme::RATE, theme::RATE_DISTORTION];
    for (i, (cols, colour)) in thirds.iter().zip(colours).enumerate() {
        let inside: HashSet<[u8; 3]> = img.enumerate_pixels().filter(|(x, _, _)| (cols.0..cols.1).contains(x)).map(|p| p.2 .0).collect();
        assert!(inside.len() >= 10, "panel {i}: {} colours, a blank picture", inside.len());
        let white = pixels_of(&img, *cols, theme::PLOT_BACKGROUND).len() as u32;
        assert!(white > (cols.1 - cols.0) * h / 4, "panel {i}: {white} plot-area pixels");
        let curve = pixels_of(&img, *cols, colour);
        assert!(curve.len() >= 200, "panel {i}: {} curve pixels", curve.len());
        for (j, other) in thirds.iter().enumerate() {
            if j != i {
                assert!(pixels_of(&img, *other, colour).is_empty(), "panel {i}'s colour in panel {j}");
            }
        }
    }
    let (first, last) = ends(&pixels_of(&img, thirds[0], theme::DISTORTION));
    assert!(first + 20.0 < last, "the distortion does not fall: rows {first} then {last}");
    let (first, last) = ends(&pixels_of(&img, thirds[1], theme::RATE));
    assert!(first > last + 20.0, "the rate does not rise: rows {first} then {last}");
}

#[test]
fn an_evaluation_jobs_bound_is_plotted_as_rate_and_distortion() {
    let dir = tempdir();
    let job = evaluated_job(dir.path());
    let metrics = job.join("metrics.json");

    // The numbers first: T values each, the rate rising to the bound less
    // L_0, x0_hat worst from pure noise.
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    let curve = RdCurve::from_json(&record).unwrap();
    assert_eq!((curve.timesteps(), curve.images), (1000, 4));
    let (rate, distortion) = (curve.rate(), curve.distortion());
    // KL terms are >= 0, up to float32 rounding.
    assert!(rate.windows(2).all(|w| w[1] >= w[0] - 1e-5), "the rate falls somewhere: {rate:?}");
    // The job adds the terms in float32 per image, the curve in float64.
    let whole = rate[999] + curve.decoder_nll();
    assert!((whole - curve.bits_per_dim).abs() < 1e-4 * curve.bits_per_dim, "{whole} vs {}", curve.bits_per_dim);
    assert!(distortion[0] > 10.0 * distortion[999], "{} then {}", distortion[0], distortion[999]);

    // From the job's directory, then its metrics.json at another size.
    let out = dir.path().join("rd.png");
    let said = plot_rd(job.to_str().unwrap(), &out, &[]);
    assert!(said.contains("wrote") && said.contains("1500x520") && said.contains("T = 1000"), "{said}");
    check_png(&out, (1500, 520));
    let big = dir.path().join("rd-big.PNG");
    plot_rd(metrics.to_str().unwrap(), &big, &["--width", "2000", "--height", "800"]);
    check_png(&big, (2000, 800));
    // Written through a temporary file: only the plots are left beside it.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["config.toml", "rd-big.PNG", "rd.png", "run"]);
}

#[test]
fn files_without_the_bound_are_refused_with_the_job_that_writes_it() {
    let dir = tempdir();
    let out = dir.path().join("x.png");
    let out_s = out.to_str().unwrap();
    // An evaluation of FID only: it names what it measured and the job to run.
    let fid = dir.path().join("fid");
    std::fs::create_dir(&fid).unwrap();
    let record = r#"{"job_id": 4, "kind": "eval", "spec": {"metrics": ["fid"]}, "metrics": {"fid": {"value": 120.5}}}"#;
    std::fs::write(fid.join("metrics.json"), record).unwrap();
    let err = plot_rd_fails(fid.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("no bound terms") && err.contains("an evaluation job of fid only"), "{err}");
    assert!(err.contains("--metrics bpd") && err.contains("terms_bits_per_dim"), "{err}");
    assert!(err.contains("fid/metrics.json"), "the file is not named: {err}");
    // A bound from before the per-timestep terms: the field is named.
    let old = r#"{"kind": "eval", "metrics": {"bpd": {"bits_per_dim": 5.1, "prior_bits_per_dim": 0.0}}}"#;
    std::fs::write(fid.join("old.json"), old).unwrap();
    let err = plot_rd_fails(fid.join("old.json").to_str().unwrap(), out_s, &[]);
    assert!(err.contains("metrics.bpd.terms_bits_per_dim is missing"), "{err}");
    // A sample job's directory: job.json, no metrics.json.
    let sample = dir.path().join("sample");
    std::fs::create_dir(&sample).unwrap();
    std::fs::write(sample.join("job.json"), r#"{"kind": "sample"}"#).unwrap();
    let err = plot_rd_fails(sample.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("job.json and no metrics.json") && err.contains("--metrics bpd"), "{err}");
    // Nothing there; nothing is created.
    let missing = dir.path().join("missing");
    let err = plot_rd_fails(missing.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("no job at") && err.contains("does not exist"), "{err}");
    assert!(!missing.exists());
    let err = plot_rd_fails(dir.path().to_str().unwrap(), out_s, &[]);
    assert!(err.contains("metrics.json") && err.contains("RUN/jobs/NNNNNN"), "{err}");
    // Not JSON; not a PNG name.
    std::fs::write(fid.join("metrics.json"), "{\"job_id\": 4, \"ki").unwrap();
    let err = plot_rd_fails(fid.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("is not JSON"), "{err}");
    let err = plot_rd_fails(fid.to_str().unwrap(), dir.path().join("x.jpg").to_str().unwrap(), &[]);
    assert!(err.contains("x.jpg") && err.contains(".png"), "{err}");
    assert!(!out.exists(), "a failed plot wrote its file");
}

/// A small bound with the shape of a real one, T = 50.
fn synthetic_record() -> String {
    let terms: Vec<f64> = (0..50).map(|k| if k == 0 { 3.0 } else { 0.4 / k as f64 }).collect();
    let rmse: Vec<f64> = (0..50).map(|k| 0.5 + 70.0 * k as f64 / 49.0).collect();
    let bpd = serde_json::json!({
        "bits_per_dim": 1e-4 + terms.iter().sum::<f64>(), "images": 2, "data": "synthetic:shapes:test",
        "prior_bits_per_dim": 1e-4, "terms_bits_per_dim": terms, "x0_rmse_0_255": rmse,
    });
    serde_json::json!({"job_id": 9, "kind": "eval", "weights_step": 12, "metrics": {"bpd": bpd}}).to_string()
}

#[test]
fn a_job_on_s3_is_plotted_from_the_bucket() {
    if std::env::var_os("DDPM_TEST_S3_ENDPOINT").is_none() {
        eprintln!("skipped: DDPM_TEST_S3_ENDPOINT is not set (tests/run.sh starts the S3 test server)");
        return;
    }
    let (url, opts) = common::s3_test_store("rd-plot");
    let store = ddpm::store::RunStore::open(&url, &opts).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.put("jobs/000009/metrics.json", synthetic_record().into_bytes().into())).unwrap();
    let flags = [
        "--s3-endpoint".to_string(),
        s3_env("DDPM_TEST_S3_ENDPOINT"),
        "--s3-region".into(),
        s3_env("DDPM_TEST_S3_REGION"),
        "--s3-access-key".into(),
        s3_env("DDPM_TEST_S3_ACCESS_KEY"),
        "--s3-secret-key".into(),
        s3_env("DDPM_TEST_S3_SECRET"),
        "--s3-allow-http".into(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dir = tempdir();
    for (i, job) in [format!("{url}/jobs/000009"), format!("{url}/jobs/000009/metrics.json")].iter().enumerate() {
        let out = dir.path().join(format!("s3-{i}.png"));
        let said = plot_rd(job, &out, &flags);
        assert!(said.contains("T = 50"), "{said}");
        check_png(&out, (1500, 520));
    }
    let err = plot_rd_fails(&format!("{url}/jobs/000010"), dir.path().join("none.png").to_str().unwrap(), &flags);
    assert!(err.contains("jobs/000010/metrics.json") && err.contains("RUN/jobs/NNNNNN"), "{err}");
}
