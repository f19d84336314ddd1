"""Where a study keeps its things, and the names every room of the study shares. No Ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from akd_ray.config import Study

METRIC, MODE = "val_best", "max"  # best-so-far validation metric: what the searchers read
STAGE_BEST = "stage_best"  # best validation metric within the current stage: what early stopping reads
IDENTITY = ("teacher", "student", "method", "phase", "seed")  # fixed per trial, never searched
STATE_FILE = "state.pt"  # a trial's resumable state, in each of its checkpoints
STUDENT_DIR = "student"  # the trained student, in a finished trial's checkpoint
PREDICTIONS_FILE = "predictions.npz"  # its per-example test predictions, beside it (the report's bootstrap)


@dataclass(frozen=True)
class Layout:
    """Where a study keeps its things, under `<storage>/<name>/`."""
    root: Path

    @classmethod
    def of(cls, study: Study) -> "Layout":
        return cls(Path(study.storage).expanduser().resolve() / study.name)

    teachers = property(lambda self: self.root / "teachers")
    cache = property(lambda self: self.root / "cache")
    tune = property(lambda self: self.root / "tune")
    report = property(lambda self: self.root / "report")
    optuna = property(lambda self: self.root / "optuna.db")


def optuna_storage(study: Study) -> str:
    """The Optuna RDB storage of the study's searches: the configured URL, else a SQLite file in the
    study folder (`optuna-dashboard sqlite:///...` opens it)."""
    return study.search.optuna_storage or f"sqlite:///{Layout.of(study).optuna}"


def optuna_study_name(teacher: str, student: str, method: str) -> str:
    """One Optuna study per (teacher, student, method) group, named so a dashboard lists them by pair."""
    return f"{teacher}->{student}/{method}"
