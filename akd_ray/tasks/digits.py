"""scikit-learn's bundled 8x8 digits: the offline quickstart task (1,797 images, 10 classes)."""

from __future__ import annotations

import torch

from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Split, TaskData, split_off, take


def load_digits_task(spec: TaskSpec) -> TaskData:
    from sklearn.datasets import load_digits

    if spec.unlabelled is not None:
        raise ValueError("task.unlabelled: digits has no extra unlabelled source; use task.labelled_samples")
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # pixel counts 0..16 -> [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    rest, test = split_off(Split({"x": x}, y), 0.2, seed=0)  # fixed: the reported set never moves
    train, val = split_off(rest, spec.val_fraction, seed=1)
    return TaskData(
        name=spec.name, num_labels=10, metric="accuracy",
        train=take(train, spec.max_train_samples), val=take(val, spec.max_eval_samples), test=take(test, spec.max_eval_samples),
        to_inputs=_inputs,
    )


def _inputs(feats: dict[str, torch.Tensor], augment: object) -> dict[str, torch.Tensor]:
    return {"x": feats["x"]}  # already scaled floats; digits are never augmented
