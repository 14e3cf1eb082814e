"""A float64 numpy port of the official DDPM code (hojonathanho/diffusion,
diffusion_utils_2.GaussianDiffusion2 and utils.py), written from docs/ddpm.md
sections 1-4. It is the reference the golden tests compare the Rust bound
against; the Rust side is never consulted.

Arrays are NCHW like the Rust code (the official code is NHWC; every
reduction here is over all non-batch axes, so the layout does not matter).
Timesteps are 0-based: t = 0 is the paper's t = 1.
"""

import math

import numpy as np


def linear_betas(start, end, n):
    return np.linspace(start, end, n, dtype=np.float64)


def cosine_betas(s, n, max_beta=0.999):
    """Nichol & Dhariwal (2021) eq. (17), in floating point."""
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)], dtype=np.float64)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * np.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered_x = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    return np.where(
        x < -0.999,
        log_cdf_plus,
        np.where(x > 0.999, log_one_minus_cdf_min, np.log(np.maximum(cdf_delta, 1e-12))),
    )


def mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


class Diffusion:
    """mean_type: 'eps' | 'x0' | 'mu'; var_type: 'fixedlarge' | 'fixedsmall'."""

    def __init__(self, betas, mean_type, var_type):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = n = len(betas)
        self.mean_type, self.var_type = mean_type, var_type
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = acp = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = pv = betas * (1.0 - acp) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)
        self.model_variance, self.model_log_variance = {
            "fixedlarge": (betas, np.log(np.append(pv[1], betas[1:]))),
            "fixedsmall": (pv, self.posterior_log_variance_clipped),
        }[var_type]
        assert len(self.model_log_variance) == n

    def tables(self):
        names = [
            "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2", "model_variance", "model_log_variance",
        ]  # fmt: skip
        return {name: getattr(self, name) for name in names}

    @staticmethod
    def _extract(a, t, x):
        return a[t].reshape((len(t),) + (1,) * (x.ndim - 1))

    def q_mean_variance(self, x0, t):
        e = lambda a: self._extract(a, t, x0)
        return e(self.sqrt_alphas_cumprod) * x0, e(1.0 - self.alphas_cumprod), e(self.log_one_minus_alphas_cumprod)

    def q_sample(self, x0, t, noise):
        e = lambda a: self._extract(a, t, x0)
        return e(self.sqrt_alphas_cumprod) * x0 + e(self.sqrt_one_minus_alphas_cumprod) * noise

    def q_posterior_mean_variance(self, x0, xt, t):
        e = lambda a: self._extract(a, t, xt)
        mean = e(self.posterior_mean_coef1) * x0 + e(self.posterior_mean_coef2) * xt
        return mean, e(self.posterior_variance), e(self.posterior_log_variance_clipped)

    def predict_x0_from_eps(self, xt, t, eps):
        e = lambda a: self._extract(a, t, xt)
        return e(self.sqrt_recip_alphas_cumprod) * xt - e(self.sqrt_recipm1_alphas_cumprod) * eps

    def predict_x0_from_mu(self, xt, t, mu):
        e = lambda a: self._extract(a, t, xt)
        return e(1.0 / self.posterior_mean_coef1) * mu - e(self.posterior_mean_coef2 / self.posterior_mean_coef1) * xt

    def p_mean_variance(self, out, xt, t, clip):
        clip_fn = (lambda v: np.clip(v, -1.0, 1.0)) if clip else (lambda v: v)
        if self.mean_type == "mu":
            pred_x0, mean = clip_fn(self.predict_x0_from_mu(xt, t, out)), out
        else:
            pred_x0 = clip_fn(self.predict_x0_from_eps(xt, t, out) if self.mean_type == "eps" else out)
            mean = self.q_posterior_mean_variance(pred_x0, xt, t)[0]
        e = lambda a: self._extract(a, t, xt) * np.ones_like(xt)
        return mean, e(self.model_variance), e(self.model_log_variance), pred_x0

    def vb_terms_bpd(self, out, x0, xt, t, clip):
        true_mean, _, true_logvar = self.q_posterior_mean_variance(x0, xt, t)
        mean, _, logvar, pred_x0 = self.p_mean_variance(out, xt, t, clip)
        kl = mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / np.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)) / np.log(2.0)
        return np.where(t == 0, nll, kl), pred_x0

    def prior_bpd(self, x0):
        t = np.full(x0.shape[0], self.num_timesteps - 1)
        mean, _, logvar = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / np.log(2.0)

    def training_losses(self, loss_type, out, x0, xt, t, noise):
        if loss_type == "kl":
            return self.vb_terms_bpd(out, x0, xt, t, clip=False)[0]
        target = {"eps": noise, "x0": x0, "mu": self.q_posterior_mean_variance(x0, xt, t)[0]}[self.mean_type]
        return mean_flat((target - out) ** 2)

    def calc_bpd_loop(self, model, x0, noise, clip):
        """model(xt, t) -> output; noise[t] is the q_sample noise at step t."""
        b, n = x0.shape[0], self.num_timesteps
        terms, mse = np.zeros((b, n)), np.zeros((b, n))
        for step in reversed(range(n)):
            t = np.full(b, step)
            xt = self.q_sample(x0, t, noise[step])
            terms[:, step], pred_x0 = self.vb_terms_bpd(model(xt, t), x0, xt, t, clip)
            mse[:, step] = mean_flat((pred_x0 - x0) ** 2)
        prior = self.prior_bpd(x0)
        return {"total": terms.sum(axis=1) + prior, "prior": prior, "terms": terms, "mse": mse}
