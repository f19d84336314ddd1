"""Early stopping: asynchronous successive halving with one ladder of rungs per (teacher, student, method)."""

from __future__ import annotations

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from akd_ray.config import two_stage
from akd_ray.study.layout import METRIC, MODE, STAGE_BEST
from akd_ray.study.resumable import PickledState


def group_of(config: dict) -> tuple[str, str, str]:
    return config["teacher"], config["student"], config["method"]


def progress(method: str, result: dict) -> float | None:
    """Where a result stands on its group's ladder: the fraction of its judged stage done -- stage II
    for a two-stage method, the whole run otherwise -- counted in that trial's own stage length, so
    trials whose stage II differ in length (`stage1_fraction` is searched, and the lr schedule restarts
    per stage) meet at the same point of their own schedule.

    None, never compared: a stage-I result of a two-stage method (a student regressing onto
    phi(T) * teacher logits is not yet trained for the labels), the last epoch of the judged stage
    (stopping there would only throw away a result that is already in) and the final result.
    """
    if "stage_epoch" not in result or result.get("final"):
        return None
    if two_stage(method) and result["stage"] != 2:
        return None
    done, length = result["stage_epoch"] + 1, result["stage_epochs"]
    return done / length if done < length else None


class GroupedHalving(PickledState, FIFOScheduler):
    """Asynchronous successive halving (ASHA, Li et al. 2020) with one ladder of rungs per
    (teacher, student, method): a trial is only ever stopped for trailing trials of its own group.

    Rungs sit at fractions grace_period * reduction_factor^k / max_t of each trial's judged stage
    (see `progress`; max_t = train.epochs), and a trial is scored there by the best validation metric
    within that stage (`stage_best`). The first trial to reach a rung always passes; a later one is
    stopped when its score is below the (1 - 1/reduction_factor) quantile of the group's trials
    recorded at that rung so far.
    """

    def __init__(self, grace_period: int, reduction_factor: int, max_t: int, score: str = STAGE_BEST,
                 mode: str = MODE):
        super().__init__()
        # Tune checks that every result, the final one included, holds the scheduler's metric: that is
        # the study's METRIC; the rungs are scored by `score`, which only per-epoch results carry
        self._metric, self._mode, self.sign = METRIC, mode, 1.0 if mode == "max" else -1.0
        self.score = score
        self.reduction_factor = reduction_factor
        self.milestones: list[float] = []
        t = grace_period
        while t < max_t:  # a rung at the end would only stop trials that are done anyway
            self.milestones.append(t / max_t)
            t *= reduction_factor
        self.rungs: dict[tuple[str, str, str], dict[float, dict[str, float]]] = {}  # group -> rung -> trial -> score
        self.stopped: dict[str, tuple[tuple[str, str, str], float]] = {}  # trial -> (group, rung) it was stopped at

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # metric and mode are the study's own, set at construction

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        group = group_of(trial.config)
        t = progress(group[2], result)
        if t is None or self.score not in result:
            return TrialScheduler.CONTINUE
        ladder = self.rungs.setdefault(group, {m: {} for m in self.milestones})
        for milestone in reversed(self.milestones):  # the highest rung reached and not yet recorded
            recorded = ladder[milestone]
            if t < milestone or trial.trial_id in recorded:
                continue
            score = self.sign * result[self.score]
            cutoff = (float(np.quantile(list(recorded.values()), 1 - 1 / self.reduction_factor))
                      if recorded else None)
            recorded[trial.trial_id] = score
            if cutoff is not None and score < cutoff:
                self.stopped[trial.trial_id] = (group, milestone)
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"GroupedHalving: {len(self.rungs)} group(s), {len(self.stopped)} trial(s) stopped early"
