//! The ring all-reduce of a member with at least one shared-memory link
//! (`shm.rs`, `links.rs`): the same frames in the same order with the
//! same f32 arithmetic as `allreduce.rs`, so the same bits, but a frame's
//! payload is read where it lies in the predecessor's outbox and the
//! result written straight into this member's own outbox (or a buffer for
//! a TCP successor). A reduce-scatter frame is one pass (`in + w * g`
//! into the outgoing slot), an all-gather frame a copy into the gradient
//! and one on. Only f32 goes through shared memory: bf16 exists to halve
//! the bytes on a network, which shared memory does not have.
//!
//! Flow control: the sender writes frame `i` into slot `i mod K` only once
//! the receiver has said (its count of frames taken, on the TCP
//! connection) that frame `i - K` is taken. A member writes its first
//! segment before it reads anything, and afterwards takes one frame for
//! each it sends, so at most `chunks` frames are ever in the ring's
//! outboxes; with `K >= ceil(chunks / n) + 1` slots each they cannot all
//! be full at once, so some member can always move and the ring cannot
//! deadlock ([`slots_needed`]). The counts are sent by their own future,
//! the latest one only, so telling the predecessor never blocks the loop.
//!
//! One concept (the shared-memory ring's algorithm and its flow control);
//! over 450 lines only because its tests run every mix of links here.

use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use xxhash_rust::xxh3::Xxh3;

use super::allreduce::{bad_frame, read_frame, stalled, unwritable, RingSpec};
use super::fault::{LinkFault, RingError};
use super::frame;
use super::measure::{blocks, Measure, Scalars};
use super::plan::{self, FrameId, Phase};
use super::shm::{Outbox, View};
use crate::config::GradDtype;
use crate::wire;

/// Slots an outbox needs for a ring of `n` over `chunks` chunks (see the
/// module's comment on why this many cannot deadlock).
pub fn slots_needed(chunks: usize, n: usize) -> usize {
    chunks.div_ceil(n.max(1)) + 1
}

/// The link from the predecessor: its frames (headers, and payloads
/// unless `shared`) come on `read`; `write` takes this member's counts of
/// frames taken from `shared`.
pub struct Prev<'a, R, A> {
    pub read: R,
    pub write: A,
    pub shared: Option<&'a View>,
}

/// The link to the successor: frames go on `write` (only headers when
/// `shared`, the payload then in the outbox); `read` brings its counts.
pub struct Next<'a, W, C> {
    pub write: W,
    pub read: C,
    pub shared: Option<&'a mut Outbox>,
}

/// Where the predecessor's frames are read.
struct Source<'a, R> {
    read: R,
    shared: Option<&'a View>,
    buf: Vec<u8>,
    taken: u32,
    timeout: Duration,
    told: watch::Sender<u32>,
}

impl<R: AsyncRead + Unpin> Source<'_, R> {
    /// The next frame's payload, which must be (`tag`, `chunk`, `len`).
    async fn recv(&mut self, tag: u32, chunk: u32, len: usize) -> Result<&[u8], RingError> {
        let Some(view) = self.shared else {
            read_frame(&mut self.read, tag, chunk, len, self.timeout, &mut self.buf).await.map_err(RingError::Prev)?;
            return Ok(&self.buf);
        };
        tokio::time::timeout(self.timeout, frame::read_header(&mut self.read, tag, chunk, len))
            .await
            .map_err(|_| RingError::Prev(stalled(self.timeout)))?
            .map_err(RingError::Prev)?;
        // The header came after the sender wrote the slot.
        fence(Ordering::Acquire);
        Ok(view.slot(self.taken as usize % view.slots(), len))
    }

    /// The frame last received is no longer read: its slot may be reused.
    fn release(&mut self) {
        if self.shared.is_some() {
            self.taken += 1;
            self.told.send_replace(self.taken);
        }
    }
}

