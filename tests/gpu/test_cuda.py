"""Every CUDA-only path of the worker, on a real GPU: bf16 steps, channels_last, the task held on the
device, the teacher-logit cache read there, no CPU-GPU sync per step, fused SGD, latency timed on
CUDA, and four Tune trials packed at 0.25 GPU each. Synthetic CIFAR-shaped data, ResNet-8/20: seconds.

Run by `make gpu-check` (bench/gpu_check.py) on a GPU machine; without CUDA each test skips and says so.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

import akd_ray.engine as engine
from akd_ray.config import ResNet, RunConfig, TaskSpec, TrainSpec
from akd_ray.logits import TEACHER_FILE, TeacherLogits, compute_logits, fingerprint_record
from akd_ray.models import build_model, load_model, save_model
from akd_ray.tasks.base import Split, TaskData
from akd_ray.tasks.cifar import CifarInputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() "
                                                                       "is False); run by `make gpu-check`")]
CUDA = torch.device("cuda")
SPEC = TaskSpec(name="cifar10")


def synthetic(n_train: int = 512, n_eval: int = 128) -> TaskData:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split({"x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)},
                     torch.randint(0, 10, (n,), generator=g))

    return TaskData("cifar10", 10, "accuracy", split(n_train), split(n_eval), split(n_eval), CifarInputs("cifar10"),
                    augments=True)


def run_of(method: str = "scratch", teacher_dir: Path | None = None, cache: Path | None = None, seed: int = 0,
           **train) -> RunConfig:
    return RunConfig(task=SPEC, student_model=ResNet(kind="resnet", depth=8), method=method, teacher_dir=teacher_dir,
                     cache_dir=cache, seed=seed, train=TrainSpec(**{"epochs": 2, "batch_size": 64, "eval_batch_size": 128,
                                                         "optimizer": "sgd", "lr": 0.05, "tau_max": 1, **train}))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """An untrained ResNet-20 as a prepared teacher: its logits are what the cache must hold, trained or not."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    save_model(build_model(ResNet(kind="resnet", depth=20), synthetic()), ResNet(kind="resnet", depth=20), folder,
               synthetic())
    (folder / TEACHER_FILE).write_text(json.dumps({"name": "r20", **fingerprint_record(folder), "snapshots": []}))
    return folder


class Seen:
    """What the worker built and fed its model, caught at engine.build_model and engine.logits_of."""

    def __init__(self, monkeypatch):
        self.models, self.inputs = [], []
        build, logits_of = engine.build_model, engine.logits_of
        monkeypatch.setattr(engine, "build_model", lambda *a, **k: self.models.append(build(*a, **k)) or self.models[-1])
        monkeypatch.setattr(engine, "logits_of", lambda m, inputs: self._fwd(logits_of, m, inputs))

    def _fwd(self, logits_of, model, inputs):
        out = logits_of(model, inputs)
        if model.training:
            self.inputs.append((inputs["x"], out.dtype))
        return out


def test_bf16_channels_last_steps_on_the_device(monkeypatch):
    seen = Seen(monkeypatch)
    result = engine.run_distillation(run_of(), task=synthetic())
    assert 0 <= result["test_metric"] <= 1
    model = seen.models[0]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.device.type == "cuda" and conv.weight.dtype == torch.float32  # fp32 master weights
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, dtype = seen.inputs[0]
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
    assert dtype == torch.bfloat16  # the forward ran under bf16 autocast


def test_the_task_is_held_on_the_device(monkeypatch):
    gathered = []
    batch = TaskData.batch

    def spy(self, split, idx, device, augment=None):
        gathered.append(split.features["x"].device.type)
        return batch(self, split, idx, device, augment)

    monkeypatch.setattr(TaskData, "batch", spy)
    engine.run_distillation(run_of(), task=synthetic())
    assert gathered and set(gathered) == {"cuda"}  # every batch gathered from a split already on the GPU


