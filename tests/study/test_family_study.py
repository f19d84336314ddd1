"""`akd-ray tune` on studies/quickstart-family.yaml (shrunk with --set), on a real local Ray, tracked in a
real MLflow server: the search spans several sizes, the report has the front, the within-X pick, the
tau_max-vs-size trend and the importances, and MLflow nests study -> size group -> trial."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "quickstart-family.yaml"


def test_quickstart_family_searches_sizes_reports_the_front_and_tracks(tmp_path, mlflow_server):
    shrink = ["storage=" + str(tmp_path / "results"), f"mlflow.tracking_uri={mlflow_server.uri}",
              "teachers.mlp-256x2.train.epochs=12", "train.epochs=10",
              "search.trials={scratch: 2, kd: 2, annealing: 5}", "search.confirm_seeds=2", "family.within=[2, 10]"]
    done = subprocess.run([sys.executable, "-m", "akd_ray.cli", "tune", str(STUDY),
                           *[a for s in shrink for a in ("--set", s)]],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "AKD_RAY_VERBOSE": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "results/quickstart-family/report"
    rows = json.loads((report / "trials.json").read_text())
    search = [r for r in rows if r["phase"] == "search" and r["finished"]]
    assert len(search) == 9
    sizes = {r["params"]["student.hidden"] for r in search}
    assert len(sizes) >= 3 and all(2 <= h <= 64 for h in sizes)
    # the cost is the student's parameter count: 64 inputs, h hidden units, 10 classes
    assert all(r["student_cost"] == r["student_parameters"] == 64 * r["params"]["student.hidden"] +
               r["params"]["student.hidden"] + 10 * r["params"]["student.hidden"] + 10 for r in search)

    # the front: every point on it is dominated by no trial of the search
    front = list(csv.DictReader(open(report / "pareto.csv")))
    assert front
    for p in front:
        val, cost = float(p["val_best"]), float(p["cost"])
        assert not any(r["val_best"] >= val and r["student_cost"] <= cost
                       and (r["val_best"] > val or r["student_cost"] < cost) for r in search)
    assert (report / "pareto_mlp-256x2.png").stat().st_size > 5000

    # the smallest student within X points, chosen on validation and re-run over the confirmation seeds
    teacher_val = json.loads((report / "teachers.json").read_text())["mlp-256x2"]["val"]
    within = {float(w["points"]): w for w in csv.DictReader(open(report / "within.csv"))}
    assert set(within) == {2.0, 10.0}
    w = within[10.0]
    assert w["method"], "no student came within 10 points of the teacher"
    close = [r for r in search if r["val_best"] >= teacher_val - 0.10]
    assert float(w["cost"]) == min(r["student_cost"] for r in close)
    confirm = [r for r in rows if r["phase"] == "confirm" and r["method"] == w["method"]
               and r["params"] == json.loads(w["params"])]
    assert len(confirm) == 2 and int(w["seeds"]) == 2 and "too few seeds to tell" in w["verdict"]

    # the tau_max-vs-size trend and the importances
    (trend,) = json.loads((report / "tau_max_vs_size.json").read_text())
    assert trend["points"] and trend["text"]
    importances = list(csv.DictReader(open(report / "importances.csv")))
    assert {"student.hidden", "lr"} <= {i["param"] for i in importances if i["method"] == "annealing"}
    md = (report / "capacity.md").read_text()
    for heading in ("## Pareto front", "## Smallest student within X points", "## Best tau_max vs student size",
                    "## Which knobs matter"):
        assert heading in md
    assert "smallest within 10 points" in done.stdout

    # MLflow: study -> size group -> trial, the pick on the group's run, the front on the study run
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("quickstart-family")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (study_run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (group,) = [r for r in runs if "akd.pair" in r.data.tags]
    trials = [r for r in runs if "akd.trial_id" in r.data.tags]
    assert group.data.tags["akd.pair"] == "mlp-256x2->mlp-1L"
    assert group.data.tags["mlflow.parentRunId"] == study_run.info.run_id
    assert len(trials) == len(rows) and all(t.data.tags["mlflow.parentRunId"] == group.info.run_id for t in trials)
    assert group.data.params["pick.method"] in ("scratch", "kd", "annealing")
    assert 2 <= int(group.data.params["pick.student.hidden"]) <= 64 and "pick.mean" in group.data.metrics
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id, "report")}
    assert {"report/pareto_mlp-256x2.png", "report/importances.png", "report/importances.csv",
            "report/capacity.md", "report/tau_max_vs_size.png"} <= artifacts
