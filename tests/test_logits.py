"""The teacher-logit cache computes each table once across processes and never serves one teacher's
logits for another's weights. Real digits, a real prepared teacher with Pro-KD snapshots."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

from akd_ray import logits
from akd_ray.config import MLP, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.logits import TEACHER_FILE, TeacherLogits, checkpoint_dirs, compute_logits, teacher_info
from akd_ray.models import load_model, save_model, spec_of
from akd_ray.tasks import load_task
from akd_ray.teacher import prepare_teacher

TASK = TaskSpec(name="digits")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(64,)), train=TrainSpec(epochs=4, lr=3e-3), checkpoints=2)
    return prepare_teacher("mlp-64", spec, TASK, tmp_path_factory.mktemp("study"))


def _ask_for_the_table(teacher_dir: str, cache: str, out: str, start, counter: str) -> None:
    """One process (a trial): count every teacher forward pass, then ask for epoch 0's table."""
    real = logits.compute_logits

    def counted(*args, **kwargs):
        with open(counter, "a") as f:  # O_APPEND: one line per call, from any process
            f.write("forward\n")
        time.sleep(1.0)  # long enough that the other two ask while this one computes
        return real(*args, **kwargs)

    logits.compute_logits = counted
    task = load_task(TASK)
    start.wait()  # all three ask at the same moment
    table = TeacherLogits(Path(teacher_dir), task, CPU, 0, Path(cache)).table(0)
    torch.save(table, out)


def test_three_processes_asking_at_once_run_the_teacher_once(teacher_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    counter = tmp_path / "forwards.txt"
    procs = [ctx.Process(target=_ask_for_the_table, args=(str(teacher_dir), str(tmp_path / "cache"),
                                                         str(tmp_path / f"table{i}.pt"), start, str(counter)))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert counter.read_text().splitlines() == ["forward"]  # one process computed, two waited and read
    tables = [torch.load(tmp_path / f"table{i}.pt", weights_only=True) for i in range(3)]
    assert all(torch.equal(t, tables[0]) for t in tables)
    task = load_task(TASK)
    torch.testing.assert_close(tables[0], compute_logits(load_model(teacher_dir, task), task, CPU, 64))
    assert not list((tmp_path / "cache").rglob("*.tmp")), "a temporary file was left behind"


def test_snapshot_tables_are_keyed_by_the_snapshots_own_weights(teacher_dir, tmp_path):
    """Pro-KD: two teachers with the same final weights and different snapshots get their own tables."""
    task = load_task(TASK)
    other = tmp_path / "same-final-other-snapshots"
    shutil.copytree(teacher_dir, other)
    first = checkpoint_dirs(other)[0]
    model = load_model(first, task)
    with torch.no_grad():
        next(model.parameters()).mul_(-1.0)
    save_model(model, spec_of(first), first, task)
    assert teacher_info(other)["fingerprint"] == teacher_info(teacher_dir)["fingerprint"]

    cache = tmp_path / "cache"  # one cache for both, as in a study
    a = TeacherLogits(teacher_dir, task, CPU, 0, cache).table(0, snapshot=0).clone()
    b = TeacherLogits(other, task, CPU, 0, cache).table(0, snapshot=0).clone()
    torch.testing.assert_close(b, compute_logits(load_model(first, task), task, CPU, 64))
    assert not torch.allclose(a, b)
    # the final teachers are the same weights: one table serves both
    assert torch.equal(TeacherLogits(teacher_dir, task, CPU, 0, cache).table(0),
                       TeacherLogits(other, task, CPU, 0, cache).table(0))
    assert len(list((cache / "teacher-logits").glob("*/view0.pt"))) == 3


def test_fingerprints_are_rechecked_by_size_and_mtime_only(teacher_dir, tmp_path, monkeypatch):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_dir, copy)
    fp = teacher_info(copy)["fingerprint"]  # stamps of the copy recorded here
    recorded = json.loads((copy / TEACHER_FILE).read_text())
    assert set(recorded["stamps"]) == {"model.safetensors"} and len(recorded["snapshots"]) == 2

    hashed = []
    real = logits.weights_fingerprint
    monkeypatch.setattr(logits, "weights_fingerprint", lambda f: hashed.append(f) or real(f))
    assert teacher_info(copy)["fingerprint"] == fp and hashed == []  # unchanged files: nothing read

    task = load_task(TASK)
    model = load_model(copy, task)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    save_model(model, spec_of(copy), copy, task)
    assert teacher_info(copy)["fingerprint"] != fp and hashed == [copy]  # only the changed model
    assert json.loads((copy / TEACHER_FILE).read_text())["fingerprint"] == teacher_info(copy)["fingerprint"]
