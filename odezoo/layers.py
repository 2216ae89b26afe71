"""odezoo's serializable Keras layers (all registered under the package name "odezoo").

Public, for plugin authors: the built-in plugins use these exactly as a third party would.
"""

from odezoo._layers import (
    ColumnSampler,
    ConvField,
    ConvFieldFactory,
    DownsampleBlock,
    Normalize,
    SchemeBlock,
    SchemeStage,
    frozen_batchnorm_statistics,
    make_scheme,
)

from odezoo._keras_hook import TF_ONLY_LAYERS as _TF_ONLY
from odezoo._keras_hook import require_tensorflow as _require_tensorflow

# The TensorFlow-only layers are imported on first use (the families stay backend-neutral);
# under another Keras backend asking for one raises an error naming the backend it needs.

__all__ = [
    "SchemeBlock",
    "SchemeStage",
    "ConvField",
    "ConvFieldFactory",
    "DownsampleBlock",
    "Normalize",
    "ColumnSampler",
    "make_scheme",
    "frozen_batchnorm_statistics",
    *_TF_ONLY,
]


# ODE-Net's and FFJORD's own layers moved to their plugins (issue 13): the old names still resolve,
# with a warning.
_MOVED = {
    "ODEConvField": "odezoo.plugins.ode.model",
    "ODEClassifier": "odezoo.plugins.ode.model",
    "FFJORDFlow": "odezoo.plugins.ffjord.flow",
    "TimeMLPField": "odezoo.plugins.ffjord.flow",
}


def __getattr__(name):
    if name in _MOVED or name in _TF_ONLY:
        import importlib

        _require_tensorflow(f"odezoo.layers.{name}")
        if name in _MOVED:
            import warnings

            warnings.warn(
                f"odezoo.layers.{name} moved to {_MOVED[name]}.{name} (its plugin); the old name will be removed.",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(_MOVED[name]), name)
        return getattr(importlib.import_module(_TF_ONLY[name]), name)
    raise AttributeError(f"module 'odezoo.layers' has no attribute {name!r}")
