//! The coordinator's dashboard in a real browser (Debian's headless
//! Chromium) against a real tiny run on loopback: loaded while it trains
//! (the worker held with SIGSTOP, so the page sees a run mid-way) and after
//! it finished, the loss and speed curves have one point per step row of
//! RUN/metrics.jsonl, the end-of-training sample grid loads, and a
//! screenshot of the page is a real, non-blank PNG (also written to
//! $DDPM_DASHBOARD_SCREENSHOT when set: docs/user-guide.md shows
//! coordinator/src/telemetry/dashboard/screenshot.png).
//!
//! And a run at the paper's length: a coordinator resumed at step 800,000
//! (a real tiny checkpoint, renumbered) over a synthetic 800,000-step
//! metrics log. Its history is loaded, the page draws both curves from a
//! few thousand points with the one-step spike in them, and the
//! coordinator's resident memory is measured against the same coordinator
//! with an empty log.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{start_coordinator, start_worker, tempdir, Proc};

const STEPS: u64 = 30;

const CONFIG: &str = r#"
[model]
image_size = 16
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [8]
dropout = 0.0
num_groups = 8

[train]
batch_size = 8
seed = 7
log_every = 1

[dist]
# The worker is held with SIGSTOP while the page loads mid-run: no
# timeout may drop it meanwhile.
heartbeat_timeout_s = 600.0
step_timeout_s = 600.0
straggler_min_s = 600.0

[checkpoint]
every_steps = 10
at_end = true

[sample]
at_end = true
count = 16
steps = 10
"#;

/// Debian's Chromium ($DDPM_CHROMIUM overrides the path).
fn chromium() -> PathBuf {
    let path = std::env::var_os("DDPM_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "{} is missing: the dashboard test needs a real browser; install Debian's chromium \
         (`apt-get install -y chromium`) or point DDPM_CHROMIUM at a Chromium binary",
        path.display()
    );
    path
}

/// Headless Chromium on `url` with a fresh profile under `dir`, given
/// `virtual_ms` of page time (timers run, network loads are waited for),
/// then `extra` (what to output); killed if it hangs.
fn chromium_run(dir: &Path, url: &str, virtual_ms: u64, extra: &[String], stdout: &Path) {
    let profile = tempfile::tempdir_in(dir).expect("a profile directory");
    let out = std::fs::File::create(stdout).expect("chromium's output file");
    let err = std::fs::File::create(stdout.with_extension("stderr")).expect("chromium's error file");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium().display()));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            let stderr = std::fs::read_to_string(stdout.with_extension("stderr")).unwrap_or_default();
            assert!(status.success(), "chromium exited with {status}:\n{stderr}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url} within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page's DOM after `virtual_ms` of page time.
fn dump_dom(dir: &Path, url: &str, virtual_ms: u64) -> String {
    let path = dir.join("dom.html");
    chromium_run(dir, url, virtual_ms, &["--dump-dom".into()], &path);
    std::fs::read_to_string(&path).expect("the dumped DOM")
}

/// The attributes of the first `<tag ...>` in `html` that has every
/// attribute of `want` with that value.
fn tag_attrs(html: &str, tag: &str, want: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    let open = format!("<{tag}");
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>')?;
        let attrs = parse_attrs(&after[..end]);
        if want.iter().all(|(k, v)| attrs.get(*k).map(String::as_str) == Some(*v)) {
            return Some(attrs);
        }
        rest = &after[end..];
    }
    None
}

/// `name="value"` pairs of a start tag's inside (Chromium's serialization:
/// double quotes, `&quot;`/`&amp;` escaped).
fn parse_attrs(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim_end_matches('/');
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return out;
        }
        let name_end = rest.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(rest.len());
        let name = rest[..name_end].to_string();
        rest = &rest[name_end..];
        if let Some(r) = rest.strip_prefix("=\"") {
            let end = r.find('"').unwrap_or(r.len());
            let value = r[..end].replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
            out.insert(name, value);
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            out.insert(name, String::new());
        }
    }
}

