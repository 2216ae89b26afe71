"""The discretisation families: CIFAR-style classifiers whose blocks are scheme steps.

The families are data: one :class:`Family` row each (default scheme, paper, ODE
reading, depth aliases, extra options), and :func:`make_builder` turns a row
into a builder with a real keyword signature over the shared defaults in
``SKELETON_DEFAULTS`` (``describe()`` reads it). The skeleton itself is
:func:`odezoo.nets.residual_classifier`. Any registered scheme can replace the
default (``build("resnet", scheme="rk4")``); its options pass through
``**scheme_options``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import odezoo
from odezoo import checks, nets

ODEZOO_PLUGIN_API = 1

_DEPTHS = (20, 32, 44, 56, 110)

# The build config every family shares, in signature order; "scheme" takes each family's default.
SKELETON_DEFAULTS: Mapping[str, Any] = {
    "depth": 20,
    "num_classes": 10,
    "input_shape": (32, 32, 3),
    "width": 1,
    "scheme": None,
    "h": 1.0,
    "normalization": "auto",
    "seed": None,
    "weight_decay": 0.0,
    "synchronized_bn": False,
    "classifier_activation": "softmax",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """One family: what it states beyond the shared skeleton.

    Attributes:
        name: registered model name (also its family name and the prefix of its depth aliases).
        scheme: the default scheme.
        paper, ode_reading: what ``describe()`` reports.
        doc: the builder's docstring.
        depths: depths with an alias (``resnet56``).
        options: extra keyword defaults, after the shared ones in the signature.
        skeleton_args: ``(config, scheme_options) -> dict`` of further
            ``residual_classifier`` arguments; it may check the family's options.
    """

    name: str
    scheme: str
    paper: str
    ode_reading: str
    doc: str
    depths: tuple[int, ...] = _DEPTHS
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    skeleton_args: Callable[[dict, dict], dict] | None = None


def _aliases(family: str, depths=_DEPTHS) -> dict:
    return {f"{family}{d}": {"depth": d} for d in depths}


def _fractal_args(config: dict, scheme_options: dict) -> dict:
    """Global drop-path: the column count of the fractal blocks, sampled once per training batch."""
    prob = config["global_drop_prob"]
    checks.real("global_drop_prob", prob, minimum=0.0, maximum=1.0, allowed="a float in [0, 1]")
    columns = None
    if config["scheme"] == "fractal_rk" and prob > 0:
        columns = scheme_options.get("columns", odezoo.get_scheme("fractal_rk").option_defaults()["columns"])
    return {"global_columns": columns}


FAMILIES: tuple[Family, ...] = (
    Family(
        "resnet",
        "euler",
        paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016",
        ode_reading="y_{n+1} = y_n + h·f(y_n): forward Euler for dy/dt = f(t, y), one field per block.",
        doc="ResNet for CIFAR (He et al. 2016): depth 6n+2, 16/32/64 channels; scheme ``euler``, order 1.",
    ),
    Family(
        "polynet",
        "polyinception",
        paper="Zhang, Li, Loy & Lin, PolyNet: A Pursuit of Structural Diversity in Very Deep Networks, CVPR 2017",
        ode_reading="y + F(y) + F(F(y)) ≈ (I − F)⁻¹y: a truncated series for a backward-Euler step, order 1.",
        doc="PolyNet-style CIFAR network (Zhang et al. 2017); scheme ``polyinception`` (variant poly2/mpoly2/way2).",
        depths=(20, 32, 56),
    ),
    Family(
        "fractalnet",
        "fractal_rk",
        paper="Larsson, Maire & Shakhnarovich, FractalNet: Ultra-Deep Neural Networks without Residuals, ICLR 2017",
        ode_reading="Joined columns f_{C+1} = join(f_C∘f_C, f_1) are a Runge-Kutta-like step; solver form Heun, "
        "order 2.",
        doc="""FractalNet-style CIFAR network (Larsson et al. 2017); scheme ``fractal_rk``.

    Each block is a fractal block of ``columns`` columns (scheme option, default 2)
    with local drop-path; with probability ``global_drop_prob`` a training batch
    uses global drop-path instead, one column for the whole network.
    """,
        depths=(20, 32),
        options={"global_drop_prob": 0.5},
        skeleton_args=_fractal_args,
    ),
    Family(
        "revnet",
        "reversible",
        paper="Gomez, Ren, Urtasun & Grosse, The Reversible Residual Network, NeurIPS 2017",
        ode_reading="(y1, y2) ← (y1 + F(y2), y2 + G(y1')): symplectic Euler for a partitioned system, order 1, "
        "exactly invertible.",
        doc="""RevNet-style CIFAR network (Gomez et al. 2017); scheme ``reversible``.

    F and G act on channel halves; in training each stage runs under one
    memory-saving custom gradient that reconstructs activations from the stage output.
    """,
    ),
    Family(
        "lm_resnet",
        "linear_multistep",
        paper="Lu, Zhong, Li & Dong, Beyond Finite Layer Neural Networks: Bridging Deep Architectures and "
        "Numerical Differential Equations, ICML 2018",
        ode_reading="u_{n+1} = (1−k_n)u_n + k_n u_{n−1} + f(u_n): a linear two-step method, order 1.",
        doc="""LM-ResNet for CIFAR (Lu et al. 2018); scheme ``linear_multistep`` with a trainable k_n per block.

    ``p_L`` (scheme option) turns on the stochastic-dynamics variant (0.8 for
    depth 56, 0.5 for 110 in the paper).
    """,
    ),
)


def make_builder(family: Family) -> Callable[..., Any]:
    """A builder for ``family``: keyword-only shared defaults, the family's options, ``**scheme_options``."""
    defaults = {**SKELETON_DEFAULTS, "scheme": family.scheme, **family.options}
    kw = inspect.Parameter.KEYWORD_ONLY
    signature = inspect.Signature(
        [inspect.Parameter(k, kw, default=v) for k, v in defaults.items()]
        + [inspect.Parameter("scheme_options", inspect.Parameter.VAR_KEYWORD)]
    )

    def builder(**kwargs):
        bound = signature.bind(**kwargs)
        bound.apply_defaults()
        config = dict(bound.arguments)
        scheme_options = config.pop("scheme_options")
        extra = family.skeleton_args(config, scheme_options) if family.skeleton_args else {}
        return nets.residual_classifier(name=family.name, scheme_options=scheme_options, **config, **extra)

    builder.__signature__ = signature
    builder.__name__ = builder.__qualname__ = family.name
    builder.__doc__ = family.doc
    return builder


def _register(family: Family) -> Callable[..., Any]:
    return odezoo.register_model(
        family.name,
        kind="classifier",
        family=family.name,
        paper=family.paper,
        ode_reading=family.ode_reading,
        aliases=_aliases(family.name, family.depths),
    )(make_builder(family))


for _family in FAMILIES:
    globals()[_family.name] = _register(_family)
del _family
