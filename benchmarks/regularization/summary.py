"""results/toy_*.json (benchmarks/flow/kl_train.py runs) -> the markdown tables of README.md.

python benchmarks/regularization/summary.py [--target 0.02] [--pattern 'toy_cb*.json'] [--minutes 15]
"""

import argparse
import glob
import json
import os

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--target", type=float, default=0.02, help="KL target (nats) for the time-to-target column")
ap.add_argument("--pattern", default="toy_*.json")
ap.add_argument("--minutes", type=float, default=None, help="only the runs of this CPU budget (default: all)")
args = ap.parse_args()

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
runs = []
for path in sorted(glob.glob(os.path.join(here, args.pattern))):
    res = json.load(open(path))
    a = res["args"]
    if args.minutes is not None and a["minutes"] != args.minutes:
        continue
    runs.append((res["data"], a.get("kinetic", 0.0), a.get("jacobian", 0.0), a["seed"], os.path.basename(path), res))

for data in sorted({r[0] for r in runs}):
    sel = sorted((r for r in runs if r[0] == data), key=lambda r: (r[3], r[1], r[2]))
    marks = sorted({e["mark_s"] for r in sel for e in r[5]["evals"] if e["mark_s"] is not None})
    print(f"\n### {data}\n")
    head = ["λ_k", "λ_j", "seed", "steps"] + [f"KL @{m / 60:g} min" for m in marks]
    head += ["NFE/step first 200", "NFE/step last 10%", f"CPU min to KL ≤ {args.target}", "file"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for _, lk, lj, seed, name, res in sel:
        steps = np.array([s[:5] for s in res["steps"]], dtype=float)
        nfe = steps[:, 1] + steps[:, 2]
        by_mark = {e["mark_s"]: e for e in res["evals"]}
        cells = [f"{lk:g}", f"{lj:g}", str(seed), str(len(steps))]
        for m in marks:
            e = by_mark.get(m)
            cells.append(f"{e['kl']:.4f} ± {e['kl_se']:.4f}" if e else "")
        tail = nfe[int(0.9 * len(nfe)) :]
        cells += [f"{nfe[:200].mean():.0f}", f"{tail.mean():.0f}"]
        hit = [e["cpu_s"] for e in res["evals"] if e["mark_s"] is not None and e["kl"] <= args.target]
        cells.append(f"{hit[0] / 60:.1f}" if hit else "not reached")
        cells.append(name)
        print("| " + " | ".join(cells) + " |")
