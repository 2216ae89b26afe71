"""results/kl_*.json → a markdown table of paired KL at 2 / 5 / 10 CPU minutes (per seed, mean over seeds).

python benchmarks/flow/kl_summary.py [--prefix kl_] > benchmarks/flow/results/kl_summary.md
"""

import argparse
import glob
import json
import os
import re
from collections import defaultdict

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--prefix", default="kl_")
args = ap.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
MARKS = (120.0, 300.0, 600.0)
TARGET = {"8gaussians": (300.0, 0.03), "checkerboard": (600.0, 0.10)}


def at(evals, mark):
    for e in evals:
        if e.get("mark_s") is not None and abs(e["mark_s"] - mark) < 1e-6:
            return e
    return None


groups = defaultdict(list)
for path in sorted(glob.glob(os.path.join(here, "results", args.prefix + "*.json"))):
    r = json.load(open(path))
    name = os.path.basename(path)[:-5]
    variant = re.sub(r"_s\d+$", "", name)
    groups[variant].append((name, r))

lines = [
    "| run | data | lr / schedule / batch | seed | steps by 10 min | NFE fwd+bwd (last 100 steps, median) | "
    "KL 2 min | KL 5 min | KL 10 min | best KL (CPU min) | wall min for the run | target |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for variant, runs in groups.items():
    per_mark = defaultdict(list)
    for name, r in runs:
        a = r["args"]
        ev = r["evals"]
        cells = []
        for m in MARKS:
            e = at(ev, m)
            cells.append("–" if e is None else f"{e['kl']:.3f} ± {e['kl_se']:.3f}")
            if e is not None:
                per_mark[m].append(e["kl"])
        steps = np.array([s for s in r["steps"]], float)
        n10 = int((steps[:, 4] <= 600.0).sum()) if len(steps) else 0
        nfe = f"{np.median(steps[-100:, 1]):.0f}+{np.median(steps[-100:, 2]):.0f}" if len(steps) else "–"
        best = min(ev, key=lambda e: e["kl"]) if ev else None
        tm, tk = TARGET[r["data"]]
        e = at(ev, tm)
        verdict = (
            "running"
            if e is None and "finished" not in r
            else ("–" if e is None else ("met" if e["kl"] <= tk else "missed"))
        )
        wall = ev[-1]["wall_s"] / 60 if ev else float("nan")
        lines.append(
            f"| {name} | {r['data']} | {a['lr']:g} / {a['schedule']} / {a['batch']} | {r['seed']} | {n10} | {nfe} | "
            + " | ".join(cells)
            + (f" | {best['kl']:.3f} ({best['cpu_s'] / 60:.1f})" if best else " | –")
            + f" | {wall:.0f} | KL ≤ {tk} at {tm / 60:.0f} min: {verdict} |"
        )
    if len(runs) > 1:
        cells = []
        for m in MARKS:
            v = per_mark[m]
            cells.append("–" if not v else f"**{np.mean(v):.3f}** (n={len(v)}, range {min(v):.3f}–{max(v):.3f})")
        lines.append(f"| {variant}: mean over seeds | | | | | | " + " | ".join(cells) + " | | | |")
print("\n".join(lines))
