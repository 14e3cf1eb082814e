"""PyTorch eager on the same U-Net: the baseline `ddpm bench train` compares
a ddpm worker's training step with.

Builds diffusers' UNet2DModel from a diffusers config.json (the one ddpm
exports for its own U-Net, so both sides run the same architecture), then
times full L_simple training steps: q_sample, forward, MSE to the noise,
backward, Adam. Prints one JSON line {"batch", "seconds": [..]} with the
wall time of each step after WARMUP steps.

    python torch_train_step.py --config config.json --batch 32 --steps 10 --threads 1
"""
import argparse
import json
import time

import torch
from diffusers import UNet2DModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = json.load(f)
    model = UNet2DModel.from_config(cfg).to(a.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8)
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float().to(a.device)
    res = cfg["sample_size"]
    x0 = torch.rand(a.batch, 3, res, res, device=a.device) * 2 - 1
    times = []
    for i in range(a.warmup + a.steps):
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        t = torch.randint(0, T, (a.batch,), device=a.device)
        noise = torch.randn_like(x0)
        ab = abar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = model(xt, t).sample
        loss = ((out - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"batch": a.batch, "seconds": times}))


if __name__ == "__main__":
    main()
