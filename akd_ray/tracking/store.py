"""Where MLflow is and how akd-ray talks to it: the tracking URI, the reachability check, batched
writes within MLflow's limits, and the environment that makes failing calls fail fast. No Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from akd_ray.config import Study
from akd_ray.config import tracking_uri as _tracking_uri

STUDY_TAG = "akd.study"  # on the parent run only: finds it again when a study resumes
TRIAL_TAG = "akd.trial_id"  # on each trial run: finds it again when a trial restarts
STUDY_RUN_TAG = "akd.study_run"  # on every run below a study run (pairs, trials): the study run's id
PAIR_TAG = "akd.pair"  # on each pair run (study -> pair -> trial): `<teacher>-><student>`
PAIR_LEVEL_TAG, PAIR_LEVEL = "akd.level", "pair"  # what the UI's pair view filters on
ERROR_TAG = "akd.error"
OUTCOME_TAG = "akd.outcome"  # finished | stopped (by the scheduler, no final result) | failed
ALIAS = "best"

# MLflow's limits: values longer than these are rejected, batches larger than these too
MAX_PARAM_CHARS, MAX_TAG_CHARS, BATCH = 6000, 8000, 100
# Error codes that retrying will not fix (a bad value, a conflict): drop the call with a warning
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "MALFORMED_REQUEST"}


class TrackingError(RuntimeError):
    """MLflow cannot be used as the study asks; the message names the URI and what to do."""


# ---------------------------------------------------------------------------------------- where
def tracking_uri(study: Study) -> str:
    """The study's MLflow URI (see `akd_ray.config.tracking_uri`: read before MLflow is imported)."""
    return _tracking_uri(study)


def study_dir(study: Study) -> Path:
    return Path(study.storage).expanduser().resolve() / study.name


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial runs, when a tracking server does not answer (or a store cannot be made)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"MLflow store {uri}: cannot create {folder} ({e}); set `storage` or "
                                "`mlflow.tracking_uri` in the study file to a writable place") from None
        return
    if not uri.startswith(("http://", "https://")):
        return  # databricks, file stores...: MLflow reports its own errors
    health = uri.rstrip("/") + "/health"
    try:
        answer = requests.get(health, timeout=timeout)
    except requests.RequestException as e:
        raise TrackingError(
            f"MLflow tracking server {uri} does not answer ({type(e).__name__}). Start it, e.g.\n"
            f"  mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000\n"
            f"or fix `mlflow.tracking_uri` in the study file, or remove it to track into a local SQLite "
            f"store under the study's storage.") from None
    if answer.status_code != 200:
        raise TrackingError(f"{health} answered HTTP {answer.status_code}: is {uri} an MLflow tracking server? "
                            "Fix `mlflow.tracking_uri` in the study file.")


def client_for(uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=uri or mlflow.get_tracking_uri())


def _log_batch(client: MlflowClient, run_id: str, metrics: list[Metric] = (), params: dict[str, Any] | None = None,
               tags: dict[str, Any] | None = None) -> None:
    """log_batch within MLflow's per-call limits."""
    params = [Param(k, _clip(v, MAX_PARAM_CHARS)) for k, v in (params or {}).items()]
    tags = [RunTag(k, _clip(v, MAX_TAG_CHARS)) for k, v in (tags or {}).items()]
    metrics = list(metrics)
    for i in range(0, max(len(metrics), len(params), len(tags), 1), BATCH):
        chunk = (metrics[i:i + BATCH], params[i:i + BATCH], tags[i:i + BATCH])
        if any(chunk):
            client.log_batch(run_id, metrics=chunk[0], params=chunk[1], tags=chunk[2])


def _clip(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else "..." + text[-(limit - 3):]  # the end of a traceback says most


@contextlib.contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables the user has not set, for the duration of the block only."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def callback_env(retries: int = 1, timeout_s: int = 10) -> Iterator[None]:
    """MLflow's HTTP client retries for minutes by default; inside a Tune callback, fail in seconds.
    And it prints a "View run" link per finished run: Tune's console is no place for hundreds.
    """
    retries_log = logging.getLogger("urllib3.connectionpool")  # one "Retrying ..." warning per failed call
    level = retries_log.level
    retries_log.setLevel(logging.ERROR)
    try:
        with env_defaults({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                           "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
                           "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}):
            yield
    finally:
        retries_log.setLevel(level)


def _reason(error: Exception) -> str:
    """The useful end of a connection error ("[Errno 111] Connection refused"), else its first line."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    return found.group(0).strip() if found else f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (str, bytes))


# what a person reads in MLflow: a task metric in points (x100, 2 decimals), a parameter to 3 significant
# digits. The report, trials.json and Tune keep the fractions and full values.
def _fraction_keys() -> frozenset[str]:
    from akd_ray.tasks.metrics import TASK_METRICS

    names = {m for _, every in TASK_METRICS.values() for m in every} | {"metric", "best"}
    return frozenset({*(f"{split}_{m}" for split in ("val", "test") for m in names), "stage_best"})


FRACTION_KEYS = _fraction_keys()  # a trial's metrics that are fractions of the task's metric


def shown_metric(key: str, value: float) -> float:
    """A trial's metric as MLflow shows it: a task metric in points, 2 decimals; anything else as it is."""
    return round(100 * float(value), 2) if key in FRACTION_KEYS else float(value)


def shown_param(value: Any) -> str:
    """A parameter as MLflow shows it: a float to 3 significant digits (0.0106, 4, 1e-05), anything else as text."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value):
        return f"{float(value):.3g}"
    return repr(value) if isinstance(value, float) else str(value)


def wait_healthy(process, url: str, timeout_s: float, every_s: float = 0.3, path: str = "/health") -> str | None:
    """Wait until the MLflow server `process` started answers `<url><path>`: None once it does, else
    why not ("exited with N", or "did not answer /health within T s"). Used by `akd-ray ui` (for
    optuna-dashboard too, on `path` "/") and the tests' server alike."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            if requests.get(f"{url}{path}", timeout=1).status_code == 200:
                return None
        except requests.RequestException:
            pass
        time.sleep(every_s)
    return f"did not answer {path} within {timeout_s:.0f} s"
