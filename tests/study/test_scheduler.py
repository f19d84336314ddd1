"""GroupedHalving: successive halving that only ever compares trials of one (teacher, student, method),
judges two-stage trials on stage II alone at fractions of their own stage II, and never stops a trial
at its last epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler

from akd_ray.study.layout import METRIC, STAGE_BEST
from akd_ray.study.scheduler import GroupedHalving
from akd_ray.study.search import Points

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
# arrival order within a group: the first two pass rung 2; the two weaker ones land under the median
OFFSETS = [0.03, 0.04, 0.01, 0.02]
EPOCHS = 8


def group_trainable(config: dict) -> None:
    """A KD trial whose validation metric is its group's level plus its own constant offset."""
    for epoch in range(EPOCHS):
        score = config["level"] + config["offset"]
        tune.report({"epoch": epoch, "stage": 1, "stage_epoch": epoch, "stage_epochs": EPOCHS, METRIC: score,
                     STAGE_BEST: score})
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


def result(epoch: int, stage: int, stage_epoch: int, value: float, stage_epochs: int = 8) -> dict:
    return {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch, "stage_epochs": stage_epochs,
            METRIC: value, STAGE_BEST: value}


def trial(trial_id: str, method: str = "annealing") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"teacher": "t", "student": "s", "method": method})


def annealing_epochs(stage1: int, stage2: int, score_1: float, score_2: float):
    """(epoch, result) of an annealing trial with `stage1` + `stage2` epochs."""
    for epoch in range(stage1 + stage2):
        if epoch < stage1:
            yield epoch, result(epoch, 1, epoch, score_1, stage1)
        else:
            yield epoch, result(epoch, 2, epoch - stage1, score_2, stage2)


def test_trials_with_different_stage_splits_are_judged_at_the_same_fraction_of_their_own_stage_two():
    scheduler = GroupedHalving(grace_period=2, reduction_factor=2, max_t=12)
    assert scheduler.milestones == [2 / 12, 4 / 12, 8 / 12]
    # `short`: stage1_fraction 1/6 -> 2 + 10 epochs; `long`: 1/2 -> 6 + 6 epochs
    short, long = trial("short"), trial("long")
    seen = {}  # rung -> the stage-II epochs `short` had done when it was recorded there
    for epoch, r in annealing_epochs(2, 10, 0.10, 0.95):
        assert scheduler.on_trial_result(None, short, r) == CONTINUE
        for rung, scores in scheduler.rungs.get(("t", "s", "annealing"), {}).items():
            if "short" in scores:
                seen.setdefault(rung, r["stage_epoch"] + 1)
    # stage I (scores 0.10) was never recorded; each rung at the first stage-II epoch past its fraction of 10
    assert seen == {2 / 12: 2, 4 / 12: 4, 8 / 12: 7}
    outcome = []
    for epoch, r in annealing_epochs(6, 6, 0.99, 0.30):  # a high stage-I score counts for nothing
        outcome.append((r["stage"], r["stage_epoch"], scheduler.on_trial_result(None, long, r)))
        if outcome[-1][2] == STOP:
            break
    # stopped at 1 of its 6 stage-II epochs: the same 1/6 of its own stage II at which `short` was judged
    assert outcome[-1] == (2, 0, STOP)
    assert all(decision == CONTINUE for stage, _, decision in outcome if stage == 1)
    assert scheduler.stopped["long"] == (("t", "s", "annealing"), 2 / 12)


def test_the_score_is_the_best_validation_metric_within_stage_two():
    scheduler = GroupedHalving(grace_period=2, reduction_factor=2, max_t=12)
    r = result(7, 2, 1, 0.5, stage_epochs=10)
    r[METRIC] = 0.99  # the best over the whole trial, stage I included: not what is judged
    scheduler.on_trial_result(None, trial("a"), r)
    assert scheduler.rungs[("t", "s", "annealing")][2 / 12] == {"a": 0.5}


def test_no_trial_is_stopped_at_its_last_epoch():
    scheduler = GroupedHalving(grace_period=1, reduction_factor=2, max_t=4)
    assert scheduler.milestones == [0.25, 0.5]
    for epoch in range(3):  # a strong KD trial of 4 epochs records both rungs
        scheduler.on_trial_result(None, trial("strong", "kd"), result(epoch, 1, epoch, 0.9, stage_epochs=4))
    # a weak KD trial of 2 epochs: its first epoch is half of it, judged at rung 1/2 and stopped
    assert scheduler.on_trial_result(None, trial("weak", "kd"), result(0, 1, 0, 0.1, stage_epochs=2)) == STOP
    # a weak trial whose judged stage is one epoch long: that epoch is its last, so it is never judged
    assert scheduler.on_trial_result(None, trial("one", "kd"), result(0, 1, 0, 0.1, stage_epochs=1)) == CONTINUE
    # nor is any trial's last epoch, however weak
    assert scheduler.on_trial_result(None, trial("last", "kd"), result(3, 1, 3, 0.1, stage_epochs=4)) == CONTINUE
    assert "one" not in scheduler.stopped and "last" not in scheduler.stopped


def test_groups_have_their_own_ladders_and_the_final_result_is_never_judged():
    scheduler = GroupedHalving(grace_period=1, reduction_factor=2, max_t=8)
    assert scheduler.milestones == [1 / 8, 2 / 8, 4 / 8]
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
    assert restored.rungs == scheduler.rungs and restored.stopped == {"kd-b": (("t", "s", "kd"), 1 / 8)}
    # a resumed study keeps judging against what the group recorded before
    assert restored.on_trial_result(None, trial("kd-c", "kd"), result(0, 1, 0, 0.6)) == STOP
