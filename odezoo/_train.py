"""``odezoo train`` / ``odezoo eval``: train a registered model, checkpoint, resume, commit to a zoo folder.

A run writes into its ``out`` folder only: after every finished epoch one
checkpoint (:mod:`odezoo._checkpoint`, committed by one rename), and at the
end the weights and their manifest entry, with the metrics measured on the
test split, as one commit (:func:`odezoo._weights.commit`). Whatever can be
checked is checked before training starts; a run that diverges writes no
entry. ``resume=True`` continues the same run from its newest checkpoint.
The shipped zoo changes only by commit. docs/reliability.md lists the guarantees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile

import numpy as np

from odezoo import _builder, _distribute, _registry, _weights, checks, data
from odezoo import _checkpoint as checkpoint_lib
from odezoo._series import SPIRALS_SEED, times_after
from odezoo._errors import CheckpointError, OdezooError, TrainingError, UnknownNameError

FLOW_DATASETS = data.TOY_DENSITIES + ("digits",)
# a series classifier's datasets: the UEA/UCR problems, each also as "<name>_drop<NN>" (NN % dropped)
SERIES_DATASETS = tuple(data.series_names())
# a generative series model's datasets (generated, with the clean curves behind them for extrapolation)
GENERATIVE_SERIES_DATASETS = ("spirals",)
# the spirals extrapolation check: observations before this time in, the clean arc from it on out
EXTRAPOLATE_FROM = 3.0
DIGITS_LEVELS = 17  # digits pixel values 0..16


def _command(name, args: dict) -> str:
    parts = ["odezoo", "train", name]
    for flag in ("dataset", "epochs", "batch_size", "lr", "seed"):
        parts += [f"--{flag.replace('_', '-')}", str(args[flag])]
    for flag, default in (
        ("lr_schedule", "constant"),
        ("optimizer", "adam"),
        ("strategy", "default"),
        ("precision", "float32"),
    ):
        if args.get(flag, default) != default:
            parts += [f"--{flag.replace('_', '-')}", args[flag]]
    if args.get("clipnorm") is not None:
        parts += ["--clipnorm", str(args["clipnorm"])]
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

    return {
        "odezoo": odezoo.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
    }


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
    elif spec.kind == "series_classifier":
        train = data.load_series(dataset, "train")
        base.update(input_channels=train.channels, num_classes=train.num_classes)
    elif spec.kind == "series_generative":
        base.update(input_channels=data.load_series(dataset, "train").channels)
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
    if kind == "series_generative":
        return extrapolation_errors(model, dataset)
    if kind == "series_classifier":
        test = data.load_series(dataset, "test")
        probs = model.predict(test.inputs(), batch_size=256, verbose=0)
        return {"accuracy": float(np.mean(np.argmax(probs, axis=1) == test.labels))}
    if kind == "classifier":
        x, y = data.load(dataset, "test")
        if plain_calls:
            probs = np.concatenate([np.asarray(model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)])
        else:
            probs = model.predict(x, batch_size=256, verbose=0)
        return {"accuracy": float(np.mean(np.argmax(probs, axis=1) == y))}
    x = flow_data(dataset, "test")
    # the exact trace: a measurement, not an estimate (and the same number every time)
    logq = np.concatenate(
        [np.asarray(model.log_prob(x[i : i + 1000], trace="exact")) for i in range(0, len(x), 1000)]
    ).astype(np.float64)
    nll = float(-logq.mean())
    metrics = {"nll": nll, "bits_per_dim": float((nll / x.shape[1] + model.data_log_scale) / math.log(2))}
    if dataset in data.TOY_LOG_PROB:
        metrics["kl"] = float(np.mean(data.toy_log_prob(dataset, x) - logq))
    return metrics


def spirals_test_truth():
    """``(test Series, grid (T,), clean arcs (N, T, 2))``: the spirals test split and the curves behind it."""
    test = data.load_series("spirals", "test")
    arcs, grid, _ = data.spiral_arcs(len(test), seed=SPIRALS_SEED["test"])
    return test, grid[0], arcs


def extrapolation_errors(model, dataset="spirals", *, split=EXTRAPOLATE_FROM) -> dict:
    """A generative series model on the spirals test split: each sample's observations before
    ``split`` in, the model's mean trajectory (``model.extrapolate``) out, compared with the clean
    arc (:func:`odezoo.data.spiral_arcs`) at the grid times after the row's first observation:
    ``extrapolation_mse`` over the times from ``split`` on (never observed), ``interpolation_mse``
    over those before it (mean squared error per time and channel)."""
    if dataset not in GENERATIVE_SERIES_DATASETS:
        raise UnknownNameError("dataset for a series_generative model", dataset, GENERATIVE_SERIES_DATASETS)
    test, grid, arcs = spirals_test_truth()
    seen = test.times < split
    inputs = {"values": test.values, "times": test.times, "mask": test.mask * seen[..., None]}
    times, valid = times_after(grid, test.times[:, 0])
    predicted = np.asarray(model.extrapolate(inputs, times.astype(np.float32)), np.float64)
    if not np.all(np.isfinite(predicted[valid])):
        raise TrainingError(f"the model's extrapolation of the {dataset} test split is not finite.")
    index = np.searchsorted(grid, times)
    squared = np.mean((predicted - np.take_along_axis(arcs, index[..., None], 1)) ** 2, axis=2)
    late = times >= split
    return {
        "interpolation_mse": float(squared[valid & ~late].mean()),
        "extrapolation_mse": float(squared[valid & late].mean()),
    }


LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "sgd")


def _optimizer(name, learning_rate, clipnorm=None):
    """Adam, or SGD with momentum 0.9 (the ResNet papers' optimiser); with ``clipnorm``, each
    step's gradients are scaled down together to that global L2 norm when theirs is larger."""
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate, global_clipnorm=clipnorm)
    return keras.optimizers.SGD(learning_rate, momentum=0.9, global_clipnorm=clipnorm)


