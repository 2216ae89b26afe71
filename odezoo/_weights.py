"""Pretrained weights: manifests, integrity checks and zoo commits (a leaf: it imports no builder).

A zoo folder holds ``manifest.json`` and the weight files it names. The
shipped zoo is the package's ``zoo_weights/``; ``ODEZOO_WEIGHTS_DIR`` adds a
folder searched first (a key in both resolves to the user's). docs/manifest.md
documents the schema. Manifests and weight files are untrusted input: the
manifest's size, nesting, numbers, names and paths are checked before it is
used, and a weight file is read once, hashed, and those same bytes (a private
copy) are what the model loads.

Writing is a transaction: :func:`commit` names new weights by their content,
updates the manifest under an exclusive ``flock`` by write-temp, fsync, rename
and fsync of the folder, and removes a replaced file only after that rename,
so an interruption at any point leaves the previous state loadable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import sys
from importlib import resources

from odezoo import checks
from odezoo._errors import ManifestError, OdezooError, UnknownNameError, WeightsIntegrityError

WEIGHTS_DIR_ENV = "ODEZOO_WEIGHTS_DIR"
MANIFEST = "manifest.json"
LOCK = ".odezoo.lock"
FORMAT = "odezoo-weights-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # refused unparsed above this (the shipped manifest is ~20 kB)
MAX_DEPTH = 8  # JSON nesting levels; a manifest needs 6 (document > entries > entry > config > list > list)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")  # model and tag names; they become file names
TEMP = re.compile(r"\.tmp-([1-9][0-9]{0,9})-")  # temp_path's names: the writer's pid comes first
CONTENT_NAMED = re.compile(r"[A-Za-z0-9_.+-]+\.[0-9a-f]{16}\.weights\.h5")  # commit's weight file names

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
    "clipnorm": ((int, float), False),
    "precision": (str, False),
    "notes": (str, False),
}
METRIC_NAMES = (
    "accuracy",
    "nll",
    "bits_per_dim",
    "kl",
    "nfe_forward_per_step",
    "nfe_backward_per_step",
    "interpolation_mse",
    "extrapolation_mse",
)
# Config keys that size a model, bounded so that a hostile entry is refused before anything is allocated
# (the builders check types and lower bounds themselves, but accept e.g. num_classes=10**9).
INT_BOUNDS = {
    "num_classes": (2, 100_000),
    "depth": (1, 2_000),
    "width": (1, 64),
    "channels": (1, 4_096),
    "data_dim": (1, 100_000),
    "num_blocks": (1, 1_000),
    "num_steps": (1, 100_000),
    "augment_dims": (0, 4_096),
    "eval_probes": (1, 1_000),
    "max_steps": (1, 10_000_000),
}
LIST_BOUNDS = {"input_shape": (4, 65_536, 1 << 28), "hidden": (64, 65_536, None)}  # max length, item, product


def shipped_dir() -> str:
    return str(resources.files("odezoo.zoo_weights"))


def zoo_dirs() -> list[str]:
    """Folders searched for weights, the user's (``ODEZOO_WEIGHTS_DIR``; empty means unset) first."""
    dirs = []
    user = os.environ.get(WEIGHTS_DIR_ENV, "")
    if user:
        path = os.path.abspath(user)
        if not os.path.exists(path):
            raise ManifestError(
                f"{WEIGHTS_DIR_ENV}={user!r}: {path} does not exist (name a folder holding manifest.json, or unset it)."
            )
        if not os.path.isdir(path):
            raise ManifestError(
                f"{WEIGHTS_DIR_ENV}={user!r}: {path} is not a folder "
                "(name a folder holding manifest.json, or unset it)."
            )
        dirs.append(path)
    dirs.append(shipped_dir())
    return dirs


def empty_manifest() -> dict:
    return {"format": FORMAT, "version": VERSION, "entries": {}}


# --- reading: untrusted JSON -------------------------------------------------------------------------------


class _Refused(ValueError):
    """Raised from inside the JSON parser's hooks."""


def _unique_pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name):
    raise _Refused(f"non-finite number {name}")


