//! The ring all-reduce of one gradient over two ordered byte streams: from
//! the predecessor, to the successor (`plan.rs` has the frame order).
//!
//! One loop reads the predecessor's frames in their fixed order; each
//! reduce-scatter frame gets this rank's weighted part added and goes on
//! to the successor at once (chunked pipelining: a chunk travels on while
//! the next is still arriving), each all-gather frame is kept and passed
//! on unchanged. A writer task drains the outgoing frames, so reading
//! never waits for writing and the ring cannot deadlock on full buffers.
//!
//! One concept (the algorithm over TCP links); over 450 lines only because
//! its tests check every member's bits and measures against the star's.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use xxhash_rust::xxh3::Xxh3;

use super::fault::{LinkFault, RingError};
use super::frame;
use super::measure::{blocks, Measure, Scalars};
use super::plan::{self, FrameId, Phase};
use crate::config::GradDtype;
use crate::wire;

/// One member's part in a ring all-reduce.
#[derive(Debug, Clone)]
pub struct RingSpec {
    /// Members in the ring.
    pub n: usize,
    pub rank: usize,
    /// Gradient elements.
    pub total: usize,
    pub chunk_elements: usize,
    pub dtype: GradDtype,
    /// This member's weight in the sum (its shard size / the global batch).
    pub weight: f32,
    /// How long to wait for the predecessor's next bytes.
    pub peer_timeout: Duration,
    /// Whether links to members that share this one's shared memory may
    /// carry their bytes through it (`[dist] ring_shm`; f32 only).
    pub shm: bool,
}

/// An outgoing frame's bytes: a buffer of this member's pool (returned to
/// it once written), bytes shared with the coordinator's upload, or a
/// final chunk of the gradient itself (f32 needs no encoding).
enum Payload<'a> {
    Pooled(Vec<u8>),
    Shared(Bytes),
    Borrowed(&'a [u8]),
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Pooled(v) => v,
            Payload::Shared(b) => b,
            Payload::Borrowed(b) => b,
        }
    }
}

