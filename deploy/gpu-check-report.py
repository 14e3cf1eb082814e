#!/usr/bin/env python3
"""The report of deploy/gpu-check.sh: reads the logs it wrote and writes
results.json (every number, and what failed) and results.md (the table the
README takes, with the date and the device).

    gpu-check-report.py --logs DIR --out DIR --smoke 0|1 --seconds N --sample-batch B --dist-batch B

Exits 1 when a part failed or printed nothing it could read, else 0. Only
the standard library: it runs with the GPU machine's own Python.
"""
import argparse
import json
import os
import re
import statistics

# The paper's TPU v3-8 (Ho et al. 2020, appendix B): 21 steps/s at batch
# 128 for CIFAR-10, about 2,688 images/s.
PAPER_TPU_IMG_S = 2688.0
DDIM_STEPS = 50


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def number(pattern, text):
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def exit_code(path):
    text = read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def train_part(logs, precision):
    """`ddpm bench train` at one precision: ddpm's and PyTorch's images/s."""
    text = read(os.path.join(logs, f"train-{precision}.txt"))
    model = re.search(r"PyTorch eager \(([^)]*)\)", text)
    r = {
        "exit_code": exit_code(os.path.join(logs, f"train-{precision}.rc")),
        "ddpm_img_s": number(r"^ddpm \(tch\): [0-9.]+ ms per step, ([0-9.]+) img/s", text),
        "pytorch_img_s": number(r"^PyTorch eager: [0-9.]+ ms per step, ([0-9.]+) img/s", text),
        "ratio": number(r"^speed ratio ddpm / PyTorch: ([0-9.]+)", text),
        "pytorch_model": model.group(1) if model else None,
    }
    return r


def sample_part(logs, batch):
    """`ddpm bench sample`: DDIM-50 images/s of ddpm and of PyTorch (diffusers)."""
    text = read(os.path.join(logs, "sample.txt"))
    ours_ms = number(r"^ddpm \(tch\) DDIM \d+ steps: ([0-9.]+) ms per evaluation", text)
    theirs_ms = number(r"^PyTorch eager \([^)]*\): ancestral [0-9.]+ ms, DDIM ([0-9.]+) ms per evaluation", text)
    model = re.search(r"^PyTorch eager \(([^)]*)\)", text, re.M)
    rate = lambda ms: batch / (ms / 1e3 * DDIM_STEPS) if ms else None
    r = {
        "exit_code": exit_code(os.path.join(logs, "sample.rc")),
        "batch": batch,
        "ddpm_ddim50_img_s": rate(ours_ms),
        "pytorch_ddim50_img_s": rate(theirs_ms),
        "pytorch_model": model.group(1) if model else None,
    }
    if ours_ms and theirs_ms:
        r["ratio"] = theirs_ms / ours_ms
    return r


# The distributed runs: name -> (backend, workers).
DIST = {"coordinator": ("coordinator", 2), "ring": ("ring", 2), "ring-shadow-off": ("ring", 2), "nccl": ("nccl", 1)}


