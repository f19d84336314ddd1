"""Which teacher for this student, from hand-made rows: a smaller teacher better on validation, a tie
recommending the cheapest teacher, an early checkpoint better than the converged teacher, a failed seed,
scratch as the floor; the teacher x student map (CSV and PNG) and the shared scratch rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from akd_ray.config import load_study
from akd_ray.report import write_report
from akd_ray.teacher_verdict import MAP_CSV, MAP_PNG, SCRATCH, choose_teacher, map_rows, share_scratch

SPACE = {"params": {"tau_max": {"type": "int", "low": 2, "high": 5, "methods": ["annealing"]},
                    "alpha": {"type": "float", "low": 0.1, "high": 0.9, "methods": ["kd"]},
                    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
PARAMS = {"annealing": {"tau_max": 3, "lr": 0.005}, "kd": {"alpha": 0.3, "lr": 0.004}, "scratch": {"lr": 0.006}}
SIZES = {"t-32": 3_000, "t-128": 20_000, "t-512": 300_000}
CANDIDATES = [c for t in SIZES for c in (t, f"{t}-epoch10")]
QUALITY = {c: {"metric": "accuracy", "val": 0.95, "test": 0.95, "majority_val": 0.1, "majority_test": 0.1,
               "parameters": SIZES[c.split("-epoch")[0]]} for c in CANDIDATES}
NOISE = [0.000, 0.004, -0.003, 0.002]  # per seed, shared by every arm: runs pair by seed


@pytest.fixture
def study(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "which", "task": {"name": "digits"},
        "teacher_family": {"name": "t", "model": {"kind": "mlp", "hidden": [64, 64]}, "sizes": [32, 128, 512],
                           "train": {"epochs": 20}, "checkpoints": 2, "checkpoints_as_teachers": True},
        "students": {"small": {"kind": "mlp", "hidden": [4]}, "tiny": {"kind": "mlp", "hidden": [2]}},
        "train": {"epochs": 12}, "search": {"space": "space.yaml", "trials": 1}}))
    return load_study(tmp_path / "s.yaml")


def confirm(teacher: str, student: str, method: str, values: list[float | None], search: bool = True) -> list[dict]:
    """A search row and one confirmation row per seed (val = test = value + nothing); None = a failed seed."""
    done = [v for v in values if v is not None]
    rows = [{"teacher": teacher, "student": student, "method": method, "phase": "search", "seed": None,
             "params": PARAMS[method], "finished": True, "val_best": max(done), "test_metric": max(done)}] if search else []
    return rows + [{"teacher": teacher, "student": student, "method": method, "phase": "confirm", "seed": i + 1,
                    "params": PARAMS[method], "finished": v is not None, "val_best": v, "test_metric": v,
                    "error": None if v is not None else "FloatingPointError: loss became nan"}
                   for i, v in enumerate(values)]


def student_rows(student: str, kd: dict[str, float], scratch: float = 0.90, annealing_gap: float = 0.01) -> list[dict]:
    """Every candidate's KD at `kd[candidate]` (default 0.92) and Annealing-KD `annealing_gap` below it, plus
    scratch, each with the per-seed NOISE; scratch only in the first candidate's pair (a shared scratch)."""
    rows = confirm(CANDIDATES[0], student, SCRATCH, [scratch + n for n in NOISE])
    for c in CANDIDATES:
        base = kd.get(c, 0.92)
        rows += confirm(c, student, "kd", [base + n for n in NOISE])
        rows += confirm(c, student, "annealing", [base - annealing_gap + n + 0.001 * i for i, n in enumerate(NOISE)])
    return rows


def test_a_smaller_teacher_better_on_validation_is_the_pick(study):
    rows = student_rows("small", {"t-32": 0.96, "t-512": 0.91})
    choice = choose_teacher(study, "small", rows, QUALITY)
    assert choice.teacher == "t-32" and choice.method == "kd" and choice.decided
    assert choice.text.startswith("distil small from t-32 with KD alpha 0.3")
    # the test line names the converged largest teacher, as the one a user would reach for
    assert "points over the converged t-512" in choice.text and "points over scratch" in choice.text
    d = choice.differences["t-512"]
    assert d.estimate == pytest.approx(0.05) and d.low > 0  # hand-made: +5 points on every seed
    # validation selection is the paired t-test by seed, Holm over every candidate and scratch
    assert choice.tied == ["t-32"]
    assert choice.gain("t-32") == pytest.approx(6.0) and choice.gain("t-512") == pytest.approx(1.0)


