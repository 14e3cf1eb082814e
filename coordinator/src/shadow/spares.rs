//! The second feeder of each chunk: after a ring step commits, each
//! member feeds its own segment and keeps its successor's as a spare
//! (`ddpm::ring::feed`), so a chunk crosses to the coordinator once. The
//! spare is asked for (work `FeedSpare`) only while the training loop
//! waits for the shadow at the `[dist] shadow_lag` bound, and only for a
//! chunk whose owner is gone, whose feed ended without it, or whose feed
//! has not even begun [`SPARE_GRACE`] into that wait. A spare that never
//! comes ends like a feed that never comes: the step timeout gives the
//! step up.

use std::time::Duration;

use ddpm::proto;

use super::{Pending, Shadow};

/// How long the loop waits at the bound for an owner whose feed has not
/// begun before it asks for the spare. The owner streams right after the
/// outcome, and the wait starts at least `shadow_lag` steps later: an
/// owner that has not begun by then is unlikely to.
pub const SPARE_GRACE: Duration = Duration::from_secs(2);

/// One rank of a ring step, as a feeder.
#[derive(Debug, Clone, Default)]
pub(super) struct RankFeed {
    /// Its feed streams open now.
    open: u32,
    /// Whether one of its feed streams ended.
    ended: bool,
    /// Whether its predecessor was asked for the spare of its chunks.
    spare_asked: bool,
}

impl Pending {
    /// Whether owner rank `r` will not feed its missing chunks: it left,
    /// its feed ended without them, or it has not begun after `waited`.
    fn owner_failed(&self, r: usize, waited: Duration) -> bool {
        let f = &self.ranks[r];
        self.lost[r] || (f.open == 0 && (f.ended || waited >= SPARE_GRACE))
    }

    /// The ranks whose spare holders to ask now (each once), and marks them asked.
    fn spares_to_ask(&mut self, waited: Duration) -> Vec<usize> {
        let n = self.members.len();
        if self.owners.is_empty() || n < 2 {
            return Vec::new();
        }
        let mut missing = vec![false; n];
        for (i, &filled) in self.filled.iter().enumerate() {
            missing[self.owners[i]] |= !filled;
        }
        let ask: Vec<usize> = (0..n)
            .filter(|&r| missing[r] && !self.ranks[r].spare_asked && self.owner_failed(r, waited) && !self.lost[(r + n - 1) % n])
            .collect();
        for &r in &ask {
            self.ranks[r].spare_asked = true;
        }
        ask
    }
}

/// A feed stream of one member for one step, open while this lives.
pub struct FeedStream<'a> {
    shadow: &'a Shadow,
    worker: u64,
    step: u64,
    attempt: u32,
}

impl Drop for FeedStream<'_> {
    fn drop(&mut self) {
        self.shadow.with_rank(self.worker, self.step, self.attempt, |f| {
            f.open = f.open.saturating_sub(1);
            f.ended = true;
        });
    }
}

impl Shadow {
    /// `worker`'s feed of step `step` (attempt `attempt`) is open until the
    /// returned guard drops.
    pub fn open_feed(&self, worker: u64, step: u64, attempt: u32) -> FeedStream<'_> {
        self.with_rank(worker, step, attempt, |f| f.open += 1);
        FeedStream { shadow: self, worker, step, attempt }
    }

    fn with_rank(&self, worker: u64, step: u64, attempt: u32, change: impl FnOnce(&mut RankFeed)) {
        let mut inner = self.lock();
        let p = inner.pending.iter_mut().find(|p| p.step == step && p.attempt == attempt && !p.owners.is_empty());
        if let Some((p, r)) = p.and_then(|p| p.members.iter().position(|&m| m == worker).map(|r| (p, r))) {
            change(&mut p.ranks[r]);
        }
    }

    /// The spares to ask for now, `waited` into a wait at the lag bound:
    /// (the holder, what to ask it). Each is returned once.
    pub fn spares_wanted(&self, waited: Duration) -> Vec<(u64, proto::FeedSpare)> {
        let mut inner = self.lock();
        let mut wanted = Vec::new();
        for p in inner.pending.iter_mut() {
            let n = p.members.len();
            for r in p.spares_to_ask(waited) {
                wanted.push((p.members[(r + n - 1) % n], proto::FeedSpare { step: p.step, attempt: p.attempt }));
            }
        }
        wanted
    }
}
