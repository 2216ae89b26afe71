"""Pretrained weights: manifests, integrity checks and ``build(name, pretrained=...)``.

A zoo folder holds ``manifest.json`` and the weight files it names. The
shipped zoo is the package's ``zoo_weights/``; ``ODEZOO_WEIGHTS_DIR`` adds a
folder searched first (a key in both resolves to the user's). docs/manifest.md
documents the schema. A manifest is untrusted input: every entry is validated
field by field, and a file path that leaves its folder (absolute, ``..``, or a
link pointing outward) is refused. The sha256 of a weight file is checked
before the model is built, so a mismatch leaves nothing loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import resources

from odezoo._errors import ManifestError, OdezooError, UnknownNameError, WeightsIntegrityError

WEIGHTS_DIR_ENV = "ODEZOO_WEIGHTS_DIR"
MANIFEST = "manifest.json"
FORMAT = "odezoo-weights-manifest"
VERSION = 1

# field -> (types, required)
ENTRY_FIELDS = {
    "model": (str, True),
    "tag": (str, True),
    "file": (str, True),
    "sha256": (str, True),
    "dataset": (str, True),
    "split": (str, True),
    "metrics": (dict, True),
    "config": (dict, True),
    "versions": (dict, True),
    "device": (str, True),
    "strategy": (str, True),
    "seed": (int, True),
    "date": (str, True),
    "default": (bool, True),
    "command": (str, True),
    "epochs": (int, False),
    "batch_size": (int, False),
    "lr": ((int, float), False),
    "lr_schedule": (str, False),
    "optimizer": (str, False),
    "precision": (str, False),
    "notes": (str, False),
}
METRIC_NAMES = ("accuracy", "nll", "bits_per_dim", "kl")


def shipped_dir() -> str:
    return str(resources.files("odezoo.zoo_weights"))


def zoo_dirs() -> list[str]:
    """Folders searched for weights, the user's (``ODEZOO_WEIGHTS_DIR``) first."""
    dirs = []
    user = os.environ.get(WEIGHTS_DIR_ENV)
    if user:
        dirs.append(os.path.abspath(user))
    dirs.append(shipped_dir())
    return dirs


def empty_manifest() -> dict:
    return {"format": FORMAT, "version": VERSION, "entries": {}}


def read_manifest(folder: str) -> dict:
    """The validated ``entries`` of ``folder/manifest.json`` ({} when there is none)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"Cannot read weights manifest {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"{path}: not an odezoo weights manifest (expected \"format\": \"{FORMAT}\").")
    if doc.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {doc.get('version')!r}; this odezoo reads version {VERSION}.")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise ManifestError(f"{path}: \"entries\" must be an object keyed 'model.tag'.")
    for key, entry in entries.items():
        validate_entry(key, entry, folder, where=path)
    return entries


def validate_entry(key, entry, folder, *, where="manifest"):
    """Check one entry's fields, types and file path; raise :class:`ManifestError` naming them."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: entry {key!r} must be an object.")
    for field, (types, required) in ENTRY_FIELDS.items():
        if field not in entry:
            if required:
                raise ManifestError(f"{where}: entry {key!r} lacks the field {field!r}.")
            continue
        value = entry[field]
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise ManifestError(f"{where}: entry {key!r} field {field!r} has the wrong type ({value!r}).")
    if key != f"{entry['model']}.{entry['tag']}":
        raise ManifestError(f"{where}: entry {key!r} must be keyed '{entry['model']}.{entry['tag']}' (model.tag).")
    sha = entry["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"{where}: entry {key!r} field 'sha256' is not 64 lowercase hex digits.")
    for name, value in entry["metrics"].items():
        if name not in METRIC_NAMES or not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ManifestError(f"{where}: entry {key!r} field 'metrics' has a bad item {name!r}: {value!r} "
                                f"(allowed names: {', '.join(METRIC_NAMES)}; numbers).")
    resolve_file(key, entry["file"], folder, where=where)


def resolve_file(key, file, folder, *, where="manifest") -> str:
    """The weight file's path inside ``folder``; refuse paths that leave it."""
    if os.path.isabs(file) or file.startswith(("/", "\\")) or ".." in file.replace("\\", "/").split("/"):
        raise ManifestError(f"{where}: entry {key!r} field 'file' ({file!r}) leaves its folder; refused.")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, file))
    if os.path.commonpath([root, path]) != root:
        raise ManifestError(f"{where}: entry {key!r} field 'file' ({file!r}) resolves outside {root}; refused.")
    return path