/// All-reduces `grad` (this member's mean shard gradient) around the ring,
/// in place: every member ends with the same bits in its `grad`. `measure`
/// takes the norms of this member's chunks as they are read, the scalars
/// of its own segment's chunks as they become final and the digest of
/// each other chunk as it arrives (`measure.rs`); over TCP each is one
/// more read of a chunk the loop has just touched.
///
/// In place is sound because a member reads each of its chunks once, in
/// the reduce-scatter, before the reduced values for that chunk exist
/// anywhere. With f32 on the wire a final chunk is never copied: the
/// all-gather reads it straight into the gradient and passes it on from
/// there, as gloo does. Reduce-scatter frames are read into buffers of
/// `pool`, which the writer hands back once sent and which stay in `pool`
/// for the next call, so a step neither allocates nor faults in pages.
///
/// Reading and writing are two futures of one task (the writer borrows
/// the final chunks): the reader never waits for the writer, since the
/// queue between them is unbounded, so the ring cannot deadlock.
pub async fn all_reduce<R, W>(
    spec: &RingSpec,
    grad: &mut [f32],
    mut prev: R,
    mut next: W,
    measure: &mut Measure,
    pool: &mut Vec<Vec<u8>>,
) -> Result<(), RingError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n = spec.n.max(1);
    // The caller's contract (spec.total is always set from the gradient).
    assert_eq!(grad.len(), spec.total, "a ring spec for another gradient size");
    let ranges: Vec<_> = wire::chunk_ranges(spec.total, spec.chunk_elements).collect();
    let chunks = ranges.len();
    let segments = plan::segments(chunks, n);
    let dtype = spec.dtype;
    let bytes_of = |c: usize| ranges[c].len() * dtype.bytes_per_element();
    if n == 1 {
        // Alone: the reduced gradient is this member's `0 + w * g`, through the wire dtype.
        for c in 0..chunks {
            let out = &mut grad[ranges[c].clone()];
            measure.local(c, out);
            measure.local_done();
            for o in out.iter_mut() {
                *o = 0.0 + spec.weight * *o;
            }
            wire::round_trip(out, dtype);
            measure.owned(c, out);
        }
        return Ok(());
    }
    // Final chunks go out as they are (little-endian f32 is the wire's f32).
    let raw = dtype == GradDtype::F32 && cfg!(target_endian = "little");

    // The gradient as one slot per chunk: a slot is mutable until its
    // chunk is final, then taken out (left empty) and only read.
    let mut slots: Vec<&mut [f32]> = Vec::with_capacity(chunks);
    let mut rest = grad;
    for r in &ranges {
        let (head, tail) = rest.split_at_mut(r.len());
        slots.push(head);
        rest = tail;
    }
    fn finalize<'a>(slots: &mut [&'a mut [f32]], c: usize) -> &'a [u8] {
        let done: &'a mut [f32] = std::mem::take(&mut slots[c]);
        bytemuck::cast_slice(&*done)
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, u32, Payload<'_>)>();
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = async {
        while let Some((tag, chunk, payload)) = rx.recv().await {
            frame::write_frame(&mut next, tag, chunk, payload.bytes()).await.map_err(|e| RingError::Next(unwritable(&e)))?;
            if let Payload::Pooled(buf) = payload {
                let _ = back_tx.send(buf);
            }
        }
        use tokio::io::AsyncWriteExt;
        next.flush().await.map_err(|e| RingError::Next(unwritable(&e)))
    };
    let (pooled, back, ranges, segments) = (&mut *pool, &mut back_rx, &ranges, &segments);
    let reader = async move {
        let send = |id: FrameId, payload| {
            // The writer ends early only after a write failed, which try_join reports.
            let _ = tx.send((id.tag(n), id.chunk, payload));
        };
        // A written buffer back from the writer, else one kept from an earlier call.
        let mut spare = || back.try_recv().ok().or_else(|| pooled.pop()).unwrap_or_default();

        // Reduce-scatter step 0: this member's part of the segment before its own.
        let first = plan::first_sent_segment(spec.rank, n);
        for c in segments[first].clone() {
            let (mut buf, per) = (spare(), dtype.bytes_per_element());
            buf.resize(ranges[c].len() * per, 0);
            // Block by block, each measured while the loop has it in cache.
            for r in blocks(ranges[c].len()) {
                measure.local(c, &slots[c][r.clone()]);
                wire::encode_weighted_to(&slots[c][r.clone()], dtype, spec.weight, &mut buf[r.start * per..r.end * per]);
            }
            measure.local_done();
            send(FrameId { phase: Phase::ReduceScatter, step: 0, chunk: c as u32 }, Payload::Pooled(buf));
        }

        let last = n as u32 - 2;
        let mut buf = spare();
        let timeout = spec.peer_timeout;
        let bad = |e: wire::WireError| RingError::Prev(bad_frame(&e));
        for id in plan::receive_order(spec.rank, n, chunks) {
            let c = id.chunk as usize;
            if id.phase == Phase::AllGather && raw {
                // A final chunk: into the gradient, and on from there.
                debug_assert_eq!(slots[c].len(), ranges[c].len(), "chunk {c} received twice");
                let into: &mut [u8] = bytemuck::cast_slice_mut(&mut *slots[c]);
                // Hashed piece by piece as the socket fills it, while in cache.
                let mut hash = Xxh3::new();
                read_frame_into(&mut prev, id.tag(n), id.chunk, timeout, into, &mut hash).await.map_err(RingError::Prev)?;
                measure.gathered_done(c, hash);
                if id.step < last {
                    send(FrameId { step: id.step + 1, ..id }, Payload::Borrowed(finalize(&mut slots, c)));
                }
                continue;
            }
            read_frame(&mut prev, id.tag(n), id.chunk, bytes_of(c), timeout, &mut buf).await.map_err(RingError::Prev)?;
            match id.phase {
                Phase::ReduceScatter if id.step < last => {
                    // One pass: the partial sum in, ours added (and measured), out again.
                    let per = dtype.bytes_per_element();
                    for r in blocks(ranges[c].len()) {
                        measure.local(c, &slots[c][r.clone()]);
                        wire::add_weighted_in_place(&mut buf[r.start * per..r.end * per], dtype, id.chunk, spec.weight, &slots[c][r])
                            .map_err(bad)?;
                    }
                    measure.local_done();
                    send(FrameId { step: id.step + 1, ..id }, Payload::Pooled(std::mem::replace(&mut buf, spare())));
                }
                Phase::ReduceScatter => {
                    // Our own segment's chunk is complete: what every replica keeps.
                    let (mine, per) = (&mut *slots[c], dtype.bytes_per_element());
                    let mut scalars = Scalars::default();
                    for r in blocks(mine.len()) {
                        let (b, mine) = (r.start * per..r.end * per, &mut mine[r]);
                        measure.local(c, mine);
                        wire::add_to_weighted(&buf[b], dtype, id.chunk, spec.weight, mine).map_err(bad)?;
                        wire::round_trip(mine, dtype);
                        scalars.add(mine);
                    }
                    measure.local_done();
                    measure.owned_done(c, scalars);
                    let gather = FrameId { phase: Phase::AllGather, step: 0, chunk: id.chunk };
                    if raw {
                        send(gather, Payload::Borrowed(finalize(&mut slots, c)));
                    } else {
                        send(gather, Payload::Shared(wire::encode(mine, dtype)));
                    }
                }
                Phase::AllGather => {
                    wire::decode_into(&buf, dtype, id.chunk, slots[c]).map_err(bad)?;
                    measure.gathered(c, slots[c]);
                    if id.step < last {
                        send(FrameId { step: id.step + 1, ..id }, Payload::Pooled(std::mem::replace(&mut buf, spare())));
                    }
                }
            }
        }
        pooled.push(buf);
        // Dropping `tx` here lets the writer finish.
        Ok::<_, RingError>(())
    };
    let result = tokio::try_join!(reader, writer).map(|_| ());
    // Every buffer the writer handed back stays for the next call.
    while let Ok(buf) = back_rx.try_recv() {
        pool.push(buf);
    }
    result
}

