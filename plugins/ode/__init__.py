"""ODE-Net and RK-Net (Chen, Rubanova, Bettencourt & Duvenaud, NeurIPS 2018).

Both replace a stack of residual blocks by one field dy/dt = f(t, y), a conv
field that sees t, solved over t in [0, 1]: ODE-Net adaptively (odezoo's own
Dormand-Prince 5(4), trained with the adjoint), RK-Net on a fixed grid of a
registered scheme (rk4 by default), trained by backprop through the steps.
The general-purpose layer is the core's :class:`odezoo.ODEBlock`; ODE-Net's own
field and model (``ODEConvField``, ``ODEClassifier``, ``ode_classifier``) live in
:mod:`odezoo.plugins.ode.model`, written against the public API as a third-party
plugin would be. That module needs TensorFlow, so the builders import it when
called: registering the models works under any Keras backend.
"""

import odezoo
import odezoo.ode

ODEZOO_PLUGIN_API = 1

# Its Keras classes, so that a saved ODE-Net loads after only `import odezoo` (the Keras
# names are the ones files saved before the move carry: "odezoo>ODEConvField", ...).
odezoo.register_keras_objects(
    "odezoo.plugins.ode.model:ODEConvField",
    "odezoo.plugins.ode.model:ODEClassifier",
    "odezoo.plugins.ode.model:FastGroupNorm",
    package="odezoo",
    backend="tensorflow",
)


def ode_classifier(**config):
    """:func:`odezoo.plugins.ode.model.ode_classifier`, after checking that Keras runs on TensorFlow."""
    odezoo.ode.require_tensorflow(f"The {config.get('name', 'ODE-Net')} model (an ODEBlock)")
    from odezoo.plugins.ode.model import ode_classifier as build

    return build(**config)


_PAPER = "Chen, Rubanova, Bettencourt & Duvenaud, Neural Ordinary Differential Equations, NeurIPS 2018"


@odezoo.register_model(
    "odenet",
    kind="classifier",
    family="odenet",
    paper=_PAPER,
    ode_reading="y(1) = y(0) + ∫₀¹ f(t, y) dt for one shared conv field, solved adaptively "
    "(Dormand-Prince 5(4)) and differentiated with the continuous adjoint.",
)
def odenet(
    *,
    input_shape=(28, 28, 1),
    num_classes=10,
    solver="dopri5",
    rtol=1e-3,
    atol=1e-3,
    first_step=None,
    max_steps=1000,
    gradient="auto",
    channels=64,
    augment_dims=0,
    normalization="auto",
    classifier_activation="softmax",
    stem="same",
    compile="auto",
    regularization=None,
):
    """ODE-Net, the Neural ODE paper's MNIST classifier (about 0.21M parameters at (28, 28, 1)).

    Conv stem downsampling by 4, one :class:`odezoo.ODEBlock` whose
    GroupNorm conv field sees t (a concatenated channel), GN-ReLU, global
    average pooling, dense head. Scheme ``dopri5``, order 5 (adaptive).
    ``augment_dims`` > 0 gives ANODE (Dupont et al. 2019). ``stem="reference"`` follows
    torchdiffeq's example exactly (a 6x6 state at 28x28 instead of 7x7; see
    :func:`odezoo.plugins.ode.model._stem`); ``compile`` is the ODEBlock's
    (:mod:`odezoo.ode.compilation`). ``regularization`` is the ODEBlock's too: RNODE's
    ``{"kinetic": λ_k, "jacobian": λ_j}`` (:mod:`odezoo.ode.regularization`), added to the
    training loss; ``fit`` then logs ``kinetic`` and ``jacobian``.
    """
    return ode_classifier(
        name="odenet",
        input_shape=input_shape,
        num_classes=num_classes,
        solver=solver,
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_steps=max_steps,
        gradient=gradient,
        channels=channels,
        augment_dims=augment_dims,
        normalization=normalization,
        classifier_activation=classifier_activation,
        stem=stem,
        compile=compile,
        regularization=regularization,
    )


@odezoo.register_model(
    "rknet",
    kind="classifier",
    family="odenet",
    paper=_PAPER,
    ode_reading="The same conv field, integrated on a fixed grid by a registered explicit scheme "
    "(rk4, order 4, by default) and trained by backprop through its steps.",
)
def rknet(
    *,
    input_shape=(28, 28, 1),
    num_classes=10,
    solver="rk4",
    num_steps=4,
    step_size=None,
    channels=64,
    augment_dims=0,
    normalization="auto",
    classifier_activation="softmax",
    stem="same",
    compile="auto",
    regularization=None,
):
    """RK-Net (Chen et al. 2018): ODE-Net's architecture on a fixed grid; scheme ``rk4``, order 4.

    ``regularization`` as ODE-Net's (the integrals by the same fixed grid)."""
    return ode_classifier(
        name="rknet",
        input_shape=input_shape,
        num_classes=num_classes,
        solver=solver,
        rtol=1e-3,
        atol=1e-6,
        num_steps=None if step_size is not None else num_steps,
        step_size=step_size,
        gradient="backprop",
        channels=channels,
        augment_dims=augment_dims,
        normalization=normalization,
        classifier_activation=classifier_activation,
        stem=stem,
        compile=compile,
        regularization=regularization,
    )
