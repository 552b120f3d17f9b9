"""``make tune`` / ``ppmseg tune``: tune PP-MobileSeg's kernels for a device through its
tracker, build the untuned and tuned libraries, check they agree, measure both, report.

The job holds its work directory's lock, resumes from the database there, and stops the
local RPC processes it started however it ends. Its steps are in ``pipeline.tune.steps``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.paths import BUILD
from pipeline.common.shapes import size_text
from pipeline.compile.passes import SHIPPED, GraphOptions
from pipeline.tune.signals import handling, interrupt
from pipeline.tune.workdir import WorkDir

# Every kernel of the network is tuned: the first round gives each of Tiny's ~110 tasks a
# batch of 8, the rest goes where MetaSchedule's gradient says. Base needs more to reach
# 0.8x ONNX Runtime on one thread (docs/benchmarks.md#against-onnx-runtime); both take about
# an hour on a 2-core machine.
DEFAULT_TRIALS = {"tiny": 1600, "base": 2000}
# Started from the records store (steps.warm_start), the search adds this many trials to
# the re-measured records (the heaviest kernels get a round or two more; grown in proportion
# with the kernels other input sizes add), plus the from-scratch budget's share of the kernels
# the store had nothing for.
WARM_TRIALS = {"tiny": 160, "base": 200}
# ``--search`` (steps.plan): "plain" gives the whole budget to one MetaSchedule call over every
# kernel (its own task scheduler); "focused" gives every kernel a first round, then the rest of
# the budget to the heaviest; "light" is plain with a smaller evolutionary search per round
# (steps.EVOLUTION). Plain is the default: it tuned both models faster than focused in the
# ablation (docs/benchmarks.md).
SEARCHES = ("plain", "focused", "light")
DEFAULT_SEARCH = "plain"  # the other searches tune in work directories of their own
# The libraries a report compares are timed in this many rounds, each in turn, one run each;
# with 36 rounds the 99% interval of pipeline.common.noise lies between the 10th and the 27th
# round's ratio, so bursts of other work in a quarter of the rounds do not widen it.
MEASURE_ROUNDS = 36
# How long tuning waits for a server with the device's key to come back before it stops.
DEVICE_WAIT = float(os.environ.get("PPMSEG_DEVICE_WAIT", 300))


@dataclass(frozen=True)
class TuneRequest:
    model: str = "tiny"
    device: str = "host"
    trials: int | None = None  # default: the model's DEFAULT_TRIALS
    input_size: tuple[int, int] = (512, 512)
    other_sizes: tuple[tuple[int, int], ...] = ()  # more entries of the library (pipeline.common.shapes)
    tracker: str | None = None  # host:port of the user's tracker; None: local (emulated) devices
    threads: int | None = None  # default: the device profile's
    weights: Path | None = None
    upsample: str = "vim"
    device_wait: float = DEVICE_WAIT  # seconds to wait for a lost device before stopping
    graph: GraphOptions = SHIPPED  # the graph passes (a work directory of their own unless default)
    profile: bool = True  # the latency profile by part of the network (two more builds)
    search: str = DEFAULT_SEARCH  # how the trials are spread over the kernels (SEARCHES)
    from_scratch: bool = False  # ignore the records store (a work directory of its own)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return (tuple(self.input_size), *self.other_sizes)

    @property
    def budget(self) -> int:
        """The trial budget from scratch: ``trials``, or the model's default (for one input
        size; ``scaled_budget`` grows it with the kernels other sizes add)."""
        return self.trials if self.trials is not None else DEFAULT_TRIALS[self.model]

    def scaled_budget(self, tasks: int, default_tasks: int) -> int:
        """The from-scratch budget of a library with ``tasks`` distinct kernels, where its
        default size alone has ``default_tasks``: the default budget grown in proportion."""
        return self.trials if self.trials is not None else round(self.budget * tasks / default_tasks)

    def warm_budget(self, remeasured: int, uncovered: float, tasks: int = 1, default_tasks: int = 1) -> int:
        """The trial budget of a run begun from the store with ``remeasured`` records, where
        the store had nothing for the share ``uncovered`` of the kernels."""
        if self.trials is not None:
            return self.trials
        return (remeasured + round(WARM_TRIALS[self.model] * tasks / default_tasks)
                + round(uncovered * self.scaled_budget(tasks, default_tasks)))

    @property
    def variant(self) -> str:
        """What the work directory's name adds: options other than the defaults get their own."""
        return (self.graph.suffix + ("" if self.search == DEFAULT_SEARCH else f"-{self.search}")
                + ("-scratch" if self.from_scratch else ""))

    def work_dir(self, threads: int, root: Path | None = None) -> WorkDir:
        """This run's work directory (its database) under ``root`` (default ./tuning)."""
        return WorkDir.of(self.model, self.device, self.sizes, threads, root, self.variant)

    def command(self, threads: int, budget: int | None = None) -> str:
        """The make command that repeats this run (whose trial budget was ``budget``, default
        the from-scratch one)."""
        return (f"make tune DEVICE={self.device} MODEL={self.model} TRIALS={budget or self.budget} "
                f"INPUT={size_text(self.sizes)} THREADS={threads}"
                + self.graph.make_args()
                + ("" if self.search == DEFAULT_SEARCH else f" SEARCH={self.search}")
                + (" FROM_SCRATCH=1" if self.from_scratch else ""))


