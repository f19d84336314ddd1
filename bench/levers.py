"""What a lever costs per epoch against plain KD, on the quickstart's digits MLP (CPU).

    python bench/levers.py [--epochs 4] [--threads 1]

KD reads the teacher's cached logits; `layers` runs the teacher once more per batch (its hidden
states); `minimax` runs teacher and student forward and backward per ascent step, then both once
on the perturbed batch. Prints the median training seconds per epoch of each and its ratio to KD.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from akd_ray.config import MLP, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import run_distillation
from akd_ray.teacher import prepare_teacher

TASK = TaskSpec(name="digits")
CASES = [("kd", {}), ("kd+layers", {}), ("kd+minimax", {"minimax_steps": 1}), ("kd+minimax", {"minimax_steps": 2}),
         ("kd+minimax", {"minimax_steps": 3})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        spec = TeacherSpec(model=MLP(kind="mlp", hidden=(256, 256)), train=TrainSpec(epochs=2, device="cpu"))
        teacher = prepare_teacher("mlp-256x2", spec, TASK, Path(tmp))
        base = None
        for method, knobs in CASES:
            seconds: list[float] = []
            run = RunConfig(task=TASK, teacher_dir=teacher, student_model=MLP(kind="mlp", hidden=(16,)), method=method,
                            cache_dir=Path(tmp) / "cache",
                            train=TrainSpec(epochs=args.epochs, batch_size=64, device="cpu", **knobs))
            run_distillation(run, on_epoch=lambda m, s: seconds.append(m["epoch_seconds"]))
            median = statistics.median(seconds[1:])  # epoch 0 also fills the logit cache
            base = base or median
            label = method + "".join(f" {k}={v}" for k, v in knobs.items())
            print(f"{label:28s} {1000 * median:8.1f} ms/epoch  x{median / base:.1f} KD")


if __name__ == "__main__":
    main()
