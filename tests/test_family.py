"""Student families: `student.<field>` in a space checked per model kind (errors name file and field),
the conditional space with student fields under FixedTrial, the multi-objective FamilySearch without
Ray, and the capacity answers (front, within-X pick, tau_max trend, importances) from hand-made rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial
from ray.tune.search import Searcher

from akd_ray import capacity
from akd_ray.config import ConfigError, MLP, ResNet, HFSmall, HFTruncated, load_study
from akd_ray.space import load_space, sample
from akd_ray.study import COST, FamilySearch, run_config, searcher_for, validate

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_FAMILY = REPO / "studies" / "quickstart-family.yaml"
TEACHERS = {"digits": {"big": {"model": {"kind": "mlp", "hidden": [64]}}},
            "glue/sst2": {"bert": {"model": {"kind": "hf", "path": "org/bert"}}}}


def family_study(folder: Path, model: dict, params: dict, task: str = "digits", **extra: Any) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump({"params": params}, sort_keys=False))
    data = {"name": "fam", "task": {"name": task}, "teachers": TEACHERS[task],
            "family": {"model": model}, "train": {"epochs": 16},
            "search": {"space": "space.yaml", "trials": {"kd": 2, "annealing": 3}}, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------- valid families
@pytest.mark.parametrize("task, model, params, trial, student", [
    ("digits", {"kind": "mlp", "hidden": [16, 16]}, {"student.hidden": {"type": "int", "low": 2, "high": 64}},
     {"student.hidden": 8}, MLP(kind="mlp", hidden=(8, 8))),
    ("digits", {"kind": "resnet", "depth": 20}, {"student.depth": {"type": "categorical", "choices": [8, 14, 56]}},
     {"student.depth": 14}, ResNet(kind="resnet", depth=14)),
    ("glue/sst2", {"kind": "hf_truncate", "layers": 6}, {"student.layers": {"type": "int", "low": 1, "high": 6}},
     {"student.layers": 2}, HFTruncated(kind="hf_truncate", layers=2)),
    ("glue/sst2", {"kind": "hf_config", "layers": 4, "hidden_size": 256},
     {"student.layers": {"type": "int", "low": 1, "high": 4},
      "student.heads": {"type": "categorical", "choices": [2, 4, 8]}},
     {"student.layers": 3, "student.heads": 8}, HFSmall(kind="hf_config", layers=3, hidden_size=256, heads=8)),
])
def test_each_kind_s_student_fields_validate_and_build_the_trial_s_student(tmp_path, task, model, params, trial,
                                                                          student):
    study = load_study(family_study(tmp_path, model, params, task))
    space = validate(study)
    config = {"teacher": next(iter(study.teachers)), "student": "family", "method": "kd", "phase": "search",
              **trial, "alpha": 0.3}
    run = run_config(study, config, {t: tmp_path for t in study.teachers})
    assert run.student_model == student
    assert run.train.alpha == 0.3 and "student.hidden" not in run.train.model_dump()
    assert isinstance(searcher_for(study, space), FamilySearch)


# ---------------------------------------------------------------------------------------- bad families
BAD = [
    # id, task, base model, params, field named, phrase
    ("resnet depth not 6n+2", "digits", {"kind": "resnet", "depth": 20},
     {"student.depth": {"type": "categorical", "choices": [8, 15]}}, "params.student.depth", "depth 15 is not 6n+2"),
    ("resnet depth 6n+2 not built", "digits", {"kind": "resnet", "depth": 20},
     {"student.depth": {"type": "categorical", "choices": [8, 26]}}, "params.student.depth", "got 26; valid: 8"),
    ("resnet depth as an int range", "digits", {"kind": "resnet", "depth": 20},
     {"student.depth": {"type": "int", "low": 8, "high": 20}}, "params.student.depth", "depth 9 is not 6n+2"),
    ("a field the kind lacks", "digits", {"kind": "mlp"}, {"student.layers": {"type": "int", "low": 1, "high": 4}},
     "params.student.layers", "a 'mlp' student has no field 'layers'; valid: student.hidden"),
    ("a float size", "digits", {"kind": "mlp"}, {"student.hidden": {"type": "float", "low": 2, "high": 8}},
     "params.student.hidden", "a model size is whole"),
    ("mlp width 0", "digits", {"kind": "mlp"}, {"student.hidden": {"type": "int", "low": 0, "high": 8}},
     "params.student.hidden", "value 0 is not valid"),
    ("heads do not divide hidden_size", "glue/sst2", {"kind": "hf_config", "layers": 2, "hidden_size": 256},
     {"student.heads": {"type": "categorical", "choices": [4, 12]}}, "params.student.heads",
     "heads 12 do not divide hidden_size 256"),
    ("hidden_size range meets fixed heads", "glue/sst2", {"kind": "hf_config", "layers": 2, "heads": 4},
     {"student.hidden_size": {"type": "int", "low": 128, "high": 256, "step": 64}}, None, None),
    ("hidden_size not a multiple of heads", "glue/sst2", {"kind": "hf_config", "layers": 2, "heads": 12},
     {"student.hidden_size": {"type": "int", "low": 128, "high": 256, "step": 64}}, "params.student.hidden_size",
     "heads 12 do not divide hidden_size 128"),
    ("truncate to 0 layers", "glue/sst2", {"kind": "hf_truncate", "layers": 6},
     {"student.layers": {"type": "int", "low": 0, "high": 6}}, "params.student.layers", "value 0 is not valid"),
    ("no student field", "digits", {"kind": "mlp"}, {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
     "space names no student field", "params.student.hidden"),
]


@pytest.mark.parametrize("task, model, params, field, phrase", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_student_fields_name_the_space_file_and_field(tmp_path, task, model, params, field, phrase):
    study = load_study(family_study(tmp_path, model, params, task))
    if field is None:  # the control case: 128, 192, 256 all divide by 4
        validate(study)
        return
    with pytest.raises(ConfigError) as err:
        validate(study)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'space.yaml'}: ")
    assert field in message and phrase in message


def test_student_fields_in_a_study_of_named_students_are_an_error(tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  student.hidden: {type: int, low: 2, high: 8}\n")
    data = yaml.safe_load(open(REPO / "studies" / "quickstart.yaml"))
    data["search"]["space"] = str(tmp_path / "space.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"space.yaml: params.student.hidden: student fields are searched only "
                                          r"in a study with a `family`"):
        validate(load_study(tmp_path / "s.yaml"))


@pytest.mark.parametrize("change, phrase", [
    ({"students": {"s": {"kind": "mlp"}}}, "give either `students`"),
    ({"search": {"space": "space.yaml", "trials": {"kd": 1}, "scheduler": "asha"}},
     "a family search is multi-objective"),
    ({"family": {"model": {"kind": "mlp"}, "cost": "flops"}}, "family.cost"),
    ({"family": {"model": {"kind": "mlp"}, "within": [0]}}, "family.within[0]"),
])
def test_bad_family_study_names_file_and_field(tmp_path, change, phrase):
    path = family_study(tmp_path, {"kind": "mlp"}, {"student.hidden": {"type": "int", "low": 2, "high": 8}},
                        **change)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}:") and phrase in str(err.value)


def test_an_empty_students_mapping_is_still_an_error_without_a_family(tmp_path):
    data = yaml.safe_load(open(REPO / "studies" / "quickstart.yaml"))
    data["students"] = {}
    data["search"]["space"] = str(REPO / "search_spaces" / "quickstart.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="students: should have at least 1 item"):
        load_study(tmp_path / "s.yaml")


# ---------------------------------------------------------------------------------------- FixedTrial
EVERYTHING = {"student.hidden": 8, "tau_max": 3, "schedule": "exp", "decay": 2.0, "alpha": 0.4,
              "kd_temperature": 3.0, "lr": 0.01}


def test_the_conditional_space_with_student_fields_under_fixed_trial():
    space = load_space(REPO / "search_spaces" / "family" / "quickstart.yaml")
    assert sample(space, "annealing", FixedTrial(EVERYTHING)) == {
        "student.hidden": 8, "tau_max": 3, "schedule": "exp", "decay": 2.0, "lr": 0.01}
    assert sample(space, "annealing", FixedTrial({**EVERYTHING, "schedule": "cosine"})) == {
        "student.hidden": 8, "tau_max": 3, "schedule": "cosine", "lr": 0.01}
    assert sample(space, "kd", FixedTrial(EVERYTHING)) == {"student.hidden": 8, "alpha": 0.4, "kd_temperature": 3.0,
                                                           "lr": 0.01}
    assert sample(space, "scratch", FixedTrial(EVERYTHING)) == {"student.hidden": 8, "lr": 0.01}
    with pytest.raises(ValueError, match="'student.hidden' is not found"):
        sample(space, "scratch", FixedTrial({"lr": 0.01}))
    assert space.student_fields["hidden"].values() == [2, 64]


# ---------------------------------------------------------------------------------------- the searcher
def test_family_search_is_multi_objective_per_size_group_with_its_budget():
    study = load_study(QUICKSTART_FAMILY)
    search = FamilySearch(study, validate(study))
    total = sum(study.search.trials.values())
    configs = [search.suggest(f"t{i}") for i in range(total)]
    assert search.suggest("more") == Searcher.FINISHED
    for method, n in study.search.trials.items():
        mine = [c for c in configs if c["method"] == method]
        assert len(mine) == n and all(c["student"] == "mlp-1L" and 2 <= c["student.hidden"] <= 64 for c in mine)
    ot = search.groups[("mlp-256x2", "mlp-1L", "annealing")]._ot_study
    assert ot.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    first = next(t for t, c in zip([f"t{i}" for i in range(total)], configs) if c["method"] == "annealing")
    search.on_trial_result(first, {"val_best": 0.5, "training_iteration": 1})  # dropped: no pruning
    search.on_trial_complete(first, {"val_best": 0.9, COST: 1234, "final": 1})
    (done,) = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.values == [0.9, 1234] and done.intermediate_values == {}


# ---------------------------------------------------------------------------------------- capacity answers
def row(method: str, hidden: int, val: float, tau: int | None = None, phase: str = "search", test: float = 0.9,
        **extra) -> dict:
    params = {"student.hidden": hidden, "lr": 0.01, **({"tau_max": tau} if tau is not None else {})}
    return {"teacher": "big", "student": "family", "method": method, "phase": phase, "seed": None, "params": params,
            "finished": True, "val_best": val, "test_metric": test, COST: 100 * hidden,
            "student_parameters": 100 * hidden, **extra}


ROWS = [row("scratch", 2, 0.60), row("kd", 4, 0.80), row("annealing", 4, 0.85, tau=5), row("annealing", 8, 0.84, tau=4),
        row("annealing", 16, 0.95, tau=3), row("kd", 32, 0.94), row("annealing", 64, 0.97, tau=2),
        row("scratch", 64, 0.96)]


def test_the_front_holds_exactly_the_undominated_trials():
    front = capacity.pareto_front(ROWS)
    assert [(r["method"], r["params"]["student.hidden"]) for r in front] == [
        ("scratch", 2), ("annealing", 4), ("annealing", 16), ("annealing", 64)]
    for r in front:  # no trial is at least as good on both and better on one
        assert not any(o["val_best"] >= r["val_best"] and o[COST] <= r[COST] and o is not r
                       and (o["val_best"] > r["val_best"] or o[COST] < r[COST]) for o in ROWS)


def test_smallest_within_x_points_is_the_cheapest_close_enough_on_validation():
    assert capacity.smallest_within(ROWS, "big", 0.97, 1)["params"]["student.hidden"] == 64
    assert capacity.smallest_within(ROWS, "big", 0.97, 2)["params"]["student.hidden"] == 16
    assert capacity.smallest_within(ROWS, "big", 0.97, 15)["params"]["student.hidden"] == 4
    assert capacity.smallest_within(ROWS, "big", 0.99, 1) is None


def test_within_pick_verdicts_against_the_teacher_minus_x(tmp_path):
    study = load_study(QUICKSTART_FAMILY, ["family.within=[2, 5]", "teachers={big: {model: {kind: mlp}}}"])
    pick = capacity.smallest_within(ROWS, "big", 0.97, 2)
    confirm = [row("annealing", 16, 0.95, tau=3, phase="confirm", test=t) for t in (0.945, 0.95, 0.955)]
    quality = {"big": {"val": 0.97, "test": 0.96}}
    p2, p5 = capacity.within_picks(study, ROWS + confirm, quality)
    assert p2.trial is pick and p2.values == [0.945, 0.95, 0.955]
    assert p2.text.startswith("cannot tell")  # CI ~ 0.9376..0.9624 holds 0.96 - 0.02 = 0.94
    assert p5.trial["params"]["student.hidden"] == 16 and p5.text.startswith("within 5 points")  # low > 0.91


def test_tau_max_trend_over_size_with_its_interval():
    study = load_study(QUICKSTART_FAMILY)
    trend = capacity.tau_trend(study, [dict(r, teacher="mlp-256x2") for r in ROWS], "mlp-256x2")
    assert trend.points == [(400, 5.0), (800, 4.0), (1600, 3.0), (6400, 2.0)]
    assert trend.slope < 0 and trend.high < 0 and trend.text.startswith("smaller students want a higher tau_max")
    few = capacity.tau_trend(study, [dict(r, teacher="mlp-256x2") for r in ROWS[:4]], "mlp-256x2")
    assert "too few to fit a trend" in few.text


def test_fanova_importances_run_offline_and_find_the_knob_that_matters():
    study = load_study(QUICKSTART_FAMILY, ["teachers={big: {model: {kind: mlp}}}"])
    rows = [row("kd", h, 0.5 + 0.4 * (h / 64), alpha=None) for h in (2, 4, 8, 16, 32, 64, 3, 6, 12, 24)]
    for i, r in enumerate(rows):
        r["params"].update(alpha=0.1 + 0.08 * ((i * 7) % 10), kd_temperature=1 + (i * 3) % 7)
    got = capacity.importances(study, rows)
    kd = got[("big", "kd")]
    assert set(kd) == {"student.hidden", "alpha", "kd_temperature", "lr"} and max(kd, key=kd.get) == "student.hidden"


FAMILY_SPACES = sorted((REPO / "search_spaces" / "family").glob("*.yaml"))


@pytest.mark.parametrize("path", FAMILY_SPACES, ids=[p.name for p in FAMILY_SPACES])
def test_every_family_space_validates_against_the_family_study_that_uses_it(path):
    study = load_study(REPO / "studies" / f"{path.stem}-family.yaml")
    assert study.search.space == path and study.family is not None
    assert validate(study).student_fields


def test_a_latency_cost_is_timed_by_the_worker_and_becomes_the_cost(tmp_path):
    import torch

    from akd_ray.config import TaskSpec
    from akd_ray.engine import inference_latency
    from akd_ray.models import build_model
    from akd_ray.tasks import load_task

    task = load_task(TaskSpec(name="digits"))
    small, wide = (build_model(MLP(kind="mlp", hidden=(h,)), task) for h in (4, 4096))
    torch.set_num_threads(1)
    ms = [min(inference_latency(m, task, 512, "cpu") for _ in range(3)) for m in (small, wide)]
    assert 0 < ms[0] < ms[1]  # a 1000x wider layer is slower to run: the timing measures the model

    study = load_study(family_study(tmp_path, {"kind": "mlp"}, {"student.hidden": {"type": "int", "low": 2, "high": 8}},
                                    family={"model": {"kind": "mlp"}, "cost": "latency", "latency_batch_size": 32,
                                            "latency_device": "cpu"}))
    run = run_config(study, {"teacher": "big", "student": "family", "method": "scratch", "phase": "search",
                             "student.hidden": 4}, {"big": tmp_path})
    assert (run.latency_batch_size, run.latency_device) == (32, "cpu")
    per_pair = load_study(REPO / "studies" / "quickstart.yaml")
    run = run_config(per_pair, {"teacher": "mlp-256x2", "student": "mlp-4", "method": "scratch", "phase": "search"},
                     {"mlp-256x2": tmp_path})
    assert run.latency_batch_size is None and run.student_model == per_pair.students["mlp-4"]
