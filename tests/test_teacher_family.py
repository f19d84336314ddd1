"""Teachers as a dimension in the schema: a teacher family's members, checkpoints as candidate teachers
(named `<teacher>-epoch<e>`), a shared scratch, TAKD's assistant from the family; the one-line refusals of
`validate`; each candidate's teacher logits computed once; both shipped teacher studies validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from akd_ray.cli import app
from akd_ray.config import ConfigError, TrainSpec, load_study
from akd_ray.logits import TeacherLogits, checkpoint_dirs
from akd_ray.tasks.digits import load_digits_task

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def write(tmp_path: Path, **changes) -> Path:
    (tmp_path / "space.yaml").write_text("params: {}\n")
    data = {"name": "tf", "task": {"name": "digits"},
            "teacher_family": {"name": "t", "model": {"kind": "mlp", "hidden": [64, 64]}, "sizes": [32, 128],
                               "train": {"epochs": 20}, "checkpoints": 4, "checkpoints_as_teachers": True},
            "students": {"s": {"kind": "mlp", "hidden": [4]}},
            "search": {"space": "space.yaml", "trials": 1}}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "s.yaml"


def test_the_family_members_and_their_checkpoints_are_the_candidate_teachers(tmp_path):
    study = load_study(write(tmp_path, teachers={"big": {"model": {"kind": "mlp", "hidden": [256]}}}))
    assert list(study.teachers) == ["big", "t-32", "t-128"]
    assert study.teachers["t-128"].model.hidden == (128, 128) and study.teachers["t-128"].train.epochs == 20
    # 4 snapshots of 20 epochs: after epochs 5, 10, 15, 20; the last is the converged teacher's twin
    assert list(study.candidates) == ["big", "t-32", "t-32-epoch5", "t-32-epoch10", "t-32-epoch15",
                                      "t-128", "t-128-epoch5", "t-128-epoch10", "t-128-epoch15"]
    assert study.candidates["t-128-epoch10"].snapshot == 1 and study.teacher_of("t-128-epoch10").model.hidden == (128, 128)
    assert [t for t, _ in study.pairs] == list(study.candidates)
    assert study.shared_scratch == "big"


def test_snapshot_epochs_follow_the_engine(tmp_path):
    """The name's epoch is the one the engine saves snapshot k after (round((k+1) E / n))."""
    study = load_study(write(tmp_path, teacher_family__train={"epochs": 7}, teacher_family__checkpoints=3))
    assert [c.epoch for c in study.candidates.values() if c.snapshot is not None] == [2, 5, 2, 5]


def test_takd_draws_its_assistant_from_the_family(tmp_path):
    study = load_study(write(tmp_path, teacher_family__assistant=32, search={"space": "space.yaml",
                                                                             "trials": {"takd": 1, "kd": 1}}))
    assert study.assistant.hidden == (32, 32)


@pytest.mark.parametrize("changes, message", [
    ({"teacher_family__model": {"kind": "resnet", "depth": 20}, "teacher_family__sizes": [20, 21],
      "task": {"name": "cifar10"}, "students": {"s": {"kind": "resnet", "depth": 8}}},
     "teacher_family: sizes[1]: a resnet teacher cannot take depth 21; valid: 8, 14, 20, 32, 44, 56, 110"),
    ({"teacher_family__model": {"kind": "hf_config", "layers": 2}, "task": {"name": "glue/sst2"},
      "students": {"s": {"kind": "hf_config", "layers": 1}}},
     "teacher_family: model: kind 'hf_config' has no size a family can vary; valid kinds: mlp, cnn, resnet"),
    ({"teachers": {"t-32": {"model": {"kind": "mlp", "hidden": [8]}}}},
     "its member 't-32' clashes with the named teacher teachers.t-32; rename one"),
    ({"teachers": {"t-32-epoch10": {"model": {"kind": "mlp"}}}},
     "teachers.t-32-epoch10: the name of a checkpoint candidate of teacher 't-32'"),
    ({"teacher_family__assistant": 32, "assistant": {"kind": "mlp", "hidden": [8]}},
     "teacher_family.assistant and `assistant` both name TAKD's assistant"),
])
def test_bad_teacher_dimensions_are_refused_in_one_line(tmp_path, changes, message):
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, **changes))
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    assert str(tmp_path / "s.yaml") in str(e.value)


