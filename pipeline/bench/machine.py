"""The machine a benchmark runs on: how its results describe it, and the folder of
``bench/results/`` they go to. Timings compare only within one CPU generation (the peers use
AVX-512 where it exists; a tuned database is refused on another CPU), so each LLVM CPU name
gets a folder of its own and one machine's runs never overwrite another's."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pipeline.common.paths import RESULTS
from rpc.devices import native_cpu, native_cpu_model, native_vector_lanes


def results_dir(root: Path = RESULTS) -> Path:
    """Where this machine's benchmark results go by default: ``bench/results/<LLVM cpu>``."""
    return root / native_cpu()


def machine_info() -> dict:
    """CPU model, core count, LLVM's CPU name and vector width, host name, load average."""
    return {"cpu": native_cpu_model() or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "arch": platform.machine(), "llvm_cpu": native_cpu(),
            "vector_lanes": native_vector_lanes(), "host": platform.node(), "load_avg_start": list(os.getloadavg())}
