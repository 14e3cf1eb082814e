//! Kubernetes-style probes against the real binaries: what kubelet's
//! `grpc:` probe does (grpc.health.v1 Check, no credentials, a short
//! deadline) against the coordinator's gRPC port, which has tokens, and
//! the worker's metrics port; the worker's membership status follows the
//! coordinator being killed (-9) and started again on the same address.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, metrics_url, start_coordinator, tempdir, Proc};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// One probe: `Ok(status)`, or the gRPC code of the failure.
async fn probe(addr: &str, service: &str) -> Result<ServingStatus, tonic::Code> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|_| tonic::Code::Unavailable)?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.map_err(|s| s.code())?;
    Ok(reply.into_inner().status())
}

/// Probes until `service` at `addr` answers `want` (60 s at most).
async fn until(addr: &str, service: &str, want: Result<ServingStatus, tonic::Code>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = probe(addr, service).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} {service:?}: {got:?}, waited for {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SERVING: Result<ServingStatus, tonic::Code> = Ok(ServingStatus::Serving);
const NOT_SERVING: Result<ServingStatus, tonic::Code> = Ok(ServingStatus::NotServing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_see_the_coordinator_and_the_workers_membership() {
    let dir = tempdir();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("worker.token"), "health-test-worker-token-0123456789").unwrap();
    std::fs::write(path("user.token"), "health-test-user-token-9876543210").unwrap();
    let (run, wt, ut) = (path("run"), path("worker.token"), path("user.token"));
    // Long enough that the run is still going when the coordinator is killed.
    let coord_args = |listen: &str| {
        vec![
            "--listen".to_string(),
            listen.to_string(),
            "--preset".into(),
            "tiny".into(),
            "--data".into(),
            "synthetic:shapes".into(),
            "--steps".into(),
            "100000".into(),
            "--batch-size".into(),
            "2".into(),
            "--samples".into(),
            "0".into(),
            "--run".into(),
            run.clone(),
            "--worker-token-file".into(),
            wt.clone(),
            "--user-token-file".into(),
            ut.clone(),
        ]
    };
    let args = coord_args("127.0.0.1:0");
    let refs: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
    let (coord, addr) = start_coordinator(&refs);

    // The coordinator's port has tokens; probes carry none and still get answers.
    until(&addr, "", SERVING).await;
    until(&addr, "ddpm.v1.Coordinator", SERVING).await;
    until(&addr, "ddpm.v1.Jobs", SERVING).await;
    assert_eq!(probe(&addr, "no.such.Service").await, Err(tonic::Code::NotFound));

    let mut worker = Proc::start(
        "w0",
        "ddpm-worker",
        &[
            "--coord",
            &addr,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--token-file",
            &wt,
            "--metrics-listen",
            "127.0.0.1:0",
            "--connect-timeout",
            "120",
        ],
    );
    let wurl = metrics_url(&mut worker);
    let waddr = wurl.trim_start_matches("http://").to_string();
    // Alive at once; a member once it joined.
    until(&waddr, "", SERVING).await;
    until(&waddr, "ddpm.v1.Worker", SERVING).await;
    let (code, body) = http_get(&format!("{wurl}/healthz")).unwrap();
    assert_eq!((code, body.as_slice()), (200, b"ok\n".as_slice()));
    let (code, body) = http_get(&format!("{wurl}/metrics")).unwrap();
    assert_eq!(code, 200);
    assert_eq!(ddpm::observe::prom::parse_sample(&String::from_utf8_lossy(&body), "ddpm_worker_member"), Some(1.0));

    // kill -9: the worker is still alive, but no member of anything.
    let mut coord = coord;
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    until(&waddr, "ddpm.v1.Worker", NOT_SERVING).await;
    assert_eq!(probe(&waddr, "").await, SERVING);
    assert_eq!(probe(&addr, "").await, Err(tonic::Code::Unavailable));

    // The coordinator back on the same address (once the killed one's run
    // lease expires): the worker rejoins by itself and is ready again.
    let args = coord_args(&addr);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut coord = Proc::start("ddpm-coord (again)", "ddpm-coord", &refs);
    coord.wait_for_line("listening on ", Duration::from_secs(120));
    until(&addr, "ddpm.v1.Coordinator", SERVING).await;
    until(&waddr, "ddpm.v1.Worker", SERVING).await;
    let (_, body) = http_get(&format!("{wurl}/metrics")).unwrap();
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(ddpm::observe::prom::parse_sample(&text, "ddpm_worker_reconnects_total").unwrap() >= 1.0, "{text}");
    assert_eq!(ddpm::observe::prom::parse_sample(&text, "ddpm_worker_joins_total"), Some(2.0), "{text}");
}
