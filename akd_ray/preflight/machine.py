"""One trial against this machine (a local Ray): does it fit, and how many run at once."""

from __future__ import annotations

import math
import os
from pathlib import Path

from akd_ray.config import Study
from akd_ray.preflight.errors import PreflightError


def local_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray would see: this process's CPUs, the visible NVIDIA GPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    else:
        nvidia = Path("/proc/driver/nvidia/gpus")
        gpus = len(list(nvidia.iterdir())) if nvidia.is_dir() else 0
    return float(cpus), float(gpus)


def check_fits(study: Study, cpus: float, gpus: float, of: str) -> None:
    r = study.resources
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    for need, have, what, each in ((need_gpu, gpus, "GPU", r.gpus_per_worker), (need_cpu, cpus, "CPU", r.cpus_per_worker)):
        if need > have:
            raise PreflightError(f"{study.source}: resources: a trial needs {need:g} {what}(s) ({r.workers} workers "
                                 f"x {each:g}) but {of} has {have:g}")


def concurrency(study: Study, cpus: float, gpus: float) -> int:
    """Trials at a time: as many as fit (by CPUs and GPUs), or resources.max_concurrent."""
    r = study.resources
    fits = math.floor(cpus / (r.workers * r.cpus_per_worker))
    if r.gpus_per_worker:
        fits = min(fits, math.floor(gpus / (r.workers * r.gpus_per_worker)))
    return r.max_concurrent or max(1, fits)
