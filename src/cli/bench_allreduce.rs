//! `ddpm bench allreduce`: the all-reduce of the cifar10 gradient (143 MB)
//! through each backend, against PyTorch DDP (gloo) and raw TCP measured in
//! the same run. The members are in-process fakes that speak the real
//! protocol to a real coordinator (no model: a fixed gradient), so only
//! the reduction is timed: the coordinator's star, and the ring (worker to
//! worker through `ddpm::ring`, with each member's scalars reported to the
//! coordinator, the outcome back, and the shadow's feed after it, exactly
//! as a worker does). One file for one command: its fake members, the ring
//! alone, and the table they print.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ddpm::config::{GradDtype, RunConfig};
use ddpm::proto::{self, coordinator_client::CoordinatorClient, gradient_message, reduced_message, work_message};
use ddpm::ring::{feed, Measured, PeerListener, RingMembership, RingSpec};
use ddpm::wire;
use tokio_stream::StreamExt;

use super::bench_util::{self, median, start_coordinator, wait_ok};

const GLOO_SCRIPT: &str = include_str!("../../tests/bench/gloo_allreduce.py");

#[derive(clap::Args)]
pub struct AllreduceArgs {
    /// Worker counts, comma-separated.
    #[arg(long, default_value = "2", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Backends, comma-separated: coordinator, ring.
    #[arg(long, default_value = "coordinator,ring", value_delimiter = ',')]
    pub backend: Vec<String>,
    /// All-reduces to time per worker count.
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Gradient wire format: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Python with torch for the gloo baseline (default $DDPM_PYTHON or python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Chunk size in KiB of the ring alone (default: `[dist] chunk_kib`'s default).
    #[arg(long)]
    pub chunk_kib: Option<usize>,
    /// How the ring alone's links carry the bytes, comma-separated: tcp,
    /// shm (shared memory; f32 only). The runs through a coordinator use
    /// `[dist] ring_shm`'s default (shared memory where it works).
    #[arg(long, default_value = "tcp,shm", value_delimiter = ',')]
    pub links: Vec<String>,
    /// The coordinator's copy of the state in the ring runs, comma-separated:
    /// on (fed after every step) and/or off (`[dist] shadow`).
    #[arg(long, default_value = "on,off", value_delimiter = ',')]
    pub shadow: Vec<String>,
    /// Skip the PyTorch gloo baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// GB/s of one TCP stream on loopback writing `bytes` (best of 3).
fn raw_tcp_gbps(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if s.read(&mut buf)? == 0 {
                return Ok(());
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let buf = vec![1u8; 1 << 20];
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            s.write_all(&buf[..n])?;
            left -= n;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    drop(s);
    reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(best)
}

/// A fake member's connection, registration and heartbeats.
struct Member {
    c: CoordinatorClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, wire::auth::Credentials>>,
    id: u64,
    total: usize,
    layout_hash: u64,
    hb: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn join(addr: &str, peer_endpoint: String) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(wire::MAX_FRAME_BYTES)
            .connect()
            .await?;
        // The bench's coordinator is an open run on loopback: no token, but
        // the session secret like any worker.
        let credentials = wire::auth::Credentials::default();
        let mut c = CoordinatorClient::with_interceptor(channel, credentials.clone())
            .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
        let reg = c
            .register(proto::RegisterRequest {
                protocol_version: wire::PROTOCOL_VERSION,
                name: "bench".into(),
                device: "none".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                role: "train".into(),
                peer_endpoint,
            })
            .await?
            .into_inner();
        let id = reg.worker_id;
        credentials.set_session(&reg.session_secret);
        let run: RunConfig = serde_json::from_str(&reg.run_config_json)?;
        c.ready(proto::ReadyRequest { worker_id: id, layout_hash: run.layout_hash, param_count: run.param_count, ..Default::default() })
            .await?;
        let hb = {
            let mut c = c.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let _ = c.heartbeat(proto::HeartbeatRequest { worker_id: id }).await;
                }
            })
        };
        Ok(Member { c, id, total: run.param_count as usize, layout_hash: run.layout_hash, hb })
    }