/// Where this member's frames go.
enum Sink<'a, W, C> {
    /// Buffers for the writer future (a TCP successor).
    Stream {
        queue: mpsc::UnboundedSender<(u32, u32, Vec<u8>)>,
        back: mpsc::UnboundedReceiver<Vec<u8>>,
        current: Vec<u8>,
    },
    Shared {
        write: W,
        read: C,
        outbox: &'a mut Outbox,
        sent: u32,
        taken: u32,
        timeout: Duration,
    },
}

impl<W: AsyncWrite + Unpin, C: AsyncRead + Unpin> Sink<'_, W, C> {
    /// Room for the next frame of `len` bytes (waiting for a free slot).
    async fn slot(&mut self, len: usize, pool: &mut Vec<Vec<u8>>) -> Result<&mut [u8], RingError> {
        match self {
            Sink::Stream { back, current, .. } => {
                *current = back.try_recv().ok().or_else(|| pool.pop()).unwrap_or_default();
                // Only a longer frame than the buffer's last fills anything.
                current.resize(len, 0);
                Ok(&mut current[..])
            }
            Sink::Shared { read, outbox, sent, taken, timeout, .. } => {
                while *sent >= *taken + outbox.slots() as u32 {
                    *taken = read_taken(read, *sent, *taken, *timeout).await?;
                }
                Ok(outbox.slot_mut(*sent as usize % outbox.slots(), len))
            }
        }
    }

    /// Sends the frame just written by [`Sink::slot`].
    async fn publish(&mut self, tag: u32, chunk: u32, len: usize) -> Result<(), RingError> {
        match self {
            Sink::Stream { queue, current, .. } => {
                // The writer ends early only after a write failed, which try_join reports.
                let _ = queue.send((tag, chunk, std::mem::take(current)));
            }
            Sink::Shared { write, sent, .. } => {
                // The slot's bytes before the header that announces them.
                fence(Ordering::Release);
                write.write_all(&frame::header(tag, chunk, len)).await.map_err(|e| RingError::Next(unwritable(&e)))?;
                *sent += 1;
            }
        }
        Ok(())
    }

    /// Waits until the successor has taken every frame: the outbox is
    /// then free for this member's next attempt.
    async fn drain(&mut self) -> Result<(), RingError> {
        if let Sink::Shared { read, sent, taken, timeout, .. } = self {
            while *taken < *sent {
                *taken = read_taken(read, *sent, *taken, *timeout).await?;
            }
        }
        Ok(())
    }
}

/// The successor's next count of frames taken (of `sent`, at least `taken` before).
async fn read_taken(read: &mut (impl AsyncRead + Unpin), sent: u32, taken: u32, timeout: Duration) -> Result<u32, RingError> {
    let got = tokio::time::timeout(timeout, read.read_u32_le())
        .await
        .map_err(|_| RingError::Next(LinkFault::stalled(format!("took no frame for {:.1} s (stalled?)", timeout.as_secs_f64()))))?
        .map_err(|e| RingError::Next(LinkFault::io("closed the connection", &e)))?;
    if got < taken || got > sent {
        return Err(RingError::Next(LinkFault::malformed(format!("said it took {got} frames of {sent} sent (after {taken})"))));
    }
    Ok(got)
}

/// `out = 0 + w * local` as wire f32 (the first term of a ring sum).
fn weighted_into(out: &mut [u8], w: f32, local: &[f32]) {
    match wire::as_f32s_mut(out) {
        Some(out) => {
            for (o, g) in out.iter_mut().zip(local) {
                *o = 0.0 + w * g;
            }
        }
        None => {
            for (o, g) in out.chunks_exact_mut(4).zip(local) {
                o.copy_from_slice(&(0.0 + w * g).to_le_bytes());
            }
        }
    }
}

