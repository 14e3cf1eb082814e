//! The shadow against a state thread fed directly: same updates, same bits.

use std::time::Duration;

use ddpm::config::{GradDtype, TrainConfig};
use ddpm::proto;
use ddpm::train::Outcome;

use super::*;

const DATASET: usize = 1000;

fn config() -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.model.image_size = 16;
    c
}

fn state() -> StateHandle {
    StateHandle::start(config(), None, DATASET).expect("tiny state")
}

fn outcome() -> Outcome {
    Outcome { apply: true, grad_norm: 0.5, clip_scale: 1.0 }
}

/// A made-up reduced gradient of step `step`.
fn gradient(len: usize, step: u64) -> Vec<f32> {
    (0..len).map(|i| ((i as u64 * 7 + step * 13) % 101) as f32 * 1e-4 - 5e-3).collect()
}

fn chunk(grad: &[f32], chunk_elements: usize, index: usize) -> proto::GradientChunk {
    let range = wire::chunk_ranges(grad.len(), chunk_elements).nth(index).unwrap();
    proto::GradientChunk { index: index as u32, data: wire::encode(&grad[range], GradDtype::F32) }
}

/// The checksum a state thread reaches with `steps` applied directly.
async fn direct_checksum(steps: &[(u64, Vec<f32>)]) -> u64 {
    let direct = state();
    for (s, g) in steps {
        direct.apply(*s, g.clone(), outcome()).await.unwrap();
    }
    direct.checksum().await.unwrap().1
}

#[tokio::test]
async fn star_commits_are_applied_in_order_and_read_at_their_step() {
    let shadow = Shadow::start(state(), ddpm::config::ShadowMode::On, 0, DATASET);
    let p = shadow.layout().total;
    let steps: Vec<(u64, Vec<f32>)> = (1..=3).map(|s| (s, gradient(p, s))).collect();
    // The checksum of step 2 asked for before step 2 is even committed is refused.
    assert!(matches!(shadow.checksum_at(2).await, Err(ShadowError::Past { .. })));
    shadow.commit_reduced(1, steps[0].1.clone(), outcome());
    shadow.commit_reduced(2, steps[1].1.clone(), outcome());
    let at2 = shadow.request_checksum(2).await.expect("step 2 is queued or just applied");
    shadow.commit_reduced(3, steps[2].1.clone(), outcome());
    shadow.wait_lag(0).await.unwrap();
    assert_eq!(at2.await.unwrap(), direct_checksum(&steps[..2]).await, "step 2's checksum, not step 3's");
    assert_eq!(shadow.checksum_at(3).await.unwrap(), direct_checksum(&steps).await);
    assert_eq!(shadow.steps(), (3, 3));
    let data = shadow.capture_at(3).await.unwrap();
    assert_eq!((data.step, data.skipped_steps), (3, 0));
}

#[tokio::test]
async fn a_ring_step_is_applied_once_every_chunk_came_from_its_owner_or_the_owners_predecessor() {
    let shadow = Shadow::start(state(), ddpm::config::ShadowMode::On, 0, DATASET);
    let p = shadow.layout().total;
    let ce = p / 6 + 1; // 6 chunks: rank 0 owns 0..2, rank 1 owns 2..4, rank 2 owns 4..6
    let grad = gradient(p, 1);
    shadow.expect_feed(1, 2, vec![10, 20, 30], GradDtype::F32, ce, outcome());
    let wrong = |r: Result<(), FeedError>| r.unwrap_err().to_string();
    assert!(wrong(shadow.offer(10, 1, 1, &chunk(&grad, ce, 0))).contains("no committed step 1 attempt 1"));
    assert!(wrong(shadow.offer(40, 1, 2, &chunk(&grad, ce, 0))).contains("worker 40 was not a member"));
    // Worker 10 (rank 0) feeds its own chunks and rank 1's, not rank 2's.
    assert!(wrong(shadow.offer(10, 1, 2, &chunk(&grad, ce, 4))).contains("fed by rank 2 and its predecessor, not by worker 10"));
    let short = proto::GradientChunk { index: 0, data: vec![0u8; 4].into() };
    assert!(matches!(shadow.offer(10, 1, 2, &short), Err(FeedError::Malformed(_))));
    for i in 0..4 {
        shadow.offer(10, 1, 2, &chunk(&grad, ce, i)).unwrap();
    }
    // The second copy of a chunk is taken as the first was: ignored.
    shadow.offer(20, 1, 2, &chunk(&grad, ce, 2)).unwrap();
    // Not complete yet: the loop would wait here with no lag allowed.
    assert!(tokio::time::timeout(Duration::from_millis(200), shadow.wait_lag(0)).await.is_err());
    shadow.wait_lag(1).await.unwrap();
    for i in 4..6 {
        shadow.offer(20, 1, 2, &chunk(&grad, ce, i)).unwrap();
    }
    shadow.wait_lag(0).await.unwrap();
    assert_eq!(shadow.checksum_at(1).await.unwrap(), direct_checksum(&[(1, grad)]).await);
}

