//! Auditing a ring round's reduced gradient against what its members
//! reported.
//!
//! The coordinator never sees a ring member's own gradient, only the norm
//! of each of its chunks in the member's header, which it screens as the
//! star screens the chunks themselves (`screen.rs`). A member could report
//! the norms of an honest gradient and send the ring something else: a
//! NaN, or a huge value that screening would have refused. But the reduced
//! chunk is the weighted sum of the members' chunks, and a sum is never
//! longer than its parts (the triangle inequality):
//! `||sum_k w_k g_k|| <= sum_k w_k ||g_k||`. A reduced chunk over that
//! bound, or one that is not finite while every part was, proves that a
//! member lied, though not which one: the sum has no names in it. What a
//! liar can still do undetected is bounded by the norms it reported, and
//! those passed screening.
//!
//! The bound allows for rounding. The ring sums n weighted parts in
//! float32 (or rounds every hop's partial sum to bfloat16 on the wire);
//! each element of the result is then off by at most about (n + 1) units
//! of the format's last place of the sum of magnitudes, so the reduced
//! norm may exceed the exact bound by that much, relatively. The audit
//! allows four times that: an honest ring never trips it, and a lie worth
//! hiding (a NaN, a value screening would refuse) is orders of magnitude
//! over it.

use ddpm::config::GradDtype;

/// A complete ring round's reports: what the reduced chunks must satisfy.
pub struct Audit<'a> {
    /// Each member's weight in the sum (shard size over batch), rank order.
    pub weights: &'a [f32],
    /// Per member (rank order), the norm of each chunk of its own gradient.
    pub norms: &'a [&'a [f64]],
    /// The ring's wire format (bfloat16 rounds at every hop).
    pub dtype: GradDtype,
}

/// A reduced chunk that proves a member lied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuditFailure {
    #[error("the reduced chunk {chunk} is not finite (a NaN or an infinity), though every member reported a finite norm for it")]
    NotFinite { chunk: usize },
    #[error(
        "the reduced chunk {chunk} has norm {norm:.3e}, but the norms its members reported allow at most {bound:.3e} \
         (a sum is never longer than its parts)"
    )]
    TooLong { chunk: usize, norm: f64, bound: f64 },
}

/// Smallest positive normal float32: the slack for chunks that are all zeros.
const SLACK: f64 = f32::MIN_POSITIVE as f64;

impl Audit<'_> {
    /// The relative rounding the ring's sum may add to the bound.
    fn rounding(&self) -> f64 {
        let unit = match self.dtype {
            GradDtype::F32 => f64::from(f32::EPSILON) / 2.0,
            GradDtype::Bf16 => 1.0 / 256.0,
        };
        4.0 * (self.weights.len() as f64 + 2.0) * unit
    }

    /// Checks every reduced chunk (its float64 sum of squares, `sumsq[i]`)
    /// against its bound; why the first one that breaks it does.
    pub fn check(&self, sumsq: &[f64]) -> Result<(), AuditFailure> {
        let slack = 1.0 + self.rounding();
        for (i, &sq) in sumsq.iter().enumerate() {
            let parts: Vec<f64> = self.norms.iter().map(|n| n[i]).collect();
            // A shared non-finite chunk is divergence (every replica skips
            // the step); a lone one was screened out before.
            if parts.iter().any(|p| !p.is_finite()) {
                continue;
            }
            let bound: f64 = parts.iter().zip(self.weights).map(|(&p, &w)| f64::from(w) * p).sum();
            let reduced = sq.sqrt();
            if !reduced.is_finite() {
                // Honest float32 sums overflow only near f32::MAX.
                if bound * slack < f64::from(f32::MAX) {
                    return Err(AuditFailure::NotFinite { chunk: i });
                }
                continue;
            }
            if reduced > bound * slack + SLACK {
                return Err(AuditFailure::TooLong { chunk: i, norm: reduced, bound });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums of squares of `chunks` as the round keeps them.
    fn sumsq(chunks: &[&[f32]]) -> Vec<f64> {
        chunks.iter().map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum()).collect()
    }

    #[test]
    fn an_honest_float32_sum_passes_even_at_the_bound() {
        // Two members whose chunks point the same way: the sum's norm is
        // the bound itself, up to rounding.
        let a: Vec<f32> = (0..1000).map(|i| 0.1 + i as f32 * 1e-3).collect();
        let w = [0.5f32, 0.5];
        let reduced: Vec<f32> = a.iter().map(|&x| x * w[0] + x * w[1]).collect();
        let norm = sumsq(&[&a])[0].sqrt();
        let norms: [&[f64]; 2] = [&[norm, 0.0], &[norm, 0.0]];
        let audit = Audit { weights: &w, norms: &norms, dtype: GradDtype::F32 };
        assert_eq!(audit.check(&[sumsq(&[&reduced])[0], 0.0]), Ok(()));
    }

    #[test]
    fn a_reduced_chunk_longer_than_its_parts_or_not_finite_is_a_lie() {
        let w = [0.5f32, 0.5];
        let norms: [&[f64]; 2] = [&[1.0, 2.0], &[1.0, 2.0]];
        let audit = Audit { weights: &w, norms: &norms, dtype: GradDtype::F32 };
        // Chunk 0 may be 1.0 long at most.
        let e = audit.check(&sumsq(&[&[0.6, 0.9], &[1.0]])).unwrap_err().to_string();
        assert!(e.contains("chunk 0 has norm 1.082e0") && e.contains("at most 1.000e0"), "{e}");
        assert!(audit.check(&sumsq(&[&[0.6, 0.8], &[1.0]])).is_ok(), "float32's 0.6 and 0.8 are a hair over 1.0 long");
        let e = audit.check(&sumsq(&[&[0.6], &[1e20]])).unwrap_err().to_string();
        assert!(e.contains("chunk 1 has norm 1.000e20"), "{e}");
        let e = audit.check(&[0.5, f64::NAN]).unwrap_err().to_string();
        assert!(e.contains("chunk 1 is not finite"), "{e}");
        // A chunk every member reported non-finite is divergence, not a lie.
        let nan: [&[f64]; 2] = [&[f64::NAN, 1.0], &[f64::NAN, 1.0]];
        assert!(Audit { weights: &w, norms: &nan, dtype: GradDtype::F32 }.check(&[f64::NAN, 1.0]).is_ok());
        // All zeros reduce to zeros.
        let zero: [&[f64]; 2] = [&[0.0], &[0.0]];
        let audit = Audit { weights: &w, norms: &zero, dtype: GradDtype::F32 };
        assert!(audit.check(&[0.0]).is_ok());
        assert!(audit.check(&[1e-6]).is_err());
    }

    #[test]
    fn bfloat16_hops_get_their_coarser_rounding() {
        let w = [0.25f32; 4];
        let norms: [&[f64]; 4] = [&[1.0]; 4];
        let audit = Audit { weights: &w, norms: &norms, dtype: GradDtype::Bf16 };
        // 5% over is within bfloat16's rounding of four hops; 50% is not.
        assert!(audit.check(&[1.05f64.powi(2)]).is_ok());
        assert!(audit.check(&[1.5f64.powi(2)]).is_err());
        let f32_audit = Audit { dtype: GradDtype::F32, ..audit };
        assert!(f32_audit.check(&[1.05f64.powi(2)]).is_err());
    }
}
