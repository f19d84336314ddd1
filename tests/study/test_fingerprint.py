"""A changed study is detected on rerun: refused in one line naming the change; --fresh keeps the old results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from akd_ray.config import load_study
from akd_ray.preflight import check_space
from akd_ray.study.fingerprint import FINGERPRINT_FILE, StudyChanged, check_rerun, parts

ROOT = Path(__file__).resolve().parents[2]
SPACE = {"params": {"tau_max": {"type": "int", "low": 2, "high": 3, "methods": ["annealing"]},
                    "lr": {"type": "float", "low": 0.005, "high": 0.02, "log": True}}}


def write(tmp: Path, space: dict = SPACE) -> Path:
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    study = tmp / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "task": {"name": "digits"}, "storage": "results", "train": {"epochs": 6},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [16]}}}, "students": {"s": {"kind": "mlp"}},
        "search": {"space": "space.yaml", "trials": {"kd": 1, "annealing": 2}}}))
    return study


def rerun(study: Path, *overrides: str, fresh: bool = False) -> Path | None:
    s = load_study(study, list(overrides))
    return check_rerun(study.parent / "results/tiny", s, check_space(s), fresh)


def test_an_edited_space_or_study_is_refused_naming_the_change_and_where_results_go_is_not(tmp_path):
    study = write(tmp_path)
    assert rerun(study) is None
    assert json.loads((tmp_path / "results/tiny" / FINGERPRINT_FILE).read_text())["parts"]["space.params.lr.high"] == 0.02
    assert rerun(study) is None  # unchanged: resumes
    assert rerun(study, "storage=results", "resources.max_concurrent=1", "mlflow.experiment=other") is None
    wider = {"params": {**SPACE["params"], "lr": {**SPACE["params"]["lr"], "high": 0.1}}}
    write(tmp_path, wider)
    with pytest.raises(StudyChanged, match=r"^study tiny changed since its results in .* were made: "
                                           r"space\.params\.lr\.high: 0\.02 -> 0\.1\. Start over with "
                                           r"`akd-ray tune .*tiny\.yaml --fresh`"):
        rerun(study)
    write(tmp_path)
    with pytest.raises(StudyChanged, match=r"made: train\.epochs: 6 -> 8; search\.trials\.kd: 1 -> 2\. "):
        rerun(study, "train.epochs=8", "search.trials.kd=2")


def test_fresh_sets_the_old_results_aside_and_keeps_the_teachers(tmp_path):
    study = write(tmp_path)
    rerun(study)
    root = tmp_path / "results/tiny"
    for folder in ("tune/search", "teachers/big", "cache"):
        (root / folder).mkdir(parents=True)
    (root / "mlflow.db").write_text("old store")
    old = rerun(study, "train.epochs=8", fresh=True)
    assert old.parent == root.parent and old.name.startswith("tiny-20")
    assert (old / "mlflow.db").read_text() == "old store" and (old / "tune/search").is_dir()
    assert sorted(p.name for p in root.iterdir()) == ["cache", FINGERPRINT_FILE, "teachers"]
    assert json.loads((root / FINGERPRINT_FILE).read_text())["parts"]["train.epochs"] == 8
    assert parts(load_study(study, ["train.epochs=8"]), check_space(load_study(study, []))) == \
        json.loads((root / FINGERPRINT_FILE).read_text())["parts"]


def test_tune_refuses_a_changed_study_in_one_line_before_ray_starts(tmp_path):
    study = write(tmp_path)
    rerun(study)
    result = subprocess.run([sys.executable, "-m", "akd_ray.cli", "tune", str(study), "--set", "train.epochs=8"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray")})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "train.epochs: 6 -> 8" in result.stderr
    assert not (tmp_path / "ray").exists()
    assert not (tmp_path / "results/tiny/study.lock").exists()  # released