def _learning_rate(lr, schedule, epochs, steps_per_epoch):
    if schedule == "constant":
        return lr
    import keras

    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps_per_epoch)


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


def _run_fingerprint(
    spec, dataset, build_config, *, epochs, batch_size, lr, seed, lr_schedule, optimizer, clipnorm, strategy, precision
) -> dict:
    """What makes two runs the same run: a checkpoint resumes only into an equal fingerprint.

    ``clipnorm`` is a key only when set, so a checkpoint written before the option existed
    still resumes into the same run without it."""
    return ({"clipnorm": clipnorm} if clipnorm is not None else {}) | {
        "model": spec.name,
        "dataset": dataset,
        "config": build_config,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "lr_schedule": lr_schedule,
        "optimizer": optimizer,
        "strategy": strategy,
        "precision": precision,
    }


def _check_arguments(
    spec, dataset, *, epochs, batch_size, lr, seed, lr_schedule, optimizer, clipnorm, strategy, precision
) -> tuple[int, int, float, int, float | None]:
    """Refuse a bad argument (``ValueError`` in the house form); return ``(epochs, batch_size, lr, seed,
    clipnorm)`` as plain Python numbers, so a numpy int is recorded in the manifest as the int it is."""
    if spec.kind == "series_classifier":
        valid = SERIES_DATASETS
        if isinstance(dataset, str) and re.fullmatch(r"[a-z_]+_drop[1-9][0-9]?", dataset):
            valid = valid + (dataset,) if dataset.rsplit("_drop", 1)[0] in SERIES_DATASETS else valid
    elif spec.kind == "series_generative":
        valid = GENERATIVE_SERIES_DATASETS
    else:
        valid = data.IMAGE_DATASETS if spec.kind == "classifier" else FLOW_DATASETS
    if dataset not in valid:
        raise UnknownNameError(f"dataset for {spec.kind} {spec.name!r}", dataset, valid)
    epochs = checks.positive_int("epochs", epochs)
    batch_size = checks.positive_int("batch_size", batch_size)
    learning_rate = checks.real("lr", lr, exclusive_minimum=0.0, allowed="a finite positive number")
    seed = checks.integer("seed", seed, minimum=0, maximum=2**31 - 1, allowed="an int in [0, 2**31)")
    if clipnorm is not None:
        clipnorm = float(
            checks.real("clipnorm", clipnorm, exclusive_minimum=0.0, allowed="None or a finite positive number")
        )
    for arg, value, choices in (
        ("lr_schedule", lr_schedule, LR_SCHEDULES),
        ("optimizer", optimizer, OPTIMIZERS),
        ("strategy", strategy, _distribute.STRATEGIES),
        ("precision", precision, _distribute.PRECISIONS),
    ):
        if value not in choices:
            raise checks.bad_value(arg, value, ", ".join(choices))
    if spec.kind != "classifier" and precision != "float32":
        raise checks.bad_value(
            "precision", precision, f"float32 (a {spec.kind} such as {spec.name!r} trains in float32)"
        )
    return epochs, batch_size, lr if type(lr) in (int, float) else learning_rate, seed, clipnorm


