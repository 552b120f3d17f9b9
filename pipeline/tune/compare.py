"""``ppmseg report A B ...``: the tuned libraries of several tuning reports timed against each
other, interleaved, on their device. Their reports' own end-to-end numbers were measured in
separate runs, often hours apart, so a difference between them may be the machine's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.common.noise import difference
from pipeline.tune.job import MEASURE_ROUNDS


def unmeasurable(reports: list[dict], tracker: str | None) -> str | None:
    """Why the reports' libraries cannot be timed against each other here, or None."""
    for key in ("device", "threads", "input_size", "model"):
        if len({str(r.get(key)) for r in reports}) > 1:
            return f"the reports differ in {key}"
    if reports[0].get("device") != "host" and not reports[0].get("emulated") and not tracker:
        return f"the libraries are for a phone ({reports[0].get('device')}): give --tracker to time them on it"
    missing = [r.get("artifact") or "?" for r in reports
               if not r.get("artifact") or not (Path(r["artifact"]) / "model.so").is_file()]
    if missing:
        return f"no tuned library at {', '.join(missing)}"
    return None


def measure_reports(reports: list[dict], names: list[str], tracker: str | None = None,
                    rounds: int = MEASURE_ROUNDS, log: Callable[[str], None] = print) -> dict:
    """Each report's tuned library timed interleaved on the reports' device; returns the timings
    per column, the conditions, and each column against the first
    (``pipeline.common.noise.Difference.as_dict``)."""
    from model.image import sample_image_path
    from model.pp_mobileseg import get_config
    from pipeline.common.inputs import load_input
    from pipeline.tune.measure import measure_interleaved
    from rpc.connect import connect_device

    first = reports[0]
    cfg = get_config(first["model"])
    x = load_input(sample_image_path(), cfg.mean, cfg.std, tuple(first["input_size"])).tensor.numpy()
    device = connect_device(first["device"], tracker, first["threads"], log)
    try:
        log(f"timing the {len(reports)} tuned libraries against each other on {device.name}, interleaved "
            f"({rounds} rounds)")
        libraries = {n: Path(r["artifact"]) / "model.so" for n, r in zip(names, reports, strict=True)}
        timings, _, conditions = measure_interleaved(device, libraries, x, rounds)
    finally:
        device.release()
    return {"timings": timings, "conditions": conditions,
            "differences": {n: difference(n, names[0], timings[n]["rounds_ms"], timings[names[0]]["rounds_ms"])
                            .as_dict() for n in names[1:]}}
