"""The sections of the diffusion fixture (see gen_diffusion.py). Each function
adds named arrays to `tensors` and plain data to `meta`; every random draw
comes from a generator seeded here."""

import contextlib

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

import ddpm_numpy as ref

T = 1000
STEP_TS = [0, 1, 2, 500, 998, 999]
# name: (prediction_type, variance_type, clip_sample)
DDPM_CASES = {
    "eps_large_clip": ("epsilon", "fixed_large", True),
    "eps_small_clip": ("epsilon", "fixed_small", True),
    "eps_large_noclip": ("epsilon", "fixed_large", False),
    "x0_large_clip": ("sample", "fixed_large", True),
    "x0_small_clip": ("sample", "fixed_small", True),
}
# name: (steps, prediction_type, eta, clip_sample, timesteps stepped from)
DDIM_CASES = {
    "eps_s50": (50, "epsilon", 0.0, True, [980, 500, 20, 0]),
    "eps_s3": (3, "epsilon", 0.0, True, [666, 333, 0]),
    "eps_s50_noclip": (50, "epsilon", 0.0, False, [980, 20, 0]),
    "x0_s50": (50, "sample", 0.0, True, [980, 20, 0]),
    "eps_s50_eta05": (50, "epsilon", 0.5, True, [980, 500, 20, 0]),
    "eps_s1000_eta1": (1000, "epsilon", 1.0, True, [999, 1, 0]),
}
DDIM_STEP_COUNTS = [1, 2, 3, 7, 10, 20, 50, 100, 250, 333, 999, 1000]
# The whole bound at T = 20: name -> (schedule, mean type, var type, clip).
BOUND_T = 20
BOUND_CASES = {
    "eps_large_clip": (("linear", 1e-3, 0.2), "eps", "fixedlarge", True),
    "eps_small_noclip": (("linear", 1e-3, 0.2), "eps", "fixedsmall", False),
    "x0_large_clip": (("linear", 1e-3, 0.2), "x0", "fixedlarge", True),
    "mu_small_clip": (("linear", 1e-3, 0.2), "mu", "fixedsmall", True),
    "mu_large_noclip": (("linear", 1e-3, 0.2), "mu", "fixedlarge", False),
    "cosine_eps_large_clip": (("cosine", 0.008), "eps", "fixedlarge", True),
}
# Amplitude of the stand-in model's error; at T = 1000 the decoder's sigma is
# 0.0074, and an error of many sigmas would put float32 in the regime where
# bin probabilities round away (see bound_functions' "hard" cases).
BOUND_AMP = 0.05
BOUND1000_AMP = 0.005
BOUND1000_TS = [0, 1, 2, 500, 998, 999]
BOUND1000_CASES = {"eps_large": ("eps", "fixedlarge"), "eps_small": ("eps", "fixedsmall"),
                   "x0_large": ("x0", "fixedlarge"), "mu_small": ("mu", "fixedsmall")}  # fmt: skip
F32, F64 = np.float32, np.float64


def betas_of(schedule, n):
    if schedule[0] == "linear":
        return ref.linear_betas(schedule[1], schedule[2], n)
    return ref.cosine_betas(schedule[1], n)


def grid_images(rng, shape):
    """Data on the grid k/127.5 - 1 with both end bins present."""
    k = rng.integers(0, 256, size=shape)
    k.reshape(-1)[:4] = [0, 255, 1, 254]
    return (k / 127.5 - 1.0).astype(F32)


def guess_model(d, x0, amp):
    """The stand-in for the network (tests/golden_diffusion/bound.rs computes the
    same): x0_guess = x0 + amp sin(3 x_t + t/10), given as eps, x0 or mu."""

    def model(xt, t):
        e = lambda a: d._extract(a, t, xt)
        x0_guess = x0 + amp * np.sin(3.0 * xt + 0.1 * t.reshape(-1, 1, 1, 1))
        if d.mean_type == "x0":
            return x0_guess
        if d.mean_type == "eps":
            return (xt - e(d.sqrt_alphas_cumprod) * x0_guess) / e(d.sqrt_one_minus_alphas_cumprod)
        return e(d.posterior_mean_coef1) * x0_guess + e(d.posterior_mean_coef2) * xt

    return model