def _training_data(spec, dataset, build_config):
    """``(train tensors, n)``; the test split is read too, so that a bad file fails before training."""
    if spec.kind in ("series_classifier", "series_generative"):
        classifier = spec.kind == "series_classifier"
        num_classes = build_config.get("num_classes") if classifier else None
        train, test = data.load_series(dataset, "train"), data.load_series(dataset, "test")
        for split, s in (("train", train), ("test", test)):
            if (classifier and s.labels is None) or s.channels != build_config.get("input_channels"):
                raise TrainingError(
                    f"{dataset} {split} has {s.channels} channels, but the model is built for "
                    f"input_channels={build_config.get('input_channels')}; drop --config input_channels."
                )
            if checks.is_int(num_classes) and s.labels.max() >= num_classes:
                raise TrainingError(
                    f"{dataset} {split} has {s.num_classes} classes, outside num_classes={num_classes}; "
                    f"drop --config num_classes."
                )
        return (train.values, train.times, train.mask) + ((train.labels,) if classifier else ()), len(train)
    if spec.kind != "classifier":
        x = _digits_density("train") if dataset == "digits" else flow_data(dataset, "train")
        flow_data(dataset, "test")
        return (x,), len(x)
    num_classes, shape = build_config.get("num_classes"), tuple(build_config.get("input_shape") or ())
    train = data.load(dataset, "train")
    for split, (x, y) in (("train", train), ("test", data.load(dataset, "test"))):
        if x.shape[1:] != shape:
            raise TrainingError(
                f"{dataset} {split} images have shape {x.shape[1:]}, but the model is built for "
                f"input_shape={list(shape)}; drop --config input_shape or match the data."
            )
        if len(y) and (y.min() < 0 or (checks.is_int(num_classes) and y.max() >= num_classes)):
            raise TrainingError(
                f"{dataset} {split} labels lie in [{y.min()}, {y.max()}], outside "
                f"[0, {num_classes}) for num_classes={num_classes}; set --config num_classes to "
                f"the dataset's class count ({data.INFO[dataset]['classes']})."
            )
    return train, len(train[0])


