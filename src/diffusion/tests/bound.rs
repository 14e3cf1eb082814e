//! The bound's pieces: KL, the discretized decoder, the terms and the loop.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

use super::{diffusion, max_diff, randn, ts};
use crate::diffusion::losses::{approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl};
use crate::diffusion::{LossType, ModelMeanType, VarianceType};

/// Images on the data grid `k/127.5 - 1`, including both ends.
fn grid_x0(b: i64) -> Tensor {
    let k = (Tensor::arange(b * 48, (Kind::Int64, Device::Cpu)) * 37).remainder(256);
    (k.to_kind(Kind::Double) / 127.5 - 1.0).view([b, 3, 4, 4])
}

#[test]
fn normal_kl_is_zero_for_equal_gaussians_and_matches_closed_form() {
    let (m, lv) = (randn(20, 1), randn(21, 1) * 0.3);
    assert_eq!(normal_kl(&m, &lv, &m, &lv).abs().max().double_value(&[]), 0.0);
    // KL(N(1, e^0) || N(0, e^2)) = 0.5 * (-1 + 2 + e^-2 + e^-2).
    let one = |v: f64| Tensor::from_slice(&[v]);
    let kl = normal_kl(&one(1.0), &one(0.0), &one(0.0), &one(2.0)).double_value(&[0]);
    assert!((kl - 0.5 * (1.0 + 2.0 * (-2f64).exp())).abs() < 1e-15);
}

#[test]
fn approx_cdf_is_a_close_symmetric_cdf() {
    let x = Tensor::linspace(-6.0, 6.0, 241, (Kind::Double, Device::Cpu));
    let cdf = approx_standard_normal_cdf(&x);
    assert_eq!(approx_standard_normal_cdf(&Tensor::from_slice(&[0.0])).double_value(&[0]), 0.5);
    assert!(max_diff(&(&cdf + approx_standard_normal_cdf(&-&x)), &cdf.ones_like()) < 1e-15);
    // Within 2e-4 of Phi(x) = 0.5 erfc(-x / sqrt 2).
    let exact = (-&x / std::f64::consts::SQRT_2).erfc() * 0.5;
    assert!(max_diff(&cdf, &exact) < 2e-4, "{}", max_diff(&cdf, &exact));
}

#[test]
fn decoder_probabilities_over_all_256_bins_sum_to_1() {
    let x = (Tensor::arange(256, (Kind::Double, Device::Cpu)) / 127.5 - 1.0).view([1, 256]);
    for (mean, log_scale) in [(0.0, -2.0), (0.9, -4.9), (-1.0, -1.0), (0.37, 0.5)] {
        let m = x.full_like(mean);
        let ls = x.full_like(log_scale);
        let p = discretized_gaussian_log_likelihood(&x, &m, &ls).exp();
        let total = p.sum(Kind::Double).double_value(&[]);
        assert!((total - 1.0).abs() < 1e-9, "mean {mean}, log scale {log_scale}: {total}");
    }
    // Far from the mean, the probability is floored at 1e-12.
    let far = discretized_gaussian_log_likelihood(&Tensor::from_slice(&[0.5]), &Tensor::from_slice(&[-0.5]), &Tensor::from_slice(&[-6.0]));
    assert_eq!(far.double_value(&[0]), 1e-12f64.ln());
}

#[test]
fn mean_flat_keeps_the_batch() {
    let x = Tensor::arange(24, (Kind::Double, Device::Cpu)).view([2, 3, 4]);
    assert_eq!(Vec::<f64>::try_from(mean_flat(&x)).expect("f64"), vec![5.5, 17.5]);
}

