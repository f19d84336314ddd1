"""The worker loop end to end on the bundled digits: methods, schedule, resume, logit cache."""

from __future__ import annotations

import math

import pytest
import torch

from akd_ray.config import MLP, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import plan, run_distillation
from akd_ray.method import phi
from akd_ray.tasks import load_task
from akd_ray.logits import TeacherLogits, checkpoint_dirs, compute_logits, teacher_info
from akd_ray.teacher import prepare_assistant, prepare_teacher
from akd_ray.models import load_model

TASK = TaskSpec(name="digits")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(128, 128)), train=TrainSpec(epochs=15, lr=3e-3), checkpoints=3)
    return prepare_teacher("mlp-128x2", spec, TASK, tmp_path_factory.mktemp("study"))


ASSISTANT = MLP(kind="mlp", hidden=(64,))
RECIPE = TrainSpec(epochs=12, lr=1e-2)


@pytest.fixture(scope="module")
def assistant_dir(teacher_dir):
    return prepare_assistant(ASSISTANT, TASK, RECIPE, teacher_dir, teacher_dir.parents[1])


def student_run(teacher_dir, method, tmp_path, assistant_dir=None, **train):
    return RunConfig(task=TASK, teacher_dir=teacher_dir, student_model=MLP(kind="mlp", hidden=(32,)),
                     assistant_model=ASSISTANT, assistant_dir=assistant_dir, method=method, cache_dir=tmp_path / "cache",
                     train=TrainSpec(**{"epochs": 12, "lr": 1e-2, "tau_max": 4, "stage1_fraction": 2 / 3, **train}))


