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
    make_scheme,
)

# TensorFlow-only layers, imported on first use (the families stay backend-neutral).
_TF_ONLY = {
    "ODEBlock": "odezoo._odeblock",
    "ODEConvField": "odezoo._odeblock",
    "ODEClassifier": "odezoo._odeblock",
    "FFJORDFlow": "odezoo._flow",
    "TimeMLPField": "odezoo._flow",
}

__all__ = ["SchemeBlock", "SchemeStage", "ConvField", "ConvFieldFactory", "DownsampleBlock",
           "Normalize", "ColumnSampler", "make_scheme", *_TF_ONLY]


def __getattr__(name):
    if name in _TF_ONLY:
        import importlib

        return getattr(importlib.import_module(_TF_ONLY[name]), name)
    raise AttributeError(f"module 'odezoo.layers' has no attribute {name!r}")
