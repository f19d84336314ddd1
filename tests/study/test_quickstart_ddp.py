"""The quickstart with two DDP workers per trial: `akd-ray tune` wraps each trial in a Ray Train
`TorchTrainer` (gloo on CPU), on a real local Ray, tracked in a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_with_two_workers_per_trial(tmp_path, mlflow_server):
    overrides = {
        "name": "qs-ddp", "storage": str(tmp_path / "results"), "mlflow.tracking_uri": mlflow_server.uri,
        "students": "{mlp-16: {kind: mlp, hidden: [16]}}", "teachers.mlp-256x2.train.epochs": 4,
        "search.trials": "{annealing: 1}", "search.confirm_seeds": 0, "train.epochs": 12,
        "resources.workers": 2, "resources.cpus_per_worker": 1,
    }
    args = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    done = subprocess.run([sys.executable, "-m", "akd_ray.cli", "tune", "studies/quickstart.yaml", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "AKD_RAY_VERBOSE": "0"})
    assert done.returncode == 0, done.stderr[-3000:]

    root = tmp_path / "results" / "qs-ddp"
    rows = json.loads((root / "report" / "trials.json").read_text())
    assert [r["method"] for r in rows] == ["annealing"]
    assert all(r["finished"] and r["test_metric"] > 0.5 for r in rows), rows
    trains = sorted((root / "tune").glob("train-*"))
    assert len(trains) == len(rows)  # one Train run per trial
    for train in trains:  # 12 epochs reported a checkpoint each, and the final result one more
        kept = [p for p in train.rglob("checkpoint_*") if p.is_dir()]
        assert 1 <= len(kept) <= 2, (train, kept)

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("qs-ddp")
    children = [r for r in client.search_runs([exp.experiment_id]) if "akd.trial_id" in r.data.tags]
    assert len(children) == len(rows)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_metric"] > 50  # points
        epochs = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted({m.step for m in epochs}) == list(range(12)), run.data.tags.get("akd.method")
