"""RevNet's training-step memory under Keras's JAX backend: custom VJP vs plain autodiff.

Compiles (does not run) one gradient evaluation of the whole model with
``jax.jit(...).lower(...).compile()`` and reads XLA's buffer assignment:
``temp_size_in_bytes`` is the scratch memory of the step (activations kept
for the backward pass, and work buffers), independent of the device's
allocator. "custom" is the default dispatch (plugins/_reversible_jax.py);
"plain" replaces ``Reversible.run_stage`` by the base scheme's, so JAX
differentiates the stage by itself and keeps every block's activations.

    KERAS_BACKEND=jax python benchmarks/jax_revnet_memory.py [--depths 20 56 110] [--batch 64]

Measured 2026-11-28 on the 2-core AMD EPYC VM, no GPU (jax 0.10.2, Keras
3.15.1; a buffer assignment, so the machine's load does not change it):

| depth | plain autodiff | custom VJP | ratio |
|---|---|---|---|
| 20 | 1.481 | 0.500 | 0.34 |
| 56 | 4.106 | 0.527 | 0.13 |
| 110 | 8.044 | 0.579 | 0.07 |

(MiB per sample, batch 64.) See docs/backends.md.
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import odezoo  # noqa: E402


def temp_bytes(depth, batch, plain):
    reversible = odezoo.get_scheme("reversible")
    own = reversible.run_stage
    if plain:
        reversible.run_stage = odezoo.Scheme.run_stage
    try:
        model = odezoo.build("revnet", depth=depth, input_shape=(32, 32, 3), seed=0, classifier_activation=None)
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)), "float32")

        def loss(tv, ntv, x):
            out, new = model.stateless_call(tv, ntv, x, training=True)
            return jnp.mean(jax.nn.logsumexp(out, -1) - out[:, 0]), new

        compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(tv, ntv, x).compile()
    finally:
        reversible.run_stage = own
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, batch {args.batch}, 32x32x3, XLA temp bytes per sample (MiB)")
    print("| depth | plain autodiff | custom VJP | ratio |")
    print("|---|---|---|---|")
    for depth in args.depths:
        t = time.time()
        plain = temp_bytes(depth, args.batch, True) / args.batch / 2**20
        custom = temp_bytes(depth, args.batch, False) / args.batch / 2**20
        print(f"| {depth} | {plain:.3f} | {custom:.3f} | {custom / plain:.2f} |  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
