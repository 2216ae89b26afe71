"""The fixed-grid solver: any registered scheme's ``step`` with one shared field (RK-Net, ``solver="rk4"``).

The grid is planned in Python, so the times must be known while tracing.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from odezoo._layers import make_scheme


def static_times(t0, times):
    t0v = tf.get_static_value(tf.convert_to_tensor(t0))
    tv = tf.get_static_value(tf.convert_to_tensor(times))
    if t0v is None or tv is None:
        raise ValueError("Fixed-grid solvers need static (Python or constant) times t0 and solution times.")
    return float(t0v), [float(x) for x in np.reshape(tv, [-1])]


def plan_fixed_grid(t0, times, num_steps=None, step_size=None):
    """Steps per interval [t0, times[0]], [times[0], times[1]], ...: a list of (n, h)."""
    edges = [t0] + list(times)
    total = abs(edges[-1] - edges[0])
    plan = []
    for a, b in zip(edges[:-1], edges[1:]):
        span = abs(b - a)
        if span == 0.0:
            plan.append((0, 0.0))
            continue
        if num_steps is not None:
            n = max(1, int(round(num_steps * span / total))) if total > 0 else 0
        else:
            n = max(1, int(math.ceil(span / step_size - 1e-9)))
        plan.append((n, (b - a) / n))
    return plan


def fixed_grid_solve(scheme_name, f, y0, t0, times, *, num_steps=None, step_size=None):
    """Solve with a registered scheme's ``step``; returns ``(outputs (n, *y0.shape), nfe, steps)``."""
    scheme = make_scheme(scheme_name, {})
    t0f, tlist = static_times(t0, times)
    plan = plan_fixed_grid(t0f, tlist, num_steps, step_size)
    dtype = y0.dtype
    calls = [0]

    def field(t, y):
        calls[0] += 1
        return tf.cast(f(tf.cast(t, dtype), y), dtype)

    fields = [field] * scheme.num_fields
    state = scheme.init(y0)
    outs = []
    t = t0f
    per_step = None
    total_steps = 0
    for n, h in plan:
        if n:
            t_start = tf.constant(t, dtype)
            hh = tf.constant(h, dtype)

            def body(i, state, t_start=t_start, hh=hh):
                ti = t_start + tf.cast(i, dtype) * hh
                return i + 1, scheme.step(fields, ti, state, hh)

            before = calls[0]
            _, state = tf.while_loop(lambda i, s, n=n: i < n, body, (tf.constant(0), state), maximum_iterations=n)
            per_step = calls[0] - before if per_step is None else per_step
            total_steps += n
            t = t + n * h
        outs.append(scheme.output(state))
    return tf.stack(outs, 0), (per_step or 0) * total_steps, total_steps


__all__ = ["static_times", "plan_fixed_grid", "fixed_grid_solve"]
