"""MLflow, in one module: the study's experiment and parent run, one child run per Tune trial, the
best student of each pair as a registered model, and the report.

    study   -> experiment `mlflow.experiment` (default: the study name)
               parent run tagged `akd.study=<name>`: study file, search space, code version, teachers
    trial   -> child run (`mlflow.parentRunId`, `akd.trial_id`): config as params, per-epoch metrics
               at step = epoch, FINISHED / FAILED with the error in `akd.error`
    pair    -> registered model `<study>-<teacher>-<student>`, alias `best`, a pyfunc on raw inputs

Everything is idempotent by tag, so a resumed study or a restarted trial reuses its runs. Only the
driver process calls this module; `start_study` makes the study's tracking URI the process default,
which the later calls use. The trial callback never lets an unreachable server stop a study: failed
calls stay buffered, in order, are retried, and are spooled to disk if the server is still away at
the end of a phase.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import requests
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE, MLFLOW_USER
from ray.tune import Callback

import akd_ray
from akd_ray.config import Study, TaskSpec
from akd_ray.config import tracking_uri as _tracking_uri
from akd_ray.models import SPEC_FILE, WEIGHTS_FILE, load_model, logits_of, spec_of
from akd_ray.tasks.base import Split, TaskData

log = logging.getLogger(__name__)

STUDY_TAG = "akd.study"  # on the parent run only: finds it again when a study resumes
TRIAL_TAG = "akd.trial_id"  # on each child run: finds it again when a trial restarts
ERROR_TAG = "akd.error"
OUTCOME_TAG = "akd.outcome"  # finished | stopped (by the scheduler, no final result) | failed
ALIAS = "best"
STUDENT_ARTIFACT = "student"
# Tune's own bookkeeping in every result: not metrics of the run
TUNE_KEYS = {"timestamp", "pid", "done", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
             "date", "hostname", "node_ip", "trial_id", "experiment_tag", "should_checkpoint",
             "checkpoint_dir_name", "config"}
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


# ---------------------------------------------------------------------------------------- the study
def start_study(study: Study, study_file_text: str, space_file_text: str) -> str:
    """The study's parent run id: created on the first start, the same run when the study resumes.

    Also makes the study's tracking URI this process's default, so later calls find it.
    """
    uri = tracking_uri(study)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = client_for(uri)
    experiment_id = _experiment(client, study)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study.name}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    tags = {
        STUDY_TAG: study.name, "task": study.task.name,
        "teachers": ", ".join(study.teachers), "students": ", ".join(study.students),
        "methods": ", ".join(study.search.methods), MLFLOW_USER: _user(),
        MLFLOW_RUN_NOTE: (f"Annealing-KD study `{study.name}` on {study.task.name}: "
                          f"{len(study.pairs)} teacher-student pair(s), methods {', '.join(study.search.methods)}."),
        **code_version(),
    }
    if study.source is not None:
        tags["mlflow.source.name"] = str(study.source)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")  # resumed
        log.info("MLflow: resuming study run %s in experiment %s", run_id, experiment_id)
    else:
        run_id = client.create_run(experiment_id, run_name=study.name, tags=tags).info.run_id
    _log_batch(client, run_id, tags=tags)  # the code may have moved on since the first start
    client.log_text(run_id, study_file_text, "study.yaml")
    client.log_text(run_id, space_file_text, "search_space.yaml")
    client.log_text(run_id, study.model_dump_json(indent=2), "study.resolved.json")  # with every default
    return run_id


def finish_study(parent_run_id: str, status: str = "FINISHED", unfinished: str | None = None) -> None:
    """Mark the parent run FINISHED (or FAILED / KILLED) at the end of a study; with `unfinished`, every
    trial run still RUNNING under it gets that status too (an interrupted study's trials)."""
    client = client_for()
    if unfinished is not None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        for run in client.search_runs([experiment_id], max_results=10_000, filter_string=(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'")):
            client.set_terminated(run.info.run_id, status=unfinished)
    client.set_terminated(parent_run_id, status=status)


def _experiment(client: MlflowClient, study: Study) -> str:
    name = study.mlflow.experiment or study.name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # the default SQLite store keeps artifacts beside it, not in ./mlruns of whatever the cwd is
        location = None if study.mlflow.tracking_uri else (study_dir(study) / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} at {client.tracking_uri} was deleted. Restore it "
                            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                            "or set `mlflow.experiment` in the study file to a new name.")
    return experiment.experiment_id


def code_version() -> dict[str, str]:
    """`mlflow.source.git.commit` (and whether the tree had uncommitted changes) of the package, else the cwd."""
    for where in (Path(akd_ray.__file__).resolve().parent, Path.cwd()):
        try:
            sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=10)
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):  # no git installed, or it hangs
            break
        return {MLFLOW_GIT_COMMIT: sha.stdout.strip(), "akd.git.dirty": str(bool(dirty.stdout.strip())).lower()}
    return {}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


