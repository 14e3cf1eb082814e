"""Checks a directory written by `ddpm checkpoints export --format
diffusers-pipeline` against ddpm's own sampler.

    python check_diffusers_pipeline.py --pipeline DIR --io io.safetensors [--tol 1e-4]

Loads DIR with stock diffusers' `DDPMPipeline.from_pretrained` and checks:

1. The scheduler is configured as the run was trained: T, betas and
   alphas_cumprod equal ddpm's float64 tables to float32 rounding, and the
   variance type, x0 clipping and prediction type are what ddpm says.
2. Ancestral sampling (the paper's Algorithm 2): the first k steps from
   ddpm's x_T, each step exactly the loop body of `DDPMPipeline.__call__`
   (`unet(x, t).sample`, then `scheduler.step(...).prev_sample`), with
   `DDPMScheduler.step`'s noise draw fed ddpm's per-step noise (diffusers'
   step takes no noise argument, so `randn_tensor` of its module is
   replaced). The result must equal ddpm's x_{T-k}. The same loop over
   t = 50, 49, 48 from a given x_50 (`late_*`) must equal ddpm's ancestral
   step there: near t = T the variance types agree to ~1e-6, at t = 50 they
   differ by ~1e-3, so this is where fixed_large vs fixed_small shows.
3. DDIM (eta = 0, deterministic): `DDIMPipeline.__call__` itself, with
   `DDIMScheduler.from_config` of the saved scheduler config and the
   pipeline's initial `randn_tensor` fed ddpm's x_T, all the way to x_0 on
   the same timestep subsequence. The result must equal ddpm's x_0.

`io.safetensors` (written by tests/checkpoint_export.rs): `x_T` [B, C, H, W],
`z` [k, B, C, H, W] (the noise of steps T-1, T-2, ...), `ancestral` and `ddim`
(ddpm's outputs), `ddim_timesteps` (int64), `late_x`, `late_z`, `late`,
`late_timesteps` (int64), `betas` and `alphas_cumprod` (float64); metadata `variance_type`, `prediction_type`. Prints a JSON line;
exits 1 on any mismatch.
"""

import argparse
import json
import sys

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.pipelines.ddim import pipeline_ddim
from diffusers.schedulers import scheduling_ddpm
from safetensors import safe_open
from safetensors.torch import load_file


def fed(tensors):
    """A stand-in for diffusers' `randn_tensor` that returns `tensors` in order."""
    queue = list(tensors)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if not queue:
            raise AssertionError("diffusers drew more noise than ddpm supplied")
        z = queue.pop(0)
        if tuple(z.shape) != tuple(shape):
            raise AssertionError(f"diffusers drew noise of shape {tuple(shape)}, ddpm's is {tuple(z.shape)}")
        return z.to(device=device, dtype=dtype)

    return randn_tensor, queue


def max_rel(a, b):
    return ((a.double() - b).abs() / b.abs()).max().item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--io", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    io = load_file(args.io)
    with safe_open(args.io, "pt") as f:
        meta = f.metadata()
    problems = []

    pipe = DDPMPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    unet, sched = pipe.unet.eval(), pipe.scheduler
    if type(unet) is not UNet2DModel or type(sched) is not DDPMScheduler:
        problems.append(f"components are {type(unet).__name__} and {type(sched).__name__}")

    # 1. The scheduler is the run's diffusion.
    T = io["betas"].numel()
    cfg = sched.config
    expected = {
        "num_train_timesteps": T,
        "variance_type": meta["variance_type"],
        "prediction_type": meta["prediction_type"],
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "thresholding": False,
    }
    for key, want in expected.items():
        if cfg[key] != want:
            problems.append(f"scheduler config {key} = {cfg[key]!r}, expected {want!r}")
    # float32 tables: betas to a few ulps, alphas_cumprod to the float32
    # cumulative product's rounding over T factors.
    betas_rel = max_rel(sched.betas, io["betas"])
    abar_rel = max_rel(sched.alphas_cumprod, io["alphas_cumprod"])
    if betas_rel > 1e-6:
        problems.append(f"betas differ from ddpm's by {betas_rel:.3g} relative")
    if abar_rel > 1e-5:
        problems.append(f"alphas_cumprod differ from ddpm's by {abar_rel:.3g} relative")

    def ancestral(x, timesteps, z):
        """DDPMPipeline.__call__'s loop body over `timesteps`, drawing `z`."""
        stand_in, left = fed(z)
        original = scheduling_ddpm.randn_tensor
        scheduling_ddpm.randn_tensor = stand_in
        try:
            for t in timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        finally:
            scheduling_ddpm.randn_tensor = original
        if left:
            problems.append(f"diffusers used {len(z) - len(left)} of ddpm's {len(z)} noise draws")
        return x

    with torch.no_grad():
        # 2. Ancestral: DDPMPipeline.__call__'s timesteps (num_inference_steps
        # = T, its default for T = 1000), the first k, then t = 50, 49, 48.
        sched.set_timesteps(T)
        k = io["z"].shape[0]
        x = ancestral(io["x_T"].clone(), sched.timesteps[:k], io["z"])
        ancestral_diff = (x - io["ancestral"]).abs().max().item()
        late_ts = io["late_timesteps"]
        start = (sched.timesteps == late_ts[0]).nonzero().item()
        segment = sched.timesteps[start : start + late_ts.numel()]
        if not torch.equal(segment.long(), late_ts):
            problems.append(f"DDPM timesteps {segment.tolist()} != ddpm's {late_ts.tolist()}")
        x = ancestral(io["late_x"].clone(), segment, io["late_z"])
        late_diff = (x - io["late"]).abs().max().item()

        # 3. DDIM, eta = 0: the pipeline's own __call__ from ddpm's x_T.
        ddim = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(sched.config))
        ddim.set_progress_bar_config(disable=True)
        stand_in, left = fed([io["x_T"].clone()])
        original = pipeline_ddim.randn_tensor
        pipeline_ddim.randn_tensor = stand_in
        try:
            steps = io["ddim_timesteps"].numel()
            images = ddim(batch_size=io["x_T"].shape[0], eta=0.0, num_inference_steps=steps, output_type="pt").images
        finally:
            pipeline_ddim.randn_tensor = original
        if left:
            problems.append("DDIMPipeline did not draw its initial noise")
        if not torch.equal(ddim.scheduler.timesteps.long(), io["ddim_timesteps"]):
            problems.append(f"DDIM timesteps {ddim.scheduler.timesteps.tolist()} != ddpm's {io['ddim_timesteps'].tolist()}")
        # The pipeline returns (x_0 / 2 + 0.5) clamped to [0, 1]; ddpm's x_0 is clipped to [-1, 1] already.
        ddim_diff = (images * 2 - 1 - io["ddim"]).abs().max().item()

    report = {
        "ancestral_max_abs_diff": ancestral_diff,
        "ancestral_steps": k,
        "ancestral_max_abs": io["ancestral"].abs().max().item(),
        "late_max_abs_diff": late_diff,
        "late_timesteps": late_ts.tolist(),
        "ddim_max_abs_diff": ddim_diff,
        "ddim_steps": steps,
        "ddim_max_abs": io["ddim"].abs().max().item(),
        "betas_max_rel_diff": betas_rel,
        "alphas_cumprod_max_rel_diff": abar_rel,
        "variance_type": cfg["variance_type"],
        "problems": problems,
    }
    print(json.dumps(report))
    ok = not problems and max(ancestral_diff, late_diff, ddim_diff) < args.tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
