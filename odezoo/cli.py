"""The ``odezoo`` command line: list, schemes, describe, plugins, train, eval, demo.

Every subcommand reads the registry through the public API. Bad input (an
unknown name, a bad argument) exits with status 2 and one line on stderr,
without a traceback (``--debug`` shows it). Keras and TensorFlow are not
imported here; the built-in plugins may import Keras when the registry is
first read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence

# Quieten TensorFlow's C++ INFO/WARNING logs before any plugin imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import odezoo  # noqa: E402  (after the environment default above)
from odezoo import _quiet  # noqa: E402
from odezoo._distribute import PRECISIONS, STRATEGIES  # noqa: E402
from odezoo._report import format_describe, format_plugins, format_table, schemes_table  # noqa: E402
from odezoo._train import OPTIMIZERS  # noqa: E402

# The commands that run models: Keras and TensorFlow start quietly before them (odezoo._quiet)
FRAMEWORK_COMMANDS = ("train", "eval", "demo")
# OSError: a file odezoo could not read or write (disk full, read-only, missing), as one line like the others
USER_ERRORS = (odezoo.OdezooError, LookupError, ValueError, TypeError, OSError)


# --------------------------------------------------------------------------- commands
def _cmd_list(args):
    names = odezoo.list_models(args.pattern)
    if not names:
        raise LookupError(f"No model matches {args.pattern!r}. Models: {', '.join(odezoo.list_models())}.")
    print("\n".join(names))


def _cmd_schemes(args):
    print(schemes_table())


def _cmd_describe(args):
    info = odezoo.describe(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str, ensure_ascii=False))
    else:
        print(format_describe(info))


def _cmd_plugins(args):
    report = odezoo.plugin_report()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_plugins(report))


def _cmd_demo(args):
    from odezoo import _demo

    _demo.run(model=args.model, out_dir=args.out)


def parse_config(items) -> dict:
    """``["depth=20", "variant=way2", "hidden=[32, 32]"]`` → dict; values are JSON where they parse."""
    config = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Invalid value for `--config`. Received: {item!r}. Allowed: KEY=VALUE, e.g. depth=20.")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        config[key.strip()] = value
    return config


def _cmd_train(args):
    from odezoo import _train

    entry = _train.train(
        args.name,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        config=parse_config(args.config),
        tag=args.tag,
        default=args.default,
        resume=args.resume,
        lr_schedule=args.lr_schedule,
        optimizer=args.optimizer,
        clipnorm=args.clipnorm,
        strategy=args.strategy,
        precision=args.precision,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    key = f"{entry['model']}.{entry['tag']}"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items())
    if not entry["sha256"]:
        print(f"{key}: {metrics} on {entry['dataset']} {entry['split']} (a non-chief worker: nothing written)")
        return
    print(
        f"{key}: {metrics} on {entry['dataset']} {entry['split']}; "
        f"weights {os.path.join(args.out, entry['file'])}, manifest {os.path.join(args.out, 'manifest.json')}"
    )


def _cmd_eval(args):
    from odezoo import _train

    entry, measured = _train.eval_pretrained(args.name, args.pretrained)
    rows = [
        [name, f"{value:.4f}", f"{entry['metrics'].get(name, float('nan')):.4f}"] for name, value in measured.items()
    ]
    print(f"{entry['model']}.{entry['tag']} on {entry['dataset']} {entry['split']}")
    print(format_table(["metric", "measured", "manifest"], rows))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (status 2, as argparse's own)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="odezoo",
        description="A Keras model zoo of neural networks read as differential equations.",
    )
    parser.add_argument("--version", action="version", version=f"odezoo {odezoo.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="registered models (aliases included), sorted")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="fnmatch pattern, e.g. 'resnet*'")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("schemes", help="registered schemes: order, fields, state size, owning plugin")
    p.set_defaults(func=_cmd_schemes)

    p = sub.add_parser("describe", help="a model's metadata (odezoo.describe)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_describe)

    p = sub.add_parser("plugins", help="loaded plugins and failures (odezoo.plugin_report)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("train", help="train a model; write weights and a manifest entry into --out")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--dataset",
        required=True,
        help="digits, fashion_mnist, mnist, cifar10; flows: toy densities, digits; series classifiers: "
        "japanese_vowels and the other UEA/UCR names, each also as <name>_drop<NN>; latent_ode: spirals",
    )
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="adam (default) or sgd (momentum 0.9)")
    p.add_argument(
        "--lr-schedule",
        default="constant",
        choices=("constant", "cosine"),
        help="constant (default) or cosine decay to 0 over the run",
    )
    p.add_argument(
        "--clipnorm",
        type=float,
        default=None,
        help="clip each step's gradients to this global L2 norm (default: no clipping)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for checkpoints, weights and manifest.json")
    p.add_argument("--config", action="append", metavar="KEY=VALUE", help="build config (repeatable; JSON values)")
    p.add_argument("--tag", help="manifest tag (default: the dataset's name)")
    p.add_argument("--default", action="store_true", help="mark the entry the model's default tag")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue this run from its newest checkpoint (refused, naming the differing keys, for another run's)",
    )
    p.add_argument(
        "--strategy",
        default="default",
        choices=STRATEGIES,
        help="tf.distribute strategy: default (one device), mirrored (local devices), "
        "multiworker (cluster from TF_CONFIG), tpu; --batch-size is the global batch",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="Keras dtype policy for classifiers (ODE solves stay float32)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="re-measure a pretrained model's metrics on its test split")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--pretrained", default=None, metavar="TAG", help="weight tag (default: the default tag)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="the zoo, its pretrained models re-measured, a flow density PNG")
    p.add_argument("--model", default="lm_resnet", help="classifier to summarise (default: lm_resnet)")
    p.add_argument("--out", default="odezoo-demo", metavar="DIR", help="folder for the density PNG")
    p.set_defaults(func=_cmd_demo)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"odezoo: warning: {' '.join(str(message).split())}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for bad input)."""
    parser = make_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on bad arguments
    saved = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        with _quiet.no_retracing_warning():
            if args.command in FRAMEWORK_COMMANDS and getattr(args, "strategy", "default") not in (
                "multiworker",
                "tpu",
            ):
                # TensorFlow's start-up banners left out (a multi-worker or TPU run sets its devices up first)
                _quiet.framework_started()
            args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"odezoo: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `odezoo list | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    finally:
        warnings.formatwarning = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