def log_teachers(parent_run_id: str, fingerprints: dict[str, str], quality: dict[str, dict]) -> None:
    """Which teacher weights the study distilled from (tags `teacher.<name>.fingerprint`) and what they
    score beside the majority-class baseline (metrics `teacher.<name>.val`, `...majority_val`, ...)."""
    metrics = [Metric(f"teacher.{n}.{k}", float(v), _now_ms(), 0)
               for n, q in quality.items() for k, v in q.items() if _is_number(v)]
    _log_batch(client_for(), parent_run_id, metrics=metrics,
               tags={f"teacher.{n}.fingerprint": fp for n, fp in fingerprints.items()})


def log_report(parent_run_id: str, files: list[Path], verdicts: list = ()) -> None:
    """Attach the report (CSV, Markdown, plots; folders too) to the study run under `report/`; the
    verdict per pair becomes the run's description and tags `verdict.<teacher>.<student>` and
    `recommended.<teacher>.<student>`."""
    client = client_for()
    for f in map(Path, files):
        if f.is_dir():
            client.log_artifacts(parent_run_id, str(f), f"report/{f.name}")
        else:
            client.log_artifact(parent_run_id, str(f), "report")
    markdown = next((Path(f).read_text() for f in files if Path(f).name == "pairs.md"), None)
    tags = {}
    for v in verdicts:
        tags[f"verdict.{v.teacher}.{v.student}"] = v.text
        tags[f"recommended.{v.teacher}.{v.student}"] = v.best or "none"
    if markdown is not None:
        tags[MLFLOW_RUN_NOTE] = markdown
    _log_batch(client, parent_run_id, tags=tags)


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


# ---------------------------------------------------------------------------------------- trials
@dataclass
class _TrialRun:
    """One trial's child run and the calls not yet written to it, in order."""
    trial_id: str
    name: str
    tags: dict[str, str]
    # ["params", {..}] | ["metrics", step | None, {..}, ms, final] | ["tags", {..}] | ["text", text, path]
    # | ["running"] | ["end", status, ms]: plain JSON, so a spool file can hold them
    calls: deque = field(default_factory=deque)
    run_id: str | None = None
    steps: set[int] = field(default_factory=set)  # epochs the run holds (from this session or an earlier one)
    final_logged: bool = False
    params: dict[str, str] = field(default_factory=dict)  # what the run already holds
    ended: bool = False  # Tune said complete or error

    def to_json(self) -> dict:
        return {"trial_id": self.trial_id, "name": self.name, "tags": self.tags, "calls": list(self.calls)}


