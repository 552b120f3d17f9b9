"""The records store's front: export a finished run's best records into it (or to a file a
team shares), import such a file, list what it holds. The file format and the rules for
using a file are ``schedules.store``'s."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.files import atomic_path
from pipeline.tune.workdir import WorkDir, tuning_tag


def source_of(work: WorkDir) -> dict:
    """Where a work directory's records come from, from its last report (a finished run)."""
    r = work.report()
    if not r:
        raise ValueError(f"{work.path} has no report.json: export the records of a finished run (make tune)")
    if r.get("emulated"):
        raise ValueError(f"{work.path} was measured under qemu, not on a phone: emulated records are never "
                         "stored (tune with TRACKER= and your phones)")
    h, w = r["input_size"]
    tag = tuning_tag(r["model"], r["device"], [tuple(s) for s in r.get("input_sizes", [[h, w]])], r["threads"])
    return {"model": r["model"], "device": r["device"], "input": [h, w], "threads": r["threads"],
            "variant": work.path.name.removeprefix(tag), "trials": r["trials"], "date": r["date"],
            "emulated": False, "tuned_ms": round(r["tuned"]["median_ms"], 3)}


def export_records(work_dir: Path, out: Path | None = None) -> Path:
    """Write ``work_dir``'s best records as a store file: into the store (``out`` None) or
    to ``out``. Returns the path written."""
    from schedules import store, tuning

    work = WorkDir(Path(work_dir))
    source = source_of(work)
    target = tuning.record_target(work.path)
    data = store.encode(work.path, target, source)
    path = Path(out) if out is not None else store.store_dir() / store.file_name(source, target)
    _write(path, data)
    return path


def import_records(path: Path) -> Path:
    """Copy a records file (``export_records``'s) into the store, replacing the file of the
    same key. Returns where it went."""
    from schedules import store

    loaded = store.load(path)
    if loaded.source.get("emulated"):
        raise ValueError(f"{path} holds emulated (qemu) records, which are never stored")
    dest = store.store_dir() / store.file_name(loaded.source, loaded.target)
    _write(dest, Path(path).read_bytes())
    return dest


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # a file to commit or to share, not a private temporary


def store_rows(target) -> list[dict]:  # noqa: ANN001 - tvm.target.Target, imported lazily
    """Each store file with its source and whether it serves ``target`` (why not, if not)."""
    from schedules import store

    wanted, have = dict(target.export()), set(store.features(target))
    return [{"file": f.path.name, "source": f.source, "workloads": len(f.records),
             "records": sum(map(len, f.records.values())), "unusable": f.usable_for(wanted, have)}
            for f in store.store_files()]