def put_tables(tensors, prefix, d):
    for name, table in d.tables().items():
        tensors[f"{prefix}/{name}"] = table.astype(F64)


def schedules(tensors, meta):
    for var in ("fixedlarge", "fixedsmall"):
        put_tables(tensors, f"sched/linear/np_{var}", ref.Diffusion(ref.linear_betas(1e-4, 0.02, T), "eps", var))
    put_tables(tensors, "sched/cosine/np_fixedlarge", ref.Diffusion(ref.cosine_betas(0.008, T), "eps", "fixedlarge"))
    for name, sched in (("linear", DDPMScheduler()), ("cosine", DDPMScheduler(beta_schedule="squaredcos_cap_v2"))):
        tensors[f"sched/{name}/diffusers/betas"] = sched.betas.numpy()
        tensors[f"sched/{name}/diffusers/alphas_cumprod"] = sched.alphas_cumprod.numpy()
    # The variances diffusers' step uses, for every t (t = 0 is never used: no noise there).
    sched = DDPMScheduler()
    for var in ("fixed_small", "fixed_large"):
        v = [float(sched._get_variance(t, variance_type=var)) for t in range(T)]
        tensors[f"sched/linear/diffusers/variance_{var}"] = np.array(v, dtype=F32)


def forward(tensors, meta):
    rng = np.random.default_rng(1)
    x0 = grid_images(rng, (4, 3, 8, 8))
    noise = rng.standard_normal(x0.shape).astype(F32)
    t = np.array([0, 1, 500, 999], dtype=np.int64)
    xt = DDPMScheduler().add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    d = ref.Diffusion(ref.linear_betas(1e-4, 0.02, T), "eps", "fixedlarge")
    x0d, xtd, noised = x0.astype(F64), xt.astype(F64), noise.astype(F64)
    mean, var, logvar = d.q_posterior_mean_variance(x0d, xtd, t)
    qmean, qvar, qlogvar = d.q_mean_variance(x0d, t)
    tensors.update({
        "q/x0": x0, "q/noise": noise, "q/t": t, "q/xt_diffusers": xt,
        "q/xt_np": d.q_sample(x0d, t, noised), "q/q_mean_np": qmean, "q/q_var_np": qvar.ravel(),
        "q/q_logvar_np": qlogvar.ravel(), "q/post_mean_np": mean, "q/post_var_np": var.ravel(),
        "q/post_logvar_np": logvar.ravel(), "q/pred_x0_np": d.predict_x0_from_eps(xtd, t, noised),
    })  # fmt: skip


@contextlib.contextmanager
def ddpm_noise(replace=None):
    """Records the noise DDPMScheduler.step draws through randn_tensor, or
    replaces it with `replace`."""
    drawn, real = [], scheduling_ddpm.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, **kw):
        if replace is not None:
            out = replace.to(dtype)
        else:
            out = real(shape, generator=generator, device=device, dtype=dtype, **kw)
        drawn.append(out.clone())
        return out

    scheduling_ddpm.randn_tensor = fake
    try:
        yield drawn
    finally:
        scheduling_ddpm.randn_tensor = real


