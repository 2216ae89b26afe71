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

import contextlib
import datetime
import json
import math
import os
import shlex
import tempfile

import numpy as np

from odezoo import _builder, _distribute, _registry, _weights, data
from odezoo._errors import UnknownNameError, bad_value

FLOW_DATASETS = data.TOY_DENSITIES + ("digits",)
DIGITS_LEVELS = 17  # digits pixel values 0..16


def _command(name, args: dict) -> str:
    parts = ["odezoo", "train", name]
    for flag in ("dataset", "epochs", "batch_size", "lr", "seed"):
        parts += [f"--{flag.replace('_', '-')}", str(args[flag])]
    for flag, default in (("lr_schedule", "constant"), ("optimizer", "adam"), ("strategy", "default"),
                          ("precision", "float32")):
        if args.get(flag, default) != default:
            parts += [f"--{flag.replace('_', '-')}", args[flag]]
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


def evaluate(model, kind, dataset, plain_calls=False) -> dict:
    """Metrics on the dataset's test split: accuracy; or NLL (nats), bits/dim and, where closed-form, KL.

    ``plain_calls``: call the model batch by batch instead of ``predict``
    (under MultiWorkerMirroredStrategy, where ``predict`` gathers across workers).
    """
    if kind == "classifier":
        x, y = data.load(dataset, "test")
        if plain_calls:
            probs = np.concatenate([np.asarray(model(x[i:i + 256], training=False))
                                    for i in range(0, len(x), 256)])
        else:
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


def _checkpoint_callback(path, state_path, crash_after=None, write=True):
    """A Keras callback: after each finished epoch, save the model (with optimizer) atomically.

    ``write=False`` (a non-chief worker): the save runs (saving may take part
    in collective ops the chief waits on) into a temporary folder that is
    then removed, so only the chief's files remain. ``crash_after`` (tests
    only) raises KeyboardInterrupt after that many batches.
    """
    import keras

    class Checkpoint(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if crash_after is not None and self.batches >= crash_after:
                raise KeyboardInterrupt(f"simulated crash after {self.batches} batches")

        def on_epoch_end(self, epoch, logs=None):
            if not write:
                with tempfile.TemporaryDirectory() as scratch:
                    self.model.save(os.path.join(scratch, os.path.basename(path)))
                return
            tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
            self.model.save(tmp)
            os.replace(tmp, path)
            state = {"epochs_done": epoch + 1, "logs": {k: float(v) for k, v in (logs or {}).items()}}
            _weights.write_atomic(state_path, json.dumps(state).encode())

    return Checkpoint()


LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "sgd")


def _optimizer(name, learning_rate):
    """Adam, or SGD with momentum 0.9 (the ResNet papers' optimiser)."""
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=0.9)


def _learning_rate(lr, schedule, epochs, steps_per_epoch):
    if schedule == "constant":
        return lr
    import keras

    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps_per_epoch)


def _train_size(kind, dataset):
    if kind == "classifier" or dataset == "digits":
        return len(data.load(dataset, "train")[0])
    return data.TOY_SPLIT_SIZE["train"]


def _fit(model, spec, dataset, epochs, initial_epoch, batch_size, seed, callbacks, verbose):
    if initial_epoch >= epochs:
        return
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