/// The section of `html` inside the element with `id` (up to its `</tag>`).
fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
    let start = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page:\n{html}"));
    let end = html[start..].find(&format!("</{tag}>")).map(|e| start + e).unwrap_or(html.len());
    &html[start..end]
}

/// A chart's `data-points` (the step rows it stands for) and the number
/// of points of its curve (which its `data-drawn` must say).
fn chart(html: &str, id: &str) -> (usize, usize) {
    let svg = tag_attrs(html, "svg", &[("id", id)]).unwrap_or_else(|| panic!("no <svg id={id:?}> in the page:\n{html}"));
    let declared: usize =
        svg.get("data-points").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("#{id} has no numeric data-points: {svg:?}"));
    let body = element(html, "svg", id);
    let curve = tag_attrs(body, "polyline", &[("class", "curve")]).unwrap_or_else(|| panic!("#{id} has no polyline.curve:\n{body}"));
    let points = curve.get("points").map(String::as_str).unwrap_or("");
    for p in points.split_whitespace() {
        let xy: Vec<f64> = p.split(',').filter_map(|v| v.parse().ok()).collect();
        assert!(xy.len() == 2 && xy.iter().all(|v| v.is_finite()), "#{id}: bad point {p:?}");
    }
    let drawn = points.split_whitespace().count();
    assert_eq!(
        svg.get("data-drawn").and_then(|v| v.parse().ok()),
        Some(drawn),
        "#{id}: data-drawn is not its curve's point count: {svg:?}"
    );
    (declared, drawn)
}

/// The number of step rows in the run's metrics log (evaluation rows aside).
fn logged_steps(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("step").is_some() && v.get("eval").is_none())
        .count()
}

