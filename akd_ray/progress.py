"""How far a running study is: the live view on the terminal and `status.json` in its storage.

    run_study -> start(study, plan, root) ... stop(state)   the one Tracker of this driver
              -> TeacherEpochs(file)            a Ray task's teacher writes its epoch to a small file
              -> ProgressCallback(phase, ...)   Tune reports its trials every step of its loop
    Tracker   -> status.json  (atomic rewrite; `akd-ray status` reads it from the storage alone)
              -> a View: a rich Live table on a terminal, plain lines otherwise (one per finished trial)

While a study runs, everything else printed to stdout/stderr (Tune's tables, Ray's and MLflow's
logs) goes to `<storage>/<name>/tune.log`; `verbose` leaves it on the terminal as Tune prints it.
The callback keeps no handle on the terminal: Tune pickles it with the experiment and a resumed
study runs an unpickled copy, which finds this driver's Tracker through `_active`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from ray.tune import Callback

from akd_ray.config import Study
from akd_ray.preflight import Plan
from akd_ray.views import LiveView, PlainView, View, clock, failure_reason, val_text

STATUS_FILE = "status.json"
TUNE_LOG = "tune.log"
WRITE_EVERY_S = 1.0  # status.json at most this often, and at every finished trial
STATES = ("done", "running", "stopped", "failed", "pending")
_active: "Tracker | None" = None


# ---------------------------------------------------------------------------------------- trials -> counts
def trial_state(status: str, result: dict | None) -> str:
    """A Tune trial in the study's words: done (final result), stopped early (by the scheduler),
    failed, running, or pending (waiting for resources, or paused)."""
    if status == "TERMINATED":
        return "done" if (result or {}).get("final") else "stopped"
    if status == "ERROR":
        return "failed"
    return "running" if status == "RUNNING" else "pending"


def summarize(trials: list, budgets: dict[str, int], ended: dict[str, str] | None = None) -> dict[str, Any]:
    """Counts by state, best validation (with its tau_max) and failures per `pair|method` group.
    `ended`: trial id -> state of trials Tune has just said ended (their status may not say so yet)."""
    groups = {key: {"budget": n, **{s: 0 for s in STATES}, "best": None, "tau_max": None} for key, n in budgets.items()}
    failures = []
    for t in trials:
        c, r = t.config or {}, t.last_result or {}
        key = f"{c.get('teacher')}->{c.get('student')}|{c.get('method')}"
        g = groups.setdefault(key, {"budget": 0, **{s: 0 for s in STATES}, "best": None, "tau_max": None})
        state = (ended or {}).get(t.trial_id) or trial_state(t.status, r)
        g[state] += 1
        if r.get("val_best") is not None and (g["best"] is None or r["val_best"] > g["best"]):
            g["best"], g["tau_max"] = float(r["val_best"]), c.get("tau_max")
        if state == "failed":
            failures.append({"trial": t.trial_id, "group": key, "reason": failure_reason(t)})
    return {"groups": groups, "failures": failures}


# ---------------------------------------------------------------------------------------- hooks
class ProgressCallback(Callback):
    """Tune's view of one phase, handed to this driver's Tracker (plain data: it pickles with the experiment)."""

    def __init__(self, phase: str, budgets: dict[str, int]):
        self.phase, self.budgets = phase, budgets

    def _update(self, trials: list, finished=None, failed: bool = False) -> None:
        if _active is not None:
            _active.trials(self.phase, self.budgets, trials, finished, failed)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._update(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._update(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._update(trials, trial, failed=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._update(trials)


def budgets_of(points: list[dict]) -> dict[str, int]:
    """Trials per `pair|method` group of a list of configs (the confirmation points)."""
    out: dict[str, int] = {}
    for p in points:
        key = f"{p['teacher']}->{p['student']}|{p['method']}"
        out[key] = out.get(key, 0) + 1
    return out


@dataclass(frozen=True)
class TeacherEpochs:
    """`on_epoch` for a teacher trained in a Ray task: its epoch goes to a small JSON file the driver reads."""
    path: Path
    epochs: int

    def __call__(self, metrics: dict, state=None) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"epoch": int(metrics.get("epoch", 0)) + 1, "epochs": self.epochs,
                                   "val": metrics.get("val_metric")}))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------- the tracker
class Tracker:
    """This driver's picture of the study: written to status.json, drawn by a View."""

    def __init__(self, study: Study, plan: Plan | None, root: Path, view: "View"):
        self.root, self.view = root, view
        self.stack = contextlib.ExitStack()  # what `start` opened: the terminal, the view
        self.status: dict[str, Any] = {
            "study": study.name, "source": str(study.source), "phase": "starting", "state": "running",
            "started": time.time(), "updated": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
            "teachers": {}, "phases": {}, "plan": plan.lines() if plan else []}
        self._written = 0.0
        self._ended: dict[str, str] = {}  # trial id -> done | stopped | failed, as Tune's callbacks said

    def phase(self, name: str) -> None:
        self.status["phase"] = name
        self.view.phase(name, self.status)
        self.write(force=True)

    def teacher(self, name: str, state: str, epoch: int = 0, epochs: int = 0, seconds: float | None = None,
                val: float | None = None) -> None:
        self.status["teachers"][name] = {"state": state, "epoch": epoch, "epochs": epochs, "seconds": seconds,
                                         "val": val}
        self.view.teacher(name, self.status["teachers"][name])
        self.write(force=state != "training")

    def trials(self, phase: str, budgets: dict[str, int], trials: list, finished=None, failed: bool = False) -> None:
        now = time.time()
        info = self.status["phases"].setdefault(phase, {"started": now, "baseline": None})
        new = finished is not None and finished.trial_id not in self._ended
        if new:
            self._ended[finished.trial_id] = "failed" if failed else \
                "done" if (finished.last_result or {}).get("final") else "stopped"
        summary = summarize(trials, budgets, self._ended)
        ended = sum(g["done"] + g["stopped"] + g["failed"] for g in summary["groups"].values())
        total = max(sum(budgets.values()), len(trials))
        if info["baseline"] is None:  # trials that ended in an earlier run (a resumed study) say nothing of speed
            info["baseline"] = ended
        run_ended, elapsed = ended - info["baseline"], now - info["started"]
        eta = (total - ended) * elapsed / run_ended if run_ended else None
        info.update(summary, ended=ended, total=total, elapsed=elapsed, eta=eta)
        if new:
            self.view.trial(phase, finished, self._ended[finished.trial_id], info)
        self.view.refresh(self.status)
        self.write(force=finished is not None)

    def end(self, state: str, phase: str | None = None) -> None:
        self.status["state"] = state
        if phase:
            self.status["phase"] = phase
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < WRITE_EVERY_S:
            return
        self.status["updated"] = self._written = now
        tmp = self.root / f".{STATUS_FILE}.tmp"
        with contextlib.suppress(OSError):  # a full disk must not stop the study
            tmp.write_text(json.dumps(self.status, indent=1, default=str))
            os.replace(tmp, self.root / STATUS_FILE)