#[test]
fn a_perfect_mu_model_has_zero_kl_and_the_prior_is_tiny() {
    let d = diffusion(1000, |c| {
        c.model_mean_type = ModelMeanType::Mu;
        c.model_var_type = VarianceType::FixedSmall;
    });
    let x0 = grid_x0(4);
    let t = ts(&[1, 2, 500, 999]);
    let xt = d.q_sample(&x0, &t, &randn(22, 4));
    let mu = d.q_posterior_mean_variance(&x0, &xt, &t).0;
    let (bpd, _) = d.vb_terms_bpd(&mu, &x0, &xt, &t, false);
    assert!(bpd.abs().max().double_value(&[]) < 1e-12);
    // At t = 0 the term is the decoder NLL instead: positive, below 8 bits/dim.
    let t0 = ts(&[0, 0, 0, 0]);
    let xt0 = d.q_sample(&x0, &t0, &randn(23, 4));
    let mu0 = d.q_posterior_mean_variance(&x0, &xt0, &t0).0;
    let (nll, _) = d.vb_terms_bpd(&mu0, &x0, &xt0, &t0, false);
    assert!(nll.min().double_value(&[]) > 0.0 && nll.max().double_value(&[]) < 8.0, "{nll}");
    // docs/ddpm.md section 4: L_T is about 1e-5 bits/dim.
    let prior = d.prior_bpd(&x0);
    assert!(prior.max().double_value(&[]) < 1e-4 && prior.min().double_value(&[]) > 0.0, "{prior}");
}

#[test]
fn training_losses_targets() {
    let t = ts(&[0, 3, 9]);
    let x0 = grid_x0(3);
    let noise = randn(24, 3);
    for (mean_type, shift) in [(ModelMeanType::Eps, 1.0), (ModelMeanType::X0, 0.5), (ModelMeanType::Mu, 2.0)] {
        let d = diffusion(10, |c| c.model_mean_type = mean_type);
        let xt = d.q_sample(&x0, &t, &noise);
        let target = match mean_type {
            ModelMeanType::Eps => noise.shallow_clone(),
            ModelMeanType::X0 => x0.shallow_clone(),
            ModelMeanType::Mu => d.q_posterior_mean_variance(&x0, &xt, &t).0,
        };
        let loss = d.training_losses(&(&target + shift), &x0, &xt, &t, &noise);
        assert_eq!(loss.size(), [3]);
        assert!(max_diff(&loss, &loss.full_like(shift * shift)) < 1e-12, "{mean_type:?}");
    }
    let d = diffusion(10, |c| c.loss_type = LossType::Kl);
    let xt = d.q_sample(&x0, &t, &noise);
    let loss = d.training_losses(&noise, &x0, &xt, &t, &noise);
    assert!(max_diff(&loss, &d.vb_terms_bpd(&noise, &x0, &xt, &t, false).0) == 0.0);
}

#[test]
fn bpd_loop_visits_every_t_once_and_orders_columns_by_t() {
    let d = diffusion(6, |c| c.model_var_type = VarianceType::FixedSmall);
    let x0 = grid_x0(2);
    let seen = RefCell::new(Vec::new());
    let mut model = |xt: &Tensor, t: &Tensor| {
        seen.borrow_mut().push(t.int64_value(&[0]));
        assert_eq!(Vec::<i64>::try_from(t).expect("i64").len(), 2);
        xt * 0.3
    };
    let mut noise = |t: i64| randn(100 + t as u64, 2);
    let r = d.calc_bpd_loop(&mut model, &x0, &mut noise, true);
    assert_eq!(*seen.borrow(), vec![5, 4, 3, 2, 1, 0]);
    assert_eq!((r.terms_bpd.size(), r.x0_mse.size(), r.total_bpd.size()), (vec![2, 6], vec![2, 6], vec![2]));
    for t in [0i64, 3, 5] {
        let tb = ts(&[t, t]);
        let xt = d.q_sample(&x0, &tb, &randn(100 + t as u64, 2));
        let (term, pred_x0) = d.vb_terms_bpd(&(&xt * 0.3), &x0, &xt, &tb, true);
        assert!(max_diff(&r.terms_bpd.select(1, t), &term) < 1e-12, "column {t}");
        assert!(max_diff(&r.x0_mse.select(1, t), &mean_flat(&(pred_x0 - &x0).square())) < 1e-12);
    }
    let sum = r.terms_bpd.sum_dim_intlist(1, false, None) + d.prior_bpd(&x0);
    assert!(max_diff(&r.total_bpd, &sum) < 1e-12);
    assert!(max_diff(&r.prior_bpd, &d.prior_bpd(&x0)) == 0.0);
}
