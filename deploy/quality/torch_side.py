"""The PyTorch side of the quality comparison (bench.py): the same recipe as
our run, trained the way a diffusers user would train it.

diffusers' `UNet2DModel` with the architecture of our run (its `config.json`
from `ddpm checkpoints export`), `torch.optim.Adam`, a `LambdaLR` linear
warmup, `torch.nn.utils.clip_grad_norm_`, the official EMA (a constant
decay from the initial weights), `L_simple` with t uniform in 0..T-1, a
fresh shuffle of the dataset every epoch; every number (lr, warmup, clip,
betas, eps, EMA decay, batch, steps, beta schedule) read from our run's
resolved `config.toml`. Samples: diffusers' `DDIMScheduler` (eta 0,
clipping x0 to [-1, 1], as our `ddim` sampler) from the EMA weights,
quantized as ours (`round((x + 1) * 127.5)` clamped).

Initialisation: `pytorch` is what `UNet2DModel(...)` gets (torch.nn
defaults); `paper` re-initialises it as the paper's code and our default do
(Glorot-uniform fan_avg weights, zero biases, zero `conv2`, `to_out.0` and
`conv_out` weights), to separate the initialisation from the trainer.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image


def load_folder(path):
    """uint8 [N, 3, H, W] from every PNG in path, sorted by name (as our reader sorts)."""
    names = sorted(n for n in os.listdir(path) if n.endswith(".png"))
    return np.stack([np.asarray(Image.open(os.path.join(path, n)).convert("RGB")).transpose(2, 0, 1) for n in names])


def paper_init_(model):
    """The paper's initialisation on a diffusers UNet2DModel, in place."""
    zero = ("conv2.weight", "to_out.0.weight")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                continue  # GroupNorm: scale 1, shift 0 in both schemes
            if name.endswith("bias") or name.endswith(zero) or name == "conv_out.weight":
                p.zero_()
            else:
                torch.nn.init.xavier_uniform_(p)  # U(-l, l), l = sqrt(6 / (fan_in + fan_out))


def train_and_sample(recipe, unet_config, data, seed, init, count, ddim_steps, threads, log=print):
    """Trains per `recipe` (our resolved config.toml as a dict) on `data`
    (uint8 [N, 3, H, W]) and returns `count` EMA samples as uint8 [count, 3, H, W]."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = UNet2DModel.from_config(unet_config)
    if init == "paper":
        paper_init_(model)
    else:
        assert init == "pytorch", init
    model.train()
    o, t_cfg, d = recipe["optim"], recipe["train"], recipe["diffusion"]
    assert d["model_mean_type"] == "eps" and d["loss_type"] == "mse", "the comparison trains L_simple"
    assert d["beta_schedule"]["kind"] == "linear", "the comparison uses the linear schedule"
    T = d["num_timesteps"]
    betas = np.linspace(d["beta_schedule"]["start"], d["beta_schedule"]["end"], T, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    sqrt_abar = torch.from_numpy(np.sqrt(abar)).float()
    sqrt_1m = torch.from_numpy(np.sqrt(1.0 - abar)).float()

    opt = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    warmup = o["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min((e + 1) / warmup, 1.0) if warmup > 0 else 1.0)
    decay = t_cfg["ema_decay"]
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}

    x_all = torch.from_numpy(data).float() / 127.5 - 1.0
    flip = recipe["data"]["random_flip"]
    batch, steps = t_cfg["batch_size"], t_cfg["steps"]
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(x_all), generator=gen), 0
    for step in range(1, steps + 1):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(x_all), generator=gen), 0
        x0 = x_all[order[pos : pos + batch]]
        pos += batch
        if flip:
            mirror = torch.rand(batch, generator=gen) < 0.5
            x0 = torch.where(mirror.view(-1, 1, 1, 1), x0.flip(3), x0)
        t = torch.randint(0, T, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_1m[t].view(-1, 1, 1, 1) * noise
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x_t, t).sample, noise)
        loss.backward()
        if o["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
        opt.step()
        sched.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                ema[n].mul_(decay).add_(p, alpha=1.0 - decay)
        if step % max(1, steps // 4) == 0 or step == steps:
            log(f"  torch seed {seed} init {init}: step {step}/{steps} loss {loss.item():.4f}")

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(ema[n])
    model.eval()
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_start=betas[0], beta_end=betas[-1], beta_schedule="linear")
    scheduler.set_timesteps(ddim_steps)
    size = unet_config["sample_size"]
    gen = torch.Generator().manual_seed(10_000 + seed)
    out = []
    with torch.no_grad():
        for start in range(0, count, 250):
            n = min(250, count - start)
            x = torch.randn((n, 3, size, size), generator=gen)
            for t in scheduler.timesteps:
                eps = model(x, t.expand(n)).sample
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            out.append(((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def read_unet_config(export_dir):
    with open(os.path.join(export_dir, "config.json")) as f:
        return json.load(f)
