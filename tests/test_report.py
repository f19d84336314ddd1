"""The verdict per pair, from hand-made rows: the pick is made on validation (test only reported), a
near-tie recommends the cheaper method, test differences by the paired bootstrap (hand-made
predictions files) or the paired t-interval, Holm-corrected; failures, missing methods, a weak teacher
and a family's one size are named; the files, the budget curves and the summary's wording."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from akd_ray import stats
from akd_ray.config import load_study
from akd_ray.report import write_report
from akd_ray.verdict import judge

SPACE = {"params": {
    "tau_max": {"type": "int", "low": 2, "high": 6, "methods": ["annealing"]},
    "schedule": {"type": "categorical", "choices": ["step", "cosine"], "methods": ["annealing"]},
    "alpha": {"type": "float", "low": 0.1, "high": 0.9, "methods": ["kd"]},
    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
}}
PARAMS = {"annealing": {"tau_max": 4, "schedule": "cosine", "lr": 0.005}, "kd": {"alpha": 0.3, "lr": 0.004},
          "scratch": {"lr": 0.006}}
QUALITY = {"big": {"metric": "accuracy", "val": 0.97, "test": 0.96, "majority_val": 0.1, "majority_test": 0.1}}


@pytest.fixture
def study(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "rep", "task": {"name": "digits"},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [64]}}},
        "students": {"small": {"kind": "mlp", "hidden": [4]}, "tiny": {"kind": "mlp", "hidden": [2]}},
        "train": {"epochs": 12},
        "search": {"space": "space.yaml", "trials": 2}}))
    return load_study(tmp_path / "s.yaml")


def rows_for(student: str, val: dict[str, list[float]], test: dict[str, list[float]] | None = None,
             search_only: bool = False) -> list[dict]:
    """Search rows (the best per method carries PARAMS) and one confirmation row per seed with the given
    validation and test metrics (test: the validation values when not given); None = a failed seed."""
    test = test or val
    rows = []
    for method, values in val.items():
        done = [v for v in values if v is not None]
        rows.append({"teacher": "big", "student": student, "method": method, "phase": "search", "seed": None,
                     "params": PARAMS[method], "finished": True, "val_best": max(done) if done else 0.9,
                     "test_metric": max(t for t in test[method] if t is not None) if done else 0.9,
                     "student_parameters": 310})
        rows.append({"teacher": "big", "student": student, "method": method, "phase": "search", "seed": None,
                     "params": {**PARAMS[method], "lr": 0.001}, "finished": False, "stopped": True,
                     "val_best": 0.5})
        if not search_only:
            rows += [{"teacher": "big", "student": student, "method": method, "phase": "confirm", "seed": i + 1,
                      "params": PARAMS[method], "finished": v is not None, "val_best": v, "test_metric": t,
                      "error": None if v is not None else "FloatingPointError: loss became nan"}
                     for i, (v, t) in enumerate(zip(values, test[method]))]
    return rows


# annealing ahead on validation in every seed, by much more than the seed-to-seed spread
AHEAD = {"annealing": [0.951, 0.955, 0.949, 0.953], "kd": [0.900, 0.905, 0.897, 0.903],
         "scratch": [0.905, 0.911, 0.899, 0.907]}


def test_the_pick_follows_validation_when_test_disagrees(study):
    # scratch has the best test mean, Annealing-KD the best validation mean: the pick is Annealing-KD
    test = {"annealing": [0.900, 0.915, 0.898, 0.907], "kd": [0.890, 0.900, 0.893, 0.899],
            "scratch": [0.950, 0.962, 0.948, 0.958]}
    v = judge(study, "big", "small", rows_for("small", AHEAD, test))
    assert v.best == "annealing" and v.decided and v.tied == ["annealing"]
    assert v.methods["annealing"].val == pytest.approx(np.mean(AHEAD["annealing"]))
    assert v.methods["annealing"].mean == pytest.approx(0.905)  # test is reported, not used
    assert v.methods["annealing"].config == {"tau_max": 4, "schedule": "cosine", "stage1_fraction": 0.5, "lr": 0.005}
    assert v.text.startswith("Annealing-KD tau_max 4, cosine is best on validation, ahead of every other method; "
                             "on test: ")
    assert "points below scratch" in v.text  # and the report says test disagrees
    # no predictions saved: the test differences are paired t-intervals over seeds, Holm-corrected
    kd = sps.ttest_rel(test["annealing"], test["kd"])
    h = stats.holm([sps.ttest_rel(test["annealing"], test[m]).pvalue for m in ("kd", "scratch")])
    assert v.comparisons["kd"].pvalue == pytest.approx(h.adjusted[0]) and v.comparisons["kd"].test == "paired t"
    ci = kd.confidence_interval(1 - h.alpha[0])
    assert (v.comparisons["kd"].low, v.comparisons["kd"].high) == pytest.approx((ci.low, ci.high))
    assert v.levels["kd"] == pytest.approx(1 - h.alpha[0])


def test_a_near_tie_on_validation_recommends_the_cheaper_method_and_says_so(study):
    val = {"annealing": [0.912, 0.921, 0.917, 0.925], "kd": [0.910, 0.925, 0.905, 0.915],
           "scratch": [0.800, 0.810, 0.805, 0.808]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert max(v.methods, key=lambda m: v.methods[m].val) == "annealing"
    assert v.best == "kd" and not v.decided and v.tied == ["annealing", "kd"]
    assert v.text.startswith("no method is clearly better on validation: KD cannot be told from Annealing-KD; KD, "
                             "the cheapest of them, is recommended; on test:")


def test_scratch_clearly_best_on_validation_says_distillation_does_not_help(study):
    val = {"annealing": [0.91, 0.92, 0.90], "kd": [0.88, 0.89, 0.885], "scratch": [0.955, 0.96, 0.95]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert v.best == "scratch" and v.decided
    assert v.text.startswith("scratch is best on validation: distillation does not help this pair; on test:")


def test_scratch_tied_with_a_method_is_not_a_clear_win(study):
    val = {"annealing": [0.90, 0.96, 0.93], "kd": [0.80, 0.81, 0.805], "scratch": [0.95, 0.94, 0.945]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert v.best == "scratch" and not v.decided and "annealing" in v.tied
    assert ("scratch, the cheapest of them, is recommended: distillation does not clearly help this pair"
            in v.text)


def test_fewer_than_three_seeds_is_too_few_to_tell(study):
    v = judge(study, "big", "small", rows_for("small", {
        "annealing": [0.95, 0.96], "kd": [0.80, 0.81], "scratch": [0.70, 0.71]}))
    assert v.best == "annealing" and not v.decided
    assert "too few seeds to tell (n = 2" in v.text


def test_search_only_results_cannot_tell_and_pick_by_validation(study):
    rows = rows_for("small", AHEAD, search_only=True)
    for r in rows:  # scratch has the best test score, KD the best validation score
        r["val_best"] = {"kd": 0.95, "annealing": 0.93, "scratch": 0.90}[r["method"]] if r["finished"] else 0.5
    v = judge(study, "big", "small", rows)
    assert v.best == "kd" and not v.decided and v.text.endswith("cannot tell")
    assert all(not r.confirmed and r.n == 1 for r in v.methods.values())


def test_a_failed_seed_is_counted_and_named(study):
    val = {**AHEAD, "annealing": [0.951, None, 0.949, 0.953]}
    v = judge(study, "big", "small", rows_for("small", val))
    a = v.methods["annealing"]
    assert (a.finished, a.run, a.failed) == (3, 4, 1) and v.best == "annealing"
    assert "Annealing-KD failed on seed 2 (1 of 4; methods are compared on the seeds all finished)" in v.text
    assert v.comparisons["kd"].n == 3  # paired on the seeds both finished


def test_a_method_with_no_finished_run_blocks_does_not_help(study):
    val = {"annealing": [None, None, None], "kd": [0.88, 0.89, 0.885], "scratch": [0.955, 0.96, 0.95]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert v.best == "scratch" and not v.decided
    assert "does not help" not in v.text and "does not clearly help" not in v.text
    assert "Annealing-KD has no finished confirmation run (3 run, none finished)" in v.text
    assert "whether distillation helps cannot be said until every method has a finished run" in v.text


def test_a_teacher_below_the_scratch_student_is_named_with_both_numbers(study):
    weak = {"big": {**QUALITY["big"], "val": 0.88}}
    v = judge(study, "big", "small", rows_for("small", AHEAD), weak)
    scratch = 100 * np.mean(AHEAD["scratch"])
    assert (f"the teacher's validation accuracy (88.00) is not above the scratch student's ({scratch:.2f}): "
            "distillation from it is not expected to help") in v.text
    assert "not above" not in judge(study, "big", "small", rows_for("small", AHEAD), QUALITY).text


def _save_predictions(folder, name, pred, label):
    path = folder / f"{name}.npz"
    np.savez(path, pred=np.asarray(pred, dtype=np.int64), label=np.asarray(label, dtype=np.int64))
    return str(path)


def test_test_differences_use_the_paired_bootstrap_when_predictions_are_saved(study, tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, 400)
    rows = rows_for("small", AHEAD)
    accuracy = {"annealing": 0.95, "kd": 0.85, "scratch": 0.86}
    for r in rows:
        if r["phase"] == "confirm":
            pred = np.where(rng.random(400) < accuracy[r["method"]], label, (label + 1) % 10)
            r["predictions"] = _save_predictions(tmp_path, f"{r['method']}-{r['seed']}", pred, label)
            r["test_metric"] = float((pred == label).mean())
    v = judge(study, "big", "small", rows)
    kd = v.comparisons["kd"]
    assert kd.test == stats.CROSSED and kd.n == 4 and kd.low > 0 and kd.pvalue < 0.01
    tests = {m: [r["test_metric"] for r in rows if r["phase"] == "confirm" and r["method"] == m] for m in accuracy}
    assert kd.estimate == pytest.approx(np.mean(tests["annealing"]) - np.mean(tests["kd"]))
    # the seed term makes it wider than the test set's own t-interval (per-example differences averaged
    # over seeds, seeds held fixed) at the same level
    correct = {m: np.stack([np.load(r["predictions"])["pred"] == label for r in rows
                            if r["phase"] == "confirm" and r["method"] == m]) for m in ("annealing", "kd")}
    examples_only = sps.ttest_1samp(correct["annealing"].mean(0) - correct["kd"].mean(0), 0
                                    ).confidence_interval(v.levels["kd"])
    assert kd.high - kd.low > examples_only.high - examples_only.low
    # one run without its file: that comparison falls back to the paired t-interval, and says so
    next(r for r in rows if r["phase"] == "confirm" and r["method"] == "scratch")["predictions"] = None
    v = judge(study, "big", "small", rows)
    assert v.comparisons["scratch"].test == "paired t" and v.comparisons["kd"].test == stats.CROSSED


def test_a_family_verdict_compares_rows_at_one_size(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"params": {
        "student.hidden": {"type": "int", "low": 2, "high": 64}, **SPACE["params"]}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "fam", "task": {"name": "digits"}, "teachers": {"big": {"model": {"kind": "mlp", "hidden": [64]}}},
        "family": {"model": {"kind": "mlp", "hidden": [16]}}, "train": {"epochs": 12},
        "search": {"space": "space.yaml", "trials": 3}}))
    study = load_study(tmp_path / "s.yaml")

    def row(method, hidden, val, phase="search", seed=None, **params):
        return {"teacher": "big", "student": "family", "method": method, "phase": phase, "seed": seed,
                "params": {"student.hidden": hidden, **PARAMS[method], **params}, "finished": True,
                "val_best": val, "test_metric": val - 0.01, "student_parameters": 100 * hidden}

    rows = [row("annealing", 32, 0.96), row("kd", 48, 0.955), row("kd", 32, 0.93, alpha=0.5), row("scratch", 32, 0.90)]
    for s, bump in enumerate((0.0, 0.004, -0.003), 1):
        rows += [row("annealing", 32, 0.96 + bump, "confirm", s), row("kd", 32, 0.93 + bump, "confirm", s, alpha=0.5),
                 row("scratch", 32, 0.90 + bump, "confirm", s),
                 row("kd", 48, 0.99, "confirm", s)]  # KD's best config at another size: left out
    v = judge(study, "big", "family", rows)
    assert v.size == {"student.hidden": 32} and v.student_parameters == 3200
    assert v.methods["kd"].config["alpha"] == 0.5 and v.methods["kd"].val == pytest.approx(0.93 + 0.001 / 3)
    assert all(r["params"]["student.hidden"] == 32 for m in v.methods.values() for r in m.seeds.values())
    assert v.best == "annealing" and "all methods at student.hidden 32 (3,200 parameters)" in v.text


def test_the_files_the_budget_curves_and_the_summary_wording(study, tmp_path):
    failed = [{"teacher": "big", "student": "tiny", "method": m, "phase": "search", "seed": None, "params": {},
               "finished": False, "stopped": False, "error": "FloatingPointError: loss became nan"}
              for m in ("scratch", "kd", "annealing")]
    rows = rows_for("small", AHEAD) + failed
    v = judge(study, "big", "tiny", rows)
    assert v.best is None and v.text == "no trial finished for this pair (3 failed, 0 stopped early): no verdict"
    files = write_report(study, rows, tmp_path / "report", QUALITY)
    assert {f.name for f in files} >= {"pairs.md", "pairs.csv", "summary.txt", "capacity_gap.png", "teachers.json",
                                       "budget.csv", "budget_big_small.png", "budget_big_tiny.png"}
    md = (tmp_path / "report/pairs.md").read_text()
    assert "no trial finished for this pair" in md and "majority class val 10.00" in md
    assert "seeds × test-examples t-interval" in md and "\"±\" is always the seed SD" in md and "Holm" in md and "4/4" in md
    with open(tmp_path / "report/pairs.csv") as f:
        table = {r["student"]: r for r in csv.DictReader(f)}
    assert table["small"]["recommended"] == "annealing" and table["tiny"]["recommended"] == ""
    assert json.loads(table["small"]["config"])["tau_max"] == 4 and table["small"]["annealing_budget"] == "2"
    assert math.isclose(float(table["small"]["annealing_ci_low"]), stats.mean_interval(AHEAD["annealing"]).low)
    summary = (tmp_path / "report/summary.txt").read_text()
    assert "2 search trials per method (equal)" in summary
    assert "big → small: use Annealing-KD tau_max 4, cosine" in summary and "big → tiny: no verdict" in summary
    with open(tmp_path / "report/budget.csv") as f:
        budget = [r for r in csv.DictReader(f) if (r["student"], r["method"]) == ("small", "annealing")]
    # one finished and one pruned search trial per method here
    assert [r["trials"] for r in budget] == ["1", "2"]
    # the pruned trial (stopped early at 0.5) counts at its last score: E[best of 1] is the mean of both
    assert float(budget[0]["expected_best_val"]) == pytest.approx((max(AHEAD["annealing"]) + 0.5) / 2)
    assert float(budget[1]["expected_best_val"]) > float(budget[0]["expected_best_val"])
    assert budget[0]["pruned"] == "1" and budget[0]["observed_trials"] == "2"


def test_summary_says_no_method_is_clearly_better_when_nothing_is_decided(study, tmp_path):
    val = {"annealing": [0.912, 0.921, 0.917, 0.925], "kd": [0.910, 0.925, 0.905, 0.915],
           "scratch": [0.905, 0.93, 0.89, 0.915]}
    write_report(study, rows_for("small", val), tmp_path / "r", QUALITY)
    summary = (tmp_path / "r/summary.txt").read_text()
    assert "big → small: no method is clearly better; cheapest within noise on validation: scratch" in summary
    assert "use " not in summary


def test_search_trials_one_number_is_an_equal_budget_and_a_mapping_may_be_unequal(study, tmp_path):
    assert study.search.trials == {"scratch": 2, "kd": 2, "annealing": 2} and study.unequal_budgets() is None
    unequal = load_study(study.source, ["search.trials={scratch: 1, kd: 2, annealing: 4}"])
    assert unequal.unequal_budgets() == ("unequal budgets: scratch 1, kd 2, annealing 4 search trials per pair (a "
                                         "method's lead may partly be tuning effort; give search.trials one number)")
    assert unequal.unequal_budgets(searched=["kd"]) is None
    v = judge(unequal, "big", "small", rows_for("small", AHEAD))
    assert "unequal budgets: scratch 1, kd 2, annealing 4" in v.text and v.methods["annealing"].budget == 4


def test_statistics_are_pure_and_report_and_capacity_do_not_import_each_other():
    import subprocess
    import sys

    code = ("import sys, akd_ray.stats; assert not [m for m in sys.modules if m.startswith('akd_ray.') "
            "and m != 'akd_ray.stats'], 'stats imports akd_ray'; import akd_ray.capacity; "
            "assert 'akd_ray.report' not in sys.modules, 'capacity -> report'")  # verdict's method names it may read
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------- #22: the review's fixes
def test_a_method_better_than_the_recommended_one_is_never_tied(study):
    """The review's case: KD fails on one seed where Annealing-KD does badly; on the seeds both finished
    Annealing-KD is ahead in every one, so it is the pick, decided, and KD is not 'tied'."""
    val = {"kd": [0.910, 0.911, 0.909, 0.910, None], "annealing": [0.920, 0.921, 0.919, 0.920, 0.80],
           "scratch": [0.900, 0.901, 0.899, 0.901, 0.899]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert v.best == "annealing" and v.tied == ["annealing"] and v.decided
    assert "cannot be told" not in v.text
    assert "KD failed on seed 5 (1 of 5" in v.text


def test_a_method_failing_on_hard_seeds_is_not_lifted_by_dropping_them(study):
    """KD fails on the two seeds where every method scores low: on its own finished seeds its mean
    would lead; on the seeds all methods finished, Annealing-KD leads."""
    val = {"annealing": [0.95, 0.951, 0.949, 0.90, 0.901], "kd": [0.94, 0.941, 0.939, None, None],
           "scratch": [0.93, 0.931, 0.929, 0.89, 0.891]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert np.mean([x for x in val["kd"] if x]) > np.mean(val["annealing"])  # KD's own-seed mean leads
    assert v.best == "annealing" and v.comparisons["kd"].n == 3
    assert "KD failed on seeds 4, 5 (2 of 5" in v.text


def test_every_interval_stays_within_the_metric_range(study):
    """Two seeds far apart near 100%: Student's t reaches past 100 points; the verdict clips it."""
    val = {"annealing": [0.999, 0.80, 0.999], "kd": [0.90, 0.91, 0.905], "scratch": [0.90, 0.91, 0.90]}
    v = judge(study, "big", "small", rows_for("small", val))
    a = v.methods["annealing"]
    assert stats.mean_interval(val["annealing"]).high > 1  # the raw t-interval runs past 100 points
    assert a.high == 1.0 and 0 <= a.low
    for d in v.comparisons.values():
        assert -1 <= d.low <= d.high <= 1


