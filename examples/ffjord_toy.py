"""Train FFJORD on a 2-D toy density and draw data, learned density and samples side by side.

    python examples/ffjord_toy.py --data 8gaussians --minutes 3 --out ffjord_8gaussians.png

Prints the paired KL(data || model) estimate, mean(log p_data(x) - log q(x)) on
held-out points, where the toy density has a closed form (8gaussians, checkerboard).
"""

import argparse
import time

import keras
import numpy as np

import odezoo
from odezoo import data
from odezoo.plotting import plot_density


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="8gaussians", choices=data.TOY_DENSITIES)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ffjord_toy.png")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    flow = odezoo.build("ffjord", data_dim=2, seed=args.seed)
    flow.compile(optimizer=keras.optimizers.Adam(args.lr), jit_compile=True)
    test = data.toy_density(args.data, 2000, seed=12345)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < 60 * args.minutes:
        batch = data.toy_density(args.data, args.batch_size * 50, seed=args.seed * 100_000 + step)
        logs = flow.fit(batch, batch_size=args.batch_size, epochs=1, verbose=0).history
        step += 50
        line = f"{time.perf_counter() - start:6.0f} s  step {step:5d}  nll {logs['nll'][-1]:.3f}"
        line += f"  nfe {logs['nfe_forward'][-1]:.0f}+{logs['nfe_backward'][-1]:.0f}"
        if args.data in data.TOY_LOG_PROB:
            logq = np.asarray(flow.log_prob(test, trace="exact"), dtype=np.float64)
            line += f"  KL {np.mean(data.toy_log_prob(args.data, test) - logq):.4f}"
        print(line, flush=True)
    print("wrote", plot_density(flow, data.toy_density(args.data, 20000, seed=1), args.out))


if __name__ == "__main__":
    main()
