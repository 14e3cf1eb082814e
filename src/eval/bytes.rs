//! Compact binary forms of the running sums, so that workers can ship them to
//! the coordinator (as a gRPC `bytes` field) and the coordinator can merge.
//!
//! # `FeatureStats`, version 1
//!
//! ```text
//! offset  size            field
//! 0       8               magic b"DDPMFST" + version byte 0x01
//! 8       8               dim D, u64 little-endian
//! 16      8               count n, u64 LE
//! 24      8 D             sum, f64 LE
//! ..      8 D (D + 1) / 2 upper triangle of sum_outer (row i, columns i..D), f64 LE
//! end-8   8               xxh3-64 of every byte before it, u64 LE
//! ```
//!
//! For D = 2048 that is 16.8 MB: above tonic's default 4 MiB message limit,
//! so send it as a stream of chunks or raise the limit.
//!
//! # `ScoreStats`, version 1
//!
//! ```text
//! 0       8               magic b"DDPMISC" + version byte 0x01
//! 8       8               total N (images in the whole job), u64 LE
//! 16      8               splits S, u64 LE
//! 24      8               classes C, u64 LE
//! 32      8 S             count per split, u64 LE
//! ..      8 S             sum of sum_y p log p per split, f64 LE
//! ..      8 S C           sum of p per split, f64 LE
//! end-8   8               xxh3-64 of every byte before it
//! ```
//!
//! # `BpdSums`, version 1
//!
//! ```text
//! 0       8               magic b"DDPMBPD" + version byte 0x01
//! 8       8               timesteps T, u64 LE
//! 16      8               count n, u64 LE
//! 24      8               sum of totals, f64 LE
//! 32      8               sum of prior terms, f64 LE
//! 40      8 T             sum of terms per timestep, f64 LE
//! ..      8 T             sum of pred_x0 MSEs per timestep, f64 LE
//! end-8   8               xxh3-64 of every byte before it
//! ```

use super::bpd::BpdSums;
use super::error::EvalError;
use super::score::ScoreStats;
use super::stats::FeatureStats;

const FEATURE_MAGIC: &[u8; 8] = b"DDPMFST\x01";
const SCORE_MAGIC: &[u8; 8] = b"DDPMISC\x01";
const BPD_MAGIC: &[u8; 8] = b"DDPMBPD\x01";

impl FeatureStats {
    /// The version-1 binary form (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let d = self.dim();
        let mut w = Writer::new(FEATURE_MAGIC, 8 * (3 + d + d * (d + 1) / 2 + 1));
        w.u64(d as u64);
        w.u64(self.count());
        self.sum().iter().for_each(|&v| w.f64(v));
        let outer = self.sum_outer();
        for i in 0..d {
            outer[i * d + i..(i + 1) * d].iter().for_each(|&v| w.f64(v));
        }
        w.finish()
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; refuses another format,
    /// a truncated or altered buffer, or non-finite sums.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvalError> {
        let mut r = Reader::new(bytes, FEATURE_MAGIC, "feature statistics")?;
        let d = r.len_field("dimension")?;
        let count = r.u64()?;
        let tri = d.checked_mul(d + 1).map(|x| x / 2).ok_or_else(|| r.bad("dimension too large"))?;
        r.expect_remaining(d.checked_add(tri).and_then(|x| x.checked_mul(8)).ok_or_else(|| r.bad("dimension too large"))?)?;
        let sum: Vec<f64> = (0..d).map(|_| r.f64()).collect::<Result<_, _>>()?;
        let mut outer = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let v = r.f64()?;
                outer[i * d + j] = v;
                outer[j * d + i] = v;
            }
        }
        if sum.iter().chain(&outer).any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("serialized feature statistics".into()));
        }
        FeatureStats::from_parts(d, count, sum, outer)
    }
}