def test_undecided_names_the_seeds_that_would_tell(study):
    val = {"annealing": [0.951, 0.945, 0.957], "kd": [0.950, 0.948, 0.951], "scratch": [0.80, 0.81, 0.805]}
    v = judge(study, "big", "small", rows_for("small", val))
    assert not v.decided and set(v.tied) == {"annealing", "kd"}
    (observed, one_point), = v.seeds_needed.values()
    assert one_point is not None and one_point > 3
    assert "seeds a 1-point one (80% power)" in v.text
    assert "confirmation seeds: scratch 3, KD 3, Annealing-KD 3" in v.text


def test_racing_adds_seeds_while_undecided_and_stops_at_decided_and_at_the_cap(study):
    from akd_ray.verdict import planned_looks, racing_points

    study = study.model_copy(update={"search": study.search.model_copy(update={"confirm_seeds_max": 8})})
    assert planned_looks(study) == [3, 6, 8]
    # undecided at 3 seeds: Annealing-KD and KD tied, scratch clearly behind -> 3 more seeds for the two
    val = {"annealing": [0.951, 0.945, 0.957], "kd": [0.950, 0.948, 0.951], "scratch": [0.80, 0.81, 0.805]}
    points = racing_points(study, [judge(study, "big", "small", rows_for("small", val))])
    assert sorted((p["method"], p["seed"]) for p in points) == [(m, s) for m in ("annealing", "kd") for s in (4, 5, 6)]
    assert all(p["phase"] == "confirm" and p["tau_max"] == 4 for p in points if p["method"] == "annealing")
    # decided: no round
    assert racing_points(study, [judge(study, "big", "small", rows_for("small", AHEAD))]) == []
    # still tied at the cap (8 seeds): no round, and the verdict says why it stopped
    tied = {"annealing": [0.951, 0.945, 0.957, 0.950, 0.946, 0.955, 0.949, 0.952],
            "kd": [0.950, 0.948, 0.951, 0.952, 0.944, 0.956, 0.951, 0.949], "scratch": [0.80] * 8}
    v = judge(study, "big", "small", rows_for("small", tied))
    assert racing_points(study, [v]) == [] and v.stop == "cap"
    assert "search.confirm_seeds_max = 8 reached, undecided" in v.text
    # decided at a look: the verdict says so
    assert judge(study, "big", "small", rows_for("small", AHEAD)).stop == "decided"


