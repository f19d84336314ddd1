"""studies/cifar10.yaml and cifar10-quick.yaml against the full CIFAR-10 archive, unpacked: they validate
(the GPU requirement aside) and, shrunk with --set, run end to end on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-full" / "cifar10-jpg.tar.xz"
STUDIES = ("cifar10", "cifar10-quick")
CPU = ["--set", "resources.gpus_per_worker=0", "--set", "resources.cpus_per_worker=1"]


@pytest.fixture(scope="session")
def cifar10_full(tmp_path_factory) -> Path:
    """The 60,000-image archive unpacked once per session into a temp folder (never the repo): seconds."""
    if not ARCHIVE.is_file():
        pytest.skip(f"full CIFAR-10 archive not found at {ARCHIVE} (shared data absent)")
    root = tmp_path_factory.mktemp("cifar10-full")
    with tarfile.open(ARCHIVE) as t:
        t.extractall(root, filter="data")
    return root


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "akd_ray.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "AKD_RAY_VERBOSE": "0"})


@pytest.mark.parametrize("name", STUDIES)
def test_validates_against_the_full_archive(name, cifar10_full, tmp_path):
    out = cli("validate", f"studies/{name}.yaml", "--set", f"task.data_dir={cifar10_full}",
              "--set", f"storage={tmp_path}", *CPU)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"cifar10 from {cifar10_full}" in out.stdout


# Shrunk to run on 2 CPU cores: a few images and epochs, a ResNet-8 teacher, tau_max 2, and a small space
# (the shipped spaces search tau_max up to 20 and lrs up to 0.2: more stage-I epochs than 4, and an
# annealing step that diverges on a 2-epoch teacher)
SPACE = "params:\n  lr: {type: float, low: 0.01, high: 0.02, log: true}\n  alpha: {type: float, low: 0.3, high: 0.7, methods: [kd]}\n"
SHRINK = {
    "cifar10": ["--set", "students={resnet8: {kind: resnet, depth: 8}}", "--set", "teachers.resnet110.train.epochs=2",
                "--set", "teachers.resnet110.model.depth=8",
                "--set", "search.trials={scratch: 1, annealing: 1}", "--set", "search.scheduler=none",
                "--set", "teachers.resnet110.min_margin=null", "--set", "train.tau_max=2"],
    "cifar10-quick": ["--set", "teachers.resnet56.train.epochs=2", "--set", "teachers.resnet56.model.depth=8",
                      "--set", "search.trials={scratch: 1, kd: 1, annealing: 1}",
                      "--set", "teachers.resnet56.min_margin=null", "--set", "train.tau_max=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_runs_end_to_end_on_the_cpu_when_shrunk(name, cifar10_full, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "storage"
    out = cli("tune", f"studies/{name}.yaml", "--set", f"task.data_dir={cifar10_full}", "--set", f"storage={storage}",
              "--set", f"search.space={space}", "--set", "task.max_train_samples=256", "--set",
              "task.max_eval_samples=128", "--set", "train.epochs=4", "--set", "train.eval_batch_size=128",
              "--set", "search.confirm_seeds=2", *CPU, *SHRINK[name], timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = next(storage.iterdir())
    assert "verdict per teacher-student pair" in out.stdout
    assert len(list((study / "cache" / "images").glob("cifar10-*.pt"))) == 1  # decoded once for all trials