def test_a_tie_on_validation_recommends_the_cheapest_teacher(study):
    # t-512 has the best validation mean by 0.1 point, with seed noise of its own: no clear winner
    rows = student_rows("small", {})
    rows = [r for r in rows if not (r["teacher"] == "t-512" and r["method"] == "kd")]
    rows += confirm("t-512", "small", "kd", [0.921 + n for n in (0.006, -0.004, 0.003, -0.001)])
    choice = choose_teacher(study, "small", rows, QUALITY)
    top = max(choice.results, key=lambda k: choice.results[k].val)
    assert top == "t-512" and choice.teacher == "t-32" and not choice.decided  # t-32 costs least
    assert choice.text.startswith("no teacher is clearly better on validation: t-32 cannot be told from")
    assert "t-32, the cheapest of them, is recommended: distil small from t-32" in choice.text
    # the tie is the paired t-test's: scipy's paired t between the best and the pick says no difference
    a = [r["val_best"] for r in rows if r["teacher"] == "t-512" and r["method"] == "kd" and r["phase"] == "confirm"]
    b = [r["val_best"] for r in rows if r["teacher"] == "t-32" and r["method"] == "kd" and r["phase"] == "confirm"]
    assert sps.ttest_rel(a, b).pvalue > 0.05


def test_an_early_checkpoint_better_than_the_converged_teacher(study):
    rows = student_rows("small", {"t-512-epoch10": 0.95, "t-512": 0.915})
    choice = choose_teacher(study, "small", rows, QUALITY)
    assert choice.teacher == "t-512-epoch10" and choice.decided
    assert choice.text.startswith("distil small from t-512-epoch10 with KD")
    assert "+3.5 points over the converged t-512" in choice.text


def test_checkpoints_of_one_teacher_tie_on_cost_and_the_better_one_is_named(study):
    rows = student_rows("small", {"t-32": 0.930, "t-32-epoch10": 0.932})  # same parameters, tied on validation
    rows = [r for r in rows if not (r["teacher"] == "t-32-epoch10" and r["method"] == "kd")]
    rows += confirm("t-32-epoch10", "small", "kd", [0.932 + n for n in (0.004, -0.004, 0.0, 0.001)])
    choice = choose_teacher(study, "small", rows, QUALITY)
    assert {"t-32", "t-32-epoch10"} <= set(choice.tied)
    assert choice.teacher == "t-32-epoch10"  # equal cost: the better validation mean


def test_a_failed_seed_is_named_and_the_comparisons_pair_the_seeds_that_finished(study):
    rows = [r for r in student_rows("small", {"t-128": 0.96}) if not (r["teacher"] == "t-128" and r["method"] == "kd")]
    rows += confirm("t-128", "small", "kd", [0.96, None, 0.957, 0.962])
    choice = choose_teacher(study, "small", rows, QUALITY)
    assert choice.teacher == "t-128" and choice.results["t-128"].finished == 3
    assert "KD from t-128 failed on 1 of 4 seeds (compared on the 3 that finished)" in choice.text
    assert choice.differences["t-512"].n == 3  # seed 2 dropped from the pairing


def test_scratch_clearly_best_says_no_teacher_helps(study):
    choice = choose_teacher(study, "small", student_rows("small", {}, scratch=0.97), QUALITY)
    assert choice.teacher is None and choice.method == SCRATCH
    assert choice.text.startswith("scratch is best on validation for small, ahead of every teacher")


def test_a_candidate_without_runs_is_named_missing(study):
    rows = [r for r in student_rows("small", {"t-32": 0.96}) if r["teacher"] != "t-128-epoch10"]
    choice = choose_teacher(study, "small", rows, QUALITY)
    assert choice.teacher == "t-32" and not choice.decided
    assert "t-128-epoch10 has no finished run: it is missing from the comparison" in choice.text


def test_the_map_from_hand_made_rows(study, tmp_path):
    rows = student_rows("small", {"t-32": 0.96, "t-512-epoch10": 0.93}) + \
        student_rows("tiny", {"t-128-epoch10": 0.95}, scratch=0.80)
    choices = [choose_teacher(study, s, rows, QUALITY) for s in ("small", "tiny")]
    records = map_rows(study, choices, QUALITY)
    assert len(records) == len(CANDIDATES) * 2
    cell = {(r["teacher"], r["student"]): r for r in records}
    assert cell[("t-32", "small")]["val_gain_over_scratch"] == pytest.approx(6.0)
    assert cell[("t-512-epoch10", "small")]["checkpoint"] == "epoch 10"
    assert cell[("t-512-epoch10", "small")]["of"] == "t-512"
    assert cell[("t-128-epoch10", "tiny")]["val_gain_over_scratch"] == pytest.approx(15.0)
    assert [r["teacher"] for r in records if r["pick"]] == ["t-32", "t-128-epoch10"]  # one pick per student
    # through the report: the CSV, the PNG and one "which teacher" line per student in the summary
    files = write_report(study, share_scratch(study, rows), tmp_path / "report", QUALITY)
    assert tmp_path / "report" / MAP_CSV in files and (tmp_path / "report" / MAP_PNG).stat().st_size > 10_000
    with open(tmp_path / "report" / MAP_CSV) as f:
        written = list(csv.DictReader(f))
    assert [(r["teacher"], r["student"]) for r in written if r["pick"] == "True"] == [("t-32", "small"),
                                                                                       ("t-128-epoch10", "tiny")]
    summary = (tmp_path / "report" / "summary.txt").read_text()
    assert "  small: distil small from t-32 with KD" in summary
    assert "  tiny: distil tiny from t-128-epoch10 with KD" in summary


