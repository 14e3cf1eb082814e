//! Unit tests of the round, without sockets.

use super::*;
use ddpm::ring::RingFaultKind;

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
        chunk_norms: Vec::new(),
    }
}

/// A ring member's header, with the norms of its own gradient's chunks.
fn ring_header(worker_id: u64, step: u64, elements: u64, chunk_norms: &[f64]) -> proto::GradientHeader {
    proto::GradientHeader { chunk_norms: chunk_norms.to_vec(), ..header(worker_id, step, elements) }
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
    assert_eq!(round.offer(r, chunk(0, &[1.0])).unwrap_err().to_string(), "chunk 0 has 4 bytes, expected 8 (2 f32 elements)");
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
    let sends = round.fail(RoundFailure::new(Some(2), "bad chunk".into()));
    let errs: Vec<_> = sends.iter().map(|(_, e)| e.clone()).collect();
    assert!(matches!(&errs[0], RoundError::Abandoned { step: 1, .. }), "{errs:?}");
    assert_eq!(errs[1], RoundError::Refused("bad chunk".into()));
    assert!(rx.await.unwrap().is_err());
    assert!(round.is_finished());
    assert!(round.fail(RoundFailure::new(None, "again".into())).is_empty(), "a round fails once");
}

/// Ring backend: each member uploads only its own segment's reduced
/// chunks, in order; the round keeps them as sent, waits for every
/// member's header, and sends back the outcome alone.
#[tokio::test]
async fn a_ring_round_keeps_each_owners_segment_and_completes_with_every_header() {
    // 5 elements in chunks of 2: chunks 0, 1, 2; two members own [0] and [1, 2].
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 5, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let (o1, mut r1) = mpsc::channel(16);
    let (o2, _r2) = mpsc::channel(16);
    // Each member's own chunks as long as the reduced ones: the audit's bound.
    let a = round.join(&ring_header(10, 1, 5, &[5.0, 0.0, 12.0]), o1).unwrap();
    assert!(matches!(round.offer(a, chunk(1, &[1.0, 1.0])), Err(OfferError::NotOwned { index: 1, owner: 1 })));
    assert!(round.offer(a, chunk(0, &[3.0, 4.0])).unwrap().is_empty());
    assert_eq!(round.stragglers(), vec![20], "member 20 owes its header and its segment");
    assert!(matches!(round.offer(1, chunk(2, &[0.0])), Err(OfferError::OutOfOrder { index: 2, due: 1 })));
    assert!(round.offer(1, chunk(1, &[0.0, 0.0])).unwrap().is_empty());
    // Every chunk is in, but member 20 has not joined: not complete yet.
    assert!(round.offer(1, chunk(2, &[12.0])).unwrap().is_empty());
    assert!(!round.is_finished());
    round.join(&ring_header(20, 1, 5, &[5.0, 0.0, 12.0]), o2).unwrap();
    assert!(round.pending_failure().is_none());
    let sends = round.after_join();
    assert_eq!(sends.len(), 2, "the outcome to both members, no chunks");
    for (o, m) in sends {
        o.send(Ok(m)).await.unwrap();
    }
    assert!(matches!(r1.recv().await.unwrap().unwrap().kind, Some(reduced_message::Kind::Outcome(_))));
    let result = rx.await.unwrap().ok().unwrap();
    assert_eq!(result.reduced, vec![3.0, 4.0, 0.0, 0.0, 12.0]);
    assert_eq!(result.outcome.grad_norm, 13.0);
}

