"""The verdict per pair, from hand-made confirmation rows: the pick, its intervals (checked against
scipy), and the wordings for "scratch is best", "cannot tell" and "too few seeds"."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from scipy import stats

from akd_ray.config import load_study
from akd_ray.report import judge, mean_interval, welch_interval, write_report

SPACE = {"params": {
    "tau_max": {"type": "int", "low": 2, "high": 6, "methods": ["annealing"]},
    "schedule": {"type": "categorical", "choices": ["step", "cosine"], "methods": ["annealing"]},
    "alpha": {"type": "float", "low": 0.1, "high": 0.9, "methods": ["kd"]},
    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
}}
PARAMS = {"annealing": {"tau_max": 4, "schedule": "cosine", "lr": 0.005}, "kd": {"alpha": 0.3, "lr": 0.004},
          "scratch": {"lr": 0.006}}


@pytest.fixture
def study(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "rep", "task": {"name": "digits"},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [64]}}},
        "students": {"small": {"kind": "mlp", "hidden": [4]}, "tiny": {"kind": "mlp", "hidden": [2]}},
        "train": {"epochs": 12},
        "search": {"space": "space.yaml", "trials": {"scratch": 1, "kd": 2, "annealing": 2}}}))
    return load_study(tmp_path / "s.yaml")


def rows_for(student: str, confirm: dict[str, list[float]], search_only: bool = False) -> list[dict]:
    """Search rows (the best per method carries PARAMS) and confirmation rows with the given test metrics."""
    rows = []
    for method, values in confirm.items():
        rows.append({"teacher": "big", "student": student, "method": method, "phase": "search", "seed": None,
                     "params": PARAMS[method], "finished": True, "val_best": 0.9, "test_metric": max(values),
                     "student_parameters": 310})
        rows.append({"teacher": "big", "student": student, "method": method, "phase": "search", "seed": None,
                     "params": {**PARAMS[method], "lr": 0.001}, "finished": False, "stopped": True,
                     "val_best": 0.5})
        if not search_only:
            rows += [{"teacher": "big", "student": student, "method": method, "phase": "confirm", "seed": i + 1,
                      "params": PARAMS[method], "finished": True, "val_best": 0.9, "test_metric": v}
                     for i, v in enumerate(values)]
    return rows


ANNEALING_WINS = {"annealing": [0.912, 0.921, 0.917, 0.925], "kd": [0.899, 0.905, 0.897, 0.903],
                  "scratch": [0.905, 0.930, 0.890, 0.915]}


def test_intervals_match_scipy():
    a, b = ANNEALING_WINS["annealing"], ANNEALING_WINS["kd"]
    mean, std, low, high = mean_interval(a)
    assert mean == pytest.approx(sum(a) / 4) and std == pytest.approx(stats.tstd(a))
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(a)))
    diff, low, high = welch_interval(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 4 - sum(b) / 4)
    assert (low, high) == pytest.approx((welch.low, welch.high))


def test_the_best_method_is_recommended_with_its_config_and_compared_by_welch(study):
    v = judge(study, "big", "small", rows_for("small", ANNEALING_WINS))
    assert v.best == "annealing"
    assert v.methods["annealing"].config == {"tau_max": 4, "schedule": "cosine", "stage1_fraction": 0.5, "lr": 0.005}
    assert v.methods["kd"].config == {"alpha": 0.3, "kd_temperature": 4.0, "lr": 0.004}
    assert v.methods["annealing"].n == 4 and v.methods["annealing"].stopped == 1
    kd = stats.ttest_ind(ANNEALING_WINS["annealing"], ANNEALING_WINS["kd"], equal_var=False).confidence_interval()
    assert v.differences["kd"][1:] == pytest.approx((kd.low, kd.high))
    assert kd.low > 0  # annealing is ahead of KD beyond the interval...
    scratch = stats.ttest_ind(ANNEALING_WINS["annealing"], ANNEALING_WINS["scratch"],
                              equal_var=False).confidence_interval()
    assert scratch.low < 0 < scratch.high  # ...but not of scratch
    assert not v.decided
    d, lo, hi = (100 * x for x in (sum(ANNEALING_WINS["annealing"]) / 4 - sum(ANNEALING_WINS["kd"]) / 4,
                                   kd.low, kd.high))
    assert v.text == (f"Annealing-KD tau_max 4, cosine: {d:+.1f} points over KD (95% CI {lo:+.1f}…{hi:+.1f}); "
                      f"within noise of scratch ({100 * v.differences['scratch'][0]:+.1f}, 95% CI "
                      f"{100 * scratch.low:+.1f}…{100 * scratch.high:+.1f})")


def test_scratch_is_best_says_distillation_does_not_help(study):
    v = judge(study, "big", "small", rows_for("small", {
        "annealing": [0.91, 0.92, 0.90], "kd": [0.88, 0.89, 0.885], "scratch": [0.955, 0.96, 0.95]}))
    assert v.best == "scratch" and v.decided
    assert v.text == "scratch is best: distillation does not help this pair"


def test_scratch_within_noise_of_a_method_is_not_a_clear_win(study):
    v = judge(study, "big", "small", rows_for("small", {
        "annealing": [0.90, 0.96, 0.93], "kd": [0.80, 0.81, 0.805], "scratch": [0.95, 0.94, 0.945]}))
    assert v.best == "scratch" and not v.decided
    assert v.text == ("scratch has the best mean and cannot be told from Annealing-KD: distillation does not "
                      "clearly help this pair")


def test_fewer_than_three_seeds_is_too_few_to_tell(study):
    v = judge(study, "big", "small", rows_for("small", {
        "annealing": [0.95, 0.96], "kd": [0.80, 0.81], "scratch": [0.70, 0.71]}))
    assert v.best == "annealing" and not v.decided
    assert "too few seeds to tell (n = 2" in v.text


def test_search_only_results_cannot_tell_and_pick_by_validation(study):
    rows = rows_for("small", ANNEALING_WINS, search_only=True)
    for r in rows:  # scratch has the best test score, KD the best validation score
        r["val_best"] = {"kd": 0.95, "annealing": 0.93, "scratch": 0.90}[r["method"]] if r["finished"] else 0.5
    v = judge(study, "big", "small", rows)
    assert v.best == "kd" and not v.decided and v.text.endswith("cannot tell")
    assert all(not r.confirmed and r.n == 1 for r in v.methods.values())


def test_a_pair_without_a_finished_trial_is_reported_never_a_crash(study, tmp_path):
    failed = [{"teacher": "big", "student": "tiny", "method": m, "phase": "search", "seed": None, "params": {},
               "finished": False, "stopped": False, "error": "FloatingPointError: loss became nan"}
              for m in ("scratch", "kd", "annealing")]
    rows = rows_for("small", ANNEALING_WINS) + failed
    v = judge(study, "big", "tiny", rows)
    assert v.best is None and v.text == "no trial finished for this pair (3 failed, 0 stopped early): no verdict"
    quality = {"big": {"metric": "accuracy", "val": 0.97, "test": 0.96, "majority_val": 0.1, "majority_test": 0.1}}
    files = write_report(study, rows, tmp_path / "report", quality)
    assert {f.name for f in files} >= {"pairs.md", "pairs.csv", "summary.txt", "capacity_gap.png", "teachers.json"}
    md = (tmp_path / "report/pairs.md").read_text()
    assert "no trial finished for this pair" in md and "majority class val 10.00" in md
    with open(tmp_path / "report/pairs.csv") as f:
        table = {r["student"]: r for r in csv.DictReader(f)}
    assert table["small"]["recommended"] == "annealing" and table["tiny"]["recommended"] == ""
    assert json.loads(table["small"]["config"])["tau_max"] == 4
    assert math.isclose(float(table["small"]["annealing_ci_low"]), mean_interval(ANNEALING_WINS["annealing"])[2])
    summary = (tmp_path / "report/summary.txt").read_text()
    assert "big → small: use Annealing-KD tau_max 4, cosine" in summary
