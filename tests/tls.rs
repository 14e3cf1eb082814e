//! TLS through the real binaries, with a CA made here: a worker and `ddpm
//! jobs` talk to a coordinator that requires client certificates, and
//! clients that do not trust its CA, present no certificate, expect another
//! name, or speak plain text are refused with a message that says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{start_coordinator, tempdir, Proc};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A test PKI's files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed nothing here.
    stranger_ca: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

fn make_pki(dir: &Path) -> Pki {
    let (ca_pem, issuer) = ca("ddpm test CA");
    let (server, server_key) = leaf(&issuer, &["localhost", "127.0.0.1"], "ddpm-coord");
    let (client, client_key) = leaf(&issuer, &[], "ddpm-worker");
    let (stranger, _) = ca("someone else's CA");
    Pki {
        ca: write(dir, "ca.pem", &ca_pem),
        server_cert: write(dir, "server.pem", &server),
        server_key: write(dir, "server.key", &server_key),
        client_cert: write(dir, "client.pem", &client),
        client_key: write(dir, "client.key", &client_key),
        stranger_ca: write(dir, "stranger-ca.pem", &stranger),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ddpm jobs ARGS`: exit code and output.
fn jobs(args: &[&str]) -> (i32, String) {
    let mut p = Proc::start("ddpm jobs", "ddpm", &[&["jobs"], args].concat());
    let code = p.wait(Duration::from_secs(120));
    (code, p.output())
}

#[test]
fn a_worker_and_ddpm_jobs_talk_to_a_coordinator_that_requires_client_certificates() {
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let wt = write(dir.path(), "worker.token", "worker-token-0123456789abcdef");
    let ut = write(dir.path(), "user.token", "user-token-0123456789abcdef01");
    let run = dir.path().join("run");
    let (mut coord, addr) = start_coordinator(&[
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--samples",
        "0",
        "--threads",
        "1",
        "--workers",
        "1",
        "--serve",
        "--run",
        s(&run),
        "--worker-token-file",
        s(&wt),
        "--user-token-file",
        s(&ut),
        "--tls-cert",
        s(&pki.server_cert),
        "--tls-key",
        s(&pki.server_key),
        "--tls-client-ca",
        s(&pki.ca),
    ]);
    coord.wait_for_line("clients must present a certificate", Duration::from_secs(10));
    let port = addr.rsplit(':').next().unwrap().to_string();
    // The worker reaches it by name (the certificate's DNS name).
    let by_name = format!("localhost:{port}");
    let _worker = Proc::start(
        "w1",
        "ddpm-worker",
        &[
            "--coord",
            &by_name,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--name",
            "w1",
            "--token-file",
            s(&wt),
            "--tls-ca",
            s(&pki.ca),
            "--tls-cert",
            s(&pki.client_cert),
            "--tls-key",
            s(&pki.client_key),
        ],
    );
    coord.wait_for_line("serving jobs", Duration::from_secs(300));

    // `ddpm jobs` by address (the certificate's IP name): a sample job, watched to the end.
    let client = ["--tls-ca", s(&pki.ca), "--tls-cert", s(&pki.client_cert), "--tls-key", s(&pki.client_key)];
    let (code, out) = jobs(
        &[
            &["--coord", &addr, "--token-file", s(&ut), "--json"][..],
            &client,
            &["submit-sample", "--count", "2", "--sampler", "ddim", "--steps", "2", "--batch", "2", "--watch"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{out}");
    let last: serde_json::Value = serde_json::from_str(out.lines().rfind(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(last["state"], "done", "{out}");
    assert!(run.join("jobs/000001/samples.npz").exists());

    // Refused, each saying why.
    let list = |extra: &[&str]| jobs(&[&["--coord", &addr, "--token-file", s(&ut)][..], extra, &["list"]].concat());
    let (code, out) = list(&["--tls-ca", s(&pki.stranger_ca), "--tls-cert", s(&pki.client_cert), "--tls-key", s(&pki.client_key)]);
    assert_ne!(code, 0);
    assert!(out.contains("TLS with the coordinator") && out.to_lowercase().contains("certificate"), "{out}");
    let (code, out) = list(&[&client[..], &["--tls-domain", "elsewhere.example"]].concat());
    assert_ne!(code, 0);
    assert!(out.contains("TLS with the coordinator") && out.contains("elsewhere.example"), "{out}");
    let (code, out) = list(&["--tls-ca", s(&pki.ca)]);
    assert_ne!(code, 0, "no client certificate, yet listed: {out}");
    let (code, out) = list(&[]);
    assert_ne!(code, 0, "plain text, yet listed: {out}");
    // A worker without a client certificate does not get in either.
    let mut stranger = Proc::start(
        "stranger",
        "ddpm-worker",
        &["--coord", &addr, "--device", "cpu", "--token-file", s(&wt), "--tls-ca", s(&pki.ca), "--connect-timeout", "5"],
    );
    assert_ne!(stranger.wait(Duration::from_secs(60)), 0, "{}", stranger.output());
    assert!(stranger.output().contains("cannot join the coordinator"), "{}", stranger.output());

    // The run: trained with its one worker, unaffected.
    let pid = coord.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(coord.wait(Duration::from_secs(60)), 0, "{}", coord.output());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 3, "{summary}");
}

#[test]
fn bad_tls_files_are_named_at_start_up() {
    let dir = tempdir();
    let junk = write(dir.path(), "junk.pem", "hello");
    let run = dir.path().join("run");
    let mut p = Proc::start(
        "ddpm-coord",
        "ddpm-coord",
        &["--preset", "tiny", "--run", s(&run), "--listen", "127.0.0.1:0", "--tls-cert", s(&junk), "--tls-key", s(&junk)],
    );
    assert_eq!(p.wait(Duration::from_secs(60)), 2);
    assert!(p.output().contains("junk.pem holds no PEM certificate"), "{}", p.output());
    let mut w = Proc::start("w", "ddpm-worker", &["--coord", "127.0.0.1:1", "--tls-ca", s(&dir.path().join("none.pem"))]);
    assert_eq!(w.wait(Duration::from_secs(60)), 2);
    assert!(w.output().contains("cannot read the CA certificate") && w.output().contains("none.pem"), "{}", w.output());
    // TLS alone does not make an open run safe off loopback: anyone could still connect.
    let pki = make_pki(dir.path());
    let mut p = Proc::start(
        "ddpm-coord",
        "ddpm-coord",
        &[
            "--preset",
            "tiny",
            "--run",
            s(&run),
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            s(&pki.server_cert),
            "--tls-key",
            s(&pki.server_key),
        ],
    );
    assert_eq!(p.wait(Duration::from_secs(60)), 2);
    assert!(p.output().contains("refusing to listen on 0.0.0.0:0 without credentials"), "{}", p.output());
}