/// A GET of `path` on the port at `base`: (status code, headers lower-cased, body).
fn http_get(base: &str, path: &str) -> (u16, String, Vec<u8>) {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    common::http_get_with_head(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn status(base: &str) -> serde_json::Value {
    let (code, _, body) = http_get(base, "/api/status");
    assert_eq!(code, 200, "/api/status: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

fn signal(p: &Proc, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test started and still holds.
    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}): {}", p.child.id(), std::io::Error::last_os_error());
}

/// Polls every `every` until `f` is true (the timeout guards against
/// hanging; it is no speed check).
fn wait_until(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(every);
    }
}

/// Loads the page until `ok` holds for its DOM (up to 4 loads: a first
/// poll can race the run); returns the last DOM.
fn load_until(dir: &Path, url: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut dom = String::new();
    for attempt in 1..=4 {
        dom = dump_dom(dir, url, 6000 * attempt);
        if ok(&dom) {
            break;
        }
        eprintln!("dashboard load {attempt}: not there yet, loading again");
    }
    dom
}

#[test]
fn the_dashboard_shows_a_real_run_in_a_real_browser() {
    chromium(); // fail at once, with the fix, when there is no browser
    tch::set_num_threads(1);
    let dir = tempdir();
    let run = dir.path().join("run");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let steps = STEPS.to_string();
    #[rustfmt::skip]
    let (mut coord, addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        "synthetic:shapes",
        "--workers",
        "1",
        "--steps",
        &steps,
        "--serve",
        "--metrics-listen",
        "127.0.0.1:0",
        "--run",
        run.to_str().unwrap(),
    ]);
    let line = coord.wait_for_line("metrics on http://", Duration::from_secs(60));
    let base = line[line.find("http://").unwrap()..].trim().trim_end_matches('/').to_string();
    let page = format!("{base}/");
    eprintln!("coordinator at {addr}, dashboard at {page}");

    // The files, with the types a browser insists on.
    for (path, ctype) in [("/", "text/html"), ("/dashboard.js", "javascript"), ("/dashboard.css", "text/css")] {
        let (code, head, body) = http_get(&base, path);
        assert_eq!(code, 200, "GET {path}");
        assert!(head.contains(&format!("content-type: {ctype}")) || head.contains(ctype), "GET {path}: {head}");
        assert!(!body.is_empty(), "GET {path}: empty");
    }

    // The empty page (no worker yet) renders, with nothing on the curves.
    let dom = dump_dom(dir.path(), &page, 3000);
    assert_eq!(chart(&dom, "loss-chart"), (0, 0), "a run without steps");
    assert!(tag_attrs(&dom, "body", &[]).is_some_and(|b| b.get("data-phase").is_some_and(|p| !p.is_empty())), "no data-phase after a poll");

    // Mid-run: the only worker held (SIGSTOP, in a step or between two),
    // so the run stands still while the page loads.
    let worker = start_worker(&addr, "dash-w1");
    // Watched closely: on a fast machine the 30 steps take well under a second.
    wait_until("two logged steps", Duration::from_secs(300), Duration::from_millis(5), || logged_steps(&run) >= 2);
    signal(&worker, libc::SIGSTOP);
    // The step in flight, if any, lands (or waits for the worker).
    let mut last = (usize::MAX, u64::MAX);
    wait_until("the run to stand still", Duration::from_secs(60), Duration::from_millis(200), || {
        let now = (logged_steps(&run), status(&base)["step"].as_u64().unwrap_or(0));
        let still = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(500));
        still
    });
    let dom = load_until(dir.path(), &page, |d| chart(d, "loss-chart").0 > 0);
    let logged = logged_steps(&run);
    signal(&worker, libc::SIGCONT);
    let body = tag_attrs(&dom, "body", &[]).expect("a body");
    let (declared, points) = chart(&dom, "loss-chart");
    eprintln!(
        "mid-run: page at step {:?}, phase {:?}, {points} loss points, {logged} rows logged",
        body.get("data-step"),
        body.get("data-phase")
    );
    assert_eq!(body.get("data-phase").map(String::as_str), Some("training"), "{body:?}");
    assert_eq!(declared, points, "loss-chart's data-points and its curve differ");
    assert!(points >= 1 && points <= logged, "mid-run: {points} loss points, {logged} steps logged");
    let (sd, sp) = chart(&dom, "speed-chart");
    assert!(sd == sp && sp == points, "speed-chart: {sd} declared, {sp} drawn, loss has {points}");
    assert!((logged as u64) < STEPS, "the run was not mid-way when the page was loaded");

    // After training: the whole run and the sample grid.
    wait_until("phase serving", Duration::from_secs(600), Duration::from_millis(200), || {
        assert!(coord.child.try_wait().unwrap().is_none(), "the coordinator exited:\n{}", coord.output());
        status(&base)["phase"] == "serving"
    });
    let rows = logged_steps(&run);
    assert_eq!(rows as u64, STEPS, "metrics.jsonl step rows");
    let grid_ready = |d: &str| {
        let img = tag_attrs(d, "img", &[("id", "latest-grid")]).unwrap_or_default();
        chart(d, "loss-chart").0 == rows
            && img.get("data-loaded").map(String::as_str) == Some("true")
            && element(d, "table", "checkpoints").contains(&format!(">{STEPS}<"))
    };
    let dom = load_until(dir.path(), &page, grid_ready);
    let body = tag_attrs(&dom, "body", &[]).expect("a body");
    assert_eq!(body.get("data-phase").map(String::as_str), Some("serving"), "{body:?}");
    assert_eq!(body.get("data-step").map(String::as_str), Some(steps.as_str()), "{body:?}");
    let (declared, points) = chart(&dom, "loss-chart");
    assert_eq!((declared, points), (rows, rows), "loss-chart: data-points and curve points against {rows} step rows in metrics.jsonl");
    assert_eq!(chart(&dom, "speed-chart"), (rows, rows), "speed-chart against {rows} step rows");
    let img = tag_attrs(&dom, "img", &[("id", "latest-grid")]).expect("an <img id=latest-grid>");
    assert_eq!(img.get("data-loaded").map(String::as_str), Some("true"), "the sample grid did not load: {img:?}");
    let width: u32 = img.get("data-natural-width").and_then(|w| w.parse().ok()).unwrap_or(0);
    assert!(width > 0, "the sample grid has no width: {img:?}");
    assert!(element(&dom, "table", "workers").contains("dash-w1"), "the worker is not in the workers table");
    let ckpts = element(&dom, "table", "checkpoints");
    assert!(ckpts.contains(&format!(">{STEPS}<")), "the last checkpoint (step {STEPS}) is not listed:\n{ckpts}");

    // A screenshot: a real PNG of the page, not a blank one.
    let shot = dir.path().join("dashboard.png");
    chromium_run(
        dir.path(),
        &page,
        6000,
        &[format!("--screenshot={}", shot.display()), "--window-size=1280,1600".into()],
        &dir.path().join("shot.out"),
    );
    let png = image::open(&shot).unwrap_or_else(|e| panic!("the screenshot {} is no PNG: {e}", shot.display())).to_rgb8();
    assert_eq!(png.dimensions(), (1280, 1600));
    let mut colours = std::collections::HashSet::new();
    let background = *png.get_pixel(0, png.height() - 1);
    let mut differing = 0usize;
    for p in png.pixels() {
        colours.insert(p.0);
        differing += usize::from(*p != background);
    }
    eprintln!("screenshot: {} colours, {:.1}% off the background", colours.len(), 100.0 * differing as f64 / (1280.0 * 1600.0));
    assert!(colours.len() > 50, "the screenshot looks blank: {} colours", colours.len());
    assert!(differing * 20 > png.len() / 3, "the screenshot looks blank: {differing} pixels off the background");
    if let Some(to) = std::env::var_os("DDPM_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, &to).unwrap_or_else(|e| panic!("cannot copy the screenshot to {}: {e}", to.to_string_lossy()));
        eprintln!("screenshot written to {}", to.to_string_lossy());
    }
    drop(worker);
}

