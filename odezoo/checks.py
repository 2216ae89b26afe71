"""Argument checks with one error format, for odezoo and for plugins.

Every check raises a ``ValueError`` of the form::

    Invalid value for `channels`. Received: channels=0. Allowed: a positive int.

and returns the value normalised (``int`` for integer checks, ``float`` for
real ones), so a builder can write ``channels = checks.positive_int("channels", channels)``.
Booleans are never accepted as numbers (``True`` is an ``int`` to Python, not
to a user). Tensors are not checked here: these are for Python arguments known
when a model is built.

>>> from odezoo import checks
>>> checks.positive_int("depth", 20)
20
>>> checks.choice("optimizer", "adam", ("adam", "sgd"))
'adam'

``bad_value`` builds the same error for a check of your own; ``check_keys``
refuses unknown keys of a config dict, suggesting the closest valid one.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = [
    "bad_value",
    "check_keys",
    "is_int",
    "is_real",
    "integer",
    "positive_int",
    "non_negative_int",
    "real",
    "finite",
    "positive",
    "non_negative",
    "choice",
    "shape",
    "boolean",
]


def bad_value(arg: str, value: Any, allowed: str) -> ValueError:
    """The house ``ValueError``: ``Invalid value for `arg`. Received: arg=value. Allowed: ...``."""
    return ValueError(f"Invalid value for `{arg}`. Received: {arg}={value!r}. Allowed: {allowed}.")


def check_keys(what: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ``TypeError`` naming the unknown keys (with a close match, if any) and the valid ones."""
    valid = sorted(valid)
    bad = sorted(set(given) - set(valid))
    if not bad:
        return
    hints = []
    for key in bad:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"{what} got unexpected config key(s) {', '.join(hints)}. "
        f"Valid keys: {', '.join(valid) if valid else '(none)'}."
    )


def is_int(value: Any) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_real(value: Any) -> bool:
    """A real number that is not a bool (ints and numpy floats count)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _none_or(allow_none: bool, allowed: str) -> str:
    return ("None or " if allow_none else "") + allowed


def integer(
    arg: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    allowed: str | None = None,
) -> int | None:
    """An int in ``[minimum, maximum]`` (either bound optional)."""
    if value is None and allow_none:
        return None
    if allowed is None:
        if minimum is not None and maximum is not None:
            allowed = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            allowed = f"an int >= {minimum}"
        elif maximum is not None:
            allowed = f"an int <= {maximum}"
        else:
            allowed = "an int"
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise bad_value(arg, value, _none_or(allow_none, allowed))
    return int(value)


def positive_int(arg: str, value: Any, *, allow_none: bool = False) -> int | None:
    """An int > 0."""
    return integer(arg, value, minimum=1, allow_none=allow_none, allowed="a positive int")


def non_negative_int(arg: str, value: Any, *, allow_none: bool = False) -> int | None:
    """An int >= 0."""
    return integer(arg, value, minimum=0, allow_none=allow_none, allowed="an int >= 0")


def real(
    arg: str,
    value: Any,
    *,
    finite: bool = True,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
    allowed: str | None = None,
) -> float | None:
    """A real number (finite unless ``finite=False``) within the given bounds."""
    if value is None and allow_none:
        return None
    if allowed is None:
        parts = ["a finite float" if finite else "a float"]
        if exclusive_minimum is not None:
            parts.append(f"> {exclusive_minimum}")
        if minimum is not None:
            parts.append(f">= {minimum}")
        if maximum is not None:
            parts.append(f"<= {maximum}")
        allowed = " ".join(parts)
    ok = is_real(value)
    if ok:
        v = float(value)
        ok = (
            (not finite or math.isfinite(v))
            and not math.isnan(v)
            and (exclusive_minimum is None or v > exclusive_minimum)
            and (minimum is None or v >= minimum)
            and (maximum is None or v <= maximum)
        )
    if not ok:
        raise bad_value(arg, value, _none_or(allow_none, allowed))
    return float(value)


def finite(arg: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite float."""
    return real(arg, value, allow_none=allow_none, allowed="a finite float")


def positive(arg: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite float > 0 (rtol, atol, a step size, a learning rate)."""
    return real(arg, value, exclusive_minimum=0.0, allow_none=allow_none, allowed="a finite positive float")


def non_negative(arg: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite float >= 0."""
    return real(arg, value, minimum=0.0, allow_none=allow_none, allowed="a finite float >= 0")


def choice(arg: str, value: Any, choices: Iterable[Any], *, allow_none: bool = False) -> Any:
    """One of ``choices`` (compared with ``==``; a bool never matches an int choice)."""
    choices = list(choices)
    if value is None and allow_none:
        return None

    def same(c):
        try:
            return value is c or (type(value) is not bool and bool(value == c))
        except (TypeError, ValueError):  # an array or an odd object: not one of the choices
            return False

    if not any(same(c) for c in choices):
        raise bad_value(arg, value, _none_or(allow_none, "one of " + ", ".join(map(repr, choices))))
    return value


def boolean(arg: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise bad_value(arg, value, "True or False")
    return value


def shape(arg: str, value: Any, *, rank: int | None = None, allowed: str | None = None) -> tuple[int, ...]:
    """A shape: a list or tuple of positive ints (of length ``rank`` if given)."""
    ok = isinstance(value, (list, tuple)) and all(is_int(d) and d > 0 for d in value)
    if ok and rank is not None:
        ok = len(value) == rank
    if not ok:
        if allowed is None:
            allowed = f"a tuple of {rank} positive ints" if rank is not None else "a tuple of positive ints"
        raise bad_value(arg, value, allowed)
    return tuple(int(d) for d in value)
