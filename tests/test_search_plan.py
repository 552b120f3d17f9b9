"""How a tuning run spreads its trials over the kernels (``--search focused|plain``) and where
each search keeps its database; the search itself runs end to end in tests/test_tune.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.compile.passes import GraphOptions
from pipeline.tune.job import TuneRequest
from pipeline.tune.steps import FIRST_ROUND, plan, reachable


@dataclass(frozen=True)
class Task:  # what the plan reads of MetaSchedule's ExtractedTask
    task_name: str
    weight: int


# untuned ms per call times calls: c 6, a 4, d 3, b 1 (of 14)
TASKS = [Task("a", 2), Task("b", 1), Task("c", 3), Task("d", 1)]
UNTUNED = {"a": 2.0, "b": 1.0, "c": 2.0, "d": 3.0}


def _names(tasks: list) -> list[str]:
    return [t.task_name for t in tasks]


def test_plain_is_one_phase_over_every_kernel_heaviest_first():
    (phase,) = plan("plain", TASKS, 100, dict.fromkeys("abcd", 0), UNTUNED, lambda: UNTUNED)
    assert phase.budget == 100 and "task scheduler over all of them" in phase.kernels
    assert _names(phase.group()) == ["c", "a", "d", "b"]


def test_focused_gives_a_first_round_then_the_heaviest_by_what_is_measured_by_then():
    measured = dict(UNTUNED)
    done = {"a": FIRST_ROUND, "b": 0, "c": 0, "d": 3}  # a has had its round; d is short of one
    first, second = plan("focused", TASKS, 100, done, UNTUNED, lambda: measured)
    assert first.budget == 3 * FIRST_ROUND and _names(first.group()) == ["c", "d", "b"]
    assert second.budget == 100 - sum(done.values()) - first.budget
    measured["c"] = 0.1  # the first round made c fast: the second phase is chosen after it
    assert _names(second.group()) == ["a", "d"]  # 4 + 3 of 8.3: the fewest holding 80 %


def test_records_in_the_database_count_against_the_budget():
    done = dict.fromkeys("abcd", 30)
    assert [p.budget for p in plan("focused", TASKS, 100, done, UNTUNED, lambda: UNTUNED)] == [0, 0]
    assert [p.budget for p in plan("plain", TASKS, 130, done, UNTUNED, lambda: UNTUNED)] == [10]


def test_a_small_budget_is_not_spread_over_kernels_it_cannot_reach():
    assert _names(reachable(TASKS, 8)) == ["a"] and reachable(TASKS, 0) == []
    assert len(reachable(TASKS, 1000)) == len(TASKS)


def test_each_search_and_graph_option_tunes_in_a_work_directory_of_its_own(tmp_path: Path):
    def work(req: TuneRequest) -> str:
        return req.work_dir(1, tmp_path).path.name

    plain, focused = TuneRequest(input_size=(64, 96)), TuneRequest(input_size=(64, 96), search="focused")
    both = TuneRequest(input_size=(64, 96), search="focused", graph=GraphOptions(blocked=False))
    assert [work(r) for r in (plain, focused, both)] == ["tiny-host-64x96-t1", "tiny-host-64x96-t1-focused",
                                                         "tiny-host-64x96-t1-nchw-focused"]
    assert plain.command(1) == "make tune DEVICE=host MODEL=tiny TRIALS=1600 INPUT=64x96 THREADS=1"
    assert focused.command(1).endswith(" THREADS=1 SEARCH=focused")
    assert both.command(1).endswith(" LAYOUT=nchw SEARCH=focused")
    fused = TuneRequest(input_size=(64, 96), graph=GraphOptions(fused=True))
    assert work(fused) == "tiny-host-64x96-t1-fused" and fused.command(1).endswith(" THREADS=1 FUSE=on")



def test_the_default_budget_is_the_models_and_the_command_repeats_it():
    assert TuneRequest(model="tiny").budget == 1600 and TuneRequest(model="base").budget == 2000
    assert " TRIALS=2000 " in TuneRequest(model="base").command(1)
    assert TuneRequest(model="base", trials=0).budget == 0  # 0 trials: build what the database has
    assert " TRIALS=24 " in TuneRequest(model="base", trials=24).command(1)


def test_a_warm_start_budget_gives_uncovered_kernels_their_share_of_a_search_from_scratch():
    """Begun from the store: the re-measured records, a few rounds more, and for the kernels
    the store had nothing for (Base from Tiny's records shares 13 of 104), their share of the
    from-scratch budget; --trials still sets the total. The command names the budget used."""
    tiny, base = TuneRequest(model="tiny"), TuneRequest(model="base")
    assert tiny.warm_budget(202, 0.0) == 202 + 160
    assert base.warm_budget(26, 91 / 104) == 26 + 200 + 1750
    assert TuneRequest(model="base", trials=500).warm_budget(26, 0.5) == 500
    assert " TRIALS=362 " in tiny.command(1, tiny.warm_budget(202, 0.0))
    scratch = TuneRequest(from_scratch=True)
    assert scratch.work_dir(1).path.name == "tiny-host-512x512-t1-scratch"
    assert scratch.command(1).endswith(" FROM_SCRATCH=1")


def test_several_input_sizes_grow_the_budget_with_their_distinct_kernels():
    """A library of several sizes gets the default budget in proportion to its distinct kernels
    (the default size alone: the budget as before); kernels shared between sizes count once.
    --trials still sets the total, and the work directory and command name every size."""
    phone = TuneRequest(model="tiny", other_sizes=((512, 704), (704, 512)))
    assert phone.scaled_budget(105, 105) == 1600 and phone.scaled_budget(294, 105) == 4480
    assert phone.warm_budget(202, 189 / 294, 294, 105) == 202 + 448 + 2880
    assert TuneRequest(trials=300, other_sizes=((512, 704),)).scaled_budget(294, 105) == 300
    assert phone.work_dir(1).path.name == "tiny-host-512x512+512x704+704x512-t1"
    assert " INPUT=512x512,512x704,704x512 " in phone.command(1)