def test_validate_refuses_checkpoints_as_teachers_on_a_loaded_teacher_without_snapshots(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "teacher.safetensors"))
    path = write(tmp_path, teachers={"loaded": {"model": {"kind": "mlp"}, "prepare": "load",
                                                "path": "teacher.safetensors", "checkpoints_as_teachers": True}})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "teachers.loaded.checkpoints_as_teachers: the loaded teacher" in lines[0]
    assert "has no training snapshots" in lines[0] and f"{path}:" in lines[0]


def test_each_candidate_teachers_logits_are_computed_once(tmp_path):
    """A checkpoint candidate is a prepared teacher of its own, keyed by the snapshot's weights: its logit
    table is the one Pro-KD reads for that snapshot, computed once for every trial and re-preparation."""
    from akd_ray.config import MLP, TaskSpec, TeacherSpec
    from akd_ray.teacher import prepare_snapshot_teacher, prepare_teacher

    task_spec = TaskSpec(name="digits", max_train_samples=300)
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(16,)), train=TrainSpec(epochs=4, device="cpu"), checkpoints=2)
    teacher = prepare_teacher("t", spec, task_spec, tmp_path)
    assert len(checkpoint_dirs(teacher)) == 2
    first = prepare_snapshot_teacher("t-epoch2", teacher, 0, tmp_path)
    assert prepare_snapshot_teacher("t-epoch2", teacher, 0, tmp_path) == first  # once, then found again
    task = load_digits_task(task_spec)
    cache = tmp_path / "cache"
    candidate = TeacherLogits(first, task, torch.device("cpu"), 0, cache)
    base = TeacherLogits(teacher, task, torch.device("cpu"), 0, cache)
    assert candidate.key == base.key_of(0) != base.key  # the snapshot's own weights, not the converged ones
    table = candidate.table(0)
    written = sorted(cache.rglob("*.pt"))
    again = TeacherLogits(first, task, torch.device("cpu"), 0, cache).table(0)  # another trial
    prokd = base.table(0, snapshot=0)  # Pro-KD following the same snapshot
    assert sorted(cache.rglob("*.pt")) == written and len(written) == 1
    assert [w.stat().st_mtime_ns for w in written] == [w.stat().st_mtime_ns for w in sorted(cache.rglob("*.pt"))]
    assert torch.equal(table, again) and torch.equal(table, prokd)


@pytest.mark.parametrize("name", ["quickstart-teachers.yaml", "cifar-teachers.yaml"])
def test_the_shipped_teacher_studies_validate(name):
    result = CliRunner().invoke(app, ["validate", str(STUDIES / name)])
    assert result.exit_code == 0, result.output
    study = load_study(STUDIES / name)
    assert len(study.teacher_family.sizes) >= 3 and study.teacher_family.checkpoints_as_teachers
    assert len(study.students) == 2 and len(set(study.search.trials.values())) == 1  # equal budgets
    assert len(study.candidates) >= 2 * len(study.teacher_family.sizes)  # each size and an early checkpoint


def test_the_plan_counts_scratch_once_per_student(tmp_path):
    from akd_ray import preflight

    study = load_study(write(tmp_path))
    (tmp_path / "space.yaml").write_text("params: {lr: {type: float, low: 0.001, high: 0.01}}\n")
    plan = preflight.check(study)
    assert len(study.pairs) == 8  # 2 sizes x (converged + 3 early checkpoints), 1 student
    assert plan.search_trials == 1 + 8 * 2  # scratch once; KD and Annealing-KD per candidate
    assert plan.confirm_runs == plan.search_trials * study.search.confirm_seeds


def test_the_search_has_one_scratch_group_per_student(tmp_path):
    from akd_ray.space import load_space
    from akd_ray.study.search import PairedSearch

    study = load_study(write(tmp_path))
    (tmp_path / "space.yaml").write_text("params: {lr: {type: float, low: 0.001, high: 0.01}}\n")
    groups = PairedSearch(study, load_space(study.search.space)).groups
    assert [k for k in groups if k[2] == "scratch"] == [("t-32", "s", "scratch")]
    assert len(groups) == 1 + 8 * 2