def dist_part(logs, name, batch):
    """Workers on one device: images/s over the second half of the run, and the replicas' checksums."""
    d = os.path.join(logs, f"dist-{name}")
    backend, workers = DIST[name]
    r = {"backend": backend, "workers": workers, "exit_code": exit_code(os.path.join(d, "rc"))}
    try:
        with open(os.path.join(d, "run", "summary.json")) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return r
    rows = []
    for line in read(os.path.join(d, "run", "metrics.jsonl")).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "images_per_s" in row and "step" in row:
            rows.append(row)
    late = rows[len(rows) // 2:]
    r.update(
        {
            "steps": s.get("steps"),
            "batch": batch,
            "img_s": statistics.median(x["images_per_s"] for x in late) if late else None,
            "replicas": len(s.get("replica_checksums", {})),
            "replicas_agree": s.get("replicas_agree"),
            "checksum_mismatches": s.get("checksum_mismatches"),
            "checksums_compared": s.get("checksums_compared"),
            "final_loss": s.get("final_loss"),
        }
    )
    return r


def failures(res):
    out = []
    for p in ("fp32", "bf16"):
        t = res["train"][p]
        if t["exit_code"] != 0 or t["ddpm_img_s"] is None:
            out.append(f"train {p}: exit {t['exit_code']}, ddpm figure {'read' if t['ddpm_img_s'] else 'missing'}")
        elif t["pytorch_img_s"] is None:
            out.append(f"train {p}: no PyTorch baseline (torch/diffusers in the --python?)")
    s = res["sample"]
    if s["exit_code"] != 0 or s["ddpm_ddim50_img_s"] is None:
        out.append(f"sample: exit {s['exit_code']}")
    elif s["pytorch_ddim50_img_s"] is None:
        out.append("sample: no PyTorch baseline")
    for b, d in res["dist"].items():
        if d.get("status"):
            continue
        if d["exit_code"] != 0 or d.get("replicas_agree") is not True or d.get("replicas") != d["workers"]:
            out.append(f"dist {b}: exit {d['exit_code']}, replicas {d.get('replicas')}, agree {d.get('replicas_agree')}")
    return out


def fmt(x, digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def markdown(res):
    m = res["machine"]
    lines = [
        f"GPU check, {m['date']}, {m['device']}, {m['torch']}{' (CPU SMOKE RUN: not a measurement)' if res['smoke'] else ''}",
        "",
        "| what | ddpm | PyTorch | ddpm / PyTorch |",
        "|---|---|---|---|",
    ]
    for p in ("fp32", "bf16"):
        t = res["train"][p]
        lines.append(
            f"| training step, {res['preset']} U-Net, batch {res['train_batch']}, {p} (img/s) | {fmt(t['ddpm_img_s'])} "
            f"| {fmt(t['pytorch_img_s'])} | {fmt(t['ratio'], 2)} |"
        )
    s = res["sample"]
    lines.append(
        f"| DDIM-50 sampling, batch {s['batch']} (img/s) | {fmt(s['ddpm_ddim50_img_s'], 1)} | {fmt(s['pytorch_ddim50_img_s'], 1)} "
        f"| {fmt(s.get('ratio'), 2)} |"
    )
    lines += ["", "| workers on one device | img/s | replicas agree with the coordinator |", "|---|---|---|"]
    for b, d in res["dist"].items():
        if d.get("status"):
            lines.append(f"| {b} | {d['status']} | - |")
            continue
        agree = f"{d.get('replicas_agree')} ({d.get('replicas')} replicas, {d.get('checksum_mismatches')} mismatches)"
        lines.append(f"| {b}, {d['workers']} worker(s) | {fmt(d.get('img_s'))} | {agree} |")
    tpu = [(p, res["train"][p].get("ratio_to_paper_tpu_v3_8")) for p in ("fp32", "bf16")]
    if any(r is not None for _, r in tpu):
        ratios = ", ".join(f"{p} {fmt(r, 2)}x" for p, r in tpu)
        lines += ["", f"training against the paper's TPU v3-8 ({PAPER_TPU_IMG_S:,.0f} img/s): {ratios}"]
    if res["failures"]:
        lines += ["", "Failed: " + "; ".join(res["failures"])]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--logs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--sample-batch", type=int, required=True)
    p.add_argument("--dist-batch", type=int, required=True)
    a = p.parse_args()
    machine = read(os.path.join(a.logs, "machine.txt")).splitlines() + ["?"] * 4
    train_header = read(os.path.join(a.logs, "train-fp32.txt"))
    preset = re.search(r"preset (\w+)", train_header)
    batch = re.search(r"batch (\d+)", train_header)
    res = {
        "machine": {"date": machine[0], "device": machine[1], "torch": machine[2], "ddpm": machine[3]},
        "smoke": bool(a.smoke),
        "seconds": a.seconds,
        "preset": preset.group(1) if preset else None,
        "train_batch": int(batch.group(1)) if batch else None,
        "paper_tpu_v3_8_img_s": PAPER_TPU_IMG_S,
        "train": {p: train_part(a.logs, p) for p in ("fp32", "bf16")},
        "sample": sample_part(a.logs, a.sample_batch),
        "dist": {b: dist_part(a.logs, b, a.dist_batch) for b in DIST if os.path.isdir(os.path.join(a.logs, f"dist-{b}"))},
    }
    if a.smoke:
        res["dist"]["nccl"] = {"backend": "nccl", "status": "not run: NCCL needs a GPU (CPU smoke run)"}
    # The paper's figure is for its CIFAR-10 model on a TPU v3-8: only a
    # measured cifar10 step is compared with it.
    if res["preset"] == "cifar10" and not res["smoke"]:
        for t in res["train"].values():
            if t["ddpm_img_s"] is not None:
                t["ratio_to_paper_tpu_v3_8"] = t["ddpm_img_s"] / PAPER_TPU_IMG_S
    res["failures"] = failures(res)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(markdown(res))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
