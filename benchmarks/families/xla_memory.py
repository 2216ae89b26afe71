"""XLA's own account of a compiled training step's memory: the temp buffer and what is live at its peak.

One fresh process per call: builds the model, compiles it like ``memory.py``
does (SGD with momentum, ``jit_compile=True``), runs ONE ``train_on_batch`` with
``XLA_FLAGS=--xla_dump_to=DIR`` and reads, from the dump of the train step's
module, the size of the preallocated temp buffer (``*memory-usage-report.txt``)
and the buffers live at the peak (``*buffer-assignment.txt``), of which the
activations (rank-4 buffers with a batch-sized dimension). Unlike peak RSS,
these are exact and do not depend on what compilation itself allocated.

    python benchmarks/families/xla_memory.py --model revnet --depth 110 --batch 32
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile


def run(model_name, depth, batch, dump_dir):
    os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from memory import compiled_model_and_batch

    model, x, y = compiled_model_and_batch(model_name, depth, batch, jit=True)
    model.train_on_batch(x, y)


def read(dump_dir, batch):
    reports = glob.glob(os.path.join(dump_dir, "*one_step_on_data*memory-usage-report.txt"))
    if len(reports) != 1:
        raise SystemExit(f"expected one train-step memory report in {dump_dir}, found {len(reports)}")
    report = open(reports[0]).read()
    sizes = [line for line in report.splitlines() if "preallocated-temp" in line]
    temp = _mib(re.search(r"size ([\d.]+)([KMG]iB)", sizes[0]).groups()) if sizes else 0.0
    assignment = open(reports[0].replace("memory-usage-report", "buffer-assignment")).read()
    peak = assignment.split("(peak):", 1)[1].split("Stack trace", 1)[0]
    live = [(name, int(size)) for name, size in re.findall(r"^\s+([\w.\-]+)\{[\d,]*\}: (\d+) bytes", peak, re.M)]
    # activations: rank-4 buffers with a batch-sized dimension (NHWC tensors and their
    # transposes), not 3x3 kernels; shapes from the optimized HLO of the same module
    hlo = open(reports[0].replace("-memory-usage-report", "")).read()
    shapes = {
        name: [int(d) for d in dims.split(",") if d] for name, dims in re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo)
    }
    activations = sum(
        size
        for name, size in live
        if len(shapes.get(name, [])) == 4 and shapes[name][:2] != [3, 3] and batch in shapes[name]
    )
    by_size = collections.Counter(size for _, size in live)
    return dict(
        temp_mib=temp,
        peak_live_mib=sum(size for _, size in live) / 2**20,
        peak_activations_mib=activations / 2**20,
        peak_activations_mib_per_sample=activations / 2**20 / batch,
        peak_live_by_size={str(k): v for k, v in sorted(by_size.items(), reverse=True)},
    )


def _mib(groups):
    value, unit = groups
    return float(value) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[unit]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="revnet", choices=["resnet", "revnet"])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dump-dir", help="where XLA writes its dump (default: a new temporary folder)")
    args = p.parse_args()
    dump_dir = args.dump_dir or tempfile.mkdtemp(prefix="xla_dump_")
    run(args.model, args.depth, args.batch, dump_dir)
    result = dict(model=args.model, depth=args.depth, batch=args.batch, dump_dir=dump_dir, **read(dump_dir, args.batch))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
