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

/// Ring backend: an owner's scalars for one reduced chunk.
fn seg(index: u32, v: &[f32]) -> proto::SegmentDigest {
    let (sumsq, digest) = wire::digest::chunk_scalars(v);
    proto::SegmentDigest { index, sumsq, digest }
}

/// The replica digest of a gradient with these chunks.
fn replica(chunks: &[&[f32]]) -> u64 {
    wire::digest::replica_digest(chunks.iter().map(|c| wire::digest::chunk_digest(c)))
}

/// Ring backend: each member reports the scalars of its own segment's
/// reduced chunks, in order, then its replica's digest; the round commits
/// on them once every header is in, and sends back the outcome alone. No
/// gradient byte is taken.
#[tokio::test]
async fn a_ring_round_commits_on_its_owners_scalars_and_every_replicas_digest() {
    // 5 elements in chunks of 2: chunks 0, 1, 2; two members own [0] and [1, 2].
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 5, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let (o1, mut r1) = mpsc::channel(16);
    let (o2, _r2) = mpsc::channel(16);
    let reduced: [&[f32]; 3] = [&[3.0, 4.0], &[0.0, 0.0], &[12.0]];
    // Each member's own chunks as long as the reduced ones: the audit's bound.
    let a = round.join(&ring_header(10, 1, 5, &[5.0, 0.0, 12.0]), o1).unwrap();
    assert!(matches!(round.offer(a, chunk(0, &[3.0, 4.0])), Err(OfferError::ChunkInRing { index: 0 })), "no bytes on a ring step");
    assert!(matches!(round.offer_segment(a, &seg(1, &[1.0, 1.0])), Err(OfferError::NotOwned { index: 1, owner: 1 })));
    assert!(round.offer_segment(a, &seg(0, reduced[0])).unwrap().is_empty());
    assert_eq!(round.stragglers(), vec![10, 20], "10 owes its replica's digest, 20 everything");
    assert!(matches!(round.offer_segment(1, &seg(2, reduced[2])), Err(OfferError::OutOfOrder { index: 2, due: 1 })));
    assert!(matches!(
        round.offer_segment(1, &proto::SegmentDigest { index: 1, sumsq: -1.0, digest: 0 }),
        Err(OfferError::BadSumsq { index: 1, .. })
    ));
    assert!(round.offer_segment(1, &seg(1, reduced[1])).unwrap().is_empty());
    assert!(round.offer_segment(1, &seg(2, reduced[2])).unwrap().is_empty());
    assert!(round.offer_replica(0, replica(&reduced)).unwrap().is_empty());
    assert!(matches!(round.offer_replica(0, replica(&reduced)), Err(OfferError::SecondReplica)));
    // Every chunk is in, but member 20 has neither joined nor reported its replica.
    assert!(!round.is_finished());
    round.join(&ring_header(20, 1, 5, &[5.0, 0.0, 12.0]), o2).unwrap();
    assert!(round.pending_failure().is_none());
    assert!(round.after_join().is_empty(), "member 20's replica is still due");
    assert_eq!(round.stragglers(), vec![20]);
    let sends = round.offer_replica(1, replica(&reduced)).unwrap();
    assert_eq!(sends.len(), 2, "the outcome to both members, no chunks");
    for (o, m) in sends {
        o.send(Ok(m)).await.unwrap();
    }
    assert!(matches!(r1.recv().await.unwrap().unwrap().kind, Some(reduced_message::Kind::Outcome(_))));
    let result = rx.await.unwrap().ok().unwrap();
    assert!(result.reduced.is_empty(), "the coordinator holds no gradient on the step's path");
    assert_eq!(result.outcome.grad_norm, 13.0);
}

/// Ring backend: a replica whose copy is not the one the owners measured
/// (a member that forwarded other bytes in the all-gather) holds the
/// outcome back; the step is redone through the star.
#[tokio::test]
async fn a_ring_round_whose_replica_differs_from_its_owners_digests_is_redone_through_the_star() {
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 4, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let reduced: [&[f32]; 2] = [&[0.6, 0.8], &[0.0, 1.0]];
    round.join(&ring_header(10, 1, 4, &[1.0, 1.0]), mpsc::channel(16).0).unwrap();
    round.join(&ring_header(20, 1, 4, &[1.0, 1.0]), mpsc::channel(16).0).unwrap();
    assert!(round.offer_segment(0, &seg(0, reduced[0])).unwrap().is_empty());
    assert!(round.offer_segment(1, &seg(1, reduced[1])).unwrap().is_empty());
    assert!(round.offer_replica(0, replica(&reduced)).unwrap().is_empty());
    assert!(round.offer_replica(1, replica(&[reduced[0], &[0.0, 1.5]])).unwrap().is_empty(), "no outcome");
    let failure = round.pending_failure().expect("the replicas differ");
    assert!(failure.needs_star && failure.culprit.is_none());
    assert!(failure.reason.contains("worker(s) [20]"), "{}", failure.reason);
    deliver(round.fail(failure)).await;
    assert!(matches!(rx.await.unwrap(), Err(RoundFailure { culprit: None, needs_star: true, .. })));
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
    let zeros: [&[f32]; 3] = [&[0.0, 0.0], &[0.0, 0.0], &[0.0, 0.0]];
    // A NaN in one member's chunk while the others' are finite.
    let (round, rx) = ring(Screening::default());
    let outs: Vec<_> = (0..3).map(|_| mpsc::channel(16)).collect();
    round.join(&ring_header(10, 1, 6, &[1.0, 2.0, 3.0]), outs[0].0.clone()).unwrap();
    round.join(&ring_header(20, 1, 6, &[1.0, f64::NAN, 3.0]), outs[1].0.clone()).unwrap();
    assert!(round.pending_failure().is_none(), "not judged before every header is in");
    for (rank, chunk) in zeros.iter().take(2).enumerate() {
        assert!(round.offer_segment(rank, &seg(rank as u32, chunk)).unwrap().is_empty());
        assert!(round.offer_replica(rank, replica(&zeros)).unwrap().is_empty());
    }
    round.join(&ring_header(30, 1, 6, &[1.0, 2.0, 3.0]), outs[2].0.clone()).unwrap();
    let failure = round.pending_failure().expect("screened out");
    assert_eq!(failure.culprit, Some(20));
    assert!(failure.reason.contains("non-finite") && failure.reason.contains("chunk 1"), "{}", failure.reason);
    assert!(round.pending_failure().is_none(), "reported once");
    // Every digest and header is in, but no outcome goes out.
    assert!(round.offer_segment(2, &seg(2, zeros[2])).unwrap().is_empty());
    assert!(round.offer_replica(2, replica(&zeros)).unwrap().is_empty());
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
    let ones: [&[f32]; 3] = [&[0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0]];
    for (rank, chunk) in ones.iter().enumerate() {
        assert!(round.offer_segment(rank, &seg(rank as u32, chunk)).unwrap().is_empty());
    }
    for rank in 0..2 {
        assert!(round.offer_replica(rank, replica(&ones)).unwrap().is_empty());
    }
    assert_eq!(round.offer_replica(2, replica(&ones)).unwrap().len(), 3, "the outcome to every member");
    assert_eq!(rx.await.unwrap().ok().unwrap().chunk_medians, vec![2.0, 4.0, 6.0]);
}