def entries() -> dict:
    """``{"model.tag": entry}`` over all zoo folders, the user's winning on clashes."""
    merged = {}
    for folder in reversed(zoo_dirs()):
        for key, entry in read_manifest(folder).items():
            merged[key] = dict(entry, _folder=folder)
    return merged


def list_tags(model: str) -> list[str]:
    prefix = model + "."
    return sorted(k[len(prefix):] for k in entries() if k.startswith(prefix))


def find_entry(model: str, pretrained) -> dict:
    """The manifest entry for ``pretrained`` (True: the default tag; or a tag name)."""
    mine = {k.split(".", 1)[1]: e for k, e in entries().items() if k.split(".", 1)[0] == model}
    if pretrained is True:
        defaults = [t for t, e in mine.items() if e["default"]]
        if not defaults:
            raise UnknownNameError(f"weight tag of {model!r} (no default tag; pass one)", "(default)", mine)
        return mine[sorted(defaults)[0]]
    if not isinstance(pretrained, str) or pretrained not in mine:
        raise UnknownNameError(f"weight tag of {model!r}", pretrained, mine)
    return mine[pretrained]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_file(entry: dict) -> str:
    """The entry's weight file after its sha256 is checked (:class:`WeightsIntegrityError` if not)."""
    key = f"{entry['model']}.{entry['tag']}"
    path = resolve_file(key, entry["file"], entry["_folder"])
    if not os.path.exists(path):
        raise OdezooError(f"Weights {key}: file {path} is missing.")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsIntegrityError(
            f"Weights {key}: {path} has sha256 {actual}, but the manifest expects {entry['sha256']}; "
            "nothing was loaded.")
    return path


def build_pretrained(spec, name, pretrained, config):
    """Build ``spec``'s model with a tag's config and load its verified weights."""
    entry = find_entry(spec.name, pretrained)
    tag_config = entry["config"]
    conflicts = {k: (v, tag_config[k]) for k, v in config.items()
                 if k in tag_config and _normal(v) != _normal(tag_config[k])}
    if conflicts:
        detail = "; ".join(f"{k}={given!r} but the tag has {k}={tagged!r}" for k, (given, tagged) in conflicts.items())
        raise ValueError(f"build({name!r}, pretrained={entry['tag']!r}): the config conflicts with the weights: "
                         f"{detail}. Drop these keys or use pretrained=False.")
    path = verified_file(entry)  # before anything is built or touched
    from odezoo import _builder

    model = _builder.build(spec.name, **{**tag_config, **config})
    model.load_weights(path)
    model.zoo_entry = {k: v for k, v in entry.items() if not k.startswith("_")}
    return model


def _normal(value):
    return json.loads(json.dumps(value))  # tuples -> lists, for comparing with JSON


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_entry(folder: str, entry: dict) -> None:
    """Add or replace one entry in ``folder/manifest.json``, atomically; validated first."""
    key = f"{entry['model']}.{entry['tag']}"
    validate_entry(key, entry, folder)
    path = os.path.join(folder, MANIFEST)
    doc = empty_manifest()
    if os.path.exists(path):
        read_manifest(folder)  # refuse to extend a malformed manifest
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    if entry["default"]:
        for other in doc["entries"].values():
            if other["model"] == entry["model"]:
                other["default"] = False
    doc["entries"][key] = entry
    doc["entries"] = dict(sorted(doc["entries"].items()))
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode())
