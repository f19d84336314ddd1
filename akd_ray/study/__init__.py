"""Studies on Ray: prepare teachers, search each teacher-student pair with Optuna through Ray Tune,
confirm the picks over seeds, and hand every result to tracking and the report.

One job per file:

    layout.py     where a study keeps its things; the names the rooms share      (no Ray)
    lock.py       one study, one owner: the study lock `tune` holds            (no Ray)
    fingerprint.py  a changed study detected on rerun; --fresh                     (no Ray)
    signals.py    Ctrl-C / SIGTERM -> Tune's graceful stop -> `Interrupted`       (no Ray)
    cluster.py    the study against the cluster: does a trial fit, how many at once
    resumable.py  save/restore for searchers and schedulers whose state pickles
    scheduler.py  early stopping: successive halving per (teacher, student, method)
    search.py     the searchers: PairedSearch, FamilySearch, the confirmation Points
    trial.py      the Tune trainable and its Ray Train wrapper
    faults.py     a chaos hook for the cluster tests (off unless $AKD_RAY_FAULTS is set)
    teachers.py   teachers prepared and assessed as Ray tasks
    run.py        the phases and `run_study`

Importing this package imports no Ray: the names below load their module on first use, so the CLI
can check a study (and say what is wrong) before Ray is ever imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "layout": ("Layout", "METRIC", "MODE", "STAGE_BEST", "IDENTITY", "STATE_FILE", "STUDENT_DIR", "PREDICTIONS_FILE",
               "optuna_storage", "optuna_study_name"),
    "lock": ("StudyLock", "StudyRunning", "holder_of"),
    "fingerprint": ("StudyChanged", "check_rerun"),
    "signals": ("Interrupted", "Signals"),
    "cluster": ("check_resources",),
    "scheduler": ("GroupedHalving", "group_of", "progress"),
    "search": ("PairedSearch", "FamilySearch", "Points", "searcher_for"),
    "trial": ("fit", "run_config", "student_model"),  # the trainable itself: akd_ray.study.trial.trial
    "faults": ("FAULTS_ENV", "inject_fault"),
    "teachers": ("StudyStopped", "prepare_teachers", "assess_teachers", "check_teachers", "teacher_line"),
    "run": ("run_study", "StudyResult", "run_phase", "trial_rows", "confirmation_points"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
# checks that need no Ray live in preflight; re-exported here, where the study's users look for them
_PREFLIGHT = {"validate": "check_space", "budgets": "budgets"}
__all__ = sorted([*_WHERE, *_PREFLIGHT, "COST"])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in _PREFLIGHT:
        return getattr(importlib.import_module("akd_ray.preflight"), _PREFLIGHT[name])
    if name == "COST":
        from akd_ray.capacity import COST
        return COST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
