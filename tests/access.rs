//! Who may connect, through the real binaries: a coordinator with a worker
//! token and a user token refuses every RPC of both services without
//! credentials, with a wrong token, with the other kind of token, and
//! under another worker's id, and job requests read only under the job
//! roots; the run it is holding then trains as if none of that happened.
//! An open run is refused on a non-loopback address.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{start_coordinator, tempdir, Proc};
use ddpm::proto::{self, coordinator_client::CoordinatorClient, jobs_client::JobsClient};
use ddpm::wire::auth::Credentials;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const WORKER_TOKEN: &str = "worker-token-0123456789abcdef";
const USER_TOKEN: &str = "user-token-0123456789abcdef01";

type Coord = CoordinatorClient<InterceptedService<Channel, Credentials>>;
type Jobs = JobsClient<InterceptedService<Channel, Credentials>>;

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

fn first<T>(item: T) -> tokio_stream::Once<T> {
    tokio_stream::once(item)
}

/// Every Coordinator RPC, as worker `id` would make it; each one's status
/// code (`Ok` as `Code::Ok`).
async fn coordinator_calls(c: &mut Coord, id: u64) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let register = proto::RegisterRequest {
        protocol_version: ddpm::wire::PROTOCOL_VERSION,
        name: "intruder".into(),
        device: "cpu".into(),
        version: "x".into(),
        role: String::new(),
        peer_endpoint: String::new(),
    };
    let grad = proto::GradientMessage {
        kind: Some(proto::gradient_message::Kind::Header(proto::GradientHeader { worker_id: id, step: 1, ..Default::default() })),
    };
    let result = proto::ResultMessage {
        kind: Some(proto::result_message::Kind::Header(proto::ResultHeader { worker_id: id, job_id: 1, ..Default::default() })),
    };
    vec![
        ("Register", code(c.register(register).await.map(drop))),
        ("Ready", code(c.ready(proto::ReadyRequest { worker_id: id, ..Default::default() }).await.map(drop))),
        ("Heartbeat", code(c.heartbeat(proto::HeartbeatRequest { worker_id: id }).await.map(drop))),
        ("Attach", code(c.attach(first(proto::HeartbeatRequest { worker_id: id })).await.map(drop))),
        ("FetchState", code(c.fetch_state(proto::FetchStateRequest { worker_id: id, kind: 1, job_id: 0 }).await.map(drop))),
        ("NextWork", code(c.next_work(proto::NextWorkRequest { worker_id: id, ..Default::default() }).await.map(drop))),
        ("ReduceGradients", code(c.reduce_gradients(first(grad)).await.map(drop))),
        ("SubmitResult", code(c.submit_result(first(result)).await.map(drop))),
        ("GetStatus", code(c.get_status(proto::StatusRequest {}).await.map(drop))),
    ]
}

/// Every Jobs RPC; each one's status code.
async fn jobs_calls(c: &mut Jobs) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let job = proto::JobRef { job_id: 1 };
    vec![
        ("SubmitSampleJob", code(c.submit_sample_job(proto::SampleJobRequest { count: 1, ..Default::default() }).await.map(drop))),
        ("SubmitEvalJob", code(c.submit_eval_job(proto::EvalJobRequest::default()).await.map(drop))),
        ("SubmitAnalysisJob", code(c.submit_analysis_job(proto::AnalysisJobRequest::default()).await.map(drop))),
        ("GetJob", code(c.get_job(job).await.map(drop))),
        ("WatchJob", code(c.watch_job(job).await.map(drop))),
        ("ListJobs", code(c.list_jobs(proto::ListJobsRequest {}).await.map(drop))),
        ("CancelJob", code(c.cancel_job(job).await.map(drop))),
    ]
}

