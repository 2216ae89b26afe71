"""odezoo's serializable Keras layers (all registered under the package name "odezoo")."""

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

__all__ = ["SchemeBlock", "SchemeStage", "ConvField", "ConvFieldFactory", "DownsampleBlock",
           "Normalize", "ColumnSampler", "make_scheme"]
