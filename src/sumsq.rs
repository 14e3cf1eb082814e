//! Float64 sums of squares of float32 values: the gradient's global norm,
//! each chunk's norm that a member reports and the owners' sums of their
//! reduced segments are all made of these.
//!
//! Summed in element order, one float64 add waits for the previous one
//! (4 cycles each): 50 ms for the cifar10 gradient's 35.7M values, more
//! than the ring's whole all-reduce of it on a CPU. So the sum is spread
//! over [`LANES`] independent partial sums (element `i` goes to lane
//! `i % LANES`), which the compiler keeps in vector registers, and the
//! lanes are combined in one fixed order. The result depends only on the
//! values, not on the machine or how many calls fed them (see
//! [`SquareSum::add`]): the star, the ring and NCCL get the same bits for
//! the same chunk, which is what lets a step decided on scalars match one
//! decided on the bytes.

/// Independent partial sums: 16 float64, four 256-bit registers' worth.
pub const LANES: usize = 16;

/// A running float64 sum of squares, fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct SquareSum {
    lanes: [f64; LANES],
    /// The values that did not fill a whole row of lanes (only the last
    /// piece may leave any).
    tail: f64,
}

impl SquareSum {
    /// Adds the squares of `values`. Every piece but the last must hold a
    /// multiple of [`LANES`] values, so that element `i` of the whole
    /// lands in the same lane however the whole is cut.
    pub fn add(&mut self, values: &[f32]) {
        let rows = values.chunks_exact(LANES);
        let rest = rows.remainder();
        for row in rows {
            for (acc, &x) in self.lanes.iter_mut().zip(row) {
                let x = f64::from(x);
                *acc += x * x;
            }
        }
        for &x in rest {
            self.tail += f64::from(x) * f64::from(x);
        }
    }

    /// The sum: lanes combined pairwise in a fixed order, then the tail.
    pub fn total(&self) -> f64 {
        let mut l = self.lanes;
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                l[i] += l[i + width];
            }
        }
        l[0] + self.tail
    }
}

/// The float64 sum of the squares of `values`.
pub fn sum_squares(values: &[f32]) -> f64 {
    let mut s = SquareSum::default();
    s.add(values);
    s.total()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_does_not_depend_on_how_the_values_were_cut() {
        let values: Vec<f32> = (0..10_007).map(|i| ((i as f32) * 0.731).sin() * 1e-3).collect();
        let whole = sum_squares(&values);
        let mut pieces = SquareSum::default();
        for piece in values.chunks(LANES * 37) {
            pieces.add(piece);
        }
        assert_eq!(whole.to_bits(), pieces.total().to_bits());
        let exact: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        assert!((whole - exact).abs() <= exact * 1e-12, "{whole} vs {exact}");
    }

    #[test]
    fn small_exact_and_non_finite_sums() {
        assert_eq!(sum_squares(&[3.0, 4.0, f32::MIN_POSITIVE]), 25.0 + f64::from(f32::MIN_POSITIVE).powi(2));
        assert_eq!(sum_squares(&[]), 0.0);
        assert!(sum_squares(&[1.0; 40].iter().copied().chain([f32::NAN]).collect::<Vec<_>>()).is_nan());
        assert_eq!(sum_squares(&[f32::INFINITY; 17]), f64::INFINITY);
        // float32's largest squares do not overflow in float64.
        assert!(sum_squares(&[f32::MAX; 64]).is_finite());
    }
}
