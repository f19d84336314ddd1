"""Teachers on Ray: prepared (trained or loaded) once each as Ray tasks, then assessed against the
majority class before any search."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import ray
import torch

from akd_ray import progress
from akd_ray.config import Study, TaskSpec, TrainSpec
from akd_ray.study.layout import Layout


def prepare_teachers(study: Study) -> dict[str, Path]:
    """Each teacher trained (or loaded) once, as a Ray task with one trial's resources (the live view
    follows its epochs through a small file each task writes); then, for TAKD, each teacher's
    assistant, once per study, with the study's assistant recipe."""
    from akd_ray.teacher import prepare_assistant, prepare_teacher

    files = {name: Layout.of(study).teachers / f".{name}.epoch.json" for name in study.teachers}
    refs = {name: _as_task(study, prepare_teacher).remote(name, spec, study.task, Layout.of(study).root, study.seed,
                                                          on_epoch=progress.TeacherEpochs(files[name], spec.train.epochs))
            for name, spec in study.teachers.items()}
    dirs = progress.wait_teachers(refs, files)
    dirs.update(prepare_candidates(study, dirs))
    if "takd" in study.search.trials:
        ray.get([_as_task(study, prepare_assistant).remote(study.assistant, study.task, study.assistant_train or study.train, d,
                                  Layout.of(study).root, study.seed) for d in dirs.values()])
    return dirs


def prepare_candidates(study: Study, dirs: dict[str, Path]) -> dict[str, Path]:
    """Each early checkpoint a study names as a candidate teacher (`<teacher>-epoch<e>`), as a prepared
    teacher folder of its own: a copy of the snapshot's weights, done once (no training, so no Ray task)."""
    from akd_ray.teacher import prepare_snapshot_teacher

    return {name: prepare_snapshot_teacher(name, dirs[c.teacher], c.snapshot, Layout.of(study).root)
            for name, c in study.candidates.items() if c.snapshot is not None}


def _as_task(study: Study, fn: Callable):
    r = study.resources
    return ray.remote(fn).options(num_cpus=r.cpus_per_worker, num_gpus=min(1, r.gpus_per_worker))


def assess_teacher(folder: Path, task_spec: TaskSpec, cache_dir: Path | None = None) -> dict[str, Any]:
    """The teacher's metric on val and test beside the majority-class baseline on the same splits."""
    from akd_ray.engine import evaluate, pick_device
    from akd_ray.models import load_model
    from akd_ray.tasks import load_task
    from akd_ray.tasks.metrics import majority_baseline

    task = load_task(task_spec, str(folder), cache_dir)
    device = pick_device(TrainSpec())
    model = load_model(folder, task, device)
    fp32 = torch.autocast(device.type, enabled=False)
    out: dict[str, Any] = {"metric": task.metric, "parameters": sum(p.numel() for p in model.parameters())}
    for name, split in (("val", task.val), ("test", task.test)):
        out[name] = evaluate(model, task, split, device, 512, fp32)[task.metric]
        out[f"majority_{name}"] = majority_baseline(task, split)
    return out


def assess_teachers(study: Study, teacher_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    refs = {name: _as_task(study, assess_teacher).remote(folder, study.task, Layout.of(study).cache)
            for name, folder in teacher_dirs.items()}
    return {name: ray.get(ref) for name, ref in refs.items()}


def check_teachers(study: Study, quality: dict[str, dict[str, Any]]) -> None:
    """Stop before the search when a teacher is not clearly better than predicting the majority class:
    searching temperatures for such a teacher distils noise."""
    for name, q in quality.items():
        if study.candidates[name].snapshot is not None:  # an early checkpoint may be weak: the verdict weighs it
            continue
        margin = study.teacher_of(name).min_margin
        if margin is not None and q["val"] < q["majority_val"] + margin:
            raise StudyStopped(
                f"{study.source}: teachers.{name}: validation {q['metric']} {100 * q['val']:.1f} is not clearly "
                f"above the majority-class baseline {100 * q['majority_val']:.1f} (min_margin: needs "
                f"+{100 * margin:.1f}), so no search was started. Train it longer or with another lr "
                f"(teachers.{name}.train), on more data (task.max_train_samples), or load a stronger one "
                f"(prepare: load); set teachers.{name}.min_margin: null to distil from it anyway.")


class StudyStopped(RuntimeError):
    """The study cannot go on as asked; the message says why and what to change."""


def teacher_line(name: str, q: dict[str, Any]) -> str:
    return (f"teacher {name}: {q['metric']} val {100 * q['val']:.1f} / test {100 * q['test']:.1f} "
            f"(majority class: val {100 * q['majority_val']:.1f} / test {100 * q['majority_test']:.1f})")


def teacher_vs_scratch(study: Study, quality: dict[str, dict[str, Any]], rows: list[dict]) -> list[str]:
    """A line for each pair whose teacher's validation metric is not above its best scratch student's
    (from the search): distillation from that teacher is not expected to help, and the user should
    hear so while the study runs, not only in the verdict."""
    lines = []
    for teacher, student in study.pairs:
        scratch = [r["val_best"] for r in rows if (r["teacher"], r["student"], r["method"]) == (teacher, student, "scratch")
                   and r.get("finished")]
        q = quality.get(teacher)
        if q is not None and scratch and q["val"] <= max(scratch):
            lines.append(f"teacher {teacher}: validation {q['metric']} {100 * q['val']:.1f} is not above the scratch "
                         f"student {student}'s {100 * max(scratch):.1f}: distillation from it is not expected to help")
    return lines
