"""Fixtures shared by the test suite: the offline data folder, a real MLflow tracking server, and one small
study finished once per session (for the tests that only read a finished study, and the study lock's)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from akd_ray.tracking.store import wait_healthy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`: the offline GLUE and CIFAR copies; skips where there is none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sst2_rows(shared_data):
    """`sst2_rows(train, eval, max_seq_length)`: a TaskSpec of the first rows of the real SST-2 TSVs."""
    from akd_ray.config import TaskSpec

    glue = shared_data / "glue"
    if not (glue / "SST-2").is_dir():
        pytest.skip(f"no SST-2 at {glue}")
    return lambda train, eval_, seq: TaskSpec(name="glue/sst2", data_dir=glue, max_train_samples=train,
                                              max_eval_samples=eval_, max_seq_length=seq)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts under `root`.

    It runs in its own process group: mlflow 3 starts uvicorn (and job runners) as children, and
    `stop()` ends them all. `start()` again serves the same store on the same port.
    """

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey job workers
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        why = wait_healthy(self.process, self.uri, timeout_s, every_s=0.2)
        if why is None:
            return self
        if not why.startswith("exited"):
            self.stop()
        raise RuntimeError(f"mlflow server {why}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left of it after 10 s."""
        if self.process is None:
            return
        leader, self.process = self.process, None
        group = leader.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _group_alive(leader) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _group_alive(leader: subprocess.Popen) -> bool:
    leader.poll()  # reap the leader once it exits: a zombie would keep its group alive
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    """A real MLflow tracking server for the session (about 10 s to start); stopped with all its processes."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs) for the in-process Tune tests of the session; workers can import test
    modules (their trainables) from `tests/` and its subfolders, as pytest does (rootdir imports)."""
    import ray

    here = Path(__file__).parent
    folders = [here, *sorted(p for p in here.iterdir() if p.is_dir() and any(p.glob("test_*.py")))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(map(str, folders))}})
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class FinishedStudy:
    study: Path  # the study file (tracked in the default SQLite store under its storage)
    root: Path  # <storage>/<name>
    first: subprocess.CompletedProcess  # the `tune` that ran it
    second: subprocess.CompletedProcess  # a second `tune` of it, started while the first ran
    second_s: float  # how long the second took to answer


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> FinishedStudy:
    """test_run's tiny study (two pairs; scratch 1, kd 1, annealing 2 trials; 2 confirmation seeds) run
    once by a real `akd-ray tune`; while it runs, a second `akd-ray tune` of the same study is started."""
    from akd_ray.study.lock import holder_of
    from test_run import ROOT, small_study  # tests/study: the tests that use this fixture live there

    tmp = tmp_path_factory.mktemp("finished-study")
    study = small_study(tmp, None)
    data = yaml.safe_load(study.read_text())
    data["search"]["trials"] = {"scratch": 1, "kd": 1, "annealing": 2}
    data["search"]["confirm_seeds"] = 2
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    root = tmp / "results" / "tiny"
    command = [sys.executable, "-m", "akd_ray.cli", "tune", str(study)]
    env = {**os.environ, "AKD_RAY_VERBOSE": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(tmp / "first.out", "w+") as out, open(tmp / "first.err", "w+") as err:
        first = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True, env=env)
        deadline = time.monotonic() + 300
        while (holder_of(root) or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "the first tune never took the lock"
            time.sleep(0.2)
        start = time.monotonic()
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        second_s = time.monotonic() - start
        first.wait(timeout=1800)
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(command, first.returncode, out.read(), err.read())
    assert done.returncode == 0, done.stderr[-3000:]
    return FinishedStudy(study, root, done, second, second_s)
