//! The store and checkpoint conformance suite, run against the local
//! filesystem store (always) and a real S3-compatible server (Garage,
//! started on 127.0.0.1 by tests/run.sh through deploy/s3-test-server.sh,
//! which exports DDPM_TEST_S3_*). Nothing here is a mock: the S3 tests fail,
//! rather than pass silently, when the server is not there.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ddpm::checkpoint::{self, CheckpointData, CheckpointError};
use ddpm::config::TrainConfig;
use ddpm::data::OrderState;
use ddpm::rng::Stream;
use ddpm::store::{lease, RetryOptions, RunStore, StoreError, StoreOptions, MIN_PART_SIZE};
use ddpm::train::flat::Layout;

/// A store under test: a fresh prefix of a local directory or the S3 bucket.
struct Backend {
    url: String,
    opts: StoreOptions,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn local() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("run").display().to_string();
        Self { url, opts: StoreOptions { part_size: Some(MIN_PART_SIZE), ..Default::default() }, _dir: Some(dir) }
    }

    fn s3(name: &str) -> Self {
        let (endpoint, bucket, access, secret, region) = s3_env();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let url = format!("s3://{bucket}/conformance-{}-{nanos}/{name}", std::process::id());
        let opts = StoreOptions {
            endpoint: Some(endpoint),
            region: Some(region),
            access_key_id: Some(access),
            secret_access_key: Some(secret),
            allow_http: Some(true),
            part_size: Some(MIN_PART_SIZE),
            retry: RetryOptions::quick(),
            ..Default::default()
        };
        Self { url, opts, _dir: None }
    }

    fn open(&self) -> RunStore {
        RunStore::open(&self.url, &self.opts).unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

/// The test server's coordinates; a missing variable fails the test.
fn s3_env() -> (String, String, String, String, String) {
    let var = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| {
            panic!(
                "{n} is not set: the S3 conformance tests need the S3 test server. Run tests/run.sh (it starts one), \
                 or `source deploy/s3-test-server.sh && ddpm_s3_start` before cargo test"
            )
        })
    };
    (
        var("DDPM_TEST_S3_ENDPOINT"),
        var("DDPM_TEST_S3_BUCKET"),
        var("DDPM_TEST_S3_ACCESS_KEY"),
        var("DDPM_TEST_S3_SECRET"),
        var("DDPM_TEST_S3_REGION"),
    )
}

fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Stream::new(seed).fill_normal(&mut v);
    v
}

