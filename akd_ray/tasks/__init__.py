"""Tasks by name: each loader turns a `TaskSpec` into `TaskData` (three labelled tensor splits)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Augment, Split, TaskData, label_budget, split_off, take


# Which rows keep their labels under `task.labelled_samples`: fixed, so every trial, seed and teacher
# sees the same labelled rows.
LABEL_SEED = 0


def load_task(spec: TaskSpec, tokenizer_path: str | None = None, cache_dir: Path | None = None) -> TaskData:
    """Load the data of `spec`. GLUE needs the tokenizer of the model that reads it, and keeps its
    tokenized splits under `cache_dir` (the study's cache) when one is given; a CIFAR ImageFolder
    keeps its decoded images there. With `spec.labelled_samples`, only that many training rows stay
    labelled for the student (`label_budget`, drawn after the validation split)."""
    task = _load(spec, tokenizer_path, cache_dir)
    if spec.labelled_samples is None:
        return task
    return dataclasses.replace(task, train=label_budget(task.train, spec.labelled_samples, LABEL_SEED))


def _load(spec: TaskSpec, tokenizer_path: str | None, cache_dir: Path | None) -> TaskData:
    if spec.name == "digits":
        from akd_ray.tasks.digits import load_digits_task
        return load_digits_task(spec)
    if spec.name in ("cifar10", "cifar100"):
        from akd_ray.tasks.cifar import load_cifar_task
        return load_cifar_task(spec, cache_dir)  # an ImageFolder is decoded once into the cache
    if spec.is_glue:
        from akd_ray.tasks.glue import load_glue_task
        if tokenizer_path is None:
            raise ValueError(f"task {spec.name} needs a tokenizer path (the model's own)")
        return load_glue_task(spec, tokenizer_path, cache_dir)
    raise ValueError(f"unknown task {spec.name!r}")


def train_labels(spec: TaskSpec) -> torch.Tensor | None:
    """The labels of the student's training rows before any labelled budget (after the validation
    split and max_train_samples), read without decoding or tokenizing anything; None where the data
    is not here yet (a download)."""
    spec = spec.model_copy(update={"labelled_samples": None, "unlabelled": None})
    if spec.name == "digits":
        from akd_ray.tasks.digits import load_digits_task
        return load_digits_task(spec).train.labels
    if spec.data_dir is None:
        return None
    if spec.is_glue:
        from akd_ray.tasks.glue import read_glue_dir, train_rows
        return train_rows(read_glue_dir(spec.data_dir, spec.name.removeprefix("glue/"))["train"], spec)[0].labels
    from akd_ray.tasks.cifar import VAL_SEED, SAMPLE_SEED, list_image_folder
    labels = torch.tensor(list_image_folder(Path(spec.data_dir).expanduser() / "train")[2])
    train, _ = split_off(Split({"row": torch.arange(len(labels))}, labels), spec.val_fraction, seed=VAL_SEED)
    return take(train, spec.max_train_samples, seed=SAMPLE_SEED).labels


__all__ = ["Augment", "Split", "TaskData", "load_task", "train_labels"]