// ---------------------------------------------------------------------------
// A run at the paper's length.

/// Steps of the synthetic history: the paper's CIFAR-10 run.
const LONG_STEPS: u64 = 800_000;
/// The step whose loss spikes (a value 50 times the run's).
const SPIKE_STEP: u64 = 432_109;

const SHORT_CONFIG: &str = r#"
[model]
# The tiny U-Net at 16x16: a step takes a moment on one core.
image_size = 16

[train]
batch_size = 8
seed = 7

[checkpoint]
every_steps = 2
at_end = true

[sample]
at_end = false
"#;

/// The metrics log of an 800,000-step run, in the format the coordinator
/// writes (every field of its rows): a decaying, noisy loss with one spike,
/// and images/s with a slow stretch.
fn write_long_log(path: &Path) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut noise = 0x9e37_79b9_7f4a_7c15u64;
    for step in 1..=LONG_STEPS {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        let jitter = (noise >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let loss = if step == SPIKE_STEP { 1.6 } else { 0.03 + 0.3 / (1.0 + step as f64 / 2000.0) + 0.004 * jitter };
        let ips = if (500_000..510_000).contains(&step) { 410.0 } else { 880.0 + 40.0 * jitter };
        let last_checkpoint = step - step % 5000;
        writeln!(
            f,
            r#"{{"step":{step},"loss":{loss:.6},"grad_norm":{:.4},"applied":true,"lr":0.0002,"workers":8,"step_s":{:.4},"compute_s":{:.4},"allreduce_s":0.0121,"images_per_s":{ips:.2},"last_checkpoint":{last_checkpoint},"unsaved_steps":{}}}"#,
            0.5 + jitter,
            128.0 / ips,
            100.0 / ips,
            step - last_checkpoint
        )
        .unwrap();
    }
    f.flush().unwrap();
}

