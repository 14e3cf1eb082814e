"""Golden fixtures for tests/golden_eval.rs (FID, IS, npz, the Inception
TorchScript path, bits/dim).

    $DDPM_PYTHON tests/golden/gen_eval.py --out $DDPM_GOLDEN_DIR/eval
    $DDPM_PYTHON tests/golden/gen_eval.py --resave IN.npz OUT.npz

The first form writes, under --out:
- standin.pt: a TorchScript stand-in for inception-2015-12-05.pt with the
  same call signature (eval_standin.py); wrong_shape.pt, wrong_signature.pt
  and state_dict.pt (a plain torch.save, not TorchScript) for the errors;
- npz/: .npz files written by numpy (np.savez, np.savez_compressed; float64,
  float32, big-endian, Fortran order, uint8 samples) and broken ones;
- folder/: PNG images for a folder: dataset; unet/: a small diffusers
  UNet2DModel (random weights) for the bound;
- eval.safetensors (every array) and meta.json (expected scalars: pytorch-fid's
  calculate_frechet_distance, StyleGAN3's Inception Score, versions).
Deterministic (fixed seeds). Skipped when meta.json is newer than every input
script and was made with the same package versions; --force regenerates.

The second form loads IN.npz with np.load and saves its arrays again with
np.savez_compressed, so a test can check that numpy reads what Rust writes.
"""

import argparse
import importlib.metadata
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = ("gen_eval.py", "eval_fixtures.py", "eval_standin.py", "ddpm_rng.py", "ddpm_numpy.py")
PACKAGES = ("torch", "numpy", "scipy", "pytorch-fid", "diffusers", "pillow")


def versions():
    return {p: importlib.metadata.version(p) for p in PACKAGES}


def up_to_date(out):
    meta = os.path.join(out, "meta.json")
    if not os.path.exists(meta):
        return False
    if os.path.getmtime(meta) <= max(os.path.getmtime(os.path.join(HERE, i)) for i in INPUTS):
        return False
    with open(meta) as f:
        return json.load(f).get("versions") == versions()


def generate(out):
    sys.path.insert(0, HERE)
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    import eval_fixtures as fx

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out, exist_ok=True)
    tensors, meta = {}, {"versions": versions()}
    for section in (fx.models, fx.fid_sets, fx.npz_files, fx.score_sets, fx.folder_dataset, fx.bpd):
        section(out, tensors, meta)
    tmp = os.path.join(out, "eval.safetensors.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
    os.replace(tmp, os.path.join(out, "eval.safetensors"))
    # meta.json last: its time stamp marks a complete fixture.
    tmp = os.path.join(out, "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out, "meta.json"))
    print(f"gen_eval: wrote {len(tensors)} arrays and the fixture files to {out}")


def resave(src, dst):
    import numpy as np

    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in arrays.items():
        print(f"{k}: {v.dtype} {list(v.shape)}")
    np.savez_compressed(dst, **arrays)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="fixture directory to fill")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--resave", nargs=2, metavar=("IN", "OUT"))
    args = parser.parse_args()
    if args.resave:
        resave(*args.resave)
    elif not args.out:
        parser.error("--out DIR or --resave IN OUT")
    elif not args.force and up_to_date(args.out):
        print(f"gen_eval: {args.out} is up to date")
    else:
        generate(args.out)


if __name__ == "__main__":
    main()