def test_a_shared_scratch_joins_every_pair_once(study):
    assert study.shared_scratch == "t-32" and not study.searches("t-128", SCRATCH) and study.searches("t-128", "kd")
    rows = student_rows("small", {})
    shared = share_scratch(study, rows)
    per_pair = {t: sum(r["method"] == SCRATCH for r in shared if r["teacher"] == t) for t in CANDIDATES}
    assert set(per_pair.values()) == {1 + len(NOISE)}  # the search row and every seed, in every pair
    assert share_scratch(study, shared) == shared  # idempotent: `akd-ray report` re-reads the saved rows
    assert np.mean([r["val_best"] for r in shared if r["teacher"] == "t-512" and r["method"] == SCRATCH
                    and r["phase"] == "confirm"]) == pytest.approx(0.90 + np.mean(NOISE))


def test_mlflow_has_one_which_teacher_run_per_student_in_the_pair_view(study, tmp_path, monkeypatch):
    """`<student> ← which teacher` runs beside the pair runs (the pair view's filter finds them), the pick's
    columns in points, the verdict and one row per candidate as the description, the registered student
    `<study>-<student>` described by the pick."""
    import json

    from akd_ray import tracking
    from akd_ray.config import MLP
    from akd_ray.models import build_model, save_model
    from akd_ray.tasks.digits import load_digits_task
    from akd_ray.tracking.registry import student_model_name
    from akd_ray.tracking.ui import PAIR_FILTER, VIEW_TAG

    study = study.model_copy(update={"storage": tmp_path / "storage"})
    # the store this test writes, restored afterwards: tracking exports the URI for Ray's workers
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'storage' / 'mlflow.db'}")
    rows = student_rows("small", {"t-512-epoch10": 0.95}) + student_rows("tiny", {}, scratch=0.97)
    choices = [choose_teacher(study, s, rows, QUALITY) for s in ("small", "tiny")]
    digits = load_digits_task(study.task)
    save_model(build_model(MLP(kind="mlp", hidden=(4,)), digits).eval(), MLP(kind="mlp", hidden=(4,)),
               tmp_path / "ckpt" / "student", digits)
    parent = tracking.start_study(study, "name: which\n", "params: {}\n")
    client = tracking.client_for()
    experiment_id = client.get_run(parent).info.experiment_id
    trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    tracking.register_best(study, ("t-512-epoch10", "small"), trial, tmp_path / "ckpt", digits,
                           pick=choices[0].as_verdict(), name=student_model_name("which", "small"))
    tracking.log_teacher_choices(parent, choices)

    view = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG])
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id], view["searchFilter"])}
    assert view["searchFilter"] == PAIR_FILTER and set(runs) == {"small ← which teacher", "tiny ← which teacher"}
    small, tiny = runs["small ← which teacher"], runs["tiny ← which teacher"]
    assert small.data.params["pick.teacher"] == "t-512-epoch10" and small.data.params["pick.method"] == "kd"
    assert small.data.tags["recommended"] == "t-512-epoch10: KD alpha 0.3, T 4 — decided" and small.data.tags["decided"] == "true"
    assert small.data.metrics["pick.mean"] == pytest.approx(100 * choices[0].pick.mean, abs=0.01)
    assert small.data.metrics["gain_over_scratch"] == pytest.approx(5.0, abs=0.01)
    note = small.data.tags["mlflow.note.content"]
    assert note.startswith("**small ← which teacher: use t-512-epoch10: KD alpha 0.3, T 4**")
    assert choices[0].text in note and all(f"| {c} |" in note or f"| **{c}** (pick) |" in note for c in CANDIDATES)
    assert small.data.tags["registered_model"] == "models:/which-small/1"
    model = client.get_registered_model("which-small")
    assert model.tags["pick.method"] == "kd" and "t-512-epoch10 → small" in model.description
    assert tiny.data.params["pick.teacher"] == "none (scratch)" and tiny.data.metrics["gain_over_scratch"] == 0
    assert "registered_model" not in tiny.data.tags
    assert set(small.data.metrics) == set(tiny.data.metrics)  # the same columns whatever the pick
