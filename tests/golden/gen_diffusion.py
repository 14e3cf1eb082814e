"""Golden fixtures for tests/golden_diffusion.rs.

    $DDPM_PYTHON tests/golden/gen_diffusion.py --out $DDPM_GOLDEN_DIR/diffusion

Writes diffusion.safetensors (every tensor) and meta.json (timestep lists, the
cases, versions). Deterministic (fixed seeds). Skipped when both outputs are
newer than this script, diffusion_fixtures.py and ddpm_numpy.py, and were made
with the same diffusers, torch and numpy versions; --force regenerates.

The sections are built by diffusion_fixtures.py from two references:
- diffusers' DDPMScheduler / DDIMScheduler as shipped ("32": float32 tables),
  and the same scheduler code run on float64 tables and inputs ("64"), which
  isolates the Rust code's own float32 rounding from diffusers';
- ddpm_numpy.py, a float64 numpy port of the official code (docs/ddpm.md sections 1-4), for
  the tables, the posterior and the whole bound.
"""

import argparse
import importlib.metadata
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = ("gen_diffusion.py", "diffusion_fixtures.py", "ddpm_numpy.py")
OUTPUTS = ("diffusion.safetensors", "meta.json")


def versions():
    return {p: importlib.metadata.version(p) for p in ("diffusers", "torch", "numpy")}


def up_to_date(out):
    outputs = [os.path.join(out, o) for o in OUTPUTS]
    if not all(os.path.exists(p) for p in outputs):
        return False
    newest_input = max(os.path.getmtime(os.path.join(HERE, i)) for i in INPUTS)
    if min(os.path.getmtime(p) for p in outputs) <= newest_input:
        return False
    with open(outputs[1]) as f:
        return json.load(f).get("versions") == versions()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for diffusion.safetensors and meta.json")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args()
    if not args.force and up_to_date(args.out):
        print(f"gen_diffusion: {args.out} is up to date")
        return

    sys.path.insert(0, HERE)
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    import diffusion_fixtures as fx

    torch.use_deterministic_algorithms(True)
    tensors, meta = {}, {"versions": versions()}
    for section in (fx.schedules, fx.forward, fx.ddpm_steps, fx.ddim_steps, fx.bound_functions, fx.bound_loops,
                    fx.bound_1000):  # fmt: skip
        section(tensors, meta)

    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, OUTPUTS[0] + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
    os.replace(tmp, os.path.join(args.out, OUTPUTS[0]))
    # meta.json last: its time stamp marks a complete fixture.
    tmp = os.path.join(args.out, OUTPUTS[1] + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(args.out, OUTPUTS[1]))
    print(f"gen_diffusion: wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
