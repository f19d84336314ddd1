"""GroupedHalving: successive halving that only ever compares trials of one (teacher, student, method),
and never a two-stage trial in stage I with one in stage II."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler

from akd_ray.study.layout import METRIC
from akd_ray.study.scheduler import GroupedHalving
from akd_ray.study.search import Points

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
# arrival order within a group: the first two pass rung 2; the two weaker ones land under the median
OFFSETS = [0.03, 0.04, 0.01, 0.02]
EPOCHS = 8


def group_trainable(config: dict) -> None:
    """A KD trial whose validation metric is its group's level plus its own constant offset."""
    for epoch in range(EPOCHS):
        tune.report({"epoch": epoch, "stage": 1, "stage_epoch": epoch, METRIC: config["level"] + config["offset"]})
    tune.report({"final": 1, METRIC: config["level"] + config["offset"]})


@pytest.mark.slow
def test_trials_are_only_stopped_by_their_own_group(local_ray, tmp_path):
    # the strong group's trials all run first: a scheduler shared by both groups would stop every weak trial
    points = [{"teacher": "t", "student": student, "method": "kd", "level": level, "offset": offset}
              for student, level in (("strong", 0.9), ("weak", 0.1)) for offset in OFFSETS]
    tuner = tune.Tuner(
        group_trainable,
        tune_config=tune.TuneConfig(search_alg=Points(points), num_samples=len(points), max_concurrent_trials=1,
                                    scheduler=GroupedHalving(grace_period=2, reduction_factor=2, max_t=EPOCHS),
                                    metric=METRIC, mode="max"),
        run_config=tune.RunConfig(name="halving", storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    outcome = {(r.config["student"], r.config["offset"]): bool(r.metrics.get("final")) for r in grid}
    for student in ("strong", "weak"):
        finished = {o for o in OFFSETS if outcome[(student, o)]}
        assert finished == {0.03, 0.04}, student  # within each group the weaker half is stopped at rung 2
    stopped_at = {r.config["offset"]: r.metrics["epoch"] for r in grid if not r.metrics.get("final")}
    assert set(stopped_at.values()) == {1}  # at the first rung: 2 epochs done


def result(epoch: int, stage: int, stage_epoch: int, value: float) -> dict:
    return {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch, METRIC: value}


def trial(trial_id: str, method: str = "annealing") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"teacher": "t", "student": "s", "method": method})


def test_an_annealing_trial_in_stage_one_is_never_compared_with_one_in_stage_two():
    scheduler = GroupedHalving(grace_period=2, reduction_factor=2, max_t=12)
    early, late = trial("early"), trial("late")  # early: 2 stage-I epochs; late: 8 of them
    # `early` is in stage II from epoch 2 and scores high there: at epoch 4 it holds rung 2
    for epoch in range(6):
        stage, stage_epoch = (1, epoch) if epoch < 2 else (2, epoch - 2)
        assert scheduler.on_trial_result(None, early, result(epoch, stage, stage_epoch, 0.95)) == CONTINUE
    # `late` is still regressing onto the teacher at epochs 0-7 with a far lower metric: never compared
    for epoch in range(8):
        assert scheduler.on_trial_result(None, late, result(epoch, 1, epoch, 0.20)) == CONTINUE
    assert "late" not in scheduler.rungs[("t", "s", "annealing")][2]
    # in stage II it is compared at the same stage-II epoch as `early` was, and stopped there
    assert scheduler.on_trial_result(None, late, result(8, 2, 0, 0.30)) == CONTINUE
    assert scheduler.on_trial_result(None, late, result(9, 2, 1, 0.30)) == STOP
    assert scheduler.stopped["late"] == (("t", "s", "annealing"), 2)


def test_groups_have_their_own_ladders_and_the_final_result_is_never_judged():
    scheduler = GroupedHalving(grace_period=1, reduction_factor=2, max_t=8)
    assert scheduler.milestones == [1, 2, 4]
    assert scheduler.on_trial_result(None, trial("kd-a", "kd"), result(0, 1, 0, 0.9)) == CONTINUE
    # another method of the same pair is another group: its first trial passes whatever it scores
    assert scheduler.on_trial_result(None, trial("scratch-a", "scratch"), result(0, 2, 0, 0.1)) == CONTINUE
    assert scheduler.on_trial_result(None, trial("kd-b", "kd"), result(0, 1, 0, 0.5)) == STOP
    assert scheduler.on_trial_result(None, trial("kd-c", "kd"), {"final": 1, METRIC: 0.1}) == CONTINUE


def test_the_ladders_survive_a_save_and_restore(tmp_path):
    scheduler = GroupedHalving(grace_period=1, reduction_factor=2, max_t=8)
    scheduler.on_trial_result(None, trial("kd-a", "kd"), result(0, 1, 0, 0.9))
    scheduler.on_trial_result(None, trial("kd-b", "kd"), result(0, 1, 0, 0.5))
    scheduler.save(str(tmp_path / "scheduler.pkl"))
    restored = GroupedHalving(grace_period=1, reduction_factor=2, max_t=8)
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert restored.rungs == scheduler.rungs and restored.stopped == {"kd-b": (("t", "s", "kd"), 1)}
    # a resumed study keeps judging against what the group recorded before
    assert restored.on_trial_result(None, trial("kd-c", "kd"), result(0, 1, 0, 0.6)) == STOP