def test_teacher_is_trained_once_with_snapshots(teacher_dir, tmp_path):
    info = teacher_info(teacher_dir)
    assert info["metrics"]["test_metric"] > 0.93  # a real teacher, not a stub
    assert len(checkpoint_dirs(teacher_dir)) == 3
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(128, 128)), train=TrainSpec(epochs=15, lr=3e-3), checkpoints=3)
    stamp = (teacher_dir / "teacher.json").stat().st_mtime_ns
    again = prepare_teacher("mlp-128x2", spec, TASK, teacher_dir.parents[1])
    assert again == teacher_dir and (again / "teacher.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("method", ["scratch", "kd", "annealing", "takd", "prokd"])
def test_every_method_trains_a_sane_student(teacher_dir, tmp_path, method, request):
    history = []
    assistant = request.getfixturevalue("assistant_dir") if method == "takd" else None
    result = run_distillation(student_run(teacher_dir, method, tmp_path, assistant), on_epoch=lambda m, s: history.append(m))
    assert len(history) == 12
    assert result["test_metric"] > 0.8, result  # 10 classes: chance is 0.1
    # a two-stage method's result is its stage-II best; the others' is the best of the whole run
    judged = [e for e in range(12) if history[e]["stage"] == 2 or method not in ("annealing", "prokd")]
    assert result["val_best"] == max(history[e]["val_metric"] for e in judged)
    assert result["best_epoch"] == max(judged, key=lambda e: (history[e]["val_metric"], -e))
    assert result["best_stage"] == history[result["best_epoch"]]["stage"]


def test_a_stage_one_best_is_never_an_annealing_result(teacher_dir, tmp_path, monkeypatch):
    """Validation scores that fall every epoch make stage I's first epoch the best of the run: the result
    is still the best stage-II epoch, its checkpoint tested, best_stage 2."""
    from akd_ray import engine

    real, calls = engine.evaluate, []

    def falling(model, task, split, *args, **kwargs):
        out = real(model, task, split, *args, **kwargs)
        if split is not task.val:
            return out
        calls.append(1)
        return {**out, task.metric: 1.0 - 0.01 * len(calls)}

    monkeypatch.setattr(engine, "evaluate", falling)
    history = []
    result = run_distillation(student_run(teacher_dir, "annealing", tmp_path), on_epoch=lambda m, s: history.append(m))
    assert history[0]["val_metric"] > history[8]["val_metric"]  # stage I's first epoch is the best of the run
    assert result["best_stage"] == 2 and result["best_epoch"] == 8  # the first stage-II epoch: stage II's best
    assert result["val_best"] == history[8]["val_metric"] == history[-1]["stage_best"]


def test_annealing_steps_temperature_down_then_hard_labels(teacher_dir, tmp_path):
    history = []
    run_distillation(student_run(teacher_dir, "annealing", tmp_path), on_epoch=lambda m, s: history.append(m))
    stage1 = [h for h in history if h["stage"] == 1]
    assert [h["temperature"] for h in stage1] == [4, 4, 3, 3, 2, 2, 1, 1]  # 8 stage-I epochs, tau_max 4
    assert [h["phi"] for h in stage1] == [phi(h["temperature"], 4) for h in stage1]
    assert stage1[0]["phi"] == 0.25 and stage1[-1]["phi"] == 1.0
    assert [h["stage"] for h in history[8:]] == [2] * 4 and "temperature" not in history[-1]


def test_prokd_follows_teacher_checkpoints_in_order(teacher_dir, tmp_path):
    history = []
    run_distillation(student_run(teacher_dir, "prokd", tmp_path), on_epoch=lambda m, s: history.append(m))
    ckpts = [h["teacher_checkpoint"] for h in history if h["stage"] == 1]
    assert ckpts == sorted(ckpts) and ckpts[0] == 0 and ckpts[-1] == 2


@pytest.mark.parametrize("method,stop", [("annealing", 5), ("annealing", 8), ("kd", 6)])
def test_resume_from_an_epoch_state_matches_an_uninterrupted_run(teacher_dir, tmp_path, method, stop):
    run = student_run(teacher_dir, method, tmp_path)
    full = run_distillation(run)
    states = {}
    run_distillation(run, on_epoch=lambda m, state: states.__setitem__(m["epoch"], state()))
    resumed = run_distillation(run, resume=states[stop - 1])  # as if killed after epoch `stop - 1`
    assert resumed == full


def test_cached_teacher_logits_equal_a_fresh_forward(teacher_dir, tmp_path):
    task = load_task(TASK)
    cache = TeacherLogits(teacher_dir, task, torch.device("cpu"), 0, tmp_path)
    first = cache.table(0).clone()
    files = list((tmp_path / "teacher-logits").rglob("*.pt"))
    assert len(files) == 1
    fresh = compute_logits(load_model(teacher_dir, task), task, torch.device("cpu"), 97)
    torch.testing.assert_close(first, fresh)
    again = TeacherLogits(teacher_dir, task, torch.device("cpu"), 0, tmp_path)
    torch.testing.assert_close(again.get(3, torch.tensor([5, 1, 9])), fresh[[5, 1, 9]])


def test_changed_teacher_never_reuses_stale_logits(teacher_dir, tmp_path):
    import shutil

    task = load_task(TASK)
    other = tmp_path / "edited"
    shutil.copytree(teacher_dir, other)
    model = load_model(other, task)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    from akd_ray.models import save_model, spec_of
    save_model(model, spec_of(other), other, task)  # teacher.json still holds the old fingerprint
    assert teacher_info(other)["fingerprint"] != teacher_info(teacher_dir)["fingerprint"]  # seen by size/mtime
    a = TeacherLogits(teacher_dir, task, torch.device("cpu"), 0, tmp_path)
    b = TeacherLogits(other, task, torch.device("cpu"), 0, tmp_path)
    assert a.key != b.key
    assert not torch.allclose(a.table(0), b.table(0))


def test_diverging_loss_fails_the_run_with_the_reason(teacher_dir, tmp_path):
    run = student_run(teacher_dir, "scratch", tmp_path, lr=1e12, optimizer="sgd", lr_schedule="constant")
    with pytest.raises(FloatingPointError, match="loss became"):
        run_distillation(run)


def test_plans_split_epochs_between_stages():
    run = RunConfig(task=TASK, student_model=MLP(kind="mlp"), method="scratch", train=TrainSpec(epochs=10))
    assert [(s.loss, s.epochs) for s in plan(run)] == [("ce", 10)]
    assert [(s.loss, s.epochs, s.number) for s in plan(run.model_copy(update={"method": "annealing", "teacher_dir": "x"}))] \
        == [("anneal", 5, 1), ("ce", 5, 2)]
    assert math.isclose(sum(s.epochs for s in plan(run.model_copy(update={"method": "kd", "teacher_dir": "x"}))), 10)


@pytest.mark.parametrize("n,batch", [(1, 7), (63, 64), (64, 64), (65, 64), (1295, 128)])
def test_batch_count_matches_the_epoch_order(n, batch):
    from akd_ray.engine import batches_per_epoch, epoch_order
    assert batches_per_epoch(n, batch) == len(epoch_order(n, 0, 0, batch))


def test_the_engine_imports_neither_teacher_preparation_nor_ray():
    """Imports point one way: teacher preparation runs the engine, the engine only reads the logit cache."""
    import subprocess
    import sys

    code = ("import sys, akd_ray.engine, akd_ray.logits; "
            "print(sorted(m for m in sys.modules if m == 'akd_ray.teacher' or m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_length_buckets_are_a_seeded_shuffle_of_every_row_that_pads_little():
    from akd_ray.engine import batches_per_epoch, epoch_order

    lengths = torch.randint(3, 120, (5000,), generator=torch.Generator().manual_seed(0))
    first = epoch_order(5000, 1, 0, 64, lengths)
    assert torch.equal(torch.cat(first).sort().values, torch.arange(5000))  # every row once
    assert len(first) == batches_per_epoch(5000, 64)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_order(5000, 1, 0, 64, lengths)))  # seeded
    other = epoch_order(5000, 1, 1, 64, lengths)
    assert not torch.equal(torch.cat(first), torch.cat(other))  # a new order every epoch

    def padding(batches):
        return 1 - float(lengths.sum()) / sum(len(b) * int(lengths[b].max()) for b in batches)

    assert padding(first) < 0.1 < 0.3 < padding(epoch_order(5000, 1, 0, 64))  # vs a uniform shuffle


