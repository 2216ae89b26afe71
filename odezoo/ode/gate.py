"""A failed solve applies no update, on one device and under a ``tf.distribute`` strategy.

Two pieces, used by :class:`odezoo.ODEBlock`'s models and by the FFJORD flow:

* :func:`across_replicas` makes every replica record the same solve report.
  Each replica solves its own part of the batch; the status variables are
  written ``ONLY_FIRST_REPLICA``, so without it a failure on any replica but
  the first would never reach the status. The report kept is the worst one
  (the highest reason code, its time reached and step count), with the
  largest evaluation count.
* :func:`apply_if_solved` runs the optimizer's update only if every solve of
  the step succeeded. Without a strategy the update sits in a ``tf.cond``.
  A strategy's update is a ``merge_call``, which a ``tf.cond`` cannot hold,
  so there the update runs and is then undone: the optimizer's variables and
  the trained ones are read before it and written back, on every device, when
  the step failed (one extra copy of them per step, only under a strategy).

Either way a failed batch leaves the weights, ``optimizer.iterations`` and the
moments as they were; the caller raises :class:`odezoo.SolverError` after the step.
"""

import threading

import keras
import tensorflow as tf

__all__ = ["across_replicas", "apply_if_solved", "GatedApply"]


def _replica_context():
    """The replica context of a strategy with more than one replica, else ``None``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def across_replicas(info):
    """The solve report ``info`` (``reason``, ``nfe``, ``t``, ``steps``) agreed by every replica.

    The identity off a strategy or on one replica; otherwise the worst
    replica's reason with its ``t`` and ``steps`` (the first such replica on a
    tie), and the largest ``nfe``.
    """
    ctx = _replica_context()
    if ctx is None:
        return info

    def gather(value, dtype):
        return ctx.all_gather(tf.reshape(tf.cast(value, dtype), [1]), axis=0)

    reasons = gather(info["reason"], tf.int32)
    worst = tf.argmax(reasons, output_type=tf.int32)
    agreed = dict(info)
    agreed["reason"] = reasons[worst]
    agreed["nfe"] = tf.reduce_max(gather(info["nfe"], tf.int32))
    if "t" in info:
        agreed["t"] = gather(info["t"], tf.float32)[worst]
    if "steps" in info:
        agreed["steps"] = gather(info["steps"], tf.int32)[worst]
    return agreed


def _all_succeeded(read_reasons, grads):
    deps = [g for g in tf.nest.flatten(grads) if g is not None]
    with tf.control_dependencies(deps):
        ok = tf.constant(True)
        for reasons in read_reasons():
            ok = tf.logical_and(ok, tf.reduce_all(tf.equal(reasons, 0)))
    return ok


def apply_if_solved(read_reasons, grads, apply_fn, variables=()):
    """Run ``apply_fn()`` (the optimizer's update) so that it takes effect only if every solve succeeded.

    ``read_reasons()`` returns int tensors of reason codes (0 = success); it is
    called after ``grads`` (the backward solves write their status while the
    gradients are computed). ``variables`` are everything the update may write
    (the optimizer's variables and the trained ones); they are needed only
    under a strategy, where the update is undone instead of skipped. Returns a
    boolean tensor: whether the update took effect.
    """
    ok = _all_succeeded(read_reasons, grads)
    ctx = tf.distribute.get_replica_context()
    if not tf.distribute.has_strategy() or ctx is None:

        def update():
            apply_fn()
            return tf.constant(True)

        return tf.cond(ok, update, lambda: tf.constant(False))

    # under a strategy: the replicas agree on ``ok`` (their statuses are already agreed, see
    # across_replicas; the sum makes it hold whatever wrote them)
    failed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(ok), tf.int32))
    ok = tf.equal(failed, 0)
    variables = _unique([v.value if isinstance(v, keras.Variable) else v for v in variables])  # the tf ones
    with tf.control_dependencies([ok]):
        saved = [tf.identity(v) for v in variables]
    with tf.control_dependencies(saved):
        apply_fn()

    def restore(strategy, saved, ok):
        def put_back(var, old, ok):
            return var.assign(tf.where(ok, var, old))

        for var, old in zip(variables, saved):
            strategy.extended.update(var, put_back, args=(old, ok), group=False)

    with tf.control_dependencies(saved):
        ctx.merge_call(restore, args=(saved, ok))
    return ok


def _unique(variables):
    seen, out = set(), []
    for v in variables:
        key = id(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


_patch_lock = threading.Lock()
_current = threading.local()  # the gate of the train step this thread is tracing (one thread per replica)


class GatedApply:
    """While Keras traces its train step, route ``optimizer.apply_gradients`` through :func:`apply_if_solved`.

    Keras's ``train_step`` owns the update; wrapping that one call keeps its
    step (loss scaling, metrics) as it is instead of copying it. The wrapper is
    installed on the optimizer once and stays (a strategy traces its replicas'
    steps in parallel threads, which must not swap the method under each
    other); what it gates on is per thread, so it is the identity outside this
    context.
    """

    def __init__(self, optimizer, read_reasons, variables):
        self.optimizer, self.read_reasons, self.variables = optimizer, read_reasons, variables

    def __enter__(self):
        _install(self.optimizer)
        self._outer = getattr(_current, "gate", None)
        _current.gate = self
        return self

    def __exit__(self, *exc):
        _current.gate = self._outer


def _install(optimizer):
    with _patch_lock:
        if "apply_gradients" in vars(optimizer):  # already gated (or patched by its owner: leave it)
            return
        real = optimizer.apply_gradients

        def apply_gradients(grads_and_vars, *args, **kwargs):
            gate = getattr(_current, "gate", None)
            if gate is None or gate.optimizer is not optimizer:
                return real(grads_and_vars, *args, **kwargs)
            grads_and_vars = list(grads_and_vars)
            written = list(optimizer.variables) + [v for _, v in grads_and_vars] + list(gate.variables)
            apply_if_solved(
                gate.read_reasons,
                [g for g, _ in grads_and_vars],
                lambda: real(grads_and_vars, *args, **kwargs),
                written,
            )

        optimizer.apply_gradients = apply_gradients