    /// The next training assignment (its samples skipped); `None` at the end.
    async fn next(&mut self, applied: u64) -> anyhow::Result<Option<proto::TrainAssignment>> {
        loop {
            let req = proto::NextWorkRequest { worker_id: self.id, applied_step: applied, param_checksum: 0 };
            let mut work = self.c.next_work(req).await?.into_inner();
            let a = match work.next().await.context("empty work stream")??.kind {
                Some(work_message::Kind::Train(a)) => a,
                Some(work_message::Kind::Shutdown(_)) => return Ok(None),
                Some(work_message::Kind::UploadState(u)) => {
                    self.upload(u.step).await?;
                    continue;
                }
                other => anyhow::bail!("unexpected work {other:?}"),
            };
            while work.next().await.is_some() {}
            return Ok(Some(a));
        }
    }

    /// `[dist] shadow = "off"`: the state the coordinator asks for at the
    /// run's end (its last checkpoint and checksum). A bench member holds
    /// no model, so it sends zeros of the model's size with their true
    /// checksum; the bench's run is thrown away.
    async fn upload(&mut self, step: u64) -> anyhow::Result<()> {
        let zeros = vec![0f32; self.total];
        let header = proto::StateHeader {
            step,
            tensors: wire::state::TRAINING_WITH_EMA.iter().map(|s| s.to_string()).collect(),
            elements: self.total as u64,
            layout_hash: self.layout_hash,
            param_checksum: ddpm::train::flat::checksum_bytes(&wire::f32_bytes(&zeros)),
            worker_id: self.id,
            ..Default::default()
        };
        let chunks: Vec<_> = wire::state::chunks(vec![&zeros; 4], header).collect();
        self.c.push_state(tokio_stream::iter(chunks)).await?;
        Ok(())
    }