/// A member may start feeding before the loop registered the step.
#[tokio::test]
async fn a_feed_that_comes_before_the_step_is_registered_waits_for_it() {
    let shadow = Shadow::start(state(), ddpm::config::ShadowMode::On, 0, DATASET);
    let p = shadow.layout().total;
    let early = tokio::spawn({
        let shadow = shadow.clone();
        async move { shadow.expecting(1, 0, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    shadow.expect_feed(1, 0, vec![1, 2], GradDtype::F32, p, outcome());
    early.await.unwrap().expect("registered meanwhile");
    let not_yet = shadow.expecting(2, 0, Duration::from_millis(50)).await.unwrap_err();
    assert!(not_yet.to_string().contains("no committed step 2 attempt 0"), "{not_yet}");
}

#[tokio::test]
async fn a_step_breaks_the_shadow_only_when_both_feeders_of_a_missing_chunk_left() {
    let shadow = Shadow::start(state(), ddpm::config::ShadowMode::On, 0, DATASET);
    let p = shadow.layout().total;
    let ce = p / 6 + 1;
    let grad = gradient(p, 1);
    shadow.expect_feed(1, 0, vec![1, 2, 3], GradDtype::F32, ce, outcome());
    // Worker 1 (rank 0) fed its own chunks and left: rank 1's chunks,
    // which it fed too, still have worker 2.
    for i in 0..2 {
        shadow.offer(1, 1, 0, &chunk(&grad, ce, i)).unwrap();
    }
    shadow.member_lost(1);
    assert!(shadow.broken().is_none());
    // Chunks 2..4 (rank 1's) now have no feeder once worker 2 leaves.
    shadow.member_lost(2);
    let e = shadow.wait_lag(0).await.unwrap_err();
    assert!(e.to_string().contains("broken since step 1") && e.to_string().contains("worker 2 left"), "{e}");
    assert!(e.to_string().contains("chunk 2"), "{e}");
    assert!(matches!(shadow.checksum_at(1).await, Err(ShadowError::Broken { step: 1, .. })));
    assert_eq!(shadow.steps(), (0, 1), "the shadow stays at the step before");
}

/// Each chunk crosses once: the spare of rank r's chunks is asked of its
/// predecessor only when r left, its feed ended without them, or its feed
/// has not begun `SPARE_GRACE` into the wait; each spare once; and never
/// of a holder that left too.
#[tokio::test]
async fn a_spare_is_asked_for_only_when_its_owner_did_not_feed() {
    let shadow = Shadow::start(state(), ddpm::config::ShadowMode::On, 0, DATASET);
    let p = shadow.layout().total;
    let ce = p / 6 + 1; // rank 0 (worker 1) owns chunks 0..2, rank 1 (2) 2..4, rank 2 (3) 4..6
    let grad = gradient(p, 1);
    shadow.expect_feed(1, 0, vec![1, 2, 3], GradDtype::F32, ce, outcome());
    let short = Duration::from_millis(100);
    let asked = |waited| shadow.spares_wanted(waited).into_iter().map(|(holder, f)| (holder, f.step, f.attempt)).collect::<Vec<_>>();
    // Worker 1 feeds all of its chunks; worker 2's feed is open, worker 3 has not begun.
    {
        let _one = shadow.open_feed(1, 1, 0);
        for i in 0..2 {
            shadow.offer(1, 1, 0, &chunk(&grad, ce, i)).unwrap();
        }
    }
    let two = shadow.open_feed(2, 1, 0);
    shadow.offer(2, 1, 0, &chunk(&grad, ce, 2)).unwrap();
    assert_eq!(asked(short), [], "every owner fed, is feeding or may still begin");
    // Past the grace, worker 3 (rank 2) is taken as one that will not feed: worker 2 holds its spare.
    assert_eq!(asked(spares::SPARE_GRACE), [(2, 1, 0)]);
    assert_eq!(asked(spares::SPARE_GRACE), [], "asked once");
    // Worker 2's feed ends without chunk 3: its spare is worker 1's.
    drop(two);
    assert_eq!(asked(short), [(1, 1, 0)]);
    // The spares come; the step completes as if the owners had fed.
    shadow.offer(1, 1, 0, &chunk(&grad, ce, 3)).unwrap();
    for i in 4..6 {
        shadow.offer(2, 1, 0, &chunk(&grad, ce, i)).unwrap();
    }
    shadow.wait_lag(0).await.unwrap();
    assert_eq!(shadow.checksum_at(1).await.unwrap(), direct_checksum(&[(1, grad.clone())]).await);

    // Step 2: worker 2 left before it fed; worker 1 keeps its spare. Worker
    // 3 left too: its spare holder is gone, nothing is asked of it.
    let grad2 = gradient(p, 2);
    shadow.expect_feed(2, 0, vec![1, 2, 3], GradDtype::F32, ce, outcome());
    shadow.member_lost(2);
    assert_eq!(asked(short), [(1, 2, 0)], "the owner left: at once");
    for i in [0, 1, 4, 5] {
        shadow.offer(if i < 2 { 1 } else { 3 }, 2, 0, &chunk(&grad2, ce, i)).unwrap();
    }
    shadow.member_lost(3);
    assert_eq!(asked(spares::SPARE_GRACE), [], "rank 2's chunks came; rank 1's spare was asked already");
    assert!(shadow.broken().is_none(), "worker 1 still holds rank 1's spare");
    for i in 2..4 {
        shadow.offer(1, 2, 0, &chunk(&grad2, ce, i)).unwrap();
    }
    shadow.wait_lag(0).await.unwrap();
    assert_eq!(shadow.steps(), (2, 2));
}
