"""Subprocess side of tests/test_scale.py: runs ``odezoo._train.train`` under a strategy.

usage: python scale_worker.py MODE OUT_DIR RESULT.npz [MODEL]
  MODE "mirrored": two logical CPU devices; trains once with the default strategy
       and once mirrored on the same global batch, saving both weight lists.
  MODE "multiworker": one worker of the cluster in TF_CONFIG; saves its weights.
"""

import os
import sys

import numpy as np

mode, out, result = sys.argv[1:4]
model_name = sys.argv[4] if len(sys.argv) > 4 else "resnet"

import tensorflow as tf  # noqa: E402

if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from odezoo import _train  # noqa: E402

config = {"depth": 8} if model_name != "odenet" else {"channels": 32}
kwargs = dict(
    dataset="digits",
    epochs=1,
    batch_size=256,
    lr=0.05,
    optimizer="sgd",
    seed=3,
    config=config,
    verbose=0,
    return_model=True,
)
arrays = {}
if mode == "mirrored":
    for strategy in ("default", "mirrored"):
        entry, model = _train.train(model_name, out=os.path.join(out, strategy), strategy=strategy, **kwargs)
        for i, w in enumerate(model.get_weights()):
            arrays[f"{strategy}_{i}"] = w
        arrays[f"{strategy}_accuracy"] = np.array(entry["metrics"]["accuracy"])
        print(strategy, entry["strategy"], entry["metrics"], flush=True)
else:
    entry, model = _train.train(model_name, out=out, strategy="multiworker", **kwargs)
    for i, w in enumerate(model.get_weights()):
        arrays[f"w_{i}"] = w
    print("worker done", entry["strategy"], entry["metrics"], flush=True)
np.savez(result, **arrays)