/// A checkpoint whose tensor files (6 MB each, optimizer 12 MB) exceed the
/// 5 MiB part size, so every write exercises multipart uploads. Values
/// include -0.0, a subnormal and f32::MAX: the round trip must keep bits.
fn checkpoint_of(step: u64) -> CheckpointData {
    let layout = Layout::from_named(vec![
        ("down_blocks.0.resnets.0.conv1.weight".into(), vec![1200, 1200]),
        ("conv_in.bias".into(), vec![7]),
        ("conv_in.weight".into(), vec![7, 3, 3, 3]),
    ]);
    let n = layout.total;
    let mut params = noise(step * 10 + 1, n);
    params[..3].copy_from_slice(&[-0.0, 1e-45, f32::MAX]);
    let config = TrainConfig::tiny();
    CheckpointData {
        step,
        adam_step: step - 1,
        skipped_steps: 1,
        order: OrderState { seed: config.train.seed, dataset_len: 1000, batch_size: config.train.batch_size, step },
        config,
        layout,
        params,
        adam_m: noise(step * 10 + 2, n),
        adam_v: noise(step * 10 + 3, n).iter().map(|x| x * x).collect(),
        ema: noise(step * 10 + 4, n),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_bit_exact(got: &CheckpointData, want: &CheckpointData) {
    assert_eq!((got.step, got.adam_step, got.skipped_steps), (want.step, want.adam_step, want.skipped_steps));
    assert_eq!(got.order, want.order);
    assert_eq!(got.config, want.config);
    assert_eq!(got.layout, want.layout);
    for (name, a, b) in [
        ("params", &got.params, &want.params),
        ("adam_m", &got.adam_m, &want.adam_m),
        ("adam_v", &got.adam_v, &want.adam_v),
        ("ema", &got.ema, &want.ema),
    ] {
        assert!(bits(a) == bits(b), "{name} differs after the round trip");
    }
}

fn steps(infos: &[checkpoint::CheckpointInfo]) -> Vec<(u64, bool)> {
    infos.iter().map(|c| (c.step, c.complete)).collect()
}

/// Objects: put/get, overwrite, multipart, head, list, list_dirs, delete.
async fn objects(store: &RunStore) {
    assert!(!store.exists("a/x.bin").await.unwrap());
    store.put("a/x.bin", Bytes::from_static(b"hello")).await.unwrap();
    store.put("a/x.bin", Bytes::from_static(b"hello, again")).await.unwrap();
    assert_eq!(&store.get("a/x.bin").await.unwrap()[..], b"hello, again");
    assert_eq!(store.head("a/x.bin").await.unwrap().map(|o| o.size), Some(12));

    // Larger than the part size: three parts, the last one short.
    let big: Vec<u8> = (0..(2 * MIN_PART_SIZE + 12_345)).map(|i| (i * 31 % 251) as u8).collect();
    store.put("a/sub/big.bin", Bytes::from(big.clone())).await.unwrap();
    assert!(store.get("a/sub/big.bin").await.unwrap() == big, "multipart object differs");
    assert_eq!(store.head("a/sub/big.bin").await.unwrap().map(|o| o.size), Some(big.len() as u64));
    // The same from a file, streamed part by part; and a small file in one put.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &big[12..]).unwrap();
    assert_eq!(store.put_file("a/sub/big.bin", &file).await.unwrap(), (big.len() - 12) as u64);
    assert!(store.get("a/sub/big.bin").await.unwrap() == big[12..], "object streamed from a file differs");
    std::fs::write(&file, b"small").unwrap();
    store.put_file("b/y.bin", &file).await.unwrap();
    assert_eq!(&store.get("b/y.bin").await.unwrap()[..], b"small");
    let e = store.put_file("b/z.bin", &dir.path().join("missing")).await.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");

    store.put("b/y.bin", Bytes::from_static(b"y")).await.unwrap();
    let keys: Vec<String> = store.list("a").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["a/sub/big.bin", "a/x.bin"]);
    assert_eq!(store.list("").await.unwrap().len(), 3);
    assert_eq!(store.list_dirs("").await.unwrap(), ["a", "b"]);
    assert!(store.list("nothing-here").await.unwrap().is_empty());

    store.delete("a/x.bin").await.unwrap();
    store.delete("a/x.bin").await.unwrap(); // deleting what is gone is fine
    assert!(!store.exists("a/x.bin").await.unwrap());
    assert!(matches!(store.get("a/x.bin").await, Err(StoreError::NotFound { .. })));
    for key in ["a/sub/big.bin", "b/y.bin"] {
        store.delete(key).await.unwrap();
    }
    assert!(store.list("").await.unwrap().is_empty());
}

/// Checkpoints: round trip, torn ones skipped, retention.
async fn checkpoints(store: &RunStore) {
    assert!(checkpoint::load_latest(store).await.unwrap().is_none());
    let written: Vec<CheckpointData> = [10, 20, 30].map(checkpoint_of).into();
    for c in &written {
        let report = checkpoint::write(store, c).await.unwrap();
        assert!(report.bytes > 2 * MIN_PART_SIZE as u64);
    }
    assert_eq!(steps(&checkpoint::list(store).await.unwrap()), [(10, true), (20, true), (30, true)]);
    assert_eq!(checkpoint::latest_complete(store).await.unwrap().map(|c| c.step), Some(30));
    assert_bit_exact(&checkpoint::read(store, 20).await.unwrap(), &written[1]);
    assert!(matches!(checkpoint::read(store, 25).await, Err(CheckpointError::NotFound { step: 25, .. })));

    // Torn: 40 lost its manifest, 50 a file, 55 has a flipped byte.
    for step in [40, 50, 55] {
        checkpoint::write(store, &checkpoint_of(step)).await.unwrap();
    }
    let dir = |s: u64| checkpoint::step_dir(s);
    store.delete(&format!("{}/manifest.json", dir(40))).await.unwrap();
    store.delete(&format!("{}/ema.safetensors", dir(50))).await.unwrap();
    let key = format!("{}/model.safetensors", dir(55));
    let mut bytes = store.get(&key).await.unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    store.put(&key, Bytes::from(bytes)).await.unwrap();

    let all = checkpoint::list(store).await.unwrap();
    // Sizes only: 55 looks complete until its checksum is checked.
    assert_eq!(steps(&all), [(10, true), (20, true), (30, true), (40, false), (50, false), (55, true)]);
    assert!(all[3].problem.as_deref().unwrap().contains("no manifest.json"), "{:?}", all[3].problem);
    assert!(all[4].problem.as_deref().unwrap().contains("ema.safetensors is missing"), "{:?}", all[4].problem);
    let e = checkpoint::read(store, 55).await.unwrap_err().to_string();
    assert!(e.contains("model.safetensors fails its checksum"), "{e}");
    assert_eq!(checkpoint::latest_complete(store).await.unwrap().map(|c| c.step), Some(30));
    let loaded = checkpoint::load_latest(store).await.unwrap().expect("a checkpoint");
    assert_bit_exact(&loaded.data, &written[2]);
    assert_eq!(loaded.skipped.iter().map(|s| s.step).collect::<Vec<_>>(), [55, 50, 40]);

    // Retention: the last 2 complete (by size) and multiples of 30 stay;
    // torn leftovers older than the newest complete one go.
    for step in [70, 80] {
        checkpoint::write(store, &checkpoint_of(step)).await.unwrap();
    }
    let report = checkpoint::prune(store, 2, 30).await.unwrap();
    assert_eq!(report.deleted, [10, 20, 55]);
    assert_eq!(report.torn_removed, [40, 50]);
    assert_eq!(steps(&checkpoint::list(store).await.unwrap()), [(30, true), (70, true), (80, true)]);
    assert!(store.list(&dir(40)).await.unwrap().is_empty());

    // Rewriting a step (a run resumed from an older checkpoint) replaces it.
    let again = checkpoint_of(80);
    checkpoint::write(store, &again).await.unwrap();
    assert_bit_exact(&checkpoint::read(store, 80).await.unwrap(), &again);
}

/// The background uploader: saves, supersedes a waiting checkpoint, prunes.
async fn uploader(store: &RunStore) {
    let config = checkpoint::UploaderConfig {
        attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        keep_last: 1,
        milestone_every: 0,
    };
    let (up, mut events) = checkpoint::Uploader::start(store.clone(), config);
    let [c100, c110, c120] = [100, 110, 120].map(checkpoint_of);
    let t = Instant::now();
    assert_eq!(up.submit(c100, checkpoint::Reason::Steps), None);
    // Three submissions in a row: at most one uploads while one waits.
    up.submit(c110, checkpoint::Reason::Time);
    up.submit(c120, checkpoint::Reason::End);
    assert!(t.elapsed() < Duration::from_millis(100), "submit must not wait for the upload");
    match up.flush().await {
        Some(checkpoint::UploadEvent::Saved { step: 120, reason: checkpoint::Reason::End, .. }) => {}
        other => panic!("expected step 120 saved, got {other:?}"),
    }
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    // Whichever of 100 and 110 was still waiting when a newer one came was
    // dropped unsaved (which one depends on whether the upload of 100 had
    // started when 110 arrived); an upload in progress is never dropped.
    let superseded: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            checkpoint::UploadEvent::Superseded { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    let saved: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            checkpoint::UploadEvent::Saved { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    // (Both are dropped when the uploader had not yet taken 100 when 120 came.)
    assert!(matches!(superseded[..], [100] | [110] | [100, 110]), "{seen:?}");
    let mut accounted: Vec<u64> = superseded.iter().chain(&saved).copied().collect();
    accounted.sort_unstable();
    assert_eq!(accounted, [100, 110, 120], "each checkpoint is saved or superseded, never both: {seen:?}");
    let complete: Vec<u64> = checkpoint::list(store).await.unwrap().iter().filter(|c| c.complete).map(|c| c.step).collect();
    assert_eq!(complete, [120], "keep_last 1 prunes the rest");
    up.close().await;
}

/// The run lease on this backend: a create-only put creates once (where
/// the backend can), and a second coordinator is refused while the first
/// holds the run and takes it once released.
async fn lease(store: &RunStore) {
    assert!(store.put_new("once", Bytes::from_static(b"1")).await.unwrap());
    if !store.is_remote() {
        // Exclusive locally; Garage ignores If-None-Match (the lease reads back instead).
        assert!(!store.put_new("once", Bytes::from_static(b"2")).await.unwrap(), "a second create-only put must not overwrite");
        assert_eq!(&store.get("once").await.unwrap()[..], b"1");
    }
    let me = lease::Identity { host: "conformance".into(), pid: 1, addr: "a".into() };
    let held = lease::RunLease::acquire(store, &me, Duration::from_secs(60)).await.unwrap();
    let other = lease::Identity { host: "elsewhere".into(), pid: 2, addr: "b".into() };
    let refused = lease::RunLease::acquire(store, &other, Duration::from_secs(60)).await;
    assert!(matches!(refused, Err(lease::LeaseError::Held { .. })), "{:?}", refused.err());
    assert!(held.renew().await.unwrap());
    held.release().await;
    assert_eq!(lease::RunLease::acquire(store, &other, Duration::from_secs(60)).await.unwrap().epoch(), held.epoch() + 1);
}

async fn suite(b: &Backend) {
    let store = b.open();
    store.check().await.unwrap();
    objects(&store).await;
    lease(&RunStore::open(&format!("{}/lease", b.url), &b.opts).unwrap()).await;
    checkpoints(&RunStore::open(&format!("{}/ckpt", b.url), &b.opts).unwrap()).await;
    uploader(&RunStore::open(&format!("{}/upl", b.url), &b.opts).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conformance() {
    suite(&Backend::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conformance() {
    suite(&Backend::s3("suite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_rejected_with_a_clear_error() {
    let mut b = Backend::s3("wrong-secret");
    b.opts.secret_access_key = Some("not-the-secret-0000000000000000000000000000".into());
    let store = b.open();
    let e = store.put("x", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(e, StoreError::Credentials { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("S3 rejected the credentials") && msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
    let e = checkpoint::list(&store).await.unwrap_err();
    assert!(matches!(e, CheckpointError::Store(StoreError::Credentials { .. })), "{e}");

    let mut b = Backend::s3("wrong-key");
    b.opts.access_key_id = Some("GK00000000000000000000bad".into());
    let e = b.open().check().await.unwrap_err();
    assert!(matches!(e, StoreError::Credentials { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_named() {
    let mut b = Backend::s3("x");
    b.url = "s3://no-such-bucket-ddpm/run".into();
    let e = b.open().check().await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    assert!(e.to_string().contains("no-such-bucket-ddpm"), "{e}");
}

/// An S3 store at a loopback port nothing listens on, and the port.
fn unreachable_store(retry: RetryOptions) -> (RunStore, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = StoreOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("garage".into()),
        access_key_id: Some("GK0000000001".into()),
        secret_access_key: Some("secret-secret-secret".into()),
        allow_http: Some(true),
        retry,
        ..Default::default()
    };
    (RunStore::open("s3://bucket/run", &opts).unwrap(), port)
}

/// Nothing listens on the port: the error says the store is unreachable,
/// names the endpoint, and comes within the (small) retry budget; the
/// uploader retries with backoff, then reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_reported_fast_and_the_uploader_gives_up() {
    let (store, port) = unreachable_store(RetryOptions::quick());
    let t = Instant::now();
    let e = store.check().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

    let config = checkpoint::UploaderConfig {
        attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
        keep_last: 2,
        milestone_every: 0,
    };
    let (up, mut events) = checkpoint::Uploader::start(store, config);
    up.submit(checkpoint_of(5), checkpoint::Reason::Signal);
    match up.flush().await {
        Some(checkpoint::UploadEvent::Failed { step: 5, attempts: 3, error }) => {
            assert!(error.contains("cannot reach the object store"), "{error}")
        }
        other => panic!("expected a failure after 3 attempts, got {other:?}"),
    }
    let mut retries = 0;
    while let Ok(e) = events.try_recv() {
        retries += matches!(e, checkpoint::UploadEvent::Retrying { step: 5, .. }) as usize;
    }
    assert_eq!(retries, 2);
}

/// A newer checkpoint replaces one that is waiting between retries; the
/// newer one's own retries still wait their backoff (they once fired all at
/// once: the wake-up that ended the first wait was re-armed for every later
/// one). Nothing listens on the port, and the store does not retry by
/// itself, so an attempt fails at once and the time is the backoff's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseding_checkpoint_still_waits_its_backoff_between_attempts() {
    let (store, _) = unreachable_store(RetryOptions { max_retries: 0, ..RetryOptions::quick() });
    let backoff = Duration::from_millis(700);
    let config =
        checkpoint::UploaderConfig { attempts: 3, initial_backoff: backoff, max_backoff: backoff, keep_last: 2, milestone_every: 0 };
    let (up, mut events) = checkpoint::Uploader::start(store, config);
    up.submit(checkpoint_of(5), checkpoint::Reason::Steps);
    loop {
        match events.recv().await.expect("uploader events") {
            checkpoint::UploadEvent::Retrying { step: 5, .. } => break,
            checkpoint::UploadEvent::Failed { error, .. } => panic!("step 5 failed without retrying: {error}"),
            _ => {}
        }
    }
    let submitted = Instant::now();
    assert_eq!(up.submit(checkpoint_of(6), checkpoint::Reason::Steps), None, "step 5 was in flight, not waiting");
    match up.flush().await {
        Some(checkpoint::UploadEvent::Failed { step: 6, attempts: 3, .. }) => {}
        other => panic!("expected step 6 to fail after 3 attempts, got {other:?}"),
    }
    // Two waits of the backoff between its three attempts, at least.
    let took = submitted.elapsed();
    assert!(took >= 2 * backoff, "step 6's 3 attempts took {took:?}: its retries did not wait their backoff");
    let mut superseded = false;
    while let Ok(e) = events.try_recv() {
        superseded |= matches!(e, checkpoint::UploadEvent::Superseded { step: 5, by: 6 });
    }
    assert!(superseded, "step 5 should have given way to step 6");
}
