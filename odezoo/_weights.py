"""Pretrained weights: the manifest in zoo_weights/ (and ``ODEZOO_WEIGHTS_DIR``)."""

from __future__ import annotations

import json
import os
from importlib import resources

from odezoo._errors import OdezooError, UnknownNameError

WEIGHTS_DIR_ENV = "ODEZOO_WEIGHTS_DIR"


def zoo_dirs() -> list[str]:
    """Folders searched for weights, the user's (``ODEZOO_WEIGHTS_DIR``) first."""
    dirs = []
    user = os.environ.get(WEIGHTS_DIR_ENV)
    if user:
        dirs.append(user)
    dirs.append(str(resources.files("odezoo.zoo_weights")))
    return dirs


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise OdezooError(f"Cannot read weights manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise OdezooError(f"Weights manifest {path} must be a JSON object keyed 'model.tag'.")
    return data.get("weights", data) if isinstance(data.get("weights", None), dict) else data


def entries() -> dict:
    """``{"model.tag": entry}`` over all zoo folders, the user's winning on clashes."""
    merged = {}
    for folder in reversed(zoo_dirs()):
        for key, entry in read_manifest(folder).items():
            if key.startswith("$") or not isinstance(entry, dict):
                continue
            merged[key] = dict(entry, _folder=folder)
    return merged


def list_tags(model: str) -> list[str]:
    prefix = model + "."
    return sorted(k[len(prefix):] for k in entries() if k.startswith(prefix))


def build_pretrained(spec, name, pretrained, config):
    tags = list_tags(spec.name)
    tag = pretrained if isinstance(pretrained, str) else None
    if tag is None or tag not in tags:
        raise UnknownNameError(f"weight tag of {spec.name!r}", tag if tag else "(default)", tags)
    raise OdezooError(f"Loading weights for {spec.name}.{tag} is not available in this version.")
