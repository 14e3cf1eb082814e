"""Checks a model directory written by `ddpm checkpoints export --format
diffusers` against the outputs of ddpm's own U-Net.

Loads the directory with diffusers' `UNet2DModel.from_pretrained` (nothing
else: the point is that stock diffusers reads it), runs it in eval mode on
the inputs ddpm used, and compares with ddpm's outputs:

    python check_diffusers_export.py --model DIR --io io.safetensors [--tol 1e-4]

`io.safetensors` holds `x` (float32 [B, 3, H, W]), `t` (int64 [B]) and `y`
(float32 [B, 3, H, W], ddpm's eps prediction). Prints a JSON line with the
max abs difference; exits 1 if it exceeds the tolerance.
Run by tests/checkpoint_export.rs.
"""

import argparse
import json
import sys

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--io", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = UNet2DModel.from_pretrained(args.model).eval()
    io = load_file(args.io)
    with torch.no_grad():
        y = model(io["x"], io["t"]).sample
    diff = (y - io["y"]).abs().max().item()
    scale = io["y"].abs().max().item()
    print(json.dumps({"max_abs_diff": diff, "max_abs_output": scale, "params": sum(p.numel() for p in model.parameters())}))
    return 0 if diff < args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
