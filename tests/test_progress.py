"""What a running study shows: plain lines when stdout is not a terminal, the live view on one,
Tune's own tables in tune.log, and `akd-ray status` from the storage alone, mid-run and after."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from akd_ray.progress import STATES, status_lines, summarize
from akd_ray.views import trial_line

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "akd_ray.cli", *args]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AKD_RAY_VERBOSE")}
    return {**e, "RAY_USAGE_STATS_ENABLED": "0", **extra}


# ---------------------------------------------------------------------------------------- units
def trial(trial_id: str, method: str, status: str, student: str = "s", **result) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, error_file=None, last_result=result,
                           config={"teacher": "t", "student": student, "method": method, "phase": "search",
                                   **({"tau_max": 4} if method == "annealing" else {})})


def test_summarize_counts_trials_by_state_per_pair_and_method(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n")
    failed = trial("d", "kd", "ERROR")
    failed.error_file = str(error)
    trials = [trial("a", "annealing", "TERMINATED", val_best=0.9, final=1),
              trial("b", "annealing", "TERMINATED", val_best=0.95),  # no final result: stopped early
              trial("c", "annealing", "RUNNING", val_best=0.5), failed, trial("e", "kd", "PENDING")]
    s = summarize(trials, {"t->s|annealing": 4, "t->s|kd": 2})
    a, k = s["groups"]["t->s|annealing"], s["groups"]["t->s|kd"]
    assert (a["done"], a["stopped"], a["running"], a["failed"], a["pending"], a["budget"]) == (1, 1, 1, 0, 0, 4)
    assert a["best"] == 0.95 and a["tau_max"] == 4
    assert (k["failed"], k["pending"], k["best"]) == (1, 1, None)
    assert s["failures"] == [{"trial": "d", "group": "t->s|kd", "reason": "RuntimeError: CUDA out of memory"}]
    # Tune calls on_trial_complete before the trial's status says TERMINATED: what the callback said wins
    s = summarize([trial("c", "annealing", "RUNNING", val_best=0.5, final=1)], {}, {"c": "done"})
    assert s["groups"]["t->s|annealing"]["done"] == 1


def test_status_lines_show_phase_counts_best_and_failures():
    now = time.time()
    status = {"study": "tiny", "state": "done", "phase": "done", "started": now - 125, "updated": now - 5,
              "pid": 0, "host": "elsewhere", "teachers": {"big": {"state": "ready", "epoch": 0, "epochs": 0}},
              "phases": {"search": {"ended": 3, "total": 3, "eta": 0, "groups": {
                  "t->s|annealing": {"budget": 2, "done": 1, "running": 0, "stopped": 0, "failed": 1, "pending": 0,
                                     "best": 0.875, "tau_max": 3}},
                  "failures": [{"trial": "x1", "group": "t->s|annealing", "reason": "ValueError: boom"}]}}}
    lines = status_lines(status, now)
    assert lines[0] == "study tiny: done, phase done, started 2:05 ago, updated 0:05 ago"
    row = next(line for line in lines if "annealing" in line and "t->s" in line).split()
    assert row[:2] == ["t->s", "annealing"] and row[2:8] == ["1", "0", "0", "1", "0", "2"] and row[8:] == ["0.8750", "3"]
    assert "    failed x1 t->s annealing: ValueError: boom" in lines


def test_a_trial_line_says_which_trial_how_it_ended_and_how_far_the_phase_is():
    t = trial("a", "annealing", "RUNNING", val_best=0.9, test_metric=0.88, final=1)
    line = trial_line("search", t, "done", {"ended": 3, "total": 8, "eta": 75})
    assert line == "[search 3/8] annealing t->s: val 0.9000 test 0.8800 tau_max 4  (ETA 1:15)"


# ---------------------------------------------------------------------------------------- end to end
def test_teacher_epochs_are_plain_lines_without_a_terminal(tmp_path):
    """`ray job submit` or a log: every teacher epoch is one line (the driver polls its epoch file
    twice a second; an epoch is said once), and nothing is a control code."""
    import io

    from akd_ray.config import Study
    from akd_ray.progress import Tracker
    from akd_ray.views import PlainView

    study = Study.model_validate({"name": "p", "task": {"name": "digits"}, "storage": str(tmp_path),
                                  "teachers": {"minilm": {"model": {"kind": "mlp", "hidden": [8]}}},
                                  "students": {"s": {"kind": "mlp", "hidden": [4]}},
                                  "search": {"space": "space.yaml", "trials": {"kd": 1}}})
    out = io.StringIO()
    tracker = Tracker(study, None, tmp_path, PlainView(out))
    tracker.teacher("minilm", "preparing")
    for epoch, val in ((1, 0.5), (1, 0.5), (2, 0.75), (2, 0.75), (3, None)):
        tracker.teacher("minilm", "training", epoch, 3, val=val)
    tracker.teacher("minilm", "ready", seconds=65)
    assert out.getvalue().splitlines() == ["teacher minilm: preparing", "teacher minilm: epoch 1/3, val 0.5000",
                                           "teacher minilm: epoch 2/3, val 0.7500", "teacher minilm: epoch 3/3",
                                           "teacher minilm: ready in 1:05"]
    assert json.loads((tmp_path / "status.json").read_text())["teachers"]["minilm"]["state"] == "ready"


def counts(status_text: str) -> dict[str, dict[str, int]]:
    """`akd-ray status` rows -> {method: {state: n, 'of': budget}}."""
    out = {}
    for line in status_text.splitlines():
        parts = line.split()
        if len(parts) >= 8 and "->" in parts[0] and parts[2].isdigit():
            out[parts[1]] = dict(zip((*STATES, "of"), map(int, parts[2:8])))
    return out


@pytest.mark.slow
def test_quickstart_without_a_terminal_prints_one_line_per_trial_and_the_table(tmp_path):
    result = subprocess.run(
        cli("tune", str(ROOT / "studies" / "quickstart.yaml"), "--set", f"storage={tmp_path}",
            "--set", "students={mlp-16: {kind: mlp, hidden: [16]}}",
            "--set", "search.trials={scratch: 1, kd: 1, annealing: 2}", "--set", "search.confirm_seeds=1",
            "--set", "teachers.mlp-256x2.train.epochs=4", "--set", "train.epochs=12"),
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    lines = out.splitlines()
    assert len(lines) <= 60, out
    assert not ANSI.search(out), "control codes in plain output"
    # search.shared: scratch tunes the recipe first (search-recipe), then KD and Annealing-KD their own knobs
    assert len([line for line in lines if line.startswith("[search-recipe ")]) == 1
    assert len([line for line in lines if line.startswith("[search ")]) == 3
    assert len([line for line in lines if line.startswith("[confirm ")]) == 3  # annealing, kd, scratch x 1 seed
    assert lines[0].endswith(f"4 search trials + up to 3 confirmation runs; results in {tmp_path / 'quickstart'}")
    assert "quickstart: verdict per teacher-student pair" in out  # the final table
    log = (tmp_path / "quickstart" / "tune.log").read_text()
    assert "Trial status:" in log and "Trial name" in log  # Tune's own tables, not on stdout
    assert "Trial status:" not in out
    status = json.loads((tmp_path / "quickstart" / "status.json").read_text())
    assert status["state"] == "done"
    assert status["phases"]["search-recipe"]["ended"] == 1 and status["phases"]["search"]["ended"] == 3
    assert status["phases"]["confirm"]["ended"] == 3


@pytest.mark.slow
def test_status_mid_run_and_after_on_a_terminal(tmp_path):
    """A trial paused by the test hook keeps the study mid-search; `status` from another process sees it."""
    space = {"params": {"tau_max": {"type": "int", "low": 2, "high": 3, "methods": ["annealing"]},
                        "lr": {"type": "float", "low": 5e-3, "high": 2e-2, "log": True}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "task": {"name": "digits"},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 3, "lr": 0.01}}},
        "students": {"small": {"kind": "mlp", "hidden": [8]}},
        # shared: [] -- one search phase, so the status shows every method's group while scratch's trial waits
        "train": {"epochs": 6}, "search": {"space": "space.yaml", "trials": {"scratch": 1, "kd": 1, "annealing": 2},
                                           "confirm_seeds": 0, "shared": []},
        "resources": {"max_concurrent": 1}, "storage": "results"}))
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "hold.fault").write_text("pause 1")  # the first trial to report epoch 1 waits there

    master, slave = pty.openpty()  # stdout is a terminal: the live view runs
    seen = bytearray()
    proc = subprocess.Popen(cli("tune", str(study)), cwd=tmp_path, stdout=slave, stderr=subprocess.PIPE,
                            env=env(AKD_RAY_FAULTS=str(faults), COLUMNS="120"))
    os.close(slave)

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not (faults / "hold.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial reached the pause"
            time.sleep(0.5)
        time.sleep(3)  # status.json is rewritten every second while Tune waits
        mid = subprocess.run(cli("status", str(study)), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert mid.returncode == 0, mid.stderr
        assert mid.stdout.startswith("study tiny: running, phase search"), mid.stdout
        assert "teacher big: ready" in mid.stdout
        c = counts(mid.stdout)
        assert c["scratch"]["running"] == 1 and c["scratch"]["done"] == 0  # the paused one
        assert sum(g["done"] + g["running"] for g in c.values()) == 1  # one at a time: the rest wait
        assert (c["kd"]["of"], c["annealing"]["of"]) == (1, 2)
        (faults / "hold.claimed").unlink()  # let it go
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        os.close(master)
    after = subprocess.run(cli("status", str(study)), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert after.stdout.startswith("study tiny: done, phase done"), after.stdout
    c = counts(after.stdout)
    assert {m: (g["done"], g["running"], g["failed"]) for m, g in c.items()} == {
        "scratch": (1, 0, 0), "kd": (1, 0, 0), "annealing": (2, 0, 0)}
    screen = seen.decode(errors="replace")
    assert ANSI.search(screen) and "tiny -- search:" in screen  # the live view drew its table
    assert "[search 4/4]" in screen