impl ScoreStats {
    /// The version-1 binary form (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (s, c) = (self.splits(), self.classes());
        let mut w = Writer::new(SCORE_MAGIC, 8 * (5 + 2 * s + s * c));
        w.u64(self.total());
        w.u64(s as u64);
        w.u64(c as u64);
        self.counts().iter().for_each(|&v| w.u64(v));
        self.sum_plogp().iter().for_each(|&v| w.f64(v));
        self.sum_p().iter().for_each(|&v| w.f64(v));
        w.finish()
    }

    /// Parses [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvalError> {
        let mut r = Reader::new(bytes, SCORE_MAGIC, "Inception Score sums")?;
        let total = r.u64()?;
        let s = r.len_field("split count")?;
        let c = r.len_field("class count")?;
        let need = s.checked_mul(c).and_then(|sc| sc.checked_add(2 * s)).and_then(|x| x.checked_mul(8));
        r.expect_remaining(need.ok_or_else(|| r.bad("sizes too large"))?)?;
        let counts = (0..s).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let plogp = (0..s).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        let p = (0..s * c).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        ScoreStats::from_parts(total, c, counts, plogp, p)
    }
}

impl BpdSums {
    /// The version-1 binary form (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let t = self.terms.len();
        let mut w = Writer::new(BPD_MAGIC, 8 * (6 + 2 * t));
        w.u64(t as u64);
        w.u64(self.count);
        w.f64(self.total);
        w.f64(self.prior);
        self.terms.iter().chain(&self.x0_mse).for_each(|&v| w.f64(v));
        w.finish()
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; refuses non-finite sums.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvalError> {
        let mut r = Reader::new(bytes, BPD_MAGIC, "bits/dim sums")?;
        let t = r.len_field("timestep count")?;
        let count = r.u64()?;
        let total = r.f64()?;
        let prior = r.f64()?;
        r.expect_remaining(t.checked_mul(16).ok_or_else(|| r.bad("timestep count too large"))?)?;
        let terms = (0..t).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        let x0_mse = (0..t).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        if [total, prior].iter().chain(&terms).chain(&x0_mse).any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("serialized bits/dim sums".into()));
        }
        Ok(Self { count, total, prior, terms, x0_mse })
    }
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(magic: &[u8; 8], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(magic);
        Self { buf }
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        let h = xxhash_rust::xxh3::xxh3_64(&self.buf);
        self.u64(h);
        self.buf
    }
}

struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the magic and the checksum; the reader then walks the body.
    fn new(bytes: &'a [u8], magic: &[u8; 8], what: &'static str) -> Result<Self, EvalError> {
        let bad = |p: String| EvalError::Stats(format!("{what}: {p}"));
        if bytes.len() < 16 {
            return Err(bad(format!("{} bytes is too short to be serialized statistics", bytes.len())));
        }
        if bytes[..7] != magic[..7] {
            return Err(bad("not serialized ddpm statistics of this kind (wrong magic bytes)".into()));
        }
        if bytes[7] != magic[7] {
            return Err(bad(format!("format version {} is not supported (this build reads {})", bytes[7], magic[7])));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let want = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        if xxhash_rust::xxh3::xxh3_64(body) != want {
            return Err(bad("checksum mismatch: the bytes were truncated or altered in transit".into()));
        }
        Ok(Self { body, pos: 8, what })
    }

    fn bad(&self, problem: &str) -> EvalError {
        EvalError::Stats(format!("{}: {problem}", self.what))
    }

    fn take8(&mut self) -> Result<[u8; 8], EvalError> {
        let chunk = self.body.get(self.pos..self.pos + 8).ok_or_else(|| self.bad("truncated"))?;
        self.pos += 8;
        Ok(chunk.try_into().expect("8 bytes"))
    }

    fn u64(&mut self) -> Result<u64, EvalError> {
        self.take8().map(u64::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, EvalError> {
        self.take8().map(f64::from_le_bytes)
    }

    /// A size field, bounded by what the buffer could hold.
    fn len_field(&mut self, name: &str) -> Result<usize, EvalError> {
        let v = self.u64()?;
        if v == 0 || v > self.body.len() as u64 {
            return Err(self.bad(&format!("{name} {v} is impossible for a {}-byte buffer", self.body.len() + 8)));
        }
        Ok(v as usize)
    }

    fn expect_remaining(&self, n: usize) -> Result<(), EvalError> {
        let left = self.body.len() - self.pos;
        if left != n {
            return Err(self.bad(&format!("the header promises {n} bytes of data but {left} follow")));
        }
        Ok(())
    }
}