def _epoch_batches(spec, dataset, tensors, n, *, initial_epoch, epochs, batch_size, seed):
    """The remaining epochs' batches as one ``tf.data`` pipeline, each epoch shuffled by ``(seed, epoch)``.

    The order (and a digits flow's dequantisation noise) is a pure function of
    the seed and the epoch number, so a resumed run sees exactly the batches
    the uninterrupted run would have seen.
    """
    import tensorflow as tf

    consts = [tf.constant(t) for t in tensors]
    seed64 = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        perm = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([seed64, epoch])))
        batches = tf.data.Dataset.from_tensor_slices(perm).batch(batch_size)
        if spec.kind == "classifier":
            x, y = consts
            return batches.map(lambda i: (tf.cast(tf.gather(x, i), tf.float32), tf.gather(y, i)))
        if spec.kind in ("series_classifier", "series_generative"):  # named inputs (and labels)
            named = lambda i: dict(zip(("values", "times", "mask"), (tf.gather(c, i) for c in consts)))  # noqa: E731
            if spec.kind == "series_generative":
                return batches.map(named)
            return batches.map(lambda i: (named(i), tf.gather(consts[3], i)))
        (x,) = consts
        if dataset != "digits":
            return batches.map(lambda i: tf.gather(x, i))
        noise = tf.random.stateless_uniform(x.shape, seed=tf.stack([seed64, epoch + (1 << 20)]))
        return batches.map(lambda i: (tf.gather(x, i) + tf.gather(noise, i)) / DIGITS_LEVELS)

    return tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def _guard_callback(ckpts, run, *, chief):
    """After each batch: stop on a non-finite loss. After each epoch: check the weights, commit a checkpoint."""
    import keras

    class Guard(keras.callbacks.Callback):
        epoch = 0
        step_nfe = None  # the newest training batch's evaluation counts (an ODE model's logs)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            if "nfe_forward" in logs:
                self.step_nfe = {f"{k}_per_step": float(logs[k]) for k in STEP_NFE_LOGS if k in logs}
            loss = logs.get("loss", logs.get("nll"))  # a classifier's loss; a flow's NLL
            if loss is not None and not math.isfinite(float(loss)):
                raise TrainingError(
                    f"training diverged at epoch {self.epoch + 1}, step {batch + 1} "
                    f"(loss {float(loss)}); {_kept(ckpts)}"
                )

        def on_epoch_end(self, epoch, logs=None):
            _check_finite_weights(self.model, f"after epoch {epoch + 1}; {_kept(ckpts)}")
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if self.step_nfe:
                logs.update(self.step_nfe)
            if not chief:  # saving may take part in collectives the chief waits on: save, keep nothing
                with tempfile.TemporaryDirectory() as scratch:
                    self.model.save(os.path.join(scratch, "model.keras"))
                return
            with _writing(ckpts.folder):
                steps = int(self.model.optimizer.iterations.numpy())  # .numpy(): a MirroredVariable under a strategy
                ckpts.save(self.model, epochs_done=epoch + 1, optimizer_steps=steps, run=run, logs=logs)

    return Guard()


STEP_NFE_LOGS = ("nfe_forward", "nfe_backward")


def _kept(ckpts) -> str:
    newest = ckpts.newest()
    return (
        f"the last good checkpoint (epoch {newest}) is kept in {ckpts.path(newest)}"
        if newest
        else "no checkpoint was written"
    )


def _check_finite_weights(model, when: str) -> None:
    bad = [w.path for w in model.weights if not np.all(np.isfinite(np.asarray(w.numpy(), dtype=np.float64)))]
    if bad:
        raise TrainingError(
            f"training diverged: non-finite values in {', '.join(bad[:3])}"
            f"{' and more' if len(bad) > 3 else ''} {when}; no weights were written."
        )


@contextlib.contextmanager
def _writing(path):
    """Turn an OSError while writing ``path`` (disk full, read-only) into one clear OdezooError."""
    try:
        yield
    except OSError as exc:
        raise OdezooError(
            f"Cannot write {path}: {exc.strerror or exc}. Nothing half-written was left; "
            "the previous checkpoint and zoo entries are intact."
        ) from exc


