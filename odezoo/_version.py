"""``odezoo.__version__``: the installed distribution's version; pyproject.toml is the one place it is kept."""

from __future__ import annotations

import os
from importlib import metadata


def _from_source_tree() -> str:
    """The version in pyproject.toml beside the package (a checkout run without installing it)."""
    import tomllib

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(path, "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


try:
    __version__: str = metadata.version("odezoo")
except metadata.PackageNotFoundError:
    __version__ = _from_source_tree()
