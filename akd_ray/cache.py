"""Computed once, whoever asks first: files and folders shared by every trial of a study.

A study's trials (and the ranks of one trial) run at the same time on many nodes that share the
study's storage. Whatever they all need -- a teacher-logit table, a tokenized GLUE split, a prepared
teacher or assistant -- is built by exactly one process under a file lock beside it; the others wait
on the lock, then read what it wrote. Results are written under a unique temporary name and renamed
into place, so a reader never sees half a file, and a crashed writer leaves only a temp file behind.

The lock is `filelock.FileLock` (fcntl/flock). On NFS (AWS EFS, an on-prem share) Linux clients map
flock onto NFS byte-range locks, so it holds across nodes; a pid-based name would not, since two
containers on the same share can run the same pid.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable, TypeVar

import torch
from filelock import FileLock

T = TypeVar("T")


def unique_name(path: Path) -> Path:
    """A sibling of `path` no other process picks: host, pid and a random part (pids repeat across containers)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def lock_for(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")))


def write_json(path: Path, data: dict) -> None:
    """Replace `path` with `data`, atomically."""
    tmp = unique_name(path)
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def tensors_once(path: Path, compute: Callable[[], dict], valid: Callable[[dict], bool]) -> dict:
    """The dict of tensors at `path`, computed by `compute` once across all processes.

    A file that exists but fails `valid` (a stale or foreign table) is recomputed and replaced.
    """
    path = Path(path)

    def read() -> dict | None:
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True, map_location="cpu")
        return saved if valid(saved) else None

    found = read()  # the common case: no lock taken
    if found is not None:
        return found
    with lock_for(path):
        found = read()  # another process may have written it while this one waited
        if found is not None:
            return found
        value = compute()
        tmp = unique_name(path)
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value


def folder_once(folder: Path, ready: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`folder`, built once: `build(tmp)` fills a fresh temporary folder, which is then renamed to `folder`.

    `ready(folder)` says whether a folder found there is complete and current; one that is not is
    replaced (e.g. a teacher imported from weights that have changed since).
    """
    folder = Path(folder)
    if ready(folder):
        return folder
    with lock_for(folder):
        if ready(folder):
            return folder
        tmp = unique_name(folder)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            if folder.exists():  # stale: move it aside first (a rename over a folder is not allowed)
                old = unique_name(folder)
                folder.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
