"""The spirals extrapolation check (odezoo._train.extrapolation_errors) for the latent ODE entry and
two baselines that need no training, measured by the same code on the same inputs.

Each baseline is an object with ``extrapolate(inputs, times)``, as the latent ODE has:
``interp_hold`` draws straight lines between a sample's observations and holds the last one;
``interp_line`` does the same and continues with a least-squares line through the last five.

    python benchmarks/timeseries/spirals.py [--zoo DIR]   # DIR: a zoo folder (default: the shipped zoo)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


class _Baseline:
    def __init__(self, tail):
        self.tail = tail  # None: hold the last observation; k: a line through the last k

    def extrapolate(self, inputs, times):
        values, seen_times, mask = (np.asarray(inputs[k]) for k in ("values", "times", "mask"))
        out = np.zeros(times.shape + (values.shape[2],))
        for i in range(len(values)):
            seen = mask[i].sum(axis=1) > 0
            t, v = seen_times[i][seen], values[i][seen]
            for c in range(values.shape[2]):
                out[i, :, c] = np.interp(times[i], t, v[:, c])
                after = times[i] > t[-1]
                if self.tail and after.any():
                    slope, intercept = np.polyfit(t[-self.tail :], v[-self.tail :, c], 1)
                    out[i, after, c] = slope * times[i][after] + intercept
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="a zoo folder holding a latent_ode.spirals entry")
    args = parser.parse_args()
    if args.zoo:
        os.environ["ODEZOO_WEIGHTS_DIR"] = args.zoo
    import odezoo
    from odezoo import _train

    rows = {"interp_hold": _Baseline(None), "interp_line": _Baseline(5)}
    results = {}
    for name, model in rows.items():
        results[name] = _train.extrapolation_errors(model)
    start = time.process_time()
    model = odezoo.build("latent_ode", pretrained="spirals")
    results["latent_ode.spirals"] = dict(
        _train.extrapolation_errors(model), manifest=model.zoo_entry["metrics"], cpu_s=time.process_time() - start
    )
    for name, row in results.items():
        print(json.dumps({"method": name, **row}))


if __name__ == "__main__":
    main()
