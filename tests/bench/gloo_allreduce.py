"""PyTorch DDP's all-reduce (gloo backend) on loopback: the baseline that
`ddpm bench allreduce` compares the coordinator's all-reduce with.

Spawns WORLD processes that all-reduce a float32 tensor of ELEMENTS values
REPEATS times and prints one JSON line: {"world", "bytes", "seconds": [..]}
with rank 0's wall time of each all_reduce (after one warm-up).

    python gloo_allreduce.py --world 2 --elements 35746307 --repeats 5
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, elements, repeats, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    t = torch.randn(elements)
    dist.all_reduce(t)  # warm-up: connections and buffers
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--elements", type=int, default=35_746_307)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, a.world, a.elements, a.repeats, port, q)) for r in range(a.world)]
    for pr in procs:
        pr.start()
    times = q.get(timeout=600)
    for pr in procs:
        pr.join()
    print(json.dumps({"world": a.world, "bytes": a.elements * 4, "seconds": times}))


if __name__ == "__main__":
    main()
