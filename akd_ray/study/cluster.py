"""The study against the Ray cluster it runs on: does one trial fit, and how many run at once."""

from __future__ import annotations

import math

import ray

from akd_ray.config import ConfigError, Study


def check_resources(study: Study) -> int:
    """Fail before any trial when one trial needs more than the cluster has; return max concurrency."""
    r = study.resources
    have = ray.cluster_resources()
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if need_gpu > gpus:
        raise ConfigError(f"{study.source}: resources: a trial needs {need_gpu:g} GPU(s) "
                          f"({r.workers} workers x {r.gpus_per_worker:g}) but the cluster has {gpus:g}")
    if need_cpu > cpus:
        raise ConfigError(f"{study.source}: resources: a trial needs {need_cpu:g} CPU(s) "
                          f"({r.workers} workers x {r.cpus_per_worker:g}) but the cluster has {cpus:g}")
    # A Train-wrapped trial's own process holds no resources (see run_phase), so cap concurrency
    # by what the workers need: otherwise waiting trials could starve running ones. A max_concurrent
    # set in the study is kept even above that: an autoscaling cluster adds nodes for waiting trials.
    fits = math.floor(cpus / need_cpu)
    if need_gpu:
        fits = min(fits, math.floor(gpus / need_gpu))
    return r.max_concurrent or max(1, fits)
