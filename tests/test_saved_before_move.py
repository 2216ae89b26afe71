"""`.keras` files saved before the ODE core moved into odezoo/ode and plugins/ (issue 13) still load.

The fixtures in tests/fixtures/pre_move were saved at f106086 (the classes and registered
names of fa30f4c, before the move) by a one-off script: each model trained one step, then
saved, with its inputs and predictions (the flow's exact log-density) in io.npz. Loading
after ``import odezoo`` must give the same predictions.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import odezoo  # noqa: E402,F401  (registers the classes the files name)

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "pre_move")


@pytest.mark.parametrize(
    "name",
    ["odenet", "ffjord", pytest.param("rknet", marks=pytest.mark.slow), pytest.param("resnet", marks=pytest.mark.slow)],
)
def test_a_file_saved_before_the_move_loads_and_predicts_the_same(name):
    io = np.load(os.path.join(HERE, "io.npz"))
    model = keras.models.load_model(os.path.join(HERE, f"{name}.keras"))
    x = io[f"{name}_x"]
    # the flow's predict uses its training trace (Hutchinson's, a random estimate): compare the exact one
    y = model.log_prob(x, trace="exact").numpy() if name == "ffjord" else model.predict(x, verbose=0)
    np.testing.assert_allclose(y, io[f"{name}_y"], rtol=1e-5, atol=1e-5)
