//! Counter-based randomness: every random choice the training step makes for
//! one sample (its timestep, its noise, its flip) is a pure function of
//! `(run seed, step, global sample index)`.
//!
//! That is what makes a sample contribute the same loss and gradient whichever
//! worker holds it, so 1, 2 or 3 workers train the same model; and what makes
//! resume exact, since there is no generator state to carry beyond the step.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood 2014) with normals by
//! Box-Muller. It is written here rather than taken from `rand` on purpose:
//! the streams are part of a run's identity (a checkpoint resumed after a
//! dependency upgrade must draw the same numbers), so they must never change
//! under us.

/// What a stream is used for; part of the key so that streams never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// The diffusion timestep `t` of a training sample.
    Timestep = 1,
    /// The Gaussian noise `eps` of a training sample.
    Noise = 2,
    /// The random horizontal flip of a training sample.
    Flip = 3,
    /// The per-epoch permutation of the dataset.
    Epoch = 4,
    /// Dropout masks of one worker's shard in one step.
    Dropout = 5,
    /// Sampling jobs: the initial noise and per-step noise of one image.
    Sample = 6,
    /// Bits/dim evaluation: the `q_sample` noise of one image at one timestep.
    Bpd = 7,
    /// Interpolation jobs: the encoding noise of the two images (index 0, 1)
    /// and the shared reverse-process noise (index 2) at each timestep.
    Interpolate = 8,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijective 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key for the stream of `purpose` for `(seed, a, b)`; for a training
/// sample `a` is the step and `b` the global sample index.
pub fn key(seed: u64, purpose: Purpose, a: u64, b: u64) -> u64 {
    let mut h = mix64(seed ^ GOLDEN);
    h = mix64(h ^ (purpose as u64).wrapping_mul(GOLDEN));
    h = mix64(h ^ a.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    mix64(h ^ b.wrapping_mul(0xA076_1D64_78BD_642F))
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

impl Stream {
    pub fn new(key: u64) -> Self {
        Self { state: key }
    }

    /// The stream of `purpose` for `(seed, a, b)`.
    pub fn for_key(seed: u64, purpose: Purpose, a: u64, b: u64) -> Self {
        Self::new(key(seed, purpose, a, b))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift with rejection, so
    /// unbiased). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Stream::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fills `out` with standard normals (Box-Muller, both outputs used),
    /// computed in f64 and rounded once to f32.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let (a, b) = self.normal_pair();
            pair[0] = a as f32;
            pair[1] = b as f32;
        }
        if let [last] = chunks.into_remainder() {
            *last = self.normal_pair().0 as f32;
        }
    }

    fn normal_pair(&mut self) -> (f64, f64) {
        // 1 - u is in (0, 1], so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        (r * theta.cos(), r * theta.sin())
    }
}

/// The per-sample random choices of one training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleDraw {
    /// Timestep in `0..num_timesteps` (the code's 0-based convention).
    pub t: i64,
    /// Whether to flip the image horizontally.
    pub flip: bool,
}

/// Timestep and flip for `(seed, step, index)`.
pub fn sample_draw(seed: u64, step: u64, index: u64, num_timesteps: u64, flip_enabled: bool) -> SampleDraw {
    let t = Stream::for_key(seed, Purpose::Timestep, step, index).below(num_timesteps) as i64;
    let flip = flip_enabled && Stream::for_key(seed, Purpose::Flip, step, index).next_u64() >> 63 == 1;
    SampleDraw { t, flip }
}

/// The noise `eps` of `(seed, step, index)`, `n` standard normals.
pub fn sample_noise(seed: u64, step: u64, index: u64, out: &mut [f32]) {
    Stream::for_key(seed, Purpose::Noise, step, index).fill_normal(out)
}

/// A uniformly random permutation of `0..n` (Fisher-Yates) for `(seed, epoch)`.
pub fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<u32> {
    assert!(n <= u32::MAX as usize, "dataset larger than 2^32 samples");
    let mut perm: Vec<u32> = (0..n as u32).collect();
    let mut s = Stream::for_key(seed, Purpose::Epoch, epoch, 0);
    for i in (1..n).rev() {
        let j = s.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_vector() {
        // First outputs of SplitMix64 seeded with 1234567, from the reference
        // C implementation (Vigna, prng.di.unimi.it/splitmix64.c).
        let mut s = Stream::new(1234567);
        let want = [6457827717110365317u64, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821];
        for w in want {
            assert_eq!(s.next_u64(), w);
        }
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut v = vec![0f32; 200_001];
        Stream::new(7).fill_normal(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut s = Stream::new(3);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[s.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let p = permutation(1, 0, 1000);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        assert_ne!(p, permutation(2, 0, 1000));
        assert_ne!(p, permutation(1, 1, 1000));
        assert_eq!(p, permutation(1, 0, 1000));
    }

    #[test]
    fn draws_depend_on_every_key_part() {
        let d = |seed, step, idx| sample_draw(seed, step, idx, 1000, true).t;
        let base = d(0, 0, 0);
        let others = [d(1, 0, 0), d(0, 1, 0), d(0, 0, 1)];
        assert!(others.iter().any(|&t| t != base));
        let mut a = vec![0f32; 16];
        let mut b = vec![0f32; 16];
        sample_noise(5, 10, 3, &mut a);
        sample_noise(5, 10, 4, &mut b);
        assert_ne!(a, b);
        sample_noise(5, 10, 3, &mut b);
        assert_eq!(a, b);
    }
}
