//! Unit tests of the evaluation layer that need no fixtures; the golden
//! tests against pytorch-fid, numpy and PyTorch are tests/golden_eval.rs and
//! tests/eval_files.rs.

use tch::{Kind, Tensor};

use super::*;

fn rows(n: i64, d: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, d], (Kind::Double, tch::Device::Cpu)) * 2.0 + 0.5
}

#[test]
fn covariance_of_a_small_set_is_np_cov() {
    // x = [[1, 2], [3, 5], [4, 4]]: np.cov(x, rowvar=False) = [[7/3, 11/6], [11/6, 7/3]].
    let mut s = FeatureStats::new(2);
    s.add_rows(&[1.0, 2.0, 3.0, 5.0, 4.0, 4.0]).unwrap();
    assert_eq!(s.count(), 3);
    assert_eq!(s.mean().unwrap(), vec![8.0 / 3.0, 11.0 / 3.0]);
    let c = s.covariance().unwrap();
    let want = [7.0 / 3.0, 11.0 / 6.0, 11.0 / 6.0, 7.0 / 3.0];
    assert!(c.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-14), "{c:?}");
}

#[test]
fn stats_refuse_what_they_cannot_use() {
    let mut s = FeatureStats::new(3);
    assert!(s.mean().unwrap_err().to_string().contains("no features"));
    assert!(s.add_rows(&[1.0, 2.0]).unwrap_err().to_string().contains("multiple of D = 3"));
    assert!(s.add_batch(&rows(4, 2, 0)).unwrap_err().to_string().contains("expected [n, 3]"));
    s.add_rows(&[1.0, 2.0, 3.0]).unwrap();
    assert!(s.covariance().unwrap_err().to_string().contains("at least 2"));
    assert!(s.merge(&FeatureStats::new(4)).unwrap_err().to_string().contains("4-dimensional"));
    let nan = Tensor::from_slice(&[f32::NAN, 0.0, 0.0]).view([1, 3]);
    assert!(matches!(s.add_batch(&nan), Err(EvalError::NonFinite(_))));
}

#[test]
fn stats_bytes_round_trip_exactly_and_detect_damage() {
    let mut s = FeatureStats::new(5);
    s.add_batch(&rows(17, 5, 1)).unwrap();
    s.add_batch(&rows(4, 5, 2).to_kind(Kind::Float)).unwrap();
    let bytes = s.to_bytes();
    assert_eq!(bytes.len(), 8 * (3 + 5 + 15 + 1));
    assert_eq!(FeatureStats::from_bytes(&bytes).unwrap(), s);
    let mut flipped = bytes.clone();
    flipped[40] ^= 1;
    assert!(FeatureStats::from_bytes(&flipped).unwrap_err().to_string().contains("checksum"));
    assert!(FeatureStats::from_bytes(&bytes[..bytes.len() - 9]).is_err());
    let mut version = bytes.clone();
    version[7] = 9;
    assert!(FeatureStats::from_bytes(&version).unwrap_err().to_string().contains("version 9"));
    assert!(FeatureStats::from_bytes(&ScoreStats::new(10, 2, 3).unwrap().to_bytes()).unwrap_err().to_string().contains("magic"));
    assert!(FeatureStats::from_bytes(b"short").is_err());
}

#[test]
fn frechet_distance_of_one_dimension_is_closed_form() {
    // d = 1: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2).
    let fid = frechet_distance(&[1.0], &[4.0], &[3.0], &[9.0]).unwrap();
    assert!((fid - (4.0 + 4.0 + 9.0 - 12.0)).abs() < 1e-12, "{fid}");
    // Diagonal covariances: sum over dimensions of the same.
    let fid = frechet_distance(&[0.0, 0.0], &[1.0, 0.0, 0.0, 4.0], &[0.0, 1.0], &[4.0, 0.0, 0.0, 0.0]).unwrap();
    assert!((fid - (1.0 + (1.0 + 4.0 - 4.0) + 4.0)).abs() < 1e-12, "{fid}");
}

#[test]
fn frechet_distance_refuses_bad_input() {
    assert!(frechet_distance(&[0.0, 1.0], &[1.0; 4], &[0.0], &[1.0]).unwrap_err().to_string().contains("mu2"));
    assert!(frechet_distance(&[0.0], &[1.0; 4], &[0.0], &[1.0]).unwrap_err().to_string().contains("sigma1"));
    assert!(matches!(frechet_distance(&[f64::NAN], &[1.0], &[0.0], &[1.0]), Err(EvalError::NonFinite(_))));
    assert!(FidStats::new(vec![0.0; 3], vec![0.0; 8]).is_err());
}

#[test]
fn score_splits_follow_integer_division() {
    let s = ScoreStats::new(253, 10, 4).unwrap();
    for i in 0..253u64 {
        let k = s.split_of(i) as u64;
        assert!(k * 253 / 10 <= i && i < (k + 1) * 253 / 10, "image {i} in split {k}");
    }
    assert!(ScoreStats::new(5, 10, 4).is_err(), "fewer images than splits");
    assert!(ScoreStats::new(5, 0, 4).is_err());
}

#[test]
fn inception_score_refuses_logits_and_bounds() {
    let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.3]).view([2, 2]);
    assert!(inception_score(&logits, 1).unwrap_err().to_string().contains("not logits"));
    let probs = logits.softmax(1, Kind::Double);
    let (m, sd) = inception_score(&probs, 1).unwrap();
    assert!(m >= 1.0 && sd == 0.0);
    let mut s = ScoreStats::new(4, 2, 2).unwrap();
    assert!(s.add_probs(&probs, 3).unwrap_err().to_string().contains("outside the job's 0..4"));
    s.add_probs(&probs, 0).unwrap();
    assert!(s.score().unwrap_err().to_string().contains("split 1 has 0 of its 2 images"));
    let bytes = s.to_bytes();
    assert_eq!(ScoreStats::from_bytes(&bytes).unwrap(), s);
}

#[test]
fn bpd_sums_round_trip_and_refuse_damage() {
    let s = BpdSums { count: 3, total: 10.5, prior: 1e-5, terms: vec![0.25, 1.5, -0.0], x0_mse: vec![0.1, 0.2, 0.3] };
    let bytes = s.to_bytes();
    assert_eq!(BpdSums::from_bytes(&bytes).unwrap(), s);
    let mut flipped = bytes.clone();
    flipped[30] ^= 1;
    assert!(BpdSums::from_bytes(&flipped).unwrap_err().to_string().contains("checksum"));
    assert!(BpdSums::from_bytes(&bytes[..bytes.len() - 8]).is_err());
    assert!(BpdSums::from_bytes(&FeatureStats::new(2).to_bytes()).unwrap_err().to_string().contains("magic"));
    let nan = BpdSums { total: f64::NAN, ..s };
    assert!(BpdSums::from_bytes(&nan.to_bytes()).unwrap_err().to_string().contains("serialized bits/dim"));
}
