//! Helpers shared by the integration tests: golden fixtures, and the real
//! `ddpm-coord` / `ddpm-worker` binaries started on loopback.
#![allow(dead_code)]

pub mod cluster;
pub mod diffusers_check;
pub mod k8s;
pub mod pss;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where `tests/run.sh` put the golden fixtures made by `tests/golden/gen_*.py`.
pub fn golden_dir(topic: &str) -> PathBuf {
    let base = std::env::var_os("DDPM_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/golden"));
    let dir = base.join(topic);
    assert!(
        dir.is_dir(),
        "golden fixtures {} are missing: run tests/run.sh, or `python tests/golden/gen_{topic}.py --out {}`",
        dir.display(),
        dir.display()
    );
    dir
}

/// A binary of the workspace, next to the test executable's directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which tests/run.sh does)",
        path.display()
    );
    path
}

/// A child process killed when dropped, with its output captured.
pub struct Proc {
    pub child: Child,
    pub name: String,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Proc {
    /// Starts `bin args`; stdout and stderr lines are collected.
    pub fn start(name: &str, bin: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(binary(bin));
        cmd.args(args).env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        Self::spawn(name, cmd)
    }

    /// Starts `cmd` as it is set up; stdout and stderr lines are collected.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc { child, name: name.into(), lines: rx, log: Vec::new() }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => {
                    let out = self.output();
                    panic!("{} did not print {needle:?} within {timeout:?}; output:\n{out}", self.name)
                }
            }
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect what is left of the output.
                std::thread::sleep(Duration::from_millis(100));
                self.drain();
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let out = self.output();
                panic!("{} did not exit within {timeout:?}; output:\n{out}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it printed so far.
    pub fn output(&mut self) -> String {
        self.drain();
        self.log.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a coordinator on a free loopback port; returns it and its address.
pub fn start_coordinator(args: &[&str]) -> (Proc, String) {
    let mut full = vec!["--listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut p = Proc::start("ddpm-coord", "ddpm-coord", &full);
    let line = p.wait_for_line("listening on ", Duration::from_secs(120));
    let addr = line.rsplit("listening on ").next().unwrap().trim().to_string();
    (p, addr)
}

/// Starts a CPU worker for the coordinator at `addr`.
pub fn start_worker(addr: &str, name: &str) -> Proc {
    Proc::start(name, "ddpm-worker", &["--coord", addr, "--device", "cpu", "--threads", "1", "--name", name])
}

/// A port no one listens on now, for a server a test starts later (a
/// pod's container port, a coordinator started again at its address). Drawn below the
/// kernel's ephemeral range (`ip_local_port_range`), from which every
/// `:0` listener of the tests' processes (peer listeners, metrics ports)
/// takes its port: a port from that range, freed here and bound by a pod
/// later, could meanwhile be taken by one of them (seen in the full
/// suite: "Address already in use", and a connection reset where no
/// coordinator should listen). Each port is handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    // From 10000 up to the ephemeral range, starting where this process's id
    // points, so that test processes run one after another do not reuse ports.
    let span = low - 10_000;
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = (10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from 10000 to {low}");
}

/// A loopback address on a [`free_port`].
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A setting of the S3 test server, which `tests/run.sh` starts and
/// describes in `DDPM_TEST_S3_*` variables.
pub fn s3_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run tests/run.sh, which starts the S3 test server"))
}

/// A fresh location on the S3 test server, `s3://BUCKET/<name>-<pid>`,
/// and the options that reach it.
pub fn s3_test_store(name: &str) -> (String, ddpm::store::StoreOptions) {
    let url = format!("s3://{}/{name}-{}", s3_env("DDPM_TEST_S3_BUCKET"), std::process::id());
    let opts = ddpm::store::StoreOptions {
        endpoint: Some(s3_env("DDPM_TEST_S3_ENDPOINT")),
        region: Some(s3_env("DDPM_TEST_S3_REGION")),
        access_key_id: Some(s3_env("DDPM_TEST_S3_ACCESS_KEY")),
        secret_access_key: Some(s3_env("DDPM_TEST_S3_SECRET")),
        allow_http: Some(true),
        ..Default::default()
    };
    (url, opts)
}

/// The tensors of a safetensors file (a checkpoint's), flattened to f32.
#[allow(dead_code)]
pub fn read_tensors(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    use tch::{Kind, Tensor};
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(n, t)| (n, ddpm::train::flat::to_vec_f32(&t.to_kind(Kind::Float).reshape([-1]))))
        .collect()
}

/// The largest elementwise difference between two sets of the same tensors.
#[allow(dead_code)]
pub fn max_diff(a: &std::collections::HashMap<String, Vec<f32>>, b: &std::collections::HashMap<String, Vec<f32>>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().flat_map(|(k, va)| va.iter().zip(&b[k]).map(|(x, y)| (*x as f64 - *y as f64).abs())).fold(0.0, f64::max)
}

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`): the status
/// code and the body. For the metrics port and the dashboard's JSON.
pub fn http_get(url: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_get_with_head(url).map(|(code, _, body)| (code, body))
}

/// [`http_get`], with the response's header lines lower-cased.
pub fn http_get_with_head(url: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(head.clone()))?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((code, head, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// The URL of the metrics port a process printed (`metrics on http://...`).
pub fn metrics_url(p: &mut Proc) -> String {
    let line = p.wait_for_line("metrics on http://", Duration::from_secs(120));
    line.rsplit("metrics on ").next().unwrap().trim().to_string()
}
