"""TaskData on a device: every split moves, the original stays, and batches are gathered there."""

from __future__ import annotations

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