/// Ring backend: the coordinator never sees a member's own gradient, so it
/// screens the chunk norms in the headers, as the star screens chunks.
#[tokio::test]
async fn a_ring_round_screens_its_members_chunk_norms_before_any_outcome() {
    // 6 elements in chunks of 2: 3 chunks; three members own one each.
    let ring = |screening: Screening| {
        let (round, rx) = Round::new(1, 0, vec![10, 20, 30], &[1, 1, 1], 6, 2, GradDtype::F32, 0.0);
        (round.ring().screened(screening), rx)
    };
    // A NaN in one member's chunk while the others' are finite.
    let (round, rx) = ring(Screening::default());
    let outs: Vec<_> = (0..3).map(|_| mpsc::channel(16)).collect();
    round.join(&ring_header(10, 1, 6, &[1.0, 2.0, 3.0]), outs[0].0.clone()).unwrap();
    round.join(&ring_header(20, 1, 6, &[1.0, f64::NAN, 3.0]), outs[1].0.clone()).unwrap();
    assert!(round.pending_failure().is_none(), "not judged before every header is in");
    for rank in 0..2 {
        assert!(round.offer(rank, chunk(rank as u32, &[0.0, 0.0])).unwrap().is_empty());
    }
    round.join(&ring_header(30, 1, 6, &[1.0, 2.0, 3.0]), outs[2].0.clone()).unwrap();
    let failure = round.pending_failure().expect("screened out");
    assert_eq!(failure.culprit, Some(20));
    assert!(failure.reason.contains("non-finite") && failure.reason.contains("chunk 1"), "{}", failure.reason);
    assert!(round.pending_failure().is_none(), "reported once");
    // Every chunk and header is in, but no outcome goes out.
    assert!(round.offer(2, chunk(2, &[0.0, 0.0])).unwrap().is_empty());
    assert!(round.after_join().is_empty() && !round.is_finished());
    let sends = round.fail(failure);
    assert_eq!(sends.len(), 3);
    assert!(matches!(rx.await.unwrap(), Err(RoundFailure { culprit: Some(20), .. })));

    // A norm over 100x the last step's median of that chunk.
    let reference = Some(std::sync::Arc::new(vec![1.0, 1.0, 1.0]));
    let (round, _rx) = ring(Screening { factor: 100.0, reference: reference.clone() });
    for (id, norms) in [(10, [1.0, 1.0, 1.0]), (20, [1.0, 1.0, 1.0]), (30, [1.0, 1.0, 1e20])] {
        round.join(&ring_header(id, 1, 6, &norms), mpsc::channel(16).0).unwrap();
    }
    let failure = round.pending_failure().expect("screened out");
    assert_eq!(failure.culprit, Some(30));
    assert!(failure.reason.contains("over 100x the reference"), "{}", failure.reason);

    // Honest norms pass, and their medians are the next step's reference.
    let (round, rx) = ring(Screening { factor: 100.0, reference });
    for (id, norms) in [(10, [1.0, 2.0, 5.0]), (20, [2.0, 4.0, 6.0]), (30, [3.0, 6.0, 7.0])] {
        round.join(&ring_header(id, 1, 6, &norms), mpsc::channel(16).0).unwrap();
    }
    assert!(round.pending_failure().is_none());
    for rank in 0..2 {
        assert!(round.offer(rank, chunk(rank as u32, &[0.0, 1.0])).unwrap().is_empty());
    }
    assert_eq!(round.offer(2, chunk(2, &[0.0, 1.0])).unwrap().len(), 3, "the outcome to every member");
    assert_eq!(rx.await.unwrap().ok().unwrap().chunk_medians, vec![2.0, 4.0, 6.0]);
}