class MlflowCallback(Callback):
    """Tune callback: one child run per trial under the study's parent run, written from the driver.

    Calls that fail because MLflow is unreachable stay buffered in memory, in order, and are retried
    on later callbacks (at most every `retry_s` seconds while the server is down) and by `flush()`;
    the user is warned once. What is still unwritten when a phase ends goes to a spool file under the
    study's storage, which the next `MlflowCallback` of the study (a resumed run) sends first.

    A resumed or restarted trial finds its run by the `akd.trial_id` tag and skips the epochs the
    run already holds, so nothing is duplicated. Note that `Tuner.restore` runs with unpickled
    copies of the callbacks, not this object: ask `run_id()`, which falls back to MLflow.
    """

    def __init__(self, study: Study, parent_run_id: str, retry_s: float = 30.0):
        self.uri = tracking_uri(study)
        self.study = study.name
        self.parent_run_id = parent_run_id
        self.retry_s = retry_s
        self.client = client_for(self.uri)
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        self.spool_dir = study_dir(study)
        self._spool = self.spool_dir / f"mlflow-pending-{uuid.uuid4().hex[:8]}.json"
        self._trials: dict[str, _TrialRun] = {}
        self._down_since: float | None = None  # monotonic time of the first failure of an outage
        self._next_try = 0.0
        self._warned = False
        self._tune_dir: str | None = None
        self._load_spools()

    # -- Tune's hooks -------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        state = self._state(trial)
        if state.ended:  # started again after it ended (a retry): the run is running again
            state.calls.append(["running"])
            state.ended = False
        state.calls.append(["params", {k: _param_text(v) for k, v in trial.config.items()}])
        self._try_flush()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        metrics = {_metric_key(k): float(v) for k, v in result.items() if k not in TUNE_KEYS and _is_number(v)}
        step = int(result["epoch"]) if "epoch" in result else None  # None: at the last epoch (the final result)
        self._state(trial).calls.append(["metrics", step, metrics, _now_ms(), bool(result.get("final"))])
        self._try_flush()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        finished = bool((trial.last_result or {}).get("final"))
        self._end(trial, "FINISHED", {OUTCOME_TAG: "finished" if finished else "stopped"})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        text = _error_text(trial)
        self._end(trial, "FAILED", {OUTCOME_TAG: "failed", ERROR_TAG: text}, text)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.flush()

    # -- for the driver ------------------------------------------------------------------------------
    def run_id(self, trial_id: str) -> str | None:
        """The child run of a trial: known to this callback, else looked up in MLflow; None if neither."""
        state = self._trials.get(trial_id)
        if state is not None and state.run_id is not None:
            return state.run_id
        found = self._find(trial_id)
        return found.info.run_id if found else None

    @property
    def pending(self) -> int:
        """Calls not yet written to MLflow (a run still to be created counts as one)."""
        return sum(len(s.calls) + (s.run_id is None) for s in self._trials.values())

    def flush(self) -> int:
        """Write every buffered call now; spool what is left to disk; return how many calls are left."""
        self._write_all()
        left = [s.to_json() for s in self._trials.values() if s.calls or s.run_id is None]
        if not left:
            self._spool.unlink(missing_ok=True)
            return 0
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._spool.with_suffix(".tmp")
        tmp.write_text(json.dumps(left))
        tmp.replace(self._spool)
        log.warning("MLflow at %s is still unreachable: %d call(s) of %d trial(s) are NOT in MLflow yet. They "
                    "are saved in %s and sent when the study runs again (it resumes); every result is also in "
                    "Tune's folder %s.", self.uri, self.pending, len(left), self._spool,
                    self._tune_dir or self.spool_dir)
        return self.pending

    # -- the buffer ----------------------------------------------------------------------------------
    def _state(self, trial) -> _TrialRun:
        self._tune_dir = self._tune_dir or getattr(trial, "local_experiment_path", None)
        state = self._trials.get(trial.trial_id)
        if state is None:
            config = trial.config
            teacher, student = config.get("teacher", "?"), config.get("student", "?")
            tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id, TRIAL_TAG: trial.trial_id, "study": self.study,
                    "teacher": teacher, "student": student, "pair": f"{teacher}->{student}",
                    "method": config.get("method", "?"), "phase": config.get("phase", "?"),
                    "seed": config.get("seed", "?")}
            name = f"{tags['method']}-{teacher}-{student}-{trial.trial_id}"
            state = self._trials[trial.trial_id] = _TrialRun(trial.trial_id, name, {k: str(v) for k, v in tags.items()})
        return state

    def _end(self, trial, status: str, tags: dict[str, str], error_text: str | None = None) -> None:
        state = self._state(trial)
        state.calls.append(["tags", tags])
        if error_text is not None:
            state.calls.append(["text", error_text, "error.txt"])  # the whole traceback; the tag keeps its end
        state.calls.append(["end", status, _now_ms()])
        state.ended = True
        self._try_flush()

    def _load_spools(self) -> None:
        """Take over what earlier drivers of this study could not write (their spool files)."""
        for path in sorted(self.spool_dir.glob("mlflow-pending-*.json")):
            for saved in json.loads(path.read_text()):
                state = self._trials.setdefault(saved["trial_id"],
                                                _TrialRun(saved["trial_id"], saved["name"], saved["tags"]))
                state.calls.extend(saved["calls"])
            path.unlink()  # ours now: flush() writes it again under our name if it cannot be sent
        if self._trials:
            log.warning("MLflow: sending %d call(s) saved while %s was unreachable", self.pending, self.uri)
            self.flush()

    def _try_flush(self) -> None:
        if self._down_since is None or time.monotonic() >= self._next_try:
            self._write_all()

    def _write_all(self) -> None:
        try:
            with callback_env():
                for state in self._trials.values():
                    if state.run_id is None:
                        self._open(state)
                    while state.calls:
                        try:
                            self._write(state, state.calls[0])
                        except MlflowException as e:
                            if e.error_code not in PERMANENT:
                                raise
                            log.warning("MLflow rejected %s for run %s (%s); skipped", state.calls[0][0],
                                        state.run_id, e.message)
                        state.calls.popleft()
        except (MlflowException, requests.RequestException, OSError) as e:
            self._outage(e)
            return
        if self._down_since is not None:
            log.warning("MLflow at %s answers again after %.0f s: the buffered results are written.",
                        self.uri, time.monotonic() - self._down_since)
            self._down_since = None

    def _outage(self, error: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._next_try = now + self.retry_s
        if not self._warned:
            self._warned = True
            log.warning(
                "MLflow at %s is not answering (%s). The study goes on: results are kept in memory and "
                "written when the server is back (tried again every %.0f s and at the end of each phase). "
                "This warning is shown once.", self.uri, _reason(error), self.retry_s)

    def _find(self, trial_id: str):
        with callback_env():
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                                                    f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'",
                order_by=["attributes.start_time ASC"], max_results=1)
        return found[0] if found else None

    def _open(self, state: _TrialRun) -> None:
        """Find the trial's run by tag (a restart, a resumed study) or create it."""
        run = self._find(state.trial_id)
        if run is None:
            state.run_id = self.client.create_run(self.experiment_id, run_name=state.name, tags=state.tags).info.run_id
            return
        state.params = dict(run.data.params)
        state.final_logged = "final" in run.data.metrics
        if "epoch" in run.data.metrics:
            state.steps = {m.step for m in self.client.get_metric_history(run.info.run_id, "epoch")}
        if run.info.status != "RUNNING":
            self.client.update_run(run.info.run_id, status="RUNNING")
        state.run_id = run.info.run_id

    def _write(self, state: _TrialRun, call: list) -> None:
        kind, run_id = call[0], state.run_id
        if kind == "params":
            new = {k: _clip(v, MAX_PARAM_CHARS) for k, v in call[1].items()}
            changed = sorted(k for k, v in new.items() if k in state.params and state.params[k] != v)
            if changed:  # MLflow params are immutable; the first value stays
                log.warning("trial %s started again with different %s; its run %s keeps the first values",
                            state.trial_id, ", ".join(changed), run_id)
            new = {k: v for k, v in new.items() if k not in state.params}
            _log_batch(self.client, run_id, params=new)
            state.params.update(new)
        elif kind == "metrics":
            _, step, values, ms, final = call
            if (final and state.final_logged) or (not final and step in state.steps):
                return  # already in the run: a restarted trial reporting again
            step = max(state.steps, default=0) if step is None else step
            _log_batch(self.client, run_id, metrics=[Metric(k, v, ms, step) for k, v in values.items()])
            if final:
                state.final_logged = True
            else:
                state.steps.add(step)
        elif kind == "tags":
            _log_batch(self.client, run_id, tags=call[1])
        elif kind == "text":
            self.client.log_text(run_id, call[1], call[2])
        elif kind == "running":
            self.client.update_run(run_id, status="RUNNING")
        elif kind == "end":
            self.client.set_terminated(run_id, status=call[1], end_time=call[2])
        else:
            raise ValueError(f"unknown buffered call {kind!r}")


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


