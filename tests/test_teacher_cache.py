"""The teacher-logit cache is exact under augmentation, read back from disk, and keyed by the views.

Real CIFAR-10 images (the shared subset) and a real ResNet-8 teacher: the cached logits for epoch e
must be the teacher's outputs on exactly the augmented views the student sees in epoch e, however
the student's batches are ordered and sized. Skips where the shared data is absent.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import weakref

import pytest
import torch

from akd_ray import logits as teachers
from akd_ray.config import ResNet, TaskSpec
from akd_ray.engine import epoch_order
from akd_ray.models import build_model, logits_of, save_model
from akd_ray.tasks import load_task
from akd_ray.tasks.base import Augment
from akd_ray.logits import TEACHER_FILE, TeacherLogits, weights_fingerprint

CPU = torch.device("cpu")
AUGMENT_SEED = 7
CACHE_BATCH = 100  # the cache's own batches: sequential, of 100
STUDENT_BATCH = 48  # the student's: a seeded permutation, of 48


@pytest.fixture(scope="module")
def task(shared_data):
    folder = shared_data / "cifar10-subset" / "jpg"
    if not folder.is_dir():
        pytest.skip(f"no CIFAR-10 subset at {folder}")
    return load_task(TaskSpec(name="cifar10", data_dir=folder, max_train_samples=256, max_eval_samples=64))


@pytest.fixture(scope="module")
def teacher_dir(task, tmp_path_factory):
    """A ResNet-8 saved as a prepared teacher, its BatchNorm statistics taken on the training images."""
    torch.manual_seed(0)
    spec = ResNet(kind="resnet", depth=8)
    model = build_model(spec, task)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of the whole pass
    model.train()
    with torch.no_grad():
        for idx in torch.arange(len(task.train)).split(128):
            model(**task.batch(task.train, idx, CPU)[0])
    folder = save_model(model, spec, tmp_path_factory.mktemp("teachers") / "resnet8", task)
    info = {"name": "resnet8", "fingerprint": weights_fingerprint(folder), "prepared": "train",
            "model": spec.model_dump(mode="json")}
    (folder / TEACHER_FILE).write_text(json.dumps(info, indent=2))  # as prepare_teacher writes it
    return folder


def student_views(task, epoch: int, seed: int = 3) -> list[torch.Tensor]:
    """The student's batches of `epoch`, as the worker loop draws them."""
    return epoch_order(len(task.train), seed, epoch, STUDENT_BATCH)


@torch.no_grad()
def fresh_forward(task, teacher_dir, epoch: int, idx: torch.Tensor) -> torch.Tensor:
    model = teachers.load_model(teacher_dir, task)
    inputs, _ = task.batch(task.train, idx, CPU, Augment(AUGMENT_SEED, epoch, idx))
    return logits_of(model, inputs)


def test_cached_logits_are_the_teacher_on_the_students_views(task, teacher_dir, tmp_path):
    cache = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, tmp_path, batch_size=CACHE_BATCH)
    assert task.augments
    for epoch in (0, 1):
        for idx in student_views(task, epoch)[:3]:  # different order and size than the cache's batches
            torch.testing.assert_close(cache.get(epoch, idx), fresh_forward(task, teacher_dir, epoch, idx))

    # views differ between epochs, and so do their logits: epoch 1's table is not epoch 0's
    t0, t1 = cache.table(0).clone(), cache.table(1).clone()
    differs = (t0 - t1).abs().amax(1) > 1e-4
    assert differs.float().mean() > 0.9, "most samples should be seen through a different crop/flip"
    idx = student_views(task, 1)[0]
    assert not torch.allclose(t0[idx], fresh_forward(task, teacher_dir, 1, idx))


def test_a_new_instance_reads_the_cache_from_disk(task, teacher_dir, tmp_path, monkeypatch):
    first = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, tmp_path, batch_size=CACHE_BATCH)
    tables = {epoch: first.table(epoch).clone() for epoch in (0, 1)}
    files = sorted((tmp_path / "teacher-logits").rglob("*.pt"))
    assert [f.name for f in files] == ["view0.pt", "view1.pt"]
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its logits are cached")

    monkeypatch.setattr(teachers, "load_model", no_teacher)
    again = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, tmp_path, batch_size=512)
    for epoch in (1, 0):
        torch.testing.assert_close(again.table(epoch), tables[epoch], rtol=0, atol=0)
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_the_teacher_is_freed_once_its_logits_exist(task, teacher_dir, tmp_path, monkeypatch):
    loaded = []
    real = teachers.load_model

    def tracked(*args, **kwargs):
        model = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(teachers, "load_model", tracked)
    cache = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, None)  # in memory only: computed here
    cache.get(0, torch.tensor([3, 1, 2]))
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None, "something still holds the teacher model"


def test_cache_key_follows_the_augment_seed_and_the_data(task, teacher_dir, tmp_path):
    key = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, tmp_path).key
    assert TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED, tmp_path).key == key
    other_seed = TeacherLogits(teacher_dir, task, CPU, AUGMENT_SEED + 1, tmp_path)
    assert other_seed.key != key and other_seed.cache.name != key  # its own cache folder
    fewer = dataclasses.replace(task, train=task.train.subset(torch.arange(200)))
    assert TeacherLogits(teacher_dir, fewer, CPU, AUGMENT_SEED, tmp_path).key != key
