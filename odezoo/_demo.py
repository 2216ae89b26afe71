"""``odezoo demo``: the main job — the zoo, its pretrained models re-measured, and a flow picture.

1. the zoo: every registered model and scheme, with each scheme's measured
   convergence order as a fixed-grid solver (the scheme's third use);
2. the pretrained ``lm_resnet`` loaded and summarised;
3. every pretrained classifier evaluated on its test split (digits always;
   Fashion-MNIST when its data is installed), beside the manifest's accuracy;
4. the pretrained FFJORD flow: its test NLL and KL, and a density PNG;
5. the pretrained latent ODE: its spirals extrapolation error and a PNG of it.

Runs in well under 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import time


import odezoo
from odezoo import _report, _train, _weights, data
from odezoo.testing import convergence_slope

DEMO_MODEL = "lm_resnet"


def _section(title: str, out) -> None:
    out("")
    out(f"== {title}")


def measured_orders() -> dict:
    """``{scheme: log-log error slope}`` of each scheme's ``step`` on the linear test problem."""
    slopes = {}
    for name in odezoo.list_schemes():
        try:
            slopes[name] = convergence_slope(name)[0]
        except Exception:  # a plugin's scheme that cannot be measured must not stop the tour
            slopes[name] = None
    return slopes


def _dataset_available(name: str) -> bool:
    if name == "fashion_mnist":
        return data.fashion_mnist_available()
    if name in ("digits",) or name in data.TOY_DENSITIES:
        return True
    try:  # a time series: its files are at hand (ODEZOO_DATA_DIR, or the sktime wheel)
        data.load_series(name, "test")
    except (data.DataError, LookupError):
        return False
    return True


