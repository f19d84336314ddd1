"""The Tune callback that writes one MLflow child run per trial, from the driver, and never lets an
unreachable server stop a study (calls are buffered, retried, spooled to disk)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.tune import Callback

from akd_ray.config import METHODS, Study, base_method
from akd_ray.tracking.store import (ERROR_TAG, MAX_PARAM_CHARS, OUTCOME_TAG, PERMANENT, STUDY_RUN_TAG, TRIAL_TAG, _clip,
                                    _is_number, _log_batch, _now_ms, _reason, callback_env, client_for, shown_metric,
                                    shown_param, study_dir, tracking_uri)
from akd_ray.tracking.study_run import pair_run

log = logging.getLogger(__name__)

# Tune's own bookkeeping in every result: not metrics of the run
TUNE_KEYS = {"timestamp", "pid", "done", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
             "date", "hostname", "node_ip", "trial_id", "experiment_tag", "should_checkpoint",
             "checkpoint_dir_name", "config"}


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
        state.calls.append(["params", {k: shown_param(v) for k, v in trial.config.items()}])
        self._try_flush()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        metrics = {_metric_key(k): shown_metric(k, v) for k, v in result.items() if k not in TUNE_KEYS and _is_number(v)}
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
            # the parent becomes the pair's run when the run is created (see _open)
            tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id, STUDY_RUN_TAG: self.parent_run_id,
                    TRIAL_TAG: trial.trial_id, "study": self.study,
                    "teacher": teacher, "student": student, "pair": f"{teacher}->{student}",
                    "method": config.get("method", "?"), "phase": config.get("phase", "?"),
                    "seed": config.get("seed", "?")}
            name = trial_name(config, trial.trial_id)
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
                                                    f"tags.`{STUDY_RUN_TAG}` = '{self.parent_run_id}'",
                order_by=["attributes.start_time ASC"], max_results=1)
        return found[0] if found else None

    def _open(self, state: _TrialRun) -> None:
        """Find the trial's run by tag (a restart, a resumed study) or create it."""
        run = self._find(state.trial_id)
        if run is None:
            pair = pair_run(self.client, self.parent_run_id, state.tags["teacher"], state.tags["student"])
            tags = {**state.tags, MLFLOW_PARENT_RUN_ID: pair}  # study -> pair -> trial
            state.run_id = self.client.create_run(self.experiment_id, run_name=state.name, tags=tags).info.run_id
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


def trial_name(config: dict, trial_id: str) -> str:
    """A short name that says what the trial tried (its pair is its parent run): `annealing τ4 cosine
    #3`, `kd α0.5 T4 #2`, `scratch #1`; a confirmation run ends in its seed instead: `... seed 5`."""
    method = config.get("method", "?")
    base = base_method(method) if method in METHODS else method
    bits = [str(method)]
    if config.get("tau_max") is not None and base in ("annealing", "prokd"):
        bits.append(f"τ{config['tau_max']:g}")
    if config.get("schedule") and base in ("annealing", "prokd"):
        bits.append(str(config["schedule"]))
    if config.get("alpha") is not None and base in ("kd", "takd"):
        bits.append(f"α{config['alpha']:.2g}")
    if config.get("kd_temperature") is not None and base in ("kd", "takd"):
        bits.append(f"T{config['kd_temperature']:.2g}")
    bits += [f"{k.removeprefix('student.')} {v}" for k, v in config.items() if str(k).startswith("student.")]
    if config.get("phase") == "confirm":
        bits.append(f"seed {config.get('seed')}")
    else:
        number = re.search(r"(\d+)$", str(trial_id))  # Tune's ids end in the trial's index: <exp>_00003
        bits.append(f"#{int(number.group(1)) if number else trial_id}")
    return " ".join(bits)


def _metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


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
