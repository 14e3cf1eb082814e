#!/usr/bin/env python3
"""Fixtures for the data-layer tests (tests/data_*.rs), written with the
tools the real datasets come from: numpy and pickle for CIFAR-10, Python's
lmdb and Pillow (libwebp) for LSUN, Pillow for image folders.

    python tests/golden/gen_data.py --out target/golden/data

Everything is small (a few dozen images) and deterministic. Expected pixels
are written as raw uint8 files next to the datasets:

- cifar_{train,test}.u8: [N, 3, 32, 32], the pixels the generator put in the
  batches (the readers must return them exactly);
- lsun_expected_R.u8, lsun_decoded_K.u8 and folder_expected_R.u8: what Pillow
  makes of the same files (center crop, LANCZOS resize; full decodes), for
  exact comparison where the format is lossless and a tolerance elsewhere.

manifest.json describes it all. The script does nothing when manifest.json
is newer than the script itself.
"""

import argparse
import gzip
import hashlib
import io
import json
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

SEED = 20200619  # the DDPM arXiv date
TRAIN_BATCH_SIZES = [7, 5, 6, 4, 3]  # five batches, as the official 10,000 each
TEST_BATCH_SIZE = 9
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- CIFAR-10


def cifar_batches(rng):
    """(name, data [n, 3072] uint8, labels) for the five train batches and the test batch."""
    out = []
    for i, n in enumerate(TRAIN_BATCH_SIZES):
        out.append((f"data_batch_{i + 1}", rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()))
    out.append(("test_batch", rng.integers(0, 256, (TEST_BATCH_SIZE, 3072), dtype=np.uint8), rng.integers(0, 10, TEST_BATCH_SIZE).tolist()))
    return out


def write_bin(path, data, labels):
    """The binary version: per record 1 label byte then 3072 pixel bytes."""
    with open(path, "wb") as f:
        for row, label in zip(data, labels):
            f.write(bytes([label]))
            f.write(row.tobytes())


