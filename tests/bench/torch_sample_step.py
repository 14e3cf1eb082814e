"""PyTorch eager on the same U-Net: the baseline `ddpm bench sample` compares
a ddpm worker's sampling with.

Builds the U-Net as torch_train_step.py does (diffusers' UNet2DModel from the
config.json ddpm exports, or the plain-PyTorch port), then times reverse
steps under torch.inference_mode: for ancestral sampling (Algorithm 2) the
forward pass, the posterior mean from eps, and the fixed-variance noise; for
DDIM (eta = 0) the forward pass and the deterministic update. Prints one
JSON line {"model", "batch", "ancestral": [..], "ddim": [..]} with the wall
time of each step after WARMUP steps.

    python torch_sample_step.py --config config.json --batch 16 --steps 10 --threads 1
"""
import argparse
import json
import time

import torch

from torch_train_step import build


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--unet-module", default="torch_unet.py")
    p.add_argument("--ddim-steps", type=int, default=50)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = json.load(f)
    model, kind, call = build(cfg, a.unet_module)
    model = model.to(a.device).eval()
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    sigma = (betas * (1 - abar_prev) / (1 - abar)).sqrt().float().to(a.device)
    c_eps = (betas / (1 - abar).sqrt()).float().to(a.device)
    rsqrt_alpha = (1 / alphas.sqrt()).float().to(a.device)
    abar_f = abar.float().to(a.device)
    res = cfg["sample_size"]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def timed(step_fn, ts):
        x = torch.randn(a.batch, 3, res, res, device=a.device)
        times = []
        with torch.inference_mode():
            for i, (t, t_prev) in enumerate(ts[: a.warmup + a.steps]):
                sync()
                start = time.perf_counter()
                x = step_fn(x, t, t_prev)
                sync()
                if i >= a.warmup:
                    times.append(time.perf_counter() - start)
        return times

    def ancestral(x, t, _):
        tt = torch.full((a.batch,), t, device=a.device, dtype=torch.long)
        eps = call(model, x, tt)
        mean = rsqrt_alpha[t] * (x - c_eps[t] * eps)
        return mean + sigma[t] * torch.randn_like(x) if t > 0 else mean

    def ddim(x, t, t_prev):
        tt = torch.full((a.batch,), t, device=a.device, dtype=torch.long)
        eps = call(model, x, tt)
        x0 = ((x - (1 - abar_f[t]).sqrt() * eps) / abar_f[t].sqrt()).clamp(-1, 1)
        if t_prev < 0:
            return x0
        return abar_f[t_prev].sqrt() * x0 + (1 - abar_f[t_prev]).sqrt() * eps

    anc_ts = [(t, t - 1) for t in range(T - 1, -1, -1)]
    stride = T // a.ddim_steps
    ddim_t = list(range(T - 1, -1, -stride))[: a.ddim_steps]
    ddim_ts = list(zip(ddim_t, ddim_t[1:] + [-1]))
    out = {"model": kind, "batch": a.batch, "ancestral": timed(ancestral, anc_ts), "ddim": timed(ddim, ddim_ts)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
