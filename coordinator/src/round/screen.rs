//! Screening each member's gradient before it enters the sum: one member
//! must not be able to poison the model. Per chunk, once every member's
//! copy has arrived and before any of it is summed or sent back:
//!
//! - a member whose chunk holds a NaN or an infinity while another
//!   member's does not is the culprit (when every member's does, the model
//!   itself diverged: the step is skipped by every replica, as before);
//! - a member whose chunk norm exceeds `factor` times the reference is the
//!   culprit. The reference is the members' median norm of the same chunk
//!   in the last applied step (norms change slowly from step to step), or,
//!   on a run's first step, this step's median when at least three members
//!   can outvote one. `factor` 0 turns the norm check off.
//!
//! The culprit is named, dropped, and the step is redone by the others, so
//! what is applied is the honest members' gradient. Reported losses must
//! be finite and non-negative (`L_simple` is a mean of squares).

use std::sync::Arc;

/// How a round screens its members' chunks.
#[derive(Debug, Clone, Default)]
pub struct Screening {
    /// A member's chunk norm may be at most this many times the reference (0: no bound).
    pub factor: f64,
    /// Per chunk, the members' median norm in the last applied step.
    pub reference: Option<Arc<Vec<f64>>>,
}

/// The median of `v` (NaN when empty).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Screening {
    /// Judges chunk `chunk` from each member's (all finite, norm), in rank
    /// order: the chunk's median norm for the next step's reference, or the
    /// culprit's rank and why.
    pub fn judge(&self, chunk: usize, stats: &[(bool, f64)]) -> Result<f64, (usize, String)> {
        let finite: Vec<usize> = (0..stats.len()).filter(|&r| stats[r].0).collect();
        if finite.len() < stats.len() && !finite.is_empty() {
            let r = (0..stats.len()).find(|&r| !stats[r].0).expect("one is not finite");
            return Err((r, format!("sent a non-finite gradient (NaN or infinity in chunk {chunk}) while the others' are finite")));
        }
        let mut norms: Vec<f64> = finite.iter().map(|&r| stats[r].1).collect();
        let this_median = median(&mut norms);
        if self.factor > 0.0 && !finite.is_empty() {
            let reference = match &self.reference {
                Some(r) => r.get(chunk).copied(),
                None if stats.len() >= 3 => Some(this_median),
                None => None,
            };
            if let Some(reference) = reference.filter(|r| *r > 0.0 && r.is_finite()) {
                let bound = self.factor * reference;
                let worst = finite.iter().copied().max_by(|&a, &b| stats[a].1.total_cmp(&stats[b].1)).expect("not empty");
                if stats[worst].1 > bound {
                    return Err((
                        worst,
                        format!(
                            "sent a gradient whose chunk {chunk} has norm {:.3e}, over {}x the reference {reference:.3e} (the members' median)",
                            stats[worst].1, self.factor
                        ),
                    ));
                }
            }
        }
        Ok(this_median)
    }
}

/// Whether a member's reported loss can be true.
pub fn loss_ok(loss: f64) -> bool {
    loss.is_finite() && loss >= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_nan_is_the_culprit_but_a_shared_one_is_divergence() {
        let s = Screening::default();
        assert_eq!(s.judge(0, &[(true, 1.0), (false, f64::NAN)]).unwrap_err().0, 1);
        assert!(s.judge(0, &[(false, f64::NAN), (false, f64::NAN)]).is_ok());
    }

    #[test]
    fn a_huge_norm_is_the_culprit_against_the_last_step_or_a_majority() {
        // Two members and no history: nobody can be told apart by norm.
        let first = Screening { factor: 100.0, reference: None };
        assert!(first.judge(0, &[(true, 1.0), (true, 1e20)]).is_ok());
        // Three: the median outvotes the one.
        assert_eq!(first.judge(0, &[(true, 1.0), (true, 1e20), (true, 2.0)]).unwrap_err().0, 1);
        // With the last step's reference, two suffice; honest spread passes.
        let later = Screening { factor: 100.0, reference: Some(Arc::new(vec![1.5])) };
        assert_eq!(later.judge(0, &[(true, 1e20), (true, 1.0)]).unwrap_err().0, 0);
        assert_eq!(later.judge(0, &[(true, 3.0), (true, 1.0)]), Ok(2.0));
        // Off.
        let off = Screening { factor: 0.0, reference: Some(Arc::new(vec![1.0])) };
        assert!(off.judge(0, &[(true, 1e20), (true, 1.0)]).is_ok());
        assert!(loss_ok(0.5) && !loss_ok(f64::NAN) && !loss_ok(-1.0) && !loss_ok(f64::INFINITY));
    }
}