def test_the_verdict_says_which_training_recipe_the_methods_used(study):
    v = judge(study, "big", "small", rows_for("small", AHEAD))
    assert "each method tuned its own training recipe (lr: scratch 0.006, KD 0.004, Annealing-KD 0.005)" in v.text
    shared = [{**r, "params": {**r["params"], "lr": 0.006}} for r in rows_for("small", AHEAD)]
    assert "one training recipe for every method (lr 0.006)" in judge(study, "big", "small", shared).text


def test_an_annealing_pick_names_its_tau_max_range_and_plots_it(study, tmp_path):
    """Annealing-KD picked at tau_max 4; its neighbours ran on the same seeds (phase "tau"): 3 cannot be
    told from 4, 5 is worse in every seed. The verdict names 3–4 and the report plots validation vs tau_max."""
    from akd_ray.study.run import tau_points
    from akd_ray.space import Space

    rows = rows_for("small", AHEAD)
    for tau, shift in ((3, [0.002, -0.003, 0.001, -0.001]), (5, [-0.03, -0.032, -0.029, -0.031])):
        rows += [{"teacher": "big", "student": "small", "method": "annealing", "phase": "tau", "seed": i + 1,
                  "params": {**PARAMS["annealing"], "tau_max": tau}, "finished": True,
                  "val_best": v + d, "test_metric": v + d} for i, (v, d) in enumerate(zip(AHEAD["annealing"], shift))]
    v = judge(study, "big", "small", rows)
    assert v.best == "annealing" and v.tau_same == [3, 4] and sorted(v.tau) == [3, 4, 5]
    assert "τ_max 4 (3–4 cannot be told apart on validation; tried 3, 4, 5)" in v.text
    assert v.methods["annealing"].mean == pytest.approx(np.mean(AHEAD["annealing"]))  # neighbours never join the pick
    files = write_report(study, rows, tmp_path / "report")
    assert tmp_path / "report" / "tau_range_big_small.png" in files
    assert "τ_max 4 (3–4" in (tmp_path / "report" / "summary.txt").read_text()
    # the points: the pick's config at tau_max ± 1 within the space, on the pick's seeds
    space = Space.model_validate({"params": SPACE["params"]})
    points = tau_points(study, space, [judge(study, "big", "small", rows_for("small", AHEAD))])
    assert sorted({p["tau_max"] for p in points}) == [3, 5] and {p["phase"] for p in points} == {"tau"}
    assert sorted(p["seed"] for p in points if p["tau_max"] == 3) == [1, 2, 3, 4]
