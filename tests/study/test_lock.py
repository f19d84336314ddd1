"""One study, one owner: the study lock between real processes, and `tune` refusing a running study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from akd_ray.study.lock import LOCK_FILE, StudyLock, StudyRunning, holder_of

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from akd_ray.study.lock import StudyLock; "
        "lock = StudyLock(sys.argv[1], 'tiny').acquire(); print('held', flush=True); time.sleep(600)")


def holder(root: Path) -> subprocess.Popen:
    """Another process that takes the study's lock and keeps it until it is ended."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_lock_refuses_and_names_its_holder_then_is_taken_over_when_the_holder_is_killed(tmp_path):
    p = holder(tmp_path)
    try:
        assert holder_of(tmp_path)["pid"] == p.pid
        with pytest.raises(StudyRunning, match=rf"study tiny is running \(pid {p.pid}, started 20\d\d-.*\): "
                                               r"watch it with `akd-ray status s.yaml`"):
            StudyLock(tmp_path, "tiny", "s.yaml").acquire()
    finally:
        p.send_signal(signal.SIGKILL)  # gone without releasing anything
        p.wait()
    assert (tmp_path / LOCK_FILE).exists() and holder_of(tmp_path) is None  # a leftover file, held by no one
    with StudyLock(tmp_path, "tiny") as lock:
        assert holder_of(tmp_path)["pid"] == os.getpid()
        with pytest.raises(StudyRunning):  # one owner, even within one process
            StudyLock(tmp_path, "tiny").acquire()
    assert not lock.path.exists() and holder_of(tmp_path) is None


def test_tune_of_a_running_study_exits_2_in_seconds_with_one_line(tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  lr: {type: float, low: 0.001, high: 0.01, log: true}\n")
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "task": {"name": "digits"}, "storage": "results", "train": {"epochs": 4},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [16]}}}, "students": {"s": {"kind": "mlp"}},
        "search": {"space": "space.yaml", "trials": {"kd": 1}}}))
    p = holder(tmp_path / "results" / "tiny")
    try:
        start = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "akd_ray.cli", "tune", str(study)], capture_output=True,
                                text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                         "RAY_TMPDIR": str(tmp_path / "ray")})
        took = time.monotonic() - start
        assert p.poll() is None  # the holder runs on, untouched
    finally:
        p.kill()
        p.wait()
    assert second.returncode == 2 and took <= 10, (second.returncode, took, second.stderr)
    assert second.stderr.strip().splitlines() == [
        f"error: study tiny is running (pid {p.pid}, started {second.stderr.split('started ')[1].split(')')[0]}): "
        f"watch it with `akd-ray status {study}`"]
    assert sorted(x.name for x in (tmp_path / "results" / "tiny").iterdir()) == [LOCK_FILE]  # nothing else made
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_a_second_tune_of_a_running_study_exits_2_and_the_first_finishes_untouched(finished_study):
    """Two real `akd-ray tune` processes of one study (the session's finished study: conftest)."""
    import json

    from mlflow import MlflowClient

    second, first = finished_study.second, finished_study.first
    assert second.returncode == 2 and finished_study.second_s <= 10, (second.returncode, finished_study.second_s)
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith("error: study tiny is running (pid ") and "watch it with `akd-ray status" in line
    assert "Traceback" not in second.stdout + second.stderr
    # the first ran to the end as if alone: every trial once, each with one MLflow run, the lock gone
    rows = json.loads((finished_study.root / "report/trials.json").read_text())
    assert len([r for r in rows if r["phase"] == "search"]) == 2 * 4 and all(r["finished"] for r in rows)
    client = MlflowClient(f"sqlite:///{finished_study.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    trial_runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                  if "akd.trial_id" in r.data.tags]
    assert sorted(r.data.tags["akd.trial_id"] for r in trial_runs) == sorted(r["trial_id"] for r in rows)
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    assert holder_of(finished_study.root) is None and not (finished_study.root / LOCK_FILE).exists()
