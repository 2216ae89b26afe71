"""The digits-flow table of README.md, from results/digits_*.log and .time (run_digits.sh).

Per run: epochs, solver tolerance, λ_k = λ_j, seed; the test bits/dim and the last training
step's field evaluations (forward / backward) that ``odezoo train`` printed; forward + backward
evaluations per step at the end of epochs 1, 25 %, 50 % and 100 % of the run; CPU seconds
(user + system, /usr/bin/time); and the first epoch whose training bits/dim (the epoch's mean,
penalty excluded) fell to ``--target``.

    python summary_digits.py [--target 2.95]
"""

from __future__ import annotations

import argparse
import glob
import os
import re

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NAME = re.compile(r"digits_e(?P<epochs>\d+)_l(?P<lam>[0-9.e-]+)_s(?P<seed>\d+)(?:_tol(?P<tol>[0-9.e-]+))?\.log$")


def epochs_of(text):
    """``[(epoch, train bits/dim, nfe_forward + nfe_backward)]`` from a Keras verbose-2 log."""
    out = []
    for m in re.finditer(r"Epoch (\d+)/\d+\n[^\n]*?bits_per_dim: ([0-9.]+)[^\n]*?nfe_backward: ([0-9.]+)[^\n]*?"
                         r"nfe_forward: ([0-9.]+)", text):  # fmt: skip
        out.append((int(m.group(1)), float(m.group(2)), float(m.group(3)) + float(m.group(4))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.95)
    args = parser.parse_args()
    rows = []
    for path in sorted(glob.glob(os.path.join(HERE, "digits_*.log"))):
        m = NAME.search(os.path.basename(path))
        text = open(path, encoding="utf-8").read()
        final = re.search(
            r"bits_per_dim ([0-9.]+), nfe_forward_per_step ([0-9.]+), nfe_backward_per_step ([0-9.]+)", text
        )
        if not m or not final:
            continue  # a run still going, or one that did not finish
        cpu = open(path[:-4] + ".time", encoding="utf-8").read().split()
        epochs = epochs_of(text)
        n = int(m["epochs"])
        at = {e: nfe for e, _, nfe in epochs}
        marks = [1, max(1, n // 4), n // 2, n]
        reached = next((e for e, bpd, _ in epochs if bpd <= args.target), None)
        rows.append(
            (float(m["tol"] or 1e-3), n, float(m["lam"]), int(m["seed"]), float(final[1]),
             f"{float(final[2]):.0f} / {float(final[3]):.0f}", " ".join(f"{at.get(e, float('nan')):.0f}" for e in marks),
             float(cpu[0]) + float(cpu[2]), "not reached" if reached is None else str(reached))
        )  # fmt: skip
    print(f"| tol | epochs | λ_k = λ_j | seed | test bits/dim | NFE last step (fwd / bwd) | NFE/step at epochs "
          f"1, 25/50/100 % | CPU s | first epoch with train bits/dim ≤ {args.target} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for tol, n, lam, seed, bpd, last, marks, cpu, reached in sorted(rows):
        print(f"| {tol:g} | {n} | {lam:g} | {seed} | {bpd:.4f} | {last} | {marks} | {cpu:.0f} | {reached} |")


if __name__ == "__main__":
    main()
