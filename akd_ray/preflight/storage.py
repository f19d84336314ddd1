"""The study's storage can be written, its Optuna storage opens, and its MLflow URI is usable (a server answers)."""

from __future__ import annotations

import contextlib
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
    check_optuna_storage(study)


OPTUNA_BACKENDS = {"sqlite": None, "postgresql": 5432, "mysql": 3306}  # the RDBs Optuna supports -> default port


def check_optuna_storage(study: Study, timeout_s: float = 5) -> None:
    """`search.optuna_storage` (default: sqlite:///<storage>/<name>/optuna.db) is one Optuna can open: the URL
    parses, its backend is one Optuna supports and its driver is installed, a SQLite file's folder can be made
    and an existing file is a readable database, a server answers within `timeout_s`. Makes nothing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    given = study.search.optuna_storage
    where = field_of(study, "search.optuna_storage")
    if given is None:  # the default: a SQLite file in the study folder (study.layout.optuna_storage)
        _check_sqlite_file(Path(study.storage).expanduser().resolve() / study.name / "optuna.db",
                           field_of(study, "storage"), study.source)
        return
    try:
        url = make_url(given)
    except ArgumentError:
        raise PreflightError(f"{where}: {given!r} is not a database URL; use e.g. sqlite:///path/optuna.db or "
                             "postgresql://user@host/db") from None
    backend = url.get_backend_name()
    if backend not in OPTUNA_BACKENDS:
        raise PreflightError(f"{where}: {url.drivername!r} is not a storage Optuna supports; valid: "
                             f"{', '.join(f'{b}://' for b in OPTUNA_BACKENDS)}")
    if backend == "sqlite":
        _check_driver(url, where)
        if not url.database or url.database == ":memory:":
            raise PreflightError(f"{where}: an in-memory SQLite database is lost when the study ends; name a file "
                                 "(sqlite:///path/optuna.db)")
        _check_sqlite_file(Path(url.database).expanduser().resolve(), where, study.source)
        return
    import socket
    host, port = url.host or "localhost", url.port or OPTUNA_BACKENDS[backend]
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise PreflightError(f"{where}: the {backend} server at {host}:{port} does not answer "
                             f"({e.strerror or type(e).__name__}); start it, or remove search.optuna_storage to "
                             "keep the searches in a SQLite file under storage") from None
    _check_driver(url, where)


def _check_driver(url, where: str) -> None:
    try:
        url.get_dialect().import_dbapi()
    except Exception as e:  # the driver's module is missing (psycopg, pymysql, ...)
        raise PreflightError(f"{where}: {url.drivername} needs a database driver that is not installed "
                             f"({type(e).__name__}: {e}); pip install it, or use sqlite:///") from None


def _check_sqlite_file(path: Path, where: str, study_source: str) -> None:
    """A SQLite file that can be made, or one that exists and opens as a database (read-only, unchanged)."""
    import sqlite3

    if not path.exists():
        check_writable(path, where)
        return
    if not path.is_file():
        raise PreflightError(f"{where}: {path} is not a file; the Optuna storage must be a SQLite file")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise PreflightError(f"{where}: the Optuna storage {path} cannot be read ({e}); restore it from a copy, "
                             f"or start the study over with `akd-ray tune {study_source} --fresh` (the old results are kept)") from None


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
