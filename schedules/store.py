"""The project's records store: the best schedules its tuning runs found, per workload, kept
in the repository (``schedules/records/*.json.gz``) the way TopHub shipped tuning logs, so
that ``make tune`` starts from what was already learned.

A stored record is a candidate, never a result: ``schedules.warm`` re-measures it on the
device before it counts. A file is used for a target only when the TVM version that wrote
its traces is this one, the triple is the same, and its CPU has no instruction the target
lacks (its LLVM features are a subset of the target's).

A file is one gzip'd JSON object: ``format``, ``tvm``, ``source`` (where the records come
from: model, input, threads, graph variant, device, CPU, trials, date), ``target`` (the
LLVM target they were measured for), ``features`` (its LLVM CPU features), and ``records``:
for each workload (MetaSchedule's key, the structural hash of the kernel), its best
``[trace, ms]`` pairs, fastest first; and ``kernels``: for each workload, its ``family`` and
argument ``shapes`` (``schedules.siblings``), so a kernel the store lacks can start from a
sibling's records (files written before it have none).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from schedules import siblings
from schedules.tuning import WORKLOADS, records

FORMAT = 1
STORE = Path(__file__).resolve().parent / "records"  # the project's, in the repository
SUFFIX = ".json.gz"
KEEP = 16  # records kept per workload: the candidates to re-measure and the warm cost model's data


def features(target: tvm.target.Target | dict) -> list[str]:
    """The LLVM CPU features of ``target`` (what its code may use)."""
    from tvm.target import codegen

    t = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    return sorted(str(f) for f in codegen.llvm_get_cpu_features(t))


@dataclass(frozen=True)
class RecordFile:
    """One store file, loaded."""

    path: Path
    source: dict
    target: dict
    features: frozenset[str]
    tvm: str
    records: dict[str, list[tuple[object, float]]]  # workload key -> [(trace JSON, ms)], fastest first
    kernels: dict[str, dict] = field(default_factory=dict)  # workload key -> {"family", "shapes"}

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    def usable_for(self, target: dict, target_features: set[str]) -> str | None:
        """Why this file cannot serve ``target`` (None: it can)."""
        if self.tvm != tvm.__version__:
            return f"written by TVM {self.tvm}, this is {tvm.__version__}"
        if self.target.get("mtriple") != target.get("mtriple"):
            return f"for {self.target.get('mtriple')}, not {target.get('mtriple')}"
        missing = sorted(self.features - target_features)
        if missing:
            return f"its CPU has {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}, which the target lacks"
        return None

    def closeness(self, target: dict, model: str) -> tuple[int, int, int]:
        """Smaller is closer: the same CPU, then the same thread count, then the same model."""
        return (self.target.get("mcpu") != target.get("mcpu"),
                self.target.get("num-cores") != target.get("num-cores"),
                self.source.get("model") != model)


def load(path: Path) -> RecordFile:
    """A store file (ValueError naming it when it is not one)."""
    try:
        data = json.loads(gzip.decompress(Path(path).read_bytes()))
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        records = {k: [(t, float(ms)) for t, ms in v] for k, v in data["records"].items()}
        return RecordFile(Path(path), data["source"], data["target"], frozenset(data["features"]), data["tvm"],
                          records, data.get("kernels", {}))
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a records file of this project ({e})") from None


def store_dir() -> Path:
    """The store in use: ``PPMSEG_RECORDS`` if set (a team's own, or a test's), else the project's."""
    return Path(os.environ.get("PPMSEG_RECORDS") or STORE)


def store_files() -> list[RecordFile]:
    return [load(p) for p in sorted(store_dir().glob(f"*{SUFFIX}"))]


def usable(target: tvm.target.Target, model: str) -> list[RecordFile]:
    """The store's files that can serve ``target``, closest first."""
    wanted = dict(target.export())
    have = set(features(target))
    files = [f for f in store_files() if f.usable_for(wanted, have) is None]
    return sorted(files, key=lambda f: (f.closeness(wanted, model), f.name))


def best_records(work_dir: str | Path, keep: int = KEEP) -> dict[str, list[tuple[object, float]]]:
    """A MetaSchedule JSON database's ``keep`` fastest successful records per workload, as
    ``[trace JSON, mean ms]``; identical traces count once."""
    found: dict[str, dict[str, tuple[object, float]]] = {}
    for key, secs, trace in records(work_dir):
        if secs is None:
            continue
        seen = found.setdefault(key, {})
        text = json.dumps(trace, sort_keys=True)
        if text not in seen or seen[text][1] > secs * 1e3:
            seen[text] = (trace, secs * 1e3)
    return {k: sorted(v.values(), key=lambda r: r[1])[:keep] for k, v in found.items()}


def kernels(work_dir: str | Path, keys: set[str]) -> dict[str, dict]:
    """Each of ``keys``'s family and argument shapes, from the database's workloads."""
    from tvm.s_tir import meta_schedule as ms

    found = {}
    for entry in map(json.loads, filter(str.strip, (Path(work_dir) / WORKLOADS).read_text().splitlines())):
        if entry[0] in keys:
            mod = ms.database.Workload.from_json(entry).mod
            found[entry[0]] = {"family": siblings.family(mod), "shapes": siblings.arg_shapes(mod)}
    return found


def file_name(source: dict, target: dict) -> str:
    """``<device>-<cpu>-<model>-<HxW>-t<threads><variant>.json.gz``: one file per key."""
    h, w = source["input"]
    return (f"{source['device']}-{target.get('mcpu', 'generic')}-{source['model']}-{h}x{w}"
            f"-t{target.get('num-cores')}{source.get('variant', '')}{SUFFIX}")


def encode(work_dir: str | Path, target: dict, source: dict) -> bytes:
    """A store file's bytes: ``work_dir``'s best records, measured for ``target`` (the LLVM
    target as TVM exports it) by the run ``source`` describes. ValueError without records."""
    records = best_records(work_dir)
    if not records:
        raise ValueError(f"{work_dir} has no successful tuning record to store")
    plain = {k: v if isinstance(v, (str, int, float)) else [str(x) for x in v] for k, v in target.items()
             if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores")}
    data = {"format": FORMAT, "tvm": tvm.__version__, "source": source, "target": plain,
            "features": features(plain), "records": {k: [[t, round(ms, 6)] for t, ms in v] for k, v in records.items()},
            "kernels": kernels(work_dir, set(records))}
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0)