/// Ring backend: honest norms in the headers, but a reduced chunk whose
/// sum of squares outgrows its members' chunks together. Someone lied and
/// nobody can be named: no outcome goes out, and the failure asks for a
/// star redo.
#[tokio::test]
async fn a_ring_round_whose_reduced_chunk_outgrows_its_members_norms_fails_without_a_culprit() {
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 4, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    let (o1, mut r1) = mpsc::channel(16);
    let (o2, mut r2) = mpsc::channel(16);
    round.join(&ring_header(10, 1, 4, &[1.0, 1.0]), o1).unwrap();
    round.join(&ring_header(20, 1, 4, &[1.0, 1.0]), o2).unwrap();
    assert!(round.pending_failure().is_none(), "the headers' norms pass screening");
    let reduced: [&[f32]; 2] = [&[0.6, 0.8], &[1e20, 0.0]];
    assert!(round.offer_segment(0, &seg(0, reduced[0])).unwrap().is_empty());
    assert!(round.offer_segment(1, &seg(1, reduced[1])).unwrap().is_empty());
    assert!(round.offer_replica(0, replica(&reduced)).unwrap().is_empty());
    assert!(round.offer_replica(1, replica(&reduced)).unwrap().is_empty(), "no outcome");
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

/// Ring backend: a member whose ring took its norms sends them after its
/// header; the step waits for them, screens them when the last are in and
/// refuses a second set, a wrong count, and norms on a star step.
#[tokio::test]
async fn a_ring_round_waits_for_norms_sent_after_the_header() {
    let (round, rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 4, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    round.join(&ring_header(10, 1, 4, &[1.0, 1.0]), mpsc::channel(16).0).unwrap();
    round.join(&header(20, 1, 4), mpsc::channel(16).0).unwrap();
    let reduced: [&[f32]; 2] = [&[0.6, 0.8], &[0.0, 1.0]];
    assert!(round.offer_segment(0, &seg(0, reduced[0])).unwrap().is_empty());
    assert!(round.offer_segment(1, &seg(1, reduced[1])).unwrap().is_empty());
    assert!(round.offer_replica(0, replica(&reduced)).unwrap().is_empty());
    assert!(round.offer_replica(1, replica(&reduced)).unwrap().is_empty(), "no outcome before rank 1's norms");
    let e = round.offer_norms(1, vec![1.0]).unwrap_err();
    assert!(e.to_string().contains("sent 1 chunk norms, but the ring round has 2 chunks"), "{e}");
    let e = round.offer_norms(0, vec![1.0, 1.0]).unwrap_err();
    assert!(e.to_string().contains("a second time"), "{e}");
    assert_eq!(round.offer_norms(1, vec![1.0, 1.0]).unwrap().len(), 2, "the outcome to both members");
    assert!(rx.await.unwrap().is_ok());

    // Screened when they come: a NaN names its member.
    let (round, _rx) = Round::new(1, 0, vec![10, 20], &[1, 1], 4, 2, GradDtype::F32, 0.0);
    let round = round.ring();
    round.join(&header(10, 1, 4), mpsc::channel(16).0).unwrap();
    round.join(&header(20, 1, 4), mpsc::channel(16).0).unwrap();
    assert!(round.offer_norms(0, vec![1.0, 1.0]).unwrap().is_empty());
    assert!(round.pending_failure().is_none(), "not judged before every member's norms are in");
    assert!(round.offer_norms(1, vec![f64::NAN, 1.0]).unwrap().is_empty());
    let failure = round.pending_failure().expect("screened out");
    assert_eq!(failure.culprit, Some(20));
    assert!(failure.reason.contains("by the chunk norms it reported"), "{}", failure.reason);

    let (star, _rx) = Round::new(1, 0, vec![10], &[1], 4, 2, GradDtype::F32, 0.0);
    star.join(&header(10, 1, 4), mpsc::channel(16).0).unwrap();
    assert!(star.offer_norms(0, vec![1.0, 1.0]).unwrap_err().to_string().contains("reduced by the coordinator"));
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
