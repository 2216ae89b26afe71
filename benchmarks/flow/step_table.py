"""results/step_time.json → markdown table (medians, IQR, NFE, paired ratios).

python benchmarks/flow/step_table.py [results/step_time.json]
"""

import json
import os
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
r = json.load(open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results", "step_time.json")))
s = r["summary"]
names = [n for n in ("odezoo", "tfp", "torch_adjoint", "torch_backprop") if n in s]
label = dict(
    odezoo="odezoo FFJORD (Keras train_on_batch, XLA, its dopri5 + adjoint, Hutchinson)",
    tfp="raw tfp FFJORD (XLA, tfp DormandPrince adjoint, one-VJP Hutchinson)",
    torch_adjoint="torchdiffeq odeint_adjoint",
    torch_backprop="torchdiffeq odeint (backprop)",
)
print(
    f"Counted: rounds 1-{len(r['rounds']) - 1} × {r['args']['steps']} steps per system; run started {r['started']}, "
    f"{r['wall_s'] / 60:.0f} min wall; load average (1 min) {r['load_start'][0]:.1f} at start, {r['load_end'][0]:.1f} at end.\n"
)
print(
    "| system | CPU ms/step median [IQR] | wall ms/step median [IQR] | NFE fwd+bwd (median) | CPU µs per NFE | first round (compile), wall s |"
)
print("|---|---|---|---|---|---|")
for n in names:
    d = s[n]
    steps = np.array([st for rec in r["rounds"][1:] for st in rec[n]], float)
    us = np.median(steps[:, 1] / np.maximum(steps[:, 2] + steps[:, 3], 1)) * 1e6
    print(
        f"| {label[n]} | **{d['cpu_ms'][0]:.1f}** [{d['cpu_ms'][1]:.1f}–{d['cpu_ms'][2]:.1f}] | {d['wall_ms'][0]:.0f} "
        f"[{d['wall_ms'][1]:.0f}–{d['wall_ms'][2]:.0f}] | {d['nfe_fwd']:.0f}+{d['nfe_bwd']:.0f} | {us:.0f} | {d['first_round_wall_s']:.1f} |"
    )
print(
    "\n| ratio | CPU: paired per-round median [IQR] | CPU: ratio of medians | wall: paired per-round median [IQR] | wall: ratio of medians |"
)
print("|---|---|---|---|---|")
for n in names[1:]:
    d = s[f"odezoo/{n}"]
    c, w = d["cpu"], d["wall"]
    print(
        f"| odezoo / {n} | **{c['paired_median']:.2f}** [{c['paired_q25']:.2f}–{c['paired_q75']:.2f}] | {c['of_medians']:.2f} | "
        f"{w['paired_median']:.2f} [{w['paired_q25']:.2f}–{w['paired_q75']:.2f}] | {w['of_medians']:.2f} |"
    )
# second half only (trained state, NFE grown)
half = len(r["rounds"]) // 2
print(f"\nSecond half only (rounds {half}-{len(r['rounds']) - 1}, the models trained further):\n")
print("| system | CPU ms/step median | NFE fwd+bwd median | odezoo / system, CPU, paired per-round median |")
print("|---|---|---|---|")
for n in names:
    steps = np.array([st for rec in r["rounds"][half:] for st in rec[n]], float)
    pr = [
        np.median([st[1] for st in rec["odezoo"]]) / np.median([st[1] for st in rec[n]]) for rec in r["rounds"][half:]
    ]
    print(
        f"| {n} | {np.median(steps[:, 1]) * 1e3:.1f} | {np.median(steps[:, 2]):.0f}+{np.median(steps[:, 3]):.0f} | "
        f"{'–' if n == 'odezoo' else f'{np.median(pr):.2f}'} |"
    )
