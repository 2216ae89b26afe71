"""The schemes' network forms (block_step) inside SchemeBlock / SchemeStage."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from odezoo import BlockContext  # noqa: E402
from odezoo.layers import ConvFieldFactory, SchemeBlock, SchemeStage  # noqa: E402


def _x(shape=(3, 6, 6, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _fields_out(block, x, training=False):
    return [np.asarray(f(block.t, ops.convert_to_tensor(x), training=training)) for f in block.fields]


def test_lm_resnet_first_block_is_euler_then_two_step():
    ctxs = [BlockContext(block=i, stage_length=2, global_block=i, total_blocks=2) for i in range(2)]
    blocks = [SchemeBlock("linear_multistep", ConvFieldFactory(), context=c, name=f"lm{i}") for i, c in enumerate(ctxs)]
    stage = SchemeStage(blocks)
    x = _x()
    y = np.asarray(stage(x, training=False))
    u1 = x + _fields_out(blocks[0], x)[0]
    k = float(np.asarray(blocks[1].scheme.k_n))
    assert -0.1 <= k <= 0.0
    u2 = (1 - k) * u1 + k * x + _fields_out(blocks[1], u1)[0]
    np.testing.assert_allclose(y, u2, rtol=1e-4, atol=1e-4)
    # one trainable scalar per block after the stage's first (an Euler step has none)
    ks = [v for v in stage.trainable_variables if v.path.endswith("/k")]
    assert len(ks) == 1


def test_lm_stochastic_depth_scales_field_by_survival_at_inference():
    ctx = BlockContext(block=0, stage_length=4, global_block=3, total_blocks=4, seed=1)
    block = SchemeBlock("linear_multistep", ConvFieldFactory(), context=ctx, p_L=0.5)
    x = _x()
    y = np.asarray(block(x, training=False))
    assert block.scheme.survival == pytest.approx(0.5)  # the last block survives with p_L
    np.testing.assert_allclose(y, x + 0.5 * _fields_out(block, x)[0], rtol=1e-4, atol=1e-4)
    # in training, each sample keeps or drops its whole residual branch
    x = _x((16, 6, 6, 4))
    y_train = np.asarray(block(x, training=True))
    f_train = _fields_out(block, x, training=True)[0]
    dropped = [np.allclose(y_train[i], x[i], atol=1e-6) for i in range(len(x))]
    kept = [np.allclose(y_train[i], x[i] + f_train[i], rtol=1e-4, atol=1e-4) for i in range(len(x))]
    assert all(d != k for d, k in zip(dropped, kept))  # each sample: whole branch kept or dropped
    assert 0 < sum(dropped) < len(x)  # p = 0.5 over 16 samples: both outcomes occur (seeded)


def test_fractal_block_mean_join_and_global_columns():
    block = SchemeBlock("fractal_rk", ConvFieldFactory(), columns=2, local_drop=0.0)
    x = _x()
    y = np.asarray(block(x, training=False))
    assert len(block.fields) == 3  # 2^C - 1
    # field order: deep column's two units first, then the shallow unit
    d1 = x + _fields_out(block, x)[0]
    d2 = d1 + np.asarray(block.fields[1](block.t, ops.convert_to_tensor(d1), training=False))
    shallow = x + _fields_out(block, x)[2]
    np.testing.assert_allclose(y, 0.5 * (d2 + shallow), rtol=1e-4, atol=1e-4)
    # global drop-path: column 0 is the shallow path alone, column 1 the deep one
    x_t = ops.convert_to_tensor(x)
    for column in (0, 1):
        state = block.scheme.init(x_t)
        out = block.advance(state, training=True, column=ops.convert_to_tensor(column, "int32"))
        d1 = x + _fields_out(block, x, True)[0]
        d2 = d1 + np.asarray(block.fields[1](block.t, ops.convert_to_tensor(d1), training=True))
        sh = x + _fields_out(block, x, True)[2]
        np.testing.assert_allclose(np.asarray(out), sh if column == 0 else d2, rtol=1e-4, atol=1e-4)


def test_fractal_local_drop_path_keeps_at_least_one_input():
    block = SchemeBlock("fractal_rk", ConvFieldFactory(), columns=2, local_drop=0.95)
    x = _x()
    outs = [np.asarray(block(x, training=True)) for _ in range(6)]
    for out in outs:
        assert np.all(np.isfinite(out)) and np.max(np.abs(out - x)) > 0  # never the zero/empty join


def test_polynet_network_forms():
    x = _x()
    for variant in ("poly2", "mpoly2", "way2"):
        block = SchemeBlock("polyinception", ConvFieldFactory(), variant=variant, name=variant)
        y = np.asarray(block(x, training=False))
        F = block.fields[0]
        G = block.fields[-1]
        fx = np.asarray(F(block.t, ops.convert_to_tensor(x), training=False))
        if variant == "way2":
            want = x + fx + np.asarray(G(block.t, ops.convert_to_tensor(x), training=False))
        else:
            want = x + fx + np.asarray(G(block.t, ops.convert_to_tensor(fx), training=False))
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
