"""`akd-ray tune` on a small digits study, on a real local Ray, tracked in a real MLflow server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SPACE = {"params": {
    "tau_max": {"type": "int", "low": 2, "high": 3, "methods": ["annealing"]},
    "schedule": {"type": "categorical", "choices": ["step", "cosine", "exp"], "methods": ["annealing"]},
    "decay": {"type": "float", "low": 1.0, "high": 4.0, "when": {"schedule": ["exp"]}, "methods": ["annealing"]},
    "alpha": {"type": "float", "low": 0.2, "high": 0.8, "methods": ["kd"]},
    "lr": {"type": "float", "low": 5e-3, "high": 2e-2, "log": True},
}}
TRIALS = {"scratch": 1, "kd": 1, "annealing": 3}


def small_study(tmp_path: Path, tracking_uri: str) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    study = {
        "name": "tiny",
        "task": {"name": "digits"},
        "teachers": {"mlp-128": {"model": {"kind": "mlp", "hidden": [128]}, "train": {"epochs": 6, "lr": 0.01}}},
        "students": {"mlp-8": {"kind": "mlp", "hidden": [8]}, "mlp-4": {"kind": "mlp", "hidden": [4]}},
        "train": {"epochs": 6, "stage1_fraction": 0.5},
        "search": {"space": "space.yaml", "trials": TRIALS, "confirm_seeds": 2},
        "storage": str(tmp_path / "results"),
        "mlflow": {"tracking_uri": tracking_uri},
        "seed": 3,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def tune(study: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "akd_ray.cli", "tune", str(study), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "AKD_RAY_VERBOSE": "0"})


def test_tune_searches_every_pair_confirms_tracks_and_resumes(tmp_path, mlflow_server):
    study = small_study(tmp_path, mlflow_server.uri)
    first = tune(study)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tiny: verdict per teacher-student pair" in first.stdout
    assert "teacher mlp-128: accuracy val" in first.stdout  # the teacher beside the majority class, live

    rows = json.loads((tmp_path / "results/tiny/report/trials.json").read_text())
    search = [r for r in rows if r["phase"] == "search"]
    confirm = [r for r in rows if r["phase"] == "confirm"]
    # every pair gets its own budget for every method, and the baselines run per pair
    for student in ("mlp-8", "mlp-4"):
        for method, n in TRIALS.items():
            mine = [r for r in search if r["student"] == student and r["method"] == method]
            assert len(mine) == n, (student, method)
            assert all(r["finished"] and r["test_metric"] > 0.1 for r in mine)
    # the Optuna searcher proposed the points: values from the space, conditionals respected
    annealing = [r["params"] for r in search if r["method"] == "annealing"]
    assert all(p["tau_max"] in (2, 3) and 5e-3 <= p["lr"] <= 2e-2 for p in annealing)
    assert all(("decay" in p) == (p["schedule"] == "exp") for p in annealing)
    for student in ("mlp-8", "mlp-4"):
        # search.shared at its default: scratch tuned the pair's lr; every other method trained with it (and
        # searched only its own knobs: here 6 discrete points, which TPE may draw twice)
        scratch = max((r for r in search if (r["student"], r["method"]) == (student, "scratch")),
                      key=lambda r: r["val_best"])
        assert {r["params"]["lr"] for r in search + confirm if r["student"] == student
                and r["method"] != "scratch"} == {scratch["params"]["lr"]}
    assert all(r["best_stage"] == 2 for r in search + confirm if r["method"] == "annealing")
    assert all("tau_max" not in r["params"] for r in search if r["method"] != "annealing")
    # the confirmation re-runs the pair's best config of annealing, kd and scratch over 2 seeds
    assert len(confirm) == 2 * 3 * 2 and {r["seed"] for r in confirm} == {4, 5}
    for r in confirm:
        best = max((s for s in search if (s["student"], s["method"]) == (r["student"], r["method"])),
                   key=lambda s: s["val_best"])
        assert r["params"] == best["params"]
    # each confirmation run's per-example test predictions, for the paired bootstrap
    assert all(r["predictions"] and Path(r["predictions"]).exists() for r in confirm)
    # the searches live on in an Optuna storage that Optuna's own tools (optuna-dashboard) open
    import optuna

    storage = f"sqlite:///{tmp_path / 'results/tiny/optuna.db'}"
    for student in ("mlp-8", "mlp-4"):
        for method, n in TRIALS.items():
            ot = optuna.load_study(study_name=f"mlp-128->{student}/{method}", storage=storage)
            assert len([t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]) == n
    assert (tmp_path / "results/tiny/report/pairs.csv").exists()
    assert (tmp_path / "results/tiny/report/capacity_gap.png").stat().st_size > 1000

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (study_run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    pairs = {r.data.tags["akd.pair"]: r for r in runs if "akd.pair" in r.data.tags}
    children = [r for r in runs if "akd.trial_id" in r.data.tags]
    assert len(children) == len(rows)
    # study -> pair -> trial, and each pair run carries the pair's pick
    assert sorted(pairs) == ["mlp-128->mlp-4", "mlp-128->mlp-8"]
    assert all(p.data.tags["mlflow.parentRunId"] == study_run.info.run_id for p in pairs.values())
    assert all(pairs[r.data.tags["pair"]].info.run_id == r.data.tags["mlflow.parentRunId"] for r in children)
    verdicts = list(csv.DictReader(open(tmp_path / "results/tiny/report/pairs.csv")))
    for v in verdicts:
        pair = pairs[f"{v['teacher']}->{v['student']}"]
        assert pair.info.status == "FINISHED" and pair.data.params["pick.method"] == v["recommended"]
        assert pair.data.metrics["pick.mean"] == pytest.approx(100 * float(v[f"{v['recommended']}_mean"]), abs=0.01)
        assert pair.data.tags["verdict"] == v["verdict"]
        if v["recommended"] == "annealing":
            assert pair.data.params["pick.tau_max"] in ("2", "3") and "pick.schedule" in pair.data.params
        if v["recommended"] != "kd":
            assert "gain_over_kd" in pair.data.metrics and "gain_over_kd.ci_low" in pair.data.metrics

    # running the same study again resumes: nothing re-runs, nothing is duplicated
    second = tune(study)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "results/tiny/report/trials.json").read_text())
    assert sorted(r["trial_id"] for r in again) == sorted(r["trial_id"] for r in rows)
    assert sorted(r["test_metric"] for r in again) == sorted(r["test_metric"] for r in rows)
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(runs)


def test_bad_resources_fail_before_any_trial_or_run(tmp_path, mlflow_server):
    study = small_study(tmp_path, mlflow_server.uri)
    result = tune(study, "--set", "resources.gpus_per_worker=1", "--set", "name=nogpu")
    assert result.returncode == 2
    assert "resources: a trial needs 1 GPU(s)" in result.stderr
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("nogpu") is None
    assert not (tmp_path / "results/nogpu/tune").exists()


def test_default_store_report_and_ui_show_the_study(finished_study):
    """The embedded default: a SQLite store under the study's storage, browsed with `akd-ray ui` (the
    session's finished study, tests/conftest.py)."""
    import socket
    import time

    import requests

    study, root = finished_study.study, finished_study.root
    assert (root / "mlflow.db").exists()

    report = subprocess.run([sys.executable, "-m", "akd_ray.cli", "report", str(study)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "mlp-128 → mlp-8: " in report.stdout and "mlp-128 → mlp-4: " in report.stdout
    for png in ("metric_vs_tau_max.png", "capacity_gap.png", "schedule.png"):
        assert (root / "report" / png).stat().st_size > 1000
    trials = json.loads((root / "report/trials.json").read_text())

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "akd_ray.cli", "ui", str(study), "--port", str(port), "--optuna"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 120
        while True:
            try:
                exps = requests.post(f"{api}/experiments/search", json={"max_results": 10}, timeout=5).json()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        exp = next(e for e in exps["experiments"] if e["name"] == "tiny")
        runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment_id"]]}, timeout=10).json()["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parents = [t for t in tags if "mlflow.parentRunId" not in t]
        pairs = [t for t in tags if "akd.pair" in t]
        children = [t for t in tags if "akd.trial_id" in t]
        assert len(parents) == 1 and len(pairs) == 2 and len(children) == len(trials)
        assert exp["tags"] and {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == \
            "custom_model_development"  # the UI opens it on its training runs
        models = requests.get(f"{api}/registered-models/search", timeout=10).json()["registered_models"]
        best = [m for m in models if m["name"].startswith("tiny-")]
        assert len(best) == 2 and all(any(a["alias"] == "best" for a in m.get("aliases", [])) for m in best)
        for model in best:
            version = requests.get(f"{api}/registered-models/alias", params={"name": model["name"], "alias": "best"},
                                   timeout=10).json()["model_version"]
            tags = {t["key"]: t["value"] for t in version.get("tags", [])}
            assert tags["pick.method"] in ("scratch", "kd", "annealing") and tags["verdict"]
            assert version["description"].startswith(("scratch", "KD alpha", "Annealing-KD tau_max"))
        # --optuna: optuna-dashboard on the study's Optuna storage, each search's objective named
        printed = [ui.stdout.readline() for _ in range(3)]
        assert f"optuna-dashboard, each search's history: http://127.0.0.1:{port + 1}\n" in printed, printed
        dashboard = f"http://127.0.0.1:{port + 1}/api/studies"
        studies = {s["study_name"]: s["study_id"] for s in requests.get(dashboard, timeout=10).json()["study_summaries"]}
        assert set(studies) == {f"mlp-128->{s}/{m}" for s in ("mlp-8", "mlp-4") for m in ("scratch", "kd", "annealing")}
        detail = requests.get(f"{dashboard}/{studies['mlp-128->mlp-8/annealing']}", timeout=10).json()
        assert detail["objective_names"] == ["validation accuracy (best epoch, 0-1)"] and len(detail["trials"]) == 2
    finally:
        import os
        import signal
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
