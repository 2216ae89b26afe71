"""How a solve is compiled: by XLA or by TensorFlow's graph executor (the ``compile=`` option).

Every solve runs inside a compiled ``tf.function``; the option picks the compiler:

* ``"xla"``: ``jit_compile=True``. XLA fuses the integrator's many small element-wise
  ops (error norms, stage combinations, guards) into a few kernels, which is what
  makes an MLP field's solve fast (benchmarks/ode, the lockstep against diffrax).
* ``"graph"``: a plain ``tf.function``, run by TensorFlow's graph executor with its
  own kernels (oneDNN on CPU).
* ``"auto"`` (default): ``"graph"`` when the field contains a convolution and no GPU
  or TPU is visible, ``"xla"`` otherwise. The reason is measured
  (benchmarks/ode/README.md, "Issue 14"): on CPU, XLA compiles a convolution's
  gradient inside a ``while_loop`` body (the adjoint's backward solve, every solve's
  loop) into code 49x slower than the same VJP compiled alone, while the graph
  executor runs the same loop at 0.67x of that VJP; ODE-Net's training step went from
  15.6 s to 1.0 s. On accelerators XLA stays until measured otherwise.

The field is looked at, not guessed: :func:`uses_convolution` traces it once into a
graph and scans the op types (nested functions included), so a raw
``tf.nn.conv2d`` in a custom field counts as much as a ``keras.layers.Conv2D``.

A block that solves in the graph executor reports ``supports_jit = False``, so that
Keras's ``jit_compile="auto"`` and ``odezoo train`` do not wrap the whole training
step in XLA (an outer XLA function compiles everything inside it, the solve too).
"""

from __future__ import annotations

import tensorflow as tf

from odezoo import checks
from odezoo.ode.options import COMPILE_MODES  # the choices live in the TF-free module

# the op types of convolutions (and of their gradients, for a field that calls them directly)
CONVOLUTION_OPS = frozenset(
    {
        "Conv",
        "Conv2D",
        "Conv3D",
        "Conv2DBackpropInput",
        "Conv2DBackpropFilter",
        "Conv3DBackpropInputV2",
        "Conv3DBackpropFilterV2",
        "DepthwiseConv2dNative",
        "DepthwiseConv2dNativeBackpropInput",
        "DepthwiseConv2dNativeBackpropFilter",
        "_FusedConv2D",
    }
)


def check_compile(arg, value):
    """Validate a ``compile=`` value ("auto", "xla" or "graph")."""
    return checks.choice(arg, value, COMPILE_MODES)


def has_accelerator():
    """A GPU or TPU is visible to TensorFlow."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def graph_op_types(graph):
    """Every op type in ``graph`` and in the functions it calls (while bodies, nested tf.functions)."""
    types = {op.type for op in graph.get_operations()}
    for fdef in graph.as_graph_def().library.function:
        types.update(node.op for node in fdef.node_def)
    return types


def uses_convolution(fn, *specs):
    """Whether ``fn(*specs)``, traced once into a graph (nothing runs), contains a convolution."""
    concrete = tf.function(fn, autograph=False).get_concrete_function(*specs)
    return bool(graph_op_types(concrete.graph) & CONVOLUTION_OPS)


def resolve_compile(mode, convolution):
    """``"xla"`` or ``"graph"`` for a ``compile=`` mode; ``convolution()`` is asked only for ``"auto"``."""
    check_compile("compile", mode)
    if mode != "auto":
        return mode
    if has_accelerator():
        return "xla"
    return "graph" if convolution() else "xla"


def compiled_function(fn, mode, **kwargs):
    """``fn`` as a ``tf.function`` compiled by ``mode`` ("xla" or "graph"; autograph off)."""
    if mode not in ("xla", "graph"):
        raise ValueError(f"compiled_function needs a resolved mode, 'xla' or 'graph'. Received: mode={mode!r}.")
    return tf.function(fn, jit_compile=mode == "xla", autograph=False, **kwargs)


__all__ = [
    "COMPILE_MODES",
    "CONVOLUTION_OPS",
    "check_compile",
    "has_accelerator",
    "uses_convolution",
    "resolve_compile",
    "compiled_function",
]
