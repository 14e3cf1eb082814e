//! The second feeder of each chunk: after a ring step commits, each
//! member feeds its own segment and keeps its successor's as a spare
//! (`ddpm::ring::feed`), so a chunk crosses to the coordinator once. The
//! spare is asked for (work `FeedSpare`) only while the training loop
//! waits for the shadow at the `[dist] shadow_lag` bound, and only for a
//! chunk whose owner is gone, whose feed ended without it, or whose feed
//! has not even begun [`SPARE_GRACE`] into that wait. A spare that never
//! comes ends like a feed that never comes: the step timeout gives the
//! step up.
//!
//! The rules over one committed step's ranks; the shadow (`shadow.rs`)
//! keeps a [`RankFeed`] per rank of each step it waits for.

use std::time::Duration;

/// How long the loop waits at the bound for an owner whose feed has not
/// begun before it asks for the spare. The owner streams right after the
/// outcome, and the wait starts at least `shadow_lag` steps later: an
/// owner that has not begun by then is unlikely to.
pub const SPARE_GRACE: Duration = Duration::from_secs(2);

/// One rank of a ring step, as a feeder.
#[derive(Debug, Clone, Default)]
pub struct RankFeed {
    /// Its feed streams open now.
    open: u32,
    /// Whether one of its feed streams ended.
    ended: bool,
    /// Whether its predecessor was asked for the spare of its chunks.
    spare_asked: bool,
}

impl RankFeed {
    pub fn opened(&mut self) {
        self.open += 1;
    }

    pub fn closed(&mut self) {
        self.open = self.open.saturating_sub(1);
        self.ended = true;
    }

    /// Whether this owner will not feed its missing chunks: it `left`,
    /// its feed ended without them, or it has not begun after `waited`.
    fn failed(&self, left: bool, waited: Duration) -> bool {
        left || (self.open == 0 && (self.ended || waited >= SPARE_GRACE))
    }
}

/// The owner ranks whose spares to ask for now, of a step whose chunk `i`
/// is owned by rank `owners[i]` and has arrived when `filled[i]`, with
/// `lost[r]` for ranks that left: each once (marked in `ranks`), and
/// never of a holder (the owner's predecessor) that left too.
pub fn to_ask(owners: &[usize], filled: &[bool], lost: &[bool], ranks: &mut [RankFeed], waited: Duration) -> Vec<usize> {
    let n = ranks.len();
    if owners.is_empty() || n < 2 {
        return Vec::new();
    }
    let mut missing = vec![false; n];
    for (&owner, &arrived) in owners.iter().zip(filled) {
        missing[owner] |= !arrived;
    }
    let ask: Vec<usize> =
        (0..n).filter(|&r| missing[r] && !ranks[r].spare_asked && ranks[r].failed(lost[r], waited) && !lost[(r + n - 1) % n]).collect();
    for &r in &ask {
        ranks[r].spare_asked = true;
    }
    ask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_asked_for_once_and_only_when_it_will_not_feed() {
        // 2 ranks, chunks 0..2 owned by rank 0, 2..4 by rank 1; chunk 3 missing.
        let (owners, filled) = ([0, 0, 1, 1], [true, true, true, false]);
        let mut ranks = vec![RankFeed::default(); 2];
        let short = Duration::from_millis(10);
        ranks[1].opened();
        assert!(to_ask(&owners, &filled, &[false, false], &mut ranks, SPARE_GRACE).is_empty(), "rank 1 is feeding");
        ranks[1].closed();
        assert_eq!(to_ask(&owners, &filled, &[false, false], &mut ranks, short), [1], "its feed ended without chunk 3");
        assert!(to_ask(&owners, &filled, &[false, false], &mut ranks, short).is_empty(), "asked once");
        let mut fresh = vec![RankFeed::default(); 2];
        assert!(to_ask(&owners, &filled, &[true, false], &mut fresh, short).is_empty(), "the holder (rank 0) left");
        assert_eq!(to_ask(&owners, &filled, &[false, true], &mut fresh, short), [1], "the owner left");
    }
}
