//! Unit tests of the round, without sockets.

use super::*;

fn header(worker_id: u64, step: u64, elements: u64) -> proto::GradientHeader {
    proto::GradientHeader {
        worker_id,
        step,
        attempt: 0,
        elements,
        dtype: proto::GradDtype::F32 as i32,
        loss: 1.0,
        samples: 1,
        compute_s: 0.0,
    }
}

fn chunk(index: u32, v: &[f32]) -> proto::GradientChunk {
    proto::GradientChunk { index, data: wire::encode(v, GradDtype::F32) }
}

#[tokio::test]
async fn reduces_weighted_in_rank_order_whatever_the_arrival_order() {
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[3, 1], 5, 2, GradDtype::F32, 0.0);
    let (o1, mut r1) = mpsc::channel(16);
    let (o2, _r2) = mpsc::channel(16);
    let a = round.join(&header(10, 1, 5), o1).unwrap();
    let b = round.join(&header(20, 1, 5), o2).unwrap();
    assert!(round.offer(b, chunk(0, &[4.0, 8.0])).unwrap().is_empty());
    let sends = round.offer(a, chunk(0, &[0.0, 4.0])).unwrap();
    assert_eq!(sends.len(), 2);
    for (o, m) in sends {
        o.send(Ok(m)).await.unwrap();
    }
    match r1.recv().await.unwrap().unwrap().kind {
        Some(reduced_message::Kind::Chunk(c)) => {
            let mut out = [0f32; 2];
            wire::decode_into(&c.data, GradDtype::F32, 0, &mut out).unwrap();
            assert_eq!(out, [1.0, 5.0]);
        }
        other => panic!("{other:?}"),
    }
    round.offer(a, chunk(1, &[1.0, 1.0])).unwrap();
    round.offer(a, chunk(2, &[2.0])).unwrap();
    round.offer(b, chunk(1, &[1.0, 1.0])).unwrap();
    let last = round.offer(b, chunk(2, &[2.0])).unwrap();
    assert_eq!(last.len(), 4, "chunk 2 and the outcome to both members");
    let result = rx.await.unwrap().ok().unwrap();
    assert_eq!(result.reduced, vec![1.0, 5.0, 1.0, 1.0, 2.0]);
    assert!(result.outcome.apply);
    assert!((result.outcome.grad_norm - (1.0f64 + 25.0 + 1.0 + 1.0 + 4.0).sqrt()).abs() < 1e-12);
}

#[tokio::test]
async fn bad_chunks_are_rejected_with_the_reason() {
    let (round, _rx) = Round::new(3, 0, vec![1], &[4], 5, 2, GradDtype::F32, 1.0);
    let (o, _r) = mpsc::channel(4);
    let e = round.join(&header(1, 3, 6), o.clone()).unwrap_err();
    assert!(e.to_string().contains("6 elements") && e.to_string().contains("5 parameters"), "{e}");
    assert!(matches!(round.join(&header(2, 3, 5), o.clone()).unwrap_err(), RoundError::NotMember { .. }));
    assert!(matches!(round.join(&header(1, 4, 5), o.clone()).unwrap_err(), RoundError::WrongStep { .. }));
    let r = round.join(&header(1, 3, 5), o).unwrap();
    assert_eq!(
        round.offer(r, chunk(0, &[1.0])).unwrap_err().to_string(),
        "chunk 0 has 4 bytes, expected 8 (2 f32 elements)"
    );
    assert!(matches!(round.offer(r, chunk(9, &[1.0])).unwrap_err(), OfferError::Malformed(WireError::BadIndex { .. })));
    round.offer(r, chunk(0, &[1.0, 2.0])).unwrap();
    assert!(matches!(round.offer(r, chunk(0, &[1.0, 2.0])).unwrap_err(), OfferError::Malformed(WireError::Duplicate { .. })));
}

#[tokio::test]
async fn a_non_finite_gradient_means_skip() {
    let (round, rx) = Round::new(1, 0, vec![1], &[2], 2, 2, GradDtype::F32, 1.0);
    let (o, _r) = mpsc::channel(4);
    let r = round.join(&header(1, 1, 2), o).unwrap();
    round.offer(r, chunk(0, &[f32::NAN, 1.0])).unwrap();
    let result = rx.await.unwrap().ok().unwrap();
    assert!(!result.outcome.apply);
}

#[tokio::test]
async fn failing_a_round_aborts_the_others_and_blames_the_culprit() {
    let (round, rx) = Round::new(1, 0, vec![1, 2], &[1, 1], 2, 2, GradDtype::F32, 1.0);
    let (o1, _r1) = mpsc::channel(4);
    let (o2, _r2) = mpsc::channel(4);
    round.join(&header(1, 1, 2), o1).unwrap();
    round.join(&header(2, 1, 2), o2).unwrap();
    let sends = round.fail(RoundFailure { culprit: Some(2), reason: "bad chunk".into() });
    let errs: Vec<_> = sends.iter().map(|(_, e)| e.clone()).collect();
    assert!(matches!(&errs[0], RoundError::Abandoned { step: 1, .. }), "{errs:?}");
    assert_eq!(errs[1], RoundError::Refused("bad chunk".into()));
    assert!(rx.await.unwrap().is_err());
    assert!(round.is_finished());
    assert!(round.fail(RoundFailure { culprit: None, reason: "again".into() }).is_empty(), "a round fails once");
}
