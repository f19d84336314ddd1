"""The teacher-logit cache, which the worker loop reads: a prepared teacher's logits, computed once.

A prepared teacher (or TAKD assistant) is a folder: the model (see akd_ray.models.save_model),
`teacher.json` and `checkpoints/<k>/` -- snapshots of its training, which Pro-KD follows.
`teacher.json` records the fingerprint (a hash) of the weights and of every snapshot's weights,
with the size and mtime of each weight file: a changed file is noticed by a `stat`, not by hashing
gigabytes per trial, and its fingerprint is computed again.

A logit table is the teacher's logits on the whole training split, keyed by the fingerprint of the
weights that produced it (the final teacher's or one snapshot's), the examples, and the augmented
view; with augmentation, one table per epoch (views are a pure function of (augment_seed, epoch,
index), see akd_ray.tasks.base.Augment). Logits are per example, so one table serves every student,
whatever its tokenizer. Tables live in the study's cache folder and are computed by exactly one
process (akd_ray.cache.tensors_once).

This module never trains anything: preparing teachers (which runs the worker loop) is akd_ray.teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from akd_ray.cache import tensors_once, write_json
from akd_ray.models import load_model, logits_of
from akd_ray.tasks.base import Augment, TaskData

TEACHER_FILE = "teacher.json"
SNAPSHOTS = "checkpoints"


# ---------------------------------------------------------------------------------------- fingerprints
def weight_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def weights_fingerprint(folder: Path) -> str:
    """Hash of the weight files' bytes: the identity of a model."""
    h = hashlib.sha256()
    for f in weight_files(folder):
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def weight_stamps(folder: Path) -> dict[str, list[int]]:
    """Size and mtime of each weight file: a change to any of them is seen without reading them."""
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in weight_files(folder)}


def fingerprint_record(folder: Path) -> dict:
    return {"fingerprint": weights_fingerprint(folder), "stamps": weight_stamps(folder)}


def checkpoint_dirs(folder: Path) -> list[Path]:
    """The teacher's training snapshots, in training order (Pro-KD's footsteps)."""
    root = Path(folder) / SNAPSHOTS
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name)) if root.is_dir() else []


def snapshot_dir(folder: Path, k: int) -> Path:
    return Path(folder) / SNAPSHOTS / str(k)


def teacher_info(folder: Path) -> dict:
    """`teacher.json` of a prepared teacher, its fingerprints rechecked against the files on disk.

    A weight file whose size or mtime differs from the recorded one is hashed again, and the record
    is rewritten (where the folder is writable), so stale logits are never served for new weights.
    """
    folder = Path(folder)
    info = json.loads((folder / TEACHER_FILE).read_text())
    changed = False
    if info.get("stamps") != weight_stamps(folder):
        info.update(fingerprint_record(folder))
        changed = True
    snapshots = list(info.get("snapshots", []))
    dirs = checkpoint_dirs(folder)
    for k, d in enumerate(dirs):
        if k >= len(snapshots) or snapshots[k].get("stamps") != weight_stamps(d):
            snapshots[k:k + 1] = [fingerprint_record(d)]
            changed = True
    if len(snapshots) != len(dirs):
        snapshots, changed = snapshots[:len(dirs)], True
    info["snapshots"] = snapshots
    if changed and os.access(folder, os.W_OK):
        write_json(folder / TEACHER_FILE, info)
    return info


# ---------------------------------------------------------------------------------------- logits
@torch.no_grad()
def compute_logits(model: nn.Module, task: TaskData, device: torch.device, batch_size: int,
                   augment: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits (N, C) of `model` on the training split; `augment=(seed, epoch)` picks the views.

    Rows go shortest first where the task knows lengths, so a batch pads little; the table is in
    training-split order all the same.
    """
    model.eval()
    split = task.train
    n = len(split)
    order = split.lengths.argsort(stable=True).cpu() if split.lengths is not None else torch.arange(n)
    out = torch.empty(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for idx in order.split(batch_size):
        aug = Augment(augment[0], augment[1], idx) if augment is not None else None
        inputs, _ = task.batch(split, idx, device, aug)
        with autocast:
            z = logits_of(model, inputs).float().cpu()
        if out.numel() == 0:
            out = torch.empty(n, z.shape[1])
        out[idx] = z
    return out


class TeacherLogits:
    """The teacher's logits for training samples, by epoch and index; computed once, then cached.

    `snapshot` selects one of the teacher's training checkpoints (Pro-KD); None is the final teacher.
    `task` is the student's task: it fixes the examples and their order. `teacher_task`, where given,
    loads the same examples encoded for the teacher (GLUE: the teacher's own tokenizer); it is called
    only when a table has to be computed.
    """

    def __init__(self, teacher_dir: Path, task: TaskData, device: torch.device, augment_seed: int,
                 cache_dir: Path | None, batch_size: int = 1024,
                 teacher_task: Callable[[], TaskData] | None = None):
        self.teacher_dir, self.task, self.device = Path(teacher_dir), task, device
        self.augment_seed, self.batch_size = augment_seed, batch_size
        self._teacher_task = teacher_task
        info = teacher_info(teacher_dir)
        self.fingerprints = {None: info["fingerprint"], **{k: s["fingerprint"] for k, s in enumerate(info["snapshots"])}}
        self._examples = task.fingerprint()
        self.key = self.key_of(None)
        self.root = Path(cache_dir) / "teacher-logits" if cache_dir else None
        self.cache = self.root / self.key if self.root else None
        self._memory: dict[tuple[int | None, int], torch.Tensor] = {}

    @property
    def snapshots(self) -> int:
        return len(self.fingerprints) - 1

    def key_of(self, snapshot: int | None) -> str:
        """The table's identity: the weights that produce it (this snapshot's own), the examples, the views."""
        return (f"{self.fingerprints[snapshot]}-{self._examples}"
                + (f"-aug{self.augment_seed}" if self.task.augments else ""))

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
        key = self.key_of(snapshot)

        def compute() -> dict:
            task = self._teacher_task() if self._teacher_task is not None else self.task
            if len(task.train) != len(self.task.train):
                raise ValueError(f"the teacher's encoding of the training split has {len(task.train)} rows, "
                                 f"the student's {len(self.task.train)}")
            folder = self.teacher_dir if snapshot is None else checkpoint_dirs(self.teacher_dir)[snapshot]
            model = load_model(folder, task, self.device)
            logits = compute_logits(model, task, self.device, self.batch_size,
                                    (self.augment_seed, view) if self.task.augments else None)
            del model  # the teacher leaves the device once its logits exist
            return {"key": key, "logits": logits}

        if self.root is None:
            return compute()["logits"]
        n = len(self.task.train)
        saved = tensors_once(self.root / key / f"view{view}.pt", compute,
                             valid=lambda s: s.get("key") == key and s["logits"].shape[0] == n)
        return saved["logits"]
