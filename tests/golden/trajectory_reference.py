#!/usr/bin/env python3
"""The PyTorch reference of a short training run (tests/golden_trajectory.rs):
K steps of the paper's recipe with diffusers' UNet2DModel, torch.optim.Adam,
torch.nn.utils.clip_grad_norm_, a LambdaLR linear warmup and the official
EMA, replaying the batches our trainer drew.

    trajectory_reference.py --inputs IN --out OUT

IN/ is what the Rust test exports from our trainer before it trains:
  model/      config.json and diffusion_pytorch_model.safetensors: the
              initial weights, loaded with UNet2DModel.from_pretrained
  batches.safetensors
              for k = 1..K: x0.k [B, C, H, W] float32 (flipped, in [-1, 1]),
              t.k [B] int64 (0-based), noise.k like x0.k
  run.json    steps (K), save_at, lr, warmup_steps, grad_clip, beta1, beta2,
              eps, ema_decay, beta_start, beta_end, num_timesteps,
              require_clipping
OUT/ gets step<k>.safetensors for each k in save_at (param.NAME,
exp_avg.NAME, exp_avg_sq.NAME, ema.NAME under the diffusers names) and
log.json (per step: loss, pre-clip grad norm, lr, clipped; and zero_grad,
the parameters whose gradient is zero in exact arithmetic, see
structural_zero_grads).

Nothing here reads our code: the schedule is the official code's (float64
numpy, cast to float32 where it is used), the rest is PyTorch's own.
The name has no gen_ prefix: tests/run.sh does not run it, the test does,
on inputs it has just written.
"""
import argparse
import copy
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file


def schedule(run):
    """sqrt(abar_t) and sqrt(1 - abar_t) in float64, as the official
    diffusion_utils_2.py computes them (np.linspace, np.cumprod)."""
    betas = np.linspace(run["beta_start"], run["beta_end"], run["num_timesteps"], dtype=np.float64)
    abar = np.cumprod(1.0 - betas, axis=0)
    return np.sqrt(abar), np.sqrt(1.0 - abar)


def extract(table, t):
    """table[t] cast to float32 at use, shaped [B, 1, 1, 1] (official `_extract`)."""
    return torch.from_numpy(table)[t].to(torch.float32).view(-1, 1, 1, 1)


def structural_zero_grads(model, batch):
    """Names of the parameters whose gradient is zero in exact arithmetic
    whatever the weights, found on a float64 copy with random weights (so
    that no zero-initialised layer hides a path) and this batch.

    Adam turns the float32 rounding noise such a gradient has into steps of
    about lr |g| / eps, independently in each implementation, so these
    tensors are compared only for staying noise. Two kinds exist: the key
    bias of attention (softmax over keys ignores a per-query constant q.b_k)
    and, where a GroupNorm has one channel per group, the per-channel
    constants that only reach it (a ResBlock's conv1 bias and timestep
    projection before norm2; the last ResBlock's output biases before
    conv_norm_out)."""
    probe = copy.deepcopy(model).double().train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in probe.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            else:
                bound = (1.0 / p[0].numel()) ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in batch)
    F.mse_loss(probe(x0 + noise, t).sample, noise).backward()
    rms = {name: p.grad.square().mean().sqrt().item() for name, p in probe.named_parameters()}
    sizes = {name: p.numel() for name, p in probe.named_parameters()}
    overall = math.sqrt(sum(rms[n] ** 2 * sizes[n] for n in rms) / sum(sizes.values()))
    zero = sorted(n for n, r in rms.items() if r < 1e-10 * overall)
    # float64 noise is ~1e-16 of the sums; a real gradient is far above it.
    smallest_real = min(r for n, r in rms.items() if n not in zero) / overall
    largest_zero = max((rms[n] / overall for n in zero), default=0.0)
    assert smallest_real > 1e-6, f"a gradient {smallest_real:.1e} of the RMS: is it zero or not?"
    print(f"trajectory_reference: {len(zero)} tensors with a zero gradient in exact arithmetic "
          f"(float64 RMS <= {largest_zero:.0e} of the model's; every other >= {smallest_real:.0e})")
    return zero


