#!/usr/bin/env python3
"""Sample quality of our trainer against a PyTorch trainer with the same
recipe, on a real image dataset that a registry package ships.

    deploy/quality/bench.py [--steps 2000] [--seeds 3] [--samples 1000] [--out DIR]

Arms (--arms, comma-separated; all four by default):
  ours-paper     ddpm-coord + one ddpm-worker (CPU), [model] init = "paper"
  ours-pytorch   the same with [model] init = "pytorch"
  torch-pytorch  diffusers UNet2DModel + torch.optim.Adam, torch.nn's
                 default initialisation (torch_side.py)
  torch-paper    the same trainer started from the paper's initialisation
For each seed every arm trains from scratch for --steps on the 1,797 digits
of scikit-learn's load_digits (8x8, digits.py), draws --samples images with
DDIM (50 steps, eta 0) from its EMA weights, and is scored by the Frechet
distance to the whole dataset in a digit classifier's feature space (lower
is better). The table gives mean and standard deviation over seeds, and as
a floor the distance of real digits (random subsets of the dataset, as
many as --samples) to the dataset. Our runs stay under OUT/ (checkpoints,
logs, samples.npz), results.json has every number.

Needs the Python env of deploy/env.sh (ddpm_setup) with
deploy/requirements-dev.txt and the binaries (cargo build --workspace --bins).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits  # noqa: E402
import torch_side  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARMS = ["ours-paper", "ours-pytorch", "torch-pytorch", "torch-paper"]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def write_toml(path, doc):
    """Sections of plain values (what recipe.toml holds) as TOML."""
    with open(path, "w") as f:
        for section, values in doc.items():
            f.write(f"[{section}]\n")
            for k, v in values.items():
                f.write(f"{k} = {toml_value(v)}\n")
            f.write("\n")


class Ours:
    """Runs of our binaries: a coordinator, one CPU worker, then `ddpm sample`."""

    def __init__(self, bin_dir, data_dir, threads):
        self.bin, self.data, self.threads = bin_dir, data_dir, threads

    def train(self, run_dir, config_path):
        os.makedirs(run_dir, exist_ok=True)
        data = f"folder:{self.data}@8"
        coord_cmd = [f"{self.bin}/ddpm-coord", "--preset", "tiny", "--config", config_path, "--data", data,
                     "--workers", "1", "--listen", "127.0.0.1:0", "--run", run_dir]  # fmt: skip
        with open(os.path.join(run_dir, "coordinator.log"), "w") as log:
            coord = subprocess.Popen(coord_cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            addr = None
            for line in coord.stdout:
                m = re.match(r"listening on (\S+)", line)
                if m:
                    addr = m.group(1)
                    break
            if addr is None:
                coord.wait()
                raise SystemExit(f"ddpm-coord did not start (exit {coord.returncode}); see {run_dir}/coordinator.log")
            with open(os.path.join(run_dir, "worker.log"), "w") as wlog:
                worker = subprocess.Popen(
                    [f"{self.bin}/ddpm-worker", "--coord", addr, "--device", "cpu", "--threads", str(self.threads),
                     "--name", "bench/cpu"], stdout=wlog, stderr=wlog)  # fmt: skip
                coord.stdout.read()
                rc = coord.wait()
                worker.wait(timeout=60)
        if rc != 0:
            raise SystemExit(f"ddpm-coord exited {rc}; see {run_dir}/coordinator.log")

    def sample(self, run_dir, count, ddim_steps, seed):
        out = os.path.join(run_dir, "samples")
        subprocess.run(
            [f"{self.bin}/ddpm", "sample", "--run", run_dir, "--count", str(count), "--sampler", "ddim",
             "--steps", str(ddim_steps), "--seed", str(seed), "--batch", "250", "--threads", str(self.threads),
             "--out", out], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        with np.load(os.path.join(out, "samples.npz")) as z:
            return z["arr_0"]  # [N, H, W, 3]

    def export(self, run_dir):
        out = os.path.join(run_dir, "export")
        if not os.path.exists(os.path.join(out, "config.json")):
            subprocess.run([f"{self.bin}/ddpm", "checkpoints", "export", "--run", run_dir, "--out", out],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        return out


def latest_config(run_dir):
    ckpts = sorted(d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("step_"))
    with open(os.path.join(run_dir, "checkpoints", ckpts[-1], "config.toml"), "rb") as f:
        return tomllib.load(f)


def summary(values):
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": values}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", time.strftime("quality-%Y%m%d-%H%M%S")))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    p.add_argument("--bin", default=os.path.join(target, "debug"), help="directory of ddpm, ddpm-coord, ddpm-worker")
    args = p.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}: choose from {ARMS}")
    if any(a.startswith("torch") for a in arms) and not any(a.startswith("ours") for a in arms):
        p.error("a torch arm takes its recipe and architecture from an ours arm of the same seed: add one")
    if args.samples < 100:
        p.error("--samples must be at least 100: the distance needs a covariance of 64 features")

    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.join(args.out, "digits")
    n = digits.write_folder(data_dir)
    features = digits.Features()
    print(f"dataset: {n} digits of sklearn load_digits at 8x8; features: an MLP's last hidden layer "
          f"(held-out accuracy {features.held_out_accuracy:.3f})", flush=True)
    real = torch_side.load_folder(data_dir)
    rng = np.random.default_rng(0)
    floor = [features.distance(real[rng.choice(n, min(args.samples, n), replace=False)]) for _ in range(args.seeds)]

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe.toml"), "rb") as f:
        base = tomllib.load(f)
    ours = Ours(args.bin, data_dir, args.threads)
    scores = {a: [] for a in arms}
    for seed in range(args.seeds):
        first_ours = None
        for arm in arms:
            start = time.time()
            if arm.startswith("ours"):
                run_dir = os.path.join(args.out, f"{arm}-s{seed}")
                doc = {k: dict(v) for k, v in base.items()}
                doc["model"]["init"] = arm.removeprefix("ours-")
                doc["train"].update(steps=args.steps, seed=seed)
                config = os.path.join(args.out, f"{arm}-s{seed}.toml")
                write_toml(config, doc)
                ours.train(run_dir, config)
                images = ours.sample(run_dir, args.samples, args.ddim_steps, 10_000 + seed)
                first_ours = first_ours or run_dir
            else:
                recipe = latest_config(first_ours)
                unet = torch_side.read_unet_config(ours.export(first_ours))
                images = torch_side.train_and_sample(
                    recipe, unet, real, seed, arm.removeprefix("torch-"), args.samples, args.ddim_steps, args.threads
                )
                np.savez(os.path.join(args.out, f"{arm}-s{seed}.npz"), images.transpose(0, 2, 3, 1))
            score = features.distance(images)
            scores[arm].append(score)
            print(f"seed {seed} {arm}: distance {score:.2f} ({time.time() - start:.0f} s)", flush=True)

    result = {
        "dataset": "sklearn load_digits, 1797 images, 8x8",
        "feature_held_out_accuracy": features.held_out_accuracy,
        "steps": args.steps, "seeds": args.seeds, "samples": args.samples, "ddim_steps": args.ddim_steps,
        "real_digits": summary(floor),
        "arms": {a: summary(v) for a, v in scores.items()},
    }  # fmt: skip
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{args.steps} steps, {args.seeds} seeds, {args.samples} samples each (DDIM {args.ddim_steps}, EMA):\n")
    print("| arm | Frechet distance (mean +- sd over seeds) | per seed |")
    print("|---|---|---|")
    for name, s in [("real digits (floor)", result["real_digits"])] + list(result["arms"].items()):
        print(f"| {name} | {s['mean']:.2f} +- {s['std']:.2f} | {', '.join(f'{v:.2f}' for v in s['values'])} |")
    print(f"\nresults: {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