def _read_doc(path: str):
    """The parsed JSON at ``path`` (None when absent): size-capped, strict, one-line errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"Cannot read weights manifest {path}: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ManifestError(f"Weights manifest {path} is not a regular file.")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"Weights manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes; refused unread.")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"Weights manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except RecursionError as exc:
        raise ManifestError(f"Weights manifest {path} is nested too deeply to parse; refused.") from exc
    except _Refused as exc:
        raise ManifestError(f"Weights manifest {path} has a {exc}; refused.") from exc
    except ValueError as exc:
        raise ManifestError(f"Cannot read weights manifest {path}: not valid JSON ({exc}).") from exc


def _check_tree(value, where: str, path=(), depth=1) -> None:
    """Refuse nesting beyond MAX_DEPTH, NUL bytes and non-finite numbers anywhere in ``value``."""
    label = " > ".join(repr(p) for p in path) or "the document"
    if depth > MAX_DEPTH:
        raise ManifestError(f"{where}: {label} is nested deeper than {MAX_DEPTH} levels; refused.")
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ManifestError(f"{where}: {label} has a key with a NUL byte ({key!r}); refused.")
            _check_tree(item, where, (*path, key), depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_tree(item, where, (*path, i), depth + 1)
    elif isinstance(value, str) and "\x00" in value:
        raise ManifestError(f"{where}: {label} holds a NUL byte ({value!r}); refused.")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ManifestError(f"{where}: {label} holds a non-finite number ({value!r}); refused.")


def _check_doc(doc, folder: str, path: str) -> dict:
    """Validate a parsed manifest document (format, version, every entry, one default per model)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"{path}: not an odezoo weights manifest (expected \"format\": \"{FORMAT}\").")
    _check_tree(doc, path)
    if doc.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {doc.get('version')!r}; this odezoo reads version {VERSION}.")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise ManifestError(f"{path}: \"entries\" must be an object keyed 'model.tag'.")
    defaults = {}
    for key, entry in entries.items():
        validate_entry(key, entry, folder, where=path)
        if entry["default"]:
            defaults.setdefault(entry["model"], []).append(entry["tag"])
    for model, tags in sorted(defaults.items()):
        if len(tags) > 1:
            raise ManifestError(
                f"{path}: several default tags for {model!r} ({', '.join(sorted(tags))}); at most one per model."
            )
    return doc


def read_manifest(folder: str) -> dict:
    """The validated ``entries`` of ``folder/manifest.json`` ({} when there is none)."""
    path = os.path.join(folder, MANIFEST)
    doc = _read_doc(path)
    return {} if doc is None else _check_doc(doc, folder, path)["entries"]


