//! The ring all-reduce of one gradient over two ordered byte streams: from
//! the predecessor, to the successor (`plan.rs` has the frame order).
//!
//! One loop reads the predecessor's frames in their fixed order; each
//! reduce-scatter frame gets this rank's weighted part added and goes on
//! to the successor at once (chunked pipelining: a chunk travels on while
//! the next is still arriving), each all-gather frame is kept and passed
//! on unchanged. A writer task drains the outgoing frames, so reading
//! never waits for writing and the ring cannot deadlock on full buffers.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::frame;
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
}

/// Which neighbour broke the ring, and how.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RingError {
    #[error("the predecessor {0}")]
    Prev(String),
    #[error("the successor {0}")]
    Next(String),
}

/// The reduced gradient: every member's ends up with the same bits.
pub struct Reduced {
    pub grad: Vec<f32>,
}

/// All-reduces `local` (this member's mean shard gradient) around the
/// ring. The chunks of this member's own segment are handed to `owned` as
/// soon as they are final (in order), for the coordinator's copy.
pub async fn all_reduce<R, W>(
    spec: &RingSpec,
    local: &[f32],
    mut prev: R,
    next: W,
    owned: mpsc::UnboundedSender<(u32, Bytes)>,
) -> Result<Reduced, RingError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let n = spec.n.max(1);
    let ranges: Vec<_> = wire::chunk_ranges(spec.total, spec.chunk_elements).collect();
    let chunks = ranges.len();
    let segments = plan::segments(chunks, n);
    let mut grad = vec![0f32; spec.total];
    let dtype = spec.dtype;
    let bytes_of = |c: usize| ranges[c].len() * dtype.bytes_per_element();
    // This member's weighted part of a chunk, as the first term of a sum
    // starts: `0 + w * g`, the same arithmetic as the coordinator's star.
    let weighted = |c: usize, out: &mut [f32]| {
        for (o, g) in out.iter_mut().zip(&local[ranges[c].clone()]) {
            *o = 0.0 + spec.weight * g;
        }
    };
    if n == 1 {
        // Alone: the reduced gradient is this member's, through the wire dtype.
        for c in 0..chunks {
            let out = &mut grad[ranges[c].clone()];
            weighted(c, out);
            wire::round_trip(out, dtype);
            let _ = owned.send((c as u32, wire::encode(out, dtype)));
        }
        return Ok(Reduced { grad });
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, u32, Bytes)>();
    let mut writer = tokio::spawn(async move {
        let mut next = next;
        while let Some((tag, chunk, payload)) = rx.recv().await {
            frame::write_frame(&mut next, tag, chunk, &payload).await.map_err(|e| format!("could not be written to: {e}"))?;
        }
        use tokio::io::AsyncWriteExt;
        next.flush().await.map_err(|e| format!("could not be written to: {e}"))
    });
    let send = |id: FrameId, payload: Bytes| {
        // The writer is gone only after a write failed; the select below reports that.
        let _ = tx.send((id.tag(n), id.chunk, payload));
    };

    // Reduce-scatter step 0: this member's part of the segment before its own.
    let first = plan::first_sent_segment(spec.rank, n);
    let mut scratch = vec![0f32; spec.chunk_elements.min(spec.total.max(1))];
    for c in segments[first].clone() {
        let out = &mut scratch[..ranges[c].len()];
        weighted(c, out);
        send(FrameId { phase: Phase::ReduceScatter, step: 0, chunk: c as u32 }, wire::encode(out, dtype));
    }

    let last = n as u32 - 2;
    // Frames consumed here are read into one buffer, reused; only those
    // passed on unchanged (the all-gather's before its last step) keep theirs.
    let mut frame_buf = BytesMut::new();
    for id in plan::receive_order(spec.rank, n, chunks) {
        let c = id.chunk as usize;
        let len = bytes_of(c);
        tokio::select! {
            read = read_frame(&mut prev, id.tag(n), id.chunk, len, spec.peer_timeout, &mut frame_buf) => read.map_err(RingError::Prev)?,
            written = &mut writer => {
                let why = match written {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "stopped taking frames".to_string(),
                    Err(e) => format!("writer failed: {e}"),
                };
                return Err(RingError::Next(why));
            }
        }
        let payload = &frame_buf[..];
        match id.phase {
            Phase::ReduceScatter => {
                let bad = |e: wire::WireError| RingError::Prev(format!("sent a bad frame: {e}"));
                let mine = &local[ranges[c].clone()];
                if id.step < last {
                    // One pass: the partial sum in, ours added, out again.
                    let out = wire::add_weighted_encoded(payload, dtype, id.chunk, spec.weight, mine).map_err(bad)?;
                    send(FrameId { step: id.step + 1, ..id }, out);
                } else {
                    // Our own segment's chunk is complete: what every replica keeps.
                    let kept = &mut grad[ranges[c].clone()];
                    wire::add_weighted_into(payload, dtype, id.chunk, spec.weight, mine, kept).map_err(bad)?;
                    wire::round_trip(kept, dtype);
                    let encoded = wire::encode(kept, dtype);
                    let _ = owned.send((id.chunk, encoded.clone()));
                    send(FrameId { phase: Phase::AllGather, step: 0, chunk: id.chunk }, encoded);
                }
            }
            Phase::AllGather => {
                wire::decode_into(payload, dtype, id.chunk, &mut grad[ranges[c].clone()])
                    .map_err(|e| RingError::Prev(format!("sent a bad frame: {e}")))?;
                if id.step < last {
                    send(FrameId { step: id.step + 1, ..id }, frame_buf.split().freeze());
                }
            }
        }
    }
    drop(tx);
    match writer.await {
        Ok(Ok(())) => Ok(Reduced { grad }),
        Ok(Err(e)) => Err(RingError::Next(e)),
        Err(e) => Err(RingError::Next(format!("writer failed: {e}"))),
    }
}