/// A run directory resumed at step 800,000: the checkpoint of a real tiny
/// run (step 2 of `short_run`), renumbered; with `log` as its metrics log.
fn long_run(short_run: &Path, dir: &Path, log: Option<&Path>) {
    std::fs::create_dir_all(dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let from = ddpm::store::RunStore::open(short_run.to_str().unwrap(), &Default::default()).unwrap();
        let mut data = ddpm::checkpoint::read(&from, 2).await.expect("the short run's checkpoint of step 2");
        data.step = LONG_STEPS;
        data.adam_step = LONG_STEPS;
        data.order.step = LONG_STEPS;
        let to = ddpm::store::RunStore::open(dir.to_str().unwrap(), &Default::default()).unwrap();
        ddpm::checkpoint::write(&to, &data).await.expect("write the renumbered checkpoint");
    });
    if let Some(log) = log {
        std::fs::hard_link(log, dir.join("metrics.jsonl")).or_else(|_| std::fs::copy(log, dir.join("metrics.jsonl")).map(|_| ())).unwrap();
    }
}

/// The process's resident memory, in MiB.
fn rss_mib(p: &Proc) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap();
    kb / 1024.0
}

/// A coordinator resumed on `run` (waiting for its worker), its dashboard
/// URL, and how long its history took to hold `rows` step rows.
fn resumed_coordinator(run: &Path, cfg: &Path, rows: u64) -> (Proc, String, Duration) {
    let steps = (LONG_STEPS + 10).to_string();
    #[rustfmt::skip]
    let (mut coord, _) = start_coordinator(&[
        "--preset", "tiny", "--config", cfg.to_str().unwrap(), "--data", "synthetic:shapes", "--workers", "1",
        "--steps", &steps, "--threads", "1", "--metrics-listen", "127.0.0.1:0", "--run", run.to_str().unwrap(),
    ]);
    let line = coord.wait_for_line("metrics on http://", Duration::from_secs(60));
    let base = line[line.find("http://").unwrap()..].trim().trim_end_matches('/').to_string();
    let started = Instant::now();
    wait_until("the history loaded", Duration::from_secs(600), Duration::from_millis(100), || {
        assert!(coord.child.try_wait().unwrap().is_none(), "the coordinator exited:\n{}", coord.output());
        let (code, _, body) = http_get(&base, "/api/curves?columns=16");
        code == 200 && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|c| c["rows"] == rows)
    });
    let loaded = started.elapsed();
    // Past its start-up (the metrics log opened, rows after the checkpoint
    // superseded): what it holds from now on.
    coord.wait_for_line("workers to join", Duration::from_secs(600));
    assert_eq!(status(&base)["resumed_from"], LONG_STEPS);
    (coord, base, loaded)
}

/// Loads the page once in Chromium: its DOM and the wall time of the whole
/// browser run (start, load, first poll, drawing, DOM dump).
fn timed_load(dir: &Path, page: &str) -> (String, Duration) {
    let t = Instant::now();
    let dom = dump_dom(dir, page, 3000);
    (dom, t.elapsed())
}