fn all(calls: &[(&'static str, Code)], want: Code, except: &[(&str, Code)]) {
    for (name, got) in calls {
        let want = except.iter().find(|(n, _)| n == name).map_or(want, |(_, c)| *c);
        assert_eq!(*got, want, "{name}: {calls:?}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_needs_the_right_token_and_session_and_the_run_is_untouched() {
    let dir = tempdir();
    let wt = write(dir.path(), "worker.token", WORKER_TOKEN);
    let ut = write(dir.path(), "user.token", USER_TOKEN);
    let run = dir.path().join("run").display().to_string();
    let args = [
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--samples",
        "0",
        "--threads",
        "1",
        "--workers",
        "2",
        "--run",
        &run,
        "--worker-token-file",
        &wt,
        "--user-token-file",
        &ut,
    ];
    let (mut coord, addr) = start_coordinator(&args);
    let worker = |name: &str| {
        Proc::start(name, "ddpm-worker", &["--coord", &addr, "--device", "cpu", "--threads", "1", "--name", name, "--token-file", &wt])
    };
    let mut w1 = worker("w1");
    coord.wait_for_line("worker ready", Duration::from_secs(120));

    let ch = channel(&addr).await;
    let coord_client = |token: Option<&str>| CoordinatorClient::with_interceptor(ch.clone(), Credentials::new(token.map(String::from)));
    let jobs_client = |token: Option<&str>| JobsClient::with_interceptor(ch.clone(), Credentials::new(token.map(String::from)));
    // The real worker's id, as the status (with the user token) shows it.
    let status = coord_client(Some(USER_TOKEN)).get_status(proto::StatusRequest {}).await.unwrap().into_inner();
    let victim = status.members.first().expect("the real worker").worker_id;

    for token in [None, Some("not-the-token-0123456789")] {
        all(&coordinator_calls(&mut coord_client(token), victim).await, Code::Unauthenticated, &[]);
        all(&jobs_calls(&mut jobs_client(token)).await, Code::Unauthenticated, &[]);
    }
    // A user may read the status but make no worker call; a worker may not use Jobs.
    all(&coordinator_calls(&mut coord_client(Some(USER_TOKEN)), victim).await, Code::PermissionDenied, &[("GetStatus", Code::Ok)]);
    all(&jobs_calls(&mut jobs_client(Some(WORKER_TOKEN))).await, Code::PermissionDenied, &[]);
    // The worker token, but the real worker's id without its session secret.
    all(
        &coordinator_calls(&mut coord_client(Some(WORKER_TOKEN)), victim).await,
        Code::PermissionDenied,
        // Register is a new membership (granted: it is a worker token), GetStatus open to both.
        &[("Register", Code::Ok), ("GetStatus", Code::Ok)],
    );
    // The user token works on Jobs (an unknown job is just that).
    let listed = jobs_client(Some(USER_TOKEN)).list_jobs(proto::ListJobsRequest {}).await.unwrap().into_inner();
    assert!(listed.jobs.is_empty());
    // Job requests read only under the job roots, and say nothing of what lies outside.
    let mut refusals = Vec::new();
    for path in ["/etc/passwd", "/etc/no-such-file"] {
        let sample = Some(proto::SampleJobRequest { count: 4, ..Default::default() });
        let req = proto::EvalJobRequest { inception: "inception.pt".into(), reference_stats: path.into(), sample, ..Default::default() };
        let e = jobs_client(Some(USER_TOKEN)).submit_eval_job(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("is outside the places jobs may read"), "{}", e.message());
        refusals.push(e.message().replace(path, "PATH"));
    }
    assert_eq!(refusals[0], refusals[1], "the refusal must not tell an existing file from a missing one");
    let req = proto::AnalysisJobRequest { kind: "interpolate".into(), data: "folder:/etc".into(), index_b: 1, ..Default::default() };
    let e = jobs_client(Some(USER_TOKEN)).submit_analysis_job(req).await.unwrap_err();
    assert!(e.message().contains("outside the places jobs may read"), "{}", e.message());
    // And so does `ddpm jobs` with the user token's file; without it, it is told why.
    let mut cli = Proc::start("ddpm", "ddpm", &["jobs", "list", "--coord", &addr, "--token-file", &ut]);
    assert_eq!(cli.wait(Duration::from_secs(60)), 0, "{}", cli.output());
    let mut cli = Proc::start("ddpm", "ddpm", &["jobs", "list", "--coord", &addr]);
    assert_ne!(cli.wait(Duration::from_secs(60)), 0);
    assert!(cli.output().contains("requires a token"), "{}", cli.output());

    // A worker without the token is refused and says why.
    let mut stranger = Proc::start("stranger", "ddpm-worker", &["--coord", &addr, "--device", "cpu", "--connect-timeout", "5"]);
    assert_ne!(stranger.wait(Duration::from_secs(60)), 0);
    assert!(stranger.output().contains("requires a token"), "{}", stranger.output());

    // The run: the intruder's Register made a member that never became
    // ready; the two real workers train and agree.
    let mut w2 = worker("w2");
    assert_eq!(coord.wait(Duration::from_secs(300)), 0, "{}", coord.output());
    for w in [&mut w1, &mut w2] {
        assert_eq!(w.wait(Duration::from_secs(60)), 0, "{}", w.output());
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 4, "{summary}");
    assert_eq!(summary["replicas_agree"], true, "{summary}");
    assert_eq!(summary["replica_checksums"].as_object().unwrap().len(), 2, "{summary}");
}

#[test]
fn an_open_run_is_refused_off_loopback_and_tokens_come_in_pairs() {
    let dir = tempdir();
    let run = dir.path().join("run").display().to_string();
    let base = ["--preset", "tiny", "--steps", "1", "--run", &run];
    let start = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let mut p = Proc::start("ddpm-coord", "ddpm-coord", &args);
        let code = p.wait(Duration::from_secs(60));
        (code, p.output())
    };
    let (code, out) = start(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refusing to listen on 0.0.0.0:0 without credentials") && out.contains("--insecure"), "{out}");
    let wt = write(dir.path(), "w", WORKER_TOKEN);
    let (code, out) = start(&["--listen", "0.0.0.0:0", "--worker-token-file", &wt]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("give both tokens or neither"), "{out}");
    // --insecure: it starts (and says so), waiting for its worker.
    let mut p = Proc::start("ddpm-coord", "ddpm-coord", &[&base[..], &["--listen", "0.0.0.0:0", "--insecure"]].concat());
    p.wait_for_line("--insecure", Duration::from_secs(60));
    p.wait_for_line("listening on", Duration::from_secs(60));
}
