"""The study's storage can be written and its MLflow URI is usable (a server answers)."""

from __future__ import annotations

import os
from pathlib import Path

from akd_ray.config import Study, check_tracking_uri, tracking_uri
from akd_ray.preflight.errors import PreflightError, field_of


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: Path, where: str) -> None:
    """`folder` can be made and written: its nearest existing ancestor is a writable folder. Makes nothing."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise PreflightError(f"{where}: {base} is a file, so {folder} cannot be made")
    read_only = hasattr(os, "statvfs") and os.statvfs(base).f_flag & os.ST_RDONLY
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        raise PreflightError(f"{where}: cannot write under {base} ({'read-only file system' if read_only else 'permission denied'})")


def check_storage(study: Study) -> None:
    check_writable(Path(study.storage) / study.name, field_of(study, "storage"))


def check_tracking(study: Study) -> str:
    """The MLflow URI the study will use: a known scheme, a writable SQLite folder, a server that answers."""
    uri = tracking_uri(study)
    field_ = ("mlflow.tracking_uri" if study.mlflow.tracking_uri else
              "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "storage")
    try:
        check_tracking_uri(uri)
    except ValueError as e:
        raise PreflightError(f"{study.source if study.mlflow.tracking_uri else 'environment'}: {field_}: {e}") from None
    if uri.startswith("sqlite:///"):
        check_writable(Path(uri.removeprefix("sqlite:///")).parent, field_of(study, field_))
    elif uri.startswith(("http://", "https://")):
        _check_server(uri, f"{study.source}: {field_}")
    return uri


def _check_server(uri: str, where: str) -> None:
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        answer = requests.get(health, timeout=5)
    except requests.RequestException as e:
        raise PreflightError(f"{where}: MLflow server {uri} does not answer ({type(e).__name__}); start it, "
                             "or remove mlflow.tracking_uri to track into a SQLite store under storage") from None
    if answer.status_code != 200:
        raise PreflightError(f"{where}: {health} answered HTTP {answer.status_code}; is {uri} an MLflow server?")
