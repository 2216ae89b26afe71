"""The odezoo exception hierarchy and the helpers that word its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OdezooError(Exception):
    """Base class of every error odezoo raises on purpose."""


class UnknownNameError(OdezooError, LookupError):
    """A model, scheme, tag or dataset name that is not registered."""

    def __init__(self, kind: str, name, choices: Iterable[str]):
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)
        close = difflib.get_close_matches(str(name), self.choices, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        valid = ", ".join(self.choices) if self.choices else "(none registered)"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Valid {kind}s: {valid}.")

    def __str__(self):  # LookupError would otherwise quote the message
        return self.args[0]


class SolverError(OdezooError):
    """An ODE solve that failed (budget exhausted, NaN/Inf, step size underflow)."""


class WeightsIntegrityError(OdezooError):
    """A weight file whose sha256 differs from its manifest entry."""


class PluginError(OdezooError):
    """A plugin that cannot be registered (name clash, unsupported API version)."""


class ManifestError(OdezooError):
    """A malformed weights manifest or entry (the message names the file, the entry and the field)."""


class DataError(OdezooError):
    """A dataset file that is missing, truncated, corrupt or inconsistent (the message names the file)."""


class TrainingError(OdezooError):
    """A training run that cannot start or that diverged (bad learning rate, labels, data; a non-finite loss)."""


class CheckpointError(OdezooError):
    """A training checkpoint that does not belong to the run being resumed, or cannot be read."""


# the one error format lives in the public odezoo.checks; these names stay for odezoo's own modules
from odezoo.checks import bad_value, check_keys  # noqa: E402,F401