/// A write to the successor failed.
pub(super) fn unwritable(e: &std::io::Error) -> LinkFault {
    LinkFault::io("could not be written to", e)
}

/// The predecessor's frame does not decode.
pub(super) fn bad_frame(e: &wire::WireError) -> LinkFault {
    LinkFault::malformed(format!("sent a bad frame: {e}"))
}

/// Nothing came from the predecessor within `timeout`.
pub(super) fn stalled(timeout: Duration) -> LinkFault {
    LinkFault::stalled(format!("sent nothing for {:.1} s (stalled?)", timeout.as_secs_f64()))
}

/// The next frame's payload read into `into` (its exact size), checked
/// against what is due, within `timeout`; each piece is fed to `hash` as
/// it lands.
async fn read_frame_into(
    r: &mut (impl AsyncRead + Unpin),
    tag: u32,
    chunk: u32,
    timeout: Duration,
    into: &mut [u8],
    hash: &mut Xxh3,
) -> Result<(), LinkFault> {
    use tokio::io::AsyncReadExt;
    let len = into.len();
    tokio::time::timeout(timeout, frame::read_header(r, tag, chunk, len)).await.map_err(|_| stalled(timeout))??;
    let mut got = 0;
    while got < len {
        let n = tokio::time::timeout(timeout, r.read(&mut into[got..]))
            .await
            .map_err(|_| stalled(timeout))?
            .map_err(|e| LinkFault::io("the connection failed", &e))?;
        if n == 0 {
            return Err(frame::ended_inside(got, len));
        }
        hash.update(&into[got..got + n]);
        got += n;
    }
    Ok(())
}

/// The next frame's payload, checked against what is due, within `timeout`.
pub(super) async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    tag: u32,
    chunk: u32,
    len: usize,
    timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<(), LinkFault> {
    tokio::time::timeout(timeout, frame::read_header(r, tag, chunk, len)).await.map_err(|_| stalled(timeout))??;
    tokio::time::timeout(timeout, frame::read_payload(r, len, buf)).await.map_err(|_| stalled(timeout))?
}

#[cfg(test)]
mod tests {
    use super::super::fault::RingFaultKind;
    use super::super::measure::Measured;
    use super::*;
    use crate::wire::digest;

    /// The star's sum in rank order (the coordinator backend's arithmetic).
    fn star(grads: &[Vec<f32>], weights: &[f32], dtype: GradDtype) -> Vec<f32> {
        let mut acc = vec![0f32; grads[0].len()];
        for (g, &w) in grads.iter().zip(weights) {
            let mut sent = g.clone();
            wire::round_trip(&mut sent, dtype);
            for (a, x) in acc.iter_mut().zip(&sent) {
                *a += w * x;
            }
        }
        wire::round_trip(&mut acc, dtype);
        acc
    }

    /// What one member ends with: its gradient, what it measured as it
    /// went, and its replica digest.
    type Member = (Vec<f32>, Vec<Measured>, Option<u64>);

    /// Runs a ring of `n` members over in-memory pipes.
    async fn ring(grads: &[Vec<f32>], weights: &[f32], chunk: usize, dtype: GradDtype) -> Vec<Member> {
        let n = grads.len();
        // Link r carries rank r's frames to rank r+1.
        let (mut writers, mut readers): (Vec<_>, Vec<_>) = (0..n).map(|_| tokio::io::duplex(1 << 12)).unzip();
        readers.rotate_right(1);
        let mut tasks = Vec::new();
        for r in (0..n).rev() {
            let (w, rd) = (writers.pop().unwrap(), readers.pop().unwrap());
            let spec = RingSpec {
                n,
                rank: r,
                total: grads[r].len(),
                chunk_elements: chunk,
                dtype,
                weight: weights[r],
                peer_timeout: Duration::from_secs(10),
                shm: false,
            };
            let local = grads[r].clone();
            tasks.push(tokio::spawn(async move {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let mut measure = Measure::new(wire::chunk_count(spec.total, spec.chunk_elements), tx);
                let mut got = local;
                all_reduce(&spec, &mut got, rd, w, &mut measure, &mut Vec::new()).await.unwrap();
                let mut events = Vec::new();
                while let Ok(e) = rx.try_recv() {
                    events.push(e);
                }
                (got, events, measure.replica_digest())
            }));
        }
        let mut out = Vec::new();
        for t in tasks.into_iter().rev() {
            out.push(t.await.unwrap());
        }
        out
    }

