"""Ctrl-C / SIGTERM on `akd-ray tune` loses nothing and claims nothing; a teacher no better than the
majority class stops the study before the search. Real CLI subprocesses, local Ray, SQLite MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "studies/quickstart.yaml"
# the quickstart, one student, a small budget: 3 search trials + 2 confirmation runs
SMALL = ["--set", "students={mlp-16: {kind: mlp, hidden: [16]}}",
         "--set", "search.trials={kd: 1, annealing: 2}", "--set", "search.confirm_seeds=1"]


def tune_cmd(storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "akd_ray.cli", "tune", str(QUICKSTART), "--set", f"storage={storage}",
            *SMALL, *extra]


def env(faults: Path | None = None) -> dict:
    """This environment, without an MLflow URI an earlier test's `mlflow.set_tracking_uri` exported: the
    study must use its own default store, which these tests read."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**base, "AKD_RAY_VERBOSE": "0", **({"AKD_RAY_FAULTS": str(faults)} if faults else {})}


def finished_trials(experiment: Path) -> int:
    """Trials whose result.json holds their final result (Tune writes one line per report)."""
    return sum('"final": 1' in p.read_text() for p in experiment.glob("*/result.json"))


def mlflow_runs(storage: Path) -> tuple:
    client = MlflowClient(f"sqlite:///{storage / 'quickstart/mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    pairs = [r for r in runs if "akd.pair" in r.data.tags]
    return parent, pairs, [r for r in runs if "akd.trial_id" in r.data.tags]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_cleanly_and_a_rerun_finishes_every_trial_once(tmp_path, sig, code):
    storage = tmp_path / "results"
    faults = tmp_path / "faults"  # the first trial to reach epoch 5 waits there (akd_ray.study.faults)
    faults.mkdir()
    (faults / "hold.fault").write_text("pause 5")
    first = subprocess.Popen(tune_cmd(storage), cwd=ROOT, env=env(faults), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    search = storage / "quickstart/tune/search"
    deadline = time.monotonic() + 600
    # the first finished trial, and one trial surely running (held at epoch 5) when the signal comes
    while finished_trials(search) < 1 or not (faults / "hold.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.5)
    first.send_signal(sig)
    out, err = first.communicate(timeout=300)
    assert first.returncode == code, err[-3000:]
    assert "interrupted during the search phase" in err and "Resume with: akd-ray tune" in err
    assert not (storage / "quickstart/report/pairs.md").exists()  # nothing that looks like an answer
    assert "verdict" not in out
    (parent,), (pair,), children = mlflow_runs(storage)
    assert parent.info.status == "KILLED" and pair.info.status == "KILLED"
    statuses = [r.info.status for r in children]
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses
    done_before = {r.data.tags["akd.trial_id"] for r in children if r.info.status == "FINISHED"}
    assert done_before

    second = subprocess.run(tune_cmd(storage), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = json.loads((storage / "quickstart/report/trials.json").read_text())
    assert len(rows) == 3 + 2 and all(r["finished"] for r in rows)
    assert len({r["trial_id"] for r in rows}) == len(rows)
    (parent,), (pair,), children = mlflow_runs(storage)
    assert parent.info.status == "FINISHED" and pair.info.status == "FINISHED"
    ids = [r.data.tags["akd.trial_id"] for r in children]
    assert sorted(ids) == sorted(r["trial_id"] for r in rows)  # exactly one MLflow run per trial
    assert {r.info.status for r in children} == {"FINISHED"}
    assert done_before <= set(ids)


def test_a_teacher_at_chance_level_stops_the_study_before_the_search(tmp_path):
    storage = tmp_path / "results"
    # lr 1e-9: the teacher stays at its random init, about 10% on ten balanced classes
    result = subprocess.run(tune_cmd(storage, "--set", "teachers.mlp-256x2.train={epochs: 2, lr: 1.0e-9}"),
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "teachers.mlp-256x2: validation accuracy" in result.stderr
    assert "is not clearly above the majority-class baseline" in result.stderr
    assert "min_margin: null" in result.stderr  # how to go on anyway
    assert not (storage / "quickstart/tune/search").exists()
    (parent,), pairs, children = mlflow_runs(storage)
    assert parent.info.status == "FAILED" and not pairs and not children
    assert parent.data.metrics["teacher.mlp-256x2.val"] < 20  # points: about 10 on ten balanced classes