def to64(sched, ac64):
    """The scheduler's own code on float64 tables (stock diffusers keeps float32)."""
    sched.alphas_cumprod = torch.from_numpy(ac64)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def ddpm_steps(tensors, meta):
    ac64 = ref.Diffusion(ref.linear_betas(1e-4, 0.02, T), "eps", "fixedlarge").alphas_cumprod
    rng = np.random.default_rng(2)
    for t in STEP_TS:
        tensors[f"ddpm/xt/{t}"] = rng.standard_normal((2, 3, 8, 8)).astype(F32)
        tensors[f"ddpm/out/{t}"] = rng.standard_normal((2, 3, 8, 8)).astype(F32)
    for ci, (case, (pred, var, clip)) in enumerate(DDPM_CASES.items()):
        kw = dict(prediction_type=pred, variance_type=var, clip_sample=clip)
        for t in STEP_TS:
            xt, out = (torch.from_numpy(tensors[f"ddpm/{k}/{t}"]) for k in ("xt", "out"))
            seed = 1000 * ci + t
            with ddpm_noise() as drawn:
                res = DDPMScheduler(**kw).step(out, t, xt, generator=torch.Generator().manual_seed(seed))
            # diffusers draws torch.randn(shape, generator) on the CPU in the output's
            # dtype, and only for t > 0: the same seed regenerates it.
            noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
            assert len(drawn) == (1 if t > 0 else 0), (case, t, len(drawn))
            assert all(torch.equal(n, noise) for n in drawn)
            with ddpm_noise(replace=noise):
                res64 = to64(DDPMScheduler(**kw), ac64).step(out.double(), t, xt.double())
            p = f"ddpm/{case}/{t}"
            tensors.update({f"{p}/noise": noise.numpy(), f"{p}/prev32": res.prev_sample.numpy(),
                            f"{p}/x0_32": res.pred_original_sample.numpy(), f"{p}/prev64": res64.prev_sample.numpy(),
                            f"{p}/x0_64": res64.pred_original_sample.numpy()})  # fmt: skip
    meta["ddpm"] = {"ts": STEP_TS, "cases": {c: {"prediction_type": p, "variance_type": v, "clip": k}
                                             for c, (p, v, k) in DDPM_CASES.items()}}  # fmt: skip


def ddim_steps(tensors, meta):
    ac64 = ref.Diffusion(ref.linear_betas(1e-4, 0.02, T), "eps", "fixedlarge").alphas_cumprod
    timesteps = {}
    for steps in DDIM_STEP_COUNTS:
        sched = DDIMScheduler()
        sched.set_timesteps(steps)
        timesteps[str(steps)] = sched.timesteps.tolist()
    meta["ddim"] = {"timesteps": timesteps, "cases": {}}
    rng = np.random.default_rng(3)
    for case, (steps, pred, eta, clip, ts) in DDIM_CASES.items():
        kw = dict(prediction_type=pred, clip_sample=clip)
        stock, s64 = DDIMScheduler(**kw), to64(DDIMScheduler(**kw), ac64)
        stock.set_timesteps(steps)
        s64.set_timesteps(steps)
        pairs = []
        for t in ts:
            xt, out, noise = (torch.from_numpy(rng.standard_normal((2, 3, 8, 8)).astype(F32)) for _ in range(3))
            res = stock.step(out, t, xt, eta=eta, variance_noise=noise if eta > 0 else None)
            res64 = s64.step(out.double(), t, xt.double(), eta=eta, variance_noise=noise.double() if eta > 0 else None)
            prev = t - T // steps
            pairs.append([t, prev if prev >= 0 else None])
            p = f"ddim/{case}/{t}"
            tensors.update({f"{p}/xt": xt.numpy(), f"{p}/out": out.numpy(), f"{p}/noise": noise.numpy()})
            tensors.update({f"{p}/prev32": res.prev_sample.numpy(), f"{p}/x0_32": res.pred_original_sample.numpy()})
            tensors.update({f"{p}/prev64": res64.prev_sample.numpy(), f"{p}/x0_64": res64.pred_original_sample.numpy()})
        meta["ddim"]["cases"][case] = {
            "steps": steps, "prediction_type": pred, "eta": eta, "clip": clip, "pairs": pairs,
        }  # fmt: skip