    fn grads(n: usize, total: usize) -> Vec<Vec<f32>> {
        (0..n).map(|r| (0..total).map(|i| ((i * 7 + r * 13) % 23) as f32 * 0.37 - 3.1 + r as f32 * 1e-3).collect()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_rank_gets_the_same_bits_and_the_star_sum() {
        for n in 1..=4 {
            for dtype in [GradDtype::F32, GradDtype::Bf16] {
                let total = 103;
                let g = grads(n, total);
                let weights: Vec<f32> = (0..n).map(|r| (r + 1) as f32 / (n * (n + 1) / 2) as f32).collect();
                let out = ring(&g, &weights, 10, dtype).await;
                let want = star(&g, &weights, dtype);
                for (r, (got, ..)) in out.iter().enumerate() {
                    assert_eq!(
                        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        out[0].0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "rank {r} of {n} differs from rank 0"
                    );
                    let tol = if dtype == GradDtype::F32 { 1e-5 } else { 0.1 };
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst <= tol, "{n} ranks {dtype:?}: {worst} from the star's sum");
                    if n <= 2 && dtype == GradDtype::F32 {
                        // Two terms: a + b == b + a, so the ring is the star exactly.
                        assert_eq!(got, &want, "{n} ranks");
                    }
                }
                check_measures(&g, &out, 10);
            }
        }
    }

    /// What each member measured is what separate passes give: the norms
    /// of its own chunks, the scalars of each chunk of its segment (the
    /// segments partition the gradient) and the digest of what it holds.
    fn check_measures(g: &[Vec<f32>], out: &[Member], chunk: usize) {
        let (n, total) = (g.len(), g[0].len());
        let chunks = wire::chunk_count(total, chunk);
        let owners = plan::chunk_owners(chunks, n);
        let mut seen = vec![false; chunks];
        for (r, (got, events, replica)) in out.iter().enumerate() {
            let norms = wire::chunk_norms(&g[r], chunk);
            assert_eq!(events.iter().filter(|e| **e == Measured::Norms(norms.clone())).count(), 1, "{n} ranks: rank {r}'s norms");
            for e in events {
                if let Measured::Segment { index, sumsq, digest } = e {
                    let c = *index as usize;
                    assert_eq!(owners[c], r);
                    assert!(!seen[c]);
                    seen[c] = true;
                    let range = wire::chunk_ranges(total, chunk).nth(c).unwrap();
                    assert_eq!((sumsq.to_bits(), *digest), {
                        let (s, d) = digest::chunk_scalars(&got[range]);
                        (s.to_bits(), d)
                    });
                }
            }
            assert_eq!(*replica, Some(digest::gradient_digest(got, wire::chunk_ranges(total, chunk))), "{n} ranks: rank {r}'s digest");
        }
        assert!(seen.iter().all(|&s| s), "{n} ranks: some chunk owned by nobody");
    }

    #[tokio::test]
    async fn fewer_chunks_than_members_still_reduces() {
        let g = grads(4, 5);
        let out = ring(&g, &[0.25; 4], 4, GradDtype::F32).await;
        let want = star(&g, &[0.25; 4], GradDtype::F32);
        for (got, ..) in &out {
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        }
        check_measures(&g, &out, 4);
    }

    #[tokio::test]
    async fn a_silent_predecessor_is_named_after_the_timeout_and_a_closed_one_at_once() {
        let spec = RingSpec {
            n: 2,
            rank: 0,
            total: 8,
            chunk_elements: 4,
            dtype: GradDtype::F32,
            weight: 0.5,
            peer_timeout: Duration::from_millis(200),
            shm: false,
        };
        let (_keep_open, prev) = tokio::io::duplex(64);
        let (next, _sink) = tokio::io::duplex(1 << 12);
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut measure = Measure::new(2, tx);
        let e = all_reduce(&spec, &mut [1.0; 8], prev, next, &mut measure, &mut Vec::new()).await.err().unwrap();
        assert!(matches!(&e, RingError::Prev(f) if f.kind == RingFaultKind::Stalled && f.detail.contains("sent nothing for 0.2 s")), "{e}");
        let (closed, prev) = tokio::io::duplex(64);
        drop(closed);
        let (next, _sink) = tokio::io::duplex(1 << 12);
        let e = all_reduce(&spec, &mut [1.0; 8], prev, next, &mut measure, &mut Vec::new()).await.err().unwrap();
        assert!(matches!(&e, RingError::Prev(f) if f.kind == RingFaultKind::Closed && f.detail.contains("ended")), "{e}");
    }
}