class Py2Pickler:
    """Writes pickles the way Python 2's cPickle.dump(obj, f, 2) wrote the
    official cifar-10-batches-py files: byte strings as SHORT_BINSTRING /
    BINSTRING (Python 2 str), numpy arrays through
    numpy.core.multiarray._reconstruct and a BUILD state. Python 3 can no
    longer write these opcodes, so they are spelled out here and checked by
    loading the result with pickle.loads(..., encoding='bytes')."""

    def __init__(self):
        self.out = io.BytesIO()
        self.memo = 0

    def put(self):
        if self.memo < 256:
            self.out.write(b"q" + bytes([self.memo]))
        else:
            self.out.write(b"r" + struct.pack("<I", self.memo))
        self.memo += 1

    def string(self, s):
        b = s if isinstance(s, bytes) else s.encode("latin-1")
        if len(b) < 256:
            self.out.write(b"U" + bytes([len(b)]) + b)
        else:
            self.out.write(b"T" + struct.pack("<I", len(b)) + b)
        self.put()

    def int(self, v):
        if 0 <= v < 256:
            self.out.write(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.out.write(b"M" + struct.pack("<H", v))
        else:
            self.out.write(b"J" + struct.pack("<i", v))

    def ndarray(self, a):
        w = self.out.write
        w(b"cnumpy.core.multiarray\n_reconstruct\n")
        self.put()
        w(b"cnumpy\nndarray\n")
        self.put()
        w(b"K\x00\x85")  # (0,)
        w(b"U\x01b")  # b'b'
        w(b"\x87R")  # TUPLE3 REDUCE
        self.put()
        w(b"(K\x01")  # state: (1, shape, dtype, is_fortran, raw)
        for d in a.shape:
            self.int(d)
        w(b"\x86" if len(a.shape) == 2 else b"\x85")
        w(b"cnumpy\ndtype\n")
        self.put()
        w(b"U\x02u1K\x00K\x01\x87R")
        self.put()
        w(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        w(b"\x89")  # is_fortran False
        self.string(a.tobytes())
        w(b"tb")

    def value(self, v):
        if isinstance(v, np.ndarray):
            self.ndarray(v)
        elif isinstance(v, (bytes, str)):
            self.string(v)
        elif isinstance(v, int):
            self.int(v)
        elif isinstance(v, list):
            self.out.write(b"]")
            self.put()
            if v:
                self.out.write(b"(")
                for x in v:
                    self.value(x)
                self.out.write(b"e")
        else:
            raise TypeError(type(v))

    def dump(self, d):
        self.out.write(b"\x80\x02}")
        self.put()
        self.out.write(b"(")
        for k, v in d.items():
            self.string(k)
            self.value(v)
        self.out.write(b"u.")
        return self.out.getvalue()


def batch_dict(name, data, labels, i):
    return {
        "batch_label": f"{'training' if name.startswith('data') else 'testing'} batch {i + 1} of 5",
        "labels": labels,
        "data": data,
        "filenames": [f"image_{i}_{j}.png" for j in range(len(labels))],
    }


def write_py2(path, d):
    blob = Py2Pickler().dump(d)
    # Check with the independent reader that users have: pickle itself.
    back = pickle.loads(blob, encoding="bytes")
    assert np.array_equal(back[b"data"], d["data"]) and back[b"labels"] == d["labels"], path
    path.write_bytes(blob)


def write_cifar(out, rng):
    batches = cifar_batches(rng)
    train = np.concatenate([b[1] for b in batches[:5]])
    test = batches[5][1]
    (out / "cifar_train.u8").write_bytes(train.tobytes())
    (out / "cifar_test.u8").write_bytes(test.tobytes())

    bin_dir = out / "cifar-10-batches-bin"
    bin_dir.mkdir()
    for name, data, labels in batches:
        write_bin(bin_dir / f"{name}.bin", data, labels)
    (bin_dir / "batches.meta.txt").write_text("\n".join(LABEL_NAMES) + "\n")
    (bin_dir / "readme.html").write_text("<html>fixture</html>\n")

    # The official python version (Python 2 pickles) and two re-pickled
    # variants a user may have: Python 3's protocol 2 with bytes keys (what
    # pickle.dump of the dicts loaded with encoding='bytes' gives) and
    # protocol 5 with str keys.
    py_dir = out / "cifar-10-batches-py"
    py_dir.mkdir()
    p2_dir = out / "cifar-py3-protocol2" / "cifar-10-batches-py"
    p5_dir = out / "cifar-py3-protocol5" / "cifar-10-batches-py"
    p2_dir.mkdir(parents=True)
    p5_dir.mkdir(parents=True)
    for i, (name, data, labels) in enumerate(batches):
        d = batch_dict(name, data, labels, i)
        write_py2(py_dir / name, d)
        with open(p2_dir / name, "wb") as f:
            pickle.dump({k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}, f, protocol=2)
        with open(p5_dir / name, "wb") as f:
            pickle.dump(d, f, protocol=5)
    meta = {"num_cases_per_batch": 10000, "label_names": LABEL_NAMES, "num_vis": 3072}
    with open(py_dir / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)

    # The downloads themselves.
    for archive, folder in [("cifar-10-binary.tar.gz", bin_dir), ("cifar-10-python.tar.gz", py_dir)]:
        write_tar_gz(out / archive, folder)

    # Broken inputs.
    bad = out / "bad"
    trunc = bad / "truncated" / "cifar-10-batches-bin"
    trunc.mkdir(parents=True)
    for name, data, labels in batches:
        write_bin(trunc / f"{name}.bin", data, labels)
    blob = (trunc / "data_batch_3.bin").read_bytes()
    (trunc / "data_batch_3.bin").write_bytes(blob[:-100])
    wrong = bad / "wrong-pickle" / "cifar-10-batches-py"
    wrong.mkdir(parents=True)
    for name, data, labels in batches:
        with open(wrong / name, "wb") as f:
            pickle.dump({"images": data.reshape(-1, 3, 32, 32), "classes": labels}, f, protocol=4)
    not_pickle = bad / "not-a-pickle" / "cifar-10-batches-py"
    not_pickle.mkdir(parents=True)
    for name, _, _ in batches:
        (not_pickle / name).write_text("this is not a pickle\n")
    # A truncated download.
    full = (out / "cifar-10-binary.tar.gz").read_bytes()
    (bad / "cifar-10-binary-truncated.tar.gz").write_bytes(full[: len(full) // 2])
    return {
        "train_count": int(train.shape[0]),
        "test_count": int(test.shape[0]),
        "train_batch_sizes": TRAIN_BATCH_SIZES,
    }


def write_tar_gz(path, folder):
    """A reproducible .tar.gz of `folder` under its own name, as the downloads are laid out."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for p in [folder] + sorted(folder.iterdir()):
                info = tar.gettarinfo(str(p), arcname=str(Path(folder.name) / p.relative_to(folder)) if p != folder else folder.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if p.is_file():
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


# ---------------------------------------------------------------- images


def photo(rng, w, h):
    """A photo-like RGB image: a gradient, a few blocks and discs, grain."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = top * (1 - y[..., None] / h) + bottom * (y[..., None] / h)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, max(w, h) / 4)
        colour = rng.uniform(0, 255, 3)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r if rng.random() < 0.5 else (abs(x - cx) < r) & (abs(y - cy) < r * 0.6)
        img[mask] = colour
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def center_crop_resize(img, size):
    """The progressive-GAN / DDPM LSUN preprocessing: centre square, LANCZOS to
    size. Alpha is dropped first (our decoders drop it, they do not composite)."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img).transpose(2, 0, 1)  # [3, size, size]


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_lmdb(path, items):
    """An LSUN-style LMDB: keys are 40 hex digits (the LSUN image ids are SHA-1s), values image files."""
    env = lmdb.open(str(path), map_size=64 << 20, subdir=True)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    env.close()


def write_lsun(out, rng):
    # Lossy WebP as the LSUN export ships, plus two JPEG values; mixed sizes.
    sizes = [(400, 300), (300, 400), (256, 256), (341, 256), (256, 320), (512, 384), (260, 260), (300, 300), (384, 256), (256, 341)]
    items = []
    for i, (w, h) in enumerate(sizes):
        img = photo(rng, w, h)
        data = encode(img, "JPEG", quality=90) if i in (3, 7) else encode(img, "WEBP", quality=80, method=4)
        items.append((hashlib.sha1(f"church {i}".encode()).hexdigest().encode(), data))
    db = out / "lsun" / "church_outdoor_train_lmdb"
    db.parent.mkdir(parents=True)
    write_lmdb(db, items)
    items.sort()  # LMDB order: sorted keys
    res = [256, 64]
    for r in res:
        exp = np.stack([center_crop_resize(Image.open(io.BytesIO(v)), r) for _, v in items])
        (out / f"lsun_expected_{r}.u8").write_bytes(exp.tobytes())
    for k, (_, v) in enumerate(items):
        (out / f"lsun_decoded_{k}.u8").write_bytes(np.asarray(Image.open(io.BytesIO(v)).convert("RGB")).tobytes())

    # Lossless WebP: square and wider-than-tall 64-pixel images, exact after the crop.
    lossless = []
    for i in range(6):
        img = photo(rng, 64 + 16 * (i % 2), 64)
        lossless.append((f"{i:040x}".encode(), encode(img, "WEBP", lossless=True)))
    write_lmdb(out / "lsun" / "lossless_lmdb", lossless)
    exp = np.stack([center_crop_resize(Image.open(io.BytesIO(v)), 64) for _, v in sorted(lossless)])
    (out / "lsun_lossless_64.u8").write_bytes(exp.tobytes())

    # One undecodable value among good ones.
    bad_items = lossless[:3] + [(b"f" * 40, lossless[3][1][: len(lossless[3][1]) // 3])]
    write_lmdb(out / "bad" / "undecodable_lmdb", bad_items)
    return {
        "church": {"count": len(items), "keys": [k.decode() for k, _ in items], "jpeg_keys": [k.decode() for k, v in items if v[:3] == b"\xff\xd8\xff"], "resolutions": res},
        "lossless": {"count": len(lossless), "resolution": 64},
        "undecodable_key": "f" * 40,
    }


def write_folder(out, rng):
    """Nested folders of PNG (RGB, RGBA, grey) and JPEG, min side 48, and a text file to ignore."""
    root = out / "folder"
    files = [
        ("a/cat_00.png", (48, 48), "RGB", "PNG"),
        ("a/cat_01.png", (64, 48), "RGB", "PNG"),
        ("a/deep/x/dog.PNG", (48, 72), "RGB", "PNG"),
        ("b/alpha.png", (48, 48), "RGBA", "PNG"),
        ("b/grey.png", (60, 48), "L", "PNG"),
        ("b/photo.jpg", (96, 64), "RGB", "JPEG"),
        ("c.jpeg", (48, 48), "RGB", "JPEG"),
        ("z_last.png", (50, 49), "RGB", "PNG"),
    ]
    for rel, (w, h), mode, fmt in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = photo(rng, w, h)
        if mode == "RGBA":
            a = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
            img = Image.fromarray(np.concatenate([np.asarray(img), a], axis=2), "RGBA")
        elif mode == "L":
            img = img.convert("L")
        img.save(p, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    (root / "b" / "notes.txt").write_text("not an image\n")
    # Our order: by path, component by component (walkdir sorted by file name).
    order = sorted((rel for rel, *_ in files), key=lambda r: Path(r).parts)
    res = [48, 32]
    for r in res:
        exp = np.stack([center_crop_resize(Image.open(root / rel), r) for rel in order])
        (out / f"folder_expected_{r}.u8").write_bytes(exp.tobytes())

    bad = out / "bad"
    und = bad / "undecodable_folder"
    und.mkdir(parents=True)
    photo(rng, 32, 32).save(und / "good.png")
    good = (und / "good.png").read_bytes()
    (und / "broken.png").write_bytes(good[:40])
    (und / "text.jpg").write_text("this is not a jpeg\n")
    empty = bad / "empty_folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here\n")
    return {
        "files": order,
        # PNGs whose smaller side is 48: exact at 48 (crop, no resize).
        "exact_at_48": [rel for rel, (w, h), _, fmt in files if fmt == "PNG" and min(w, h) == 48],
        "resolutions": res,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    out = args.out
    manifest = out / "manifest.json"
    if manifest.exists() and manifest.stat().st_mtime > Path(__file__).stat().st_mtime:
        return
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    m = {
        "cifar": write_cifar(out, rng),
        "lsun": write_lsun(out, rng),
        "folder": write_folder(out, rng),
    }
    manifest.write_text(json.dumps(m, indent=1) + "\n")
    print(f"gen_data: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
