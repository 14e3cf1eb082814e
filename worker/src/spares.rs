//! The shadow on: the reduced chunks of its successor's segment that a
//! ring (or NCCL) member keeps after each step instead of feeding them
//! (`ddpm::ring::feed`), and sends when the coordinator asks (FeedSpare)
//! because the successor died or did not feed its own.
//!
//! The coordinator asks only while it waits for the step at the
//! `[dist] shadow_lag` bound, so a step's spare is wanted at most
//! `shadow_lag` + 1 steps after it: the last `shadow_lag` + 2 are kept
//! (1/N of the gradient each).

use std::collections::VecDeque;

use bytes::Bytes;
use ddpm::proto;

/// One step's spare: the header a feed starts with, and the chunks.
struct Spare {
    header: proto::GradientHeader,
    chunks: Vec<(u32, Bytes)>,
}

pub struct Spares {
    kept: VecDeque<Spare>,
    capacity: usize,
}

impl Spares {
    /// Spares for a run whose shadow may lag `shadow_lag` steps.
    pub fn new(shadow_lag: u64) -> Self {
        let capacity = usize::try_from(shadow_lag).unwrap_or(usize::MAX).saturating_add(2);
        Self { kept: VecDeque::new(), capacity }
    }

    /// Keeps the spare of the step `header` names, dropping the oldest
    /// beyond the capacity and any of an earlier attempt at the same step.
    pub fn keep(&mut self, header: proto::GradientHeader, chunks: Vec<(u32, Bytes)>) {
        self.kept.retain(|s| s.header.step != header.step);
        self.kept.push_back(Spare { header, chunks });
        while self.kept.len() > self.capacity {
            self.kept.pop_front();
        }
    }

    /// The spare of `step`, attempt `attempt`, to feed (once).
    pub fn take(&mut self, step: u64, attempt: u32) -> Option<(proto::GradientHeader, Vec<(u32, Bytes)>)> {
        let i = self.kept.iter().position(|s| s.header.step == step && s.header.attempt == attempt)?;
        self.kept.remove(i).map(|s| (s.header, s.chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(step: u64, attempt: u32) -> proto::GradientHeader {
        proto::GradientHeader { step, attempt, ..Default::default() }
    }

    fn chunk(i: u32) -> Vec<(u32, Bytes)> {
        vec![(i, Bytes::from(vec![i as u8; 4]))]
    }

    #[test]
    fn the_last_lag_plus_two_steps_are_kept_and_each_is_taken_once() {
        let mut s = Spares::new(2);
        for step in 1..=6 {
            s.keep(header(step, 0), chunk(step as u32));
        }
        assert!(s.take(2, 0).is_none(), "step 2 is beyond the 4 kept");
        let (h, chunks) = s.take(3, 0).expect("step 3 kept");
        assert_eq!((h.step, chunks), (3, chunk(3)));
        assert!(s.take(3, 0).is_none(), "taken once");
        assert!(s.take(6, 0).is_some());
    }

    #[test]
    fn a_later_attempt_at_a_step_replaces_the_earlier_one() {
        let mut s = Spares::new(0);
        s.keep(header(5, 0), chunk(1));
        s.keep(header(5, 1), chunk(2));
        assert!(s.take(5, 0).is_none(), "the abandoned attempt's spare is gone");
        assert_eq!(s.take(5, 1).map(|(_, c)| c), Some(chunk(2)));
    }
}