def start(study: Study, plan: Plan | None, root: Path, verbose: bool = False) -> Tracker:
    """From now until `stop`: the live view on the terminal, Tune's and Ray's output in tune.log (left
    on the terminal when `verbose`), status.json kept current. `root` must exist."""
    global _active
    stop()
    stack = contextlib.ExitStack()
    term, term_err = stack.enter_context(_terminal(root / TUNE_LOG, capture=not verbose))
    view = stack.enter_context(LiveView(term) if term.isatty() and not verbose else PlainView(term))
    if not verbose:  # akd-ray's own warnings (e.g. MLflow unreachable) stay on the terminal
        handler = logging.StreamHandler(term_err)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logging.getLogger("akd_ray").addHandler(handler)
        stack.callback(logging.getLogger("akd_ray").removeHandler, handler)
    _active = Tracker(study, plan, root, view)
    _active.stack = stack
    return _active


def stop(state: str | None = None) -> None:
    """End the live view and give the terminal back; `state` (done, failed, interrupted) goes to status.json."""
    global _active
    if _active is None:
        return
    tracker, _active = _active, None
    if state is not None:
        tracker.end(state, "done" if state == "done" else None)
    tracker.stack.close()


def wait_teachers(refs: dict[str, Any], files: dict[str, Path]) -> dict[str, Path]:
    """The teachers' Ray tasks: their results (a task's error is raised), their epochs shown meanwhile."""
    import ray

    started, pending, out = time.time(), dict(refs), {}
    for name in refs:
        _active and _active.teacher(name, "preparing")
    while pending:
        ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=0.5)
        for ref in ready:
            name = next(n for n, r in pending.items() if r == ref)
            out[name] = Path(ray.get(ref))
            del pending[name]
            _active and _active.teacher(name, "ready", seconds=time.time() - started)
        for name in pending:
            with contextlib.suppress(OSError, ValueError):
                e = json.loads(files[name].read_text())
                _active and _active.teacher(name, "training", e["epoch"], e["epochs"], val=e.get("val"))
    return {name: out[name] for name in refs}