    /// The step's header; `chunk_norms` as the worker's ring backend sends
    /// them (none for the coordinator backend).
    fn header(&self, a: &proto::TrainAssignment, dtype: GradDtype, chunk_norms: Vec<f64>) -> proto::GradientMessage {
        proto::GradientMessage {
            kind: Some(gradient_message::Kind::Header(proto::GradientHeader {
                worker_id: self.id,
                step: a.step,
                attempt: a.attempt,
                elements: self.total as u64,
                dtype: dtype.to_proto() as i32,
                loss: 0.0,
                samples: a.shard_size,
                compute_s: 0.0,
                chunk_norms,
            })),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hb.abort();
    }
}

/// A fixed gradient of `total` values.
fn gradient(total: usize) -> Vec<f32> {
    (0..total).map(|i| ((i % 1000) as f32 - 500.0) * 1e-6).collect()
}

/// What a member times per step: the whole exchange (header sent to
/// outcome received) and, for the ring, the ring alone.
type Times = Vec<(f64, f64)>;

/// A member of the coordinator backend: streams the whole gradient and
/// waits for the reduced chunks and the outcome.
async fn coordinator_member(addr: String, dtype: GradDtype) -> anyhow::Result<Times> {
    let mut m = Member::join(&addr, String::new()).await?;
    let grad = gradient(m.total);
    let mut times = Vec::new();
    let mut applied = 0;
    let mut chunks: Option<Vec<Bytes>> = None;
    while let Some(a) = m.next(applied).await? {
        let encoded = chunks
            .get_or_insert_with(|| wire::chunk_ranges(m.total, a.chunk_elements as usize).map(|r| wire::encode(&grad[r], dtype)).collect());
        let mut msgs = vec![m.header(&a, dtype, Vec::new())];
        msgs.extend(encoded.iter().enumerate().map(|(i, d)| proto::GradientMessage {
            kind: Some(gradient_message::Kind::Chunk(proto::GradientChunk { index: i as u32, data: d.clone() })),
        }));
        let start = Instant::now();
        let mut inbound = m.c.reduce_gradients(tokio_stream::iter(msgs)).await?.into_inner();
        while let Some(msg) = inbound.next().await {
            if let Some(reduced_message::Kind::Outcome(_)) = msg?.kind {
                break;
            }
        }
        let t = start.elapsed().as_secs_f64();
        times.push((t, t));
        applied = a.step;
    }
    Ok(times)
}

/// A member of the ring backend: the ring with its neighbours, its segment
/// up to the coordinator as it becomes final, the outcome back.
async fn ring_member(addr: String, dtype: GradDtype) -> anyhow::Result<Times> {
    let peers = PeerListener::bind("127.0.0.1:0", |a| a.to_string()).await?;
    let mut m = Member::join(&addr, peers.endpoint().to_string()).await?;
    let grad = gradient(m.total);
    // This member's buffer, refilled with the gradient before each timed
    // all-reduce (a worker reuses its buffer the same way).
    let mut work = grad.clone();
    let mut times = Vec::new();
    let mut applied = 0;
    // Spares kept as a worker keeps them (`[dist] shadow_lag` + 2 steps).
    let mut spares = std::collections::VecDeque::new();
    while let Some(a) = m.next(applied).await? {
        work.copy_from_slice(&grad);
        let plan = RingMembership::from_plan(a.ring.as_ref().context("no ring plan: is the coordinator's backend ring?")?, m.id)?;
        let spec = RingSpec {
            n: plan.members.len(),
            rank: plan.rank,
            total: m.total,
            chunk_elements: a.chunk_elements as usize,
            dtype,
            weight: (a.shard_size as f64 / a.global_batch as f64) as f32,
            peer_timeout: plan.timeout,
            shm: a.ring.as_ref().is_some_and(|p| p.shm),
        };
        let (rank, n, ce) = (spec.rank, spec.n, spec.chunk_elements);
        let start = Instant::now();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // No norms: the ring takes them as it reads the gradient.
        let header = m.header(&a, dtype, Vec::new());
        tx.send(header.clone()).await?;
        let mut inbound = m.c.reduce_gradients(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        // What the ring measures goes up as it comes, as a worker's does.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let report = async {
            while let Some(e) = events.recv().await {
                let kind = match e {
                    Measured::Norms(norms) => gradient_message::Kind::Norms(proto::ChunkNorms { norms }),
                    Measured::Segment { index, sumsq, digest } => {
                        gradient_message::Kind::Segment(proto::SegmentDigest { index, sumsq, digest })
                    }
                };
                if tx.send(proto::GradientMessage { kind: Some(kind) }).await.is_err() {
                    break;
                }
            }
        };
        let (reduced, ()) = tokio::join!(plan.all_reduce(&peers, spec, work, events_tx, None), report);
        let reduced = reduced.map_err(|f| anyhow::anyhow!("ring broke at {} ({:?}): {f}", f.suspect, f.kind))?;
        let digest = reduced.digest;
        tx.send(proto::GradientMessage { kind: Some(gradient_message::Kind::Replica(proto::ReplicaDigest { digest })) }).await?;
        let ring_s = start.elapsed().as_secs_f64();
        let reduced = reduced.grad;
        anyhow::ensure!(reduced.len() == m.total);
        while let Some(msg) = inbound.next().await {
            if let Some(reduced_message::Kind::Outcome(_)) = msg?.kind {
                break;
            }
        }
        // The step is committed: the shadow's feed goes in the background,
        // as a worker's does, and the successor's chunks are kept as its
        // spare (the copy a worker pays for; never asked for here).
        if a.feed_shadow {
            spares.push_back(feed::successor_chunks(&reduced, rank, n, ce, dtype));
            if spares.len() > 4 {
                spares.pop_front();
            }
            let fed = feed::own_chunks(&reduced, rank, n, ce, dtype);
            let messages = std::iter::once(header)
                .chain(fed.into_iter().map(|(index, data)| proto::GradientMessage {
                    kind: Some(gradient_message::Kind::Chunk(proto::GradientChunk { index, data })),
                }))
                .collect::<Vec<_>>();
            let mut c = m.c.clone();
            tokio::spawn(async move { c.feed_shadow(tokio_stream::iter(messages)).await });
        }
        work = reduced;
        times.push((start.elapsed().as_secs_f64(), ring_s));
        applied = a.step;
    }
    Ok(times)
}

/// The ring alone: `n` members in this process over loopback TCP, no
/// coordinator (what gloo's number is: the data plane only). Median seconds
/// of `steps` all-reduces after one warm-up, the slowest member's each time.
async fn ring_alone(
    n: usize,
    total: usize,
    chunk_elements: usize,
    dtype: GradDtype,
    steps: u64,
    shm: bool,
) -> anyhow::Result<(f64, &'static str)> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(std::sync::Arc::new(PeerListener::bind("127.0.0.1:0", |a| a.to_string()).await?));
    }
    let members: Vec<(u64, String)> = listeners.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.endpoint().to_string())).collect();
    let grad = gradient(total);
    // Each member's buffer, refilled before each all-reduce and reused.
    let mut work: Vec<Vec<f32>> = (0..n).map(|_| grad.clone()).collect();
    let mut per_step = Vec::new();
    for step in 0..=steps {
        let tasks: Vec<_> = (0..n)
            .map(|rank| {
                let plan = RingMembership::new(rank as u64 + 1, rank, members.clone(), step, [7; 32], std::time::Duration::from_secs(30));
                let peers = listeners[rank].clone();
                let mut buf = std::mem::take(&mut work[rank]);
                buf.copy_from_slice(&grad);
                tokio::spawn(async move {
                    let spec = RingSpec { n, rank, total, chunk_elements, dtype, weight: 1.0 / n as f32, peer_timeout: plan.timeout, shm };
                    // Nobody hears what the ring measures: gloo reports nothing either
                    // (the ring takes its measures all the same, as it passes).
                    let (events, _) = tokio::sync::mpsc::unbounded_channel();
                    let start = Instant::now();
                    let r = plan
                        .all_reduce(&peers, spec, buf, events, None)
                        .await
                        .map_err(|f| anyhow::anyhow!("ring broke at {} ({:?}): {f}", f.suspect, f.kind))?;
                    anyhow::Ok((start.elapsed().as_secs_f64(), r.grad))
                })
            })
            .collect();
        let mut slowest = 0f64;
        for (rank, t) in tasks.into_iter().enumerate() {
            let (secs, buf) = t.await??;
            slowest = slowest.max(secs);
            work[rank] = buf;
        }
        if step > 0 {
            per_step.push(slowest);
        }
    }
    Ok((median(&per_step), listeners[0].last_links()))
}