/// Ring backend: honest norms in the headers, but a reduced chunk longer
/// than its members' chunks together. Someone lied and nobody can be
/// named: no outcome goes out, and the failure asks for a star redo.
#[tokio::test]
async fn a_ring_round_whose_reduced_chunk_outgrows_its_members_norms_fails_without_a_culprit() {
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 4, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let (o1, mut r1) = mpsc::channel(16);
    let (o2, mut r2) = mpsc::channel(16);
    round.join(&ring_header(10, 1, 4, &[1.0, 1.0]), o1).unwrap();
    round.join(&ring_header(20, 1, 4, &[1.0, 1.0]), o2).unwrap();
    assert!(round.pending_failure().is_none(), "the headers' norms pass screening");
    assert!(round.offer(0, chunk(0, &[0.6, 0.8])).unwrap().is_empty());
    assert!(round.offer(1, chunk(1, &[1e20, 0.0])).unwrap().is_empty(), "no outcome");
    let failure = round.pending_failure().expect("the audit failed");
    assert_eq!(failure.culprit, None);
    assert!(failure.needs_star);
    assert!(failure.reason.contains("step 1 attempt 0: the reduced chunk 1 has norm 1.000e20"), "{}", failure.reason);
    assert!(round.pending_failure().is_none(), "reported once");
    assert!(round.after_join().is_empty() && !round.is_finished(), "audited once: never finishes");
    deliver(round.fail(failure)).await;
    for r in [&mut r1, &mut r2] {
        assert!(matches!(r.recv().await.unwrap(), Err(RoundError::Abandoned { .. })));
    }
    assert!(matches!(rx.await.unwrap(), Err(RoundFailure { culprit: None, needs_star: true, .. })));
}

#[test]
fn a_ring_header_without_one_norm_per_chunk_or_with_a_negative_one_is_refused() {
    let (round, _rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 6, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let e = round.join(&ring_header(10, 1, 6, &[1.0, 2.0]), mpsc::channel(16).0).unwrap_err();
    assert!(matches!(e, RoundError::BadNorms { worker: 10, .. }), "{e}");
    assert!(e.to_string().contains("sent 2 chunk norms") && e.to_string().contains("has 3 chunks"), "{e}");
    let e = round.join(&ring_header(10, 1, 6, &[1.0, -2.0, 0.0]), mpsc::channel(16).0).unwrap_err();
    assert!(e.to_string().contains("the norm -2 for chunk 1"), "{e}");
    // The star's headers carry none.
    let (star, _rx) = Round::new(1, 0, vec![10], &[1], 6, 2, GradDtype::F32, 0.0);
    star.join(&header(10, 1, 6), mpsc::channel(16).0).unwrap();
}

fn fault(suspect: u64, kind: RingFaultKind, reason: &str) -> FaultReport {
    FaultReport { suspect, kind: Some(kind), reason: reason.into() }
}

/// The culprit of a broken ring is the member named that reported
/// nothing itself (a frozen member reports nothing; the one after it names
/// it; the one before it names the next, which did report).
#[tokio::test]
async fn a_ring_verdict_names_the_silent_suspect() {
    let (round, _rx) = Round::new(1, 0, vec![1, 2, 3], &[1, 1, 1], 6, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    // 2 is frozen: 3 (after it) names 2, 1 (before it) names 3.
    assert!(round.report_fault(2, fault(2, RingFaultKind::Stalled, "the predecessor sent nothing")));
    assert!(!round.report_fault(0, fault(9, RingFaultKind::Closed, "not a member")), "a suspect outside the step is refused");
    assert!(!round.report_fault(0, fault(1, RingFaultKind::Closed, "itself")));
    assert!(round.report_fault(0, fault(3, RingFaultKind::Closed, "the successor could not be written to")));
    let failure = round.ring_verdict(std::time::Duration::from_secs(60)).await;
    assert_eq!(failure.culprit, Some(2));
    assert!(failure.reason.contains("worker 3 reported that the predecessor sent nothing"), "{}", failure.reason);
}

#[tokio::test(start_paused = true)]
async fn a_lone_report_is_decided_after_the_window() {
    let (round, _rx) = Round::new(1, 0, vec![1, 2, 3], &[1, 1, 1], 6, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    round.report_fault(1, fault(1, RingFaultKind::Closed, "the predecessor closed the connection"));
    let failure = round.ring_verdict(std::time::Duration::from_secs(2)).await;
    assert_eq!(failure.culprit, Some(1));
    // The star never gives a verdict.
    let (star, _rx) = Round::new(1, 0, vec![1, 2], &[1, 1], 6, 2, GradDtype::F32, 0.0);
    assert!(tokio::time::timeout(std::time::Duration::from_secs(5), star.ring_verdict(std::time::Duration::ZERO)).await.is_err());
}