def validate_entry(key, entry, folder, *, where="manifest"):
    """Check one entry's fields, types, values and file path; raise :class:`ManifestError` naming them."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: entry {key!r} must be an object.")
    for field, (types, required) in ENTRY_FIELDS.items():
        if field not in entry:
            if required:
                raise ManifestError(f"{where}: entry {key!r} lacks the field {field!r}.")
            continue
        value = entry[field]
        if not isinstance(value, types) or (types is int and not _json_int(value)):
            raise ManifestError(f"{where}: entry {key!r} field {field!r} has the wrong type ({value!r}).")
        _check_tree(value, where, (f"entry {key}", field), depth=3)
    for field in ("model", "tag"):
        if not NAME.fullmatch(entry[field]):
            raise ManifestError(
                f"{where}: entry {key!r} field {field!r} ({entry[field]!r}) must be 1-100 letters, "
                "digits and _ . + - (not starting with . + -)."
            )
    if key != f"{entry['model']}.{entry['tag']}":
        raise ManifestError(f"{where}: entry {key!r} must be keyed '{entry['model']}.{entry['tag']}' (model.tag).")
    sha = entry["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"{where}: entry {key!r} field 'sha256' is not 64 lowercase hex digits.")
    _check_metrics(key, entry["metrics"], where)
    _check_config(key, entry["config"], where)
    resolve_file(key, entry["file"], folder, where=where)


def _json_int(value) -> bool:
    """An int as a manifest holds it: a Python int, not a bool (a numpy int would not serialise)."""
    return isinstance(value, int) and checks.is_int(value)


def _json_number(value) -> bool:
    """A number as a manifest holds it: a Python int or float, not a bool."""
    return isinstance(value, (int, float)) and checks.is_real(value)


def _check_metrics(key, metrics: dict, where: str) -> None:
    for name, value in metrics.items():
        if name not in METRIC_NAMES or not _json_number(value):
            raise ManifestError(
                f"{where}: entry {key!r} field 'metrics' has a bad item {name!r}: {value!r} "
                f"(allowed names: {', '.join(METRIC_NAMES)}; numbers)."
            )
        if name == "accuracy" and not 0.0 <= value <= 1.0:
            raise ManifestError(
                f"{where}: entry {key!r} metric accuracy={value!r} is outside [0, 1] (a fraction, not a percentage)."
            )
        if name.startswith("nfe_") and value < 0:
            raise ManifestError(f"{where}: entry {key!r} metric {name}={value!r} is negative (a count of evaluations).")
        if name.endswith("_mse") and value < 0:
            raise ManifestError(f"{where}: entry {key!r} metric {name}={value!r} is negative (a mean squared error).")


def _check_config(key, config: dict, where: str) -> None:
    """Bound the config keys that size a model (see INT_BOUNDS, LIST_BOUNDS); None is left to the builder."""

    def refuse(name, value, allowed):
        raise ManifestError(
            f"{where}: entry {key!r} config {name}={value!r} is out of range "
            f"(allowed: {allowed}); refused before building."
        )

    for name, (low, high) in INT_BOUNDS.items():
        value = config.get(name)
        if value is not None and (not _json_int(value) or not low <= value <= high):
            refuse(name, value, f"an int in [{low}, {high}]")
    for name, (length, high, product) in LIST_BOUNDS.items():
        value = config.get(name)
        if value is None:
            continue
        allowed = f"a list of at most {length} ints in [1, {high}]" + (f", product <= {product}" if product else "")
        if (
            not isinstance(value, (list, tuple))
            or len(value) > length
            or not all(_json_int(v) and 1 <= v <= high for v in value)
            or (product and math.prod(value) > product)
        ):
            refuse(name, value, allowed)


def check_entry_inputs(model: str, tag: str, config: dict) -> None:
    """Raise :class:`ManifestError` now if an entry for ``model.tag`` with ``config`` would be refused.

    For callers that commit after a long job (``odezoo train``): the names and the config are the parts
    of an entry known before it starts.
    """
    key, where = f"{model}.{tag}", "new entry"
    for field, value in (("model", model), ("tag", tag)):
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise ManifestError(
                f"{where} {key!r}: {field} {value!r} must be 1-100 letters, digits and _ . + - "
                "(not starting with . + -)."
            )
    if not isinstance(config, dict):
        raise ManifestError(f"{where} {key!r}: config must be a dict, got {type(config).__name__}.")
    _check_tree(config, where, (key, "config"), depth=3)
    _check_config(key, config, where)


def resolve_file(key, file, folder, *, where="manifest") -> str:
    """The weight file's path inside ``folder``; refuse empty names, folders and paths that leave it."""
    parts = file.replace("\\", "/").split("/")
    if parts[-1] in ("", ".", ".."):
        raise ManifestError(f"{where}: entry {key!r} field 'file' ({file!r}) does not name a file; refused.")
    if os.path.isabs(file) or file.startswith(("/", "\\")) or ".." in parts:
        raise ManifestError(f"{where}: entry {key!r} field 'file' ({file!r}) leaves its folder; refused.")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, file))
    if os.path.commonpath([root, path]) != root:
        raise ManifestError(f"{where}: entry {key!r} field 'file' ({file!r}) resolves outside {root}; refused.")
    return path


# --- lookup ------------------------------------------------------------------------------------------------


def entries() -> dict:
    """``{"model.tag": entry}`` over all zoo folders, the user's winning on clashes."""
    merged = {}
    for folder in reversed(zoo_dirs()):
        for key, entry in read_manifest(folder).items():
            merged[key] = dict(entry, _folder=folder)
    return merged


def list_tags(model: str) -> list[str]:
    prefix = model + "."
    return sorted(k[len(prefix) :] for k in entries() if k.startswith(prefix))


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