def _check_space(out, model) -> None:
    """Refuse to start when ``out`` lacks room for the checkpoints and the weights (a rough upper bound)."""
    params = sum(int(np.prod(w.shape)) for w in model.weights)
    need = params * 4 * (1 + 3 * (checkpoint_lib.KEEP + 1)) + (8 << 20)  # weights; model + 2 slots per ckpt
    free = shutil.disk_usage(out).free
    if free < need:
        raise OdezooError(
            f"--out {out} has {free / 2**20:.1f} MiB free; this run needs about "
            f"{need / 2**20:.1f} MiB for its checkpoints and weights."
        )


@contextlib.contextmanager
def _run_lock(out, key):
    """Serialise runs of one ``model.tag`` into one folder (the second waits; a killed run frees it)."""
    path = os.path.join(out, f".{key}.train.lock")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"odezoo: another run is training {key} into {out}; waiting for it to finish.", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare_model(
    spec,
    name,
    build_config,
    ckpts,
    run,
    *,
    resume,
    chief,
    jit,
    optimizer,
    lr,
    lr_schedule,
    clipnorm,
    epochs,
    steps_per_epoch,
    verbose,
):
    """A fresh compiled model, or the resumed one with its finished-epoch count."""
    import keras

    found = ckpts.latest(run) if resume else None
    if found is not None:
        folder, state = found
        try:
            model = keras.models.load_model(os.path.join(folder, checkpoint_lib.MODEL_FILE))
        except Exception as exc:  # a damaged or foreign file: untrusted input
            raise CheckpointError(
                f"Checkpoint {folder}: cannot load its model ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]})."
            ) from exc
        steps = int(model.optimizer.iterations.numpy())
        if steps != state["optimizer_steps"] or steps != state["epochs_done"] * steps_per_epoch:
            raise CheckpointError(
                f"Checkpoint {folder}: its optimizer made {steps} steps, but "
                f"{state['epochs_done']} epochs of {steps_per_epoch} steps were recorded."
            )
        if verbose:
            print(f"Resuming {ckpts.key} from {folder} after epoch {state['epochs_done']}.")
        return model, state["epochs_done"]
    if chief and not resume and ckpts.exists():
        raise CheckpointError(
            f"{ckpts.folder} holds a checkpoint of an unfinished run of {ckpts.key}; pass "
            f"--resume to continue it, or remove that folder to start over."
        )
    if resume and verbose:
        print(f"No checkpoint for {ckpts.key} in {os.path.dirname(ckpts.folder)}; starting from scratch.")
    model = _builder.build(name, **build_config)
    # a layer that says it does not support XLA (an ODEBlock whose solve runs in the graph
    # executor: odezoo.ode.compilation) keeps the whole step out of XLA
    jit = jit and all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())
    opt = _optimizer(optimizer, _learning_rate(lr, lr_schedule, epochs, steps_per_epoch), clipnorm)
    if spec.kind in ("classifier", "series_classifier"):
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
    else:
        model.compile(optimizer=opt, jit_compile=jit)
    return model, 0


def _check_model_input(spec, model, dataset, tensors) -> None:
    expected = tuple(model.input_shape[1:]) if spec.kind == "classifier" else None
    if expected is not None and None not in expected and tuple(tensors[0].shape[1:]) != expected:
        raise TrainingError(
            f"{dataset} images have shape {tuple(tensors[0].shape[1:])}, but {spec.name} takes {expected}."
        )


