"""Solver options a user may change on a built or loaded layer or model (``block.rtol = 1e-5``).

One mechanism for :class:`odezoo.ODEBlock` and the FFJORD flow (and any plugin
model that solves): declare each option as a class attribute ``Setting(check)``.
On assignment the value passes its own ``check(name, value)`` (an
:mod:`odezoo.checks` validator: it returns the value to keep or raises), then,
once the owner has called :meth:`Settings.settings_ready`, the owner's
``_validate_settings()`` sees all of them together (options that depend on
each other: a tolerance only an adaptive solver takes). A refused value raises
and leaves the owner exactly as it was; an accepted one calls
``_settings_changed(name)``, where the owner drops whatever it compiled with the
old value. TensorFlow-free.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Setting", "Settings"]

_MISSING = object()


class Setting:
    """A validated solver option (a data descriptor; the value lives in the instance's ``__dict__``).

    Args:
        check: ``check(name, value) -> value`` (e.g. ``odezoo.checks.positive``), run on every
            assignment, the constructor's included; None: only the owner's ``_validate_settings``.
    """

    def __init__(self, check: Callable[[str, Any], Any] | None = None):
        self.check = check
        self.name = self.slot = ""

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_setting_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.__dict__.get(self.slot)

    def __set__(self, obj, value):
        if self.check is not None:
            value = self.check(self.name, value)
        old = obj.__dict__.get(self.slot, _MISSING)
        obj.__dict__[self.slot] = value
        if not obj.__dict__.get("_settings_ready", False):
            return
        try:
            obj._validate_settings()
        except BaseException:
            if old is _MISSING:
                del obj.__dict__[self.slot]
            else:
                obj.__dict__[self.slot] = old  # a refused value leaves the owner as it was
            raise
        obj._settings_changed(self.name)


class Settings:
    """The owner's side of :class:`Setting`: a mixin with the two hooks and the switch that arms them."""

    def settings_ready(self) -> None:
        """Validate the settings together, and from now on after every assignment (end of ``__init__``)."""
        self._validate_settings()
        self.__dict__["_settings_ready"] = True

    def _validate_settings(self) -> None:
        """Check the settings together; raise (ValueError, LookupError, ...) to refuse the last assignment."""

    def _settings_changed(self, name: str) -> None:
        """A setting changed on a ready owner: forget what was compiled with the old value."""