@contextlib.contextmanager
def _multiworker_keras_workaround(model, dist):
    """Let Keras 3.15 ``fit`` run under MultiWorkerMirroredStrategy.

    Two Keras 3 incompatibilities with it (tensorflow/tensorflow#72388):

    - Keras builds the model symbolically from a first batch reduced with
      ``strategy.reduce("MEAN", (x, y))``, which cannot reduce a tuple
      ("Attempt to convert a value (PerReplica...) to a Tensor"). With the
      model's own strategy unset, Keras defers that build to tracing and
      takes the strategy from the enclosing ``strategy.scope()``.
    - It reduces the step's scalar logs with ``reduce("MEAN", v, axis=0)``
      ("Invalid reduction dimension 0 for input with 0 dimensions"). The
      train step here returns each log as shape (1,), which that reduction
      averages over the workers into a scalar.
    """
    import tensorflow as tf

    if not isinstance(dist, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    step = model.train_step

    def train_step(data):
        return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    saved = model._distribute_strategy
    model._distribute_strategy = None
    object.__setattr__(model, "train_step", train_step)
    try:
        yield
    finally:
        model._distribute_strategy = saved
        object.__delattr__(model, "train_step")


def train(name, *, dataset, epochs, batch_size=128, lr=1e-3, seed=0, out, config=None, tag=None,
          default=False, resume=False, lr_schedule="constant", optimizer="adam", strategy="default", precision="float32",
          verbose=1, return_model=False, _crash_after_batches=None):
    """Train ``name`` on ``dataset`` and write weights + manifest entry into ``out``.

    ``lr_schedule``: "constant" (``lr`` throughout) or "cosine" (decayed to 0 over the run).
    ``optimizer``: "adam" or "sgd" (momentum 0.9).
    ``strategy``: "default", "mirrored", "multiworker" (``TF_CONFIG``) or "tpu"
    (:mod:`odezoo._distribute`); ``batch_size`` is the global batch, and only
    the chief writes files. ``precision``: "float32", "mixed_float16" or
    "mixed_bfloat16" for classifiers (ODE solves stay in float32); flows train
    in float32.

    Returns the manifest entry (with the measured test metrics); with
    ``return_model`` the pair ``(entry, model)``.
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
    if optimizer not in OPTIMIZERS:
        raise bad_value("optimizer", optimizer, ", ".join(OPTIMIZERS))
    if strategy not in _distribute.STRATEGIES:
        raise bad_value("strategy", strategy, ", ".join(_distribute.STRATEGIES))
    if precision not in _distribute.PRECISIONS:
        raise bad_value("precision", precision, ", ".join(_distribute.PRECISIONS))
    if spec.kind != "classifier" and precision != "float32":
        raise bad_value("precision", precision, f"float32 (a {spec.kind} such as {spec.name!r} trains in float32)")
    tag = tag or dataset
    _registry._check_name("weight tag", tag)
    key = f"{spec.name}.{tag}"
    ckpt = os.path.join(out, f"{key}.ckpt.keras")
    state_path = os.path.join(out, f"{key}.ckpt.json")
    if strategy != "default" and "synchronized_bn" in _builder.defaults_of(spec) and "synchronized_bn" not in config:
        # BatchNorm statistics over the global batch, not per replica (recorded in the build config;
        # the command's --strategy implies it)
        build_config = full_config(spec, name, dataset, {**config, "synchronized_bn": True})
    else:
        build_config = full_config(spec, name, dataset, config)

    dist = _distribute.make_strategy(strategy)  # before any other TensorFlow work (multi-worker needs that)
    chief = _distribute.is_chief(dist)
    if chief:
        os.makedirs(out, exist_ok=True)
    jit = _distribute.can_jit(dist)
    if not jit and verbose:
        print(f"strategy {strategy!r} on CPU devices: the train step runs without XLA "
              "(XLA refuses replicas' variables on other CPU devices).")
    keras.utils.set_random_seed(seed)
    initial_epoch = 0
    with _distribute.precision_policy(precision), dist.scope():
        if resume and os.path.exists(ckpt) and os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as fh:
                initial_epoch = int(json.load(fh)["epochs_done"])
            model = keras.models.load_model(ckpt)
            if verbose:
                print(f"Resuming {key} from {ckpt} after epoch {initial_epoch}.")
        else:
            if resume and verbose:
                print(f"No checkpoint for {key} in {out}; starting from scratch.")
            model = _builder.build(name, **build_config)
            steps = -(-_train_size(spec.kind, dataset) // batch_size)
            opt = _optimizer(optimizer, _learning_rate(lr, lr_schedule, epochs, steps))
            if spec.kind == "classifier":
                model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                              metrics=["accuracy"], jit_compile=jit)
            else:
                model.compile(optimizer=opt, jit_compile=jit)

    callbacks = [_checkpoint_callback(ckpt, state_path, _crash_after_batches, write=chief)]
    with dist.scope(), _multiworker_keras_workaround(model, dist):
        _fit(model, spec, dataset, epochs, initial_epoch, batch_size, seed, callbacks, verbose)

    metrics = evaluate(model, spec.kind, dataset, plain_calls=strategy == "multiworker")
    weights_file = f"{key}.weights.h5"
    if chief:
        tmp = os.path.join(out, f".tmp-{os.getpid()}-{weights_file}")
        model.save_weights(tmp)
        os.replace(tmp, os.path.join(out, weights_file))
    else:  # take part in whatever the chief's save does, write nothing that stays
        with tempfile.TemporaryDirectory() as scratch:
            model.save_weights(os.path.join(scratch, weights_file))
    entry = {
        "model": spec.name, "tag": tag, "file": weights_file,
        "sha256": _weights.sha256_of(os.path.join(out, weights_file)) if chief else "",
        "dataset": dataset, "split": "test", "metrics": metrics, "config": build_config,
        "versions": _versions(), "device": _device(), "strategy": _distribute.describe(strategy, dist), "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "default": bool(default),
        "command": _command(name, dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                       config=config, tag=tag, default=default, lr_schedule=lr_schedule,
                                       optimizer=optimizer, strategy=strategy, precision=precision)),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "optimizer": optimizer,
        "precision": precision,
    }
    if chief:
        _weights.add_entry(out, entry)
        for path in (ckpt, state_path):
            if os.path.exists(path):
                os.unlink(path)
    return (entry, model) if return_model else entry


def eval_pretrained(name, tag) -> dict:
    """Re-measure a zoo entry's metrics: ``(entry, measured)``."""
    spec, _ = _registry.resolve_model(name)
    model = _builder.build(name, pretrained=True if tag in (None, True) else tag)
    entry = model.zoo_entry
    return entry, evaluate(model, spec.kind, entry["dataset"])


__all__ = ["train", "evaluate", "eval_pretrained"]
