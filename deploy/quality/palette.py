#!/usr/bin/env python3
"""How much a grid of `synthetic:shapes` samples looks like its dataset.

    deploy/quality/palette.py SAMPLES.npz [...]

Every pixel of the dataset is black or one of its six saturated colours
(src/data/synthetic.rs draws hard edges at every resolution), so the share
of a sample's pixels within an RGB distance of 60 of one of those seven
colours is 1.0 for real images: pastel mixtures, tinted backgrounds and
pixel noise lower it. Also printed: the mean distance to the nearest of the
seven. SAMPLES.npz is what `ddpm sample` and sample jobs write (`arr_0`,
uint8 [N, H, W, 3]). A crude yardstick for the demo's choices, not a
quality metric for papers.
"""
import sys

import numpy as np

# src/data/synthetic.rs COLOURS, then the background.
PALETTE = np.array(
    [[230, 25, 25], [25, 200, 40], [30, 60, 235], [245, 220, 20], [20, 220, 230], [225, 30, 220], [0, 0, 0]],
    dtype=np.float64,
)


def score(images):
    """(share of pixels within 60 of the palette, mean distance to it) of uint8 [N, H, W, 3]."""
    x = images.reshape(-1, 3).astype(np.float64)
    d = np.sqrt(((x[:, None, :] - PALETTE[None]) ** 2).sum(-1)).min(axis=1)
    return float((d < 60).mean()), float(d.mean())


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for path in sys.argv[1:]:
        with np.load(path) as z:
            on, dist = score(z["arr_0"])
        print(f"{path}: on-palette {on:.3f}, mean distance {dist:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
