"""The discretisation families: CIFAR-style classifiers whose blocks are scheme steps.

Each builder sets only what distinguishes its family (the default scheme and
its options); the shared skeleton is :func:`odezoo.nets.residual_classifier`.
Any registered scheme can replace the default (``build("resnet", scheme="rk4")``).
"""

import odezoo
from odezoo import nets

ODEZOO_PLUGIN_API = 1

_DEPTHS = (20, 32, 44, 56, 110)


def _aliases(family, depths=_DEPTHS):
    return {f"{family}{d}": {"depth": d} for d in depths}


def _skeleton(name, scheme, scheme_options, **config):
    return nets.residual_classifier(name=name, scheme=scheme, scheme_options=scheme_options, **config)


@odezoo.register_model(
    "resnet", kind="classifier", family="resnet",
    paper="He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016",
    ode_reading="y_{n+1} = y_n + h·f(y_n): forward Euler for dy/dt = f(t, y), one field per block.",
    aliases=_aliases("resnet"),
)
def resnet(*, depth=20, num_classes=10, input_shape=(32, 32, 3), width=1, scheme="euler", h=1.0,
           normalization="auto", seed=None, weight_decay=0.0, synchronized_bn=False,
           classifier_activation="softmax", **scheme_options):
    """ResNet for CIFAR (He et al. 2016): depth 6n+2, 16/32/64 channels; scheme ``euler``, order 1."""
    return _skeleton("resnet", scheme, scheme_options, depth=depth, num_classes=num_classes,
                     input_shape=input_shape, width=width, h=h, normalization=normalization, seed=seed,
                     weight_decay=weight_decay, synchronized_bn=synchronized_bn,
                     classifier_activation=classifier_activation)


@odezoo.register_model(
    "polynet", kind="classifier", family="polynet",
    paper="Zhang, Li, Loy & Lin, PolyNet: A Pursuit of Structural Diversity in Very Deep Networks, CVPR 2017",
    ode_reading="y + F(y) + F(F(y)) ≈ (I − F)⁻¹y: a truncated series for a backward-Euler step, order 1.",
    aliases=_aliases("polynet", (20, 32, 56)),
)
def polynet(*, depth=20, num_classes=10, input_shape=(32, 32, 3), width=1, scheme="polyinception", h=1.0,
            normalization="auto", seed=None, weight_decay=0.0, synchronized_bn=False,
            classifier_activation="softmax", **scheme_options):
    """PolyNet-style CIFAR network (Zhang et al. 2017); scheme ``polyinception`` (variant poly2/mpoly2/way2)."""
    return _skeleton("polynet", scheme, scheme_options, depth=depth, num_classes=num_classes,
                     input_shape=input_shape, width=width, h=h, normalization=normalization, seed=seed,
                     weight_decay=weight_decay, synchronized_bn=synchronized_bn,
                     classifier_activation=classifier_activation)


@odezoo.register_model(
    "fractalnet", kind="classifier", family="fractalnet",
    paper="Larsson, Maire & Shakhnarovich, FractalNet: Ultra-Deep Neural Networks without Residuals, ICLR 2017",
    ode_reading="Joined columns f_{C+1} = join(f_C∘f_C, f_1) are a Runge-Kutta-like step; solver form Heun, order 2.",
    aliases=_aliases("fractalnet", (20, 32)),
)
def fractalnet(*, depth=20, num_classes=10, input_shape=(32, 32, 3), width=1, scheme="fractal_rk", h=1.0,
               normalization="auto", seed=None, weight_decay=0.0, synchronized_bn=False,
               classifier_activation="softmax", global_drop_prob=0.5, **scheme_options):
    """FractalNet-style CIFAR network (Larsson et al. 2017); scheme ``fractal_rk``.

    Each block is a fractal block of ``columns`` columns (scheme option, default 2)
    with local drop-path; with probability ``global_drop_prob`` a training batch
    uses global drop-path instead, one column for the whole network.
    """
    if not isinstance(global_drop_prob, (int, float)) or not 0.0 <= global_drop_prob <= 1.0:
        raise ValueError(f"Invalid value for `global_drop_prob`. Received: global_drop_prob="
                         f"{global_drop_prob!r}. Allowed: a float in [0, 1].")
    columns = None
    if scheme == "fractal_rk" and global_drop_prob > 0:
        columns = scheme_options.get("columns", odezoo.get_scheme("fractal_rk").option_defaults()["columns"])
    return nets.residual_classifier(
        name="fractalnet", scheme=scheme, scheme_options=scheme_options, depth=depth, num_classes=num_classes,
        input_shape=input_shape, width=width, h=h, normalization=normalization, seed=seed,
        weight_decay=weight_decay, synchronized_bn=synchronized_bn, classifier_activation=classifier_activation,
        global_columns=columns, global_drop_prob=global_drop_prob)


@odezoo.register_model(
    "revnet", kind="classifier", family="revnet",
    paper="Gomez, Ren, Urtasun & Grosse, The Reversible Residual Network, NeurIPS 2017",
    ode_reading="(y1, y2) ← (y1 + F(y2), y2 + G(y1')): symplectic Euler for a partitioned system, order 1, exactly invertible.",
    aliases=_aliases("revnet"),
)
def revnet(*, depth=20, num_classes=10, input_shape=(32, 32, 3), width=1, scheme="reversible", h=1.0,
           normalization="auto", seed=None, weight_decay=0.0, synchronized_bn=False,
           classifier_activation="softmax", **scheme_options):
    """RevNet-style CIFAR network (Gomez et al. 2017); scheme ``reversible``.

    F and G act on channel halves; in training each stage runs under one
    memory-saving custom gradient that reconstructs activations from the stage output.
    """
    return _skeleton("revnet", scheme, scheme_options, depth=depth, num_classes=num_classes,
                     input_shape=input_shape, width=width, h=h, normalization=normalization, seed=seed,
                     weight_decay=weight_decay, synchronized_bn=synchronized_bn,
                     classifier_activation=classifier_activation)


@odezoo.register_model(
    "lm_resnet", kind="classifier", family="lm_resnet",
    paper="Lu, Zhong, Li & Dong, Beyond Finite Layer Neural Networks: Bridging Deep Architectures and "
          "Numerical Differential Equations, ICML 2018",
    ode_reading="u_{n+1} = (1−k_n)u_n + k_n u_{n−1} + f(u_n): a linear two-step method, order 1.",
    aliases=_aliases("lm_resnet"),
)
def lm_resnet(*, depth=20, num_classes=10, input_shape=(32, 32, 3), width=1, scheme="linear_multistep", h=1.0,
              normalization="auto", seed=None, weight_decay=0.0, synchronized_bn=False,
              classifier_activation="softmax", **scheme_options):
    """LM-ResNet for CIFAR (Lu et al. 2018); scheme ``linear_multistep`` with a trainable k_n per block.

    ``p_L`` (scheme option) turns on the stochastic-dynamics variant (0.8 for
    depth 56, 0.5 for 110 in the paper).
    """
    return _skeleton("lm_resnet", scheme, scheme_options, depth=depth, num_classes=num_classes,
                     input_shape=input_shape, width=width, h=h, normalization=normalization, seed=seed,
                     weight_decay=weight_decay, synchronized_bn=synchronized_bn,
                     classifier_activation=classifier_activation)
