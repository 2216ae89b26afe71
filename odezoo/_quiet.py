"""Keep the framework's start-up noise out of the command line's output, and nothing else.

TensorFlow writes banners to the process's stderr from C++ while it loads,
before its logging honours ``TF_CPP_MIN_LOG_LEVEL`` ("All log messages before
absl::InitializeLog()", oneDNN, "Could not find cuda drivers", "failed call to
cuInit" on a machine without a GPU, CPU-feature advice). :func:`framework_started`
imports Keras (and so TensorFlow) and initialises the devices with file
descriptor 2 captured, then writes back every captured line that is not one of
those known banners: a plugin's warning or a real error still reaches the user.

Keras's "triggered tf.function retracing" warning is expected when the demo or
``odezoo eval`` runs several models in one process (each model traces its own
predict function); :func:`no_retracing_warning` drops that one message from the
"tensorflow" logger while a command runs. Code outside the CLI is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

# The known start-up banners, each a whole line of TensorFlow's C++ output on a CPU machine.
BANNERS = tuple(
    re.compile(p)
    for p in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
        r"^[IWE]\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on",
        r"^[IWE]\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers",
        r"^[IWE]\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit",
        r"^[IWE]\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
        r"^To enable the following instructions: .* in other operations, rebuild TensorFlow",
    )
)
RETRACING = "triggered tf.function retracing"


def is_banner(line: str) -> bool:
    return any(p.search(line.rstrip("\n")) for p in BANNERS)


@contextlib.contextmanager
def captured_stderr_lines():
    """Capture file descriptor 2 (C++ output included); on exit write back the lines that are not banners."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(True) if not is_banner(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def framework_started() -> None:
    """Import Keras and, under TensorFlow, initialise its devices, with the start-up banners left out."""
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return
    with captured_stderr_lines():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING not in record.getMessage()


@contextlib.contextmanager
def no_retracing_warning():
    """Drop TensorFlow's retracing warning (only that message) from the "tensorflow" logger inside the block."""
    logger = logging.getLogger("tensorflow")
    drop = _DropRetracing()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