/// The next frame's payload, checked against what is due, within `timeout`.
async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    tag: u32,
    chunk: u32,
    len: usize,
    timeout: Duration,
    buf: &mut BytesMut,
) -> Result<(), String> {
    let stalled = || format!("sent nothing for {:.1} s (stalled?)", timeout.as_secs_f64());
    tokio::time::timeout(timeout, frame::read_header(r, tag, chunk, len)).await.map_err(|_| stalled())??;
    tokio::time::timeout(timeout, frame::read_payload(r, len, buf)).await.map_err(|_| stalled())?
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Runs a ring of `n` members over in-memory pipes.
    async fn ring(grads: &[Vec<f32>], weights: &[f32], chunk: usize, dtype: GradDtype) -> Vec<(Vec<f32>, Vec<(u32, Bytes)>)> {
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
            };
            let local = grads[r].clone();
            tasks.push(tokio::spawn(async move {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let got = all_reduce(&spec, &local, rd, w, tx).await.unwrap();
                let mut owned = Vec::new();
                while let Ok(c) = rx.try_recv() {
                    owned.push(c);
                }
                (got.grad, owned)
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
                for (r, (got, _)) in out.iter().enumerate() {
                    assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), out[0].0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "rank {r} of {n} differs from rank 0");
                    let tol = if dtype == GradDtype::F32 { 1e-5 } else { 0.1 };
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst <= tol, "{n} ranks {dtype:?}: {worst} from the star's sum");
                    if n <= 2 && dtype == GradDtype::F32 {
                        // Two terms: a + b == b + a, so the ring is the star exactly.
                        assert_eq!(got, &want, "{n} ranks");
                    }
                }
                // The owned chunks partition the gradient, each with the kept bits.
                let chunks = wire::chunk_count(total, 10);
                let owners = plan::chunk_owners(chunks, n);
                let mut seen = vec![false; chunks];
                for (r, (got, owned)) in out.iter().enumerate() {
                    for (c, bytes) in owned {
                        assert_eq!(owners[*c as usize], r);
                        assert!(!seen[*c as usize]);
                        seen[*c as usize] = true;
                        let range = wire::chunk_ranges(total, 10).nth(*c as usize).unwrap();
                        assert_eq!(*bytes, wire::encode(&got[range], dtype));
                    }
                }
                assert!(seen.iter().all(|&s| s), "{n} ranks: some chunk owned by nobody");
            }
        }
    }

    #[tokio::test]
    async fn fewer_chunks_than_members_still_reduces() {
        let g = grads(4, 5);
        let out = ring(&g, &[0.25; 4], 4, GradDtype::F32).await;
        let want = star(&g, &[0.25; 4], GradDtype::F32);
        for (got, _) in &out {
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        }
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
        };
        let (_keep_open, prev) = tokio::io::duplex(64);
        let (next, _sink) = tokio::io::duplex(1 << 12);
        let (tx, _rx) = mpsc::unbounded_channel();
        let e = all_reduce(&spec, &[1.0; 8], prev, next, tx.clone()).await.err().unwrap();
        assert!(matches!(&e, RingError::Prev(m) if m.contains("sent nothing for 0.2 s")), "{e}");
        let (closed, prev) = tokio::io::duplex(64);
        drop(closed);
        let (next, _sink) = tokio::io::duplex(1 << 12);
        let e = all_reduce(&spec, &[1.0; 8], prev, next, tx).await.err().unwrap();
        assert!(matches!(&e, RingError::Prev(m) if m.contains("ended")), "{e}");
    }
}
