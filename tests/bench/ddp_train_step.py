"""PyTorch DDP (gloo) training on the same U-Net: the baseline `ddpm bench
dist` compares its distributed training with.

Spawns WORLD processes; each builds the model like torch_train_step.py
(diffusers' UNet2DModel from the config.json ddpm exports, or the plain
PyTorch port), wraps it in DistributedDataParallel with the gloo backend
and times full L_simple steps on BATCH images per process (q_sample,
forward, MSE, backward with DDP's bucketed all-reduce overlapping it,
gradient clipping, Adam; rank 0 keeps the EMA of the weights, as ddpm's
coordinator does). Prints one JSON line {"world", "batch", "model",
"seconds": [..]} with rank 0's wall time of each step after WARMUP.

    python ddp_train_step.py --config config.json --world 2 --batch 2 --steps 10 --threads 1
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_train_step import build, ema_step


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, a, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=a.world)
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = json.load(f)
    model, kind, call = build(cfg, a.unet_module)
    model = torch.nn.parallel.DistributedDataParallel(model.train())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8)
    params = [p.detach() for p in model.parameters()]
    ema = [p.clone() for p in params] if rank == 0 else None
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    res = cfg["sample_size"]
    torch.manual_seed(rank + 1)
    x0 = torch.rand(a.batch, 3, res, res) * 2 - 1
    times = []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        t = torch.randint(0, T, (a.batch,))
        noise = torch.randn_like(x0)
        ab = abar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = ((call(model, xt, t) - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema_step(ema, params)
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put((kind, times))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="images per process")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unet-module", default="torch_unet.py")
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, a, port, out)) for r in range(a.world)]
    for pr in procs:
        pr.start()
    kind, times = out.get()
    for pr in procs:
        pr.join()
        if pr.exitcode != 0:
            raise SystemExit(f"a DDP process exited with {pr.exitcode}")
    print(json.dumps({"world": a.world, "batch": a.batch, "model": kind, "seconds": times}))


if __name__ == "__main__":
    main()