# --- integrity and loading: read once, hash, load those bytes ---------------------------------------------


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(entry: dict, copy_to: str | None = None) -> str:
    """Open the entry's file once, hash it (copying the bytes to ``copy_to``), check hash and HDF5 signature.

    Returns the path read. A caller that loads ``copy_to`` loads the very bytes that were hashed.
    """
    key = f"{entry['model']}.{entry['tag']}"
    path = resolve_file(key, entry["file"], entry["_folder"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise OdezooError(f"Weights {key}: file {path} is missing.") from None
    except OSError as exc:
        raise WeightsIntegrityError(f"Weights {key}: cannot open {path}: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WeightsIntegrityError(f"Weights {key}: {path} is not a regular file; nothing was loaded.")
    digest, head = hashlib.sha256(), b""
    with os.fdopen(fd, "rb") as fh, open(copy_to, "xb") if copy_to else contextlib.nullcontext() as out:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            head = (head + chunk[:8])[:8]
            if out is not None:
                out.write(chunk)
    actual = digest.hexdigest()
    if actual != entry["sha256"]:
        raise WeightsIntegrityError(
            f"Weights {key}: {path} has sha256 {actual}, but the manifest expects {entry['sha256']}; "
            "nothing was loaded."
        )
    if head != HDF5_SIGNATURE:
        raise WeightsIntegrityError(
            f"Weights {key}: {path} matches its sha256 but is not an HDF5 file "
            "(a Keras .weights.h5); nothing was loaded."
        )
    return path


def verified_file(entry: dict) -> str:
    """The entry's weight file after its sha256 is checked (:class:`WeightsIntegrityError` if not).

    For inspection: loading goes through ``odezoo._builder.build_pretrained``, which loads the very bytes it hashed.
    """
    return read_verified(entry)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def config_conflicts(config: dict, tag_config: dict) -> dict:
    """``{key: (given, tagged)}`` for the caller's keys whose values differ from the tag's config."""
    return {
        k: (v, tag_config[k]) for k, v in config.items() if k in tag_config and _normal(v) != _normal(tag_config[k])
    }


def _normal(value):
    return json.loads(json.dumps(value))  # tuples -> lists, for comparing with JSON


# --- writing: the zoo folder as a transaction log ----------------------------------------------------------


def temp_path(folder: str, name: str) -> str:
    """A fresh temp path ``folder/.tmp-<pid>-<random>-<name>``; the pid tells a dead writer's leftovers."""
    return os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{name}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (OverflowError, ValueError):
        return False
    return True


def clean_stale_temps(folder: str) -> list[str]:
    """Remove ``.tmp-<pid>-*`` files and folders in ``folder`` whose pid is not alive; return their paths."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return removed
    for name in names:
        match = TEMP.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue  # another cleaner was first
        removed.append(path)
    return removed


@contextlib.contextmanager
def folder_lock(folder: str):
    """Hold an exclusive ``fcntl.flock`` on ``folder/.odezoo.lock`` (created if needed) for the block."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable(folder: str) -> None:
    """Raise :class:`OdezooError` naming ``folder`` and the OS reason if it cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = temp_path(folder, "probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise OdezooError(f"Cannot write to {folder}: {exc.strerror or exc}.") from exc


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _mode_for(path: str) -> int:
    """The file mode of ``path``, or 0644 less the umask for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o644 & ~mask


def _replace_file(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to a temp beside ``path`` with ``mode``, fsync, rename over ``path``, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(folder, os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(folder)


def _write_manifest(folder: str, doc: dict, mode: int) -> None:
    """Commit ``doc`` as ``folder/manifest.json`` (the one rename that makes a commit)."""
    data = (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()
    _replace_file(os.path.join(folder, MANIFEST), data, mode)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and a rename; keeps the mode."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _replace_file(path, data, _mode_for(path))


def _current_doc(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    doc = _read_doc(path)
    return empty_manifest() if doc is None else _check_doc(doc, folder, path)  # never extend a malformed one


def _apply(doc: dict, key: str, entry: dict):
    """Put ``entry`` under ``key`` (a default clears the model's other defaults); return the replaced entry."""
    entries = doc["entries"]
    old = entries.get(key)
    if entry["default"]:
        for other in entries.values():
            if other["model"] == entry["model"]:
                other["default"] = False
    entries[key] = entry
    doc["entries"] = dict(sorted(entries.items()))
    return old


def _remove_unreferenced(folder: str, doc: dict, candidates) -> None:
    """After a commit: remove ``candidates`` and content-named weight files that no entry references."""
    referenced = {os.path.normpath(e["file"]) for e in doc["entries"].values()}
    try:
        names = set(candidates) | {n for n in os.listdir(folder) if CONTENT_NAMED.fullmatch(n)}
    except OSError:
        return  # the commit stands; the next one sweeps
    removed = False
    for name in sorted(names):
        if os.path.normpath(name) in referenced:
            continue
        with contextlib.suppress(OSError):  # the commit stands either way; the next one retries
            os.unlink(os.path.join(folder, name))
            removed = True
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(folder)


def _say_replaced(key: str, old) -> None:
    if old is not None:
        print(
            f"odezoo: {key} replaces the entry written {old.get('date')} (sha {old.get('sha256', '')[:12]})",
            file=sys.stderr,
        )


def _hash_and_sync(path: str) -> str:
    """sha256 of a just-written file, read once, and fsync it so the rename below publishes whole bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return digest.hexdigest()


def _place_weights(tmp: str, final: str, sha: str) -> bool:
    """Rename ``tmp`` to its content name; False if identical bytes were already there (tmp dropped)."""
    if os.path.isfile(final) and sha256_of(final) == sha:
        os.unlink(tmp)
        return False
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))
    return True


def _commit_locked(folder: str, key: str, entry: dict, weights_tmp: str) -> dict:
    clean_stale_temps(folder)
    doc = _current_doc(folder)
    mode = _mode_for(os.path.join(folder, MANIFEST))
    final = os.path.join(folder, entry["file"])
    placed = _place_weights(weights_tmp, final, entry["sha256"])
    try:
        old = _apply(doc, key, entry)
        _write_manifest(folder, doc, mode)
    except BaseException:
        if placed:
            _unlink_quietly(final)
        raise
    _say_replaced(key, old)
    _remove_unreferenced(folder, doc, [old["file"]] if old else [])
    return entry


def commit(folder: str, entry: dict, weights_tmp: str) -> dict:
    """Add ``entry`` with the weights in ``weights_tmp`` (a finished file inside ``folder``) as one commit.

    ``entry`` lacks "file" and "sha256"; they are filled from the bytes (the file is named
    ``<model>.<tag>.<sha[:16]>.weights.h5``). Under :func:`folder_lock` the manifest is re-read, the
    entry applied and the manifest replaced; a replaced key is said on stderr and its file removed after
    the commit. On any failure before the manifest's rename the previous manifest and its files are
    intact and the new weights are removed; an OS failure (disk full, read-only) is a one-line
    :class:`OdezooError`. Returns the entry as written.
    """
    key = f"{entry.get('model')}.{entry.get('tag')}"
    try:
        sha = _hash_and_sync(weights_tmp)
        entry = dict(entry, file=f"{key}.{sha[:16]}.weights.h5", sha256=sha)
        validate_entry(key, entry, folder, where=os.path.join(folder, MANIFEST))
        with folder_lock(folder):
            return _commit_locked(folder, key, entry, weights_tmp)
    except OSError as exc:
        raise OdezooError(
            f"Cannot commit {key} to {folder}: {exc.strerror or exc}; "
            "the previous manifest and its files are unchanged."
        ) from exc
    finally:
        _unlink_quietly(weights_tmp)  # already renamed on success


def add_entry(folder: str, entry: dict) -> None:
    """Add or replace one complete entry (its file already in ``folder``) under the lock, atomically."""
    key = f"{entry['model']}.{entry['tag']}"
    validate_entry(key, entry, folder)
    with folder_lock(folder):
        clean_stale_temps(folder)
        doc = _current_doc(folder)
        mode = _mode_for(os.path.join(folder, MANIFEST))
        old = _apply(doc, key, entry)
        _write_manifest(folder, doc, mode)
        _say_replaced(key, old)
        _remove_unreferenced(folder, doc, [old["file"]] if old else [])