#[test]
fn a_run_at_the_papers_length_loads_and_draws_with_its_history_kept_small() {
    chromium();
    let dir = tempdir();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, SHORT_CONFIG).unwrap();

    // A real tiny run of 2 steps: its checkpoint is the long run's.
    let short = dir.path().join("short");
    #[rustfmt::skip]
    let (mut coord, addr) = start_coordinator(&[
        "--preset", "tiny", "--config", cfg.to_str().unwrap(), "--data", "synthetic:shapes", "--workers", "1",
        "--steps", "2", "--run", short.to_str().unwrap(),
    ]);
    let worker = start_worker(&addr, "short-w1");
    assert_eq!(coord.wait(Duration::from_secs(600)), 0, "{}", coord.output());
    drop(worker);

    let log = dir.path().join("metrics-800k.jsonl");
    let t = Instant::now();
    write_long_log(&log);
    let log_mib = std::fs::metadata(&log).unwrap().len() as f64 / (1 << 20) as f64;
    eprintln!("synthetic log: {LONG_STEPS} rows, {log_mib:.0} MiB, written in {:.1} s", t.elapsed().as_secs_f64());

    // The same coordinator, resumed at step 800,000, with an empty log ...
    let base_run = dir.path().join("empty");
    long_run(&short, &base_run, None);
    let (base_coord, base_url, _) = resumed_coordinator(&base_run, &cfg, 0);
    std::thread::sleep(Duration::from_secs(2));
    let base_rss = rss_mib(&base_coord);
    let (_, base_wall) = timed_load(dir.path(), &format!("{base_url}/"));
    drop(base_coord);

    // ... and with the 800,000 rows.
    let long = dir.path().join("long");
    long_run(&short, &long, Some(&log));
    let (long_coord, url, load_time) = resumed_coordinator(&long, &cfg, LONG_STEPS);
    std::thread::sleep(Duration::from_secs(2));
    let long_rss = rss_mib(&long_coord);
    eprintln!(
        "coordinator resident memory: {base_rss:.1} MiB with an empty history, {long_rss:.1} MiB with {LONG_STEPS} steps \
         (+{:.1} MiB; the history's columns: {:.1} MiB); history loaded {:.1} s after the port was up",
        long_rss - base_rss,
        (LONG_STEPS * 16) as f64 / (1 << 20) as f64,
        load_time.as_secs_f64()
    );
    // Bounded: 16 bytes a step, plus what the allocator keeps from reading
    // the log once. Every row as it was (~100 bytes a step) would be 76 MiB.
    assert!(long_rss - base_rss < 40.0, "the history costs {:.1} MiB", long_rss - base_rss);

    // The server's answer: at most 4 points a column, the spike kept.
    let t = Instant::now();
    let (code, _, body) = http_get(&url, "/api/curves?columns=824");
    let api_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(code, 200);
    let curves: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let points = curves["loss"]["points"].as_array().unwrap();
    assert!(points.len() <= 4 * 824 && points.len() >= 824, "{} loss points", points.len());
    assert!(
        points.iter().any(|p| p[0] == SPIKE_STEP && p[1].as_f64().is_some_and(|v| (v - 1.6).abs() < 1e-6)),
        "the spike at step {SPIKE_STEP} is not drawn"
    );
    eprintln!("GET /api/curves?columns=824 over {LONG_STEPS} steps: {api_ms:.0} ms, {} KiB", body.len() / 1024);

    // The page: loaded, both curves drawn from the downsampled points.
    let (dom, wall) = timed_load(dir.path(), &format!("{url}/"));
    let (rows, drawn) = chart(&dom, "loss-chart");
    assert_eq!(rows, LONG_STEPS as usize, "loss-chart's data-points");
    assert!((100..=4 * 4096).contains(&drawn), "loss-chart draws {drawn} points");
    let (rows, drawn_speed) = chart(&dom, "speed-chart");
    assert_eq!(rows, LONG_STEPS as usize, "speed-chart's data-points");
    assert!(drawn_speed >= 100, "speed-chart draws {drawn_speed} points");
    // The spike is the loss curve's highest point: near the plot's top.
    let svg = element(&dom, "svg", "loss-chart");
    let curve = tag_attrs(svg, "polyline", &[("class", "curve")]).unwrap();
    let top = curve["points"].split_whitespace().filter_map(|p| p.split(',').nth(1)?.parse::<f64>().ok()).fold(f64::MAX, f64::min);
    assert!(top < 12.0 + 0.1 * 238.0, "the loss curve's highest point is at y={top}: the spike is not drawn");
    eprintln!(
        "Chromium, load to DOM dump (wall, browser start included): {:.2} s for {LONG_STEPS} steps ({drawn} + {drawn_speed} points drawn), \
         {:.2} s for an empty history",
        wall.as_secs_f64(),
        base_wall.as_secs_f64()
    );
    // Generous: a browser start on a busy machine; the page's own part is
    // the difference to the empty history.
    assert!(wall < Duration::from_secs(60), "the page took {wall:?}");
    drop(long_coord);
}
