"""How much memory a library takes on this host: a fresh process loads ``model.so``, runs the
chosen entries in turn, and reports its resident memory beyond what Python and TVM took
before the library was loaded. A library of several input sizes keeps each entry's
activations in the VM's pool (its storage is planned per function, sizes differ), so running
every entry costs more than running one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.compile.artifact import LIBRARY, entries, read_meta

TIMEOUT_S = 300


def resident_mb(directory: str | Path, functions: list[str]) -> float:
    """Peak resident MB, beyond the interpreter and TVM, of a process on this host that loads
    ``directory``'s library and runs each of ``functions`` (entries' ``main``) twice."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.deploy.resident", str(directory), *functions],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          env={**os.environ, "TVM_NUM_THREADS": "1"})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"measuring the memory of {directory}: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["resident_mb"]


def _measure(directory: Path, functions: list[str]) -> float:
    import numpy as np
    import tvm
    from tvm import relax

    from pipeline.common.memory import peak_rss_mb, rss_mb

    shapes = {e["main"]: e["input_shape"] for e in entries(read_meta(directory))}
    before = rss_mb() or 0.0
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(directory / LIBRARY)), tvm.cpu())
    for function in functions:
        x = tvm.runtime.tensor(np.zeros(shapes[function], "float32"), tvm.cpu())
        for _ in range(2):
            vm[function](x)
    return peak_rss_mb() - before


if __name__ == "__main__":
    print(json.dumps({"resident_mb": round(_measure(Path(sys.argv[1]), sys.argv[2:]), 1)}))