def _metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def _param_text(v: Any) -> str:
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else str(v)


def _error_text(trial) -> str:
    """The trial's error as Tune recorded it (traceback text), or what Tune can say about it."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text().strip()
    with contextlib.suppress(Exception):
        error = trial.get_error()
        if error is not None:
            return str(error)
    return "the trial failed; Tune recorded no error text"


# ---------------------------------------------------------------------------------------- the model
def input_shape(folder: Path) -> tuple[int, ...]:
    """The input size of a saved vision model, from its first layer: (features,) of an MLP,
    (channels,) of a CNN or ResNet; () for transformers (they take token ids)."""
    from safetensors import safe_open

    first = {"mlp": "net.0.weight", "cnn": "features.0.weight", "resnet": "stem.0.weight"}.get(spec_of(folder).kind)
    if first is None:
        return ()
    with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="pt") as f:
        return (f.get_slice(first).get_shape()[1],)


def load_student(folder: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A model saved by `akd_ray.models.save_model`, rebuilt without the task's data.

    `load_model` wants a TaskData only for the number of labels and the input size; the first is in
    `model.json`, the second in the first layer's weights.
    """
    folder = Path(folder)
    meta = json.loads((folder / SPEC_FILE).read_text())
    if "num_labels" not in meta:
        raise ValueError(f"{folder / SPEC_FILE} has no num_labels: save the model with its task "
                         "(akd_ray.models.save_model(..., task=...))")
    empty = Split({"x": torch.zeros((1, *input_shape(folder)))}, torch.zeros(1, dtype=torch.int64))
    stub = TaskData(name="saved", num_labels=meta["num_labels"], metric="", train=empty, val=empty, test=empty,
                    to_inputs=lambda feats, augment: feats)
    return load_model(folder, stub, device)