def test_the_best_model_s_test_predictions_are_saved_per_example(teacher_dir, tmp_path):
    import numpy as np

    run = student_run(teacher_dir, "kd", tmp_path, epochs=2)
    result = run_distillation(run, predictions_file=tmp_path / "predictions.npz")
    saved = np.load(tmp_path / "predictions.npz")
    test = load_task(TASK).test
    assert saved["pred"].shape == saved["label"].shape == (len(test),)
    assert np.array_equal(saved["label"], test.labels.numpy())
    # the file is the run's test verdict, example by example: its accuracy is the reported one
    assert math.isclose((saved["pred"] == saved["label"]).mean(), result["test_accuracy"], abs_tol=1e-9)


# ---------------------------------------------------------------------------------------- few labels
FEW = TaskSpec(name="digits", labelled_samples=100)  # 100 of the 1,295 training rows labelled for the student
FEW_SMALL = TaskSpec(name="digits", max_train_samples=400, labelled_samples=40)  # the same, quicker


def poisoned(task):
    """The task with every unlabelled row's label changed to another (still valid) class."""
    import dataclasses

    train = task.train
    labels = torch.where(train.labelled, train.labels, (train.labels + 1) % 10)
    return dataclasses.replace(task, train=dataclasses.replace(train, labels=labels))


@pytest.mark.parametrize("method", ["scratch", "kd", "annealing", "prokd", "takd", "kd+layers", "annealing+minimax",
                                    "layers"])
def test_no_student_loss_reads_an_unlabelled_row_s_label(teacher_dir, assistant_dir, tmp_path, method):
    task = load_task(FEW_SMALL)
    runs = []
    for t in (task, poisoned(task)):
        history = []
        run = student_run(teacher_dir, method, tmp_path, assistant_dir, epochs=4, tau_max=2, stage1_fraction=0.5,
                          minimax_steps=1).model_copy(update={"task": FEW_SMALL})
        result = run_distillation(run, task=t, on_epoch=lambda m, s: history.append(m["train_loss"]))
        runs.append((history, result["test_metric"]))
    assert not torch.equal(task.train.labels, poisoned(task).train.labels)
    assert runs[0] == runs[1]  # every epoch's loss, and the test metric, exactly as with the true labels


def test_teacher_terms_use_every_row_and_label_terms_the_labelled_ones():
    from akd_ray.engine import epoch_batches

    split = load_task(FEW).train
    every, rows = epoch_batches(split, labels_only=False, seed=1, epoch=0, batch_size=64)
    assert rows is None and sorted(torch.cat(every).tolist()) == list(range(len(split)))  # the union, once each
    labelled_only, rows = epoch_batches(split, labels_only=True, seed=1, epoch=0, batch_size=64)
    assert len(labelled_only) == len(every)  # the same steps for every method
    drawn = rows[torch.cat(labelled_only)]
    assert split.labelled[drawn].all()  # scratch and stage II: labelled rows only
    assert set(drawn.bincount(minlength=len(split))[split.labelled].tolist()) == {12, 13}  # 1,295 / 100 each
    assert len(torch.cat(labelled_only).unique()) == len(split)  # distinct positions: a fresh view per repeat


@pytest.mark.parametrize("loss", ["kd", "anneal"])
def test_kd_and_stage_one_read_the_teacher_on_unlabelled_rows(loss):
    """Changing the teacher's logits on an unlabelled row changes KD's and stage I's loss."""
    from akd_ray.engine import Stage, batch_loss

    model = torch.nn.Linear(4, 3)
    inputs, labels = {"x": torch.randn(4, 4)}, torch.tensor([0, 1, 2, 0])
    labelled = torch.tensor([True, False, False, True])
    z_t = torch.randn(4, 3)
    moved = z_t.clone()
    moved[1] += torch.tensor([3.0, -3.0, 0.0])  # row 1 is unlabelled

    def loss_with(teacher):
        return batch_loss(Stage(loss, 2, 1), lambda **kw: model(kw["x"]), inputs, labels, lambda: teacher,
                          TrainSpec(tau_max=2), 2.0 if loss == "anneal" else None, torch.autocast("cpu", enabled=False),
                          False, None, labelled)

    assert not torch.allclose(loss_with(z_t), loss_with(moved))
