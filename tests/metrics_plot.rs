//! `ddpm metrics plot` on real runs: a tiny training run through the real
//! coordinator and workers on loopback, plotted while it trains and after
//! it ends, from its directory and (with the S3 test server that
//! `tests/run.sh` starts) from S3; and the errors a person meets: a run
//! with no metrics yet, no run at all, an unreadable store, a file name
//! that is not .png.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{binary, s3_env, start_coordinator, start_worker, tempdir};
use ddpm::plot::theme;

/// Logs (and so flushes the metrics log) every 2 steps, so a live plot has
/// rows early; small batches keep the CPU run short; no sample grid.
const CONFIG: &str = r#"
[train]
batch_size = 8
log_every = 2

[sample]
at_end = false
"#;

const STEPS: &str = "20";

/// The coordinator's flags for a tiny run on synthetic shapes.
fn train_args(cfg: &Path, steps: &str, workers: &str, run: &str) -> Vec<String> {
    let run_flags = ["--config", cfg.to_str().unwrap(), "--steps", steps, "--workers", workers, "--run", run];
    "--preset tiny --data synthetic:shapes --threads 1".split(' ').chain(run_flags).map(String::from).collect()
}

fn ddpm(args: &[&str]) -> Output {
    Command::new(binary("ddpm")).args(args).output().expect("running ddpm")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `ddpm metrics plot --run RUN --out OUT EXTRA...`; it must succeed.
fn plot(run: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["metrics", "plot", "--run", run, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let res = ddpm(&args);
    assert!(res.status.success(), "ddpm {args:?} failed:\n{}", text(&res));
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// Runs it expecting failure; returns its stderr.
fn plot_fails(run: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec!["metrics", "plot", "--run", run, "--out", out];
    args.extend_from_slice(extra);
    let res = ddpm(&args);
    assert!(!res.status.success(), "ddpm {args:?} succeeded:\n{}", text(&res));
    String::from_utf8_lossy(&res.stderr).into_owned()
}

/// Decodes the PNG at `path` and checks that it is a plot a person can
/// read: the asked size, many colours (text, grid, anti-aliased curves),
/// the loss curve's colour in the upper panel and the throughput's in the
/// lower one only.
fn check_png(path: &Path, (w, h): (u32, u32)) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), (w, h), "{}", path.display());
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() >= 10, "{}: {} colours, a blank picture", path.display(), colours.len());
    let count = |c: [u8; 3], upper: bool| img.enumerate_pixels().filter(|(_, y, p)| (*y < h / 2) == upper && p.0 == c).count();
    let (loss_up, ips_up, ips_down) = (count(theme::LOSS, true), count(theme::THROUGHPUT, true), count(theme::THROUGHPUT, false));
    assert!(loss_up >= 50, "{}: {loss_up} loss-curve pixels in the upper panel", path.display());
    assert!(ips_down >= 50, "{}: {ips_down} throughput-curve pixels in the lower panel", path.display());
    assert_eq!(ips_up, 0, "{}: throughput colour in the loss panel", path.display());
}

/// The number of step rows in a local run's metrics log so far.
fn local_rows(run: &Path) -> usize {
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    log.lines().filter(|l| l.contains("\"loss\"")).count()
}

