#!/usr/bin/env python3
"""Golden fixtures for the U-Net (tests/golden_unet.rs), made with diffusers'
UNet2DModel as the reference implementation.

    gen_unet.py --out DIR                  write the fixtures (skipped when
                                           DIR is newer than this script)
    gen_unet.py --check-export DIR CASE    load a model directory that the Rust
                                           side exported with
                                           UNet2DModel.from_pretrained and check
                                           its outputs on CASE's inputs

For each case, DIR/CASE/ holds what `UNet2DModel.save_pretrained` writes
(config.json, diffusion_pytorch_model.safetensors) plus io.safetensors with
the inputs x [B, C, H, W] float32 and t [B] int64 and the output eps. Every
parameter is random (fixed seed), including the ones the paper initialises
to zero, so every layer shows up in the output. The cifar10 case is the
google/ddpm-cifar10-32 architecture; the others are odd shapes the paper
never used. legacy/ holds the tiny weights under the pre-0.14 attention
names (query, key, value, proj_attn) of the converted google/ddpm-* files.
"""
import argparse
import json
import os
import sys

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

SCRIPT = os.path.abspath(__file__)
STAMP = ".complete"
TOL = 1e-4


def diffusers_config(size, in_ch, out_ch, boc, attn_levels, layers, groups, eps):
    """A paper-style UNet2DModel config: single-head attention, [sin, cos]
    embedding, right/bottom padded downsampling."""
    n = len(boc)
    down = ["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n))]
    return dict(
        sample_size=size, in_channels=in_ch, out_channels=out_ch, block_out_channels=tuple(boc),
        down_block_types=tuple(down), up_block_types=tuple(up), layers_per_block=layers,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_num_groups=groups,
        norm_eps=eps, attention_head_dim=None, dropout=0.0, act_fn="silu",
    )


CASES = {
    # google/ddpm-cifar10-32: attention at 16x16 = level 1 down, up_blocks.2 up.
    "cifar10": (diffusers_config(32, 3, 3, [128, 256, 256, 256], {1}, 2, 32, 1e-6), [0, 999, 1, 437]),
    # The `tiny` preset.
    "tiny": (diffusers_config(32, 3, 3, [32, 32, 64], {1}, 1, 32, 1e-6), [0, 999, 500]),
    # 16x16, 1 -> 2 channels, widths 16, 48, 32, attention at 16 and 4,
    # three ResBlocks per level, 8 groups, eps 1e-5.
    "odd16": (diffusers_config(16, 1, 2, [16, 48, 32], {0, 2}, 3, 8, 1e-5), [3, 998]),
    # 8x8, attention on every level.
    "small8": (diffusers_config(8, 3, 3, [32, 64], {0, 1}, 2, 32, 1e-6), [0, 999, 250]),
}

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomize(model, gen):
    """Random values for every parameter, zero-initialised ones included,
    scaled so activations stay O(1) through the network."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                bound = (1.0 / fan_in) ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)


def make_case(out_dir, name, config, timesteps):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    model = UNet2DModel(**config).eval()
    randomize(model, gen)
    case_dir = os.path.join(out_dir, name)
    model.save_pretrained(case_dir, safe_serialization=True)
    b = len(timesteps)
    x = torch.randn(b, config["in_channels"], config["sample_size"], config["sample_size"], generator=gen)
    t = torch.tensor(timesteps, dtype=torch.int64)
    with torch.no_grad():
        eps = model(x, t).sample
    save_file({"x": x.contiguous(), "t": t, "eps": eps.contiguous()}, os.path.join(case_dir, "io.safetensors"))
    print(f"gen_unet: {name}: {sum(p.numel() for p in model.parameters())} params, |eps| max {eps.abs().max():.3f}")
    return model


def write_legacy(out_dir):
    """The tiny case's weights under the legacy attention names."""
    state = load_file(os.path.join(out_dir, "tiny", "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for key, value in state.items():
        for new, old in LEGACY.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    os.makedirs(os.path.join(out_dir, "legacy"), exist_ok=True)
    save_file(renamed, os.path.join(out_dir, "legacy", "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def generate(out_dir):
    stamp = os.path.join(out_dir, STAMP)
    if os.path.exists(stamp) and os.path.getmtime(stamp) > os.path.getmtime(SCRIPT):
        return
    torch.set_num_threads(1)
    for name, (config, timesteps) in CASES.items():
        make_case(out_dir, name, config, timesteps)
    write_legacy(out_dir)
    with open(stamp, "w") as f:
        json.dump({"diffusers": __import__("diffusers").__version__, "torch": torch.__version__}, f)


def check_export(model_dir, case_dir):
    """Exit 0 when diffusers loads model_dir and reproduces case_dir's eps."""
    model = UNet2DModel.from_pretrained(model_dir).eval()
    io = load_file(os.path.join(case_dir, "io.safetensors"))
    with torch.no_grad():
        eps = model(io["x"], io["t"]).sample
    diff = (eps - io["eps"]).abs().max().item()
    print(f"gen_unet: diffusers on the exported {model_dir}: max abs diff {diff:.3g}")
    return diff < TOL


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="fixture directory to fill")
    parser.add_argument("--check-export", nargs=2, metavar=("MODEL_DIR", "CASE_DIR"))
    args = parser.parse_args()
    if args.check_export:
        sys.exit(0 if check_export(*args.check_export) else 1)
    if not args.out:
        parser.error("--out DIR or --check-export MODEL_DIR CASE_DIR")
    os.makedirs(args.out, exist_ok=True)
    generate(args.out)


if __name__ == "__main__":
    main()