def test_fused_sgd_on_cuda():
    task = synthetic().to(CUDA)
    model = build_model(ResNet(kind="resnet", depth=8), task).to(CUDA)
    opt = engine.make_optimizer(model, TrainSpec(optimizer="sgd", lr=0.1), CUDA)
    assert opt.defaults.get("fused") is True
    before = [p.detach().clone() for p in model.parameters()]
    x = task.batch(task.train, torch.arange(8), CUDA)[0]
    model(**x).square().mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_logit_cache_is_read_on_the_device(teacher_dir, tmp_path, monkeypatch):
    task = synthetic().to(CUDA)
    first = TeacherLogits(teacher_dir, task, CUDA, augment_seed=3, cache_dir=tmp_path, batch_size=128)
    idx = torch.tensor([5, 0, 77, 300])
    got = first.get(1, idx)
    assert got.device.type == "cuda" and first.table(1).device.type == "cuda"
    reference = compute_logits(load_model(teacher_dir, task, CUDA), task, CUDA, 128, (3, 1))
    assert torch.allclose(got.cpu(), reference[idx], atol=2e-2)  # bf16 both times

    monkeypatch.setattr("akd_ray.logits.load_model", lambda *a, **k: pytest.fail("the teacher ran again"))
    again = TeacherLogits(teacher_dir, task, CUDA, augment_seed=3, cache_dir=tmp_path, batch_size=128)
    assert torch.equal(again.get(1, idx), got)  # a new trial reads the table from disk onto the GPU


def sync_warnings(task: TaskData, run: RunConfig) -> int:
    """How many CPU-GPU synchronisations PyTorch reports during one run."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.run_distillation(run, task=task)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_sync_per_training_step(teacher_dir, tmp_path):
    """Syncs are per epoch (the epoch's loss, evaluation, loading a table), so 4x the steps gives the same count.

    Counted on warm runs: computing a table (once per study and view) copies each batch's logits back.
    """
    for method in ("scratch", "annealing"):
        counts = []
        for n in (256, 1024):  # 4 vs 16 steps per epoch
            task = synthetic(n, 128)
            run = run_of(method, teacher_dir if method != "scratch" else None, tmp_path / f"{method}{n}", epochs=2)
            engine.run_distillation(run, task=task)  # fills the logit cache
            counts.append(sync_warnings(task, run))
        assert counts[0] == counts[1], f"{method}: {counts} syncs for 4 vs 16 steps per epoch"


def test_latency_cost_is_timed_on_cuda():
    model = build_model(ResNet(kind="resnet", depth=8), synthetic())
    ms = engine.inference_latency(model, synthetic(), batch_size=64, where="cuda", repeats=5)
    assert next(model.parameters()).device.type == "cuda"
    assert 0 < ms < 1000  # measured with synchronisation around the kernels: a real, finite time


def packed_trial(config: dict) -> None:
    """One small trial on its 0.25 GPU: the worker, then when it ran and on which device."""
    import torch
    from ray import tune

    from test_cuda import run_of, synthetic  # tests/gpu is on the workers' PYTHONPATH

    start = time.time()
    result = engine.run_distillation(run_of(seed=config["seed"], epochs=4), task=synthetic(16384, 256))
    tune.report({"test_metric": result["test_metric"], "start": start, "end": time.time(),
                 "visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "device": torch.cuda.get_device_name()})


@pytest.mark.slow
def test_four_tune_trials_share_one_gpu(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    path = os.pathsep.join(p for p in (str(Path(__file__).parent), str(Path(__file__).parents[2]),
                                       os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        tuner = tune.Tuner(tune.with_resources(packed_trial, {"cpu": 1, "gpu": 0.25}),
                           param_space={"seed": tune.grid_search([0, 1, 2, 3])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=4),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="packed"))
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    rows = [r.metrics for r in grid]
    assert len(rows) == 4 and all(0 <= r["test_metric"] <= 1 for r in rows)
    assert len({r["visible"] for r in rows}) == 1  # one physical GPU for all four
    # packed: all four were running at one moment (the last to start began before the first ended)
    assert max(r["start"] for r in rows) < min(r["end"] for r in rows)
