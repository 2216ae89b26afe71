"""Irregularly sampled time series: ODE-RNN and Neural CDE (docs/timeseries.md).

``ode_rnn`` (Rubanova, Chen & Duvenaud, NeurIPS 2019) and ``neural_cde``
(Kidger, Morrill, Foster & Lyons, NeurIPS 2020) take the dict
``{"values", "times", "mask"}`` of :meth:`odezoo.data.Series.inputs`. Their layers
live in :mod:`odezoo.plugins.timeseries.model` (TensorFlow), imported by the
builders when called, so registering them works under any Keras backend.
"""

import odezoo
import odezoo.ode

ODEZOO_PLUGIN_API = 1

odezoo.register_keras_objects(
    "odezoo.plugins.timeseries.model:ODERNN",
    "odezoo.plugins.timeseries.model:NeuralCDE",
    "odezoo.plugins.timeseries.model:SeriesModel",
    "odezoo.plugins.timeseries.model:LatentODE",
    "odezoo.plugins.timeseries.model:LatentTrajectory",
    package="odezoo",
    backend="tensorflow",
)


def _model():
    odezoo.ode.require_tensorflow("The time-series models (odezoo's integrator)")
    from odezoo.plugins.timeseries import model

    return model


@odezoo.register_model(
    "ode_rnn",
    kind="series_classifier",
    family="ode_rnn",
    paper="Rubanova, Chen & Duvenaud, Latent ODEs for Irregularly-Sampled Time Series, NeurIPS 2019",
    ode_reading="Between observations the GRU's state h flows by dh/dt = f(h) (an adaptive solve over "
    "the gap, each sample its own); at an observation a GRU update jumps it.",
)
def ode_rnn(
    *,
    input_channels=12,
    num_classes=9,
    outputs=None,
    units=32,
    field_units=32,
    solver="dopri5",
    rtol=1e-3,
    atol=1e-4,
    max_steps=1000,
    gradient="auto",
):
    """ODE-RNN classifier (``num_classes``) or regressor (``outputs``, with ``num_classes=None``)."""
    m = _model()
    encoder = m.ODERNN(
        units=units,
        field_units=field_units,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        gradient=gradient,
        name="ode_rnn",
    )
    return m.series_model(
        encoder, input_channels=input_channels, num_classes=num_classes, outputs=outputs, name="ode_rnn"
    )


@odezoo.register_model(
    "neural_cde",
    kind="series_classifier",
    family="neural_cde",
    paper="Kidger, Morrill, Foster & Lyons, Neural Controlled Differential Equations for Irregular Time "
    "Series, NeurIPS 2020",
    ode_reading="dz = g(z) dX(t): the ODE dz/ds = g(z)·dX/ds driven by an interpolation X of the "
    "observations (time, values, observation counts), solved adaptively along each sample's path.",
)
def neural_cde(
    *,
    input_channels=12,
    num_classes=9,
    outputs=None,
    units=32,
    field_units=64,
    interpolation="hermite",
    solver="dopri5",
    rtol=1e-3,
    atol=1e-4,
    max_steps=1000,
    gradient="auto",
):
    """Neural CDE classifier (``num_classes``) or regressor (``outputs``, with ``num_classes=None``)."""
    m = _model()
    encoder = m.NeuralCDE(
        units=units,
        field_units=field_units,
        interpolation=interpolation,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        gradient=gradient,
        name="neural_cde",
    )
    return m.series_model(
        encoder, input_channels=input_channels, num_classes=num_classes, outputs=outputs, name="neural_cde"
    )


@odezoo.register_model(
    "latent_ode",
    kind="series_generative",
    family="latent_ode",
    paper="Rubanova, Chen & Duvenaud, Latent ODEs for Irregularly-Sampled Time Series, NeurIPS 2019",
    ode_reading="A VAE whose decoder is an ODE: z(t0) ~ q(z0 | an ODE-RNN read backwards), dz/dt = f(z), "
    "x(t) = Linear(z(t)) at any times, so it interpolates and extrapolates.",
)
def latent_ode(
    *,
    input_channels=2,
    latent_dim=4,
    units=25,
    field_units=32,
    obs_std=0.1,
    solver="dopri5",
    rtol=1e-3,
    atol=1e-4,
    max_steps=1000,
    encode_fraction=None,
    seed=0,
):
    """Latent ODE (a keras.Model: fit(series.inputs()), extrapolate(inputs, times), sample(times, n)).

    ``encode_fraction``: None (the encoder sees every observation, as for interpolation) or f in
    (0, 1]: in ``fit``/``evaluate`` the encoder sees each row's observations up to the fraction f
    of its observed time span, the likelihood all of them (training to extrapolate)."""
    model = _model().LatentODE(
        input_channels=input_channels,
        latent_dim=latent_dim,
        units=units,
        field_units=field_units,
        obs_std=obs_std,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        encode_fraction=encode_fraction,
        seed=seed,
        name="latent_ode",
    )
    model.build()
    return model