def _summary(model: str, out) -> None:
    info = odezoo.describe(model)
    if info["kind"] != "classifier":
        raise ValueError(
            f"Invalid value for `model`. Received: model={model!r} (a {info['kind']}). "
            f"Allowed: a classifier, e.g. {', '.join(_report.registered_models())}."
        )
    if info["weights"]:
        t0 = time.perf_counter()
        net = odezoo.build(model, pretrained=True)
        entry = net.zoo_entry
        origin = (
            f"pretrained {entry['model']}.{entry['tag']} ({entry['dataset']}, {entry['epochs']} epochs; "
            f"manifest accuracy {entry['metrics']['accuracy']:.4f})"
        )
    else:
        t0 = time.perf_counter()
        net = odezoo.build(model)
        origin = "untrained (no pretrained weights for it in the zoo)"
    lines = [
        ("model", f"{net.name}: {origin}"),
        ("parameters", f"{net.count_params():,}"),
        ("input", f"{net.input_shape} raw pixels, normalised inside the model"),
        ("scheme", f"{info['scheme']} (order {info['order']})"),
        ("ODE reading", info["ode_reading"]),
        ("paper", info["paper"]),
        ("loaded in", f"{time.perf_counter() - t0:.1f} s"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out(f"  {key.ljust(width)}  {value}")


def evaluate_classifiers(out) -> list:
    """Re-measure every pretrained classifier whose data is at hand; print and return the rows."""
    rows, skipped = [], []
    for key, entry in sorted(_weights.entries().items()):
        spec, _ = odezoo._registry.resolve_model(entry["model"])
        if spec.kind not in ("classifier", "series_classifier"):
            continue
        if not _dataset_available(entry["dataset"]):
            skipped.append(f"{key} ({entry['dataset']} not installed)")
            continue
        net = odezoo.build(entry["model"], pretrained=entry["tag"])
        measured = _train.evaluate(net, spec.kind, entry["dataset"])["accuracy"]
        rows.append(
            [
                entry["model"],
                entry["tag"],
                entry["dataset"],
                f"{net.count_params():,}",
                f"{measured:.4f}",
                f"{entry['metrics']['accuracy']:.4f}",
            ]
        )
    if rows:
        out(_report.format_table(["model", "tag", "dataset", "params", "accuracy", "manifest"], rows))
    else:
        out("  (no pretrained classifiers in the zoo)")
    for line in skipped:
        out(f"  skipped {line}")
    return rows


def flow_picture(out_dir: str, out) -> dict | None:
    """The default pretrained flow: test NLL/KL re-measured and a density PNG."""
    if not odezoo.describe("ffjord")["weights"]:
        out("  (no pretrained flow in the zoo)")
        return None
    flow = odezoo.build("ffjord", pretrained=True)
    entry = flow.zoo_entry
    measured = _train.evaluate(flow, "flow", entry["dataset"])
    out(
        f"  ffjord.{entry['tag']} on {entry['dataset']} test: "
        + ", ".join(f"{k} {v:.4f} (manifest {entry['metrics'].get(k, float('nan')):.4f})" for k, v in measured.items())
    )
    from odezoo.plotting import plot_density

    points = data.toy_density(entry["dataset"], 20000, seed=1)
    path = plot_density(flow, points, os.path.join(out_dir, f"ffjord_{entry['tag']}_density.png"))
    out(f"  wrote {path} (data | learned density | samples)")
    return {"tag": entry["tag"], "metrics": measured, "png": path}


DIGITS_FLOWS = ("digits", "digits_conv")  # the MLP flow and the convolutional one


def digits_samples(out_dir: str, out, tag: str = "digits") -> str | None:
    """A grid of 64 samples of the pretrained digits flow ``tag`` (8x8 images), as a PNG."""
    if tag not in odezoo.describe("ffjord")["weights"]:
        return None
    from odezoo.plotting import plot_image_samples

    flow = odezoo.build("ffjord", pretrained=tag)
    path = os.path.join(out_dir, f"ffjord_{tag}_samples.png")
    plot_image_samples(flow, path, image_shape=(8, 8, 1), levels=_train.DIGITS_LEVELS)
    field = "convolutional" if flow.field_kind == "conv" else "MLP"
    out(f"  wrote {path} (64 samples of ffjord.{tag}, 8x8, {field} field)")
    return path


def latent_picture(out_dir: str, out) -> dict | None:
    """The pretrained latent ODE on the spirals test split: its errors re-measured and a PNG of
    six samples extrapolated from the first half of their observations."""
    if "spirals" not in odezoo.describe("latent_ode")["weights"]:
        out("  (no pretrained latent ODE in the zoo)")
        return None
    from odezoo.plotting import plot_extrapolation

    model = odezoo.build("latent_ode", pretrained="spirals")
    entry = model.zoo_entry
    measured = _train.extrapolation_errors(model)
    out(
        f"  latent_ode.{entry['tag']} on spirals test (observations before t = {_train.EXTRAPOLATE_FROM:g} in): "
        + ", ".join(f"{k} {v:.4f} (manifest {entry['metrics'].get(k, float('nan')):.4f})" for k, v in measured.items())
    )
    test, grid, arcs = _train.spirals_test_truth()
    png = os.path.join(out_dir, "latent_ode_spirals.png")
    path = plot_extrapolation(model, test, png, split=_train.EXTRAPOLATE_FROM, truth=(grid, arcs))
    out(f"  wrote {path} (observed points, the model's trajectory, its extrapolation, the clean arc)")
    return {"tag": entry["tag"], "metrics": measured, "png": path}


def run(model: str = DEMO_MODEL, out=print, out_dir: str = "odezoo-demo") -> dict:
    """Run the tour; return what it measured (for tests)."""
    start = time.perf_counter()
    odezoo.describe(model)  # unknown names fail here, before anything heavy
    out(f"odezoo {odezoo.__version__}: neural networks read as differential equations.")

    _section(f"Models ({len(odezoo.list_models())} names; aliases build the family at a set depth)", out)
    out(_report.models_table())
    _section("Schemes (measured = error slope of step() on y' = Ay + b cos t, float64)", out)
    out(_report.schemes_table(measured_orders()))

    _section(f"Pretrained {model}", out)
    _summary(model, out)
    _section("Pretrained classifiers on their test splits (raw images in; accuracy re-measured now)", out)
    rows = evaluate_classifiers(out)
    _section("Pretrained FFJORD flow", out)
    flow = flow_picture(out_dir, out)
    samples = {tag: digits_samples(out_dir, out, tag) for tag in DIGITS_FLOWS}
    _section("Pretrained latent ODE (irregular time series)", out)
    latent = latent_picture(out_dir, out)

    seconds = time.perf_counter() - start
    out("")
    out(
        f"Done in {seconds:.1f} s. Next: `odezoo describe {model}`, `odezoo eval {model}`, "
        f"`odezoo train {model} --dataset digits --epochs 30 --out my_zoo`."
    )
    return {
        "model": model,
        "classifiers": rows,
        "flow": flow,
        "digits_samples": samples["digits"],
        "digits_conv_samples": samples["digits_conv"],
        "latent": latent,
        "seconds": seconds,
    }
