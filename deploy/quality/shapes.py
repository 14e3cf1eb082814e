#!/usr/bin/env python3
"""Whether samples of `synthetic:shapes` show the dataset's shapes.

    deploy/quality/shapes.py SAMPLES.npz [...]     score samples
    deploy/quality/shapes.py --self-check          score freshly drawn dataset scenes

Every image of the dataset (src/data/synthetic.rs) is one or two filled
circles, squares or upward triangles in one of six saturated colours on
black, with hard edges. This check asks of each sample what a person would:

- background: at least 85% of the pixels outside the shapes are near black;
- shapes: every blob of one colour (4-connected pixels within an RGB
  distance of 60 of that colour, at least 3% of the image) is named a
  circle, a square or a triangle by its outline (below), or touches a named
  one (a shape partly hidden under another); blobs smaller than that are
  specks, allowed up to 3% of the image in all;
- one or two shapes, and at most 10% of the pixels off the palette.

A blob's outline is read row by row: a square fills its bounding box
(fill >= 0.86, rows of equal width, aspect near 1), a triangle's rows widen
from an apex at the top to a base at the bottom (fill 0.38-0.70, bottom
rows wider than top rows), a circle's rows widen then narrow symmetrically
(fill 0.62-0.92, middle rows widest). A sample that passes every rule is
"recognisable"; the share of such samples is the score, with the counts of
each shape named and of each rule that failed.

`--self-check` draws 2,000 scenes with the dataset's rules at 16x16 and
32x32 and prints the same figures, so the yardstick is measured on the
dataset itself (two overlapping shapes of one colour merge into a blob no
rule names, so the dataset scores a little below 1.0). SAMPLES.npz is what `ddpm
sample` and sample jobs write (`arr_0`, uint8 [N, H, W, 3]).
"""
import sys
from collections import Counter

import numpy as np

# src/data/synthetic.rs COLOURS; index 6 is the background.
PALETTE = np.array(
    [[230, 25, 25], [25, 200, 40], [30, 60, 235], [245, 220, 20], [20, 220, 230], [225, 30, 220], [0, 0, 0]],
    dtype=np.float64,
)
BLACK = 6
NEAR = 60.0


def labels(image):
    """[H, W] nearest palette index, or -1 where no palette colour is within NEAR."""
    x = image.reshape(-1, 3).astype(np.float64)
    d = np.sqrt(((x[:, None, :] - PALETTE[None]) ** 2).sum(-1))
    lab = d.argmin(axis=1)
    lab[d.min(axis=1) >= NEAR] = -1
    return lab.reshape(image.shape[:2])


def blobs(lab):
    """4-connected components of each colour label: lists of (y, x)."""
    h, w = lab.shape
    seen = np.zeros_like(lab, dtype=bool)
    out = []
    for y0 in range(h):
        for x0 in range(w):
            c = lab[y0, x0]
            if seen[y0, x0] or c < 0 or c == BLACK:
                continue
            stack, pix = [(y0, x0)], []
            seen[y0, x0] = True
            while stack:
                y, x = stack.pop()
                pix.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and lab[ny, nx] == c:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            out.append(pix)
    return out


def outline(pix):
    """The shape a blob's outline says: 'circle', 'square', 'triangle' or None."""
    ys = np.array([p[0] for p in pix])
    xs = np.array([p[1] for p in pix])
    top, left = ys.min(), xs.min()
    bh, bw = ys.max() - top + 1, xs.max() - left + 1
    if bh < 3 or bw < 3:
        return None
    fill = len(pix) / (bh * bw)
    widths = np.bincount(ys - top, minlength=bh).astype(np.float64)
    third = max(1, bh // 3)
    upper, middle, lower = widths[:third].mean(), widths[third : bh - third].mean(), widths[bh - third :].mean()
    aspect = bw / bh
    if fill >= 0.86 and 0.75 <= aspect <= 1.33 and widths.min() >= 0.8 * bw:
        return "square"
    if 0.38 <= fill <= 0.70 and lower >= 1.6 * upper and 0.75 <= aspect <= 2.4:
        return "triangle"
    if 0.62 <= fill <= 0.92 and middle > upper and middle > lower and abs(upper - lower) <= 0.25 * bw + 1 and 0.75 <= aspect <= 1.33:
        return "circle"
    return None


def touches(blob, others):
    """Whether a pixel of `blob` is 4-adjacent to a pixel of one of `others`."""
    near = {(y + dy, x + dx) for y, x in blob for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))}
    return any(near.intersection(o) for o in others)


def judge(image):
    """(recognisable, the shapes named, the rules failed) for uint8 [H, W, 3]."""
    lab = labels(image)
    n = lab.size
    failed = []
    big = [b for b in blobs(lab) if len(b) >= 0.03 * n]
    specks = sum(len(b) for b in blobs(lab) if len(b) < 0.03 * n)
    shape_px = sum(len(b) for b in big)
    rest = n - shape_px
    if rest and (lab == BLACK).sum() < 0.85 * rest:
        failed.append("background")
    if (lab == -1).mean() > 0.10:
        failed.append("off-palette")
    if specks > 0.03 * n:
        failed.append("specks")
    if not 1 <= len(big) <= 2:
        failed.append("count")
    names = [outline(b) for b in big]
    # A shape partly hidden under another (the dataset draws the second over
    # the first) has an outline no rule names; it passes if it touches a
    # named shape.
    named = [b for b, s in zip(big, names) if s]
    if not named or any(s is None and not touches(b, named) for b, s in zip(big, names)):
        failed.append("outline")
    return not failed, [s for s in names if s], failed


def score(images):
    verdicts = [judge(im) for im in images]
    ok = sum(v[0] for v in verdicts)
    shapes = Counter(s for v in verdicts if v[0] for s in v[1])
    failed = Counter(f for v in verdicts for f in v[2])
    return ok / max(1, len(images)), shapes, failed


def report(name, images):
    share, shapes, failed = score(images)
    named = ", ".join(f"{k} {shapes[k]}" for k in ("circle", "square", "triangle"))
    fails = ", ".join(f"{k} {v}" for k, v in failed.most_common()) or "none"
    print(f"{name}: recognisable {share:.2f} ({round(share * len(images))} of {len(images)}); shapes named: {named}; rules failed: {fails}")


def dataset_scene(rng, size):
    """One image drawn by the dataset's rules (src/data/synthetic.rs render)."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for _ in range(1 if rng.random() < 0.7 else 2):
        shape = rng.integers(3)
        colour = PALETTE[rng.integers(6)].astype(np.uint8)
        half = 0.18 + 0.14 * rng.random()
        cx = (half + (1 - 2 * half) * rng.random()) * size
        cy = (half + (1 - 2 * half) * rng.random()) * size
        h = half * size
        dx, dy = xx - cx, yy - cy
        if shape == 0:
            inside = dx * dx + dy * dy <= h * h
        elif shape == 1:
            inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
        else:
            inside = (np.abs(dy) <= h) & (np.abs(dx) <= (dy + h) / 2)
        img[inside] = colour
    return img


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "--self-check":
        rng = np.random.default_rng(0)
        for size in (16, 32):
            report(f"dataset scenes {size}x{size}", [dataset_scene(rng, size) for _ in range(2000)])
        return 0
    for path in sys.argv[1:]:
        with np.load(path) as z:
            report(path, z["arr_0"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