#[test]
fn a_local_run_is_plotted_while_it_trains_and_after() {
    let dir = tempdir();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap().to_string();
    let args = train_args(&cfg, STEPS, "2", &run_s);
    let (mut coord, addr) = start_coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut workers = [start_worker(&addr, "w0"), start_worker(&addr, "w1")];

    // Live: as soon as the log has rows (whether or not the run has ended
    // by the time the plot reads it, the plot must be whole).
    let deadline = Instant::now() + Duration::from_secs(300);
    while local_rows(&run) == 0 {
        assert!(Instant::now() < deadline, "no metrics rows after 300 s:\n{}", coord.output());
        assert!(coord.child.try_wait().unwrap().is_none(), "the coordinator exited:\n{}", coord.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = dir.path().join("live.png");
    let said = plot(&run_s, &live, &[]);
    assert!(said.contains("wrote") && said.contains("1200x800"), "{said}");
    check_png(&live, (1200, 800));

    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "coordinator failed:\n{}", coord.output());
    for w in &mut workers {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "worker failed:\n{}", w.output());
    }
    assert_eq!(local_rows(&run), 20);

    // Finished, another size, smoothed; run again over the same file.
    let done = dir.path().join("done.PNG");
    for _ in 0..2 {
        let said = plot(&run_s, &done, &["--width", "1000", "--height", "700", "--smooth", "4"]);
        assert!(said.contains("steps 1 to 20 (20 rows"), "{said}");
        check_png(&done, (1000, 700));
    }
    // Only the plot is left beside it (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "{names:?}"); // run.toml, run, live.png, done.PNG
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempdir();
    let out = dir.path().join("x.png");
    let out_s = out.to_str().unwrap();
    // A run directory without a metrics log yet.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = plot_fails(empty.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("has no metrics yet") && err.contains(empty.to_str().unwrap()), "{err}");
    // A log with nothing but a torn line is no metrics either.
    std::fs::write(empty.join("metrics.jsonl"), "{\"step\":1,\"lo").unwrap();
    let err = plot_fails(empty.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("has no metrics yet") && err.contains("skipped 1 unreadable line"), "{err}");
    // No run there at all; nothing is created.
    let missing = dir.path().join("missing");
    let err = plot_fails(missing.to_str().unwrap(), out_s, &[]);
    assert!(err.contains("no run at") && err.contains("does not exist"), "{err}");
    assert!(!missing.exists());
    // A store that cannot be read (nothing listens on port 1): the store's
    // error, after the interactive retries.
    let nowhere: Vec<&str> =
        "--s3-endpoint http://127.0.0.1:1 --s3-allow-http --s3-region r --s3-access-key k --s3-secret-key s".split(' ').collect();
    let err = plot_fails("s3://no-bucket/run", out_s, &nowhere);
    assert!(err.contains("reading the metrics log of s3://no-bucket/run") && err.contains("cannot reach the object store"), "{err}");
    // An unwritable --out: named.
    std::fs::write(empty.join("metrics.jsonl"), "{\"step\":1,\"loss\":0.5}\n").unwrap();
    let err = plot_fails(empty.to_str().unwrap(), "/nonexistent-dir/x.png", &[]);
    assert!(err.contains("writing /nonexistent-dir/x.png"), "{err}");
    // Not a PNG name; out of range sizes and windows.
    let err = plot_fails(empty.to_str().unwrap(), dir.path().join("x.jpg").to_str().unwrap(), &[]);
    assert!(err.contains("x.jpg") && err.contains(".png"), "{err}");
    let err = plot_fails(empty.to_str().unwrap(), out_s, &["--width", "100"]);
    assert!(err.contains("--width") && err.contains("480"), "{err}");
    let err = plot_fails(empty.to_str().unwrap(), out_s, &["--smooth", "0"]);
    assert!(err.contains("--smooth"), "{err}");
    assert!(!out.exists(), "a failed plot wrote its file");
    // ...and one row is enough for a plot.
    plot(empty.to_str().unwrap(), &out, &[]);
    assert!(image::open(&out).is_ok());
}

#[test]
fn a_run_on_s3_is_plotted_from_the_bucket() {
    if std::env::var_os("DDPM_TEST_S3_ENDPOINT").is_none() {
        eprintln!("skipped: DDPM_TEST_S3_ENDPOINT is not set (tests/run.sh starts the S3 test server)");
        return;
    }
    let (url, _) = common::s3_test_store("metrics-plot");
    let (endpoint, region) = (s3_env("DDPM_TEST_S3_ENDPOINT"), s3_env("DDPM_TEST_S3_REGION"));
    let (key, secret) = (s3_env("DDPM_TEST_S3_ACCESS_KEY"), s3_env("DDPM_TEST_S3_SECRET"));
    let s3_flags = |secret: &str| -> Vec<String> {
        ["--s3-endpoint", &endpoint, "--s3-region", &region, "--s3-access-key", &key, "--s3-secret-key", secret, "--s3-allow-http"]
            .map(String::from)
            .to_vec()
    };
    let dir = tempdir();
    let out = dir.path().join("s3.png");
    let flags = s3_flags(&secret);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // Before the run: the prefix holds nothing.
    let err = plot_fails(&url, out.to_str().unwrap(), &flags);
    assert!(err.contains("has no metrics yet") && err.contains(&url), "{err}");

    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut coord_args = train_args(&cfg, "12", "1", &url);
    coord_args.extend(flags.iter().map(|f| f.to_string()));
    let coord_args: Vec<&str> = coord_args.iter().map(String::as_str).collect();
    let (mut coord, addr) = start_coordinator(&coord_args);
    let mut worker = start_worker(&addr, "w0");
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "coordinator failed:\n{}", coord.output());
    assert_eq!(worker.wait(Duration::from_secs(60)), 0, "worker failed:\n{}", worker.output());

    let said = plot(&url, &out, &flags);
    assert!(said.contains("steps 1 to 12 (12 rows"), "{said}");
    check_png(&out, (1200, 800));

    // Credentials the server refuses: the store's error, no plot.
    let wrong = s3_flags("not-the-secret-0000000000000000000000000000000000000000000000000");
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let refused = dir.path().join("refused.png");
    let err = plot_fails(&url, refused.to_str().unwrap(), &wrong);
    assert!(err.contains("reading the metrics log of") && err.contains(&url), "{err}");
    assert!(!refused.exists());
}
