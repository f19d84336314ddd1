"""Tasks by name: each loader turns a `TaskSpec` into `TaskData` (three labelled tensor splits)."""

from __future__ import annotations

from pathlib import Path

from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Augment, Split, TaskData


def load_task(spec: TaskSpec, tokenizer_path: str | None = None, cache_dir: Path | None = None) -> TaskData:
    """Load the data of `spec`. GLUE needs the tokenizer of the model that reads it, and keeps its
    tokenized splits under `cache_dir` (the study's cache) when one is given; a CIFAR ImageFolder
    keeps its decoded images there."""
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


__all__ = ["Augment", "Split", "TaskData", "load_task"]