@dataclass
class TuneResult:
    artifact: Path
    report: dict = field(default_factory=dict)


def run_tune(req: TuneRequest, log: Callable[[str], None] = print, work_root: Path | None = None,
             out_root: Path | None = None, rounds: int = MEASURE_ROUNDS,
             on_start: Callable[[], None] = lambda: None, peer: Callable | None = None) -> TuneResult:
    """The whole job; returns the tuned artifact directory (with ``untuned/`` and the report).
    One run per work directory at a time; the local RPC processes it started are stopped
    when it ends, however it ends. ``peer`` runs ONNX Runtime for the report's comparison
    (``steps.Run.peer``)."""
    from rpc.connect import connect_device
    from rpc.devices import load_profile

    threads = req.threads or load_profile(req.device).threads
    work = req.work_dir(threads, work_root)
    out_dir = (out_root or BUILD) / f"tuned-{work.path.name}"
    with work.locked():
        on_start()
        cut = work.repair()
        if cut:
            log(f"dropped a half-written database line ({cut} bytes) left by an interrupted run")
        device = connect_device(req.device, req.tracker, threads, log)
        try:
            work.check_target(device.tvm_target())
            with handling(interrupt, signal.SIGTERM):
                return _tune_and_report(req, device, work, out_dir, log, rounds, peer)
        except KeyboardInterrupt:
            log(f"interrupted: {work.path} keeps its {work.measured_trials()} records; "
                "run the same command again to resume")
            raise
        finally:
            device.release()


def _tune_and_report(req: TuneRequest, device, work: WorkDir, out_dir: Path,  # noqa: ANN001 - rpc.connect.Device
                     log: Callable[[str], None], rounds: int, peer: Callable | None) -> TuneResult:
    from model.weights import load_model
    from pipeline.compile.build import build_spec
    from pipeline.tune import steps

    t_start = time.perf_counter()
    model = load_model(req.model, req.weights)
    spec = build_spec(req.model, model, req.input_size, device.config, req.weights, req.upsample, graph=req.graph,
                      other_sizes=req.other_sizes)
    run = steps.Run(device, work, out_dir, model, spec, log, req.device_wait, t_start, peer=peer)
    with run.phase("import"):
        modules = steps.import_modules(run)
        tasks = steps.extract(run, modules)
    log(f"{len(tasks)} tasks in PP-MobileSeg-{req.model} {size_text(req.sizes)} for "
        f"{device.name}{' (emulated)' if device.emulated else ''}, {device.threads} thread(s)")
    with run.phase("untuned_tasks"):
        untuned = steps.untuned_timings(run, tasks)
    before = work.measured_trials()
    if before:
        log(f"resuming {work.path}: {before} trials already measured")
    with run.phase("warm_start"):
        prior = None if req.from_scratch else steps.warm_start(run, tasks)
    default_tasks = steps.default_entry_tasks(run, modules, tasks)
    run.budget = req.scaled_budget(len(tasks), default_tasks) if run.warm is None else req.warm_budget(
        run.warm["remeasured"], 1 - run.warm["tasks"] / len(tasks), len(tasks), default_tasks)
    with run.phase("search"):
        steps.search(run, tasks, untuned, run.budget, req.search, prior)
    log(f"{work.measured_trials()} trials in the database ({work.measured_trials() - before} new)")
    return _measure_and_report(run, req, modules, tasks, untuned, before, rounds)


