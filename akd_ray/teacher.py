"""Teachers: prepared once per study (trained, fine-tuned or loaded) and their logits, cached.

A prepared teacher is a folder: the model (see akd_ray.models.save_model), `teacher.json` with its
fingerprint, and `checkpoints/<k>/` -- snapshots of its training, which Pro-KD follows. The
fingerprint hashes the weights, so a retrained or edited teacher never reuses stale logits.

Teacher logits for the training split are computed once per (teacher, data, augmented view) and
written to the study's cache folder, shared by every trial; with augmentation, one table per epoch
(the views are a pure function of (augment_seed, epoch, index), see akd_ray.tasks.base.Augment).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from pydantic import TypeAdapter
from torch import nn

from akd_ray.config import ModelSpec, RunConfig, TaskSpec, TeacherSpec
from akd_ray.models import load_model, logits_of, save_model
from akd_ray.tasks.base import Augment, TaskData

TEACHER_FILE = "teacher.json"


# ---------------------------------------------------------------------------------------- fingerprints
def weights_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def recipe_fingerprint(*parts: object) -> str:
    """Hash of what determines a trained model: its spec, task, training recipe and seed."""
    blob = json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_info(folder: Path) -> dict:
    return json.loads((Path(folder) / TEACHER_FILE).read_text())


def checkpoint_dirs(folder: Path) -> list[Path]:
    """The teacher's training snapshots, in training order (Pro-KD's footsteps)."""
    root = Path(folder) / "checkpoints"
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name)) if root.is_dir() else []


# ---------------------------------------------------------------------------------------- preparation
def prepare_teacher(name: str, spec: TeacherSpec, task: TaskSpec, storage: Path, seed: int = 0,
                    on_epoch: Callable[[dict], None] | None = None) -> Path:
    """Return the folder of a ready teacher, training it only when no folder with its fingerprint exists."""
    if spec.prepare == "load":
        folder = Path(spec.path) if spec.path is not None else Path(spec.model.path)
        if not (folder / TEACHER_FILE).exists():  # a foreign trained model: fingerprint it in place
            info = {"name": name, "fingerprint": weights_fingerprint(folder), "prepared": "load"}
            if os.access(folder, os.W_OK):
                (folder / TEACHER_FILE).write_text(json.dumps(info, indent=2))
        return folder

    folder = Path(storage) / "teachers" / f"{name}-{recipe_fingerprint(spec, task, seed)}"
    if (folder / TEACHER_FILE).exists():
        return folder
    from akd_ray.engine import run_distillation  # the teacher is a `scratch` run of the same worker

    run = RunConfig(study="teacher", task=task, teacher=name, student=name, student_model=spec.model,
                    method="scratch", train=spec.train, seed=seed, augment_seed=seed,
                    tokenizer=spec.model.path if spec.model.kind == "hf" else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent if folder.parent.exists()
                                else _mkdir(folder.parent)))
    metrics = run_distillation(run, on_epoch=on_epoch, save_dir=tmp, snapshots=spec.checkpoints)
    info = {"name": name, "fingerprint": weights_fingerprint(tmp), "prepared": "train",
            "metrics": metrics, "model": TypeAdapter(ModelSpec).dump_python(spec.model, mode="json")}
    (tmp / TEACHER_FILE).write_text(json.dumps(info, indent=2))
    try:
        tmp.rename(folder)  # atomic: a concurrent preparer either wins or finds the folder ready
    except OSError:
        if not (folder / TEACHER_FILE).exists():
            raise
    return folder


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------------------------------- logits
@torch.no_grad()
def compute_logits(model: nn.Module, task: TaskData, device: torch.device, batch_size: int,
                   augment: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits (N, C) of `model` on the training split; `augment=(seed, epoch)` picks the views."""
    model.eval()
    out = []
    n = len(task.train)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        aug = Augment(augment[0], augment[1], idx) if augment is not None else None
        inputs, _ = task.batch(task.train, idx, device, aug)
        with autocast:
            out.append(logits_of(model, inputs).float().cpu())
    return torch.cat(out)


class TeacherLogits:
    """The teacher's logits for training samples, by epoch and index; computed once, then cached.

    `snapshot` selects one of the teacher's training checkpoints (Pro-KD); None is the final teacher.
    """

    def __init__(self, teacher_dir: Path, task: TaskData, device: torch.device, augment_seed: int,
                 cache_dir: Path | None, batch_size: int = 1024):
        self.teacher_dir, self.task, self.device = Path(teacher_dir), task, device
        self.augment_seed, self.batch_size = augment_seed, batch_size
        fp = teacher_info(teacher_dir)["fingerprint"]
        self.key = f"{fp}-{task.fingerprint()}" + (f"-aug{augment_seed}" if task.augments else "")
        self.cache = Path(cache_dir) / "teacher-logits" / self.key if cache_dir else None
        self._memory: dict[tuple[int | None, int], torch.Tensor] = {}

    def table(self, epoch: int, snapshot: int | None = None) -> torch.Tensor:
        view = epoch if self.task.augments else 0
        if (snapshot, view) not in self._memory:
            self._memory.clear()  # one table on the device at a time
            self._memory[(snapshot, view)] = self._load_or_compute(view, snapshot).to(self.device)
        return self._memory[(snapshot, view)]

    def get(self, epoch: int, idx: torch.Tensor, snapshot: int | None = None) -> torch.Tensor:
        # non_blocking: a blocking host->device copy synchronises the stream, once per training step
        return self.table(epoch, snapshot)[idx.to(self.device, non_blocking=True)]

    def _load_or_compute(self, view: int, snapshot: int | None) -> torch.Tensor:
        name = f"{'final' if snapshot is None else f'ckpt{snapshot}'}-view{view}.pt"
        path = self.cache / name if self.cache else None
        if path is not None and path.exists():
            saved = torch.load(path, weights_only=True)
            if saved["key"] == self.key and saved["logits"].shape[0] == len(self.task.train):
                return saved["logits"]
        folder = self.teacher_dir if snapshot is None else checkpoint_dirs(self.teacher_dir)[snapshot]
        model = load_model(folder, self.task, self.device)
        logits = compute_logits(model, self.task, self.device, self.batch_size,
                                (self.augment_seed, view) if self.task.augments else None)
        del model  # the teacher leaves the device once its logits exist
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"key": self.key, "logits": logits}, tmp)
            os.replace(tmp, path)  # atomic: concurrent trials never read half a file
        return logits


def save_snapshot(model: nn.Module, spec: ModelSpec, folder: Path, k: int, task: TaskData) -> None:
    save_model(model, spec, Path(folder) / "checkpoints" / str(k), task)