def state_of(model, opt, ema):
    out = {}
    for name, p in model.named_parameters():
        st = opt.state[p]
        out[f"param.{name}"] = p.detach().clone().contiguous()
        out[f"exp_avg.{name}"] = st["exp_avg"].clone().contiguous()
        out[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].clone().contiguous()
        out[f"ema.{name}"] = ema[name].clone().contiguous()
    return out


def run(inputs, out):
    torch.set_num_threads(1)
    with open(os.path.join(inputs, "run.json")) as f:
        run = json.load(f)
    batches = load_file(os.path.join(inputs, "batches.safetensors"))
    model = UNet2DModel.from_pretrained(os.path.join(inputs, "model"), low_cpu_mem_usage=False)
    # Dropout draws its own masks here: the comparison is only exact without it.
    assert model.config.dropout == 0.0, "dropout must be 0 (masks are not replayed)"
    model.train()

    zero_grad = structural_zero_grads(model, (batches["x0.1"], batches["t.1"], batches["noise.1"]))
    sqrt_abar, sqrt_1m_abar = schedule(run)
    opt = torch.optim.Adam(
        model.parameters(), lr=run["lr"], betas=(run["beta1"], run["beta2"]), eps=run["eps"], weight_decay=0.0
    )
    # Our 1-based step s uses lr * min(s / warmup, 1); LambdaLR's epoch is s - 1.
    warmup = run["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min((e + 1) / warmup, 1.0) if warmup > 0 else 1.0)
    # The official code's tf.train.ExponentialMovingAverage(decay) without
    # num_updates: a constant decay from the first step, starting at the
    # initial weights.
    decay = run["ema_decay"]
    ema = {name: p.detach().clone() for name, p in model.named_parameters()}

    log = {"loss": [], "grad_norm": [], "lr": [], "clipped": [], "zero_grad": zero_grad}
    save_at = set(run["save_at"])
    for k in range(1, run["steps"] + 1):
        x0, t, noise = batches[f"x0.{k}"], batches[f"t.{k}"], batches[f"noise.{k}"]
        x_t = extract(sqrt_abar, t) * x0 + extract(sqrt_1m_abar, t) * noise  # eq. (4)
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x_t, t).sample, noise)  # L_simple, eq. (14)
        loss.backward()
        if run["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run["grad_clip"]).item()
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
        assert math.isfinite(norm), f"step {k}: gradient norm {norm}"
        log["loss"].append(loss.item())
        log["grad_norm"].append(norm)
        log["lr"].append(opt.param_groups[0]["lr"])
        log["clipped"].append(run["grad_clip"] > 0 and norm > run["grad_clip"])
        opt.step()
        sched.step()
        with torch.no_grad():
            for name, p in model.named_parameters():
                ema[name].mul_(decay).add_(p, alpha=1.0 - decay)  # ema = decay ema + (1 - decay) param
        if k in save_at:
            save_file(state_of(model, opt, ema), os.path.join(out, f"step{k}.safetensors"))

    if run["require_clipping"]:
        # The test must exercise clipping, and the unclipped path too.
        assert any(log["clipped"]), f"no step clipped at {run['grad_clip']}: norms {log['grad_norm']}"
        assert not all(log["clipped"]), f"every step clipped at {run['grad_clip']}: norms {log['grad_norm']}"
    if 1 < warmup < run["steps"]:
        # The boundary is crossed: full lr at step `warmup`, less just before.
        assert log["lr"][warmup - 1] == run["lr"] and log["lr"][warmup - 2] < run["lr"], log["lr"]
    with open(os.path.join(out, "log.json"), "w") as f:
        json.dump(log, f)
    clipped = sum(log["clipped"])
    print(f"trajectory_reference: {run['steps']} steps, loss {log['loss'][0]:.4f} -> {log['loss'][-1]:.4f}, "
          f"{clipped} clipped, norms {min(log['grad_norm']):.3f}..{max(log['grad_norm']):.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True, help="directory the Rust test exported")
    parser.add_argument("--out", required=True, help="directory for the reference states")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    run(args.inputs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