@contextlib.contextmanager
def _terminal(log: Path, capture: bool) -> Iterator[tuple[IO[str], IO[str]]]:
    """Streams on the real stdout and stderr; with `capture`, file descriptors 1 and 2 go to `log`
    meanwhile (so does whatever Ray, Tune or MLflow print, from Python or not)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, saved_err = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(saved), "w", buffering=1)
    term_err = os.fdopen(os.dup(saved_err), "w", buffering=1)
    if not capture:
        try:
            yield term, term_err
        finally:
            term.close()
            term_err.close()
            os.close(saved)
            os.close(saved_err)
        return
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield term, term_err
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved, 1)
        os.dup2(saved_err, 2)
        os.close(saved)
        os.close(saved_err)
        term.close()
        term_err.close()


# ---------------------------------------------------------------------------------------- status
def read_status(root: Path) -> dict | None:
    path = Path(root) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def status_lines(status: dict, now: float | None = None) -> list[str]:
    """`akd-ray status`: phase, trials per pair and method by state, best so far, failures with reasons."""
    now = now or time.time()
    state = status.get("state", "running")
    if state == "running" and status.get("host") == socket.gethostname() and not _alive(status.get("pid")):
        state = "stopped (its driver is gone; `akd-ray tune` resumes it)"
    out = [f"study {status['study']}: {state}, phase {status.get('phase')}, started {clock(now - status['started'])} "
           f"ago, updated {clock(now - status['updated'])} ago"]
    for name, t in status.get("teachers", {}).items():
        out.append(f"  teacher {name}: {t['state']}" + (f" (epoch {t['epoch']}/{t['epochs']})"
                                                        if t["state"] == "training" else ""))
    for phase, info in status.get("phases", {}).items():
        out.append(f"  {phase}: {info['ended']}/{info['total']} trials ended" +
                   (f", ETA {clock(info['eta'])}" if info.get("eta") is not None and info["ended"] < info["total"] else ""))
        out.append(f"    {'pair':<28} {'method':<10} " + " ".join(f"{s:>7}" for s in (*STATES, "of")) + "  best val  tau_max")
        for key, g in info["groups"].items():
            pair, method = key.split("|")
            out.append(f"    {pair:<28} {method:<10} " + " ".join(f"{g[s]:>7}" for s in (*STATES, "budget")) +
                       f"  {val_text(g['best']):>8}  {'-' if g['tau_max'] is None else format(g['tau_max'], 'g'):>7}")
        for f in info.get("failures", []):
            out.append(f"    failed {f['trial']} {f['group'].replace('|', ' ')}: {f['reason']}")
    return out


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