def bound_functions(tensors, meta):
    rng = np.random.default_rng(4)
    m1, m2 = (rng.standard_normal(256).astype(F32) for _ in range(2))
    lv1, lv2 = (rng.uniform(-8.0, 1.0, 256).astype(F32) for _ in range(2))
    x = np.linspace(-6.0, 6.0, 241).astype(F32)
    tensors.update({"fn/kl/m1": m1, "fn/kl/lv1": lv1, "fn/kl/m2": m2, "fn/kl/lv2": lv2,
                    "fn/kl/out": ref.normal_kl(*(v.astype(F64) for v in (m1, lv1, m2, lv2))),
                    "fn/cdf/x": x, "fn/cdf/out": ref.approx_standard_normal_cdf(x.astype(F64))})  # fmt: skip

    def dll_case(name, z):
        n = len(z)
        xs = grid_images(rng, (n,))
        log_scales = rng.uniform(-6.0, 0.0, n).astype(F32)
        means = (xs - z * np.exp(log_scales)).astype(F32)
        out = ref.discretized_gaussian_log_likelihood(xs.astype(F64), means.astype(F64), log_scales.astype(F64))
        tensors.update({f"fn/{name}/x": xs, f"fn/{name}/means": means, f"fn/{name}/log_scales": log_scales,
                        f"fn/{name}/out": out})  # fmt: skip

    # Within a few sigmas (what a decent model gives), plus far-off pixels floored at 1e-12.
    z = np.clip(rng.standard_normal(1024) * 1.5, -4.0, 4.0)
    z[:32] = np.where(np.arange(32) % 2 == 0, 60.0, -60.0)
    dll_case("dll", z)
    # 4-5.5 sigmas off: bin probabilities of ~1e-5..1e-9, which float32 cannot
    # resolve but float64 can (compared in float64 only).
    dll_case("dll_hard", rng.uniform(4.0, 5.5, 256) * np.where(rng.random(256) < 0.5, -1.0, 1.0))


def bound_loops(tensors, meta):
    rng = np.random.default_rng(5)
    meta["bound"] = {"num_timesteps": BOUND_T, "amp": BOUND_AMP, "cases": {}}
    for case, (schedule, mean_type, var_type, clip) in BOUND_CASES.items():
        d = ref.Diffusion(betas_of(schedule, BOUND_T), mean_type, var_type)
        x0 = grid_images(rng, (2, 3, 8, 8))
        noise = rng.standard_normal((BOUND_T,) + x0.shape).astype(F32)
        res = d.calc_bpd_loop(guess_model(d, x0.astype(F64), BOUND_AMP), x0.astype(F64), noise.astype(F64), clip)
        put_tables(tensors, f"bound/{case}/np", d)
        tensors.update({f"bound/{case}/x0": x0, f"bound/{case}/noise": noise})
        tensors.update({f"bound/{case}/{k}": v for k, v in res.items()})
        meta["bound"]["cases"][case] = {"schedule": list(schedule), "mean_type": mean_type, "var_type": var_type,
                                        "clip": clip}  # fmt: skip


def bound_1000(tensors, meta):
    rng = np.random.default_rng(6)
    t = np.array(BOUND1000_TS, dtype=np.int64)
    meta["bound1000"] = {"ts": BOUND1000_TS, "amp": BOUND1000_AMP, "cases": {}}
    for case, (mean_type, var_type) in BOUND1000_CASES.items():
        d = ref.Diffusion(ref.linear_betas(1e-4, 0.02, T), mean_type, var_type)
        x0 = grid_images(rng, (len(t), 3, 8, 8))
        noise = rng.standard_normal(x0.shape).astype(F32)
        x0d = x0.astype(F64)
        xt = d.q_sample(x0d, t, noise.astype(F64)).astype(F32)
        out = guess_model(d, x0d, BOUND1000_AMP)(xt.astype(F64), t).astype(F32)
        xtd, outd = xt.astype(F64), out.astype(F64)
        p = f"bound1000/{case}"
        tensors.update({f"{p}/x0": x0, f"{p}/noise": noise, f"{p}/t": t, f"{p}/xt": xt, f"{p}/out": out,
                        f"{p}/prior": d.prior_bpd(x0d)})  # fmt: skip
        for clip in (True, False):
            terms, pred_x0 = d.vb_terms_bpd(outd, x0d, xtd, t, clip)
            mean, _, logvar, _ = d.p_mean_variance(outd, xtd, t, clip)
            tensors.update({f"{p}/clip_{clip}/terms": terms, f"{p}/clip_{clip}/pred_x0": pred_x0,
                            f"{p}/clip_{clip}/mean": mean, f"{p}/clip_{clip}/logvar": logvar[:, 0, 0, 0]})  # fmt: skip
        for loss in ("mse", "kl"):
            tensors[f"{p}/loss_{loss}"] = d.training_losses(loss, outd, x0d, xtd, t, noise.astype(F64))
        meta["bound1000"]["cases"][case] = {"mean_type": mean_type, "var_type": var_type}