class StudentModel(mlflow.pyfunc.PythonModel):
    """A student as an MLflow pyfunc on raw inputs.

    digits:      float32 (N, 64), pixels in [0, 1] (scikit-learn's counts / 16), as the task feeds them
    cifar10/100: uint8 (N, 3, 32, 32) RGB, NCHW, unnormalised
    glue/*:      a DataFrame with the task's text column(s) (`sentence`, or e.g. `sentence1`, `sentence2`)

    Returns a DataFrame: `label` (class id) and `prob_<k>` per class; `score` for regression (STS-B).
    """
    # The logged signature validates inputs; MLflow's type-hint validation (which cannot say "an array
    # or a DataFrame") stays off, and so does its warning about a `predict` without type hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.task = context.model_config["task"]
        self.max_length = int(context.model_config.get("max_seq_length", 128))
        folder = context.artifacts[STUDENT_ARTIFACT]
        self.model = load_student(folder)
        self.tokenizer = None
        if self.task.startswith("glue/"):
            from transformers import AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(folder)  # save_model keeps it beside the weights
            self.tokenizer.padding_side = "right"

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        with torch.inference_mode():
            if self.tokenizer is not None:
                logits = self._text_logits(model_input)
            else:
                logits = self._image_logits(model_input)
        if logits.shape[1] == 1:  # a regression head
            return pd.DataFrame({"score": logits[:, 0].numpy().astype(np.float64)})
        probs = logits.softmax(1).numpy().astype(np.float64)
        out = pd.DataFrame({"label": probs.argmax(1).astype(np.int64)})
        for k in range(probs.shape[1]):
            out[f"prob_{k}"] = probs[:, k]
        return out

    def _image_logits(self, x: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x.to_numpy() if isinstance(x, pd.DataFrame) else x))
        out = []
        for part in x.split(512):
            if self.task in ("cifar10", "cifar100"):  # the task's own normalisation
                from akd_ray.tasks.cifar import CifarInputs
                inputs = CifarInputs(self.task)({"x": part}, None)
            else:
                inputs = {"x": part.float().flatten(1)}
            out.append(logits_of(self.model, inputs).float())
        return torch.cat(out)

    def _text_logits(self, x: Any) -> torch.Tensor:
        """Sentences (or pairs) tokenized as the task does: truncated to max_seq_length, padded right."""
        columns = text_columns(self.task)
        if isinstance(x, pd.DataFrame):
            texts = [x[c].astype(str).tolist() for c in columns]
        elif len(columns) == 1:  # a list of sentences
            texts = [[str(s) for s in x]]
        else:  # a list of pairs
            texts = [[str(row[i]) for row in x] for i in range(len(columns))]
        out = []
        for i in range(0, len(texts[0]), 64):
            enc = self.tokenizer(*(t[i:i + 64] for t in texts), truncation=True, max_length=self.max_length,
                                 padding="longest", return_tensors="pt")
            inputs = {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
            out.append(logits_of(self.model, inputs).float())
        return torch.cat(out)


def text_columns(task_name: str) -> tuple[str, ...]:
    """A GLUE model's input columns: the names the hub dataset `nyu-mll/glue` gives its text."""
    from akd_ray.tasks.glue import GLUE_FORMATS

    return GLUE_FORMATS[task_name.removeprefix("glue/")].hub_text


MODEL_CODE = '''"""An akd-ray student as an MLflow pyfunc (models from code): see akd_ray.tracking.StudentModel."""
import mlflow

from akd_ray.tracking import StudentModel

mlflow.models.set_model(StudentModel())
'''


def model_name(study: str, teacher: str, student: str) -> str:
    """The registered model of a pair: `<study>-<teacher>-<student>`, in characters every registry takes."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{study}-{teacher}-{student}")


def register_best(study: Study, pair: tuple[str, str], run_id: str, checkpoint_dir: Path,
                  task: TaskData | TaskSpec | None = None):
    """Log the pair's best student into its trial's run as a pyfunc and register it, alias `best`.

    `checkpoint_dir` is the student folder (`model.json` inside) or a trial checkpoint holding
    `student/`. `task` (TaskData: real inputs; default the study's task) makes the input example.
    Returns the ModelVersion; `mlflow.pyfunc.load_model("models:/<name>@best")` predicts with it.
    """
    folder = Path(checkpoint_dir)
    if not (folder / SPEC_FILE).exists() and (folder / STUDENT_ARTIFACT / SPEC_FILE).exists():
        folder = folder / STUDENT_ARTIFACT
    if not (folder / SPEC_FILE).exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no saved student ({SPEC_FILE}, or {STUDENT_ARTIFACT}/{SPEC_FILE})")
    teacher, student = pair
    name = model_name(study.name, teacher, student)
    uri = tracking_uri(study)
    mlflow.set_tracking_uri(uri)
    client = client_for(uri)
    with contextlib.suppress(MlflowException):  # no such model or alias yet
        current = client.get_model_version_by_alias(name, ALIAS)
        if current.run_id == run_id:
            return current  # a resumed study: this trial is already the registered best
    task_name = task.name if task is not None else study.task.name
    config = {"task": task_name, "max_seq_length": study.task.max_seq_length}
    example = _input_example(task_name, task, folder)

    wrapper = StudentModel()
    wrapper.load_context(mlflow.pyfunc.PythonModelContext({STUDENT_ARTIFACT: str(folder)}, config))
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": `label` never misses
        warnings.filterwarnings("ignore", message=".*integer column")
        signature = mlflow.models.infer_signature(example, wrapper.predict(None, example))

    quiet = env_defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    with tempfile.TemporaryDirectory() as tmp, quiet, mlflow.start_run(run_id=run_id):
        code = Path(tmp) / "student_model.py"  # models from code: a readable file, no pickled object
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=STUDENT_ARTIFACT, python_model=str(code), artifacts={STUDENT_ARTIFACT: str(folder)},
            model_config=config, signature=signature, input_example=example,
            code_paths=[str(Path(akd_ray.__file__).parent)],  # loads where akd-ray is not installed
            pip_requirements=_requirements(task_name), registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, ALIAS, version)
    metrics = client.get_run(run_id).data.metrics
    for k, v in {"study": study.name, "teacher": teacher, "student": student, "run_id": run_id,
                 "test_metric": metrics.get("test_metric", "")}.items():
        client.set_model_version_tag(name, version, k, str(v))
    return client.get_model_version(name, version)


def _input_example(task_name: str, task: TaskData | TaskSpec | None, folder: Path) -> Any:
    if task_name.startswith("glue/"):
        columns = text_columns(task_name)
        rows = [("A gripping, beautifully made film.", "The film is good."),
                ("It never finds its footing.", "The film is bad.")]
        return pd.DataFrame({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    if isinstance(task, TaskData):
        return task.test.features["x"][:2].numpy()
    if task_name in ("cifar10", "cifar100"):
        return np.zeros((2, 3, 32, 32), dtype=np.uint8)
    (width,) = input_shape(folder)  # digits: flat pixels
    return np.linspace(0, 1, 2 * width, dtype=np.float32).reshape(2, width)


def _requirements(task_name: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "torch", "safetensors", "pydantic", "pyyaml", "numpy", "pandas", "ray"]
    if task_name.startswith("glue/"):
        names.append("transformers")
    pins = []
    for n in names:
        try:
            pins.append(f"{n}=={version(n).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(n)
    return pins
