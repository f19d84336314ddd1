"""The confirmation phase's points: every method's best config over fresh seeds; in a family study all
methods at one student size, that of the group's best search trial."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_family import family_study, row  # noqa: E402  (the family tests' hand-made rows)

from akd_ray.config import load_study
from akd_ray.study.run import confirmation_points

SPACE = {"student.hidden": {"type": "int", "low": 2, "high": 64},
         "tau_max": {"type": "int", "low": 2, "high": 6, "methods": ["annealing"]},
         "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def test_a_family_study_confirms_every_method_at_the_size_of_the_best_trial(tmp_path):
    study = load_study(family_study(tmp_path, {"kind": "mlp", "hidden": [16]}, SPACE,
                                    search={"space": "space.yaml", "trials": 3, "confirm_seeds": 2}))
    rows = [row("scratch", 8, 0.70), row("scratch", 32, 0.80),  # scratch's best is at 32; it also tried 16
            row("scratch", 16, 0.75),
            row("kd", 64, 0.90),  # kd never tried 16: its best config is moved there
            row("annealing", 16, 0.95, tau=3), row("annealing", 64, 0.93, tau=5)]
    for r in rows:
        r["student"] = study.family.name
    points = confirmation_points(study, rows)
    assert {p["student.hidden"] for p in points} == {16}  # the best trial overall: annealing at 16
    by_method = {p["method"]: p for p in points}
    assert by_method["scratch"]["lr"] == 0.01 and by_method["annealing"]["tau_max"] == 3
    assert set(by_method) == {"scratch", "kd", "annealing"}
    assert sorted(p["seed"] for p in points if p["method"] == "kd") == [study.seed + 1, study.seed + 2]


def test_named_students_confirm_each_method_s_own_best_config(tmp_path):
    study = load_study(Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml")
    teacher, student = study.pairs[0]
    rows = [{"teacher": teacher, "student": student, "method": m, "phase": "search", "finished": True,
             "val_best": v, "params": {"lr": lr}} for m, v, lr in
            (("kd", 0.8, 0.01), ("kd", 0.9, 0.02), ("scratch", 0.7, 0.03))]
    points = confirmation_points(study, rows)
    assert {(p["method"], p["lr"]) for p in points} == {("kd", 0.02), ("scratch", 0.03)}
    assert len(points) == 2 * study.search.confirm_seeds


def test_a_teacher_below_the_scratch_student_is_named_while_the_study_runs():
    from akd_ray.study.teachers import teacher_vs_scratch

    study = load_study(Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml")
    teacher, student = study.pairs[0]
    rows = [{"teacher": teacher, "student": student, "method": "scratch", "finished": True, "val_best": 0.622},
            {"teacher": teacher, "student": student, "method": "kd", "finished": True, "val_best": 0.70}]
    weak = {teacher: {"metric": "accuracy", "val": 0.588}}
    (line,) = teacher_vs_scratch(study, weak, rows)
    assert line == (f"teacher {teacher}: validation accuracy 58.8 is not above the scratch student {student}'s "
                    f"62.2: distillation from it is not expected to help")
    assert teacher_vs_scratch(study, {teacher: {"metric": "accuracy", "val": 0.9}}, rows) == []


def test_a_shared_recipe_is_tuned_by_scratch_then_fixed_for_every_other_method():
    """search.shared at its default: the quickstart's lr is searched by scratch alone (search-recipe),
    then KD and Annealing-KD search only their own knobs and train with scratch's best lr for the pair."""
    from akd_ray.space import load_space
    from akd_ray.study.search import PairedSearch, recipe_of, recipe_phases, shared_knobs

    root = Path(__file__).resolve().parents[2]
    study = load_study(root / "studies" / "quickstart.yaml")
    space = load_space(study.search.space)
    assert shared_knobs(study, space) == ("lr",)
    (first, full), (second, own) = recipe_phases(study, space)
    assert first.search.methods == ("scratch",) and "lr" in full.for_method("scratch")
    assert "scratch" not in second.search.methods and "lr" not in own.for_method("kd")
    assert set(own.for_method("kd")) == {"alpha", "kd_temperature"}
    teacher, student = study.pairs[0]
    rows = [{"teacher": teacher, "student": student, "method": "scratch", "phase": "search", "finished": True,
             "val_best": v, "params": {"lr": lr}} for v, lr in ((0.90, 0.004), (0.95, 0.0106))]
    fixed = recipe_of(rows, ("lr",))
    assert fixed == {(teacher, student): {"lr": 0.0106}}
    searcher = PairedSearch(second, own, fixed=fixed)
    configs = [searcher.suggest(f"t{i}") for i in range(2 * len(second.search.methods) * len(study.pairs))]
    mine = [c for c in configs if (c["teacher"], c["student"]) == (teacher, student)]
    assert {c["method"] for c in mine} == {"kd", "annealing"} and all(c["lr"] == 0.0106 for c in mine)
    assert all("lr" not in searcher.groups[(teacher, student, c["method"])]._ot_study.trials[-1].params
               for c in mine)  # Optuna never searched it
    assert shared_knobs(study.model_copy(update={"search": study.search.model_copy(update={"shared": ()})}),
                        space) == ()  # per-method tuning stays possible
