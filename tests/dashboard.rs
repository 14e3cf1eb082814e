//! The coordinator's dashboard in a real browser (Debian's headless
//! Chromium) against a real tiny run on loopback: loaded while it trains
//! (the worker held with SIGSTOP, so the page sees a run mid-way) and after
//! it finished, the loss and speed curves have one point per step row of
//! RUN/metrics.jsonl, the end-of-training sample grid loads, and a
//! screenshot of the page is a real, non-blank PNG (also written to
//! $DDPM_DASHBOARD_SCREENSHOT when set: the README's coordinator/src/telemetry/dashboard/screenshot.png).

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

/// A chart's `data-points` and the number of points of its curve.
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
    (declared, points.split_whitespace().count())
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
