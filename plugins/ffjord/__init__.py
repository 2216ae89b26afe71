"""FFJORD (Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, ICLR 2019): a continuous normalising flow.

The model (``FFJORDFlow``) and its field (``TimeMLPField``) live in
:mod:`odezoo.plugins.ffjord.flow`, written against odezoo's public API as a
third-party plugin would be. That module needs TensorFlow (and
tensorflow-probability), so the builder imports it when called: registering
the model works under any Keras backend.
"""

import odezoo
import odezoo.ode

ODEZOO_PLUGIN_API = 1

# Its Keras classes, so that a saved flow loads after only `import odezoo` (the Keras names are the
# ones files saved before the move carry: "odezoo>FFJORDFlow", "odezoo>TimeMLPField").
odezoo.register_keras_objects(
    "odezoo.plugins.ffjord.flow:FFJORDFlow",
    "odezoo.plugins.ffjord.flow:TimeMLPField",
    "odezoo.plugins.ffjord.flow:TimeConvField",
    package="odezoo",
    backend="tensorflow",
)


@odezoo.register_model(
    "ffjord",
    kind="flow",
    family="ffjord",
    paper="Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, FFJORD: Free-form Continuous Dynamics "
    "for Scalable Reversible Generative Models, ICLR 2019",
    ode_reading="dz/dt = f(t, z) with d log p/dt = −tr(∂f/∂z) (Hutchinson-estimated), solved by adaptive "
    "Dormand-Prince 5(4) and trained with the adjoint.",
)
def ffjord(
    *,
    data_dim=2,
    hidden=(64, 64, 64),
    activation="tanh",
    trace="hutchinson",
    noise="rademacher",
    solver="dopri5",
    rtol=1e-5,
    atol=1e-5,
    num_blocks=1,
    t1=1.0,
    max_steps=10000,
    data_log_scale=0.0,
    eval_probes=4,
    seed=None,
    controller="predictive",
    regularization=None,
    field="mlp",
    image_shape=None,
    gradient="adjoint",
):
    """A FFJORD density model on ``data_dim``-dimensional data (:class:`odezoo.plugins.ffjord.flow.FFJORDFlow`).

    Returns a Keras model with ``log_prob``, ``sample``, ``to_latent``, ``to_data``;
    ``fit(x)`` trains by maximum likelihood; ``regularization={"kinetic": λ_k, "jacobian": λ_j}``
    adds RNODE's penalties (Finlay et al., ICML 2020) to it. ``field="conv"`` with
    ``image_shape=(h, w, c)`` (h·w·c = data_dim) is the paper's convolutional image field.
    ``gradient="checkpoint"`` trains with the exact gradient of the discrete solve instead of
    the adjoint.
    """
    odezoo.ode.require_tensorflow("The FFJORD model")
    from odezoo.plugins.ffjord.flow import FFJORDFlow

    return FFJORDFlow(
        data_dim=data_dim,
        hidden=hidden,
        activation=activation,
        trace=trace,
        noise=noise,
        solver=solver,
        rtol=rtol,
        atol=atol,
        num_blocks=num_blocks,
        t1=t1,
        max_steps=max_steps,
        data_log_scale=data_log_scale,
        eval_probes=eval_probes,
        seed=seed,
        controller=controller,
        regularization=regularization,
        field=field,
        image_shape=image_shape,
        gradient=gradient,
        name="ffjord",
    )