def _entry_inputs(spec, model) -> dict:  # noqa: ANN001 - a BuildSpec and a PPMobileSeg
    """Each entry after the default: its ``main`` function and the sample photograph resized to it."""
    from model.image import normalize_image, read_image, sample_image_path
    from pipeline.compile.artifact import entry_functions

    image = read_image(sample_image_path())
    return {e["main"]: normalize_image(image, tuple(e["input_shape"][2:]), model.cfg.mean, model.cfg.std).numpy()
            for e in entry_functions(spec.sizes)[1:]}


def _measure_and_report(run, req: TuneRequest, modules: dict, tasks: list, untuned: dict[str, float],  # noqa: ANN001
                        before: int, rounds: int) -> TuneResult:
    """Build, check, measure and profile the libraries of a finished search, and write the report."""
    import torch

    from model.image import sample_image_path
    from pipeline.common.inputs import load_input
    from pipeline.tune import steps
    from pipeline.tune.crossing import onnxruntime_crossing
    from pipeline.tune.measure import time_tasks
    from pipeline.tune.parts import profile_parts
    from pipeline.tune.report import tuning_curve, tuning_report, write_report
    from schedules.padding import padding_placements

    device, work, model = run.device, run.work, run.model
    weights = str(Path(req.weights).resolve()) if req.weights else None
    with run.phase("builds"):
        built = steps.build_artifacts(run, modules, {"mode": device.config.mode, "emulated": device.emulated,
                                                     "linker": device.config.linker, "threads": device.threads,
                                                     "weights": weights})
    # Check and measure on the device, with a real photograph.
    x = load_input(sample_image_path(), model.cfg.mean, model.cfg.std, req.input_size).tensor.numpy()
    with torch.inference_mode():
        k_present = int(torch.unique(model(torch.from_numpy(x)).argmax(1)).numel())
    with run.phase("measure"):
        timings, labels, conditions = steps.measure(run, built, x, rounds)
        checks = steps.check(built["tuned"].meta, labels, x, weights)
        entries = steps.measure_entries(run, built, _entry_inputs(run.spec, model), max(3, rounds // 3), weights)
        memory = steps.resident_memory(run, built)
        tuned_tasks = time_tasks(device, tasks, work.path, work.library_path("tasks-tuned"))
    parts = []
    if req.profile:
        run.log("profiling the network part by part (untuned and tuned)")
        with run.phase("profile"):
            parts = profile_parts(device, model, x, run.spec, work)

    curve = tuning_curve(tasks, work, untuned, timings, run.clock)
    with run.phase("onnxruntime"):  # at the default size, so each probe builds that entry alone
        crossing = onnxruntime_crossing(run, modules.get("default", modules["main"]), curve, x,
                                        timings["untuned"]["median_ms"], built["tuned"].directory / "model.so",
                                        weights, before)
    padding = padding_placements(tasks, device.tvm_target(), work.path)
    report = tuning_report(run, req, tasks, timings, conditions, checks, untuned, tuned_tasks, parts, k_present,
                           before, curve, padding)
    report["entries"], report["memory"], report["onnxruntime"] = entries, memory, crossing
    write_report(run.out_dir, report)
    work.save_report(report)
    run.log(f"untuned {report['untuned']['median_ms']:.1f} ms, tuned {report['tuned']['median_ms']:.1f} ms "
            f"({report['speedup']:.2f}x) on {device.name}{' (EMULATED)' if device.emulated else ''}")
    return TuneResult(run.out_dir, report)
