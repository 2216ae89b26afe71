"""Distribution strategies and precision policies for ``odezoo train`` (TensorFlow's engines, not our own).

``make_strategy(name)``:

- ``"default"``: the default strategy (one device).
- ``"mirrored"``: :class:`tf.distribute.MirroredStrategy` over the local GPUs,
  or over the local CPUs when there are none (several logical CPUs, as the
  tests configure them, count).
- ``"multiworker"``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, the
  cluster read from the ``TF_CONFIG`` environment variable (JSON with
  ``cluster`` and ``task``). Every worker runs the same ``odezoo train``
  command; the chief (task ``chief``, or ``worker`` 0 when the cluster has no
  chief) alone writes checkpoints, weights and the manifest.
- ``"tpu"``: :class:`tf.distribute.TPUStrategy` through a
  :class:`TPUClusterResolver` (``TPU_NAME``, empty for a local TPU VM).
  Untested here: this project has no TPU.

In all of them the batch size is the global batch, split across the replicas,
and the families' BatchNormalization is synchronised across replicas.
"""

from __future__ import annotations

import contextlib
import json
import os

from odezoo._errors import OdezooError
from odezoo.checks import bad_value

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def make_strategy(name: str):
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise bad_value("strategy", name, ", ".join(STRATEGIES))
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise OdezooError(
                "strategy 'multiworker' needs the TF_CONFIG environment variable on every worker, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
            )
        try:
            spec = json.loads(raw)
            spec["cluster"], spec["task"]["type"], spec["task"]["index"]
        except (ValueError, KeyError, TypeError) as err:
            raise OdezooError(
                f"TF_CONFIG is not valid: {err!r}; it needs 'cluster' and 'task' ({{'type': ..., 'index': ...}})"
            ) from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise OdezooError(f"strategy 'tpu': no TPU found ({err}); set TPU_NAME or run on a TPU VM") from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy) -> bool:
    """Whether this process writes files: always, except on non-chief multi-worker workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return task_type == "worker" and task_id == 0 and not has_chief


def num_replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def can_jit(strategy) -> bool:
    """XLA for the train step: everywhere except mirrored replicas on CPUs.

    TensorFlow refuses an XLA cluster that reads a replica's variables on
    another logical CPU device ("Trying to access resource ... located in
    device CPU:1 from device CPU:0"), so CPU-only mirrored and multi-worker
    training compile without XLA; GPUs and TPUs keep it.
    """
    import tensorflow as tf

    if num_replicas(strategy) == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return bool(tf.config.list_logical_devices("GPU"))


def describe(name, strategy) -> str:
    n = num_replicas(strategy)
    return name if name == "default" else f"{name} ({n} replica{'s' if n != 1 else ''})"


@contextlib.contextmanager
def precision_policy(precision: str):
    """Keras's global dtype policy set to ``precision`` while building and training, then restored."""
    if precision not in PRECISIONS:
        raise bad_value("precision", precision, ", ".join(PRECISIONS))
    import keras

    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


__all__ = ["STRATEGIES", "PRECISIONS", "make_strategy", "is_chief", "can_jit", "precision_policy"]
