"""``odezoo train`` / ``odezoo eval``: train a registered model, checkpoint, resume, write the manifest.

A run writes into its ``out`` folder only: a checkpoint after every finished
epoch (the whole model with its optimizer, as ``.keras``, written to a temp
file and renamed, with a small JSON of the epoch count), and at the end the
weights (``<model>.<tag>.weights.h5``) and their manifest entry, with the
metrics measured on the test split, in ``out/manifest.json`` (atomically: a
failure leaves any old manifest intact). ``resume=True`` continues from the
last finished epoch. The shipped zoo changes only by commit.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex

import numpy as np

from odezoo import _registry, _weights, data
from odezoo._errors import UnknownNameError, bad_value

FLOW_DATASETS = data.TOY_DENSITIES + ("digits",)
DIGITS_LEVELS = 17  # digits pixel values 0..16


def _command(name, args: dict) -> str:
    parts = ["odezoo", "train", name]
    for flag in ("dataset", "epochs", "batch_size", "lr", "seed"):
        parts += [f"--{flag.replace('_', '-')}", str(args[flag])]
    if args.get("lr_schedule", "constant") != "constant":
        parts += ["--lr-schedule", args["lr_schedule"]]
    parts += ["--out", "DIR"]
    for key, value in sorted((args.get("config") or {}).items()):
        parts += ["--config", f"{key}={json.dumps(value)}"]
    parts += ["--tag", args["tag"]]
    if args.get("default"):
        parts.append("--default")
    return " ".join(shlex.quote(p) for p in parts)


def _versions() -> dict:
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import odezoo

    return {"odezoo": odezoo.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "tensorflow_probability": tfp.__version__}


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else f"CPU ({os.cpu_count()} cores)"


def _digits_density(split):
    x, _ = data.load("digits", split)
    return x.reshape(len(x), -1).astype(np.float32)


def _dequantized(x_int, seed):
    """Uniform dequantisation, scaled by 1/17: (x + u) / 17 with u ~ U[0, 1)."""
    rng = np.random.default_rng(seed)
    return ((x_int + rng.random(x_int.shape)) / DIGITS_LEVELS).astype(np.float32)


def flow_data(dataset, split, seed=0):
    if dataset == "digits":
        return _dequantized(_digits_density(split), seed + (0 if split == "train" else 10_000))
    x, _ = data.load(dataset, split)
    return x


def full_config(spec, name, dataset, config) -> dict:
    """The full build config: the builder's defaults, the dataset's shape, then the user's keys."""
    from odezoo import _builder

    _, preset = _registry.resolve_model(name)
    base = {**_builder.defaults_of(spec), **preset}
    if spec.kind == "classifier":
        info = data.INFO[dataset]
        base.update(input_shape=list(info["shape"]), num_classes=info["classes"])
    else:
        base.update(data_dim=64 if dataset == "digits" else 2)
        if dataset == "digits":
            base.update(data_log_scale=math.log(DIGITS_LEVELS))
    merged = {**base, **(config or {})}
    return json.loads(json.dumps(merged))  # JSON-normal: tuples -> lists


def evaluate(model, kind, dataset) -> dict:
    """Metrics on the dataset's test split: accuracy; or NLL (nats), bits/dim and, where closed-form, KL."""
    if kind == "classifier":
        x, y = data.load(dataset, "test")
        probs = model.predict(x, batch_size=256, verbose=0)
        return {"accuracy": float(np.mean(np.argmax(probs, axis=1) == y))}
    x = flow_data(dataset, "test")
    # the exact trace: a measurement, not an estimate (and the same number every time)
    logq = np.concatenate([np.asarray(model.log_prob(x[i:i + 1000], trace="exact"))
                           for i in range(0, len(x), 1000)]).astype(np.float64)
    nll = float(-logq.mean())
    metrics = {"nll": nll, "bits_per_dim": float((nll / x.shape[1] + model.data_log_scale) / math.log(2))}
    if dataset in data.TOY_LOG_PROB:
        metrics["kl"] = float(np.mean(data.toy_log_prob(dataset, x) - logq))
    return metrics


def _checkpoint_callback(path, state_path, crash_after=None):
    """A Keras callback: after each finished epoch, save the model (with optimizer) atomically.

    ``crash_after`` (tests only) raises KeyboardInterrupt after that many batches.
    """
    import keras

    class Checkpoint(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if crash_after is not None and self.batches >= crash_after:
                raise KeyboardInterrupt(f"simulated crash after {self.batches} batches")

        def on_epoch_end(self, epoch, logs=None):
            tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
            self.model.save(tmp)
            os.replace(tmp, path)
            state = {"epochs_done": epoch + 1, "logs": {k: float(v) for k, v in (logs or {}).items()}}
            _weights.write_atomic(state_path, json.dumps(state).encode())

    return Checkpoint()


LR_SCHEDULES = ("constant", "cosine")


def _learning_rate(lr, schedule, epochs, steps_per_epoch):
    if schedule == "constant":
        return lr
    import keras

    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps_per_epoch)


