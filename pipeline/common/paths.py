"""The one place the project's directories are spelled."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"  # compiled and tuned artifacts
TUNING = ROOT / "tuning"  # MetaSchedule work directories, one per tuning tag
RESULTS = ROOT / "bench" / "results"  # benchmark reports, kept in git
CACHE = ROOT / ".cache"  # everything rebuilt on demand (reference data, benchmark builds)
REFERENCE = CACHE / "reference"  # `make reference`: PaddleSeg checkpoints and outputs
BENCH_WORK = CACHE / "bench"  # the peer benchmark's prepared engines, logs and label maps
REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"  # the PaddleSeg environment's interpreter
# The code whose change must invalidate a cached build.
SOURCE_DIRS = ("model", "pipeline", "schedules", "rpc")


def relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (for reports)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
