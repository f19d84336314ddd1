"""TaskData on a device: every split moves, the original stays, and batches are gathered there."""

from __future__ import annotations

import pytest
import torch

from akd_ray.tasks.base import Augment, Split, TaskData
from akd_ray.tasks.cifar import CifarInputs


def image_task() -> TaskData:
    def split(n: int) -> Split:
        return Split({"x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)}, torch.arange(n) % 10)

    return TaskData("cifar10", 10, "accuracy", split(20), split(6), split(8), CifarInputs("cifar10"),
                    extra_tests={"other": split(4)}, augments=True)


def test_to_moves_every_split_and_keeps_the_original():
    task = image_task()
    moved = task.to("meta")  # a device without memory: placement and shapes, on any machine
    for name in ("train", "val", "test"):
        split = getattr(moved, name)
        assert all(t.device.type == "meta" for t in (*split.features.values(), split.labels))
        assert getattr(task, name).labels.device.type == "cpu"
    assert moved.extra_tests["other"].labels.device.type == "meta"
    assert moved.train.features["x"].dtype == torch.uint8  # converted per batch, not up front
    assert (moved.name, moved.augments, moved.to_inputs) == (task.name, task.augments, task.to_inputs)


def test_batches_are_gathered_on_the_device_with_host_indices():
    moved = image_task().to("meta")
    idx = torch.tensor([7, 2, 19])  # the worker's indices live on the host
    inputs, labels = moved.batch(moved.train, idx, torch.device("meta"), Augment(0, 1, idx))
    assert inputs["x"].device.type == labels.device.type == "meta"
    assert inputs["x"].shape == (3, 3, 32, 32) and inputs["x"].dtype == torch.float32


def test_to_cpu_changes_no_batch():
    task = image_task()
    idx = torch.tensor([5, 0, 11])
    a, ya = task.batch(task.train, idx, torch.device("cpu"), Augment(3, 2, idx))
    same = task.to("cpu")
    b, yb = same.batch(same.train, idx, torch.device("cpu"), Augment(3, 2, idx))
    torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=0)
    assert torch.equal(ya, yb) and same.fingerprint() == task.fingerprint()


# ---------------------------------------------------------------------------------------- few labels
def test_the_labelled_draw_is_stratified_and_reproducible():
    from akd_ray.config import TaskSpec
    from akd_ray.tasks import load_task

    a, b = (load_task(TaskSpec(name="digits", labelled_samples=100)) for _ in range(2))
    assert torch.equal(a.train.labelled, b.train.labelled)  # the same rows for every trial and teacher
    assert a.train.labelled.sum() == 100 and len(a.train) == 1295  # the rest of train stays, unlabelled
    assert a.train.labels[a.train.labelled].bincount().tolist() == [10] * 10
    full = load_task(TaskSpec(name="digits"))
    assert torch.equal(a.val.labels, full.val.labels) and torch.equal(a.test.labels, full.test.labels)
    assert full.train.labelled is None


def test_an_uneven_budget_keeps_each_class_s_share_and_at_least_one_row():
    from akd_ray.tasks.base import label_budget

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 9 + [3] * 1)
    split = Split({"x": torch.arange(100.0)[:, None]}, labels)
    drawn = label_budget(split, 20, seed=3)
    assert drawn.labelled.sum() == 20
    assert labels[drawn.labelled].bincount(minlength=4).tolist() == [12, 6, 1, 1]  # 12, 6, 1.8 -> 1, 0.2 -> 1
    assert not torch.equal(drawn.labelled, label_budget(split, 20, seed=4).labelled)  # the seed draws the rows
    for n, phrase in ((3, "fewer than the 4 classes"), (101, "has 100 labelled rows")):
        with pytest.raises(ValueError, match=phrase):
            label_budget(split, n)


def test_extra_unlabelled_rows_follow_train_without_labels():
    from akd_ray.tasks.base import label_budget, with_unlabelled

    split = label_budget(Split({"x": torch.zeros(10, 2)}, torch.arange(10) % 2), 4)
    union = with_unlabelled(split, {"x": torch.ones(3, 2)})
    assert len(union) == 13 and union.labels[10:].tolist() == [-1] * 3
    assert union.labelled.sum() == 4 and not union.labelled[10:].any()
    assert torch.equal(union.subset(torch.tensor([10, 0])).labelled, torch.tensor([False, split.labelled[0].item()]))
