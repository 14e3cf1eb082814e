"""PyTorch eager on the same U-Net: the baseline `ddpm bench train` compares
a ddpm worker's training step with.

Builds diffusers' UNet2DModel from a diffusers config.json (the one ddpm
exports for its own U-Net, so both sides run the same architecture; where
diffusers is not installed, the plain-PyTorch port in torch_unet.py, passed
as --unet-module), then
times full L_simple training steps: q_sample, forward, MSE to the noise,
backward, gradient clipping, Adam and the EMA of the weights (the paper's
recipe, as ddpm's step does it; the EMA with torch's fastest form,
`_foreach_lerp_`). With --precision bf16 the forward pass runs under
torch.autocast(dtype=torch.bfloat16) and backward outside it, the float32
weights, Adam and EMA unchanged (what ddpm's [train] precision = "bf16"
does). Prints one JSON line {"batch", "seconds": [..]} with the
wall time of each step after WARMUP steps.

    python torch_train_step.py --config config.json --batch 32 --steps 10 --threads 1
"""
import argparse
import json
import time

import importlib.util

import torch


def build(cfg, unet_module):
    """diffusers' UNet2DModel, or the plain-PyTorch port when diffusers is missing."""
    try:
        from diffusers import UNet2DModel

        return UNet2DModel.from_config(cfg), "diffusers UNet2DModel", lambda m, x, t: m(x, t).sample
    except ImportError:
        spec = importlib.util.spec_from_file_location("torch_unet", unet_module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.UNet(cfg), "plain PyTorch U-Net (tests/bench/torch_unet.py)", lambda m, x, t: m(x, t)


EMA_DECAY = 0.9999


def ema_step(ema, params):
    """ema += (1 - decay) (params - ema), for every tensor in one foreach call."""
    with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1 - EMA_DECAY)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--unet-module", default="torch_unet.py")
    p.add_argument("--params", type=int, default=0, help="expected parameter count (checked when > 0)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = json.load(f)
    model, kind, call = build(cfg, a.unet_module)
    model = model.to(a.device).train()
    n = sum(p.numel() for p in model.parameters())
    if a.params and n != a.params:
        raise SystemExit(f"{kind} has {n} parameters, expected {a.params}")
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8)
    params = [p.detach() for p in model.parameters()]
    ema = [p.clone() for p in params]
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
        with torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = call(model, xt, t)
        loss = ((out.float() - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_step(ema, params)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"batch": a.batch, "model": kind, "params": n, "precision": a.precision, "seconds": times}))


if __name__ == "__main__":
    main()
