"""Subprocess side of the strategy tests in tests/test_reliability_numerics.py.

usage: python gate_worker.py RESULT.json MODEL [MODEL ...]
Two logical CPUs under a MirroredStrategy; each MODEL ("rknet", "odenet", "ffjord") takes one good
step, then one step whose batch holds an Inf only in the half the second replica solves.
RESULT.json: per model, whether the good step updated, what the bad one raised, and whether the
weights, the optimizer's variables and its step count were left as they were.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import odezoo  # noqa: E402

result_path, names = sys.argv[1], sys.argv[2:]
# one strategy for every model: a second MirroredStrategy in the process can pair its replicas'
# collectives with the first one's keys (seen as "Shape mismatch in the collective instance")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {}
for name in names:
    rng = np.random.default_rng(2)
    with strategy.scope():
        if name == "ffjord":
            model = odezoo.build("ffjord", data_dim=2)
            model.compile("adam")
            x, y = rng.normal(size=(4, 2)).astype("float32"), None
        else:
            extra = {"num_steps": 2} if name == "rknet" else {}
            model = odezoo.build(name, input_shape=(8, 8, 1), channels=8, **extra)
            model.compile("adam", "sparse_categorical_crossentropy")
            x, y = rng.integers(0, 17, (4, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 4)
    start = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    good = {
        "iterations": int(model.optimizer.iterations.numpy()),
        "weights_moved": any(not np.array_equal(a, v.numpy()) for a, v in zip(start, model.trainable_variables)),
    }
    weights = [v.numpy().copy() for v in model.trainable_variables]
    slots = [np.array(v.numpy()).copy() for v in model.optimizer.variables]
    x[3].flat[0] = np.inf  # the batch of 4 splits 2 + 2: only the second replica sees it
    try:
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        raised = None
    except odezoo.SolverError as e:
        raised = str(e)
    results[name] = {
        "good": good,
        "raised": raised,
        "iterations": int(model.optimizer.iterations.numpy()),
        "weights_kept": all(np.array_equal(a, v.numpy()) for a, v in zip(weights, model.trainable_variables)),
        "optimizer_kept": all(np.array_equal(a, np.array(v.numpy())) for a, v in zip(slots, model.optimizer.variables)),
    }
with open(result_path, "w") as f:
    json.dump(results, f)
