"""A real multi-node Ray cluster on this machine: a head and two worker nodes, each its own `ray start`
with one CPU, token authentication on, and the study's storage on a disk every node shares.

Faults are made deterministic with `akd_ray.study.faults.inject_fault`: the test drops a `*.fault` file in
the folder `$AKD_RAY_FAULTS` names on every node, and the first trial to report that epoch claims it
and dies (`exit`) or waits (`pause`) while the test removes a node, kills the driver or stops MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import MlflowServer, free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------- the cluster
class Node:
    """One `ray start --block` in its own process group: ending the group ends the node."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path):
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen([RAY, "start", "--block", *args], stdout=out, stderr=subprocess.STDOUT,
                                            env=env, cwd=ROOT, start_new_session=True)

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def pids(self) -> set[int]:
        """The node's own processes (its group) and the Ray workers its raylet started (their own groups)."""
        group = {pid for pid in _pids() if _pgid(pid) == self.process.pid}
        return group | {pid for pid in _pids() if _ppid(pid) in group}

    def stop(self, timeout_s: float = 5) -> None:
        """What `ray stop` does on one node, to this node only: SIGTERM, then SIGKILL what is left."""
        if self.process.poll() is not None and not self.pids():
            return
        pids = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while (self.process.poll() is None or _alive(pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        _kill(pids | self.pids())


class LocalRayCluster:
    """A head and `workers` worker nodes on this machine, one CPU each, token auth with a token of its own.

    Every process of the cluster carries `AKD_RAY_TEST_CLUSTER=<its folder>` in its environment:
    `stop()` ends each node, then kills whatever still carries the mark (a worker that outlived its
    raylet) -- and nothing else on the machine.
    """

    def __init__(self, workers: int = 2):
        # short: Ray's socket paths live under the temp dir and must stay under 108 characters
        self.root = Path(tempfile.mkdtemp(prefix="akd-cluster-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.token = self.root / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.faults = self.root / "faults"
        self.faults.mkdir()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.nodes: list[Node] = []
        # what every node and every driver of this cluster needs: token auth with this cluster's token
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                    "AKD_RAY_FAULTS": str(self.faults), "AKD_RAY_TEST_CLUSTER": str(self.root),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)

    def start(self) -> "LocalRayCluster":
        try:
            self._add("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                               f"--dashboard-port={free_port()}"])
            for i in range(self.workers):
                self.add_worker(f"worker{i + 1}")
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, name: str) -> Node:
        return self._add(name, [f"--address={self.address}"])

    def _add(self, name: str, args: list[str]) -> Node:
        node = Node(name, [*args, "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                           "--object-store-memory=100000000", f"--temp-dir={self.root / 'ray'}",
                           "--disable-usage-stats"], self.env, self.root / f"{name}.log")
        self.nodes.append(node)
        node.wait_started()
        return node

    def ensure_workers(self, n: int) -> None:
        """Start worker nodes until `n` are up (a test may have removed one), then wait for their CPUs."""
        alive = [node for node in self.nodes[1:] if node.process.poll() is None]
        for i in range(len(alive), n):
            self.add_worker(f"worker{len(self.nodes)}")
        self.wait_for_cpus(1 + n)

    def wait_for_cpus(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            status = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
                                    capture_output=True, text=True, timeout=60).stdout
            if f"/{n}.0 CPU" in status:
                return
            assert time.monotonic() < deadline, f"the cluster did not reach {n} CPUs:\n{status}"
            time.sleep(0.5)

    # -- faults (see akd_ray.study.faults.inject_fault) ----------------------------------------------------
    def fault(self, name: str, action: str, epoch: int) -> None:
        tmp = self.faults / f"{name}.tmp"
        tmp.write_text(f"{action} {epoch}")
        tmp.rename(self.faults / f"{name}.fault")

    def claimed(self, name: str, timeout_s: float = 180) -> dict:
        """Who claimed fault `name` (trial_id, node_id, pid, epoch), once a trial has."""
        path = self.faults / f"{name}.json"
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert time.monotonic() < deadline, f"no trial reached fault {name} in {timeout_s} s"
            time.sleep(0.1)
        return json.loads(path.read_text())

    def release(self, name: str) -> None:
        """A paused trial goes on."""
        (self.faults / f"{name}.claimed").unlink(missing_ok=True)

    def node_of_pid(self, pid: int) -> Node:
        """The node whose raylet started the worker process `pid`."""
        return next(n for n in self.nodes if pid in n.pids())

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head (GCS) last
            node.stop()
        _kill({pid for pid in _pids() if _environ(pid).get("AKD_RAY_TEST_CLUSTER") == str(self.root)})
        shutil.rmtree(self.root, ignore_errors=True)


# -- /proc, so no extra dependency (Linux) -------------------------------------------------------------
def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _alive(pids: set[int]) -> bool:
    return any(_stat(pid) and _stat(pid)[0] != "Z" for pid in pids)


def _kill(pids: set[int], timeout_s: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------- a study
EPOCHS = 4
SPACE = {"params": {
    "tau_max": {"type": "int", "low": 2, "high": 3, "methods": ["annealing"]},
    "alpha": {"type": "float", "low": 0.2, "high": 0.8, "methods": ["kd"]},
    "lr": {"type": "categorical", "choices": [0.01, 0.02], "methods": ["scratch"]},
}}


def small_study(tmp_path: Path, tracking_uri: str, trials: dict[str, int], **extra) -> Path:
    """One tiny digits pair (an MLP teacher, an 8-unit student), 4 epochs, no confirmation phase.
    Its name is new each time: the MLflow server is shared by the whole test session."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    study = {
        "name": f"tiny-{secrets.token_hex(4)}",
        "task": {"name": "digits"},
        "teachers": {"mlp-64": {"model": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 4, "lr": 0.01}}},
        "students": {"mlp-8": {"kind": "mlp", "hidden": [8]}},
        "train": {"epochs": EPOCHS, "stage1_fraction": 0.5, "schedule": "cosine", "tau_max": 2, "lr": 0.01},
        # shared: [] -- every method searches its own knobs in one phase, so the faults below meet the trials
        # of all three methods running at once (a shared recipe would run scratch's search first, alone)
        "search": {"space": "space.yaml", "trials": trials, "confirm_seeds": 0, "shared": [], **extra.pop("search", {})},
        "storage": str(tmp_path / "results"),  # on the disk every node of this cluster shares
        "mlflow": {"tracking_uri": tracking_uri, "register_best": False},
        "seed": 3,
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


class Driver:
    """`akd-ray tune STUDY --address <cluster>`: the Tune driver, in its own session so it can be killed alone."""

    def __init__(self, cluster: LocalRayCluster, study: Path, *extra: str):
        self.out, self.err = study.parent / "driver.out", study.parent / "driver.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "akd_ray.cli", "tune", str(study), "--address", cluster.address, *extra],
                cwd=ROOT, stdout=out, stderr=err, start_new_session=True, env={**cluster.env, "AKD_RAY_VERBOSE": "0"})

    def wait(self, timeout_s: float = 600) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@contextlib.contextmanager
def driver(cluster: LocalRayCluster, study: Path, *extra: str):
    d = Driver(cluster, study, *extra)
    try:
        yield d
    finally:
        d.kill()


def tune(cluster: LocalRayCluster, study: Path, *extra: str) -> Driver:
    """Run the study to its end; assert the CLI exited 0."""
    with driver(cluster, study, *extra) as d:
        assert d.wait() == 0, d.stderr[-4000:]
    return d


def study_root(study: Path) -> Path:
    """`<storage>/<name>`: the study's teachers, Tune experiments and report."""
    data = yaml.safe_load(study.read_text())
    return Path(data["storage"]) / data["name"]


def results(study: Path, phase: str = "search") -> dict[str, list[dict]]:
    """Every result Tune recorded, per trial id, in order (the trial folders' result.json)."""
    out = {}
    for f in (study_root(study) / "tune" / phase).glob("*/result.json"):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the line Tune is writing now
                break
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def finished(rows: list[dict]) -> bool:
    return bool(rows) and bool(rows[-1].get("final"))


def wait_until(condition, timeout_s: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def tune_statuses(study: Path) -> dict[str, str]:
    """Trial statuses in Tune's latest saved experiment state: what a restored driver starts from."""
    files = sorted((study_root(study) / "tune/search").glob("experiment_state-*.json"))
    try:
        trials = json.loads(files[-1].read_text())["trial_data"] if files else []
    except (OSError, ValueError):  # being written
        return {}
    return {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in trials}


def trial_rows(study: Path) -> list[dict]:
    return json.loads((study_root(study) / "report/trials.json").read_text())


def mlflow_runs(uri: str, study: Path) -> tuple[list, list]:
    """The study's parent run(s) and trial runs."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study_root(study).name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "akd.trial_id" in r.data.tags])  # the pair runs between them are neither


def epochs_in(uri: str, run) -> list[int]:
    """The epochs a trial run holds, as MLflow has them: each must appear once."""
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "epoch"))


def assert_tracked_once(uri: str, study: Path) -> None:
    """One parent run; one run per trial, FINISHED with every epoch once (FAILED for failed trials)."""
    rows = trial_rows(study)
    parents, children = mlflow_runs(uri, study)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_trial = {r.data.tags["akd.trial_id"]: r for r in children}
    assert len(children) == len(by_trial) == len(rows)
    for row in rows:
        run = by_trial[row["trial_id"]]
        if row["error"]:
            assert run.info.status == "FAILED"
        else:
            assert run.info.status == "FINISHED" and run.data.tags["akd.outcome"] == "finished"
            assert epochs_in(uri, run) == list(range(EPOCHS)), row["trial_id"]
            assert run.data.metrics["test_metric"] == pytest.approx(100 * row["test_metric"], abs=0.01)  # points


def assert_resumed_from_checkpoint(rows: list[dict]) -> None:
    """A trial that failed once: it started again after an epoch checkpoint (not from epoch 0), and
    Tune holds every epoch once, then the final result."""
    epochs = [r["epoch"] for r in rows if not r.get("final")]
    assert epochs == list(range(EPOCHS))
    restarts = [r for r in rows[1:] if r["iterations_since_restore"] == 1]
    assert len(restarts) == 1 and restarts[0]["epoch"] >= 1
    assert finished(rows)


# ---------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def ray_cluster():
    cluster = LocalRayCluster(workers=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(ray_cluster):
    """The module's cluster with its three nodes up, and no fault left over when the test ends."""
    ray_cluster.ensure_workers(2)
    yield ray_cluster
    for f in ray_cluster.faults.iterdir():  # deleting a `*.claimed` file releases a paused trial
        f.unlink()


def test_a_client_without_the_cluster_token_is_refused(cluster, tmp_path):
    """Token auth stays on: no token, or another token, and the GCS turns the client away."""
    no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # and no ~/.ray/auth_token to fall back on
    (tmp_path / "other_token").write_text(secrets.token_hex(32))
    other_token = {**cluster.env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "other_token")}
    for env in (no_token, other_token):
        status = subprocess.run([RAY, "status", f"--address={cluster.address}"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert status.returncode != 0
        assert "Authentication token is missing or incorrect" in status.stdout + status.stderr
    # with the cluster's token: in (the fixture's wait_for_cpus has just done the same)
    assert subprocess.run([RAY, "status", f"--address={cluster.address}"], env=cluster.env, capture_output=True,
                          timeout=120).returncode == 0


def test_trials_run_on_several_nodes_with_checkpoints_on_shared_storage(cluster, mlflow_server, tmp_path):
    study = small_study(tmp_path, mlflow_server.uri, {"kd": 1, "annealing": 2})
    for name in ("a", "b"):  # two trials wait side by side: with one CPU per node, on two nodes
        cluster.fault(name, "pause", 0)
    with driver(cluster, study) as d:
        a, b = cluster.claimed("a"), cluster.claimed("b")
        cluster.release("a"), cluster.release("b")
        assert d.wait() == 0, d.stderr[-4000:]
    assert a["node_id"] != b["node_id"]

    rows = trial_rows(study)
    assert len(rows) == 3 and all(r["finished"] for r in rows)
    assert {a["node_id"], b["node_id"]} <= {r["node_id"] for r in rows}
    history = results(study)
    assert {row["node_id"] for rows in history.values() for row in rows} == {r["node_id"] for r in rows}
    for r in rows:  # every node wrote its checkpoints under the study's storage
        folder = Path(r["checkpoint"])
        assert folder.is_relative_to(study_root(study) / "tune/search")
        assert (folder / "student/model.json").exists()
        assert list(folder.parent.glob("checkpoint_*/state.pt"))  # the per-epoch, resumable ones
    assert_tracked_once(mlflow_server.uri, study)


def test_a_killed_training_worker_resumes_from_its_last_epoch_checkpoint(cluster, mlflow_server, tmp_path):
    study = small_study(tmp_path, mlflow_server.uri, {"kd": 1, "annealing": 1})
    cluster.fault("exit", "exit", 1)  # the first trial to checkpoint epoch 1 dies there, like a killed worker
    tune(cluster, study)
    crashed = cluster.claimed("exit", timeout_s=0)

    rows = trial_rows(study)
    assert len(rows) == 2 and all(r["finished"] for r in rows)
    assert_resumed_from_checkpoint(results(study)[crashed["trial_id"]])
    assert_tracked_once(mlflow_server.uri, study)  # the same run for the trial, each epoch once


def test_a_trial_with_nan_loss_fails_with_its_reason_and_the_study_goes_on(cluster, mlflow_server, tmp_path):
    # scratch's first (warm-start) point diverges: lr 1e30 makes the loss nan in epoch 0
    study = small_study(tmp_path, mlflow_server.uri, {"scratch": 1, "kd": 1, "annealing": 1},
                        search={"warm_start": [{"lr": 1.0e30}]})
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["params"]["lr"]["choices"] = [1.0e30, 0.01]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with driver(cluster, study) as d:
        assert d.wait() == 1, d.stderr[-4000:]  # exit 1: a trial failed (the study itself finished)

    rows = trial_rows(study)
    failed = [r for r in rows if r["error"]]
    assert len(rows) == 3 and len(failed) == 1
    assert failed[0]["method"] == "scratch" and failed[0]["params"]["lr"] == 1e30 and not failed[0]["finished"]
    assert "FloatingPointError" in failed[0]["error"] and "loss became" in failed[0]["error"]
    assert all(r["finished"] for r in rows if r is not failed[0])
    assert "1 trial(s) failed" in d.stdout and "FloatingPointError" in d.stdout
    assert_tracked_once(mlflow_server.uri, study)
    run = next(r for r in mlflow_runs(mlflow_server.uri, study)[1] if r.data.tags["method"] == "scratch")
    assert run.data.tags["akd.outcome"] == "failed" and "loss became" in run.data.tags["akd.error"]


def test_a_removed_worker_node_has_its_trial_rescheduled_and_finished(cluster, mlflow_server, tmp_path):
    study = small_study(tmp_path, mlflow_server.uri, {"scratch": 1, "kd": 1, "annealing": 1})
    names = ("p1", "p2", "p3")
    for name in names:
        cluster.fault(name, "pause", 1)
    with driver(cluster, study) as d:
        paused = {name: cluster.claimed(name) for name in names}  # one trial per node: one CPU each
        victim = next(p for p in paused.values() if cluster.node_of_pid(p["pid"]) is not cluster.nodes[0])
        cluster.node_of_pid(victim["pid"]).stop()  # `ray stop` on that worker node only
        for name in names:
            cluster.release(name)
        assert d.wait() == 0, d.stderr[-4000:]
    assert len({p["node_id"] for p in paused.values()}) == 3

    rows = trial_rows(study)
    assert len(rows) == 3 and all(r["finished"] for r in rows)
    moved = next(r for r in rows if r["trial_id"] == victim["trial_id"])
    assert moved["node_id"] != victim["node_id"]  # finished on a node still there
    assert_resumed_from_checkpoint(results(study)[victim["trial_id"]])
    assert_tracked_once(mlflow_server.uri, study)


def test_a_killed_driver_resumes_without_rerunning_or_duplicating(cluster, mlflow_server, tmp_path):
    study = small_study(tmp_path, mlflow_server.uri, {"scratch": 1, "kd": 1, "annealing": 1})
    cluster.fault("hold", "pause", 1)
    with driver(cluster, study) as first:
        held = cluster.claimed("hold")
        # the other two finish, and Tune's saved experiment state says so: then SIGKILL the driver
        wait_until(lambda: list(tune_statuses(study).values()).count("TERMINATED") == 2, what="two finished trials")
        first.kill()
    before = results(study)
    wait_until(lambda: not _alive({held["pid"]}), what="the held trial to end with its driver")

    tune(cluster, study)
    after, rows = results(study), trial_rows(study)
    assert sorted(r["trial_id"] for r in rows) == sorted(before) and all(r["finished"] for r in rows)
    for trial_id, history in before.items():
        if trial_id != held["trial_id"]:
            assert finished(history) and after[trial_id] == history  # not run again
    assert_resumed_from_checkpoint(after[held["trial_id"]])
    assert_tracked_once(mlflow_server.uri, study)  # the same parent run, one run per trial


def test_mlflow_going_away_mid_study_loses_nothing_and_the_user_is_told(cluster, tmp_path):
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        study = small_study(tmp_path, server.uri, {"scratch": 1, "kd": 1, "annealing": 1})
        names = ("p1", "p2", "p3")
        for name in names:
            cluster.fault(name, "pause", 1)
        with driver(cluster, study) as d:
            held = [cluster.claimed(name)["trial_id"] for name in names]
            server.stop()
            # two trials report their last epochs and end while MLflow is away
            cluster.release("p1"), cluster.release("p2")
            wait_until(lambda: all(finished(results(study).get(t, [])) for t in held[:2]), what="two trials")
            server.start()  # the same store on the same port
            cluster.release("p3")
            assert d.wait() == 0, d.stderr[-4000:]
        assert f"MLflow at {server.uri} is not answering" in d.stderr
        assert f"MLflow at {server.uri} answers again" in d.stderr
        assert_tracked_once(server.uri, study)
    finally:
        server.stop()
