//! The uploader against a store that fails on command ([`FaultPlan`]),
//! under tokio's paused clock: backoffs are checked to the millisecond
//! without waiting for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::checkpoint::{self, step_dir, CheckpointData, Reason};
use crate::config::TrainConfig;
use crate::data::OrderState;
use crate::store::faulty::{Fault, FaultPlan};
use crate::store::{RunStore, StoreOptions};
use crate::train::flat::Layout;

fn checkpoint_of(step: u64) -> CheckpointData {
    let layout = Layout::from_named(vec![("conv_in.weight".into(), vec![4, 3, 3, 3]), ("conv_in.bias".into(), vec![4])]);
    let n = layout.total;
    let v = |k: u64| (0..n).map(|i| (i as u64 * 7 + k * 13 + step) as f32 / 100.0).collect::<Vec<f32>>();
    let config = TrainConfig::tiny();
    CheckpointData {
        step,
        adam_step: step,
        skipped_steps: 0,
        order: OrderState { seed: config.train.seed, dataset_len: 100, batch_size: config.train.batch_size, step },
        config,
        layout,
        params: v(1),
        adam_m: v(2),
        adam_v: v(3),
        ema: v(4),
    }
}

fn faulty_store(dir: &std::path::Path) -> (RunStore, Arc<FaultPlan>) {
    let plan = FaultPlan::new();
    let store = RunStore::open(dir.to_str().unwrap(), &StoreOptions::default()).unwrap().with_faults(plan.clone());
    (store, plan)
}

const CONFIG: UploaderConfig = UploaderConfig {
    attempts: 5,
    initial_backoff: Duration::from_secs(2),
    max_backoff: Duration::from_secs(8),
    keep_last: 3,
    milestone_every: 0,
};

/// Waits for the event `want` picks, returning it; panics on a failure.
async fn until(events: &mut UnboundedReceiver<UploadEvent>, want: impl Fn(&UploadEvent) -> bool) -> UploadEvent {
    loop {
        let e = events.recv().await.expect("uploader events");
        if want(&e) {
            return e;
        }
    }
}

/// The gaps between successive attempts on `step`'s files, in whole ms
/// (the writes of one attempt share its instant: the clock is paused).
fn gaps(plan: &FaultPlan, step: u64) -> Vec<u128> {
    let mut t = plan.attempts_on(&step_dir(step));
    t.dedup();
    t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_superseding_checkpoint_keeps_the_backoff_schedule_and_lands_when_the_store_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (store, plan) = faulty_store(dir.path());
    plan.fail_writes(Some(Fault::Unreachable));
    let (up, mut events) = Uploader::start(store.clone(), CONFIG);
    up.submit(checkpoint_of(5), Reason::Steps);
    until(&mut events, |e| matches!(e, UploadEvent::Retrying { step: 5, .. })).await;
    // Step 6 replaces step 5 while step 5 waits out its backoff.
    up.submit(checkpoint_of(6), Reason::Steps);
    until(&mut events, |e| matches!(e, UploadEvent::Superseded { step: 5, by: 6 })).await;
    until(&mut events, |e| matches!(e, UploadEvent::Retrying { step: 6, attempt: 3, .. })).await;
    // Its attempts kept their schedule: 2 s, then 4 s (not all at once).
    assert_eq!(gaps(&plan, 6), vec![2000, 4000]);
    // The store comes back: the next attempt (after 8 s) lands.
    plan.fail_writes(None);
    match up.flush().await {
        Some(UploadEvent::Saved { step: 6, attempts: 4, .. }) => {}
        other => panic!("expected step 6 saved at its 4th attempt, got {other:?}"),
    }
    assert_eq!(gaps(&plan, 6)[..3], [2000, 4000, 8000]);
    let latest = checkpoint::load_latest(&store).await.unwrap().expect("a checkpoint");
    assert_eq!(latest.data.step, 6);
    assert_eq!(latest.data.params, checkpoint_of(6).params);
    up.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_store_fails_at_once_and_the_failed_attempts_leave_nothing_a_resume_would_pick_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, plan) = faulty_store(dir.path());
    let (up, mut events) = Uploader::start(store.clone(), CONFIG);
    up.submit(checkpoint_of(3), Reason::Steps);
    assert!(matches!(up.flush().await, Some(UploadEvent::Saved { step: 3, .. })));
    plan.fail_writes(Some(Fault::Full));
    up.submit(checkpoint_of(4), Reason::Steps);
    match up.flush().await {
        Some(UploadEvent::Failed { step: 4, attempts: 1, error }) => {
            assert!(error.contains("No space left on device") && error.contains("free space"), "{error}");
        }
        other => panic!("a full store is permanent: expected one attempt, got {other:?}"),
    }
    // Unreachable in the middle of a later checkpoint (two of its files
    // written): retried to the end, then failed.
    plan.fail_writes_after(2, Fault::Unreachable);
    up.submit(checkpoint_of(7), Reason::Steps);
    let failed = until(&mut events, |e| matches!(e, UploadEvent::Failed { step: 7, .. })).await;
    assert!(matches!(failed, UploadEvent::Failed { attempts: 5, .. }), "{failed:?}");
    assert_eq!(gaps(&plan, 7), vec![2000, 4000, 8000, 8000]);
    // A resume takes step 3, the last one complete; step 7 is torn and skipped.
    plan.fail_writes(None);
    let torn = store.list(&step_dir(7)).await.unwrap();
    assert!(!torn.is_empty(), "the first files of step 7 were written");
    let latest = checkpoint::load_latest(&store).await.unwrap().expect("a checkpoint");
    assert_eq!(latest.data.step, 3);
    up.close().await;
}