pub fn run_allreduce(args: AllreduceArgs) -> anyhow::Result<()> {
    let dtype = match args.dtype.as_str() {
        "f32" => GradDtype::F32,
        "bf16" => GradDtype::Bf16,
        d => anyhow::bail!("unknown dtype {d:?}: use f32 or bf16"),
    };
    let params = ddpm::unet::UNetConfig::cifar10().param_count() as usize;
    let bytes = params * 4;
    let tcp = raw_tcp_gbps(bytes)?;
    println!("all-reduce of the cifar10 gradient: {params} float32 values, {:.1} MB (wire: {})", bytes as f64 / 1e6, dtype.name());
    println!("raw TCP on loopback, one stream: {tcp:.2} GB/s");
    let rt = tokio::runtime::Runtime::new()?;
    let mut gloo = std::collections::BTreeMap::new();
    for &n in args.workers.iter().filter(|&&n| n >= 2 && !args.no_baseline) {
        let py = bench_util::python(&args.python);
        let a = vec!["--world".into(), n.to_string(), "--elements".into(), params.to_string(), "--repeats".into(), "5".into()];
        match bench_util::python_baseline(&py, "gloo_allreduce.py", GLOO_SCRIPT, &a) {
            Ok(v) => {
                let g = median(&bench_util::seconds(&v));
                println!("PyTorch DDP gloo, {n} processes: {g:.3} s per all-reduce");
                gloo.insert(n, g);
            }
            Err(e) => println!("PyTorch gloo baseline unavailable ({e:#}); pass --python PATH to a Python with torch"),
        }
    }
    for b in &args.backend {
        anyhow::ensure!(b == "coordinator" || b == "ring", "unknown backend {b:?}: use coordinator or ring");
    }
    let chunk_kib = args.chunk_kib.unwrap_or(ddpm::config::DistConfig::default().chunk_kib);
    anyhow::ensure!((1..=16 * 1024).contains(&chunk_kib), "--chunk-kib must be in 1..=16384, got {chunk_kib}");
    let chunk_elements = chunk_kib * 1024 / dtype.bytes_per_element();
    for &n in &args.workers {
        for links in args.links.iter().filter(|_| args.backend.iter().any(|b| b == "ring") && n >= 2) {
            anyhow::ensure!(links == "tcp" || links == "shm", "unknown --links {links:?}: use tcp or shm");
            let (r, used) = rt.block_on(ring_alone(n, params, chunk_elements, dtype, args.steps, links == "shm"))?;
            let gbps = bytes as f64 / r / 1e9;
            println!(
                "ddpm ring alone (no coordinator), {links} links (rank 0 in/out: {used}), {n} workers: {r:.3} s per all-reduce, {gbps:.2} GB/s per worker ({:.2}x raw TCP)",
                gbps / tcp
            );
            if let Some(g) = gloo.get(&n) {
                println!("  vs PyTorch DDP gloo, {n} processes, {g:.3} s: ddpm/gloo speed ratio {:.2} (>1: ddpm faster)", g / r);
            }
        }
        let runs = args.backend.iter().flat_map(|b| {
            let modes: Vec<&str> = if b == "ring" { args.shadow.iter().map(String::as_str).collect() } else { vec!["on"] };
            modes.into_iter().map(move |m| (b.as_str(), m))
        });
        for (backend, shadow) in runs {
            anyhow::ensure!(shadow == "on" || shadow == "off", "unknown --shadow {shadow:?}: use on or off");
            let dir = tempfile::tempdir()?;
            let log = dir.path().join("coord.log");
            let coord_args: Vec<String> = [
                "--preset",
                "cifar10",
                "--data",
                "synthetic:shapes",
                "--samples",
                "0",
                "--grad-dtype",
                &args.dtype,
                "--backend",
                backend,
                "--shadow",
                shadow,
                "--workers",
                &n.to_string(),
                "--steps",
                &(args.steps + 1).to_string(),
                "--run",
                &dir.path().join("run").display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            let (mut coord, addr) = start_coordinator(&coord_args, &log)?;
            let ring = backend == "ring";
            let times: Vec<Times> = rt.block_on(async {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let addr = addr.clone();
                        if ring {
                            tokio::spawn(ring_member(addr, dtype))
                        } else {
                            tokio::spawn(coordinator_member(addr, dtype))
                        }
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await??);
                }
                anyhow::Ok(out)
            })?;
            wait_ok(&mut coord, "ddpm-coord", &log)?;
            // Per step, the slowest member's time; the first step is warm-up.
            let slowest = |f: fn(&(f64, f64)) -> f64| -> f64 {
                let steps: Vec<f64> = (1..times[0].len()).map(|s| times.iter().map(|t| f(&t[s])).fold(0.0, f64::max)).collect();
                median(&steps)
            };
            let t = slowest(|x| x.0);
            let gbps = bytes as f64 / t / 1e9;
            println!(
                "ddpm {backend}{}, {n} workers: {t:.3} s per all-reduce, {gbps:.2} GB/s reduced per worker ({:.2}x raw TCP){}",
                if ring { format!(" (shadow {shadow})") } else { String::new() },
                gbps / tcp,
                if ring {
                    let r = slowest(|x| x.1);
                    format!("; the ring alone {r:.3} s, {:.2}x raw TCP (then the coordinator's commit)", bytes as f64 / r / 1e9 / tcp)
                } else {
                    String::new()
                }
            );
            if let Some(g) = gloo.get(&n) {
                println!("  vs PyTorch DDP gloo, {n} processes, {g:.3} s: ddpm/gloo speed ratio {:.2} (>1: ddpm faster)", g / t);
            }
        }
    }
    Ok(())
}