def _commit_weights(out, model, entry, chief) -> dict:
    """Write the weights and commit them with their manifest entry (the chief); others write nothing."""
    weights_file = f"{entry['model']}.{entry['tag']}.weights.h5"
    if not chief:  # take part in whatever the chief's save does, keep nothing
        with tempfile.TemporaryDirectory() as scratch:
            model.save_weights(os.path.join(scratch, weights_file))
        return dict(entry, file=weights_file, sha256="")
    tmp = _weights.temp_path(out, weights_file)
    try:
        with _writing(out):
            model.save_weights(tmp)
            return _weights.commit(out, entry, tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A checked run: what to build, on what data, with which arguments (``args``: the run's knobs)."""

    spec: object
    name: str
    dataset: str
    config: dict
    tag: str
    default: bool
    build_config: dict
    args: dict
    fingerprint: dict
    tensors: tuple
    n: int

    @property
    def key(self) -> str:
        return f"{self.spec.name}.{self.tag}"

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.args["batch_size"])


def _plan(name, *, dataset, config, tag, default, **args) -> _Plan:
    """Step 1, validate: every argument, the build config, the entry's parts and the data, before training."""
    spec, _ = _registry.resolve_model(name)
    config = dict(config or {})
    epochs, batch_size, lr, seed, clipnorm = _check_arguments(spec, dataset, **args)
    args = dict(args, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, clipnorm=clipnorm)
    tag = tag or dataset
    _registry._check_name("weight tag", tag)
    build_options = config
    if (
        args["strategy"] != "default"
        and "synchronized_bn" in _builder.defaults_of(spec)
        and "synchronized_bn" not in config
    ):
        # BatchNorm statistics over the global batch, not per replica (recorded in the build config;
        # the command's --strategy implies it)
        build_options = {**config, "synchronized_bn": True}
    build_config = full_config(spec, name, dataset, build_options)
    _weights.check_entry_inputs(spec.name, tag, build_config)  # the entry's parts known now: refused now, not after
    tensors, n = _training_data(spec, dataset, build_config)
    return _Plan(
        spec=spec,
        name=name,
        dataset=dataset,
        config=config,
        tag=tag,
        default=bool(default),
        build_config=build_config,
        args=args,
        fingerprint=_run_fingerprint(spec, dataset, build_config, **args),
        tensors=tensors,
        n=n,
    )


def _prepare_out(out) -> None:
    """The chief's output folder exists and is writable (before anything is trained)."""
    with _writing(out):
        os.makedirs(out, exist_ok=True)
    _weights.check_writable(out)


def _build_or_resume(plan, ckpts, dist, *, resume, chief, verbose):
    """Step 2: the compiled model, fresh or from this run's newest checkpoint; ``(model, initial_epoch)``."""
    import keras

    a = plan.args
    jit = _distribute.can_jit(dist)
    if not jit and verbose:
        print(
            f"strategy {a['strategy']!r} on CPU devices: the train step runs without XLA "
            "(XLA refuses replicas' variables on other CPU devices)."
        )
    keras.utils.set_random_seed(a["seed"])
    with _distribute.precision_policy(a["precision"]), dist.scope():
        return _prepare_model(
            plan.spec,
            plan.name,
            plan.build_config,
            ckpts,
            plan.fingerprint,
            resume=resume,
            chief=chief,
            jit=jit,
            optimizer=a["optimizer"],
            lr=a["lr"],
            lr_schedule=a["lr_schedule"],
            clipnorm=a["clipnorm"],
            epochs=a["epochs"],
            steps_per_epoch=plan.steps_per_epoch,
            verbose=verbose,
        )


def _fit(plan, model, ckpts, dist, *, initial_epoch, chief, verbose) -> dict:
    """Step 3: the remaining epochs, a checkpoint after each; a non-finite loss stops the run.

    Returns an ODE model's field evaluations in its last training step
    (``nfe_forward_per_step``, ``nfe_backward_per_step``; from the newest
    checkpoint when a resumed run had no epoch left), else ``{}``.
    """
    a = plan.args
    if initial_epoch >= a["epochs"]:
        found = ckpts.latest(plan.fingerprint) if chief else None
        logs = found[1].get("logs") if found else None
        logs = logs if isinstance(logs, dict) else {}  # a checkpoint's state is untrusted: numbers only
        keys = [f"{k}_per_step" for k in STEP_NFE_LOGS]
        return {k: float(logs[k]) for k in keys if checks.is_real(logs.get(k)) and math.isfinite(logs[k])}
    batches = _epoch_batches(
        plan.spec,
        plan.dataset,
        plan.tensors,
        plan.n,
        initial_epoch=initial_epoch,
        epochs=a["epochs"],
        batch_size=a["batch_size"],
        seed=a["seed"],
    )
    guard = _guard_callback(ckpts, plan.fingerprint, chief=chief)
    with dist.scope(), _multiworker_keras_workaround(model, dist):
        model.fit(
            batches,
            epochs=a["epochs"],
            initial_epoch=initial_epoch,
            steps_per_epoch=plan.steps_per_epoch,
            callbacks=[guard],
            shuffle=False,
            verbose=verbose,
        )
    return guard.step_nfe or {}


def _measure(plan, model, ckpts) -> dict:
    """Step 4: the test metrics, which must be finite, as must every weight."""
    metrics = evaluate(model, plan.spec.kind, plan.dataset, plain_calls=plan.args["strategy"] == "multiworker")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise TrainingError(f"training diverged: the test metrics are not finite ({bad}); {_kept(ckpts)}.")
    _check_finite_weights(model, f"at the end; {_kept(ckpts)}")
    return metrics


def _manifest_entry(plan, metrics, dist) -> dict:
    """Step 5: the manifest entry of the run (committed with the weights by :func:`_commit_weights`)."""
    a = plan.args
    command_args = dict(dataset=plan.dataset, config=plan.config, tag=plan.tag, default=plan.default, **a)
    return {
        "model": plan.spec.name,
        "tag": plan.tag,
        "dataset": plan.dataset,
        "split": "test",
        "metrics": metrics,
        "config": plan.build_config,
        "versions": _versions(),
        "device": _device(),
        "strategy": _distribute.describe(a["strategy"], dist),
        "seed": a["seed"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "default": plan.default,
        "command": _command(plan.name, command_args),
        **{k: a[k] for k in ("epochs", "batch_size", "lr", "lr_schedule", "optimizer", "precision")},
        **({"clipnorm": a["clipnorm"]} if a["clipnorm"] is not None else {}),
    }


def train(
    name,
    *,
    dataset,
    epochs,
    batch_size=128,
    lr=1e-3,
    seed=0,
    out,
    config=None,
    tag=None,
    default=False,
    resume=False,
    lr_schedule="constant",
    optimizer="adam",
    clipnorm=None,
    strategy="default",
    precision="float32",
    verbose=1,
    return_model=False,
):
    """Train ``name`` on ``dataset`` and commit weights + manifest entry into ``out``.

    ``lr_schedule``: "constant" (``lr`` throughout) or "cosine" (decayed to 0 over the run).
    ``optimizer``: "adam" or "sgd" (momentum 0.9). ``clipnorm``: None (default) or a
    positive number, the global L2 norm each step's gradients are clipped to.
    ``strategy``: "default", "mirrored", "multiworker" (``TF_CONFIG``) or "tpu"
    (:mod:`odezoo._distribute`); ``batch_size`` is the global batch, and only
    the chief writes files. ``precision``: "float32", "mixed_float16" or
    "mixed_bfloat16" for classifiers (ODE solves stay in float32); flows train
    in float32. ``resume``: continue from the newest checkpoint of this same
    run (refused, naming the differing keys, for another run's).

    Everything that can be checked is checked before training (arguments,
    labels, shapes, a writable ``out`` with room); a non-finite loss or weight
    stops the run with :class:`odezoo.TrainingError`, keeping the last good
    checkpoint and writing no entry (docs/reliability.md).

    An ODE model's entry also records, in its metrics, the field evaluations
    of its last training step (``nfe_forward_per_step``, and ``nfe_backward_per_step``
    where it logs one; :func:`measure_step_nfe` re-measures them at the shipped weights).
    A generative series model (``latent_ode`` on ``spirals``) is measured by
    :func:`extrapolation_errors`.

    Returns the manifest entry (with the measured test metrics); with
    ``return_model`` the pair ``(entry, model)``.
    """

    plan = _plan(
        name,
        dataset=dataset,
        config=config,
        tag=tag,
        default=default,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        lr_schedule=lr_schedule,
        optimizer=optimizer,
        clipnorm=clipnorm,
        strategy=strategy,
        precision=precision,
    )
    dist = _distribute.make_strategy(strategy)  # before any other TensorFlow work (multi-worker needs that)
    chief = _distribute.is_chief(dist)
    if chief:
        _prepare_out(out)
    ckpts = checkpoint_lib.Checkpoints(out, plan.key)
    with _run_lock(out, plan.key) if chief else contextlib.nullcontext():
        model, initial_epoch = _build_or_resume(plan, ckpts, dist, resume=resume, chief=chief, verbose=verbose)
        _check_model_input(plan.spec, model, dataset, plan.tensors)
        if chief:
            _check_space(out, model)
        step_nfe = _fit(plan, model, ckpts, dist, initial_epoch=initial_epoch, chief=chief, verbose=verbose)
        metrics = {**_measure(plan, model, ckpts), **step_nfe}
        entry = _commit_weights(out, model, _manifest_entry(plan, metrics, dist), chief)
        if chief:
            ckpts.remove()
    return (entry, model) if return_model else entry


def measure_step_nfe(model, dataset, batch_size, *, steps=8, seed=0) -> dict:
    """An ODE model's field evaluations per training step, re-measured: the medians over
    ``steps`` training batches of ``batch_size`` (at most the split's whole batches; gradient
    steps at learning rate 0, so the weights are unchanged):
    ``{"nfe_forward_per_step", "nfe_backward_per_step"}`` (the latter where the model logs it).
    A classifier or a flow on its image, density or time-series dataset.

    What ``odezoo train`` records in a manifest entry's metrics is the last training step's count;
    this is the check of it at the shipped weights (the counts are integers that move by whole
    solver steps from batch to batch, hence the median).
    """
    import keras

    if hasattr(model, "log_prob"):  # a flow: its training data (the digits dequantised), no labels
        x, y = flow_data(dataset, "train", seed), None
        batch_of = lambda rows: x[rows]  # noqa: E731
    elif dataset in data.IMAGE_DATASETS:
        x, y = data.load(dataset, "train")
        batch_of = lambda rows: x[rows]  # noqa: E731
    else:  # a time series (its name, or "<name>_drop<NN>"); a generative model's has no labels to use
        series = data.load_series(dataset, "train")
        x, y = series.values, (series.labels if dataset not in GENERATIVE_SERIES_DATASETS else None)
        batch_of = lambda rows: {k: v[rows] for k, v in series.inputs().items()}  # noqa: E731
    steps = max(1, min(steps, len(x) // batch_size))
    order = np.random.default_rng(seed).permutation(len(x))[: steps * batch_size]
    loss = None if y is None else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss, jit_compile="auto")
    counts = {}
    for i in range(steps):
        rows = order[i * batch_size : (i + 1) * batch_size]
        logs = model.train_on_batch(batch_of(rows), None if y is None else y[rows], return_dict=True)
        for k in STEP_NFE_LOGS:
            if k in logs:  # a model differentiated by backprop alone logs no backward count
                counts.setdefault(k, []).append(float(logs[k]))
    return {f"{k}_per_step": float(np.median(v)) for k, v in counts.items()}


def eval_pretrained(name, tag) -> dict:
    """Re-measure a zoo entry's metrics: ``(entry, measured)``."""
    spec, _ = _registry.resolve_model(name)
    model = _builder.build(name, pretrained=True if tag in (None, True) else tag)
    entry = model.zoo_entry
    return entry, evaluate(model, spec.kind, entry["dataset"])


__all__ = ["train", "evaluate", "eval_pretrained", "measure_step_nfe", "extrapolation_errors"]
