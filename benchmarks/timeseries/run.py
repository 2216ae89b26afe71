"""odezoo's time-series families against what a user would pick instead, on JapaneseVowels.

One run, the same splits for every method: the UEA train/test split of JapaneseVowels with 0,
30, 50 and 70 % of each sample's steps dropped by ``odezoo.data.irregular`` (the
``japanese_vowels_drop<NN>`` datasets: seed 0 for train, 1 for test). Methods:

* ``ode_rnn``, ``neural_cde``: odezoo's, built with their defaults, trained with Keras ``fit``
  (Adam, cosine decay from --lr over --epochs, batch 32, each seed of --seeds);
* ``gru_dt``: a Keras GRU on [x·m, m, Δt] per observed step (Δt: time since the previous
  observed step; unobserved steps removed, padding masked), its width chosen to match
  ode_rnn's parameter count, the same training recipe;
* ``dtw_1nn``: tslearn's 1-nearest-neighbour classifier under DTW on each sample's observed
  steps (no training).

Accuracy on the 370 test samples; training CPU time (this process's user + system time around
``fit``, all threads); the last training step's field evaluations (forward). Writes one JSON
line per row to --out and prints the markdown table (with several seeds: the mean and the
sample standard deviation of each cell's accuracies, and the mean CPU). Usage:

    python benchmarks/timeseries/run.py --epochs 100 --lr 0.005 --out benchmarks/timeseries/results/run.jsonl
    python benchmarks/timeseries/run.py --seeds 1,2 --methods gru_dt,ode_rnn --drops 0,50 --out ...
    python benchmarks/timeseries/run.py --table results/a.jsonl results/b.jsonl   # one table of both
"""

import argparse
import json
import os
import time

import numpy as np

DROPS = (0, 30, 50, 70)


def dataset(drop):
    return "japanese_vowels" if drop == 0 else f"japanese_vowels_drop{drop}"


def observed_steps(series):
    """Per sample: its observed steps only, as (values (L, C), times (L,)) with unobserved
    entries of a partly observed step filled by the last observed value (0 before any)."""
    out = []
    for i in range(len(series)):
        seen = series.mask[i].max(-1) > 0
        v, m, t = series.values[i][seen], series.mask[i][seen], series.times[i][seen]
        filled = v.copy()
        for k in range(1, len(v)):
            filled[k] = np.where(m[k] > 0, v[k], filled[k - 1])
        out.append((filled, t))
    return out


def gru_features(series):
    """(N, T, 2C + 1) features [x·m, m, Δt] over each sample's observed steps, front-packed; (N, T) mask."""
    n, t, c = series.values.shape
    x = np.zeros((n, t, 2 * c + 1), np.float32)
    keep = np.zeros((n, t), bool)
    for i in range(n):
        seen = np.flatnonzero(series.mask[i].max(-1) > 0)
        times = series.times[i][seen]
        dt = np.diff(times, prepend=times[0])
        k = len(seen)
        x[i, :k, :c] = series.values[i][seen] * series.mask[i][seen]
        x[i, :k, c : 2 * c] = series.mask[i][seen]
        x[i, :k, 2 * c] = dt
        keep[i, :k] = True
    return x, keep


def gru_dt(channels, classes, units):
    import keras

    x = keras.Input((None, 2 * channels + 1), name="features")
    m = keras.Input((None,), dtype="bool", name="steps")
    h = keras.layers.GRU(units)(x, mask=m)
    return keras.Model([x, m], keras.layers.Dense(classes, activation="softmax")(h), name="gru_dt")


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def train_keras(model, x, y, epochs, lr, steps_per_epoch):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = cpu_seconds()
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return cpu_seconds() - start, history.history


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--drops", default=",".join(map(str, DROPS)))
    parser.add_argument("--methods", default="dtw_1nn,gru_dt,ode_rnn,neural_cde")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (DTW has none: run once)")
    parser.add_argument("--out")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="print the table of these runs' rows and stop")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for path in args.table for line in open(path, encoding="utf-8") if line.strip()]
        print(table(rows))
        return
    if not args.out:
        parser.error("--out is required (or --table)")

    import keras

    import odezoo
    from odezoo import data

    rows = []
    for drop in map(int, args.drops.split(",")):
        train, test = data.load_series(dataset(drop), "train"), data.load_series(dataset(drop), "test")
        steps = int(np.ceil(len(train) / 32))
        runs = [(m, seed) for m in args.methods.split(",") for seed in map(int, args.seeds.split(","))]
        for method, seed in dict.fromkeys((m, 0 if m == "dtw_1nn" else s) for m, s in runs):
            keras.utils.set_random_seed(seed)
            row = dict(method=method, drop=drop, seed=seed, epochs=args.epochs, lr=args.lr)
            if method == "dtw_1nn":
                from tslearn.neighbors import KNeighborsTimeSeriesClassifier
                from tslearn.utils import to_time_series_dataset

                fit_x = to_time_series_dataset([v for v, _ in observed_steps(train)])
                test_x = to_time_series_dataset([v for v, _ in observed_steps(test)])
                start = cpu_seconds()
                clf = KNeighborsTimeSeriesClassifier(n_neighbors=1, metric="dtw").fit(fit_x, train.labels)
                pred = clf.predict(test_x)
                row.update(accuracy=float(np.mean(pred == test.labels)), cpu_s=cpu_seconds() - start, params=0)
            elif method == "gru_dt":
                target = odezoo.build("ode_rnn", input_channels=train.channels, num_classes=9).count_params()
                units = min(range(4, 129), key=lambda u: abs(gru_dt(train.channels, 9, u).count_params() - target))
                model = gru_dt(train.channels, 9, units)
                fx, fm = gru_features(train)
                cpu, hist = train_keras(model, [fx, fm], train.labels, args.epochs, args.lr, steps)
                tx, tm = gru_features(test)
                pred = model.predict([tx, tm], verbose=0).argmax(1)
                row.update(accuracy=float(np.mean(pred == test.labels)), cpu_s=cpu, params=model.count_params())
                row.update(units=units)
            else:
                model = odezoo.build(method, input_channels=train.channels, num_classes=9)
                cpu, hist = train_keras(model, train.inputs(), train.labels, args.epochs, args.lr, steps)
                pred = model.predict(test.inputs(), verbose=0).argmax(1)
                row.update(accuracy=float(np.mean(pred == test.labels)), cpu_s=cpu, params=model.count_params())
                row.update(nfe_forward_last_step=float(hist["nfe_forward"][-1]))
            row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    print()
    print(table(rows))


def table(rows):
    """The markdown table: per method and drop rate, the accuracy (mean ± sd over seeds) and CPU seconds."""
    drops = sorted({r["drop"] for r in rows})
    lines = ["| method | params | " + " | ".join(f"{d} % dropped" for d in drops) + " |"]
    lines.append("|---|---|" + "---|" * len(drops))
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for d in drops:
            cell = [r for r in rows if r["method"] == method and r["drop"] == d]
            acc = np.array([r["accuracy"] for r in cell])
            spread = f" ± {acc.std(ddof=1):.4f}" if len(acc) > 1 else ""
            cells.append(f"{acc.mean():.4f}{spread} ({np.mean([r['cpu_s'] for r in cell]):.0f} s, n={len(acc)})")
        params = next(r["params"] for r in rows if r["method"] == method)
        lines.append(f"| {method} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