/// `out = decode(inp) + w * local` as wire f32: what `allreduce.rs` does
/// in place, written elsewhere.
fn add_weighted_into(inp: &[u8], out: &mut [u8], w: f32, local: &[f32]) {
    match (wire::as_f32s(inp), wire::as_f32s_mut(out)) {
        (Some(inp), Some(out)) => {
            for ((o, a), g) in out.iter_mut().zip(inp).zip(local) {
                *o = a + w * g;
            }
        }
        _ => {
            for ((o, a), g) in out.chunks_exact_mut(4).zip(inp.chunks_exact(4)).zip(local) {
                let v = f32::from_le_bytes([a[0], a[1], a[2], a[3]]) + w * g;
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// All-reduces `grad` in place like [`super::all_reduce`], over links of
/// which at least one may be shared memory; f32 only. `pool` lends and
/// keeps the buffers of TCP links.
pub async fn all_reduce_links<R, A, W, C>(
    spec: &RingSpec,
    grad: &mut [f32],
    prev: Prev<'_, R, A>,
    next: Next<'_, W, C>,
    measure: &mut Measure,
    pool: &mut Vec<Vec<u8>>,
) -> Result<(), RingError>
where
    R: AsyncRead + Unpin,
    A: AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
    C: AsyncRead + Unpin,
{
    let n = spec.n;
    // The caller's contract (member.rs offers shared memory only for f32 rings of two or more).
    assert!(n >= 2 && spec.dtype == GradDtype::F32 && cfg!(target_endian = "little"), "a shared-memory ring of {n} in {:?}", spec.dtype);
    assert_eq!(grad.len(), spec.total, "a ring spec for another gradient size");
    let ranges: Vec<_> = wire::chunk_ranges(spec.total, spec.chunk_elements).collect();
    let chunks = ranges.len();
    let segments = plan::segments(chunks, n);
    let bytes_of = |c: usize| ranges[c].len() * 4;
    let timeout = spec.peer_timeout;

    // The predecessor hears the latest count of frames taken, whenever its writer can.
    let (told, mut tell) = watch::channel(0u32);
    let (mut acks, shared_in) = (prev.write, prev.shared.is_some());
    let acker = async {
        let mut written = 0;
        loop {
            let more = tell.changed().await.is_ok();
            let latest = *tell.borrow_and_update();
            if shared_in && latest != written {
                acks.write_all(&latest.to_le_bytes())
                    .await
                    .map_err(|e| RingError::Prev(LinkFault::io("could not be told a slot is free", &e)))?;
                written = latest;
            }
            if !more {
                return Ok::<_, RingError>(());
            }
        }
    };

    let (queue, mut frames) = mpsc::unbounded_channel::<(u32, u32, Vec<u8>)>();
    let (back_tx, back) = mpsc::unbounded_channel::<Vec<u8>>();
    let (mut stream_out, mut sink) = match next.shared {
        Some(outbox) => (None, Sink::Shared { write: next.write, read: next.read, outbox, sent: 0, taken: 0, timeout }),
        None => (Some(next.write), Sink::Stream { queue, back, current: Vec::new() }),
    };
    let writer = async {
        let Some(w) = stream_out.as_mut() else { return Ok(()) };
        while let Some((tag, chunk, buf)) = frames.recv().await {
            frame::write_frame(w, tag, chunk, &buf).await.map_err(|e| RingError::Next(unwritable(&e)))?;
            let _ = back_tx.send(buf);
        }
        w.flush().await.map_err(|e| RingError::Next(unwritable(&e)))
    };

    let spare = pool.pop().unwrap_or_default();
    let mut source = Source { read: prev.read, shared: prev.shared, buf: spare, taken: 0, timeout, told };
    let lend = &mut *pool;
    let (ranges, segments) = (&ranges, &segments);
    let w = spec.weight;
    let work = async move {
        let first = plan::first_sent_segment(spec.rank, n);
        for c in segments[first].clone() {
            let (len, local) = (bytes_of(c), &grad[ranges[c].clone()]);
            let out = sink.slot(len, lend).await?;
            // Block by block, each measured while the loop has it in cache.
            for r in blocks(local.len()) {
                measure.local(c, &local[r.clone()]);
                weighted_into(&mut out[r.start * 4..r.end * 4], w, &local[r]);
            }
            measure.local_done();
            sink.publish(FrameId { phase: Phase::ReduceScatter, step: 0, chunk: c as u32 }.tag(n), c as u32, len).await?;
            tokio::task::yield_now().await;
        }
        let last = n as u32 - 2;
        for id in plan::receive_order(spec.rank, n, chunks) {
            let (c, len) = (id.chunk as usize, bytes_of(id.chunk as usize));
            let inp = source.recv(id.tag(n), id.chunk, len).await?;
            let on = FrameId { step: id.step + 1, ..id };
            match id.phase {
                Phase::ReduceScatter if id.step < last => {
                    // One pass: the partial sum in, ours added (and measured), into the outgoing frame.
                    let (local, out) = (&grad[ranges[c].clone()], sink.slot(len, lend).await?);
                    for r in blocks(local.len()) {
                        let b = r.start * 4..r.end * 4;
                        measure.local(c, &local[r.clone()]);
                        add_weighted_into(&inp[b.clone()], &mut out[b], w, &local[r]);
                    }
                    measure.local_done();
                    sink.publish(on.tag(n), id.chunk, len).await?;
                }
                Phase::ReduceScatter => {
                    // Our own segment's chunk is complete: what every replica keeps.
                    let (mine, out) = (&mut grad[ranges[c].clone()], sink.slot(len, lend).await?);
                    let mut scalars = Scalars::default();
                    for r in blocks(mine.len()) {
                        let (b, mine) = (r.start * 4..r.end * 4, &mut mine[r]);
                        measure.local(c, mine);
                        wire::add_to_weighted(&inp[b.clone()], GradDtype::F32, id.chunk, w, mine)
                            .map_err(|e| RingError::Prev(bad_frame(&e)))?;
                        scalars.add(mine);
                        out[b].copy_from_slice(bytemuck::cast_slice(&*mine));
                    }
                    measure.local_done();
                    measure.owned_done(c, scalars);
                    sink.publish(FrameId { phase: Phase::AllGather, step: 0, chunk: id.chunk }.tag(n), id.chunk, len).await?;
                }
                Phase::AllGather => {
                    // Into the gradient (and on), hashed block by block as it lands.
                    let into = bytemuck::cast_slice_mut::<f32, u8>(&mut grad[ranges[c].clone()]);
                    let mut out = if id.step < last { Some(sink.slot(len, lend).await?) } else { None };
                    let mut hash = Xxh3::new();
                    for r in blocks(len / 4) {
                        let b = r.start * 4..r.end * 4;
                        into[b.clone()].copy_from_slice(&inp[b.clone()]);
                        hash.update(&into[b.clone()]);
                        if let Some(out) = out.as_mut() {
                            out[b.clone()].copy_from_slice(&inp[b]);
                        }
                    }
                    measure.gathered_done(c, hash);
                    if out.is_some() {
                        sink.publish(on.tag(n), id.chunk, len).await?;
                    }
                }
            }
            source.release();
            // A ready frame never makes the loop wait, so it would starve the
            // acker and the writer, which share its task: let them run, or the
            // neighbours wait for counts and bytes this member has.
            tokio::task::yield_now().await;
        }
        sink.drain().await?;
        let buf = std::mem::take(&mut source.buf);
        if buf.capacity() > 0 {
            lend.push(buf);
        }
        // Dropping the queue ends the writer, dropping the source the acker.
        Ok::<_, RingError>(match sink {
            Sink::Stream { back, .. } => Some(back),
            Sink::Shared { .. } => None,
        })
    };
    let (back, (), ()) = tokio::try_join!(work, acker, writer)?;
    // The buffers the writer sent stay for the next call.
    if let Some(mut back) = back {
        while let Ok(buf) = back.try_recv() {
            pool.push(buf);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::all_reduce;
    use super::super::fault::RingFaultKind;
    use super::super::measure::Measured;
    use super::*;

    fn grads(n: usize, total: usize) -> Vec<Vec<f32>> {
        (0..n).map(|r| (0..total).map(|i| ((i * 7 + r * 13) % 23) as f32 * 0.37 - 3.1 + r as f32 * 1e-3).collect()).collect()
    }

    fn spec(n: usize, rank: usize, total: usize, chunk: usize) -> RingSpec {
        RingSpec {
            n,
            rank,
            total,
            chunk_elements: chunk,
            dtype: GradDtype::F32,
            weight: (rank + 1) as f32 / (n * (n + 1) / 2) as f32,
            peer_timeout: Duration::from_secs(10),
            shm: true,
        }
    }

    /// Each member's gradient, what it measured and its replica digest.
    type Reduced = Vec<(Vec<f32>, Vec<Measured>, Option<u64>)>;

    /// A fresh measure of `total` values in chunks of `chunk`, and what hears it.
    fn measure(total: usize, chunk: usize) -> (Measure, mpsc::UnboundedReceiver<Measured>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Measure::new(wire::chunk_count(total, chunk), tx), rx)
    }

    /// The TCP ring (`allreduce.rs`) over in-memory pipes: the reference.
    async fn tcp_ring(g: &[Vec<f32>], chunk: usize) -> Reduced {
        let n = g.len();
        let (mut writers, mut readers): (Vec<_>, Vec<_>) = (0..n).map(|_| tokio::io::duplex(1 << 12)).unzip();
        readers.rotate_right(1);
        let mut tasks = Vec::new();
        for r in (0..n).rev() {
            let (w, rd) = (writers.pop().unwrap(), readers.pop().unwrap());
            let (s, mut local) = (spec(n, r, g[r].len(), chunk), g[r].clone());
            tasks.push(tokio::spawn(async move {
                let (mut m, mut rx) = measure(s.total, chunk);
                all_reduce(&s, &mut local, rd, w, &mut m, &mut Vec::new()).await.unwrap();
                (local, std::iter::from_fn(|| rx.try_recv().ok()).collect(), m.replica_digest())
            }));
        }
        let mut out = Vec::new();
        for t in tasks.into_iter().rev() {
            out.push(t.await.unwrap());
        }
        out
    }

    /// A ring whose link r (rank r to r+1) is shared memory where `shared[r]`.
    async fn mixed_ring(g: &[Vec<f32>], chunk: usize, shared: &[bool]) -> Reduced {
        let n = g.len();
        let dir = tempfile::tempdir().unwrap();
        let chunks = wire::chunk_count(g[0].len(), chunk);
        // Link r: the sender's end, the receiver's end, the sender's outbox.
        let mut ends: Vec<_> = (0..n)
            .map(|r| {
                let (a, b) = tokio::io::duplex(1 << 10);
                let outbox = shared[r].then(|| Outbox::create(dir.path(), slots_needed(chunks, n), chunk.min(g[0].len()) * 4).unwrap());
                (Some(a), Some(b), outbox)
            })
            .collect();
        // Each receiver maps its predecessor's outbox, as member.rs does.
        let views: Vec<Option<View>> =
            (0..n).map(|r| ends[(r + n - 1) % n].2.as_ref().map(|o| View::open(&o.offer(), dir.path()).unwrap())).collect();
        let mut tasks = Vec::new();
        for (r, view) in views.into_iter().enumerate() {
            let p = (r + n - 1) % n;
            let from_prev = ends[p].1.take().unwrap();
            let (to_next, outbox) = (ends[r].0.take().unwrap(), ends[r].2.take());
            tasks.push((view, to_next, from_prev, outbox, spec(n, r, g[r].len(), chunk)));
        }
        let mut handles = Vec::new();
        for (r, (view, to_next, from_prev, mut outbox, s)) in tasks.into_iter().enumerate() {
            let mut local = g[r].clone();
            handles.push(tokio::spawn(async move {
                let (mut m, mut rx) = measure(s.total, chunk);
                let (in_r, in_w) = tokio::io::split(from_prev);
                let (out_r, out_w) = tokio::io::split(to_next);
                let prev = Prev { read: in_r, write: in_w, shared: view.as_ref() };
                let next = Next { write: out_w, read: out_r, shared: outbox.as_mut() };
                let mut pool = Vec::new();
                all_reduce_links(&s, &mut local, prev, next, &mut m, &mut pool).await.unwrap();
                (local, std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>(), m.replica_digest())
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        drop(dir);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_memory_links_give_the_tcp_rings_bits_in_every_mix() {
        for n in 2..=4 {
            for (total, chunk) in [(103, 10), (64, 64), (5, 4), (1000, 7)] {
                let g = grads(n, total);
                let want = tcp_ring(&g, chunk).await;
                for mask in 0..(1u32 << n) {
                    if mask == 0 {
                        continue;
                    }
                    let shared: Vec<bool> = (0..n).map(|r| mask >> r & 1 == 1).collect();
                    let got = mixed_ring(&g, chunk, &shared).await;
                    for r in 0..n {
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got[r].0), bits(&want[r].0), "{n} ranks, {total}/{chunk}, links {shared:?}: rank {r}");
                        assert_eq!(got[r].1, want[r].1, "{n} ranks, links {shared:?}: rank {r}'s measures");
                        assert_eq!(got[r].2, want[r].2, "{n} ranks, links {shared:?}: rank {r}'s replica digest");
                        assert!(got[r].2.is_some());
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_successor_that_takes_nothing_or_lies_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(2, 0, 40, 4);
        s.peer_timeout = Duration::from_millis(300);
        // 10 chunks, 5 per segment: 6 slots. The successor reads nothing.
        let mut outbox = Outbox::create(dir.path(), slots_needed(10, 2), 16).unwrap();
        let (a, _b) = tokio::io::duplex(1 << 16);
        let (p, mut q) = tokio::io::duplex(1 << 16);
        // The predecessor's first segment, so this member sends past its first.
        let (mut m, _rx) = measure(40, 4);
        let feed = async {
            for c in 0..5u32 {
                frame::write_frame(&mut q, 0, c, &[0u8; 16]).await.unwrap();
            }
        };
        let (out_r, out_w) = tokio::io::split(a);
        let (in_r, in_w) = tokio::io::split(p);
        let (mut grad, mut pool) = ([1.0; 40], Vec::new());
        let run = all_reduce_links(
            &s,
            &mut grad,
            Prev { read: in_r, write: in_w, shared: None },
            Next { write: out_w, read: out_r, shared: Some(&mut outbox) },
            &mut m,
            &mut pool,
        );
        let (e, ()) = tokio::join!(run, feed);
        assert!(matches!(&e, Err(RingError::Next(f)) if f.kind == RingFaultKind::Stalled && f.detail.contains("took no frame")), "{e:?}");
        // One that says it took frames never sent.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&99u32.to_le_bytes()).await.unwrap();
        let (p, _q) = tokio::io::duplex(1 << 16);
        let (out_r, out_w) = tokio::io::split(a);
        let (in_r, in_w) = tokio::io::split(p);
        let mut outbox = Outbox::create(dir.path(), 1, 16).unwrap();
        let e = all_reduce_links(
            &s,
            &mut [1.0; 40],
            Prev { read: in_r, write: in_w, shared: None },
            Next { write: out_w, read: out_r, shared: Some(&mut outbox) },
            &mut m,
            &mut Vec::new(),
        )
        .await;
        assert!(
            matches!(&e, Err(RingError::Next(f)) if f.kind == RingFaultKind::Malformed && f.detail.contains("took 99 frames")),
            "{e:?}"
        );
    }
}