def _train_size(kind, dataset):
    if kind == "classifier" or dataset == "digits":
        return len(data.load(dataset, "train")[0])
    return data.TOY_SPLIT_SIZE["train"]


def train(name, *, dataset, epochs, batch_size=128, lr=1e-3, seed=0, out, config=None, tag=None,
          default=False, resume=False, lr_schedule="constant", verbose=1, _crash_after_batches=None) -> dict:
    """Train ``name`` on ``dataset`` and write weights + manifest entry into ``out``.

    ``lr_schedule``: "constant" (Adam at ``lr``) or "cosine" (decayed to 0 over the run).

    Returns the manifest entry (with the measured test metrics).
    """
    import keras

    spec, _ = _registry.resolve_model(name)
    config = dict(config or {})
    valid = data.IMAGE_DATASETS if spec.kind == "classifier" else FLOW_DATASETS
    if dataset not in valid:
        raise UnknownNameError(f"dataset for {spec.kind} {spec.name!r}", dataset, valid)
    for arg, value, ok in (("epochs", epochs, isinstance(epochs, int) and epochs >= 1),
                           ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
                           ("lr", lr, isinstance(lr, (int, float)) and lr > 0),
                           ("seed", seed, isinstance(seed, int))):
        if not ok:
            raise bad_value(arg, value, "a positive number" if arg != "seed" else "an int")
    if lr_schedule not in LR_SCHEDULES:
        raise bad_value("lr_schedule", lr_schedule, ", ".join(LR_SCHEDULES))
    tag = tag or dataset
    _registry._check_name("weight tag", tag)
    key = f"{spec.name}.{tag}"
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, f"{key}.ckpt.keras")
    state_path = os.path.join(out, f"{key}.ckpt.json")
    build_config = full_config(spec, name, dataset, config)

    keras.utils.set_random_seed(seed)
    initial_epoch = 0
    if resume and os.path.exists(ckpt) and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as fh:
            initial_epoch = int(json.load(fh)["epochs_done"])
        model = keras.models.load_model(ckpt)
        if verbose:
            print(f"Resuming {key} from {ckpt} after epoch {initial_epoch}.")
    else:
        if resume and verbose:
            print(f"No checkpoint for {key} in {out}; starting from scratch.")
        from odezoo import _builder

        model = _builder.build(name, **build_config)
        steps = -(-_train_size(spec.kind, dataset) // batch_size)
        optimizer = keras.optimizers.Adam(_learning_rate(lr, lr_schedule, epochs, steps))
        if spec.kind == "classifier":
            model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"], jit_compile=True)
        else:
            model.compile(optimizer=optimizer, jit_compile=True)

    callbacks = [_checkpoint_callback(ckpt, state_path, _crash_after_batches)]
    if initial_epoch < epochs:
        if spec.kind == "classifier":
            x, y = data.load(dataset, "train")
            model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size, shuffle=True,
                      callbacks=callbacks, verbose=verbose)
        else:
            import tensorflow as tf

            if dataset == "digits":
                x_int = _digits_density("train")

                def gen_epoch(e):
                    return _dequantized(x_int, seed * 1000 + e)

                for epoch in range(initial_epoch, epochs):
                    model.fit(gen_epoch(epoch), epochs=epoch + 1, initial_epoch=epoch, batch_size=batch_size,
                              shuffle=True, callbacks=callbacks, verbose=verbose)
            else:
                x = flow_data(dataset, "train")
                model.fit(tf.constant(x), epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
                          shuffle=True, callbacks=callbacks, verbose=verbose)

    metrics = evaluate(model, spec.kind, dataset)
    weights_file = f"{key}.weights.h5"
    tmp = os.path.join(out, f".tmp-{os.getpid()}-{weights_file}")
    model.save_weights(tmp)
    os.replace(tmp, os.path.join(out, weights_file))
    entry = {
        "model": spec.name, "tag": tag, "file": weights_file,
        "sha256": _weights.sha256_of(os.path.join(out, weights_file)),
        "dataset": dataset, "split": "test", "metrics": metrics, "config": build_config,
        "versions": _versions(), "device": _device(), "strategy": "default", "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "default": bool(default),
        "command": _command(name, dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                       config=config, tag=tag, default=default, lr_schedule=lr_schedule)),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule,
    }
    _weights.add_entry(out, entry)
    for path in (ckpt, state_path):
        if os.path.exists(path):
            os.unlink(path)
    return entry


def eval_pretrained(name, tag) -> dict:
    """Re-measure a zoo entry's metrics: ``(entry, measured)``."""
    from odezoo import _builder

    spec, _ = _registry.resolve_model(name)
    model = _builder.build(name, pretrained=True if tag in (None, True) else tag)
    entry = model.zoo_entry
    return entry, evaluate(model, spec.kind, entry["dataset"])


__all__ = ["train", "evaluate", "eval_pretrained"]
